"""Small statistics shared by the experiments' reports."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def t_interval(values: Any, *, single: bool = False) -> tuple[float, float]:
    """(mean, half-width of the 95 % Student-t interval) of ``values``.

    Needs at least two values; with ``single=True`` one value gives half-width 0 (a table cell with one seed).
    """
    from scipy.stats import t

    v = np.asarray(values, dtype=float).ravel()
    if v.size == 1 and single:
        return float(v[0]), 0.0
    if v.size < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {v.size}")
    return float(v.mean()), float(t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
