"""Normalisation under small batches: BatchNorm vs GroupNorm / LayerNorm / none, dense and 90 % sparse.

Claim (Wu & He 2018, "Group Normalization", fig. 1): BatchNorm's error grows as the batch shrinks, because
its statistics are estimated per batch while training and replaced by running averages at test time (at
batch 2 per GPU BN has 10.6 % higher ImageNet error than GN), whereas GroupNorm and LayerNorm normalise each
example on its own and do not depend on the batch size at all.

Setting: ResNet-8 (:class:`sparseflow.training.models.ResNet`, the small ResNet of He et al. 2016 with one BasicBlock
per stage, width 8, norm in ``batch``, ``group``, ``layer``, ``none``) on a fixed subset of 2,048 Fashion-MNIST
images average-pooled to 14 x 14. The sparse variant is a static Erdős–Rényi-Kernel random mask
(:class:`~sparseflow.RandomSparse`, ``erk``, kept weights rescaled to each unit's dense norm). Test accuracy on all 10,000
test images in eval mode: BatchNorm then uses its running statistics. For BN cells the accuracy with per-batch
statistics (test batches of the training batch size) is also recorded, to tell a bad running estimate from a
badly trained network.

Training, as Wu & He train: every batch size for the same number of epochs, long enough that batch 128 converges
(the validation loss, read after every epoch on 1,000 held-out training images, is flat over the last 10 % of the
epochs; :func:`~sparseflow.experiments.normalisation.result.flatness`), with SGD (momentum 0.9, weight decay
5e-4), the learning rate scaled linearly with the batch size (Goyal et al. 2017: ``lr_ref * B / 128``), a linear
warm-up over the first 2 epochs and cosine decay to zero. Under the linear rule the examples seen, not the steps
taken, set how far SGD gets, so equal epochs train every batch size about equally far, and what remains is
what the batch does through the norm.

Budget: on a CPU a step at batch 2 costs mostly fixed overhead, so the grid's cost is the steps at batch 2
(epochs x 1,024 per network). The networks of one norm and batch size (every seed of both variants) train as one
packed network (:func:`sparseflow.training.packed.pack`: grouped convolutions, each member's own batch, its own
gradient), which shares that overhead; ``--workers`` processes train the packs in parallel.
Per seed s, the init, the mask and the batch order come from s; the data are the same for every seed.
Settings: :mod:`.config`; statistics and criteria: :mod:`.result`; figures and report: :mod:`.report`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from concurrent.futures import as_completed
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from sparseflow.distributions import erk
from sparseflow.errors import SparseflowError
from sparseflow.experiments.normalisation.config import NormConfig, NormOptions
from sparseflow.experiments.normalisation.result import Cell, NormResult, flatness
from sparseflow.experiments.protocol import Tick, command_line, no_progress
from sparseflow.methods import RandomSparse
from sparseflow.training.data import load_dataset
from sparseflow.training.models import ResNet
from sparseflow.training.packed import member_outputs, pack, pack_inputs, packed_masks, unpack
from sparseflow.training.processes import worker_pool
from sparseflow.training.rundir import _human, check_budget

SPLIT_SEED = 0  # the validation images and the test subset are one fixed draw, the same for every run seed
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
EVAL_BATCH = 500
PACK_MAX_BATCH = 32


def scaled_lr(batch: int, lr_ref: float, batch_ref: int) -> float:
    """Linear scaling rule (Goyal et al. 2017, as Wu & He 2018 train): ``lr_ref * batch / batch_ref``."""
    return lr_ref * batch / batch_ref


def lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    """Learning rate at ``step`` of ``total``: linear warm-up from ``lr / 10`` to ``lr`` over ``warmup`` steps
    (Goyal et al.'s gradual warm-up), then cosine decay to zero at ``total``."""
    if step < warmup:
        return lr * (0.1 + 0.9 * step / warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


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


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """Fashion-MNIST pooled by ``cfg.pool``: the training subset, a validation set held out of the training split
    and the (fixed subset of the) test set; one fixed draw, the same for every seed."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor


def load_split(cfg: NormConfig, data_dir: Path) -> Split:
    """Read Fashion-MNIST from ``data_dir``: ``train_size`` training and ``val_size`` validation images, disjoint
    draws from the training split by a fixed seed; the test set (or a fixed subset of ``test_size``); all pooled."""
    check_data(data_dir)
    ds = load_dataset("fashion-mnist", data_dir)

    def pooled(x: torch.Tensor) -> torch.Tensor:  # (N, 1, 28, 28) -> (N, 1, 28 / pool, 28 / pool)
        return x if cfg.pool == 1 else F.avg_pool2d(x, cfg.pool)

    order = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(SPLIT_SEED))
    train, val = order[: cfg.train_size], order[cfg.train_size: cfg.train_size + cfg.val_size]
    x_te, y_te = ds.x_test, ds.y_test
    if cfg.test_size is not None and cfg.test_size < len(y_te):
        keep = torch.randperm(len(y_te), generator=torch.Generator().manual_seed(SPLIT_SEED))[: cfg.test_size]
        x_te, y_te = x_te[keep], y_te[keep]
    return Split(pooled(ds.x_train[train]), ds.y_train[train], pooled(ds.x_train[val]), ds.y_train[val],
                 pooled(x_te), y_te)


def member(cfg: NormConfig, norm: str, variant: str, seed: int) -> tuple[ResNet, dict[str, Tensor]]:
    """Member network of ``seed``: ResNet-8 initialised from ``seed`` and, for the sparse variant, its static
    ERK mask (kept weights rescaled to each unit's dense norm); returns the network and its mask (empty when dense)."""
    with torch.random.fork_rng(devices=[]):  # the init depends on `seed` only, not on the caller's RNG
        torch.manual_seed(seed)
        model = ResNet(1, 10, depth=8, width=cfg.width, norm=norm)
    if variant == "dense":
        return model, {}
    method = RandomSparse(cfg.sparsity, distribution=erk, seed=seed)
    method.prepare(model)
    masks = {n: m.clone() for n, m in method.mask.items()}
    method.remove()
    return model, masks


def pack_size(batch: int, k: int) -> int:
    """Members trained together at ``batch``: all ``k`` at small batches, where a step costs mostly fixed overhead
    that the pack shares; one at a time from batch 64 on, where grouped convolutions lose to plain ones (per
    example, ResNet-8 at 14 x 14, one thread: 16 packed at batch 32 took 0.86x the time of 16 alone, at batch 128
    1.28x)."""
    return k if batch <= PACK_MAX_BATCH else 1


@torch.no_grad()
def evaluate(models: Sequence[torch.nn.Module], x: Tensor, y: Tensor) -> tuple[list[float], list[float]]:
    """Per network: (accuracy, mean cross-entropy) on ``x``, ``y`` in eval mode (BatchNorm: running statistics)."""
    accs, losses = [], []
    for model in models:
        model.eval()
        correct, loss = 0, 0.0
        for i in range(0, len(y), EVAL_BATCH):
            out = model(x[i:i + EVAL_BATCH])
            correct += int((out.argmax(1) == y[i:i + EVAL_BATCH]).sum())
            loss += float(F.cross_entropy(out, y[i:i + EVAL_BATCH], reduction="sum"))
        accs.append(correct / len(y))
        losses.append(loss / len(y))
    return accs, losses


@torch.no_grad()
def batch_stats_accuracy(model: torch.nn.Module, x: Tensor, y: Tensor, batch: int) -> float:
    """Accuracy with BatchNorm in training mode: each test batch of ``batch`` examples normalised by its own
    statistics, as during training. Runs on a copy, so the model's running statistics stay untouched."""
    twin = copy.deepcopy(model).train()
    correct = sum(int((twin(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    return correct / len(y)


def train_pack(split: Split, cfg: NormConfig, norm: str, batch: int, progress: Tick = no_progress) -> list[Cell]:
    """Train every (variant, seed) member of one norm and batch size: SGD with momentum, the linearly scaled
    learning rate, warm-up and cosine decay, ``cfg.epochs`` epochs of the training subset in the seed's own order;
    the validation loss after every epoch; test accuracy at the end. Members are trained in packs of
    :func:`pack_size` (:func:`sparseflow.training.packed.pack`), which changes the cost only. One cell per member."""
    members = [(v, s) for v in cfg.variants for s in cfg.seed_values]
    size = pack_size(batch, len(members))
    cells: list[Cell] = []
    for i in range(0, len(members), size):
        cells += _train_members(split, cfg, norm, batch, members[i:i + size], progress)
    return cells


def _train_members(split: Split, cfg: NormConfig, norm: str, batch: int, members: list[tuple[str, int]],
                   progress: Tick) -> list[Cell]:
    start = time.perf_counter()
    k = len(members)
    built = [member(cfg, norm, v, s) for v, s in members]
    nets = [m for m, _ in built]
    model = pack(nets)
    masks = packed_masks([m for _, m in built], model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            params[name].mul_(m)
    x_train, y_train = split.x_train, split.y_train
    lr = scaled_lr(batch, cfg.lr_ref, cfg.batch_ref)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    per_epoch = len(y_train) // batch  # the last partial batch is dropped
    total, warmup = cfg.epochs * per_epoch, round(cfg.warmup_epochs * per_epoch)
    curves: list[list[tuple[float, float, float]]] = [[] for _ in range(k)]  # (val loss, val acc, train loss)
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        orders = [torch.randperm(len(y_train), generator=torch.Generator().manual_seed(s * 1_000_003 + epoch))
                  for _, s in members]
        train_loss = torch.zeros(k, dtype=torch.float64)
        for b in range(per_epoch):
            idx = torch.stack([o[b * batch:(b + 1) * batch] for o in orders])  # (K, batch)
            x, y = pack_inputs(x_train[idx]), y_train[idx]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, lr)
            out = member_outputs(model(x), k)  # (K, batch, classes)
            losses = F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1)  # one mean loss per member
            if not torch.isfinite(losses).all():
                raise SparseflowError(f"training diverged ({norm} norm, batch {batch}, step {step + 1}): pass a "
                                      f"smaller --lr than {cfg.lr_ref:g}")
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()  # member k's parameters get member k's gradient only
            for name, m in masks.items():
                params[name].grad.mul_(m)  # pruned weights get no gradient, so no momentum or decay either
            opt.step()
            train_loss += losses.detach().double()
            step += 1
        unpack(model, nets)
        acc, loss = evaluate(nets, split.x_val, split.y_val)
        for i in range(k):
            curves[i].append((loss[i], acc[i], float(train_loss[i]) / per_epoch))
        progress(f"{norm} batch {batch}: epoch {epoch + 1}/{cfg.epochs}, val loss {sum(loss) / k:.3f}", advance=0)
    test_acc, _ = evaluate(nets, split.x_test, split.y_test)
    seconds = (time.perf_counter() - start) / k
    cells = []
    for (variant, seed), (net, mask), acc, curve in zip(members, built, test_acc, curves):
        bn = batch_stats_accuracy(net, split.x_test, split.y_test, batch) if norm == "batch" else None
        density = 1.0 if not mask else sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
        val_loss = tuple(c[0] for c in curve)
        cells.append(Cell(variant, norm, batch, seed, acc, bn, curve[-1][2], lr, total, density, seconds,
                          val_loss=val_loss, val_acc=tuple(c[1] for c in curve),
                          train_losses=tuple(c[2] for c in curve), flatness=flatness(val_loss)))
    return cells


_SPLITS: dict[tuple[NormConfig, str], Split] = {}  # per worker process: the data, read once


def _work(cfg: NormConfig, folder: str, norm: str, batch: int, threads: int) -> list[Cell]:
    """One pack in a worker process (``threads`` torch threads); the worker reads the data once."""
    torch.set_num_threads(threads)
    if (cfg, folder) not in _SPLITS:
        _SPLITS[(cfg, folder)] = load_split(cfg, Path(folder))
    return train_pack(_SPLITS[(cfg, folder)], cfg, norm, batch)


def data_dir(options: NormOptions) -> Path:
    """``options.data_dir``, checked to hold Fashion-MNIST's four IDX files."""
    if options.data_dir is None:
        raise SparseflowError("experiment normalisation trains on Fashion-MNIST: pass --data-dir, the folder "
                              "holding its four IDX files (train-images-idx3-ubyte.gz, ...)")
    check_data(options.data_dir)
    return Path(options.data_dir)


def wall_estimate_s(config: NormConfig, workers: int) -> float:
    """Seconds the grid takes on ``workers`` processes: the packs' estimated costs dealt out largest first, each
    to the worker that frees up first (as :func:`run` hands them out)."""
    costs = sorted((config.pack_estimate_s(n, b) for n in config.norms for b in config.batch_sizes), reverse=True)
    loads = [0.0] * max(1, workers)
    for c in costs:
        loads[loads.index(min(loads))] += c
    return max(loads)


def check(config: NormConfig, options: NormOptions) -> Sequence[str]:
    """Refuse a missing data folder, or a grid estimated past an hour without ``--yes``; the estimate, as a note."""
    data_dir(options)
    wall = wall_estimate_s(config, options.workers)
    check_budget(wall, options.yes, "experiment normalisation")
    return [f"about {_human(wall)} for {config.cells()} training runs on {options.workers} worker(s)"]


def run(config: NormConfig, out: Path | None = None, progress: Tick = no_progress, *,
        options: NormOptions) -> NormResult:
    """Train every cell of ``config`` (seed by seed) with ``options.threads`` torch threads (restored afterwards);
    ``progress(what)`` after each. ``out`` only names the run in its command line."""
    cfg, folder = config, data_dir(options)
    start, cells = time.perf_counter(), []
    # Largest first, so that two workers finish together: batch 2 costs most, BatchNorm most at each batch.
    tasks = sorted(((n, b) for n in cfg.norms for b in cfg.batch_sizes), key=lambda t: (t[1], t[0] != "batch"))
    progress("loading Fashion-MNIST", advance=0, total=cfg.cells())

    def done(pack_cells: list[Cell]) -> None:
        cells.extend(pack_cells)
        accs = [100 * c.accuracy for c in pack_cells]
        c = pack_cells[0]
        progress(f"{c.norm} batch {c.batch}: {len(pack_cells)} networks, mean {sum(accs) / len(accs):.1f} %",
                 advance=len(pack_cells))

    if options.workers == 1:
        before = torch.get_num_threads()
        torch.set_num_threads(options.threads)
        try:
            split = load_split(cfg, folder)
            for norm, batch in tasks:
                done(train_pack(split, cfg, norm, batch, progress))
        finally:
            torch.set_num_threads(before)
    else:
        with worker_pool(options.workers) as pool:
            futures = [pool.submit(_work, cfg, str(folder), norm, batch, options.threads) for norm, batch in tasks]
            for fut in as_completed(futures):
                done(fut.result())
    order = {(n, b, v): i for i, (n, b, v) in enumerate((n, b, v) for v in cfg.variants for n in cfg.norms
                                                         for b in cfg.batch_sizes)}
    cells.sort(key=lambda c: (c.seed, order[(c.norm, c.batch, c.variant)]))
    command = command_line("normalisation", cfg, dataclasses.replace(options, out=out))
    return NormResult(cfg, tuple(cells), time.perf_counter() - start, folder, command)
