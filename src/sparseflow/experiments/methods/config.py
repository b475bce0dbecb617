"""Settings of ``sparseflow experiment methods``: the training setting of each dataset, the options of the grid
(the full run as defaults, the quick one through each field's ``quick``) and :class:`MethodsOptions`, what
does not change the result (the data folders, worker processes, ``--yes``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparseflow.distributions import check_sparsity
from sparseflow.errors import SparseflowError
from sparseflow.training.options import BudgetOptions, check, option

DATASETS = ("mnist", "fashion-mnist")
DIR_FLAGS = {"mnist": "--mnist-dir", "fashion-mnist": "--fashion-dir"}
TRAIN_SIZE = {"mnist": 60_000, "fashion-mnist": 60_000}
# Wall seconds per example for one of two workers on this project's 2-core x86-64: (train step, evaluation),
# for the model at 28x28 input; Conv-4's cost scales with the pixels. LeNet-300-100: from the --budget long
# run (132 budgets of 9,380 steps in 1,611 s on 2 workers); Conv-4: from a 1-seed run of the short settings
# with other jobs running.
_SECONDS_PER_EXAMPLE = {"lenet300-100": (2.2e-5, 2e-5), "conv4": (2e-2, 6e-3)}
_RUN_OVERHEAD_S = 2.0  # process start, model build, data preparation, SNIP/SynFlow scoring


@dataclass(frozen=True)
class Setting:
    """One dataset's training setting: the budget every method gets there."""

    dataset: str
    model: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    weight_decay: float = 1e-4
    train_size: int | None = None  # a seeded random subset of the training split per seed (None: all)
    test_size: int | None = None  # the first examples of the test split, the same for every seed (None: all)
    downsample: int = 1  # average-pool the 28x28 images by this factor (2: 14x14)
    prune_first: bool = True  # False keeps the first layer dense (Evci et al. 2020 do so for convnets)

    def check(self) -> None:
        if self.dataset not in TRAIN_SIZE:
            raise SparseflowError(f"dataset must be one of {', '.join(TRAIN_SIZE)}, got {self.dataset!r}")
        if self.downsample not in (1, 2, 4):
            raise SparseflowError(f"downsample must be 1, 2 or 4 (28x28 images), got {self.downsample!r}")
        job = self.job("dense", 0.0, None, 0)  # validates the rest (epochs, sizes, names, lr, ...)
        if self.steps() < 10:
            raise SparseflowError(
                f"{self.dataset}: {self.steps()} optimizer steps are too few for GMP's and RigL's schedules "
                f"(need >= 10); raise the epochs ({job.epochs}) or the training size ({self.train_size})")

    def job(self, method: str, sparsity: float, distribution: str | None, seed: int) -> Any:
        from sparseflow.training.job import TrainJob

        return TrainJob(method=method, sparsity=sparsity, distribution=distribution, model=self.model,
                        dataset=self.dataset, subset=self.train_size, test_subset=self.test_size, epochs=self.epochs,
                        batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
                        weight_decay=self.weight_decay, seed=seed, baseline=False, prune_first=self.prune_first)

    def steps(self) -> int:
        n = min(self.train_size or TRAIN_SIZE[self.dataset], TRAIN_SIZE[self.dataset])
        return self.epochs * -(-n // self.batch_size)  # the last partial batch is a step too

    def seconds_per_run(self) -> float:
        train, test = _SECONDS_PER_EXAMPLE[self.model]
        scale = 1.0 if self.model == "lenet300-100" else 1.0 / self.downsample**2  # conv cost ~ pixels
        n_test = self.test_size or 10_000
        return scale * (train * self.steps() * self.batch_size + test * n_test) + _RUN_OVERHEAD_S

    def describe(self) -> str:
        size = 28 // self.downsample
        train = "all" if self.train_size is None else f"{self.train_size}"
        return (f"{self.model} on {self.dataset} {size}x{size}, {train} training / {self.test_size or 10000} test "
                f"examples, {self.epochs} epoch{'s' if self.epochs > 1 else ''} of batch {self.batch_size} = {self.steps()} steps, "
                f"{self.optimizer} lr {self.lr:g} (cosine), weight decay {self.weight_decay:g}"
                + ("" if self.prune_first else ", first layer dense"))


# MNIST: the SGD setting of ``sparseflow bench methods``. Fashion-MNIST: Adam at 1e-3 (Frankle & Carbin 2019
# train Conv-4 with Adam); with plain SGD this normalisation-free Conv-4 often stays at chance for the first
# hundreds of steps, which at this budget would measure start-up speed rather than the mask. Sizes: what fits
# the full grid in about 40 min on 2 shared cores (see ``estimate_s``).
FULL = (
    Setting("mnist", "lenet300-100", epochs=2, batch_size=128, lr=0.1),
    Setting("fashion-mnist", "conv4", epochs=1, batch_size=32, lr=1e-3, optimizer="adam", weight_decay=0.0,
            train_size=5120, test_size=2000, downsample=2, prune_first=False),
)
QUICK = (
    Setting("mnist", "lenet300-100", epochs=2, batch_size=64, lr=0.1, train_size=2000, test_size=1000),
    Setting("fashion-mnist", "conv4", epochs=1, batch_size=32, lr=1e-3, optimizer="adam", weight_decay=0.0,
            train_size=320, test_size=300, downsample=2, prune_first=False),
)
# --budget long: every dataset trained to convergence (20 epochs of the full 60,000 images), LeNet-300-100 on
# both (Conv-4 at 20 epochs, with RigL and SET at 5x, would take hours on 2 cores), and RigL and SET also at
# 2x and 5x that budget as in Evci et al. 2020's extended-training table.
LONG = (
    Setting("mnist", "lenet300-100", epochs=20, batch_size=128, lr=0.1),
    Setting("fashion-mnist", "lenet300-100", epochs=20, batch_size=128, lr=0.1),
)
LONG_QUICK = (
    Setting("mnist", "lenet300-100", epochs=3, batch_size=64, lr=0.1, train_size=1000, test_size=1000),
    Setting("fashion-mnist", "lenet300-100", epochs=3, batch_size=64, lr=0.1, train_size=1000, test_size=1000),
)
BUDGETS = ("short", "long")
SPARSITIES = {"short": (0.8, 0.9, 0.95, 0.98), "long": (0.9,)}


@dataclass(frozen=True)
class MethodsConfig:
    """Which datasets, sparsities and seeds, and the budget per dataset when not its setting's (FULL or QUICK)."""

    datasets: tuple[str, ...] | None = option(
        None, "Comma-separated: mnist (LeNet-300-100), fashion-mnist (Conv-4). Default: each one whose folder is "
        "given, the others skipped with a note.", choices=DATASETS, distinct=True)
    budget: str = option(
        "short", "short: MNIST 2 epochs (LeNet-300-100), Fashion-MNIST 160 steps (Conv-4), nine methods | long: "
        "LeNet-300-100 on both for 20 epochs (to convergence), the RigL paper's five methods, RigL and SET also at "
        "2x and 5x that budget, dense also at 2x.", choices=BUDGETS)
    sparsities: tuple[float, ...] | None = option(
        None, "Comma-separated sparsities in (0, 1) (default: 0.8,0.9,0.95,0.98; with --budget long 0.9).",
        distinct=True, quick=(0.9,))
    seeds: int = option(3, "Seeds per cell.", min=1, quick=1)
    epochs: int | None = option(None, "Epochs for every dataset (default: MNIST 2, Fashion-MNIST 1; with --budget "
                                      "long 20).", min=1)
    train_size: int | None = option(None, "Training examples for every dataset (default: MNIST all, Fashion-MNIST "
                                          "5120; with --budget long all).", min=1)
    test_size: int | None = option(None, "Test examples for every dataset (default: MNIST all, Fashion-MNIST "
                                         "2000; with --budget long all).", min=1)
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)
        if self.sparsities is not None and any(check_sparsity(s) <= 0 for s in self.sparsities):
            raise SparseflowError(f"sparsities must be in (0, 1), e.g. 0.8,0.9,0.95,0.98; got {self.sparsities!r}")

    def levels(self) -> tuple[float, ...]:
        """The sparsities of the grid: the ones given, else the budget's default."""
        return self.sparsities if self.sparsities is not None else SPARSITIES[self.budget]

    def settings(self, names: tuple[str, ...] = DATASETS) -> tuple[Setting, ...]:
        """The setting of each dataset in ``names`` (in :data:`DATASETS` order) at this scale, with the epochs and
        sizes given here."""
        changes = {k: v for k, v in (("epochs", self.epochs), ("train_size", self.train_size),
                                     ("test_size", self.test_size)) if v is not None}
        base = {"short": (FULL, QUICK), "long": (LONG, LONG_QUICK)}[self.budget][self.quick]
        return tuple(dataclasses.replace(s, **changes) for s in base if s.dataset in names)


@dataclass(frozen=True)
class MethodsOptions(BudgetOptions):
    """Where the data is and how many processes train: settings that do not change the result."""

    data_dir: Path | None = option(None, "Folder with mnist/ and fashion-mnist/ subfolders of IDX .gz files.")
    mnist_dir: Path | None = option(None, "Folder with MNIST's four IDX files (overrides --data-dir).")
    fashion_dir: Path | None = option(None, "Folder with Fashion-MNIST's four IDX files (overrides --data-dir).")
    workers: int = option(2, "Parallel training processes (one thread each on 2 cores).", min=1)

    def __post_init__(self) -> None:
        check(self)
