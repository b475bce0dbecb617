"""What :func:`sparseflow.signal` measures, and where: the weights of a model as rows, the hooks that read
the second moment of each row's input and output during one forward pass, and the batch and loss it runs.

Rows (:class:`Site`) come from the layout registry (:func:`sparseflow.analysis.units.weight_params`): every
weight with a known layout except embedding tables, in module order. A module's ``weight`` is one row named by
the module (``"h.0.mlp.c_fc"``); ``nn.MultiheadAttention`` gives one row per q, k, v chunk of
``in_proj_weight`` (``"attn.in_proj_weight[q]"``) and its ``out_proj``; a recurrent module's ``weight_ih_l{k}``
and ``weight_hh_l{k}`` (``_reverse``) give one row per gate chunk of their layout (``"lstm.weight_hh_l0[f]"``; an
``nn.RNN``, without gates, one row); other weights are rows named by the parameter.

Hooks. A weight module (Linear, HF Conv1D, convolutions) is read by a forward hook: the second moment of its
input and of its output, at its first call. ``nn.MultiheadAttention`` applies ``in_proj_weight`` and
``out_proj`` inside one functional call, so its hook recomputes them from the call's own arguments: chunk c's
output is ``F.linear(input_c, W_c, b_c)`` (query, key, value), and ``out_proj``'s input is the module rerun
with ``out_proj`` replaced by the identity (``torch.func.functional_call``: the module is not modified).
Recurrent weights act inside one ATen/cuDNN kernel, so the hook of an ``nn.LSTM``/``GRU``/``RNN`` recomputes what
each of them multiplies (:mod:`sparseflow.analysis.signal_rnn`): a row's input is layer k's input sequence x_t
(``weight_ih``) or its previous hidden states h_{t-1}, h0 first (``weight_hh``), and its output the gate chunk's
pre-activation ``F.linear(input, W_c, b_c)``, bias included, over all steps. A row that cannot be measured (a
PackedSequence input) keeps its reason in :attr:`Probe.reasons`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseflow.analysis.meanfield import is_weight_module
from sparseflow.analysis.signal_rnn import weight_inputs
from sparseflow.analysis.units import weight_params
from sparseflow.errors import SparseflowError, first_line
from sparseflow.layouts import (LABEL_KEYS, Layout, attention_before_out_proj, batch_size, output_loss, output_tensor,
                                split_batch)

PROBE = "0.5 * mean over examples of the sum of squared outputs (no targets given)"


def moment(t: Tensor) -> float:
    """Second moment in float64 (q of a vanishing signal underflows float32)."""
    return float(t.detach().double().pow(2).mean())


@dataclass(frozen=True, eq=False)
class Site:
    """One row: ``module``'s parameter ``leaf`` (output rows ``chunk`` of ``n_chunks`` along the layout's output
    axis) and its bias (None without one); ``inside`` names the module type that applies it in a functional call
    (``MultiheadAttention`` for its chunks and its ``out_proj``), '' when the module is called itself."""

    name: str
    kind: str
    module: nn.Module
    leaf: str
    layout: Layout
    chunk: int = 0
    n_chunks: int = 1
    bias: Tensor | None = None
    inside: str = ""

    @property
    def param(self) -> Tensor:
        return getattr(self.module, self.leaf)

    def view(self, t: Tensor) -> Tensor:
        """``t`` (weight-shaped) as this row's ``(out, in, *k)`` block."""
        c = self.layout.canonical(t)
        return c.chunk(self.n_chunks, 0)[self.chunk] if self.n_chunks > 1 else c


    def weight_sq(self) -> float:
        """R: mean over output units of the sum of their squared incoming weights."""
        w = self.view(self.param.detach()).double()
        if self.layout.groups > 1 and self.layout.out_axis != 0:  # grouped transposed: a row holds every group's
            return float(w.pow(2).sum()) / (w.shape[0] * self.layout.groups)  # local output j: one unit per group
        return float(w.pow(2).reshape(w.shape[0], -1).sum(1).mean())


