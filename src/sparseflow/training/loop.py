"""A small training loop with callbacks, checkpoints and exact resume, read top to bottom.

This is the loop the CLI and the experiments use; users with their own loop never need it (they call
``method.prepare(model, optimizer)`` once and ``method.step()`` after every ``optimizer.step()``).

Per batch: forward, cross-entropy, backward, ``optimizer.step()``, ``method.step()``,
``scheduler.step()``, ``zero_grad(set_to_none=True)``. Gradients are always dense here (the mask is
re-applied to the weights after each step, not to the gradients), so a method's
``needs_dense_grad`` is satisfied without the loop having to look at it.

A run directory holds::

    config.json                     what the run was started with (``config``, default ``cfg``)
    metrics.jsonl                   one line per finished epoch (rewritten from the checkpoint on resume)
    checkpoint.safetensors          the newest checkpoint
    checkpoint.prev.safetensors     the one before it (see :mod:`sparseflow.training.checkpoints`)

A checkpoint is written every ``cfg.checkpoint_every`` steps (if set), at the end of every epoch and so
at the end of training; atomically, with a SHA-256 checksum, keeping the previous one. It holds the
model, optimizer, LR scheduler and method state (mask, step counter, the method's random generator),
torch's RNG and the train loader's generators, the data position (within an epoch: the RNG as the
epoch began and the number of batches trained on, so a resume re-draws the same order and skips
exactly those batches), the history, the running loss sums of the epoch and the elapsed time.

``resume=True`` restores all of it from the newest valid checkpoint (the previous one, with a warning,
if the newest is damaged) and continues from the very next batch; the result equals the uninterrupted
run bit-for-bit, wherever the run was stopped. A finished run resumes to its result without training.
Resuming with another configuration is refused, naming the settings that differ
(``checkpoint_every``, ``log_every`` and the display options may change).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from sparseflow.training.checkpoints import (  # CHECKPOINT_FILE: also imported from here
    CHECKPOINT_FILE,  # noqa: F401
    Checkpoint,
    epoch_batches,
    has_checkpoint,
    load_checkpoint,
    rng_snapshot,
    save_checkpoint,
    set_rng,
)
from sparseflow.training import distributed
from sparseflow.errors import SparseflowError
from sparseflow.io import atomic_write_text, json_safe

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("cosine", "constant")
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
# Settings that do not change the result: a run may be resumed with other values.
RESUMABLE_CHANGES = ("checkpoint_every", "log_every")


@runtime_checkable
class SparsityMethod(Protocol):
    """What :func:`fit` needs from a pruning or sparse-training method.

    ``prepare`` runs once before training (and again before a resumed run's ``load_state_dict``);
    ``step`` runs after every ``optimizer.step()``. ``state_dict`` returns a nested dict of tensors,
    ints, floats and str (storable with :func:`sparseflow.io.save_state`). An optional attribute
    ``needs_dense_grad: bool`` is always satisfied by this loop.
    """

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...

    def step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, d: dict[str, Any]) -> None: ...


@dataclass
class TrainConfig:
    """Hyperparameters of :func:`fit`. ``batch_size`` is for the caller that builds the loaders."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # "sgd" | "adam" | "adamw"
    seed: int = 0
    lr_schedule: str = "cosine"  # "cosine" | "constant"
    log_every: int = 0  # print a line every n steps; 0 = only the per-epoch summary
    eval_every_epoch: bool = True  # the last epoch is always evaluated
    checkpoint_every: int | None = None  # also checkpoint every n steps (with a run_dir); None: epoch ends only

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, want: str) -> None:
            if not ok:
                value = getattr(self, name)
                raise SparseflowError(f"TrainConfig.{name} must be {want}, got {value!r}; pass a valid value")

        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        check(is_int(self.epochs) and self.epochs >= 1, "epochs", "an integer >= 1")
        check(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "an integer >= 1")
        check(is_num(self.lr) and self.lr > 0, "lr", "a finite number > 0")
        check(is_num(self.momentum) and 0 <= self.momentum < 1, "momentum", "in [0, 1)")
        check(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a finite number >= 0")
        check(self.optimizer in OPTIMIZERS, "optimizer", f"one of {', '.join(OPTIMIZERS)}")
        check(is_int(self.seed), "seed", "an integer")
        check(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"one of {', '.join(LR_SCHEDULES)}")
        check(is_int(self.log_every) and self.log_every >= 0, "log_every", "an integer >= 0")
        check(isinstance(self.eval_every_epoch, bool), "eval_every_epoch", "True or False")
        check(self.checkpoint_every is None or (is_int(self.checkpoint_every) and self.checkpoint_every >= 1),
              "checkpoint_every", "None (checkpoint at epoch ends only) or an integer >= 1")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with (non-Nesterov) momentum, Adam or AdamW over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=False
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> LambdaLR:
    """Per-step LR factor: cosine from 1 to 0 over ``total_steps`` (Loshchilov & Hutter 2017), or 1."""
    if total_steps < 1:
        raise SparseflowError(f"make_scheduler needs total_steps >= 1, got {total_steps!r}; pass epochs * batches")
    if cfg.lr_schedule == "constant":

        def factor(step: int) -> float:
            return 1.0

    else:

        def factor(step: int) -> float:
            # Closed form, so the LR at step s never depends on floating-point history.
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))

    return LambdaLR(optimizer, factor)


