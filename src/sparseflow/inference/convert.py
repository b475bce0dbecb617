"""``convert(model)``: run a sparse model's weight layers on sparse CPU kernels; ``deconvert`` undoes it.

Converted, each where its plan (``sparseflow.inference.plan``: measured, or the cost model) has the sparse
kernel win at some batch size:

* ``nn.Linear`` and Hugging Face's ``Conv1D`` (GPT-2 family; its (in, out) weight is transposed into the CSR)
  become ``SparseLinear``;
* ``nn.Conv1d/2d/3d`` with groups=1 (any padding and padding mode) become ``SparseConv`` (im2col + the product);
* ``nn.MultiheadAttention`` becomes ``SparseMultiheadAttention``: q, k, v and the output projection each run
  sparse or dense by their own plan, and it is called like the original (``nn.TransformerEncoderLayer`` and
  ``DecoderLayer`` included). An ``nn.TransformerEncoder`` holding converted layers stops packing padded
  batches into nested tensors (``use_nested_tensor``), which only its fused fast path reads.

Every other weight layer (LSTM/GRU/RNN, Embedding, grouped and depthwise convolutions, transposed
convolutions, attention with ``add_bias_kv``/``add_zero_attn``, non-fp32 or non-CPU weights, subclasses of
Linear/Conv) stays as it is; ``convert`` warns about the unsupported ones that are sparse (density <= 0.7)
and ``inference_report`` lists every weight layer with its plan or the reason it stayed dense. Attention blocks written with ``nn.Linear``
projections (BERT, ViT, Llama, T5) run sparse through their Linear layers. ``check=batch`` runs the dense
and the converted model on a batch (a tensor, an ``(x, y)`` pair or a dict of Hugging Face inputs) and
raises if their outputs differ. Converted models store as their dense-with-zeros form:
``sf.save(path, deconvert(fast))``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from sparseflow.errors import SparseflowError
from sparseflow.inference.kernels import Backend, available_backend, csr_from_dense
from sparseflow.inference.kernels.attention import SparseMultiheadAttention
from sparseflow.inference.kernels.conv import SparseConv
from sparseflow.inference.kernels.modules import Kernel, SparseLinear
from sparseflow.inference.plan import COST_MODEL_DENSITY, DEFAULT_BATCHES, MEASURE_MAX_DENSITY, Planner
from sparseflow.inference.report import REASON_ATTR, LayerReport, inference_report, is_hf_conv1d, unsupported_reason, \
    weight_density, weight_params
from sparseflow.layouts import call, output_tensor, split_batch

__all__ = ["COST_MODEL_DENSITY", "LayerReport", "convert", "deconvert", "inference_report", "unsupported_reason"]

SPARSE_MODULES = (SparseLinear, SparseConv, SparseMultiheadAttention)
CHECK_TOLERANCE = 1e-4
_NESTED_ATTR = "_sparseflow_use_nested_tensor"  # an encoder's use_nested_tensor before convert


def _sparse_linear(w: torch.Tensor, bias: torch.Tensor | None, planner: Planner,
                   kind: str = "Linear") -> SparseLinear | str:
    """``x @ w.T + bias`` (w [out, in]) as a SparseLinear, or the reason it stays dense (dense wins everywhere)."""
    w = w.detach().contiguous()
    csr = csr_from_dense(w)
    with torch.no_grad():
        plan = planner.plan(csr, w, None if bias is None else bias.detach())
    if all(c.kernel is Kernel.DENSE for c in plan):
        return Planner.dense_reason(plan, csr.nnz / max(1, w.numel()))
    return SparseLinear(csr, bias, plan, w if any(c.kernel is Kernel.DENSE for c in plan) else None, kind)


def _attention(mha: nn.MultiheadAttention, planner: Planner) -> SparseMultiheadAttention | str:
    if mha._qkv_same_embed_dim:
        weights = mha.in_proj_weight.chunk(3)
    else:
        weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    biases = (None,) * 3 if mha.in_proj_bias is None else mha.in_proj_bias.chunk(3)
    projs: list[nn.Module] = []
    for w, b in zip(weights, biases):
        new = _sparse_linear(w, b, planner)
        if isinstance(new, str):  # this chunk stays dense, as an nn.Linear of its own
            new = _dense_linear(w.detach(), None if b is None else b.detach(), reason=new)
        projs.append(new)
    out = _sparse_linear(mha.out_proj.weight, mha.out_proj.bias, planner)
    if isinstance(out, str):
        setattr(mha.out_proj, REASON_ATTR, out)
        out = mha.out_proj
    if not any(isinstance(p, SparseLinear) for p in (*projs, out)):
        return f"dense wins for q, k, v and out_proj (q: {getattr(projs[0], REASON_ATTR)})"
    return SparseMultiheadAttention(mha, *projs, out)


def _dense_linear(w: torch.Tensor, b: torch.Tensor | None, reason: str | None = None) -> nn.Linear:
    with torch.device("meta"):  # no initialisation (and no draw from the global generator): values come next
        lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    lin.weight = nn.Parameter(w.clone())
    if b is not None:
        lin.bias = nn.Parameter(b.clone())
    if reason is not None:
        setattr(lin, REASON_ATTR, reason)
    return lin


def _convert_layer(mod: nn.Module, planner: Planner) -> nn.Module | str:
    """The sparse replacement of a supported weight layer, or the reason it stays dense."""
    if isinstance(mod, nn.MultiheadAttention):
        return _attention(mod, planner)
    if is_hf_conv1d(mod):
        return _sparse_linear(mod.weight.t(), mod.bias, planner, "Conv1D")
    if isinstance(mod, nn.Linear):
        return _sparse_linear(mod.weight, mod.bias, planner)
    lin = _sparse_linear(mod.weight.reshape(mod.weight.shape[0], -1), mod.bias, planner)  # Conv1d/2d/3d
    return lin if isinstance(lin, str) else SparseConv(mod, lin)


def convert(model: nn.Module, *, batch_sizes: Iterable[int] = DEFAULT_BATCHES, backend: Backend | None = None,
            measure: bool = True, repeats: int = 5, check: Any = None) -> nn.Module:
    """A copy of ``model`` (in eval mode) whose supported layers run sparse kernels where they win.

    ``batch_sizes``: the batch sizes (rows: batch x positions for convolutions, batch x tokens for sequences)
    to decide at; ``backend``: ``Backend.TORCH`` forces torch's CSR even when the compiled kernels exist;
    ``check``: a batch to run both models on (raises ``SparseflowError`` if the outputs differ by more than
    ``CHECK_TOLERANCE`` of the dense output's largest magnitude).
    """
    batches = tuple(sorted({int(b) for b in batch_sizes}))
    if not batches or batches[0] < 1:
        raise SparseflowError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    if repeats < 1:
        raise SparseflowError(f"repeats must be >= 1, got {repeats}")
    have = available_backend()
    use = have if backend is None else backend
    if use is Backend.COMPILED and have is not Backend.COMPILED:
        raise SparseflowError("backend=Backend.COMPILED but the compiled kernels are not available here; "
                              "reinstall with a C++ compiler or pass backend=Backend.TORCH")
    planner = Planner(batches, use, measure, repeats)
    out = copy.deepcopy(model).eval()
    skipped, units = [], []
    decided: dict[int, nn.Module | None] = {}  # a module reachable under several names is decided once
    for name, mod in list(out.named_modules(remove_duplicate=False)):
        if any(not u or name.startswith(u + ".") for u in units) or not weight_params(mod):
            continue
        if isinstance(mod, nn.MultiheadAttention):
            units.append(name)  # its out_proj is converted with it, or not at all
        if id(mod) not in decided:
            decided[id(mod)] = _decide(mod, planner, name, skipped)
        if decided[id(mod)] is not None:
            out = _set(out, name, decided[id(mod)])
    out.eval()  # the new modules too (a SparseMultiheadAttention in training mode applies its dropout)
    _nested_tensors_off(out)
    if skipped:
        warnings.warn("left dense although sparse (no sparse kernel): " + "; ".join(skipped), stacklevel=2)
    if check is not None:
        _check(model, out, check)
    return out


def _decide(mod: nn.Module, planner: Planner, name: str, skipped: list[str]) -> nn.Module | None:
    """The sparse module to put in ``mod``'s place, or None (it stays, marked with the reason)."""
    reason = unsupported_reason(mod)
    if reason is not None:
        density = weight_density(mod)
        if density is not None and density <= MEASURE_MAX_DENSITY:  # sparse enough for a kernel to have mattered: say so
            skipped.append(f"{name or type(mod).__name__} ({reason}; density {density:.2f})")
        _mark_dense(mod, reason)
        return None
    new = _convert_layer(mod, planner)
    if isinstance(new, str):
        _mark_dense(mod, new)
        return None
    return new


def _mark_dense(mod: nn.Module, reason: str) -> None:
    setattr(mod, REASON_ATTR, reason)
    if isinstance(mod, nn.MultiheadAttention) and not hasattr(mod.out_proj, REASON_ATTR):
        setattr(mod.out_proj, REASON_ATTR, f"part of an attention left dense: {reason}")


def _nested_tensors_off(model: nn.Module) -> None:
    """Encoders holding converted layers keep padded batches padded (only their fused fast path takes nested ones)."""
    for mod in model.modules():
        if isinstance(mod, nn.TransformerEncoder) and any(isinstance(m, SPARSE_MODULES) for m in mod.modules()):
            setattr(mod, _NESTED_ATTR, mod.use_nested_tensor)
            mod.use_nested_tensor = False


def _check(dense: nn.Module, fast: nn.Module, batch: Any) -> None:
    inputs, _ = split_batch(batch)
    modes = {m: m.training for m in dense.modules()}
    dense.eval()
    try:
        with torch.no_grad():
            want = output_tensor(call(dense, inputs))
            try:
                got = output_tensor(call(fast, inputs))
            except SparseflowError as e:
                raise SparseflowError(f"the converted model failed on the check batch: {e}") from e
    finally:
        for m, mode in modes.items():
            m.training = mode
    scale = float(want.abs().max()) if want.numel() else 0.0
    err = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
    if err > CHECK_TOLERANCE * max(scale, 1e-12):
        raise SparseflowError(f"the converted model's output differs from the dense model's on the check batch: "
                              f"max |diff| {err:.3g} vs output scale {scale:.3g} (tolerance {CHECK_TOLERANCE}); "
                              "please report this model, and keep the dense model meanwhile")


def _set(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in ``root``; returns the new root (``new`` itself when name is "")."""
    if not name:
        return new
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)
    return root


def _weight(proj: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dense weight [out, in], bias) of a SparseLinear or nn.Linear."""
    if isinstance(proj, SparseLinear):
        return proj.csr.to_dense(), proj.bias
    return proj.weight.detach(), None if proj.bias is None else proj.bias.detach()


def _dense_module(mod: nn.Module) -> nn.Module:
    """The torch (or Hugging Face) module a sparse module replaced, with the same weights (zeros included)."""
    with torch.device("meta"):  # no initialisation (and no draw from the global generator): values come next
        if isinstance(mod, SparseMultiheadAttention):
            new = nn.MultiheadAttention(mod.embed_dim, mod.num_heads, mod.dropout, bias=mod.has_bias, kdim=mod.kdim,
                                        vdim=mod.vdim, batch_first=mod.batch_first)
        elif isinstance(mod, SparseConv):
            new = getattr(nn, mod.kind)(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                                        mod.dilation, bias=mod.linear.bias is not None, padding_mode=mod.padding_mode)
        elif mod.kind == "Conv1D":
            from transformers.pytorch_utils import Conv1D
            new = Conv1D(mod.out_features, mod.in_features)
        else:
            new = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
    new = new.to_empty(device="cpu").train(mod.training)
    with torch.no_grad():
        if isinstance(mod, SparseMultiheadAttention):
            (wq, bq), (wk, bk), (wv, bv) = (_weight(p) for p in (mod.q_proj, mod.k_proj, mod.v_proj))
            if new._qkv_same_embed_dim:
                new.in_proj_weight.copy_(torch.cat([wq, wk, wv]))
            else:
                new.q_proj_weight.copy_(wq), new.k_proj_weight.copy_(wk), new.v_proj_weight.copy_(wv)
            if mod.has_bias:
                new.in_proj_bias.copy_(torch.cat([bq, bk, bv]))
            w, b = _weight(mod.out_proj)
            new.out_proj.weight.copy_(w)
            if b is not None:
                new.out_proj.bias.copy_(b)
            return new
        lin = mod.linear if isinstance(mod, SparseConv) else mod
        w = lin.csr.to_dense()
        new.weight.copy_(w.t() if getattr(mod, "kind", "") == "Conv1D" else w.reshape(new.weight.shape))
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return new


def deconvert(model: nn.Module) -> nn.Module:
    """A copy with every converted layer back as the module it replaced (nn.Linear, HF Conv1D, nn.Conv1d/2d/3d,
    nn.MultiheadAttention), zeros included, e.g. to ``sf.save`` it."""
    out = copy.deepcopy(model)
    units, restored = [], {}
    for name, mod in list(out.named_modules(remove_duplicate=False)):
        if any(not u or name.startswith(u + ".") for u in units):
            continue
        if isinstance(mod, SPARSE_MODULES):
            units.append(name)
            if id(mod) not in restored:
                restored[id(mod)] = _dense_module(mod)
            out = _set(out, name, restored[id(mod)])
            continue
        if hasattr(mod, REASON_ATTR):
            delattr(mod, REASON_ATTR)
        if hasattr(mod, _NESTED_ATTR):
            mod.use_nested_tensor = getattr(mod, _NESTED_ATTR)
            delattr(mod, _NESTED_ATTR)
    return out
