"""Layer-wise density distributions and exact per-layer counts.

Every distribution is a pure function with one signature::

    distribution(shapes: Mapping[str, tuple[int, ...]], sparsity: float, *, dense: Collection[str] = ())
        -> dict[str, float]

returning the density (kept fraction) of every layer so that the weight-weighted mean density is
``1 - sparsity``; layers named in ``dense`` get density 1 and the others share what is left.

- :func:`uniform`: every layer at the same density.
- :func:`er`: Erdős–Rényi (Mocanu et al. 2018), density proportional to (n_in + n_out) / (n_in * n_out),
  with convolution kernels ignored.
- :func:`erk`: Erdős–Rényi-Kernel (Evci et al. 2020, "Rigging the Lottery"), density proportional to
  (sum of all dimensions) / (product of all dimensions). One global scale ε is chosen to hit the target;
  layers whose density ε·raw would exceed 1 are made dense and ε is recomputed, as in the RigL code.

:data:`GLOBAL` is not a function of shapes: it asks a method to rank the scores of all layers together
(global magnitude pruning) instead of fixing per-layer densities first (:func:`global_counts`). Ranking
all layers together can nearly empty a layer whose weights are small (in a 2-layer GPT-2 of width 32 built
from its config, ``h.0.attn.c_proj`` keeps 0.5 % at 90 % sparsity); a floor per layer (``min_density``) keeps each layer at or above it and
ranks the rest of the budget globally.

Counts. Densities become integer counts with one rule (:func:`allocate`): the total kept is
``N - round_half_up(sparsity * N)`` units over all target layers, each layer first gets
``floor(density * n)`` and the remaining units go one each to the layers with the largest fractional
parts (ties: earlier layer first), never beyond a layer's size (the largest-remainder method). So the total
is exact and every layer is within one unit of its ideal count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from sparseflow.errors import MaskError
from sparseflow.patterns import topk_mask

Shape = tuple[int, ...]
Distribution = Callable[..., dict[str, float]]


@dataclass(frozen=True)
class Global:
    """Allocate the total budget by ranking the scores of all layers together."""

    def __repr__(self) -> str:
        return "GLOBAL"


GLOBAL = Global()


def check_sparsity(sparsity: object, what: str = "sparsity") -> float:
    """Return ``sparsity`` as a float in [0, 1) or raise a MaskError saying why it is not."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise MaskError(f"{what} must be a number in [0, 1), got {sparsity!r}")
    s = float(sparsity)
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise MaskError(f"{what} must be in [0, 1) (0.9 keeps 10% of weights), got {sparsity!r}")
    return s


def _numel(shape: Shape) -> int:
    return math.prod(shape)


def kept_total(n: int, sparsity: float) -> int:
    """Units kept out of ``n`` at ``sparsity``: n - round_half_up(sparsity * n)."""
    return n - math.floor(sparsity * n + 0.5)


def _check_dense(shapes: Mapping[str, Shape], dense: Collection[str]) -> None:
    unknown = [d for d in dense if d not in shapes]
    if unknown:
        raise MaskError(f"dense layers {unknown} are not among the target layers {list(shapes)}")


def uniform(shapes: Mapping[str, Shape], sparsity: float, *, dense: Collection[str] = ()) -> dict[str, float]:
    """Every non-dense layer at the same density; the dense layers' weights come out of the budget."""
    s = check_sparsity(sparsity)
    _check_dense(shapes, dense)
    total = sum(_numel(sh) for sh in shapes.values())
    fixed = sum(_numel(sh) for n, sh in shapes.items() if n in dense)
    free = total - fixed
    budget = (1.0 - s) * total - fixed
    if free == 0:
        return {n: 1.0 for n in shapes}
    if budget <= 0:
        raise MaskError(
            f"the dense layers {list(dense)} alone hold {fixed} of {total} weights, more than sparsity "
            f"{s} allows ({(1 - s) * total:.0f}); lower the sparsity or prune those layers"
        )
    d = min(1.0, budget / free)
    return {n: 1.0 if n in dense else d for n in shapes}