@dataclass
class TrainState:
    """What callbacks see. ``epoch`` is 1-based while training; ``step`` counts finished steps."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    method: SparsityMethod | None
    step: int
    epoch: int
    total_steps: int
    metrics: dict[str, Any] = field(default_factory=dict)  # latest values (per step, then per epoch)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch


class Callback:
    """Extension point of :func:`fit`; override any hook. Exceptions propagate and stop training."""

    def on_train_start(self, state: TrainState) -> None:
        pass

    def on_step_end(self, state: TrainState) -> None:
        pass

    def on_epoch_end(self, state: TrainState) -> None:
        pass

    def on_train_end(self, state: TrainState) -> None:
        pass


@dataclass(frozen=True)
class TrainResult:
    test_acc: float
    test_loss: float
    train_loss: float
    history: tuple[dict[str, Any], ...]
    steps: int
    wall_s: float  # training time summed over resumed sessions
    notes: tuple[str, ...] = ()  # e.g. that the newest checkpoint was damaged and the previous one used


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, *, device: str | torch.device | None = None
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over ``loader``; restores the model's train/eval mode."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == y).sum().item())
        n += len(y)
    model.train(was_training)
    if n == 0:
        raise SparseflowError("evaluate() got a loader that yields no samples; pass a non-empty test loader")
    return correct / n, loss_sum / n


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader,
    cfg: TrainConfig,
    *,
    method: SparsityMethod | None = None,
    callbacks: Sequence[Callback] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
    config: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` for ``cfg.epochs`` epochs; see the module docstring for the loop and run dir.

    ``config`` is written to ``run_dir/config.json`` (default: ``cfg`` as a dict).

    Under torch.distributed (see :mod:`sparseflow.training.distributed`) the model is trained with
    DistributedDataParallel, masks are compared across ranks after every update, and only rank 0 writes
    files and shows progress; pass a ``train_loader`` made by :func:`sparseflow.training.distributed.shard`.
    """
    if method is not None and not isinstance(method, SparsityMethod):
        raise SparseflowError(
            f"method {method!r} lacks prepare/step/state_dict/load_state_dict; pass a sparsity method or None"
        )
    if resume and run_dir is None:
        raise SparseflowError("resume=True needs a run_dir holding the checkpoint; pass run_dir")
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise SparseflowError("train_loader yields no batches; pass a non-empty loader")
    total_steps = cfg.epochs * steps_per_epoch
    device = torch.device(device)

    torch.manual_seed(cfg.seed)
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    if method is not None:
        method.prepare(model, optimizer)
    # --- distributed (1/4): DDP averages gradients at the end of backward, after the method's gradient hooks
    # saw the local ones; so the method masks them (and RigL reads them) after backward instead.
    ddp = distributed.active()
    main = distributed.is_main()
    progress = progress and main
    manual_grads = ddp and method is not None and hasattr(method, "mask_grads_")
    if manual_grads:
        method.remove()  # type: ignore[union-attr]
    state = TrainState(model, optimizer, method, step=0, epoch=0, total_steps=total_steps)
    elapsed_before = 0.0
    resume_at: _EpochPosition | None = None  # set when the checkpoint is in the middle of an epoch
    notes: list[str] = []

    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        resumed = resume and has_checkpoint(run_dir)
        if has_checkpoint(run_dir) and not resume:
            raise SparseflowError(
                f"run directory {str(run_dir)!r} already holds a checkpoint; pass resume=True to continue "
                "that run, or choose a new directory"
            )
        if resumed:
            checkpoint = load_checkpoint(run_dir, quarantine=True)  # prints a fallback on stderr
            notes += [checkpoint.fallback] if checkpoint.fallback else []
            elapsed_before, resume_at = _restore(checkpoint, state, scheduler, train_loader, cfg, steps_per_epoch,
                                                 device)
            if resume_at is not None and ddp and not main:
                resume_at.loss_sum, resume_at.seen = 0.0, 0  # the stored sums are over all ranks: rank 0 holds them
            if main:
                _write_metrics(run_dir, state.history)  # drop a line written after the last checkpoint
        if main and (not resumed or not (run_dir / CONFIG_FILE).exists()):
            text = json.dumps(config if config is not None else dataclasses.asdict(cfg), indent=2)
            atomic_write_text(run_dir / CONFIG_FILE, text + "\n")

    # --- distributed (2/4): wrap after prepare/restore (DDP broadcasts rank 0's weights) and compare masks.
    net = distributed.wrap(model) if ddp else model
    with distributed.collective_errors(lambda: "before training"):
        _check_masks(method, "after prepare" if state.step == 0 else f"after resuming at step {state.step}")

    console = Console(stderr=True)  # stdout stays clean for --json output
    bar = Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  test acc {task.fields[acc]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not progress,
    )
    start = time.perf_counter()
    for cb in callbacks:
        cb.on_train_start(state)
    where = lambda: f"at step {state.step + 1} (epoch {state.epoch})"  # noqa: E731 (for error messages)
    with bar, distributed.collective_errors(where):
        task = bar.add_task("train", total=total_steps, completed=state.step, epoch="-", loss=math.nan, acc="-")
        for epoch in range(state.epoch if resume_at is not None else state.epoch + 1, cfg.epochs + 1):
            state.epoch = epoch
            model.train()
            # Where this epoch starts: at batch 0 with the RNG as it is, or where a checkpoint left it.
            pos, resume_at = resume_at or _EpochPosition(rng_snapshot(train_loader, device)), None
            loss_sum, seen, lr = pos.loss_sum, pos.seen, pos.lr
            batches = epoch_batches(train_loader, epoch, device, start=pos.start_rng if pos.resume else None,
                                    skip=pos.batches, now=pos.resume)
            for i, (x, y) in enumerate(batches, start=pos.batches):
                x, y = x.to(device), y.to(device)
                scale = distributed.loss_scale(train_loader, i) if ddp else None
                if scale is None:
                    loss = F.cross_entropy(net(x), y)
                    value = loss.item()
                else:  # distributed (3/4): summed loss scaled so that DDP's average is the global batch's mean
                    summed = F.cross_entropy(net(x), y, reduction="sum")
                    loss = summed * scale
                    value = summed.item() / max(len(y), 1)
                if not math.isfinite(value):
                    raise SparseflowError(
                        f"training loss is {value} at step {state.step + 1} (epoch {epoch}): the run diverged; "
                        f"use a smaller lr than {cfg.lr} or check the inputs for inf/NaN"
                    )
                loss.backward()
                if manual_grads:
                    method.mask_grads_()  # type: ignore[union-attr]
                lr = optimizer.param_groups[0]["lr"]  # the LR this step used
                optimizer.step()
                if method is not None:
                    version = getattr(method, "mask_version", None)
                    method.step()  # re-applies the mask after the optimizer moved the weights
                    if ddp and (version is None or getattr(method, "mask_version", None) != version):
                        _check_masks(method, f"after the mask update at step {state.step + 1}")
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                state.step += 1
                loss_sum += value * len(y)
                seen += len(y)
                state.metrics = {"epoch": epoch, "step": state.step, "loss": value, "lr": lr}
                bar.update(task, advance=1, epoch=f"{epoch}/{cfg.epochs}", loss=loss_sum / seen)
                if progress and cfg.log_every and state.step % cfg.log_every == 0:
                    console.print(f"step {state.step}/{total_steps}  loss {value:.4f}  lr {lr:.3g}")
                for cb in callbacks:
                    cb.on_step_end(state)
                pos.batches += 1
                every = cfg.checkpoint_every  # (not on an epoch's last batch: the epoch-end checkpoint follows)
                if run_dir is not None and every and state.step % every == 0 and pos.batches < steps_per_epoch:
                    # The epoch's running sums over all ranks (a no-op in one process); rank 0 stores them.
                    total_loss, total_seen = distributed.all_reduce_sum([loss_sum, float(seen)])
                    if main:
                        pos.loss_sum, pos.seen, pos.lr = total_loss, int(total_seen), lr
                        elapsed = elapsed_before + time.perf_counter() - start
                        _save_checkpoint(run_dir, state, scheduler, train_loader, cfg, device, elapsed, pos)
                    distributed.barrier()

            if ddp:  # distributed (4/4): epoch figures over all ranks; masks compared once more; rank 0 writes
                loss_sum, seen = distributed.all_reduce_sum([loss_sum, float(seen)])
                _check_masks(method, f"at the end of epoch {epoch}")
            test_acc: float | None = None
            test_loss: float | None = None
            if cfg.eval_every_epoch or epoch == cfg.epochs:
                test_acc, test_loss = evaluate(model, test_loader, device=device)
                bar.update(task, acc=f"{test_acc:.4f}")
            record = {
                "epoch": epoch,
                "step": state.step,
                "train_loss": loss_sum / seen,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "lr": lr,
                "elapsed_s": elapsed_before + time.perf_counter() - start,
                "density": _density(model),
            }
            state.history.append(record)
            state.metrics = dict(record)
            if run_dir is not None and main:
                # Checkpoint first: metrics.jsonl is rebuilt from the checkpoint's history on resume.
                _save_checkpoint(run_dir, state, scheduler, train_loader, cfg, device, record["elapsed_s"], None)
                _write_metrics(run_dir, state.history)
            distributed.barrier()  # every rank continues only once the epoch's checkpoint is on disk
            if progress:
                acc_text = "-" if test_acc is None else f"{test_acc:.4f}"
                train_text = f"{record['train_loss']:.4f}"
                console.print(f"epoch {epoch}/{cfg.epochs}  train loss {train_text}  test acc {acc_text}")
            for cb in callbacks:
                cb.on_epoch_end(state)
    for cb in callbacks:
        cb.on_train_end(state)

    last = state.history[-1]
    return TrainResult(
        test_acc=last["test_acc"],
        test_loss=last["test_loss"],
        train_loss=last["train_loss"],
        history=tuple(state.history),
        steps=state.step,
        wall_s=elapsed_before + time.perf_counter() - start,
        notes=tuple(notes),
    )


