"""Statistics of the regularisation experiment (:mod:`sparseflow.experiments.regularisation.run`).

Intervals are 95 % Student-t intervals over seeds: mean ± t(0.975, n - 1) · sd / sqrt(n), sd with n - 1.
Differences between two sparsities are paired (same seed: same training subset, init and batch order).

Criterion (a), "the best sparsity does not increase as data grows". The best sparsity s*(N) is the argmax of
the mean test accuracy over seeds (the lower sparsity on a tie). A raw increase of s* can be a coin flip
between two levels whose means differ by less than the noise, so an increase counts against the criterion
only when it is significant: at size N with s*(N) above m = min over smaller N of s*, the paired 95 %
interval of acc(N, s*(N)) - acc(N, m) lies above 0. Comparing with the smallest earlier best also catches
a best that creeps up in small steps. Criterion (b): at N = 4000, the mean over seeds of
acc(best sparse level) - acc(dense) is at least 1.5 pp, the best sparse level again by mean accuracy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sparseflow.analysis.stats import t_interval


def best_index(acc: np.ndarray) -> np.ndarray:
    """Per size, the index of the sparsity with the highest mean accuracy; ``acc`` is (sizes, sparsities, seeds).
    np.argmax takes the first maximum, i.e. the lower sparsity on a tie (sparsities are increasing)."""
    return np.argmax(acc.mean(axis=2), axis=1)


def trend(acc: np.ndarray, sizes: tuple[int, ...], sparsities: tuple[float, ...]) -> dict[str, Any]:
    """Best sparsity per size, its raw increases and the significant ones (see the module docstring)."""
    best = best_index(acc)
    raw, significant = [], []
    for i in range(1, len(sizes)):
        if best[i] > best[i - 1]:
            raw.append(sizes[i])
        m = int(best[:i].min())
        if best[i] > m:
            mean, half = t_interval(acc[i, best[i]] - acc[i, m])
            if mean - half > 0:
                significant.append({"size": sizes[i], "from": sparsities[m], "to": sparsities[best[i]],
                                    "diff_pp": 100 * mean, "half_pp": 100 * half})
    return {"best_sparsity": [sparsities[b] for b in best], "raw_increases": raw, "significant_increases": significant}


def tied(acc_n: np.ndarray) -> list[int]:
    """Indices of the levels not significantly below the best at one size (paired interval of best - s holds 0)."""
    b = int(np.argmax(acc_n.mean(axis=1)))
    out = []
    for j in range(acc_n.shape[0]):
        mean, half = t_interval(acc_n[b] - acc_n[j]) if j != b else (0.0, 0.0)
        if mean - half <= 0:
            out.append(j)
    return out


def gap(acc_n: np.ndarray) -> tuple[int, float, float]:
    """(index of the best sparse level, mean and half-width of its paired gain over dense); index 0 is dense."""
    b = 1 + int(np.argmax(acc_n[1:].mean(axis=1)))
    mean, half = t_interval(acc_n[b] - acc_n[0])
    return b, mean, half
