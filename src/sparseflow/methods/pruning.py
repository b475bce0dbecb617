"""Pruning methods: magnitude pruning on a schedule, and static random masks.

:class:`MagnitudePruning` is the one magnitude method; *when* it prunes is the schedule value injected
into it (:mod:`sparseflow.schedules`, as in jaxpruner): :class:`~sparseflow.schedules.OneShot` prunes once
(Han et al. 2015), :class:`~sparseflow.schedules.Cubic` prunes gradually (GMP, Zhu & Gupta 2017), and
:class:`GMP` is the name of that configuration. Allocation, patterns and the zeroing invariant come from
:class:`~sparseflow.Method`; the score is |w| (:meth:`~sparseflow.Method.scores`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparseflow.distributions import erk
from sparseflow.errors import SparseflowError
from sparseflow.methods.base import Method
from sparseflow.schedules import Cubic, OneShot, PruningSchedule, resolve


@dataclass(eq=False)
class MagnitudePruning(Method):
    """Magnitude pruning: at every update of ``schedule``, keep the largest |w| among the weights still active.

    Layer-wise with a distribution (default uniform), or across all layers with ``distribution=GLOBAL``
    (Han et al. 2015, "Learning both Weights and Connections"; global ranking as in Frankle & Carbin 2019).

    Args:
        at_step: prune once, at this step (0 = in ``prepare``): the same as ``schedule=OneShot(at_step)``.
            Prune a trained model in ``prepare`` and fine-tune, or train dense up to ``at_step`` and prune there.
        schedule: keyword-only; when the mask is pruned and to which sparsity: :class:`~sparseflow.OneShot`
            (the default, at step 0), :class:`~sparseflow.Cubic` (gradual, as :class:`GMP`), or any value
            with ``is_update(step)`` and ``sparsity_at(step, final)``.
    """

    at_step: int | None = None
    schedule: PruningSchedule | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.schedule = resolve(type(self).__name__, self.schedule, PruningSchedule, self._keywords(), self._build)
        initial = getattr(self.schedule, "initial_sparsity", 0.0)
        if not initial <= self.sparsity:
            raise SparseflowError(f"initial_sparsity must be in [0, sparsity={self.sparsity}], got {initial!r}")
        for name in self._keywords():  # the keyword fields show the schedule they describe
            setattr(self, name, getattr(self.schedule, name, None))

    def _keywords(self) -> dict[str, Any]:
        """The schedule's keywords as given to the constructor (None = not given)."""
        return {"at_step": self.at_step}

    def _build(self, **given: Any) -> PruningSchedule:
        """The schedule made of the given keywords, when no ``schedule=`` is passed."""
        return OneShot(**given)

    def target_sparsity(self, step: int) -> float | None:
        assert self.schedule is not None
        return self.schedule.sparsity_at(step, self.sparsity) if self.schedule.is_update(step) else None


@dataclass(eq=False)
class GMP(MagnitudePruning):
    """Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): magnitude pruning on the
    :class:`~sparseflow.Cubic` schedule.

    Sparsity follows s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))³, updated every ``every`` steps from
    ``start`` (t0) to ``end`` (= t0 + n Δt, rounded down to a multiple of ``every``); each update keeps the
    largest magnitudes among the weights still active. ``GMP(s, start=a, end=b, every=c, initial_sparsity=i)``
    is ``MagnitudePruning(s, schedule=Cubic(start=a, end=b, every=c, initial_sparsity=i))`` under its own
    name (the name a checkpoint records).

    Args:
        initial_sparsity: s_i, applied at ``start`` (default 0).
        start: first pruning step t0 (default 0).
        end: last pruning step; required (typically 50-80 % of training).
        every: Δt, steps between pruning updates (default 100).
        schedule: keyword-only, a :class:`~sparseflow.Cubic` instead of the four keywords.
    """

    at_step: None = field(default=None, init=False, repr=False)  # a cubic schedule has no single step
    initial_sparsity: float | None = None
    start: int | None = None
    end: int | None = None
    every: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.schedule, Cubic):
            raise SparseflowError(
                f"GMP prunes on the cubic schedule: pass schedule=Cubic(...) or none, got {self.schedule!r}; "
                "other schedules go to MagnitudePruning(sparsity, schedule=...)"
            )

    @property
    def n(self) -> int:
        """Number of pruning intervals n."""
        assert isinstance(self.schedule, Cubic)
        return self.schedule.n

    def _keywords(self) -> dict[str, Any]:
        return {"initial_sparsity": self.initial_sparsity, "start": self.start, "end": self.end, "every": self.every}

    def _build(self, **given: Any) -> PruningSchedule:
        return Cubic(**({"start": 0, "end": 0, "every": 100} | given))  # end=0: Cubic says end= is missing


def mask_seed(seed: int) -> int:
    """The seed of a method's own generator, derived from ``seed`` (numpy's SeedSequence): a model initialised
    after ``torch.manual_seed(seed)`` draws the same uniform stream as ``torch.Generator().manual_seed(seed)``,
    so a mask drawn from that would keep the largest initial weights instead of random ones."""
    return int(np.random.SeedSequence([int(seed), 0x6D61736B]).generate_state(1, np.uint64)[0] >> 1)


@dataclass(eq=False)
class RandomSparse(Method):
    """A static random mask drawn in ``prepare`` (default distribution ERK, Evci et al. 2020).

    Per-layer counts are exact; within a layer the kept positions are uniform at random (a seeded
    ``torch.Generator``, so the mask depends on ``seed`` only). Sparse from scratch, so ``sparse_init``
    defaults to True: every unit's kept weights get the unit's dense norm back (see :class:`~sparseflow.Method`).
    """

    distribution: Any = erk
    seed: int = 0
    sparse_init: bool = field(default=True, kw_only=True)
    _generator: torch.Generator = field(init=False, repr=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SparseflowError(f"RandomSparse seed must be an integer, got {self.seed!r}")

    def _setup(self) -> None:
        self._generator = torch.Generator().manual_seed(mask_seed(self.seed))

    def scores(self, name: str, weight: Tensor) -> Tensor:
        return torch.rand(weight.shape, generator=self._generator).to(weight.device)

    def _extra_state(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        if "generator" in extra:
            self._generator.set_state(extra["generator"])
