"""Signal propagation: the mean-field prediction of each layer's variance gain next to the measured one.

``signal(model, batch)`` runs one forward and one backward pass and reports, per weight layer (Linear /
Conv, in forward-call order):

- q_l, the measured second moment of the layer's output (its pre-activation, bias included) averaged over
  examples, units and positions; for zero-mean pre-activations this is their variance;
- the measured gain q_l / q_{l-1} (q_{l-1}: the output of the weight layer it reads, or the batch);
- the mean-field prediction χ_l = R_l · g_φ(q_{l-1}) + σ_b²/q_{l-1} from the actual weights (see
  :mod:`sparseflow.analysis.meanfield`; R_l = s·σ_w² for i.i.d. weights at density s, so ReLU gives
  s·σ_w²/2, Poole et al. 2016, Schoenholz et al. 2017), where tracing finds a known activation;
- ‖∂L/∂W_l‖ over the kept (nonzero) weights.

Verdict. Per layer, χ (predicted, else measured) below 0.8 is "vanishing", above 1.25 "exploding", else
"critical": at these bounds ten layers change the signal tenfold. For the network, the product G of the
per-layer χ decides: G < 1/10 "vanishing", G > 10 "exploding", else "critical" (within one order of
magnitude end to end, which scaled inputs and a learning rate absorb). For branching networks (ResNets) G
is the product along the call order, a rough summary only.

Purity: the model runs in eval mode (BatchNorm uses its running statistics and updates nothing, Dropout is
off), every module's train/eval flag is restored, gradients come from ``torch.autograd.grad`` so no
``.grad`` is touched, and the weights are never written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseflow.analysis.meanfield import INPUT, WEIGHT_MODULES, trace_inputs
from sparseflow.errors import SparseflowError

LAYER_BAND = (0.8, 1.25)  # per-layer χ counted as critical
GAIN_BAND = (0.1, 10.0)  # end-to-end gain counted as critical
PROBE = "0.5 * mean over examples of the sum of squared outputs (no targets given)"


@dataclass(frozen=True)
class LayerSignal:
    """One weight layer. ``measured`` is q / q_in with q_in the second moment of ``reference``'s output
    (:data:`INPUT` = the batch); ``predicted`` is the mean-field χ (None when unavailable, see ``note``)."""

    name: str
    kind: str
    reference: str
    activation: str | None
    density: float
    weight_sq: float  # R: mean over output units of the sum of squared weights (= s·σ_w² for i.i.d. weights)
    bias_sq: float  # σ_b²: mean squared bias, 0 without bias
    q_in: float
    q: float
    measured: float | None
    predicted: float | None
    grad_norm: float | None
    flag: str
    note: str = ""


@dataclass(frozen=True)
class SignalReport:
    """Per-layer rows, the end-to-end gain ``gain`` (product of predicted χ, measured where no prediction),
    the product of the measured gains, the verdict and notes on what could not be predicted."""

    layers: tuple[LayerSignal, ...]
    input_q: float
    gain: float
    measured_gain: float
    verdict: str
    basis: str
    loss: str
    notes: tuple[str, ...]

    @property
    def per_layer(self) -> float:
        """Geometric mean of the per-layer χ behind ``gain``."""
        return self.gain ** (1 / len(self.layers)) if self.gain > 0 else 0.0

    def markdown(self) -> str:
        from sparseflow.training.report import md_table

        def f(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4g}"

        rows = [[r.name, r.kind, f"{r.density:.3f}", r.activation or "unknown", f(r.weight_sq), f(r.q),
                 f(r.measured), f(r.predicted), f(r.grad_norm), r.flag] for r in self.layers]
        header = ["layer", "kind", "density", "activation before", "R = mean Σw²", "q (measured)",
                  "q/q_in measured", "χ predicted", "‖∂L/∂W‖", "flag"]
        text = md_table(header, rows)
        text += (f"\n\nEnd-to-end gain {self.gain:.4g} ({self.basis}; measured {self.measured_gain:.4g}), "
                 f"per layer {self.per_layer:.4g}: **{self.verdict}**. Input q = {self.input_q:.4g}. "
                 f"Gradients of {self.loss}.\n")
        text += "".join(f"\n- {n}" for n in self.notes)
        return text + "".join(f"\n- {r.name}: {r.note}" for r in self.layers if r.note and r.note not in self.notes)

    def to_json(self) -> dict:
        d = asdict(self)
        d["per_layer"] = self.per_layer
        return d


def flag(chi: float | None) -> str:
    """Per-layer verdict of a gain χ (see the module docstring); "unknown" without one."""
    if chi is None or math.isnan(chi):
        return "unknown"
    return "vanishing" if chi < LAYER_BAND[0] else "exploding" if chi > LAYER_BAND[1] else "critical"


def verdict(gain: float) -> str:
    """Network verdict of an end-to-end gain G: vanishing below 1/10, exploding above 10, else critical."""
    if math.isnan(gain):
        return "unknown"
    return "vanishing" if gain < GAIN_BAND[0] else "exploding" if gain > GAIN_BAND[1] else "critical"


def _moment(t: Tensor) -> float:
    return float(t.detach().double().pow(2).mean())  # float64: q of a vanishing signal underflows float32


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, WEIGHT_MODULES)}


def _check_batch(model: nn.Module, batch: object, targets: object) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and targets is None:
        batch, targets = batch
    if not isinstance(batch, Tensor):
        raise SparseflowError(f"batch must be a tensor (or an (inputs, targets) pair), got {type(batch).__name__}")
    if batch.dim() < 2 or batch.shape[0] < 2 or not batch.is_floating_point():
        raise SparseflowError(
            f"batch must be a floating-point tensor shaped (N, ...) with N >= 2 examples, got shape "
            f"{tuple(batch.shape)} and dtype {batch.dtype}; add a batch axis or pass more examples"
        )
    if targets is not None and (not isinstance(targets, Tensor) or targets.shape != batch.shape[:1]
                                or targets.is_floating_point()):
        raise SparseflowError(
            f"targets must be integer class labels shaped ({batch.shape[0]},) to match the batch, got "
            f"{type(targets).__name__} {tuple(getattr(targets, 'shape', ()))}"
        )
    p = next(model.parameters(), None)
    if p is not None:
        batch = batch.to(device=p.device, dtype=p.dtype)
        targets = None if targets is None else targets.to(p.device)
    return batch, targets


def _shape_error(model: nn.Module, x: Tensor, err: RuntimeError) -> SparseflowError:
    first = next(iter(_weight_layers(model).items()), None)
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if first is None:
        want = "inputs it accepts"
    elif isinstance(first[1], nn.Linear):
        want = f"{first[1].in_features} input features (after flattening) at its first layer {first[0]!r}"
    else:
        c = first[1].in_channels
        want = f"{c} input channels, i.e. batches shaped (N, {c}, ...), at its first layer {first[0]!r}"
    return SparseflowError(
        f"{type(model).__name__} could not run on a batch of shape {tuple(x.shape)}: it expects {want} "
        f"(torch: {msg}); reshape the batch to the model's input shape"
    )


def _loss(out: Tensor, targets: Tensor | None, loss: Callable[[Tensor], Tensor] | None) -> tuple[Tensor, str]:
    if loss is not None:
        return loss(out), "the given loss"
    if targets is None:
        return 0.5 * out.flatten(1).pow(2).sum(1).mean(), PROBE
    if out.dim() != 2 or int(targets.min()) < 0 or int(targets.max()) >= out.shape[1]:
        raise SparseflowError(
            f"targets must be class indices in [0, {out.shape[1] if out.dim() == 2 else '?'}) for outputs of "
            f"shape {tuple(out.shape)}, got values {int(targets.min())}..{int(targets.max())}"
        )
    return F.cross_entropy(out, targets), "the cross-entropy on the given targets"


def signal(
    model: nn.Module,
    batch: Tensor | tuple[Tensor, Tensor],
    targets: Tensor | None = None,
    *,
    loss: Callable[[Tensor], Tensor] | None = None,
) -> SignalReport:
    """Measured and mean-field-predicted per-layer variance gain and gradient norm on ``batch``.

    ``batch`` is the inputs (N, ...) or an (inputs, targets) pair. Gradients are of the cross-entropy when
    ``targets`` are given, of ``loss(output)`` when a loss is given, else of the probe
    0.5·mean_n Σ_k out_nk². The model is not changed (see the module docstring).
    """
    if not isinstance(model, nn.Module):
        raise SparseflowError(f"signal() needs an nn.Module, got {type(model).__name__}")
    if loss is not None and targets is not None:
        raise SparseflowError("pass either targets (cross-entropy) or loss, not both")
    x, targets = _check_batch(model, batch, targets)
    layers = _weight_layers(model)
    if not layers:
        raise SparseflowError(f"{type(model).__name__} has no Linear/Conv layer: nothing to measure")
    routes, trace_note = trace_inputs(model)
    notes = [trace_note] if trace_note else []

    moments: dict[str, float] = {}  # module name -> q of its first call, in call order
    calls: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, _inp: tuple, out: Tensor) -> None:
            moments.setdefault(name, _moment(out))
            calls[name] = calls.get(name, 0) + 1
        return record

    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    model.eval()  # BatchNorm must not update its running statistics
    try:
        with torch.enable_grad():
            try:
                out = model(x)
            except RuntimeError as e:
                raise _shape_error(model, x, e) from None
            value, loss_name = _loss(out, targets, loss)
            weights = {n: m.weight for n, m in layers.items() if m.weight.requires_grad}
            grads: dict[str, Tensor | None] = {}
            if weights and value.requires_grad:
                got = torch.autograd.grad(value, list(weights.values()), allow_unused=True)
                grads = dict(zip(weights, got))
            else:
                notes.append("no weight requires a gradient: gradient norms unavailable")
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    shared = [n for n, c in calls.items() if c > 1]
    if shared:
        notes.append(f"{', '.join(shared)} ran more than once per forward pass: rows show the first call")
    return _report(layers, routes, moments, grads, _moment(x), loss_name, notes)


def _report(layers: dict[str, nn.Module], routes: dict, moments: dict[str, float], grads: dict[str, Tensor | None],
            input_q: float, loss_name: str, notes: list[str]) -> SignalReport:
    rows: list[LayerSignal] = []
    prev = INPUT
    for name in moments:  # call order
        module = layers[name]
        w = module.weight.detach()
        kept = w != 0
        weight_sq = float(w.double().pow(2).reshape(w.shape[0], -1).sum(1).mean())
        b = getattr(module, "bias", None)
        bias_sq = float(b.detach().double().pow(2).mean()) if b is not None else 0.0
        route = routes.get(name)
        ref = route.source if route is not None and route.source is not None else prev
        q_in = input_q if ref == INPUT else moments.get(ref, math.nan)
        q = moments[name]
        measured = q / q_in if q_in > 0 and math.isfinite(q_in) else None
        predicted, note = None, ""
        if route is None:
            note = notes[0] if notes else "not reached by tracing: measured values only"
        elif route.activation is None:
            note = route.note
        elif q_in > 0 and math.isfinite(q_in):
            predicted = weight_sq * route.activation.gain(q_in) + bias_sq / q_in
        else:
            note = f"input second moment is {q_in:.3g}: no prediction"
        g = grads.get(name)
        grad_norm = float((g.double() * kept).norm()) if g is not None else None
        chi = predicted if predicted is not None else measured
        rows.append(LayerSignal(
            name, type(module).__name__, ref, route.activation.name if route and route.activation else None,
            float(kept.double().mean()), weight_sq, bias_sq, q_in, q, measured, predicted, grad_norm, flag(chi), note,
        ))
        prev = name
    chis = [r.predicted if r.predicted is not None else r.measured for r in rows]
    gain = math.prod(c for c in chis if c is not None) if any(c is not None for c in chis) else math.nan
    dead = next((r.name for r in rows if r.q == 0), None)
    blown = next((r.name for r in rows if not math.isfinite(r.q)), None)
    if dead is not None:  # no ratio is defined past an exactly zero signal, but the verdict is clear
        gain = 0.0
        notes.append(f"the signal is exactly zero at the output of {dead}")
    elif blown is not None:
        gain = math.inf
        notes.append(f"the signal overflows (inf or nan) at the output of {blown}")
    measured_gain = math.prod(r.measured for r in rows if r.measured is not None)
    n_pred = sum(r.predicted is not None for r in rows)
    basis = ("predicted" if n_pred == len(rows) else "measured" if n_pred == 0
             else f"predicted for {n_pred} of {len(rows)} layers, measured for the rest")
    unpredicted = [r.name for r in rows if r.predicted is None]
    if unpredicted and n_pred:
        notes.append(f"no mean-field prediction for {', '.join(unpredicted)}: measured gains used there")
    return SignalReport(tuple(rows), input_q, gain, measured_gain, verdict(gain), basis, loss_name, tuple(notes))