def sites(model: nn.Module) -> list[Site]:
    """The rows of ``model`` in module order (see the module docstring)."""
    out: list[Site] = []
    out_projs = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    for w in weight_params(model):
        m, owner = w.module, w.use.rsplit(".", 1)[0] if "." in w.use else ""
        if isinstance(m, nn.MultiheadAttention):
            bias = m.in_proj_bias.detach().chunk(3) if m.in_proj_bias is not None else (None,) * 3
            if w.leaf == "in_proj_weight":
                out += [Site(f"{w.use}[{c}]", "MultiheadAttention", m, w.leaf, w.layout, i, 3, bias[i], "MultiheadAttention")
                        for i, c in enumerate(w.layout.chunks or ("q", "k", "v"))]
            else:  # q_proj_weight, k_proj_weight, v_proj_weight: separate tensors when kdim/vdim != embed_dim
                i = "qkv".index(w.leaf[0])
                out.append(Site(w.use, "MultiheadAttention", m, w.leaf, w.layout, bias=bias[i], inside="MultiheadAttention"))
            continue
        leaf_bias = getattr(m, "bias" if w.leaf == "weight" else w.leaf.replace("weight", "bias", 1), None)
        bias = leaf_bias.detach() if isinstance(leaf_bias, Tensor) else None
        if isinstance(m, nn.RNNBase) and w.layout.chunks:  # one row per gate, as for in_proj_weight's q, k, v
            n, kind = len(w.layout.chunks), type(m).__name__
            biases = bias.chunk(n) if bias is not None else (None,) * n
            out += [Site(f"{w.use}[{c}]", kind, m, w.leaf, w.layout, i, n, biases[i], kind)
                    for i, c in enumerate(w.layout.chunks)]
            continue
        inside = "MultiheadAttention" if id(m) in out_projs else type(m).__name__ if w.leaf != "weight" else ""
        out.append(Site(owner if w.leaf == "weight" else w.use, type(m).__name__, m, w.leaf, w.layout, bias=bias,
                        inside=inside))
    return out


