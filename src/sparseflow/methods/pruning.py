"""Pruning methods: one-shot magnitude, gradual magnitude (GMP) and static random masks.

They differ only in *when* the mask changes (:meth:`~sparseflow.Method.target_sparsity`) and in their
score (:meth:`~sparseflow.Method.scores`); allocation, patterns and the zeroing invariant come from
:class:`~sparseflow.Method`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparseflow.distributions import check_sparsity, erk
from sparseflow.errors import SparseflowError
from sparseflow.methods.base import Method
from sparseflow.schedules import cubic, is_update


def _check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SparseflowError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(eq=False)
class MagnitudePruning(Method):
    """One-shot magnitude pruning: keep the largest |w| at step ``at_step`` (0 = in ``prepare``).

    Layer-wise with a distribution (default uniform), or across all layers with ``distribution=GLOBAL``
    (Han et al. 2015, "Learning both Weights and Connections"; global ranking as in Frankle & Carbin 2019).
    Prune a trained model in ``prepare`` and fine-tune, or train dense up to ``at_step`` and prune there.
    """

    at_step: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self.at_step, "at_step", 0)

    def target_sparsity(self, step: int) -> float | None:
        return self.sparsity if step == self.at_step else None


@dataclass(eq=False)
class GMP(Method):
    """Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune").

    Sparsity follows s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))³, updated every ``every`` steps from
    ``start`` (t0) to ``end`` (= t0 + n Δt, rounded down to a multiple of ``every``); each update keeps the
    largest magnitudes among the weights still active.

    Args:
        initial_sparsity: s_i, applied at ``start``.
        start: first pruning step t0.
        end: last pruning step; required (typically 50-80 % of training).
        every: Δt, steps between pruning updates.
    """

    initial_sparsity: float = 0.0
    start: int = 0
    end: int = 0
    every: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self.start, "start", 0)
        _check_int(self.every, "every", 1)
        _check_int(self.end, "end", 0)
        self.initial_sparsity = check_sparsity(self.initial_sparsity, "initial_sparsity")
        if not self.initial_sparsity <= self.sparsity:
            raise SparseflowError(
                f"initial_sparsity must be in [0, sparsity={self.sparsity}], got {self.initial_sparsity!r}"
            )
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

    def target_sparsity(self, step: int) -> float | None:
        if not is_update(step, every=self.every, start=self.start, end=self.start + self.n * self.every):
            return None
        return cubic(step, initial=self.initial_sparsity, final=self.sparsity, start=self.start, every=self.every, n=self.n)


@dataclass(eq=False)
class RandomSparse(Method):
    """A static random mask drawn in ``prepare`` (default distribution ERK, Evci et al. 2020).

    Per-layer counts are exact; within a layer the kept positions are uniform at random (a seeded
    ``torch.Generator``, so the mask depends on ``seed`` only). Sparse from scratch, so ``sparse_init``
    defaults to True: the kept weights are rescaled to the kept fan-in (see :class:`~sparseflow.Method`).
    """

    distribution: Any = erk
    seed: int = 0
    sparse_init: bool = field(default=True, kw_only=True)
    _generator: torch.Generator = field(init=False, repr=False, default=None)  # type: ignore[assignment]

    def _setup(self) -> None:
        self._generator = torch.Generator().manual_seed(int(self.seed))

    def scores(self, name: str, weight: Tensor) -> Tensor:
        return torch.rand(weight.shape, generator=self._generator).to(weight.device)

    def _extra_state(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        if "generator" in extra:
            self._generator.set_state(extra["generator"])
