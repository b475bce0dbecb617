"""What ``convert`` did to each weight layer: :func:`inference_report` and the reasons a layer stays dense.

A weight layer is a module with a parameter of >= 2 dims that has a weight layout (``sparseflow.layouts``:
Linear, Conv1d/2d/3d and their transposes, Hugging Face ``Conv1D``, ``nn.MultiheadAttention``, LSTM/GRU/RNN,
Embedding, and any registered type) -- every layer a pruning method can target. Each gets one row: the
kernel plan where it runs sparse, or why it stays dense. A converted ``nn.MultiheadAttention`` is reported
as its four projections (``<name>.q_proj``, ``k_proj``, ``v_proj``, ``out_proj``: the chunks of
``in_proj_weight`` and the output projection), each sparse or dense on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparseflow.inference.kernels.attention import SparseMultiheadAttention, attention_unsupported
from sparseflow.inference.kernels.conv import SparseConv
from sparseflow.inference.kernels.modules import Choice, SparseLinear
from sparseflow.layouts import layout_of

__all__ = ["LayerReport", "inference_report", "is_hf_conv1d", "unsupported_reason", "weight_density",
           "weight_params"]

#: convert writes the reason a layer stayed dense here (a plain attribute of that layer in the converted copy)
REASON_ATTR = "_sparseflow_dense_reason"
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerReport:
    name: str
    kind: str            # "Linear", "Conv2d", "Conv1D", "MultiheadAttention.q_proj", "LSTM", ...
    density: float | None
    plan: tuple[Choice, ...]  # empty: left as it was
    reason: str          # why it was left dense, or "" when converted


def weight_params(module: nn.Module) -> list[torch.Tensor]:
    """``module``'s own parameters of >= 2 dims that have a weight layout (empty: not a weight layer)."""
    return [p for n, p in module.named_parameters(recurse=False) if p.dim() >= 2 and layout_of(module, n) is not None]


def is_hf_conv1d(module: nn.Module) -> bool:
    """Exactly Hugging Face's ``Conv1D`` (GPT-2 family: ``y = x @ W + b``, W stored (in, out))."""
    kind = type(module)
    return kind.__name__ == "Conv1D" and kind.__module__.split(".")[0] == "transformers"


def unsupported_reason(module: nn.Module) -> str | None:
    """Why a weight layer has no sparse path, or None when ``convert`` can run it sparse."""
    name = type(module).__name__
    if isinstance(module, nn.MultiheadAttention):
        reason = attention_unsupported(module)
        if reason is not None:
            return reason
    elif type(module) in _CONVS:
        if module.groups != 1:
            kind = "depthwise" if module.groups == module.in_channels else "grouped"
            return f"{kind} convolution (groups={module.groups}): no sparse kernel"
    elif isinstance(module, nn.RNNBase):
        return f"{name} weights: no sparse kernel (the recurrence runs in torch's fused cell)"
    elif isinstance(module, nn.Embedding):
        return "Embedding: a table lookup, no product for a sparse kernel"
    elif isinstance(module, (nn.Linear, *_CONVS)) and type(module) not in (nn.Linear, *_CONVS):
        return f"{name} subclasses {type(module).__mro__[1].__name__}: only the torch classes themselves are converted"
    elif type(module) is not nn.Linear and not is_hf_conv1d(module):
        return f"{name}: no sparse kernel"
    weights = weight_params(module)
    if isinstance(module, nn.MultiheadAttention):
        weights.append(module.out_proj.weight)
    for w in weights:
        if w.dtype != torch.float32 or w.device.type != "cpu":
            return f"weight is {w.dtype} on {w.device} (kernels run fp32 on CPU)"
    return None


def weight_density(module: nn.Module) -> float | None:
    """Nonzero fraction of ``module``'s weight parameters together (None: it has none)."""
    weights = weight_params(module)
    total = sum(w.numel() for w in weights)
    return None if not total else sum(int((w != 0).sum()) for w in weights) / total


def _row(name: str, kind: str, module: nn.Module) -> LayerReport:
    if isinstance(module, SparseLinear):
        return LayerReport(name, kind, module.csr.nnz / max(1, module.in_features * module.out_features), module.plan, "")
    reason = getattr(module, REASON_ATTR, None) or unsupported_reason(module) or "not converted (sf.convert not run)"
    return LayerReport(name, kind, weight_density(module), (), reason)


def inference_report(model: nn.Module) -> list[LayerReport]:
    """One row per weight layer of a (converted) model, in module order: its plan, or why it runs dense."""
    rows: list[LayerReport] = []
    units: list[str] = []  # converted modules, reported as one unit (their submodules are not rows of their own)
    for name, mod in model.named_modules():
        if any(not u or name.startswith(u + ".") for u in units):
            continue
        if isinstance(mod, SparseMultiheadAttention):
            rows += [_row(f"{name}.{leaf}" if name else leaf, f"MultiheadAttention.{leaf}", getattr(mod, leaf))
                     for leaf in ("q_proj", "k_proj", "v_proj", "out_proj")]
        elif isinstance(mod, SparseConv):
            rows.append(_row(name, mod.kind, mod.linear))
        elif isinstance(mod, SparseLinear):
            rows.append(_row(name, mod.kind, mod))
        else:
            if weight_params(mod):  # a dense layer (a dense attention's out_proj is a row of its own)
                rows.append(_row(name, type(mod).__name__, mod))
            continue
        units.append(name)
    return rows