class Probe:
    """Forward hooks recording, per row, (q of its input, q of its output) at its first call, in call order."""

    def __init__(self, model: nn.Module, rows: list[Site]) -> None:
        self.moments: dict[str, tuple[float, float]] = {}
        self.reasons: dict[str, str] = {}  # why a row that a hook saw was not measured
        self.calls: dict[str, int] = {}
        self._inside = False  # while the MHA hook reruns its module
        self.handles: list[Any] = []
        mhas = {m: [s for s in rows if s.module is m] for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
        out_projs = {id(m.out_proj): m for m in mhas}
        by_module: dict[nn.Module, Site] = {}
        for s in rows:
            if s.leaf == "weight" and is_weight_module(s.module) and id(s.module) not in out_projs:
                by_module.setdefault(s.module, s)
        for m, s in by_module.items():
            self.handles.append(m.register_forward_hook(self._module_hook(s.name)))
        names = {id(s.module): s.name for s in rows}
        for m, chunks in mhas.items():
            self.handles.append(m.register_forward_hook(self._mha_hook(chunks, names.get(id(m.out_proj))),
                                                        with_kwargs=True))
        recurrent: dict[nn.Module, list[Site]] = {}
        for s in rows:
            if isinstance(s.module, nn.RNNBase) and s.leaf.startswith(("weight_ih_l", "weight_hh_l")):
                recurrent.setdefault(s.module, []).append(s)
        for m, rnn_rows in recurrent.items():
            self.handles.append(m.register_forward_hook(self._rnn_hook(rnn_rows), with_kwargs=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def measured(self, s: Site) -> bool:
        return s.name in self.moments

    def _record(self, name: str, q_in: float, q: float) -> None:
        self.moments.setdefault(name, (q_in, q))
        self.calls[name] = self.calls.get(name, 0) + 1

    def _module_hook(self, name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, inp: tuple, out: Any) -> None:
            if isinstance(out, Tensor) and inp and isinstance(inp[0], Tensor):
                self._record(name, moment(inp[0]), moment(out))
        return hook

    def _mha_hook(self, chunks: list[Site], out_proj: str | None) -> Callable[..., None]:
        def hook(m: nn.MultiheadAttention, args: tuple, kwargs: dict, out: Any) -> None:
            if self._inside:
                return
            qkv = [args[i] if i < len(args) else kwargs.get(k) for i, k in enumerate(("query", "key", "value"))]
            with torch.no_grad():
                for s in chunks:
                    x = qkv[s.chunk if s.n_chunks == 3 else "qkv".index(s.leaf[0])]
                    w = s.view(s.param)
                    b = None if s.bias is None else s.bias.to(w.dtype)
                    self._record(s.name, moment(x), moment(F.linear(x, w, b)))
                if out_proj is not None:
                    self._inside = True
                    try:
                        pre = attention_before_out_proj(m, args, kwargs)
                    finally:
                        self._inside = False
                    self._record(out_proj, moment(pre), moment(out[0]))
        return hook

    def _rnn_hook(self, rows: list[Site]) -> Callable[..., None]:
        def hook(m: nn.RNNBase, args: tuple, kwargs: dict, out: Any) -> None:
            with torch.no_grad():
                inputs = weight_inputs(m, args, kwargs, out)
                for s in rows:
                    if isinstance(inputs, str):
                        self.reasons.setdefault(s.name, inputs)
                        continue
                    x, w = inputs[s.leaf], s.view(s.param)
                    b = None if s.bias is None else s.bias.to(w.dtype)
                    self._record(s.name, moment(x), moment(F.linear(x, w, b)))
        return hook


def float_input(inputs: Any) -> Tensor | None:
    """The floating-point tensor among a batch's inputs (the features), or None for token ids."""
    if isinstance(inputs, Tensor):
        return inputs if inputs.is_floating_point() else None
    if isinstance(inputs, Mapping):
        values = [v for k, v in inputs.items() if k not in LABEL_KEYS]
    else:
        values = list(inputs) if isinstance(inputs, (tuple, list)) else []
    return next((v for v in values if isinstance(v, Tensor) and v.is_floating_point()), None)


def cast(inputs: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Inputs on ``device``, floating-point tensors in ``dtype`` (token ids and masks keep theirs)."""
    if isinstance(inputs, Tensor):
        return inputs.to(device=device, dtype=dtype) if inputs.is_floating_point() else inputs.to(device)
    if isinstance(inputs, Mapping):
        return {k: cast(v, device, dtype) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(cast(v, device, dtype) for v in inputs)
    return inputs


def check_batch(model: nn.Module, batch: object, targets: object) -> tuple[Any, Tensor | None]:
    """(inputs, targets) of a batch, validated, on the model's device, features in its dtype."""
    if isinstance(batch, Mapping) or isinstance(batch, Tensor):
        inputs = split_batch(batch)[0]
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        if targets is not None:
            raise SparseflowError("the batch is an (inputs, targets) pair and targets= is given too: pass one")
        inputs, targets = batch
    else:
        inputs = split_batch(batch)[0]  # raises, naming what a batch may be
    if isinstance(inputs, Tensor) and (inputs.dim() < (2 if inputs.is_floating_point() else 1)
                                       or inputs.shape[0] < 2):
        raise SparseflowError(
            f"batch must be a tensor shaped (N, ...) with N >= 2 examples (floating-point features, or integer "
            f"token ids), got shape {tuple(inputs.shape)} and dtype {inputs.dtype}; add a batch axis or pass "
            "more examples")
    n = batch_size(inputs)
    if n < 2:
        raise SparseflowError(f"the batch has {n} example; signal statistics need N >= 2 examples")
    if targets is not None and (not isinstance(targets, Tensor) or targets.shape != (n,)
                                or targets.is_floating_point()):
        raise SparseflowError(
            f"targets must be integer class labels shaped ({n},) to match the batch, got "
            f"{type(targets).__name__} {tuple(getattr(targets, 'shape', ()))}"
        )
    p = next(model.parameters(), None)
    if p is not None:
        inputs = cast(inputs, p.device, p.dtype)
        targets = None if targets is None else targets.to(p.device)
    return inputs, targets


def shape_error(model: nn.Module, inputs: Any, err: RuntimeError) -> SparseflowError:
    msg = first_line(err)
    if not isinstance(inputs, Tensor):
        what = f"keys {sorted(inputs)}" if isinstance(inputs, Mapping) else type(inputs).__name__
        return SparseflowError(f"{type(model).__name__} could not run on the batch ({what}): torch: {msg}")
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d,
                                                                             nn.Conv3d))), None)
    if first is None:
        want = "inputs it accepts"
    elif isinstance(first[1], nn.Linear):
        want = f"{first[1].in_features} input features (after flattening) at its first layer {first[0]!r}"
    else:
        c = first[1].in_channels
        want = f"{c} input channels, i.e. batches shaped (N, {c}, ...), at its first layer {first[0]!r}"
    return SparseflowError(
        f"{type(model).__name__} could not run on a batch of shape {tuple(inputs.shape)}: it expects {want} "
        f"(torch: {msg}); reshape the batch to the model's input shape"
    )


def loss_value(output: Any, targets: Tensor | None, loss: Callable[[Tensor], Tensor] | None) -> tuple[Tensor, str]:
    """The scalar to differentiate and its description (see :func:`sparseflow.signal`)."""
    if loss is not None:
        return loss(output_tensor(output)), "the given loss"
    own = output_loss(output)
    if targets is None and own is not None:
        return own, "the model's own loss (on the batch's labels)"
    out = output_tensor(output)
    if targets is None:
        return 0.5 * out.flatten(1).pow(2).sum(1).mean(), PROBE
    if out.dim() != 2 or int(targets.min()) < 0 or int(targets.max()) >= out.shape[1]:
        raise SparseflowError(
            f"targets must be class indices in [0, {out.shape[1] if out.dim() == 2 else '?'}) for outputs of "
            f"shape {tuple(out.shape)}, got values {int(targets.min())}..{int(targets.max())}"
        )
    return F.cross_entropy(out, targets), "the cross-entropy on the given targets"
