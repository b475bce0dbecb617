"""Training one arm of one level: a step-indexed loop that can start at the rewind step k.

Lottery tickets with late rewinding (Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis") train from step k to the end T, with the learning-rate schedule and the data order where the
dense run had them at step k. :func:`sparseflow.fit` counts whole epochs from step 0, so this loop indexes
everything by the absolute step instead:

* the batch at step s is a pure function of (seed, s): epoch e = s // B is a permutation drawn from a
  generator seeded with (seed, e); every level and arm of a replicate sees the same order;
* the learning rate at step s is ``lr * factor(s)`` in closed form (:func:`sparseflow.training.loop.make_scheduler`'s
  cosine or constant factor over [0, T));
* the forward pass draws no random numbers (no dropout in the reference models).

So resuming needs only the weights, the optimizer and method state and the step: the checkpoint (written
at every evaluation, with :func:`sparseflow.io.save_state`) holds exactly that, and a resumed run equals
an uninterrupted one bit for bit. Every ``eval_every`` steps (and at T) the loop records the loss and
accuracy on the validation set (and on the test set when they differ); the early-stopping step is the one
with the lowest validation loss, Frankle & Carbin's measure of how fast a network learns.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from sparseflow.errors import SparseflowError
from sparseflow.io import load_state, save_state
from sparseflow.mask import Mask
from sparseflow.methods.fixed import FixedMask
from sparseflow.training.loop import TrainConfig, evaluate, make_optimizer

CHECKPOINT = "checkpoint.safetensors"


@dataclass(frozen=True, eq=False)
class LevelData:
    """Training tensors, the data-order seed, and the evaluation loaders (val may be the test set)."""

    x: Tensor
    y: Tensor
    batch_size: int
    seed: int
    val: DataLoader
    test: DataLoader | None  # None: the validation set is the test set

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.x) // self.batch_size)  # the last partial batch is dropped

    def order(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.x), generator=g)


def eval_loader(x: Tensor, y: Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=1000, shuffle=False)


@dataclass(frozen=True)
class ArmResult:
    """One trained network: final test accuracy and the early-stopping point."""

    final_acc: float
    final_loss: float
    early_stop_step: int  # step of the lowest validation loss
    early_stop_acc: float  # test accuracy at that step
    evals: tuple[dict[str, float], ...]  # {"step", "val_loss", "val_acc", "test_acc"} per evaluation

    def to_json(self) -> dict[str, Any]:
        return {"final_acc": self.final_acc, "final_loss": self.final_loss, "early_stop_step": self.early_stop_step,
                "early_stop_acc": self.early_stop_acc, "evals": list(self.evals)}


def lr_factor(step: int, total: int, schedule: str) -> float:
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def train_arm(
    model: nn.Module,
    mask: Mask,
    data: LevelData,
    cfg: TrainConfig,
    *,
    start: int,
    end: int,
    eval_every: int,
    run_dir: Path,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> ArmResult:
    """Train ``model`` (holding its starting weights) under ``mask`` from step ``start`` to ``end``.

    Resumes from ``run_dir/checkpoint.safetensors`` when it exists. ``on_step(step, model)`` runs after
    every optimizer step (``step`` counts finished steps); an exception there stops training.
    """
    optimizer = make_optimizer(model, cfg)
    method = FixedMask(keep=mask)
    method.prepare(model, optimizer)
    step, evals = start, []
    ckpt_path = run_dir / CHECKPOINT
    if ckpt_path.exists():
        ckpt, _ = load_state(ckpt_path)
        if (ckpt["start"], ckpt["end"]) != (start, end):
            raise SparseflowError(f"{ckpt_path} trains steps {ckpt['start']}..{ckpt['end']}, this level {start}..{end}; "
                                  "delete it to retrain this arm")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        method.load_state_dict(ckpt["method"])
        step, evals = int(ckpt["step"]), list(ckpt["evals"])
    run_dir.mkdir(parents=True, exist_ok=True)
    model.train()
    spe = data.steps_per_epoch
    order_epoch, order = -1, torch.empty(0, dtype=torch.long)
    while step < end:
        epoch, b = divmod(step, spe)
        if epoch != order_epoch:
            order_epoch, order = epoch, data.order(epoch)
        idx = order[b * data.batch_size : (b + 1) * data.batch_size]
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, end, cfg.lr_schedule)
        loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
        if not math.isfinite(loss.item()):
            raise SparseflowError(f"training loss is {loss.item()} at step {step + 1}: the run diverged; "
                                  f"use a smaller lr than {cfg.lr}")
        loss.backward()
        optimizer.step()
        method.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if on_step is not None:
            on_step(step, model)
        if step % eval_every == 0 or step == end:
            evals.append(_evaluate(model, data, step))
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "method": method.state_dict(), "step": step, "evals": evals, "start": start, "end": end}
            save_state(ckpt_path, state, meta={"kind": "lottery-arm", "step": step})
            model.train()
    method.remove()
    if not evals:  # a resumed arm whose checkpoint is already at the end still has its records
        raise SparseflowError(f"{ckpt_path} holds no evaluations; delete it to retrain this arm")
    best = min(evals, key=lambda r: (r["val_loss"], r["step"]))
    last = evals[-1]
    return ArmResult(final_acc=last["test_acc"], final_loss=last["test_loss"], early_stop_step=int(best["step"]),
                     early_stop_acc=best["test_acc"], evals=tuple(evals))


def _evaluate(model: nn.Module, data: LevelData, step: int) -> dict[str, float]:
    val_acc, val_loss = evaluate(model, data.val)
    test_acc, test_loss = (val_acc, val_loss) if data.test is None else evaluate(model, data.test)
    return {"step": step, "val_loss": val_loss, "val_acc": val_acc, "test_acc": test_acc, "test_loss": test_loss}