# --- helpers: density, metrics file, checkpoint layout -------------------------------------------


def _density(model: nn.Module) -> float:
    """Fraction of nonzero entries over all parameters with dim > 1 (weights, not biases or norms)."""
    nonzero, total = 0, 0
    for p in model.parameters():
        if p.dim() > 1:
            nonzero += int(torch.count_nonzero(p).item())
            total += p.numel()
    return nonzero / total if total else 1.0


def _check_masks(method: SparsityMethod | None, when: str) -> None:
    mask = getattr(method, "mask", None)
    if mask is not None and distributed.active():
        distributed.check_masks(mask, when=when)


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    # Rewritten whole (atomically) each epoch: a crash never leaves a torn line. JSON has no inf/NaN.
    lines = [json.dumps(json_safe(r)) + "\n" for r in history]
    atomic_write_text(run_dir / METRICS_FILE, "".join(lines))


@dataclass
class _EpochPosition:
    """How far an epoch is: the RNG when it began, batches trained on, the running loss sums, the last LR."""

    start_rng: dict[str, Any]
    batches: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    lr: float = math.nan
    resume: dict[str, Any] | None = None  # restored from a checkpoint: the RNG at that checkpoint


def _save_checkpoint(
    run_dir: Path,
    state: TrainState,
    scheduler: LambdaLR,
    loader: DataLoader,
    cfg: TrainConfig,
    device: torch.device,
    elapsed_s: float,
    pos: _EpochPosition | None,  # None: at the end of state.epoch (evaluated, in the history)
) -> None:
    position = None if pos is None else {
        "batches": pos.batches, "loss_sum": pos.loss_sum, "seen": pos.seen, "lr": pos.lr, "epoch_rng": pos.start_rng,
    }
    checkpoint = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "method": state.method.state_dict() if state.method is not None else None,
        "epoch": state.epoch,
        "step": state.step,
        "position": position,
        "rng": rng_snapshot(loader, device),
        "history": state.history,
        "elapsed_s": elapsed_s,
        "config": dataclasses.asdict(cfg),
    }
    meta = {"kind": "train-checkpoint", "epoch": state.epoch, "step": state.step, "epoch_done": pos is None}
    save_checkpoint(run_dir, checkpoint, meta=meta)