def _erdos_renyi(
    shapes: Mapping[str, Shape], sparsity: float, dense: Collection[str], raw: Callable[[Shape], float]
) -> dict[str, float]:
    s = check_sparsity(sparsity)
    _check_dense(shapes, dense)
    dense_set = set(dense)
    while True:
        # Solve eps * sum_l raw_l * n_l = kept budget left after the dense layers (RigL, sparse_utils.py).
        rhs = 0.0
        divisor = 0.0
        for name, sh in shapes.items():
            n = _numel(sh)
            if name in dense_set:
                rhs -= n * s
            else:
                rhs += n * (1.0 - s)
                divisor += raw(sh) * n
        if divisor == 0:
            return {n: 1.0 for n in shapes}
        if rhs <= 0:
            raise MaskError(
                f"sparsity {s} leaves no weights for the sparse layers once {sorted(dense_set)} are dense; "
                "lower the sparsity"
            )
        eps = rhs / divisor
        free = {n: raw(sh) for n, sh in shapes.items() if n not in dense_set}
        top = max(free.values())
        if eps * top <= 1.0:
            return {n: 1.0 if n in dense_set else eps * free[n] for n in shapes}
        dense_set |= {n for n, r in free.items() if r == top}


def _er_raw(sh: Shape) -> float:
    out, inp = sh[0], (sh[1] if len(sh) > 1 else 1)  # (out, in, *kernel): kernel ignored; a vector is (out, 1)
    return (out + inp) / (out * inp)


def _erk_raw(sh: Shape) -> float:
    return sum(sh) / _numel(sh)


def er(shapes: Mapping[str, Shape], sparsity: float, *, dense: Collection[str] = ()) -> dict[str, float]:
    """Erdős–Rényi: density ∝ (n_in + n_out)/(n_in · n_out) (Mocanu et al. 2018)."""
    return _erdos_renyi(shapes, sparsity, dense, _er_raw)


def erk(shapes: Mapping[str, Shape], sparsity: float, *, dense: Collection[str] = ()) -> dict[str, float]:
    """Erdős–Rényi-Kernel: density ∝ sum(shape)/prod(shape) (Evci et al. 2020)."""
    return _erdos_renyi(shapes, sparsity, dense, _erk_raw)


def allocate(
    units: Mapping[str, int],
    densities: Mapping[str, float],
    total: int,
    *,
    limit: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Integer kept counts per layer hitting ``total`` exactly (largest-remainder rule, module docstring).

    ``limit`` caps individual layers (a method that only ever removes weights passes the current counts);
    what a capped layer cannot take goes to the others by the same rule.
    """
    cap = {n: min(units[n], limit[n]) if limit is not None else units[n] for n in units}
    if total > sum(cap.values()):
        raise MaskError(f"cannot keep {total} units of {sum(cap.values())}")
    ideal = {n: min(1.0, max(0.0, densities[n])) * units[n] for n in units}
    counts = {n: min(cap[n], math.floor(ideal[n] + 1e-9)) for n in units}
    left = total - sum(counts.values())
    order = sorted(units, key=lambda n: -(ideal[n] - counts[n]))  # stable: earlier layer wins ties
    while left > 0:
        progressed = False
        for n in order:
            if left == 0:
                break
            if counts[n] < cap[n]:
                counts[n] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    while left < 0:  # densities summing above the budget: take from the largest overshoot
        n = max(units, key=lambda k: counts[k] - ideal[k])
        counts[n] -= 1
        left += 1
    return counts


def _rank_together(unit_scores: Mapping[str, Tensor], total: int) -> dict[str, int]:
    if total <= 0 or not unit_scores:
        return {n: 0 for n in unit_scores}
    # Keep exactly `total` units: everything above the total-th largest score, plus ties by layer order.
    keep = topk_mask(torch.cat([u.reshape(-1) for u in unit_scores.values()]), total)
    counts, start = {}, 0
    for n, u in unit_scores.items():
        counts[n] = int(torch.count_nonzero(keep[start : start + u.numel()]))
        start += u.numel()
    return counts


def global_counts(
    unit_scores: Mapping[str, Tensor], total: int, *, floors: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Kept units per layer when the ``total`` best unit scores of all layers are kept together.

    With ``floors``, every layer keeps at least ``floors[name]`` units: layers the global ranking puts under
    their floor are fixed at it and the rest of the budget is ranked again over the other layers, until no
    layer is under its floor (at most one round per layer).
    """
    floors = dict(floors or {})
    need = sum(floors.values())
    if need > total:
        raise MaskError(f"the per-layer floors need {need} kept units, more than the {total} the sparsity leaves: "
                        "lower min_density or the sparsity")
    fixed: dict[str, int] = {}
    while True:
        free = {n: u for n, u in unit_scores.items() if n not in fixed}
        counts = _rank_together(free, total - sum(fixed.values()))
        low = {n: floors[n] for n in free if counts[n] < floors.get(n, 0)}
        if not low:
            return {n: fixed.get(n, counts.get(n, 0)) for n in unit_scores}
        fixed.update(low)


DISTRIBUTIONS: dict[str, Distribution] = {"uniform": uniform, "er": er, "erk": erk}
