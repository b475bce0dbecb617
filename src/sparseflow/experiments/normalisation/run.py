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
Settings: :mod:`.config`; statistics and criteria: :mod:`.result`; figures and report: :mod:`.report`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from sparseflow.distributions import erk
from sparseflow.errors import SparseflowError
from sparseflow.experiments.normalisation.config import NormConfig, NormOptions
from sparseflow.experiments.normalisation.result import Cell, NormResult
from sparseflow.experiments.protocol import Tick, command_line, no_progress
from sparseflow.methods import RandomSparse
from sparseflow.training.data import Dataset, load_dataset, loaders
from sparseflow.training.loop import TrainConfig, fit
from sparseflow.training.models import ResNet
from sparseflow.training.rundir import _human, check_budget

TEST_SEED = 0  # the test subset is one fixed draw, the same for every run seed
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")


def scaled_lr(batch: int, lr_ref: float, batch_ref: int) -> float:
    """Square-root scaling rule for Adam: ``lr_ref * sqrt(batch / batch_ref)``."""
    return lr_ref * math.sqrt(batch / batch_ref)


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


def load_data(cfg: NormConfig, data_dir: Path, seed: int) -> Dataset:
    """Fashion-MNIST from ``data_dir``: ``train_size`` seeded training images, a fixed test subset, both pooled by
    ``cfg.pool``."""
    check_data(data_dir)
    ds = load_dataset("fashion-mnist", data_dir, subset=cfg.train_size, seed=seed)
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


def data_dir(options: NormOptions) -> Path:
    """``options.data_dir``, checked to hold Fashion-MNIST's four IDX files."""
    if options.data_dir is None:
        raise SparseflowError("experiment normalisation trains on Fashion-MNIST: pass --data-dir, the folder "
                              "holding its four IDX files (train-images-idx3-ubyte.gz, ...)")
    check_data(options.data_dir)
    return Path(options.data_dir)


def check(config: NormConfig, options: NormOptions) -> Sequence[str]:
    """Refuse a missing data folder, or a grid estimated past an hour without ``--yes``; the estimate, as a note."""
    data_dir(options)
    check_budget(config.estimate_s(), options.yes, "experiment normalisation")
    return [f"about {_human(config.estimate_s())} for {config.cells()} training runs"]


def run(config: NormConfig, out: Path | None = None, progress: Tick = no_progress, *,
        options: NormOptions) -> NormResult:
    """Train every cell of ``config`` (seed by seed) with ``options.threads`` torch threads (restored afterwards);
    ``progress(what)`` after each. ``out`` only names the run in its command line."""
    cfg, folder = config, data_dir(options)
    start, cells = time.perf_counter(), []
    before = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    progress("loading Fashion-MNIST", advance=0, total=cfg.cells())
    try:
        for seed in cfg.seed_values:
            ds = load_data(cfg, folder, seed)
            for variant in cfg.variants:
                for norm in cfg.norms:
                    for batch in cfg.batch_sizes:
                        c = train_cell(ds, cfg, variant, norm, batch, seed)
                        cells.append(c)
                        progress(f"{c.variant} {c.norm} batch {c.batch} seed {c.seed}: {100 * c.accuracy:.1f} %")
    finally:
        torch.set_num_threads(before)
    command = command_line("normalisation", cfg, dataclasses.replace(options, out=out))
    return NormResult(cfg, tuple(cells), time.perf_counter() - start, folder, command)
