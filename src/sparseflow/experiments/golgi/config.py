"""Settings of ``sparseflow experiment golgi``: the full run and, through each field's ``quick``, the quick one."""

from __future__ import annotations

from dataclasses import dataclass

from sparseflow.errors import SparseflowError
from sparseflow.training.job import TrainJob
from sparseflow.training.options import check, option

METHODS = ("rigl", "gmp")
LAYERS = ("input", "layers.0", "layers.1", "layers.2", "output")
# One LeNet-300-100 SGD step (batch 64, one thread, test evaluation included) measured on a busy 2-core x86-64.
SECONDS_PER_STEP = {"digits": 0.003, "mnist": 0.008}
TRAIN_EXAMPLES = {"digits": 1437, "mnist": 60000}


@dataclass(frozen=True)
class GolgiConfig:
    """A LeNet-300-100 per method, trained to ``sparsity``, and its random control, stained.

    ``epochs`` and ``subset`` default to None: they depend on the dataset (the digits or MNIST, a run
    setting), so :meth:`train_epochs` and :meth:`train_subset` resolve them.
    """

    methods: tuple[str, ...] = option(METHODS, "Comma-separated training methods: rigl, gmp.")
    sparsity: float = option(0.95, "Fraction of weights pruned in every mask.", min=0, max=1, min_open=True,
                             max_open=True)
    epochs: int | None = option(None, "Epochs per training run (default 100 on digits, 20 on MNIST; quick 20 / 2).",
                                min=1)
    subset: int | None = option(None, "MNIST training examples (default all; quick 6400).", min=1)
    seed: int = option(0, "Seed of the training, the random control and the stained units.", min=0)
    units: int = option(3, "Units stained in each mask (1 to 10, one colour each).", min=1, max=10)
    # The first hidden layer by default: a unit's input tree is its receptive field.
    layer: str = option("layers.0", "Layer whose units are stained: layers.0 (first hidden), layers.1, layers.2 "
                                    "(output) or input.")
    train_random: bool = option(True, "Train the random control too (else it is stained untrained).", cli=False)
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise SparseflowError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
        if self.layer.removesuffix(".weight") not in LAYERS:
            raise SparseflowError(f"no layer {self.layer!r} in LeNet-300-100; choose one of {', '.join(LAYERS)}")

    def train_epochs(self, dataset: str) -> int:
        """``epochs``, else 100 on the digits (23 steps per epoch: RigL needs ~100 epochs for ~17 prune-and-regrow
        updates, one every 100 steps) and 20 on MNIST; quick 20 / 2."""
        if self.epochs is not None:
            return self.epochs
        return (20 if self.quick else 100) if dataset == "digits" else (2 if self.quick else 20)

    def train_subset(self, dataset: str) -> int | None:
        """``subset``, else all training examples (quick: 6400 of MNIST's)."""
        return self.subset if self.subset is not None else 6400 if self.quick and dataset == "mnist" else None

    def job(self, method: str, dataset: str) -> TrainJob:
        return TrainJob(method=method, sparsity=self.sparsity, model="lenet300-100", dataset=dataset,
                        subset=self.train_subset(dataset), epochs=self.train_epochs(dataset), seed=self.seed,
                        baseline=False)

    def estimate_s(self, dataset: str) -> float:
        """Seconds of training on a busy 2-core machine (the ``--yes`` budget)."""
        steps = self.train_epochs(dataset) * -(-(self.train_subset(dataset) or TRAIN_EXAMPLES[dataset]) // 64)
        return len(self.methods) * (2 if self.train_random else 1) * steps * SECONDS_PER_STEP[dataset]

    def work_units(self) -> int:
        return len(self.methods) * (3 if self.train_random else 2)
