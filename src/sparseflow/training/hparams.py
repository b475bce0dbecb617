"""Hyperparameters of :func:`~sparseflow.training.loop.fit` and the optimizer and LR schedule they make."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from sparseflow.errors import SparseflowError
from sparseflow.methods.execution import EXECUTIONS
from sparseflow.training.options import check, option

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """Hyperparameters of :func:`~sparseflow.training.loop.fit`. ``batch_size`` is for the caller that builds
    the loaders."""

    epochs: int = option(10, "Training epochs.", min=1)
    batch_size: int = option(64, "Minibatch size.", min=1)
    lr: float = option(0.05, "Peak learning rate.", min=0, min_open=True)
    momentum: float = option(0.9, "SGD momentum.", min=0, max=1, max_open=True)
    weight_decay: float = option(5e-4, "Weight decay.", min=0)
    optimizer: str = option("sgd", " | ".join(OPTIMIZERS), choices=OPTIMIZERS)
    seed: int = option(0, "Seed of torch's RNG when training starts.")
    lr_schedule: str = option("cosine", " | ".join(LR_SCHEDULES), choices=LR_SCHEDULES)
    log_every: int = option(0, "Print a line every n steps; 0: only the per-epoch summary.", min=0)
    eval_every_epoch: bool = option(True, "Evaluate after every epoch (the last is always evaluated).")
    checkpoint_every: int | None = option(
        None, "Also checkpoint every n steps (with a run_dir); None: at epoch ends only.", min=1)
    execution: str = option(
        "dense", "How the sparse layers train: dense (masked dense tensors), sparse (nn.Linear layers store and "
        "multiply only their kept weights) or auto (each layer timed, dense kept where faster).",
        choices=EXECUTIONS)

    def __post_init__(self) -> None:
        check(self)


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
