"""Masks of iterative magnitude pruning and of the random-mask control (Frankle & Carbin 2019).

:func:`next_mask` keeps, among the weights the current mask keeps, the largest magnitudes of the trained
weights: per layer (each layer keeps its scheduled count) or with the hidden layers ranked together
(``"hidden"`` count) and the output layer on its own. The new mask is a subset of the old, so successive
levels are nested. :func:`random_mask` draws a mask with the same per-layer counts, positions uniform at
random. Ties at a threshold go to lower indices (:func:`sparseflow.patterns.topk_mask`), so masks are a
deterministic function of the weights.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from sparseflow.mask import Mask
from sparseflow.patterns import topk_mask


def derived_seed(seed: int, what: str, level: int) -> int:
    """A stable 63-bit seed for (replicate, purpose, level): independent streams without global state."""
    digest = hashlib.sha256(f"{seed}/{what}/{level}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _keep_top(scores: Tensor, current: Tensor, k: int) -> Tensor:
    flat = scores.reshape(-1).to(torch.float32).masked_fill(~current.reshape(-1), float("-inf"))
    return topk_mask(flat, k).reshape(current.shape)


def next_mask(mask: Mask, weights: dict[str, Tensor], counts: dict[str, int]) -> Mask:
    """Prune ``mask`` by |weights| to ``counts``: {layer: kept} or {"hidden": kept, output_layer: kept}."""
    names = list(mask)
    out: dict[str, Tensor] = {}
    if "hidden" in counts:  # global over the hidden layers, the output layer apart
        output = names[-1]
        hidden = names[:-1]
        flat = torch.cat([weights[n].abs().reshape(-1).to(torch.float32) for n in hidden])
        cur = torch.cat([mask[n].reshape(-1) for n in hidden])
        keep = _keep_top(flat, cur, counts["hidden"])
        start = 0
        for n in hidden:
            size = mask[n].numel()
            out[n] = keep[start : start + size].reshape(mask[n].shape)
            start += size
        out[output] = _keep_top(weights[output].abs(), mask[output], counts[output])
    else:
        for n in names:
            out[n] = _keep_top(weights[n].abs(), mask[n], counts[n])
    return Mask(out)


def random_mask(mask: Mask, seed: int) -> Mask:
    """Same per-layer counts as ``mask``, positions uniform at random (independent of ``mask``'s positions)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, m in mask.items():
        scores = torch.rand(m.numel(), generator=g)
        out[n] = topk_mask(scores, int(torch.count_nonzero(m))).reshape(m.shape)
    return Mask(out)
