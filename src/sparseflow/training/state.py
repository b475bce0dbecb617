"""What :func:`~sparseflow.training.loop.fit` needs from a method, shows its callbacks and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class SparsityMethod(Protocol):
    """What :func:`~sparseflow.training.loop.fit` needs from a pruning or sparse-training method.

    ``prepare`` runs once before training (and again before a resumed run's ``load_state_dict``);
    ``step`` runs after every ``optimizer.step()``. ``state_dict`` returns a nested dict of tensors,
    ints, floats and str (storable with :func:`sparseflow.io.save_state`). Under DistributedDataParallel a
    method with ``mask_grads_`` and ``remove`` (every :class:`sparseflow.methods.Method`) has its gradient
    hooks removed and ``mask_grads_()`` called after each backward instead, on the averaged gradient.
    """

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...

    def step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, d: dict[str, Any]) -> None: ...


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
    """Extension point of :func:`~sparseflow.training.loop.fit`; override any hook. Exceptions propagate and
    stop training."""

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
