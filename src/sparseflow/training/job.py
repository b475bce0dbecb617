"""The training job's configuration: one frozen :class:`TrainJob` feeds the CLI, the run-directory name and the report.

Every field is declared with :func:`~sparseflow.training.options.option` (help, range, ``--quick`` value), so
``sparseflow train`` is generated from it. The run directory is named by a stable hash of the job
(:meth:`TrainJob.digest`, pinned by a test); :func:`read_job` reads the job back from a run directory and
:func:`job_differences` names the settings in which two jobs differ (a resume with other settings is refused).

How a job becomes a method: :mod:`sparseflow.training.build`; its result: :mod:`sparseflow.training.result`;
the run itself: :mod:`sparseflow.training.run`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sparseflow.distributions import DISTRIBUTIONS, check_sparsity
from sparseflow.errors import SparseflowError
from sparseflow.methods.execution import EXECUTIONS
from sparseflow.patterns import NM, Unstructured
from sparseflow.training.build import parse_pattern
from sparseflow.training.data import DATASETS
from sparseflow.training.hparams import OPTIMIZERS
from sparseflow.training.models import LANGUAGE_MODELS, MODELS, NORMS
from sparseflow.training.options import check, known, option
from sparseflow.training.text import TEXT_DATASETS

METHODS = ("dense", "magnitude", "gmp", "random", "snip", "grasp", "synflow", "set", "rigl")
# Each method's layer-wise distribution in its paper, used when none is given.
DEFAULT_DISTRIBUTION = {
    "dense": "uniform", "magnitude": "uniform", "gmp": "uniform", "random": "erk",
    "snip": "global", "grasp": "global", "synflow": "global", "set": "erk", "rigl": "erk",
}
DISTRIBUTION_NAMES = (*DISTRIBUTIONS, "global")
# How the kept weights start (sparseflow.init): the method's own choice, the dense signal variance restored (each
# unit's dense norm, or calibration for SNIP/GraSP), He's init redrawn per kept fan-in, or PyTorch's init as masked.
SPARSE_INITS = ("auto", "rescale", "he", "none")
FILE_DATASETS = ("mnist", "fashion-mnist")  # 60,000 training images each: --quick trains on a subset


# --- --quick: sized to finish within 60 s on 2 cores for every model and dataset ----------------------
def convolutional(model: str) -> bool:
    return model.startswith("conv") or model == "resnet"


def quick_epochs(c: SimpleNamespace) -> int:
    if c.dataset in TEXT_DATASETS:
        return 1
    if c.dataset in (*FILE_DATASETS, "mnist1d"):
        return 3 if convolutional(c.model) else 5
    return 10


def quick_subset(c: SimpleNamespace) -> int | None:
    if c.dataset in TEXT_DATASETS:
        return 2560  # windows of 128 characters: 160 steps of 16
    return (1000 if convolutional(c.model) else 4000) if c.dataset in FILE_DATASETS else None


def quick_batch_size(c: SimpleNamespace) -> int:
    # On a language model SGD gains more from 4x the steps than from 4x the windows per step. (Configs that
    # share this option without a single dataset, such as a sweep's, keep their batch size.)
    return 16 if getattr(c, "dataset", None) in TEXT_DATASETS else c.batch_size


def quick_test_subset(c: SimpleNamespace) -> int | None:
    # (a training subset given explicitly keeps the whole test split, as it always has)
    if c.dataset in TEXT_DATASETS:
        return 128  # of 871 validation windows: 16,384 characters
    if c.dataset in FILE_DATASETS and c.subset is None:
        return 1000 if convolutional(c.model) else 2000
    return None


def _names(names: tuple[str, ...]) -> str:
    return " | ".join(names)


@dataclass(frozen=True)
class TrainJob:
    """Everything that determines a training run's result (paths and display flags excluded)."""

    method: str = option("gmp", _names(METHODS))
    sparsity: float = option(0.9, "Fraction of target weights that are zero, in [0, 1).")
    distribution: str | None = option(None, f"{_names(DISTRIBUTION_NAMES)} (default: the method's paper)")
    pattern: str = option("unstructured", "unstructured | N:M (e.g. 2:4) | RxC blocks (e.g. 4x4)")
    sparse_init: str = option(
        "auto", "How the kept weights start: auto (the method's own: rescale for the methods that start sparse, "
        "none for magnitude and gmp, which start dense) | rescale (the dense signal variance restored after the "
        "first mask: each unit's dense norm given back, sf.rescale_; snip and grasp calibrate on their data batch, "
        "sf.calibrate_) | he (redrawn from N(0, 2/kept fan-in), sf.sparse_init_; critical for ReLU; the dense "
        "baseline gets He's init too) | none (PyTorch's init, masked)", choices=SPARSE_INITS)
    model: str = option("mlp", _names(MODELS))
    hidden: tuple[int, ...] | None = option(None, "MLP widths, e.g. 300,100 (model mlp only).", min=1,
                                            metavar="WIDTHS")
    norm: str = option("none", _names(NORMS), choices=NORMS)
    dataset: str = option("digits", _names(DATASETS))
    subset: int | None = option(None, "Use this many training examples (quick: 4000 of mnist or fashion-mnist, "
                                "1000 for a convolutional model, 2560 windows of tinyshakespeare).", min=1,
                                quick=quick_subset)
    test_subset: int | None = option(None, "Evaluate on the first N test examples (quick, without --subset: 2000 "
                                     "of mnist or fashion-mnist, 1000 for a convolutional model, 128 windows of "
                                     "tinyshakespeare).", min=1, quick=quick_test_subset)
    epochs: int = option(30, "Training epochs (each run; quick: 10, on mnist1d, mnist and fashion-mnist 5, 3 for "
                         "a convolutional model, 1 on tinyshakespeare).", min=1, quick=quick_epochs)
    batch_size: int = option(64, "Minibatch size (per process when data-parallel; quick: 16 on tinyshakespeare).",
                             min=1, quick=quick_batch_size)
    lr: float = option(0.05, "Peak learning rate (cosine decay).", min=0, min_open=True)
    optimizer: str = option("sgd", _names(OPTIMIZERS), choices=OPTIMIZERS)
    weight_decay: float = option(5e-4, "Weight decay.", min=0)
    seed: int = option(0, "Seed for weights, mask and data order.")
    baseline: bool = option(True, "Also train the dense baseline on the same budget.",
                            flag="--baseline/--no-baseline")
    prune_first: bool = option(True, "Prune the first (input) layer; --no-prune-first keeps it dense.",
                               flag="--prune-first/--no-prune-first")
    prune_last: bool = option(True, "Prune the last (output) layer; --no-prune-last keeps it dense.",
                              flag="--prune-last/--no-prune-last")
    execution: str = option(
        "dense", "How the sparse run's nn.Linear layers train: dense (masked dense tensors) | sparse (only the kept "
        "weights are stored, multiplied and updated; optimizer state shrinks with the density) | auto (each layer "
        "timed at the run's batch after the first step, dense kept where it is faster). Same results up to "
        "floating-point order.", choices=EXECUTIONS)
    # Data-parallel processes (torchrun): each takes batch_size examples of every global batch of
    # world_size * batch_size, so the run equals one process with that global batch.
    world_size: int = option(1, "Data-parallel processes.", min=1, cli=False)

    def __post_init__(self) -> None:
        check(self)
        known(self.method, METHODS, "method")
        if self.distribution is None:
            object.__setattr__(self, "distribution", DEFAULT_DISTRIBUTION[self.method])
        known(self.distribution, DISTRIBUTION_NAMES, "distribution")
        known(self.model, MODELS, "model")
        known(self.dataset, DATASETS, "dataset")
        if (self.dataset in TEXT_DATASETS) != (self.model in LANGUAGE_MODELS):
            raise SparseflowError(
                f"model {self.model!r} does not fit dataset {self.dataset!r}: the language models "
                f"({', '.join(LANGUAGE_MODELS)}) train on text ({', '.join(TEXT_DATASETS)}), the others on "
                "images and signals; e.g. --dataset tinyshakespeare --model gpt")
        check_sparsity(self.sparsity)
        pattern = parse_pattern(self.pattern)
        if self.method == "dense" and self.sparsity != 0:
            object.__setattr__(self, "sparsity", 0.0)  # a dense run has no sparsity to speak of
        self._check_combination(pattern)

    def _check_combination(self, pattern: Any) -> None:
        """Settings valid alone but not together, refused here (before any run folder or data) rather than
        when the model or the method is built."""
        if self.hidden is not None and self.model != "mlp":
            raise SparseflowError(f"hidden={self.hidden!r} (--hidden) only applies to 'mlp'; {self.model!r} has "
                                  "fixed widths, leave it unset")
        if self.method == "dense":
            return
        if isinstance(pattern, NM) and abs(self.sparsity - (1 - pattern.density)) > 1e-9:
            fixed = 1 - pattern.density
            raise SparseflowError(f"{pattern!r} fixes every layer's sparsity at {fixed:g}; got sparsity="
                                  f"{self.sparsity:g}: pass sparsity={fixed:g} (--sparsity {fixed:g})")
        if self.method in ("set", "rigl") and not isinstance(pattern, Unstructured):
            raise SparseflowError(f"{self.method} supports pattern 'unstructured' only, got {self.pattern!r}")
        if self.method in ("set", "rigl") and self.distribution == "global":
            raise SparseflowError(f"{self.method} needs per-layer densities (uniform, er or erk), got "
                                  "distribution 'global'")

    def train_config_kwargs(self) -> dict[str, Any]:
        return dict(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
            weight_decay=self.weight_decay, seed=self.seed, execution=self.execution,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden) if self.hidden is not None else None
        if self.world_size == 1:  # single-process runs keep the names (hashes) they had before world_size existed
            del d["world_size"]
        if self.sparse_init == "auto":  # likewise for runs with the method's own initialisation
            del d["sparse_init"]
        if self.execution == "dense":  # and for runs in dense execution
            del d["execution"]
        return d

    def digest(self) -> str:
        """Stable 10-hex-digit hash of the config: the run-directory suffix."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def run_name(self) -> str:
        return f"train-{self.dataset}-{self.model}-{self.method}-s{self.sparsity:g}-{self.digest()}"


def read_job(run_dir: Path) -> TrainJob:
    """The TrainJob ``run_dir`` (a directory written by :func:`~sparseflow.training.run.run_train_job`) was
    started with."""
    path = Path(run_dir) / "config.json"
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise SparseflowError(f"run directory {str(run_dir)!r} is a file, not a folder; pass the directory of an "
                              "earlier `sparseflow train` run")
    if not Path(run_dir).is_dir():
        raise SparseflowError(f"run directory {str(run_dir)!r} does not exist; pass the directory of an earlier "
                              "`sparseflow train` run")
    if not path.is_file():
        raise SparseflowError(f"{str(run_dir)!r} holds no training run (no config.json); pass the directory of an "
                              "earlier `sparseflow train` run, or start a new one with --out")
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise SparseflowError(f"{str(path)!r} is not valid JSON ({e}); restore it or start a new run") from None
    saved = config.get("job") if isinstance(config, dict) else None
    if not isinstance(saved, dict):
        raise SparseflowError(f"{str(path)!r} is not the config of a `sparseflow train` run (it has no 'job' entry)")
    try:
        return TrainJob(**saved)
    except TypeError as e:
        raise SparseflowError(f"{str(path)!r} holds settings this version of sparseflow does not know ({e}); "
                              "resume it with the version that wrote it, or start a new run") from None


def job_differences(saved: TrainJob, now: TrainJob, names: tuple[str, ...] | None = None) -> list[str]:
    """``"epochs: 3 in the run directory, 5 now"`` for every setting (of ``names``, default all) that differs."""
    a, b = saved.to_dict(), now.to_dict()
    return [f"{k}: {json.dumps(a[k])} in the run directory, {json.dumps(b[k])} now"
            for k in (names if names is not None else tuple(a)) if a[k] != b[k]]
