"""What :func:`~sparseflow.training.loop.fit` keeps in a checkpoint, and how a resumed fit continues from it.

A checkpoint holds the model, optimizer, LR scheduler and method state (mask, step counter, the method's
random generator), torch's RNG and the train loader's generators, the history, the elapsed time and, in the
middle of an epoch, its :class:`EpochPosition`: the RNG as the epoch began and the number of batches trained
on (so a resume re-draws the same order and skips exactly those), the running loss sums over all ranks and
the last LR. :class:`RunDir` is fit's side of it: the run directory, when to checkpoint, the time spent.
File format, checksums and the fallback to the previous checkpoint: :mod:`sparseflow.training.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from sparseflow.errors import SparseflowError
from sparseflow.io import atomic_write_text, json_safe, make_folder
from sparseflow.layouts import to_device
from sparseflow.training import distributed
from sparseflow.training.checkpoints import (
    Checkpoint,
    epoch_batches,
    has_checkpoint,
    load_checkpoint,
    rng_snapshot,
    save_checkpoint,
    set_rng,
)
from sparseflow.training.hparams import TrainConfig
from sparseflow.training.state import TrainState

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
# Settings that do not change the result: a run may be resumed with other values.
RESUMABLE_CHANGES = ("checkpoint_every", "log_every")


@dataclass
class EpochPosition:
    """How far an epoch is: the RNG when it began, batches trained on, the running loss sums, the last LR."""

    start_rng: dict[str, Any]
    batches: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    lr: float = math.nan
    resume: dict[str, Any] | None = None  # restored from a checkpoint: the RNG at that checkpoint

    def batches_left(self, loader: DataLoader, epoch: int, device: torch.device):  # noqa: ANN201 (an iterator)
        """The epoch's batches from here on: the whole epoch, or (resumed) the same order without those done."""
        return epoch_batches(loader, epoch, device, start=self.start_rng if self.resume else None,
                             skip=self.batches, now=self.resume)


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    # Rewritten whole (atomically) each epoch: a crash never leaves a torn line. JSON has no inf/NaN.
    lines = [json.dumps(json_safe(r)) + "\n" for r in history]
    atomic_write_text(run_dir / METRICS_FILE, "".join(lines))


def write_config(run_dir: Path, config: dict[str, Any] | None, cfg: TrainConfig) -> None:
    text = json.dumps(config if config is not None else dataclasses.asdict(cfg), indent=2)
    atomic_write_text(run_dir / CONFIG_FILE, text + "\n")


def save(run_dir: Path, state: TrainState, scheduler: LambdaLR, loader: DataLoader, cfg: TrainConfig,
         device: torch.device, elapsed_s: float, pos: EpochPosition | None) -> None:
    """Checkpoint ``state``; ``pos`` None: at the end of ``state.epoch`` (evaluated, in the history)."""
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


def restore(checkpoint: Checkpoint, state: TrainState, scheduler: LambdaLR, loader: DataLoader, cfg: TrainConfig,
            device: torch.device) -> tuple[float, EpochPosition | None]:
    """Load ``checkpoint`` into ``state`` (after ``method.prepare``): (elapsed seconds so far, mid-epoch position)."""
    ckpt, path = checkpoint.state, checkpoint.path
    now = dataclasses.asdict(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}  # a setting older checkpoints lack had its default
    changed = [k for k in now if k not in RESUMABLE_CHANGES and ckpt["config"].get(k, defaults[k]) != now[k]]
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
    steps_per_epoch = len(loader)
    batches = steps_per_epoch if position is None else position["batches"]
    if ckpt["step"] != (ckpt["epoch"] - 1) * steps_per_epoch + batches:
        raise SparseflowError(
            f"{str(path)!r} has {ckpt['step']} steps after {batches} batches of epoch {ckpt['epoch']}, but "
            f"train_loader has {steps_per_epoch} batches per epoch; resume with the same data and batch size"
        )
    set_rng(loader, ckpt["rng"], device)  # checks the loader has as many generators as were saved
    if state.method is not None:  # first: the mask sets which weights a sparse layer holds (sparse execution)
        # Masks and buffers a method keeps must live next to the parameters they gate.
        state.method.load_state_dict(to_device(ckpt["method"], device))
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    state.epoch, state.step, state.history = ckpt["epoch"], ckpt["step"], list(ckpt["history"])
    resume_at = None
    if position is not None:
        resume_at = EpochPosition(position["epoch_rng"], position["batches"], float(position["loss_sum"]),
                                  int(position["seen"]), float(position["lr"]), resume=ckpt["rng"])
    return float(ckpt["elapsed_s"]), resume_at


