"""Masked fine-tuning of a pruned language model: the recovery step after one-shot pruning.

:func:`finetune` trains every parameter of the model under a fixed mask (:class:`~sparseflow.FixedMask`: the
pruned weights and their optimizer state stay zero) with AdamW, its learning rate decayed from ``lr`` to 0
by a cosine (a constant rate leaves a well-trained model noisier than it found it), on random windows of the
training text (the loss is the next-character cross-entropy at every position). The budget
is given in optimizer steps and windows per step, so that it can be matched against other routes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from sparseflow.errors import SparseflowError
from sparseflow.layouts import call, default_loss
from sparseflow.methods.fixed import FixedMask
from sparseflow.training.loop import optimizer_step
from sparseflow.training.prune import windows

FINETUNE_LR = 3e-4  # AdamW's peak rate, decayed to 0 by a cosine: a common fine-tuning rate for small transformers


def finetune(model: nn.Module, keep: Mapping[str, Tensor], tokens: Tensor, *, steps: int, batch: int,
             context: int, lr: float = FINETUNE_LR, seed: int = 0,
             on_step: Callable[[int, float], None] | None = None) -> float:
    """Fine-tune ``model`` in place for ``steps`` AdamW steps (lr cosine-decayed from ``lr`` to 0) of ``batch``
    windows under the mask ``keep``
    ({parameter name: bool tensor}, e.g. a one-shot method's ``mask``); returns the mean training loss of the
    last (up to) 10 steps. ``on_step(step, loss)`` is called after each step."""
    for name, value in (("steps", steps), ("batch", batch), ("context", context)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SparseflowError(f"finetune: {name} must be an integer >= 1, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise SparseflowError(f"finetune: lr must be a number > 0, got {lr!r}")
    mask = FixedMask(keep={k: v.detach().clone() for k, v in keep.items()})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1.0 + math.cos(math.pi * t / steps)))
    mask.prepare(model, optimizer)
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.train()
    losses: list[float] = []
    try:
        for step in range(1, steps + 1):
            x, y = windows(tokens, context, batch, g)
            value = optimizer_step(default_loss(call(model, x), y), optimizer, mask)
            schedule.step()
            losses.append(value)
            if on_step is not None:
                on_step(step, value)
    finally:
        mask.remove()
        model.train(was_training)
    tail = losses[-10:]
    return sum(tail) / len(tail)
