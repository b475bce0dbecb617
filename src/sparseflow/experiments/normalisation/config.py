"""Settings of ``sparseflow experiment normalisation``: the full run and, through each field's ``quick``, the
quick one; :class:`NormOptions` holds what does not change the result (the data folder, threads, ``--yes``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparseflow.errors import SparseflowError
from sparseflow.training.models import NORMS
from sparseflow.training.options import BudgetOptions, check, option

BATCH_SIZES = (2, 4, 8, 32, 128)
VARIANTS = ("dense", "sparse")
# Seconds per training step of a pack of K ResNet-8s (in units of width 16 at 14 x 14, scaled by the pixels and
# width^2, see sparseflow.training.packed), fitted to a full run with two training processes on this 2-core
# machine, one torch thread each: a fixed part per step, a part per member (its own kernels' overhead) and a part
# per example; evaluation per member and example in eval mode. BatchNorm's packs cost a little more (its
# statistics), the sparse members nothing extra (their masks are applied to the pack's gradients as a whole).
STEP_S, MEMBER_S, EXAMPLE_S, EVAL_S = 2.0e-3, 1.2e-4, 4.5e-4, 6.0e-5
BN_OVERHEAD = 1.1


@dataclass(frozen=True)
class NormConfig:
    """The grid: norm x batch size x variant, per seed (see :mod:`.run` for the setting)."""

    seeds: int = option(16, "Seeds per cell.", min=1, quick=2)
    epochs: int = option(20, "Epochs, the same for every cell.", min=1, quick=2)
    train_size: int = option(2048, "Training images, a fixed subset.", min=1, quick=128)
    val_size: int = option(1000, "Validation images (the convergence check), held out of the training split.",
                           min=1, quick=128)
    test_size: int | None = option(None, "Test images, a fixed subset (default: all 10000).", min=1, quick=256)
    batch_sizes: tuple[int, ...] = option(BATCH_SIZES, "Batch sizes, at least two, increasing, e.g. 2,4,8,32,128.",
                                          min=1, increasing=True)
    norms: tuple[str, ...] = option(NORMS, "Norms out of batch,group,layer,none.", choices=NORMS, distinct=True)
    variants: tuple[str, ...] = option(VARIANTS, "dense,sparse or one of them.", choices=VARIANTS, distinct=True)
    sparsity: float = option(0.9, "Sparsity of the sparse variant.", min=0, max=1, max_open=True)
    lr_ref: float = option(0.1, "SGD learning rate at batch 128; scaled linearly, lr_ref x batch / 128.", min=0,
                           min_open=True, max=10, flag="--lr")
    momentum: float = option(0.9, "SGD momentum.", min=0, max=1, max_open=True)
    weight_decay: float = option(5e-4, "Weight decay.", min=0)
    warmup_epochs: float = option(2.0, "Linear warm-up of the learning rate from lr / 10, in epochs; cosine decay "
                                  "to zero after it.", min=0, quick=0.5)
    flat_tol: float = option(0.02, "Convergence check: the validation loss over the last 10 % of the epochs "
                             "moves by at most this fraction of its final value.", min=0, min_open=True)
    pool: int = option(2, "Average-pool images pool x pool (2: 14 x 14; 1 = full 28 x 28); divides 28.",
                       choices=(1, 2, 4, 7, 14))
    width: int = option(8, "ResNet-8 width: channels of the first stage.", min=1)
    batch_ref: int = option(128, "The batch size lr_ref is given at.", min=1, cli=False)
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)
        if len(self.batch_sizes) < 2:
            raise SparseflowError("batch sizes must be at least two distinct increasing sizes, "
                                  f"got {self.batch_sizes!r}")
        if max(self.batch_sizes) > self.train_size:
            raise SparseflowError(f"the largest batch size {max(self.batch_sizes)} exceeds train_size "
                                  f"{self.train_size}; pass a larger --train-size or smaller batch sizes")
        if self.train_size + self.val_size > 60_000:
            raise SparseflowError(f"train_size {self.train_size} + val_size {self.val_size} exceed Fashion-MNIST's "
                                  "60000 training images; pass smaller sizes")
        if self.warmup_epochs >= self.epochs:
            raise SparseflowError(f"warmup_epochs {self.warmup_epochs:g} must be below epochs {self.epochs}: the "
                                  "schedule needs room to decay; pass fewer warm-up epochs or more epochs")

    @property
    def seed_values(self) -> tuple[int, ...]:
        """The seeds themselves: 0 .. seeds - 1."""
        return tuple(range(self.seeds))

    @property
    def members(self) -> int:
        """Networks trained together in one pack: every seed of every variant, for one norm and batch size."""
        return self.seeds * len(self.variants)

    def cells(self) -> int:
        return self.seeds * len(self.variants) * len(self.norms) * len(self.batch_sizes)

    def pack_estimate_s(self, norm: str, batch: int) -> float:
        """Seconds on one core for the networks of one norm and batch size (every seed of every variant): steps x
        (fixed + per member + per example cost), plus evaluation of every member on the validation set once per
        epoch and on the test set at the end (BatchNorm once more, with per-batch statistics)."""
        scale = (28 // self.pool) ** 2 / 14**2 * (self.width / 16) ** 2
        k, test = self.members, 10_000 if self.test_size is None else self.test_size
        factor = BN_OVERHEAD if norm == "batch" else 1.0
        steps = self.epochs * (self.train_size // batch)
        train = factor * steps * (STEP_S + k * (MEMBER_S + batch * EXAMPLE_S * scale))
        evals = self.epochs * self.val_size + test * (2 if norm == "batch" else 1)
        return train + k * evals * EVAL_S * scale

    def estimate_s(self) -> float:
        """Seconds on one core for the whole grid: the sum of :meth:`pack_estimate_s`."""
        return sum(self.pack_estimate_s(n, b) for n in self.norms for b in self.batch_sizes)


@dataclass(frozen=True)
class NormOptions(BudgetOptions):
    """Where the data is and how many threads train: settings that do not change the result."""

    data_dir: Path | None = option(None, "Folder holding Fashion-MNIST's four IDX files.")
    threads: int = option(1, "torch.set_num_threads per training process (small convs: 1 is fastest).", min=1)
    workers: int = option(2, "Training processes, each training whole norm x batch-size packs (one per core).",
                          min=1)

    def __post_init__(self) -> None:
        check(self)
