"""Signal propagation: the mean-field prediction of each layer's variance gain next to the measured one.

``signal(model, batch)`` runs one forward and one backward pass and reports, per weight (every weight with a
known layout, :mod:`sparseflow.layouts`: Linear, HF Conv1D, convolutions, each q, k, v chunk of
``nn.MultiheadAttention``'s ``in_proj_weight`` and its ``out_proj``, each gate chunk of an LSTM's, GRU's or RNN's
``weight_ih_l{k}`` and ``weight_hh_l{k}``; see :mod:`sparseflow.analysis.signal_probe`), in forward-call order:

- q_l, the measured second moment of the layer's output (its pre-activation, bias included) averaged over
  examples, units and positions; for zero-mean pre-activations this is their variance;
- the measured gain q_l / q_in. Where tracing finds the weight layer whose output this one reads through at
  most one activation, q_in is that layer's q (or the batch's), so the gains of a chain multiply to the
  end-to-end gain; elsewhere (after pooling, a residual add or a normalisation, in attention, in any model
  torch.fx cannot trace, such as Hugging Face models) q_in is the second moment of the layer's own input
  (``reference`` = "own input"), and the gain is what this weight alone does to the signal;
- the mean-field prediction χ_l = R_l · g_φ(q_{l-1}) + σ_b²/q_{l-1} from the actual weights (see
  :mod:`sparseflow.analysis.meanfield`; R_l = s·σ_w² for i.i.d. weights at density s, so ReLU gives
  s·σ_w²/2, Poole et al. 2016, Schoenholz et al. 2017), where tracing finds a known activation;
- ‖∂L/∂W_l‖ over the kept (nonzero) weights.

Batches are what a loader yields (:func:`sparseflow.layouts.split_batch`): a tensor, an ``(x, y)`` pair, or a dict
of model inputs (``input_ids``, ``attention_mask``, ``pixel_values``, ``labels``, ...). Token ids carry no
variance to propagate: for them the input second moment is that of the first weight's input (the embedding
output). Gradients are of the cross-entropy on given targets, of a given loss, of the model's own loss (a
Hugging Face model given ``labels``), else of a probe.

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
from typing import Any

import torch
from torch import Tensor, nn

from sparseflow.analysis.meanfield import INPUT, predictable, trace_inputs
from sparseflow.analysis.signal_probe import (Probe, Site, check_batch, float_input, loss_value, moment, shape_error,
                                              sites)
from sparseflow.errors import SparseflowError
from sparseflow.layouts import call
from sparseflow.methods.sparse_linear import dense_equivalent

LAYER_BAND = (0.8, 1.25)  # per-layer χ counted as critical
GAIN_BAND = (0.1, 10.0)  # end-to-end gain counted as critical
OWN_INPUT = "own input"  # reference of a row whose q_in is the second moment of its own input


@dataclass(frozen=True)
class LayerSignal:
    """One weight layer (or chunk). ``measured`` is q / q_in with q_in the second moment of ``reference``'s output
    (:data:`INPUT` = the batch, :data:`OWN_INPUT` = this layer's own input); ``predicted`` is the mean-field χ
    (None when unavailable, see ``note``)."""

    name: str
    kind: str
    reference: str
    activation: str | None
    density: float
    weight_sq: float  # R: mean over output units of the sum of squared weights (= s·σ_w² for i.i.d. weights)
    bias_sq: float  # σ_b²: mean squared bias, 0 without bias
    q_in: float | None
    q: float | None
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


def signal(
    model: nn.Module,
    batch: Any,
    targets: Tensor | None = None,
    *,
    loss: Callable[[Tensor], Tensor] | None = None,
) -> SignalReport:
    """Measured and mean-field-predicted per-layer variance gain and gradient norm on ``batch``.

    ``batch`` is what a loader yields: the inputs (N, ...) (features or token ids), an (inputs, targets) pair,
    or a dict of model inputs. Gradients are of the cross-entropy when ``targets`` are given (or the pair's),
    of ``loss(output)`` when a loss is given, of the model's own loss when it returns one (a Hugging Face model
    given ``labels``), else of the probe 0.5·mean_n Σ_k out_nk². The model is not changed (module docstring).
    """
    if not isinstance(model, nn.Module):
        raise SparseflowError(f"signal() needs an nn.Module, got {type(model).__name__}")
    if loss is not None and targets is not None:
        raise SparseflowError("pass either targets (cross-entropy) or loss, not both")
    model = dense_equivalent(model)  # layers in sparse execution are measured as the nn.Linear they stand for
    inputs, targets = check_batch(model, batch, targets)
    rows = sites(model)
    if not rows:
        raise SparseflowError(f"{type(model).__name__} has no weight with a known layout (Linear, Conv, HF Conv1D, "
                              "attention): nothing to measure")
    routes, trace_note = trace_inputs(model)
    notes = [trace_note] if trace_note else []

    modes = {m: m.training for m in model.modules()}
    probe = Probe(model, rows)
    model.eval()  # BatchNorm must not update its running statistics
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernels skip the calls the hooks read
    try:
        # cuDNN's recurrent kernels have no backward in eval mode; the native ones compute the same
        with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            try:
                out = call(model, inputs)
            except RuntimeError as e:
                raise shape_error(model, inputs, e) from None
            value, loss_name = loss_value(out, targets, loss)
            params = list({id(s.param): s.param for s in rows if s.param.requires_grad}.values())
            grads: dict[int, Tensor | None] = {}
            if params and value.requires_grad:
                got = torch.autograd.grad(value, params, allow_unused=True)
                grads = {id(p): g for p, g in zip(params, got)}
            else:
                notes.append("no weight requires a gradient: gradient norms unavailable")
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        probe.remove()
        for m, training in modes.items():
            m.train(training)
    shared = [n for n, c in probe.calls.items() if c > 1]
    if shared:
        notes.append(f"{', '.join(shared)} ran more than once per forward pass: rows show the first call")
    x = float_input(inputs)
    called = [s for s in rows if probe.measured(s)]
    order = {name: i for i, name in enumerate(probe.moments)}  # first-call order
    called.sort(key=lambda s: order[s.name])
    if x is not None:
        input_q = moment(x)
    else:
        input_q = probe.moments[called[0].name][0] if called else math.nan
        notes.append("the inputs are token ids (no variance to propagate): the input q is the second moment of the "
                     f"first weight's input ({called[0].name if called else 'none ran'}), the embedding output")
    return _report(called + [s for s in rows if not probe.measured(s)], routes, probe, grads, input_q,
                   x is not None, loss_name, notes)


def _report(rows: list[Site], routes: dict, probe: Probe, grads: dict[int, Tensor | None], input_q: float,
            float_inputs: bool, loss_name: str, notes: list[str]) -> SignalReport:
    out: list[LayerSignal] = []
    q_of = {name: q for name, (_, q) in probe.moments.items()}
    for site in rows:
        w = site.view(site.param.detach())
        kept = w != 0
        weight_sq = site.weight_sq()
        bias_sq = float(site.bias.double().pow(2).mean()) if site.bias is not None else 0.0
        g = grads.get(id(site.param))
        grad_norm = float((site.view(g).double() * kept).norm()) if g is not None else None
        density = float(kept.double().mean())
        if not probe.measured(site):
            why = probe.reasons.get(site.name, "not called by the forward pass")
            out.append(LayerSignal(site.name, site.kind, OWN_INPUT, None, density, weight_sq, bias_sq, None, None,
                                   None, None, grad_norm, "unknown", f"{why}: not measured"))
            continue
        own_q_in, q = probe.moments[site.name]
        route = routes.get(site.name) if site.leaf == "weight" else None
        ref = route.source if route is not None and route.source is not None else OWN_INPUT
        if ref == INPUT and not float_inputs or ref not in (INPUT, OWN_INPUT) and ref not in q_of:
            ref = OWN_INPUT
        q_in = input_q if ref == INPUT else own_q_in if ref == OWN_INPUT else q_of[ref]
        measured = q / q_in if q_in > 0 and math.isfinite(q_in) else None
        predicted, note = None, ""
        if site.inside:
            note = f"applied inside {site.inside}: no mean-field map, measured values only"
        elif route is None:
            note = notes[0] if notes and "torch.fx" in notes[0] else "not reached by tracing: measured values only"
        elif route.activation is None:
            note = route.note
        elif not predictable(site.module):
            note = f"no mean-field map for {site.kind} (stride-dependent fan-in): measured values only"
        elif q_in > 0 and math.isfinite(q_in):
            predicted = weight_sq * route.activation.gain(q_in) + bias_sq / q_in
        else:
            note = f"input second moment is {q_in:.3g}: no prediction"
        chi = predicted if predicted is not None else measured
        out.append(LayerSignal(
            site.name, site.kind, ref, route.activation.name if route and route.activation else None,
            density, weight_sq, bias_sq, q_in, q, measured, predicted, grad_norm, flag(chi), note,
        ))
    return _summarise(out, input_q, loss_name, notes)


def _summarise(rows: list[LayerSignal], input_q: float, loss_name: str, notes: list[str]) -> SignalReport:
    chis = [r.predicted if r.predicted is not None else r.measured for r in rows]
    gain = math.prod(c for c in chis if c is not None) if any(c is not None for c in chis) else math.nan
    dead = next((r.name for r in rows if r.q == 0), None)
    blown = next((r.name for r in rows if r.q is not None and not math.isfinite(r.q)), None)
    if dead is not None:  # no ratio is defined past an exactly zero signal, but the verdict is clear
        gain = 0.0
        notes.append(f"the signal is exactly zero at the output of {dead}")
    elif blown is not None:
        gain = math.inf
        notes.append(f"the signal overflows (inf or nan) at the output of {blown}")
    if any(r.reference == OWN_INPUT and r.measured is not None for r in rows):
        notes.append("rows with reference 'own input' give the gain of the weight alone (its output over its own "
                     "input); where residual connections or normalisations carry the signal, the product of the "
                     "gains is not the end-to-end gain")
    measured_gain = math.prod(r.measured for r in rows if r.measured is not None)
    n_pred = sum(r.predicted is not None for r in rows)
    basis = ("predicted" if n_pred == len(rows) else "measured" if n_pred == 0
             else f"predicted for {n_pred} of {len(rows)} layers, measured for the rest")
    unpredicted = [r.name for r in rows if r.predicted is None]
    if unpredicted and n_pred:
        notes.append(f"no mean-field prediction for {', '.join(unpredicted)}: measured gains used there")
    return SignalReport(tuple(rows), input_q, gain, measured_gain, verdict(gain), basis, loss_name, tuple(notes))
