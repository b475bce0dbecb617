"""The method API shared by every way of making a network sparse.

A method is a small dataclass. Its constructor validates values and touches no model; everything that
needs the model happens in :meth:`Method.prepare`. The user keeps their own training loop::

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = sf.GMP(sparsity=0.9, end=steps)
    method.prepare(model, opt)                 # once
    for x, y in loader:
        F.cross_entropy(model(x), y).backward()
        opt.step(); method.step(); opt.zero_grad()

Invariant, after ``prepare`` and after every ``step()``: every target weight outside the mask is exactly
zero, and every optimizer state tensor shaped like a target (momentum, Adam moments) is zero there.

How it is kept cheaply. A gradient hook multiplies each target's gradient by its mask as soon as backward
has accumulated it. With a zero gradient, zero weight and zero state at a pruned position, SGD (momentum,
Nesterov, weight decay), Adam, AdamW and the other optimizers listed in :data:`MASK_SAFE_OPTIMIZERS`
compute a zero update there, so neither weights nor state need touching on ordinary steps: one
multiply per weight per step (measured in ``sparseflow bench overhead``). For any other optimizer, or none,
``step()`` also re-applies the mask to the weights and to the state. When the mask changes, weights and
state at the newly pruned (and, for dynamic methods, newly grown) positions are zeroed.

Subclasses say *when* to change the mask (:meth:`Method.target_sparsity`; magnitude pruning reads it off
an injected schedule value, :mod:`sparseflow.schedules`) and may override *what* to keep through the one
score override point, :meth:`Method.scores` (higher = keep).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sparseflow.distributions import (
    Distribution,
    Global,
    allocate,
    check_sparsity,
    global_counts,
    kept_total,
    uniform,
)
from sparseflow.errors import MaskError, SparseflowError
from sparseflow.init import rescale_, unit_norms
from sparseflow.layouts import Layout
from sparseflow.mask import Mask
from sparseflow.methods.execution import Execution, check_execution
from sparseflow.patterns import NM, Block, Pattern, Unstructured
from sparseflow.targets import Targets

# Optimizers whose update at a position is exactly zero, and whose state there stays zero, when its gradient,
# weight and state are zero. (Not Adamax: its exp_inf becomes max(0, |0| + eps) = eps at pruned positions.)
MASK_SAFE_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
)


def _check_float(params: dict[str, nn.Parameter]) -> None:
    """Refuse targets that are not floating point: an integer weight (a quantised or index tensor) has no
    magnitude scale or gradient a sparsity method can use, and masking it silently would corrupt it."""
    bad = [f"{n} ({p.dtype})" for n, p in params.items() if not (p.is_floating_point() or p.is_complex())]
    if bad:
        names = tuple(b.split(" ")[0] for b in bad)
        raise MaskError(f"target weights must be floating point, got {', '.join(bad[:5])}"
                        f"{' ...' if len(bad) > 5 else ''}: convert them (model.float()) or leave them out with "
                        f"sf.Targets(exclude={names[:3]!r})")


def _all_finite(t: Tensor) -> bool:
    # A sum is finite only if every term is: one cheap reduction, and the exact check only when it fails
    # (finite values whose sum overflows).
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


@dataclass(eq=False)
class Method:
    """Base class: a sparsity target, how it is spread over layers, and a pattern.

    Args:
        sparsity: final fraction of target weights that are zero, in [0, 1).
        distribution: per-layer densities (:func:`~sparseflow.uniform`, :func:`~sparseflow.er`,
            :func:`~sparseflow.erk`) or :data:`~sparseflow.GLOBAL` to rank all layers' scores together.
        pattern: :class:`~sparseflow.Unstructured`, :class:`~sparseflow.NM` or :class:`~sparseflow.Block`.
        targets: which parameters are pruned (:class:`~sparseflow.Targets`).
        sparse_init: keyword-only. When True, ``prepare`` rescales the kept weights right after the first
            mask is applied so that every output unit gets back the squared norm it had dense
            (:func:`sparseflow.init.rescale_` with ``reference``; Evci et al. 2022 do the same by kept
            fan-in). A masked He/PyTorch-default init then keeps its signal variance (χ = 1) instead of
            shrinking by the layer density at every layer. Norm matching equals matching the kept fan-in for
            masks drawn independently of the weights (random, SET, RigL) and is also right for masks scored
            by the weights (SNIP, GraSP, SynFlow), which keep larger weights than average. True by default
            for the sparse-from-scratch methods (RandomSparse, SET, RigL, SNIP, GraSP, SynFlow); False here
            and for magnitude pruning and GMP, which prune trained weights. Pass ``sparse_init=False`` to
            keep the masked weights as they are.
        skip_incompatible: keyword-only. A pattern that does not fit some targets (``NM(2, 4)`` on a layer
            whose input axis is not a multiple of 4) refuses them all in one error by default; True leaves
            those layers dense, with a warning naming them.
        min_density: keyword-only, for ``distribution=GLOBAL``. Every layer keeps at least this fraction of
            its weights, and the rest of the budget is ranked globally. Without it, a layer that the global
            ranking leaves with fewer weights than output units gets a warning naming it.

    Patterns and per-unit rules read each target through its :class:`~sparseflow.Layout` (which axis is
    output, which input): N:M groups run along the input axis of a Linear, a convolution, a Hugging Face
    ``Conv1D`` (stored ``(in, out)``) and an attention projection alike.

    Why :func:`~sparseflow.init.rescale_` and not :func:`~sparseflow.init.sparse_init_`: it keeps the
    user's own init (family, gain and seed), uses no randomness (so ``prepare`` draws exactly what it drew
    before) and is the identity on dense layers.
    """

    sparsity: float
    distribution: Distribution | Global = uniform
    pattern: Pattern = field(default_factory=Unstructured)
    targets: Targets = field(default_factory=Targets)
    sparse_init: bool = field(default=False, kw_only=True)
    skip_incompatible: bool = field(default=False, kw_only=True)
    min_density: float | None = field(default=None, kw_only=True)
    #: what ``sparse_init`` did in the last ``prepare``: "rescaled", "calibrated" or None (off, or nothing masked)
    sparse_init_applied: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.sparsity = check_sparsity(self.sparsity)
        if not isinstance(self.pattern, (Unstructured, NM, Block)):
            raise MaskError(f"pattern must be Unstructured(), NM(n, m) or Block(r, c), got {self.pattern!r}")
        if not (isinstance(self.distribution, Global) or callable(self.distribution)):
            raise MaskError(f"distribution must be uniform, er, erk or GLOBAL, got {self.distribution!r}")
        if isinstance(self.pattern, NM):
            if abs(self.sparsity - (1 - self.pattern.density)) > 1e-9:
                raise MaskError(
                    f"{self.pattern!r} fixes every layer's sparsity at {1 - self.pattern.density:g}; "
                    f"got sparsity={self.sparsity:g}: pass sparsity={1 - self.pattern.density:g}"
                )
        if not isinstance(self.targets, Targets):
            raise MaskError(f"targets must be a Targets(...) value, got {self.targets!r}")
        for flag in ("sparse_init", "skip_incompatible"):
            if not isinstance(getattr(self, flag), bool):
                raise SparseflowError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.min_density is not None:
            self.min_density = check_sparsity(self.min_density, "min_density")
            if not isinstance(self.distribution, Global):
                raise SparseflowError(
                    f"min_density is a floor for distribution=GLOBAL; {self.distribution!r} sets every layer's "
                    "density itself: drop min_density or use distribution=sf.GLOBAL")
        self._model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._params: dict[str, nn.Parameter] = {}
        self._layouts: dict[str, Layout] = {}
        self._mask = Mask()
        self._fmask: dict[str, Tensor] = {}  # mask in the parameter's dtype: float multiply is ~7x bool's
        self._hooks: list[Any] = []
        self._step = 0
        self._strict = True
        self._mask_version = 0
        self._exec: Execution | None = None  # sparse execution (None: dense)
        self._hooks_on = False

    # --- what subclasses define ---------------------------------------------------------------
    def target_sparsity(self, step: int) -> float | None:
        """Sparsity to prune to at ``step`` (0 = ``prepare``), or None to leave the mask as it is."""
        return self.sparsity if step == 0 else None

    def scores(self, name: str, weight: Tensor) -> Tensor:
        """Importance of every weight of target ``name`` (higher = keep). Default: magnitude |w|."""
        return weight.abs()

    # --- public API ---------------------------------------------------------------------------
    @property
    def mask(self) -> Mask:
        """The current mask, read-only: a write raises :class:`~sparseflow.errors.MaskError` (change it with
        :meth:`set_mask`, which also zeroes weights and optimizer state outside it; ``mask.clone()`` is a
        writable copy). The view follows the method's later mask changes."""
        return self._mask.read_only(f"{type(self).__name__}.set_mask")

    @property
    def step_count(self) -> int:
        """Optimizer steps taken since ``prepare`` (restored by ``load_state_dict``)."""
        return self._step

    @property
    def mask_version(self) -> int:
        """Counts mask changes (every prune, regrowth, ``set_mask``): a loop compares it to see an update."""
        return self._mask_version

    @property
    def model(self) -> nn.Module:
        self._require_prepared()
        assert self._model is not None
        return self._model

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                execution: str = "dense") -> None:
        """Attach to ``model`` (and its optimizer) and build the initial mask. Call once, before training.

        ``execution``: ``"dense"`` (masked dense tensors), ``"sparse"`` (the ``nn.Linear`` targets store and
        multiply their kept weights only; the optimizer's parameters are swapped in place) or ``"auto"`` (each
        layer timed, dense kept where it is faster); see :mod:`sparseflow.methods.execution`.
        """
        check_execution(execution)
        if not isinstance(model, nn.Module):
            raise SparseflowError(f"prepare() needs an nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise SparseflowError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        self._warn_reprepare(model)
        self._drop_execution()
        self.remove()
        self._model, self._optimizer = model, optimizer
        try:
            self._params = self.targets.select(model)
            _check_float(self._params)
            self._layouts = self.targets.layouts(model)
            self._check_pattern()
            self._strict = optimizer is None or type(optimizer) not in MASK_SAFE_OPTIMIZERS
            self._step = 0
            self._mask = Mask.ones(self._params)
            self._fmask = {}
            self.sparse_init_applied = None
            dense = self._dense_signal() if self.sparse_init else None  # before _setup: SynFlow masks in it
            self._setup()
            s = self.target_sparsity(0)
            if s is not None:
                self._prune_to(s)
                if dense is not None and s > 0:  # the first mask is in place: restore the dense signal variance
                    self.sparse_init_applied = self._restore_signal(dense)
        except BaseException:
            self._model = self._optimizer = None  # a failed prepare leaves the method detached, not half-attached
            raise
        for name, p in self._params.items():
            if p.requires_grad:  # a frozen weight gets no gradient to mask (and never moves)
                self._hooks.append(p.register_post_accumulate_grad_hook(self._make_hook(name)))
        self._hooks_on = True
        if execution != "dense":
            self.set_execution(execution)

    def _dense_signal(self) -> dict[str, Any]:
        """What ``sparse_init`` restores after the first mask, read from the dense model before any masking:
        the squared norm of every output unit of every >= 2-dim target (:func:`sparseflow.init.unit_norms`)."""
        return {"norms": unit_norms(self.model, targets=self.targets)}

    def _restore_signal(self, dense: dict[str, Any]) -> str:
        """Give every unit back its dense squared norm (:func:`sparseflow.init.rescale_`, norm matching); the
        name of what was done, kept as ``sparse_init_applied``."""
        rescale_(self.model, {n: self._mask[n] for n in self._params}, reference=dense["norms"], targets=self.targets)
        return "rescaled"

    @property
    def execution(self) -> str:
        """``"dense"``, ``"sparse"`` or ``"auto"``: how the targets are multiplied (see :meth:`prepare`)."""
        return "dense" if self._exec is None else self._exec.mode

    @property
    def sparse_layers(self) -> dict[str, nn.Module]:
        """{target name: its :class:`~sparseflow.methods.sparse_linear.SparseTrainLinear`} in sparse execution."""
        return {} if self._exec is None else dict(self._exec.layers)

    def set_execution(self, execution: str) -> None:
        """Switch a prepared method's execution: ``"dense"`` turns the sparse layers back into ``nn.Linear``
        (weights and optimizer state with zeros outside the mask); ``"sparse"``/``"auto"`` as in :meth:`prepare`."""
        check_execution(execution)
        self._require_prepared()
        if execution == self.execution:
            return
        self._drop_execution()
        if execution != "dense":
            self._exec = Execution(self, execution)
            self._exec.start()

    def _drop_execution(self) -> None:
        if self._exec is not None:
            self._exec.to_dense()
            self._exec = None

    def _dense_view(self) -> Any:
        """Within: every target is a dense tensor in ``_params`` (a mask change then rebuilds sparse layers)."""
        return contextlib.nullcontext() if self._exec is None else self._exec.dense_view()

    def _warn_reprepare(self, model: nn.Module) -> None:
        """A second ``prepare`` starts over (step 0, a new mask from the weights as they are now); on another
        model it also leaves the first one unmasked from then on. Both are legal, rarely meant: say so."""
        if self._model is None:
            return
        name = type(self).__name__
        if self._model is model:
            warnings.warn(f"{name}.prepare() was called again on the same model (at step {self._step}): the mask is "
                          "rebuilt from the current weights and the schedule restarts at step 0; call prepare() once "
                          "per training run", stacklevel=3)
        else:
            warnings.warn(f"{name}.prepare() on a second model ({type(model).__name__}) detaches it from the first "
                          f"({type(self._model).__name__}), whose weights are no longer masked; use one {name}(...) "
                          "per model", stacklevel=3)

    def step(self) -> None:
        """Advance one optimizer step; change the mask when the schedule says so. Call after ``optimizer.step()``."""
        self._require_prepared()
        self._step += 1
        if self._exec is not None:
            self._exec.decide()  # "auto": the first step has seen the rows each layer multiplies
        s = self.target_sparsity(self._step)
        if s is not None:
            with self._dense_view():
                self._prune_to(s)
        elif self._strict:
            self._enforce(self._params)
        if self._exec is not None:
            self._exec.arm()

    def set_mask(self, mask: Mask | dict[str, Tensor]) -> None:
        """Replace the mask (same targets and shapes), zeroing weights and optimizer state outside it."""
        self._require_prepared()
        with self._dense_view():
            self._set_mask(mask)

    def _set_mask(self, mask: Mask | dict[str, Tensor]) -> None:
        mask = mask if isinstance(mask, Mask) else Mask(mask)
        if set(mask) != set(self._params):
            raise MaskError(
                f"mask covers {sorted(mask)}, but this method's targets are {sorted(self._params)}"
            )
        for name, p in self._params.items():  # validate everything before changing anything
            m = mask[name]
            if m.shape != p.shape:
                raise MaskError(f"mask for {name!r} has shape {tuple(m.shape)}, parameter has {tuple(p.shape)}")
        for name, p in self._params.items():
            self._mask[name] = mask[name].to(p.device)
        self._refresh()

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Do by hand what the gradient hooks do: hand each target's dense gradient to the method, then mask it.

        For loops whose gradients are final only after ``backward()`` returns, such as DistributedDataParallel
        (it averages them over ranks at the end of backward, after the hooks ran on the local gradient):
        call :meth:`remove` after ``prepare``, then this after every backward. RigL then grows from the
        averaged gradient, and the mask is applied to it.
        """
        self._require_prepared()
        sparse = {} if self._exec is None else self._exec.layers
        for name, p in self._params.items():
            if name in sparse:  # no masking needed; RigL's dense gradient averaged over ranks like DDP's
                self._exec.hand_grad(name, reduce=True)  # type: ignore[union-attr]
                continue
            fm = self._fmask.get(name)
            if fm is not None and p.grad is not None:
                self._on_grad(name, p.grad)
                p.grad.mul_(fm)

    def remove(self) -> None:
        """Detach the gradient hooks (the mask and weights stay as they are)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._hooks_on = False
        if self._exec is not None:
            self._exec.remove_hooks()

    def density(self) -> float:
        """Current kept fraction over the targets."""
        return self._mask.density()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: step, mask, and subclass extras (tensors and plain values only)."""
        self._require_prepared()
        state = {
            "method": type(self).__name__,
            "step": self._step,
            "mask": {n: m.clone() for n, m in self._mask.items()},
            "extra": self._extra_state(),
        }
        if self._exec is not None and self._exec.mode == "auto" and self._exec.decided:
            state["sparse_layers"] = sorted(self._exec.layers)  # auto's choice, so that a resumed run keeps it
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` after ``prepare`` on the same architecture."""
        self._require_prepared()
        if not isinstance(state, dict) or "mask" not in state or "step" not in state:
            got = f"keys {sorted(map(str, state))}" if isinstance(state, dict) else type(state).__name__
            raise SparseflowError(f"not a sparseflow method state ({got}): expected a dict with 'step' and 'mask', "
                                  f"as {type(self).__name__}.state_dict() returns")
        if state.get("method") not in (None, type(self).__name__):
            raise SparseflowError(
                f"state was saved by {state.get('method')}, cannot load it into {type(self).__name__}"
            )
        self.set_mask(dict(state["mask"]))
        if self._exec is not None and "sparse_layers" in state:
            self._exec.restore_choice(list(state["sparse_layers"]))
        self._step = int(state["step"])
        self._load_extra_state(state.get("extra") or {})
        if self._exec is not None:
            self._exec.arm()

    # --- subclass extension points (not the score override) -----------------------------------
    def _setup(self) -> None:
        """Per-prepare initialisation (e.g. a random generator); runs before the first mask is built."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        pass

    def _wants_dense_grad(self, step: int) -> bool:
        """Whether the backward passes before ``step()`` number ``step`` must hand the dense gradient of the
        targets to :meth:`_on_grad` in sparse execution (RigL before an update)."""
        return False

    def _on_sparse_grad(self, name: str) -> None:
        """In sparse execution: target ``name`` got its gradient in a backward pass that collected no dense one."""

    # --- internals ------------------------------------------------------------------------------
    def _canonical_shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(self._params[name].shape)
        return self._layouts[name].canonical_shape(shape) if len(shape) >= 2 else shape

    def _check_pattern(self) -> None:
        """Every target fits the pattern (in its ``(out, in, *rest)`` view), or one error lists all that do not."""
        bad: dict[str, str] = {}
        for name in self._params:
            try:
                self.pattern.check(name, self._canonical_shape(name))
            except MaskError as e:
                bad[name] = str(e)
        if not bad:
            return
        listed = ", ".join(f"{n!r} (out, in, ...) = {self._canonical_shape(n)}" for n in bad)
        if self.skip_incompatible:
            warnings.warn(f"{self.pattern!r} does not fit {len(bad)} target layer(s), left dense: {listed}",
                          stacklevel=3)
            self._params = {n: p for n, p in self._params.items() if n not in bad}
            if not self._params:
                raise MaskError(f"{self.pattern!r} fits none of the target layers: {listed}")
            return
        why = "groups run along the input axis" if isinstance(self.pattern, NM) else "tiles the (out, in) view"
        raise MaskError(
            f"{self.pattern!r} does not fit {len(bad)} of {len(self._params)} target layers "
            f"({why}): {listed}; pass skip_incompatible=True to leave them dense, or leave them out with "
            "Targets(exclude=...)")

    def _require_prepared(self) -> None:
        if self._model is None:
            raise SparseflowError(f"{type(self).__name__} is not attached to a model: call prepare(model, optimizer) first")

    def _make_hook(self, name: str):
        def hook(p: Tensor) -> None:
            fm = self._fmask.get(name)
            if fm is not None and p.grad is not None:
                self._on_grad(name, p.grad)
                p.grad.mul_(fm)

        return hook

    def _on_grad(self, name: str, grad: Tensor) -> None:
        """Called with the dense gradient of a sparse target before it is masked (dynamic methods)."""

    def _check_finite(self) -> None:
        for name, p in self._params.items():
            if not _all_finite(p):
                raise SparseflowError(
                    f"weights of {name!r} contain NaN or inf at step {self._step}, so they cannot be ranked; "
                    "training diverged: lower the learning rate or check the data"
                )

    @torch.no_grad()
    def _prune_to(self, sparsity: float) -> None:
        """Shrink the mask to ``sparsity`` by the current scores; the new mask is a subset of the old."""
        if sparsity <= 0.0 and self._mask.count() == self._mask.numel():
            return
        self._check_finite()
        shapes = {n: self._canonical_shape(n) for n in self._params}  # (out, in, *rest): what ER/ERK read
        units = {n: self.pattern.units(sh) for n, sh in shapes.items()}
        scores: dict[str, Tensor] = {}
        for name, p in self._params.items():
            sc = self.scores(name, p.detach()).to(torch.float32)
            if sc.shape != p.shape:
                raise SparseflowError(f"scores() for {name!r} returned shape {tuple(sc.shape)}, expected {tuple(p.shape)}")
            if not _all_finite(sc):
                raise SparseflowError(f"scores for {name!r} contain NaN or inf at step {self._step}")
            sc = sc.masked_fill(~self._mask[name], float("-inf"))  # pruned stays pruned
            scores[name] = self._layouts[name].canonical(sc) if sc.dim() >= 2 else sc
        current = {n: self._current_units(n) for n in shapes}
        total = kept_total(sum(units.values()), sparsity)
        if isinstance(self.pattern, NM):
            counts = {n: units[n] * self.pattern.n // self.pattern.m for n in units}
        elif isinstance(self.distribution, Global):
            counts = self._global_counts(scores, total, current, sparsity)
        else:
            densities = self.distribution(shapes, sparsity)
            counts = allocate(units, densities, total, limit=current)
        empty = [n for n, c in counts.items() if c == 0]
        if empty:
            raise MaskError(
                f"at sparsity {sparsity:g} layer(s) {empty} would keep no weights, which cuts the network; "
                "lower the sparsity, use distribution=erk"
                + (", pass min_density= (a floor per layer, e.g. 0.01)" if isinstance(self.distribution, Global) else "")
                + ", or leave those layers dense via Targets(...)"
            )
        for name in self._params:
            keep = self.pattern.topk(scores[name], counts[name])
            self._mask[name] = self._layouts[name].restore(keep) if keep.dim() >= 2 else keep
        self._refresh()

    def _current_units(self, name: str) -> int:
        m = self._mask[name]
        if isinstance(self.pattern, Block):
            return int((self.pattern.unit_scores(self._layouts[name].canonical(m.float())) > 0).sum())
        return int(torch.count_nonzero(m))

    def _global_counts(self, scores: dict[str, Tensor], total: int, current: dict[str, int],
                       sparsity: float) -> dict[str, int]:
        unit = {n: self.pattern.unit_scores(s) for n, s in scores.items()}
        if self.min_density is not None:
            floors = {n: min(current[n], math.ceil(self.min_density * u.numel() - 1e-9)) for n, u in unit.items()}
            return global_counts(unit, total, floors=floors)
        counts = global_counts(unit, total)
        rows = self.pattern.r if isinstance(self.pattern, Block) else 1
        outputs = {n: self._canonical_shape(n)[0] // rows if len(self._canonical_shape(n)) >= 2 else 1 for n in unit}
        low = [n for n, c in counts.items() if 0 < c < outputs[n]]
        if low:
            listed = ", ".join(f"{n!r} keeps {counts[n]} for {outputs[n]} outputs" for n in low)
            floor = max(outputs[n] / unit[n].numel() for n in low)
            warnings.warn(
                f"global allocation at sparsity {sparsity:g} leaves {len(low)} layer(s) with fewer kept weights than "
                f"output units, so most of their outputs get no input: {listed}; pass min_density= (e.g. "
                f"{floor:.2g}, one weight per output) for a floor per layer, or use distribution=sf.erk",
                stacklevel=4)
        return counts

    @torch.no_grad()
    def _refresh(self) -> None:
        """Rebuild the float masks and zero weights and optimizer state outside the mask."""
        self._mask_version += 1
        self._refresh_fmask()
        self._enforce(self._params)

    def _refresh_fmask(self) -> None:
        sparse = {} if self._exec is None else self._exec.layers
        self._fmask = {}
        for name, p in self._params.items():
            m = self._mask[name]
            if int(torch.count_nonzero(m)) < m.numel() and (name not in sparse or p.shape == m.shape):
                self._fmask[name] = m.to(device=p.device, dtype=p.dtype)  # dense layers skip the per-step multiply

    @torch.no_grad()
    def _enforce(self, params: dict[str, nn.Parameter]) -> None:
        for name, fm in self._fmask.items():
            p = params[name]
            p.mul_(fm)
            for v in self._state_like(p):
                v.mul_(fm)

    def _state_like(self, p: Tensor) -> list[Tensor]:
        """The optimizer's state tensors shaped like ``p`` (momentum, Adam moments): zeroed with the weights."""
        if self._optimizer is None:
            return []
        return [v for v in self._optimizer.state.get(p, {}).values() if isinstance(v, Tensor) and v.shape == p.shape]
