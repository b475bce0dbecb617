"""Schedules: when a method changes its mask, and by how much.

A schedule is a frozen value injected into a method (as in jaxpruner's ``sparsity_schedules.py``), so
one-shot and gradual pruning are configurations of one method, :class:`~sparseflow.MagnitudePruning`.
Two families, one interface each:

- pruning schedules, ``is_update(step) -> bool`` and ``sparsity_at(step, final) -> float`` (the sparsity
  to prune to at an update step, given the method's final sparsity):

  - :class:`OneShot` ``(at_step=0)``: prune once, to the final sparsity, at ``at_step``;
  - :class:`Cubic` ``(start=, end=, every=, initial_sparsity=0.0)``: gradual magnitude pruning (Zhu & Gupta
    2017, "To prune, or not to prune"), s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))³ at t = t0, t0 + Δt, ...,
    t0 + n Δt, n = ⌊(end - start) / every⌋;

- drop-and-grow schedules for dynamic methods (:class:`~sparseflow.SET`, :class:`~sparseflow.RigL`),
  ``is_update(step) -> bool`` and ``drop_fraction(step) -> float``:

  - :class:`CosineDrop` ``(until=, update_every=100, start=0, alpha=0.3)``: updates every ΔT steps up to
    T_end = ``until``, dropping the fraction (α/2)(1 + cos(π t / T_end)) (Evci et al. 2020, "Rigging the
    Lottery").

Any value with the same two methods can be passed as ``schedule=``. Behind the values sit three pure
functions of the step: :func:`cubic`, :func:`cosine_drop` and :func:`is_update`.

Steps count optimizer steps from 0 (the state after ``prepare``); the first ``method.step()`` is step 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from sparseflow.distributions import check_sparsity
from sparseflow.errors import SparseflowError


# --- the pure functions -------------------------------------------------------------------------
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


def check_int(value: object, what: str, minimum: int) -> int:
    """``value`` if it is an integer >= ``minimum`` (not a bool), else a SparseflowError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SparseflowError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


# --- the two interfaces -------------------------------------------------------------------------
@runtime_checkable
class PruningSchedule(Protocol):
    """When a pruning method prunes, and to which sparsity."""

    def is_update(self, step: int) -> bool:
        """Whether the mask is pruned at ``step``."""
        ...

    def sparsity_at(self, step: int, final: float) -> float:
        """Sparsity to prune to at update ``step``, for a method whose final sparsity is ``final``."""
        ...


@runtime_checkable
class DropSchedule(Protocol):
    """When a dynamic method drops and regrows connections, and which fraction of the active ones."""

    def is_update(self, step: int) -> bool:
        """Whether ``step`` drops and regrows."""
        ...

    def drop_fraction(self, step: int) -> float:
        """Fraction of each layer's active weights dropped (and as many regrown) at update ``step``."""
        ...


# --- the values ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class OneShot:
    """Prune once, to the final sparsity, at step ``at_step`` (0 = in ``prepare``)."""

    at_step: int = 0

    def __post_init__(self) -> None:
        check_int(self.at_step, "at_step", 0)

    def is_update(self, step: int) -> bool:
        return step == self.at_step

    def sparsity_at(self, step: int, final: float) -> float:
        return final


@dataclass(frozen=True, kw_only=True)
class Cubic:
    """Gradual magnitude pruning's cubic schedule (Zhu & Gupta 2017).

    Updates at t0 = ``start``, t0 + Δt, ..., t0 + nΔt with Δt = ``every`` and n = ⌊(end - start)/every⌋
    (``end`` is rounded down to the last update); at update t the sparsity is
    s_t = s_f + (s_i - s_f)(1 - (t - t0)/(nΔt))³ with s_i = ``initial_sparsity`` and s_f the method's sparsity.
    At least two updates (n ≥ 1).
    """

    start: int
    end: int
    every: int
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        check_int(self.start, "start", 0)
        check_int(self.every, "every", 1)
        check_int(self.end, "end", 0)
        object.__setattr__(self, "initial_sparsity", check_sparsity(self.initial_sparsity, "initial_sparsity"))
        if self.end - self.start < self.every:
            raise SparseflowError(
                f"GMP needs end - start >= every to prune at least twice, got start={self.start}, "
                f"end={self.end}, every={self.every}: pass end= the last pruning step (e.g. 75% of the "
                "training steps) or a smaller every="
            )

    @property
    def n(self) -> int:
        """Number of pruning intervals n."""
        return (self.end - self.start) // self.every

    def is_update(self, step: int) -> bool:
        return is_update(step, every=self.every, start=self.start, end=self.start + self.n * self.every)

    def sparsity_at(self, step: int, final: float) -> float:
        return cubic(step, initial=self.initial_sparsity, final=final, start=self.start, every=self.every, n=self.n)


@dataclass(frozen=True, kw_only=True)
class CosineDrop:
    """RigL's drop-and-grow schedule (Evci et al. 2020; also used for SET).

    Updates at t = start + jΔT, 0 < t ≤ T_end, with ΔT = ``update_every`` and T_end = ``until`` (with
    ``start=0`` the first update is at ΔT); at update t the drop fraction is (α/2)(1 + cos(π t / T_end)),
    α = ``alpha``.
    """

    until: int
    update_every: int = 100
    start: int = 0
    alpha: float = 0.3

    def __post_init__(self) -> None:
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:  # also rejects NaN
            raise SparseflowError(f"alpha (the drop fraction) must be a number in [0, 1], got {a!r}")
        object.__setattr__(self, "alpha", float(a))
        check_int(self.update_every, "update_every", 1)
        check_int(self.start, "start", 0)
        check_int(self.until, "until", 1)
        first = self.start if self.start > 0 else self.update_every
        if first > self.until:
            raise SparseflowError(
                f"until={self.until} is before the first update at step {first} (start={self.start}, "
                f"update_every={self.update_every}): the mask would never change; pass a later until= "
                "(typically 75% of the training steps) or a smaller update_every="
            )

    def is_update(self, step: int) -> bool:
        return step > 0 and is_update(step, every=self.update_every, start=self.start, end=self.until)

    def drop_fraction(self, step: int) -> float:
        return cosine_drop(step, alpha=self.alpha, end=self.until)


# --- a method's schedule from its keywords --------------------------------------------------------
S = TypeVar("S")

_EXAMPLES = {PruningSchedule: "sparsity_at(step, final), e.g. OneShot(...) or Cubic(...)",
             DropSchedule: "drop_fraction(step), e.g. CosineDrop(...)"}


def resolve(who: str, schedule: object, family: type[S], keywords: dict[str, Any], build: Callable[..., S]) -> S:
    """The schedule a method runs on: ``schedule`` if given, else ``build(**keywords that are not None)``.

    Keywords given beside a schedule must equal its fields of the same name (so ``dataclasses.replace`` of
    a method, which passes both, works); a schedule outside ``family`` is a user error.
    """
    given = {k: v for k, v in keywords.items() if v is not None}
    if schedule is None:
        return build(**given)
    if not isinstance(schedule, family):
        raise SparseflowError(f"{who}: schedule must be a value with is_update(step) and {_EXAMPLES[family]}, got {schedule!r}")
    clash = [f"{k}={v!r}" for k, v in given.items() if v != getattr(schedule, k, None)]
    if clash:
        raise SparseflowError(
            f"{who}: {', '.join(clash)} disagree(s) with schedule={schedule!r}; pass the schedule or these keywords, not both"
        )
    return schedule