@dataclass
class RunDir:
    """The run directory of one :func:`~sparseflow.training.loop.fit` call (``path`` None: nothing is written)
    and the training time so far. Only rank 0 writes; every rank waits at each checkpoint until it is on disk.
    """

    path: Path | None
    cfg: TrainConfig
    state: TrainState
    scheduler: LambdaLR
    loader: DataLoader
    device: torch.device
    elapsed_before: float = 0.0
    started: float = 0.0
    notes: tuple[str, ...] = ()

    def open(self, resume: bool, config: dict[str, Any] | None) -> EpochPosition | None:
        """Create the directory, restore its checkpoint when resuming (-> the position within an epoch, if the
        checkpoint is in the middle of one) and write config.json."""
        if self.path is None:
            return None
        run_dir = self.path = Path(self.path)  # (fit takes a str too)
        main = distributed.is_main()
        make_folder(run_dir)
        resumed = resume and has_checkpoint(run_dir)
        if has_checkpoint(run_dir) and not resume:
            raise SparseflowError(
                f"run directory {str(run_dir)!r} already holds a checkpoint; pass resume=True (sparseflow train: "
                f"--resume {run_dir}) to continue that run, or choose a new directory"
            )
        resume_at = None
        if resumed:
            checkpoint = self._load_shared(run_dir, main)
            self.notes = (checkpoint.fallback,) if checkpoint.fallback else ()
            self.elapsed_before, resume_at = restore(checkpoint, self.state, self.scheduler, self.loader, self.cfg,
                                                     self.device)
            if resume_at is not None and not main:
                resume_at.loss_sum, resume_at.seen = 0.0, 0  # the stored sums are over all ranks: rank 0 holds them
            if main:
                write_metrics(run_dir, self.state.history)  # drop a line written after the last checkpoint
        if main and (not resumed or not (run_dir / CONFIG_FILE).exists()):
            write_config(run_dir, config, self.cfg)
        return resume_at

    @staticmethod
    def _load_shared(run_dir: Path, main: bool) -> Checkpoint:
        """The checkpoint every rank resumes from. Rank 0 alone loads it first and, if the newest file is damaged,
        renames it aside (and says so); the other ranks load only after that (a barrier), so no two processes
        rename the same file and every rank restores the same checkpoint. In one process: a plain load."""
        checkpoint, error = None, None
        if main:
            try:
                checkpoint = load_checkpoint(run_dir, quarantine=True)  # prints a fallback on stderr
            except SparseflowError as e:  # (the others must pass the barrier too, then fail the same way)
                error = e
        distributed.barrier()
        if error is not None:
            raise error
        return checkpoint if checkpoint is not None else load_checkpoint(run_dir, quiet=True)

    def start(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        """Training seconds summed over this and earlier (resumed) sessions."""
        return self.elapsed_before + time.perf_counter() - self.started

    def checkpoint_within_epoch(self, pos: EpochPosition, loss_sum: float, seen: int, lr: float) -> None:
        """Every ``cfg.checkpoint_every`` steps, a checkpoint at ``pos`` (not on an epoch's last batch: the
        epoch-end checkpoint follows)."""
        every = self.cfg.checkpoint_every
        if self.path is None or not every or self.state.step % every or pos.batches >= len(self.loader):
            return
        # The epoch's running sums over all ranks (a no-op in one process); rank 0 stores them.
        total_loss, total_seen = distributed.all_reduce_sum([loss_sum, float(seen)])
        if distributed.is_main():
            pos.loss_sum, pos.seen, pos.lr = total_loss, int(total_seen), lr
            self._save(pos)
        distributed.barrier()

    def checkpoint_epoch_end(self, elapsed_s: float) -> None:
        """The checkpoint at the end of ``state.epoch``, then metrics.jsonl (rebuilt from the checkpoint's
        history on resume, so it goes second)."""
        if self.path is not None and distributed.is_main():
            self._save(None, elapsed_s)
            write_metrics(self.path, self.state.history)
        distributed.barrier()  # every rank continues only once the epoch's checkpoint is on disk

    def _save(self, pos: EpochPosition | None, elapsed_s: float | None = None) -> None:
        save(self.path, self.state, self.scheduler, self.loader, self.cfg, self.device,
             self.elapsed() if elapsed_s is None else elapsed_s, pos)


