"""Dynamic sparse training: SET and RigL keep the sparsity fixed and move the connections.

- :class:`SET` (Mocanu et al. 2018, "Scalable training of artificial neural networks with adaptive sparse
  connectivity inspired by network science"): drop the smallest-magnitude active weights, regrow as many
  at random positions.
- :class:`RigL` (Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners"): the same, but regrow
  where the dense gradient is largest. RigL is SET with one method overridden, :meth:`SET.grow_scores`
  (as in jaxpruner's ``sparse_trainers.py``).

Both start from a random mask with exact per-layer counts (default ERK, as in RigL) and update it on a
drop-and-grow schedule injected as a value, by default :class:`~sparseflow.schedules.CosineDrop`: every
``update_every`` steps t = ΔT, 2ΔT, ... ≤ ``until`` (T_end, typically 75 % of training). At an update,
in every layer that is not dense, following the RigL reference code (``rigl/sparse_optimizers.py``,
``SparseSETOptimizer._get_update_op``):

1. k = floor(f(t) · n_active) with the schedule's drop fraction, by default f(t) = (α/2)(1 + cos(π t / T_end))
   (the reference truncates: ``int(n_ones * drop_fraction)``);
2. drop the k active weights of smallest |w| (ties: the higher flat index goes first);
3. grow the k positions of highest grow score among all positions *not kept in step 2* (so a connection
   dropped in step 2 may be regrown: the reference lifts only the kept positions out of the candidates);
   ties go to the lower flat index.

A newly active position (inactive before the update) starts with weight exactly 0 and zero optimizer state;
a connection dropped and regrown in the same update keeps its weight and state, as with the reference's
default ``reinit_when_same=False``. Per-layer active counts never change. Differences from the reference:
no 1e-5 noise is added to the drop scores (ties are broken by index instead, so runs are exact), and the
optimizer step of an update iteration is not skipped (the user's loop stays as it is).

RigL's dense gradient is copied (one clone per layer) only in the backward pass whose ``step()`` is an
update; every other step costs what a static mask costs. The selection is exact top-k (no approximation);
on the CPU a threshold read off a sample only narrows which scores need ranking
(:func:`sparseflow.patterns.largest_among`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from sparseflow.distributions import Global
from sparseflow.errors import SparseflowError
from sparseflow.methods.base import _all_finite
from sparseflow.methods.pruning import RandomSparse
from sparseflow.patterns import Unstructured, largest_among
from sparseflow.schedules import CosineDrop, DropSchedule, check_int, resolve


@dataclass(eq=False)
class SET(RandomSparse):
    """Sparse Evolutionary Training (Mocanu et al. 2018) with RigL's schedule: random regrowth.

    Args:
        sparsity: fraction of target weights that are zero, fixed throughout training.
        distribution: per-layer densities (default :func:`~sparseflow.erk`); not GLOBAL.
        pattern: :class:`~sparseflow.Unstructured` only.
        seed: seeds the initial mask and the random regrowth (one ``torch.Generator``, saved in state_dict).
        alpha: initial drop fraction α in [0, 1] of the cosine schedule (default 0.3).
        update_every: ΔT, optimizer steps between mask updates (default 100).
        until: T_end, the last step that may update the mask; required (typically 75 % of training).
        start: first update step (default 0: the first update is at ``update_every``).
        total_steps: optional length of training, only to check that ``until`` lies within it.
        schedule: keyword-only; the drop-and-grow schedule instead of the four keywords above:
            :class:`~sparseflow.CosineDrop` (what the keywords build) or any value with ``is_update(step)``
            and ``drop_fraction(step)``.
        skip_no_grad: keyword-only, for methods that grow by gradient (RigL). A sparse target that gets no
            gradient (not used by the loss, such as BERT's pooler under a token-level loss, or frozen) is
            found at the first backward pass and stops training with its name; True keeps such layers'
            masks fixed instead, with a warning naming them.
    """

    alpha: float | None = None
    update_every: int | None = None
    until: int | None = None
    start: int | None = None
    total_steps: int | None = None
    schedule: DropSchedule | None = field(default=None, kw_only=True)
    skip_no_grad: bool = field(default=False, kw_only=True)

    # Whether grow_scores needs the dense gradient (collected only in the backward before an update).
    uses_gradient: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if not isinstance(self.pattern, Unstructured):
            raise SparseflowError(f"{name} supports pattern=Unstructured() only, got {self.pattern!r}")
        if isinstance(self.distribution, Global):
            raise SparseflowError(f"{name} needs per-layer densities (uniform, er or erk), got GLOBAL")
        if self.schedule is None and self.until is None:
            raise SparseflowError(
                f"{name} needs until (got until=None): the last optimizer step at which the mask may still change, "
                f"after which it stays fixed so the network can settle (typically 75 % of training); for example "
                f"sf.{name}(sparsity={self.sparsity:g}, until=int(0.75 * epochs * len(train_loader)))")
        keywords = {"alpha": self.alpha, "update_every": self.update_every, "until": self.until, "start": self.start}
        self.schedule = resolve(name, self.schedule, DropSchedule, keywords, CosineDrop)
        for k in keywords:  # the keyword fields show the schedule they describe
            setattr(self, k, getattr(self.schedule, k, None))
        if self.total_steps is not None:
            check_int(self.total_steps, "total_steps", 1)
            if self.until is not None and self.until > self.total_steps:
                raise SparseflowError(f"until={self.until} is beyond total_steps={self.total_steps}")
        if not isinstance(self.skip_no_grad, bool):
            raise SparseflowError(f"skip_no_grad must be True or False, got {self.skip_no_grad!r}")
        self._grads: dict[str, Tensor] = {}
        self._reset_grad_check()

    # --- the one override point ---------------------------------------------------------------
    def grow_scores(self, name: str, weight: Tensor, grad: Tensor | None) -> Tensor:
        """Score of every position of target ``name`` for regrowth (higher = grow). SET: uniform random.

        ``grad`` is the dense gradient of this update's step when :attr:`uses_gradient` is set, else None.
        """
        return torch.rand(weight.shape, generator=self._generator).to(weight.device)

    # --- schedule -----------------------------------------------------------------------------
    def is_update_step(self, t: int) -> bool:
        """Whether ``step()`` number ``t`` drops and regrows (by default t = start + j·ΔT, 0 < t ≤ until)."""
        assert self.schedule is not None
        return self.schedule.is_update(t)

    def drop_fraction(self, t: int) -> float:
        """The schedule's drop fraction at step ``t`` (by default (α/2)(1 + cos(π t / until)), 0 after ``until``)."""
        assert self.schedule is not None
        return self.schedule.drop_fraction(t)

    # --- Method hooks -------------------------------------------------------------------------
    def step(self) -> None:
        super().step()  # counts the step (and re-applies the mask for optimizers outside the safe list)
        if self.uses_gradient and not self._grad_checked and self._seen:
            self._check_gradients()
        if self.is_update_step(self._step):
            try:
                with self._dense_view():
                    self._update()
            finally:
                self._grads = {}

    def _setup(self) -> None:
        super()._setup()
        self._grads = {}
        self._reset_grad_check()

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        super()._load_extra_state(extra)
        self._grads = {}
        self._reset_grad_check()

    def _reset_grad_check(self) -> None:
        self._seen: set[str] = set()  # sparse targets a backward pass reached since prepare
        self._grad_checked = False
        self._no_grad: set[str] = set()  # sparse targets without a gradient, kept fixed (skip_no_grad=True)

    def _check_gradients(self) -> None:
        """After the first backward pass: every sparse target got a gradient, or the method stops naming them."""
        self._grad_checked = True
        missing = [n for n in self._fmask if n not in self._seen]
        if not missing:
            return
        name = type(self).__name__
        if self.skip_no_grad:
            self._no_grad = set(missing)
            warnings.warn(f"{name}: {len(missing)} sparse target(s) got no gradient and keep their mask fixed: "
                          f"{missing}", stacklevel=3)
            return
        raise SparseflowError(
            f"{name} grows weights where the gradient is large, but {len(missing)} sparse target(s) got no gradient "
            f"in the first backward pass: {missing}; the loss does not use them, or they are frozen. Leave them out "
            f"with Targets(exclude=({missing[0]!r}, ...)) or pass skip_no_grad=True to keep their masks fixed")

    def _wants_dense_grad(self, step: int) -> bool:
        return self.uses_gradient and self.is_update_step(step)

    def _on_sparse_grad(self, name: str) -> None:
        self._seen.add(name)

    def _on_grad(self, name: str, grad: Tensor) -> None:
        # Called for every sparse target in every backward; copies only before an update (self._step + 1
        # is the step the coming method.step() completes). With gradient accumulation the last backward
        # wins at inactive positions (earlier micro-batches' gradients there were already masked).
        self._seen.add(name)
        if self.uses_gradient and self.is_update_step(self._step + 1):
            self._grads[name] = grad.detach().clone()

    # --- the update ---------------------------------------------------------------------------
    @torch.no_grad()
    def _update(self) -> None:
        """In every layer that is not dense: drop the k = ⌊f(t)·n_active⌋ smallest active |w|, grow the k
        best ``grow_scores`` among the positions not kept (the rule in the module docstring)."""
        t = self._step
        frac = self.drop_fraction(t)
        self._check_finite()
        swaps: dict[str, tuple[Tensor, Tensor]] = {}  # name -> (dropped, grown) flat indices
        for name, p in self._params.items():  # compute everything first: a failure changes nothing
            active = self._mask[name].reshape(-1)
            n_active = int(torch.count_nonzero(active))
            if n_active == active.numel() or name in self._no_grad:
                continue  # a dense layer has nothing to regrow; one without a gradient keeps its mask
            # Scored for every sparse layer at every update, even when k = 0: SET draws one uniform tensor
            # per sparse layer per update, in target order, so the generator's stream depends on nothing else.
            grow = self._grow_scores(name, p, t)
            k = math.floor(frac * n_active + 1e-9)  # 1e-9: frac * n computed in floats (0.29 * 100)
            if k > 0:
                swaps[name] = _drop_and_grow(p.detach().abs().reshape(-1).to(torch.float32), active, grow, k)
        for name, (dropped, grown) in swaps.items():
            self._swap(name, dropped, grown)
        if swaps:
            self._refresh()  # zeroes weights and state at the dropped positions, rebuilds the float masks

    def _grow_scores(self, name: str, p: Tensor, t: int) -> Tensor:
        """:meth:`grow_scores` of target ``name`` at update ``t``, checked, as a flat float32 tensor."""
        grad = None
        if self.uses_gradient:
            grad = self._grads.get(name)
            if grad is None:
                raise SparseflowError(
                    f"{type(self).__name__} needs the dense gradient of {name!r} at update step {t}, but no "
                    "backward pass reached it: call loss.backward() before optimizer.step() and method.step() "
                    "(or leave that parameter out of the targets)"
                )
        grow = self.grow_scores(name, p.detach(), grad)
        if grow.shape != p.shape:
            raise SparseflowError(f"grow_scores() for {name!r} returned shape {tuple(grow.shape)}, expected {tuple(p.shape)}")
        grow = grow.detach().reshape(-1).to(torch.float32)
        if not _all_finite(grow):
            raise SparseflowError(f"grow scores for {name!r} contain NaN or inf at step {t}")
        return grow

    def _swap(self, name: str, dropped: Tensor, grown: Tensor) -> None:
        """Apply one layer's swap to its mask; a newly active position starts with weight and state 0."""
        p = self._params[name]
        flat = self._mask[name].reshape(-1)
        born = grown[~flat[grown]].to(p.device)  # grown but not dropped in this update: new
        for t in (p, *self._state_like(p)):
            _zero_at_(t, born)
        new = flat.clone()
        new[dropped.to(new.device)] = False
        new[grown.to(new.device)] = True
        self._mask[name] = new.reshape(p.shape)


@dataclass(eq=False)
class RigL(SET):
    """Rigging the Lottery (Evci et al. 2020): SET with regrowth where the dense gradient |∇L| is largest.

    The gradient is the one of the backward pass before the update's ``optimizer.step()``, taken before the
    mask is applied to it. Arguments as for :class:`SET`.
    """

    uses_gradient: ClassVar[bool] = True

    def grow_scores(self, name: str, weight: Tensor, grad: Tensor | None) -> Tensor:
        assert grad is not None
        return grad.abs()


def _drop_and_grow(magnitude: Tensor, active: Tensor, grow: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Flat indices (int64, increasing) of the ``k`` dropped and the ``k`` grown positions of one layer.

    ``magnitude``, ``grow``: 1-D float32 scores; ``active``: 1-D bool mask. Dropped: the k smallest
    ``magnitude`` among the active (ties: the higher index goes first), i.e. the active not among the
    n_active - k largest. Grown: the k largest ``grow`` among the positions not kept (the inactive and the
    just dropped; ties: lower index first).
    """
    kept = torch.zeros_like(active)
    kept[largest_among(magnitude, active, int(torch.count_nonzero(active)) - k)] = True
    return (active & ~kept).nonzero().squeeze(1), largest_among(grow, ~kept, k)


def _zero_at_(t: Tensor, idx: Tensor) -> None:
    if t.is_contiguous():
        t.view(-1).index_fill_(0, idx, 0)
    else:
        t.index_put_(torch.unravel_index(idx, t.shape), torch.zeros((), dtype=t.dtype, device=t.device))