def _restore(
    checkpoint: Checkpoint,
    state: TrainState,
    scheduler: LambdaLR,
    loader: DataLoader,
    cfg: TrainConfig,
    steps_per_epoch: int,
    device: torch.device,
) -> tuple[float, _EpochPosition | None]:
    """Load ``checkpoint`` into ``state`` (after ``method.prepare``): (elapsed seconds so far, mid-epoch position)."""
    ckpt, path = checkpoint.state, checkpoint.path
    now = dataclasses.asdict(cfg)
    changed = [k for k in now if k not in RESUMABLE_CHANGES and ckpt["config"].get(k) != now[k]]
    if changed:
        diffs = "; ".join(f"{k}: {ckpt['config'].get(k)!r} in the run directory, {now[k]!r} now" for k in changed)
        raise SparseflowError(
            f"{str(path)!r} was written with another configuration ({diffs}); resume with the same settings, "
            "or start a new run directory"
        )
    if (ckpt["method"] is None) != (state.method is None):
        raise SparseflowError(
            f"{str(path)!r} was written {'without' if ckpt['method'] is None else 'with'} a sparsity method; "
            "resume with the same method argument"
        )
    position = ckpt.get("position")  # None: at an epoch's end (and in checkpoints of earlier versions)
    batches = steps_per_epoch if position is None else position["batches"]
    if ckpt["step"] != (ckpt["epoch"] - 1) * steps_per_epoch + batches:
        raise SparseflowError(
            f"{str(path)!r} has {ckpt['step']} steps after {batches} batches of epoch {ckpt['epoch']}, but "
            f"train_loader has {steps_per_epoch} batches per epoch; resume with the same data and batch size"
        )
    set_rng(loader, ckpt["rng"], device)  # checks the loader has as many generators as were saved
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if state.method is not None:
        state.method.load_state_dict(_to_device(ckpt["method"], device))
    state.epoch, state.step, state.history = ckpt["epoch"], ckpt["step"], list(ckpt["history"])
    resume_at = None
    if position is not None:
        resume_at = _EpochPosition(position["epoch_rng"], position["batches"], float(position["loss_sum"]),
                                   int(position["seen"]), float(position["lr"]), resume=ckpt["rng"])
    return float(ckpt["elapsed_s"]), resume_at


def _to_device(obj: Any, device: torch.device) -> Any:
    # Masks and buffers a method keeps must live next to the parameters they gate.
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj
