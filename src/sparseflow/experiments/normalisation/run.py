"""Normalisation under small batches: BatchNorm vs GroupNorm / LayerNorm / none, dense and 90 % sparse.

Claim (Wu & He 2018, "Group Normalization", fig. 1): BatchNorm's error grows as the batch shrinks, because
its statistics are estimated per batch while training and replaced by running averages at test time (at
batch 2 per GPU BN has 10.6 % higher ImageNet error than GN), whereas GroupNorm and LayerNorm normalise each
example on its own and do not depend on the batch size at all.

Setting: ResNet-8 (:class:`sparseflow.training.models.ResNet`, the small ResNet of He et al. 2016 with one BasicBlock
per stage, width 16, norm in ``batch``, ``group``, ``layer``, ``none``) on Fashion-MNIST average-pooled to
14 x 14. Every cell of norm x batch size x variant trains for the same number of epochs on the same seeded
training subset. The sparse variant is a static Erdős–Rényi-Kernel random mask (:class:`~sparseflow.RandomSparse`,
``erk``, kept weights rescaled to their fan-in). Test accuracy is read with :func:`sparseflow.training.loop.evaluate`,
i.e. in eval mode: BatchNorm then uses its running statistics, which is where small batches hurt. For BN cells
the accuracy with per-batch statistics (test batches of the training batch size) is also recorded, to tell
a bad running estimate from a badly trained network.

Budget: on a CPU a step at batch 2 costs almost as much as one at batch 32 (fixed per-step overhead), so the
grid's cost is set by the steps at batch 2: epochs x train_size / 2. The default (2,048 images, 4 epochs,
3 seeds, 120 training runs) took 38 min on 2 shared cores; it leaves batch 128 with 64 steps only,
so the larger batches are the less converged ones and the no-norm control row measures that effect.

Learning rate: Adam, ``lr(B) = lr_ref * sqrt(B / batch_ref)``, the square-root scaling rule for adaptive
methods (Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms"): it keeps
the gradient-noise scale per epoch fixed, so batch 2 gets a small step, not a broken one. lr_ref = 6e-3 at
batch 128 did better than 3e-3 at batches 32 and 128 in a one-seed pilot (by 0.3 to 1.8 pp, GroupNorm and BatchNorm);
1e-2 and 2e-2 did no better at 64 steps.
Per seed s, the subset, the init, the mask and the batch order all come from s: cells are paired.
Figures, report and criteria: :mod:`sparseflow.experiments.normalisation.report`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from sparseflow.training.data import Dataset, load_dataset, loaders
from sparseflow.distributions import check_sparsity, erk
from sparseflow.errors import SparseflowError
from sparseflow.methods import RandomSparse
from sparseflow.training.models import NORMS, ResNet
from sparseflow.training.loop import TrainConfig, fit

if TYPE_CHECKING:
    from sparseflow.experiments.normalisation.report import NormResult

BATCH_SIZES = (2, 4, 8, 32, 128)
VARIANTS = ("dense", "sparse")
TEST_SEED = 0  # the test subset is one fixed draw, the same for every run seed
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
# Seconds per training step of ResNet-8 (width 16) on one core of this 2-core machine shared with other jobs,
# measured with one torch thread: a fixed part (Python and kernel-launch overhead, dominant at batch 2) plus a
# part per example at 14 x 14 pixels; evaluation per example at batch 500. A static mask costs about half again
# per step (it is re-applied, and the optimizer state zeroed, after every step).
STEP_S, EXAMPLE_S, EVAL_S = 6.0e-3, 3.0e-4, 1.8e-4
SPARSE_OVERHEAD = 1.5


@dataclass(frozen=True)
class NormConfig:
    """One run of the grid; :meth:`default` gives the full and the quick scale."""

    quick: bool
    data_dir: Path
    seeds: tuple[int, ...]
    norms: tuple[str, ...] = NORMS
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    variants: tuple[str, ...] = VARIANTS
    sparsity: float = 0.9
    epochs: int = 4
    train_size: int = 2048
    test_size: int | None = None  # None: all 10,000 test images
    pool: int = 2  # images are average-pooled pool x pool (28 x 28 -> 14 x 14) to fit the CPU budget
    width: int = 16  # channels of the first stage (then 2x, 4x)
    lr_ref: float = 6e-3  # Adam learning rate at batch_ref
    batch_ref: int = 128

    @classmethod
    def default(cls, *, quick: bool, data_dir: Path, seeds: int | None = None) -> NormConfig:
        if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
            raise SparseflowError(f"seeds must be an integer >= 1, got {seeds!r}")
        n = seeds if seeds is not None else (2 if quick else 3)
        if quick:
            return cls(quick=True, data_dir=Path(data_dir), seeds=tuple(range(n)), epochs=1, train_size=128,
                       test_size=256)
        return cls(quick=False, data_dir=Path(data_dir), seeds=tuple(range(n)))

    def check(self) -> None:
        def positive_int(name: str, v: object) -> None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SparseflowError(f"{name} must be an integer >= 1, got {v!r}")

        for name in ("epochs", "train_size", "pool", "width", "batch_ref"):
            positive_int(name, getattr(self, name))
        if self.test_size is not None:
            positive_int("test_size", self.test_size)
        if 28 % self.pool:
            raise SparseflowError(f"pool must divide 28 (1, 2, 4, 7, 14), got {self.pool!r}")
        for what, values, allowed in (("norms", self.norms, NORMS), ("variants", self.variants, VARIANTS)):
            bad = [v for v in values if v not in allowed]
            if bad or not values or len(set(values)) != len(values):
                raise SparseflowError(f"{what} must be distinct values out of {', '.join(allowed)}, got {values!r}")
        for b in self.batch_sizes:
            positive_int("every batch size", b)
        if len(self.batch_sizes) < 2 or list(self.batch_sizes) != sorted(set(self.batch_sizes)):
            raise SparseflowError("batch sizes must be at least two distinct increasing sizes, "
                                  f"got {self.batch_sizes!r}")
        if max(self.batch_sizes) > self.train_size:
            raise SparseflowError(f"the largest batch size {max(self.batch_sizes)} exceeds train_size "
                                  f"{self.train_size}; pass a larger --train-size or smaller batch sizes")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise SparseflowError(f"seeds must be distinct, got {self.seeds!r}")
        check_sparsity(self.sparsity)
        if not (isinstance(self.lr_ref, (int, float)) and not isinstance(self.lr_ref, bool) and 0 < self.lr_ref < 1):
            raise SparseflowError(f"lr must be an Adam learning rate in (0, 1) such as 3e-3, got {self.lr_ref!r}")

    def cells(self) -> int:
        return len(self.seeds) * len(self.variants) * len(self.norms) * len(self.batch_sizes)

    def estimate_s(self) -> float:
        """Seconds on one shared core: steps x (fixed + per-example cost) plus evaluation, summed over cells.
        BatchNorm cells also evaluate with test batches of the training size: a forward pass costs about a third
        of a training step."""
        scale = (28 // self.pool) ** 2 / 14**2 * (self.width / 16) ** 2
        test = 10_000 if self.test_size is None else self.test_size
        per_row = sum(self.epochs * math.ceil(self.train_size / b) * (STEP_S + b * EXAMPLE_S * scale)
                      for b in self.batch_sizes)
        variants = sum(SPARSE_OVERHEAD if v == "sparse" else 1.0 for v in self.variants)
        runs = len(self.seeds) * len(self.variants)
        evals = runs * len(self.norms) * len(self.batch_sizes) * test * EVAL_S * scale
        if "batch" in self.norms:
            evals += runs * sum(math.ceil(test / b) * STEP_S / 3 + test * EVAL_S * scale for b in self.batch_sizes)
        return len(self.seeds) * len(self.norms) * variants * per_row + evals


def scaled_lr(batch: int, lr_ref: float, batch_ref: int) -> float:
    """Square-root scaling rule for Adam: ``lr_ref * sqrt(batch / batch_ref)``."""
    return lr_ref * math.sqrt(batch / batch_ref)


@dataclass(frozen=True)
class Cell:
    """One trained network: its place in the grid and what it measured."""

    variant: str
    norm: str
    batch: int
    seed: int
    accuracy: float  # eval mode (BN: running statistics)
    batch_stats_accuracy: float | None  # BN only: test batches of `batch` normalised by their own statistics
    train_loss: float
    lr: float
    steps: int
    density: float
    seconds: float


def check_data(data_dir: Path) -> None:
    """Refuse a ``data_dir`` that is not a folder holding Fashion-MNIST's four IDX files, naming what lacks."""
    if not Path(data_dir).is_dir():
        raise SparseflowError(f"--data-dir {str(data_dir)!r} is not a folder; pass the folder holding "
                              f"Fashion-MNIST's four IDX files ({', '.join(IDX_FILES)})")
    missing = [f for f in IDX_FILES if not (Path(data_dir) / f).is_file()]
    if missing:
        raise SparseflowError(f"--data-dir {str(data_dir)!r} lacks {', '.join(missing)}; pass the folder holding "
                              "Fashion-MNIST's four IDX files (to fetch them once: sparseflow train --dataset "
                              "fashion-mnist --download --data-dir DIR)")


def load_data(cfg: NormConfig, seed: int) -> Dataset:
    """Fashion-MNIST: ``train_size`` seeded training images, a fixed test subset, both pooled by ``cfg.pool``."""
    check_data(cfg.data_dir)
    ds = load_dataset("fashion-mnist", cfg.data_dir, subset=cfg.train_size, seed=seed)
    x_te, y_te = ds.x_test, ds.y_test
    if cfg.test_size is not None and cfg.test_size < len(y_te):
        keep = torch.randperm(len(y_te), generator=torch.Generator().manual_seed(TEST_SEED))[: cfg.test_size]
        x_te, y_te = x_te[keep], y_te[keep]

    def pool(x: torch.Tensor) -> torch.Tensor:  # (N, 1, 28, 28) -> (N, 1, 28 / pool, 28 / pool)
        return x if cfg.pool == 1 else F.avg_pool2d(x, cfg.pool)

    return Dataset(ds.name, pool(ds.x_train), ds.y_train, pool(x_te), y_te, ds.num_classes)


@torch.no_grad()
def batch_stats_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Accuracy with BatchNorm in training mode: each test batch of ``batch`` examples normalised by its own
    statistics, as during training. Runs on a copy, so the model's running statistics stay untouched."""
    twin = copy.deepcopy(model).train()
    correct = sum(int((twin(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    return correct / len(y)


def train_cell(ds: Dataset, cfg: NormConfig, variant: str, norm: str, batch: int, seed: int) -> Cell:
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # the init depends on `seed` only, not on the caller's RNG
        torch.manual_seed(seed)
        model = ResNet(ds.input_shape[0], ds.num_classes, depth=8, width=cfg.width, norm=norm)
    train_loader, _ = loaders(ds, batch, seed=seed)
    test_loader = DataLoader(TensorDataset(ds.x_test, ds.y_test), batch_size=500)
    lr = scaled_lr(batch, cfg.lr_ref, cfg.batch_ref)
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=batch, lr=lr, optimizer="adam", weight_decay=0.0, seed=seed,
                       eval_every_epoch=False)
    method = RandomSparse(cfg.sparsity, distribution=erk, seed=seed) if variant == "sparse" else None
    result = fit(model, train_loader, test_loader, tcfg, method=method, progress=False)
    bn = batch_stats_accuracy(model, ds.x_test, ds.y_test, batch) if norm == "batch" else None
    return Cell(variant, norm, batch, seed, result.test_acc, bn, result.train_loss, lr, result.steps,
                1.0 if method is None else method.density(), time.perf_counter() - start)


def run_normalisation(cfg: NormConfig, progress: Callable[[Cell], None] = lambda _: None) -> NormResult:
    """Train every cell of ``cfg`` (seed by seed); ``progress(cell)`` is called after each one."""
    from sparseflow.experiments.normalisation.report import NormResult

    cfg.check()
    start, cells = time.perf_counter(), []
    for seed in cfg.seeds:
        ds = load_data(cfg, seed)
        for variant in cfg.variants:
            for norm in cfg.norms:
                for batch in cfg.batch_sizes:
                    cells.append(train_cell(ds, cfg, variant, norm, batch, seed))
                    progress(cells[-1])
    return NormResult(cfg, tuple(cells), time.perf_counter() - start)
