"""Schedules: pure functions of the training step.

- :func:`cubic`: target sparsity of gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to
  prune"): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n Δt))³ for t = t0, t0 + Δt, ..., t0 + n Δt.
- :func:`cosine_drop`: fraction of active weights a dynamic method drops and regrows at an update
  (Evci et al. 2020): (α / 2)(1 + cos(π t / T_end)).
- :func:`is_update`: whether step ``t`` is one of the periodic updates t0, t0 + Δt, ... ≤ end.

Steps count optimizer steps from 0 (the state after ``prepare``); the first ``method.step()`` is step 1.
"""

from __future__ import annotations

import math


def cubic(t: int, *, initial: float, final: float, start: int, every: int, n: int) -> float:
    """Sparsity at step ``t`` under the cubic schedule, held between pruning steps.

    Before ``start`` the sparsity is ``initial``; after ``start + n * every`` it is ``final``; in between it
    takes the value of the last pruning step ``start + k * every`` at or before ``t``.
    """
    if every < 1 or n < 1:
        raise ValueError(f"cubic schedule needs every >= 1 and n >= 1, got every={every}, n={n}")
    if t < start:
        return initial
    k = min(n, (t - start) // every)
    frac = k / n
    return final + (initial - final) * (1.0 - frac) ** 3


def cosine_drop(t: int, *, alpha: float, end: int) -> float:
    """Drop fraction (α/2)(1 + cos(π t / end)) for t ≤ end, else 0."""
    if end < 1:
        raise ValueError(f"cosine_drop needs end >= 1, got end={end}")
    if t > end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * t / end))


def is_update(t: int, *, every: int, start: int = 0, end: int | None = None) -> bool:
    """True when ``t`` is ``start + k * every`` for some k ≥ 0 and (no end or) t ≤ end."""
    if every < 1:
        raise ValueError(f"is_update needs every >= 1, got every={every}")
    if t < start or (end is not None and t > end):
        return False
    return (t - start) % every == 0
