"""Sparsity-aware initialisation: variances from the fan-in a unit actually has.

A dense He initialisation draws w ~ N(0, 2/fan_in) so that a ReLU layer keeps the second moment of its
pre-activations, q_l = σ_w² · fan_in · q_{l-1} / 2 = q_{l-1} (He et al. 2015; χ = 1 in mean-field terms,
Poole et al. 2016, Schoenholz et al. 2017). Masking that layer to density d keeps only d·fan_in inputs per
unit on average, so q shrinks by d per layer: at 98 % sparsity a 20-layer net multiplies the signal by
0.02^20 and does not train. Using the *kept* fan-in restores χ = 1:

- ``per="unit"`` (Evci et al. 2022, "Gradient Flow in Sparse Neural Networks and How Lottery Tickets
  Win"): unit j of a layer draws from N(0, gain²/k_j), k_j = its number of kept inputs (for a conv: kept
  (in, kh, kw) positions of output channel j). Exact for every unit, whatever the mask.
- ``per="layer"``: N(0, gain²/(d·fan_in)), d = the layer's density (kept fraction), i.e. the mean k_j
  (Liu et al. 2019 "Rethinking the value of network pruning" call it scaled init; Lee et al. 2020).

Three tools, all restricted to the target weights (:func:`sparseflow.targets.prunable`, Linear/Conv
weights by default) and leaving biases as they are (they do not depend on the fan-in):

- :func:`sparse_init_` redraws kept weights from the Gaussian above.
- :func:`rescale_` multiplies the existing kept weights by sqrt(fan_in / k_j) (count matching), or, given
  each unit's squared norm before masking (:func:`unit_norms`), by the factor that restores that norm (norm
  matching: exact for masks chosen by weight values, which keep larger weights than average). It keeps the
  user's init family and seed; a no-op on a dense layer. Methods use norm matching when ``sparse_init`` is
  on (see :class:`sparseflow.methods.base.Method`).
- :func:`calibrate_` rescales each layer on a data batch so the measured ratio q_l / q_{l-1} equals
  ``target`` (LSUV, Mishkin & Matas 2016, applied to the ratio rather than to q itself);
  :func:`variance_ratios` measures that ratio without changing the model.

The mask is the nonzero pattern of each weight unless one is passed (library contract: weights are zero
outside the mask). Units with no kept input stay zero; pruned positions stay exactly zero.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparseflow.errors import MaskError, SparseflowError
from sparseflow.layouts import DEFAULT, Layout, parameter_layouts
from sparseflow.targets import Targets, prunable

PER = ("unit", "layer")


def _check_per(per: str) -> None:
    if per not in PER:
        raise SparseflowError(f"per must be 'unit' or 'layer', got {per!r}")


def unit_fan_in(mask: Tensor) -> Tensor:
    """Kept inputs of every output unit of a weight mask, shape (out,).

    ``mask`` is shaped like the weight: (out, in) for Linear, (out, in/groups, *kernel) for Conv; a unit's
    fan-in counts its kept (in, *kernel) positions, the sparse version of PyTorch's own fan-in.
    """
    if mask.dim() < 2:
        raise MaskError(f"a fan-in needs a weight with >= 2 dims, got shape {tuple(mask.shape)}")
    return (mask != 0).reshape(mask.shape[0], -1).sum(dim=1)


def sparse_std(mask: Tensor, *, per: str = "unit", gain: float = math.sqrt(2)) -> Tensor:
    """Standard deviation of every output unit's kept weights, shape (out,): gain/sqrt(fan_in_eff).

    fan_in_eff is the unit's kept fan-in k_j (``per="unit"``) or d·fan_in with d the layer density
    (``per="layer"``); a unit with no kept input (or a layer with none) gets 0.
    """
    _check_per(per)
    if not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain > 0):
        raise SparseflowError(f"gain must be a positive finite number, got {gain!r}")
    k = unit_fan_in(mask).to(torch.float64)  # (out,)
    if per == "layer":
        k = torch.full_like(k, float(k.mean()))  # d·fan_in = total kept / out
    std = torch.zeros_like(k)
    alive = k > 0
    std[alive] = gain / k[alive].sqrt()
    return std


def _weights(
    model: nn.Module, mask: Mapping[str, Tensor] | None, targets: Targets | None
) -> list[tuple[str, nn.Parameter, Tensor, Layout]]:
    """(name, weight, bool mask) of every target with >= 2 dims (1-D targets have no fan-in: skipped), weight
    and mask viewed ``(out, in, *rest)`` through the target's layout (views: writing them writes the weight),
    and that layout."""
    if not isinstance(model, nn.Module):
        raise SparseflowError(f"expected an nn.Module, got {type(model).__name__}")
    if mask is not None and targets is None:
        params = dict(model.named_parameters())
        unknown = [n for n in mask if n not in params]
        if unknown:
            raise MaskError(f"mask names parameters the model does not have: {unknown}")
        chosen = {n: params[n] for n in mask}
        known = parameter_layouts(model)
        layouts = {n: known.get(n, DEFAULT) for n in chosen}
    else:
        chosen = prunable(model, targets)
        layouts = (targets or Targets()).layouts(model)
    out = []
    for name, p in chosen.items():
        if p.dim() < 2:
            continue
        if mask is None:
            m = p.detach() != 0
        elif name not in mask:
            raise MaskError(f"no mask for target {name!r}; the mask covers {list(mask)}")
        else:
            m = mask[name].to(device=p.device).bool()
            if m.shape != p.shape:
                raise MaskError(f"mask for {name!r} has shape {tuple(m.shape)}, the weight {tuple(p.shape)}")
        out.append((name, layouts[name].canonical(p), layouts[name].canonical(m), layouts[name]))
    return out


@torch.no_grad()
def sparse_init_(
    model: nn.Module,
    mask: Mapping[str, Tensor] | None = None,
    *,
    per: str = "unit",
    gain: float = math.sqrt(2),
    generator: torch.Generator | None = None,
    targets: Targets | None = None,
) -> None:
    """Redraw every kept target weight from N(0, gain²/fan_in_eff), in place (see the module docstring).

    ``gain = sqrt(2)`` is He's ReLU gain. Weights outside the mask are set to exactly zero; biases are not
    touched. Draws come from ``generator`` (on its own device, then moved) or PyTorch's global generator.
    """
    _check_per(per)
    for _, p, m, _ in _weights(model, mask, targets):
        std = sparse_std(m, per=per, gain=gain)  # (out,)
        dev = generator.device if generator is not None else p.device
        z = torch.randn(p.shape, generator=generator, device=dev, dtype=torch.float32).to(p.device)
        shape = (-1,) + (1,) * (p.dim() - 1)  # broadcast the per-unit std over (in, *kernel)
        p.copy_((z * std.to(device=p.device, dtype=torch.float32).reshape(shape) * m).to(p.dtype))


def unit_norms(model: nn.Module, *, targets: Targets | None = None) -> dict[str, Tensor]:
    """Squared L2 norm of every output unit of every target weight (>= 2 dims), float64, shape (out,).

    Take them before a mask is applied and pass them to :func:`rescale_` as ``reference``: each unit's kept
    weights are then scaled back to the norm the unit had dense. Costs one vector per layer, not a copy of
    the weights.
    """
    return {name: _sq_norms(p.detach()) for name, p, _, _ in _weights(model, None, targets)}


def _sq_norms(c: Tensor) -> Tensor:
    """Squared L2 norm of every output unit (first axis) of a weight viewed ``(out, in, *rest)``, float64."""
    return c.double().reshape(c.shape[0], -1).square().sum(dim=1)


@torch.no_grad()
def rescale_(
    model: nn.Module,
    mask: Mapping[str, Tensor] | None = None,
    *,
    per: str = "unit",
    reference: Mapping[str, Tensor] | None = None,
    targets: Targets | None = None,
) -> None:
    """Scale the kept target weights so that each unit's signal variance is the dense one's, in place.

    Without ``reference`` (count matching): multiply by sqrt(fan_in / fan_in_eff), so any init scaled by
    c/fan_in (He, Glorot's fan-in part, PyTorch's default) becomes c/fan_in_eff. Exact in expectation when
    the kept positions are chosen independently of the weights' values (random masks, ER/ERK, SET and
    RigL's first mask).

    With ``reference`` (norm matching): the squared norm of every unit before masking, from
    :func:`unit_norms` (or the dense weights themselves, shaped like each target). Unit j is multiplied by
    sqrt(‖w_j‖² / ‖w_j ⊙ m_j‖²), restoring its dense squared norm, which is what sets its pre-activation
    variance (q_j = Σ_i w_ji² q_in for uncorrelated inputs). Use it for masks chosen by the weights' values
    (SNIP, GraSP, SynFlow, magnitude): they keep larger-than-average weights (about 2x the mean square at 90 %
    sparsity), so count matching would overshoot by that factor at every layer and make a deep net diverge.
    ``per="layer"`` uses one factor per layer (the count or the norm summed over its units).

    Uses no randomness. Weights outside the mask are set to zero; biases are not touched; a unit whose kept
    weights are all zero stays zero. Dense layers are left bit for bit.
    """
    _check_per(per)
    for name, p, m, layout in _weights(model, mask, targets):
        if bool(m.all()):
            continue  # dense: leave the weights bit for bit
        kept = p.double() * m
        if reference is None:
            num = torch.full((p.shape[0],), float(p[0].numel()), dtype=torch.float64, device=p.device)
            den = unit_fan_in(m).to(device=p.device, dtype=torch.float64)  # (out,)
        else:
            num = _reference_norms(name, p, layout, reference)
            den = _sq_norms(kept)
        if per == "layer":
            num, den = torch.full_like(num, float(num.sum())), torch.full_like(den, float(den.sum()))
        factor = torch.zeros_like(den)
        live = den > 0
        factor[live] = (num[live] / den[live]).sqrt()
        shape = (-1,) + (1,) * (p.dim() - 1)
        p.copy_((kept * factor.reshape(shape)).to(p.dtype))


def _reference_norms(name: str, p: Tensor, layout: Layout, reference: Mapping[str, Tensor]) -> Tensor:
    """Squared unit norms (out,) of target ``name`` (``p`` viewed through ``layout``) from ``reference``: the
    norms themselves, or the dense weight as the model stores it."""
    if name not in reference:
        raise MaskError(f"no reference norms for target {name!r}; the reference covers {list(reference)} "
                        "(take them with sparseflow.init.unit_norms before masking)")
    r = reference[name].detach().to(device=p.device, dtype=torch.float64)
    if r.shape == (p.shape[0],):
        return r
    if r.dim() >= 2 and layout.canonical_shape(r.shape) == tuple(p.shape):
        return _sq_norms(layout.canonical(r))
    raise MaskError(f"reference for {name!r} has shape {tuple(r.shape)}: expected the squared unit norms "
                    f"({p.shape[0]},) or the weight's own shape")


# --- calibration on data ----------------------------------------------------------------------


@dataclass(frozen=True)
class VarianceRatios:
    """Second moments of every target layer's pre-activations on one batch, in forward-call order.

    Attributes:
        layers: module names of the target layers, in the order the forward pass calls them.
        input_moment: q_0, the mean square of the first layer's input.
        moments: q_l, the mean square of layer l's output (its pre-activation, bias included), averaged
            over examples, units and positions.
    """

    layers: tuple[str, ...]
    input_moment: float
    moments: tuple[float, ...]

    @property
    def ratios(self) -> tuple[float, ...]:
        """q_l / q_{l-1} per layer (q_0 = the input's): the measured χ of each layer; 1 on the critical line."""
        prev = (self.input_moment,) + self.moments[:-1]
        return tuple(q / p if p > 0 else math.inf for q, p in zip(self.moments, prev))


def _layers(model: nn.Module, targets: Targets | None) -> dict[str, tuple[nn.Module, nn.Parameter]]:
    """Module name -> (module, its weight) for every >= 2-dim target weight named ``<module>.weight``."""
    out = {}
    for name, p in prunable(model, targets).items():
        mod_name, _, leaf = name.rpartition(".")
        if leaf == "weight" and p.dim() >= 2:
            out[mod_name] = (model.get_submodule(mod_name), p)
    if not out:
        raise SparseflowError("no Linear/Conv weight among the targets: nothing to calibrate")
    return out


def _measure(model: nn.Module, batch: Tensor, layers: Mapping[str, tuple[nn.Module, nn.Parameter]]) -> VarianceRatios:
    calls: list[tuple[str, float, float]] = []  # (layer, mean square in, mean square out) per call

    def make(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            calls.append((name, float(inputs[0].double().square().mean()), float(output.double().square().mean())))

        return hook

    handles = [mod.register_forward_hook(make(name)) for name, (mod, _) in layers.items()]
    try:
        model(batch)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise SparseflowError(
            f"the model cannot run on the calibration batch of shape {tuple(batch.shape)} ({e}); pass a batch of "
            "inputs shaped like the training data, (N, ...) without labels"
        ) from None
    finally:
        for h in handles:
            h.remove()
    names = [c[0] for c in calls]
    twice = sorted({n for n in names if names.count(n) > 1})
    missing = [n for n in layers if n not in names]
    if twice or missing:
        raise SparseflowError(
            f"calibration needs every target layer called exactly once per forward pass; called more than once: "
            f"{twice}, never called: {missing}; restrict the layers with targets=Targets(...)"
        )
    moments = tuple(c[2] for c in calls)
    if not all(math.isfinite(q) for q in (calls[0][1],) + moments):
        raise SparseflowError("the forward pass on the calibration batch produced NaN or inf")
    return VarianceRatios(tuple(names), calls[0][1], moments)


def _as_batch(model: nn.Module, batch: object) -> Tensor:
    if not isinstance(batch, Tensor):
        raise SparseflowError(
            f"calibration needs a tensor of inputs (N, ...), got {type(batch).__name__}; from an (x, y) pair pass x"
        )
    if batch.numel() == 0:
        raise SparseflowError(f"the calibration batch is empty (shape {tuple(batch.shape)})")
    p = next(model.parameters(), None)
    return batch.to(p.device) if p is not None else batch


@torch.no_grad()
def variance_ratios(model: nn.Module, batch: Tensor, *, targets: Targets | None = None) -> VarianceRatios:
    """Measure each target layer's pre-activation second moment on ``batch`` (eval mode; model unchanged)."""
    layers = _layers(model, targets)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return _measure(model, _as_batch(model, batch), layers)
    finally:
        for m, t in modes.items():
            m.train(t)


def calibrate_(
    model: nn.Module,
    batch: Tensor,
    *,
    target: float | Mapping[str, float] = 1.0,
    tol: float = 0.01,
    max_iter: int = 10,
    targets: Targets | None = None,
) -> None:
    """Scale each target layer's weight so that q_l / q_{l-1} = ``target`` on ``batch`` (χ = 1 by default).

    Layer by layer in forward order (LSUV, Mishkin & Matas 2016, "All you need is a good init", but
    matching the ratio to the previous layer rather than q to 1; the first layer's reference is the
    mean square of its input). A weight scale c multiplies the bias-free part of q by c², so one step is
    exact without bias; with a bias it is repeated up to ``max_iter`` times until |ratio/target - 1| <=
    ``tol`` (a RuntimeWarning names a layer that does not get there). Runs in eval mode (no BatchNorm
    statistics are updated) and restores every module's mode; pruned weights stay zero.

    ``target`` may also map layer (module) names to their own ratio, e.g. the ratios a dense network had,
    ``dict(zip(r.layers, r.ratios))`` of :func:`variance_ratios` taken before masking: the masked network then
    propagates the signal as the dense one did. Layers it does not name keep target 1.
    """
    goals = dict(target) if isinstance(target, Mapping) else {}
    checked = [("target", target)] if not goals else [(f"target[{k!r}]", v) for k, v in goals.items()]
    for what, v in [("tol", tol), *checked]:
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise SparseflowError(f"{what} must be a positive finite number, got {v!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise SparseflowError(f"max_iter must be a positive integer, got {max_iter!r}")
    layers = _layers(model, targets)
    unknown = [k for k in goals if k not in layers]
    if unknown:
        raise SparseflowError(f"target names layers that are not calibrated: {unknown}; the layers are {list(layers)}")
    batch = _as_batch(model, batch)
    modes = {m: m.training for m in model.modules()}
    grad = torch.is_grad_enabled()
    torch.set_grad_enabled(False)  # not a decorator, so that the warning below points at the caller
    model.eval()
    try:
        r = _measure(model, batch, layers)
        for i, name in enumerate(r.layers):
            weight = layers[name][1]
            goal = float(goals.get(name, 1.0)) if goals else float(target)
            for _ in range(max_iter):
                prev = r.input_moment if i == 0 else r.moments[i - 1]
                q = r.moments[i]
                if prev == 0 or q == 0:
                    raise SparseflowError(
                        f"layer {name!r} {'gets' if prev == 0 else 'outputs'} no signal on the calibration "
                        "batch (all zeros), so no scale can fix it; check the mask for cut paths"
                    )
                if abs(q / prev / goal - 1) <= tol:
                    break
                weight.mul_(math.sqrt(goal * prev / q))
                r = _measure(model, batch, layers)
            ratio = r.moments[i] / (r.input_moment if i == 0 else r.moments[i - 1])
            if abs(ratio / goal - 1) > tol:
                warnings.warn(
                    f"calibrate_: layer {name!r} reached ratio {ratio:.4g} after {max_iter} steps, target "
                    f"{goal:g}: its bias alone exceeds the target; zero the biases or raise max_iter",
                    RuntimeWarning,
                    stacklevel=2,
                )
    finally:
        torch.set_grad_enabled(grad)
        for m, t in modes.items():
            m.train(t)


__all__ = [
    "PER",
    "VarianceRatios",
    "calibrate_",
    "rescale_",
    "sparse_init_",
    "sparse_std",
    "unit_fan_in",
    "unit_norms",
    "variance_ratios",
]
