"""Several small networks of one architecture trained as one: grouped convolutions, one optimizer step for all.

On a CPU a training step of a small convolutional network at a small batch costs mostly fixed overhead (Python,
operator dispatch, one kernel launch per layer), so K such networks trained one after the other cost about K
times that overhead. :func:`pack` builds one network that holds all K side by side, model-major along the
channel axis: member k owns channels ``[k * C, (k + 1) * C)`` of every layer, a convolution becomes a grouped
convolution with ``groups = K`` (times its own groups), a norm over C channels becomes the same norm over K * C
channels whose statistics never mix members, and a Linear layer becomes a batched matrix product. Each member
reads its own examples (channel block k of the input) and the members never exchange a value, so

* the forward pass of member k equals its own network's forward pass on its own batch (the tests check it,
  BatchNorm's per-batch statistics included: BatchNorm2d over K * C channels normalises each channel over that
  member's batch only; GroupNorm(G, C) becomes GroupNorm(K * G, K * C), whose groups stay inside one member);
* the sum of the members' losses has, for member k, exactly member k's gradient;
* element-wise optimizers (SGD with momentum and weight decay, Adam, AdamW) then update each member as it would
  alone. An optimizer that couples elements (gradient-norm clipping, LAMB, LARS) would not; :func:`pack` does
  not build one, the caller picks.

:func:`unpack` writes the members back into K networks of the original class, e.g. to evaluate or save them.

Supported layers: ``nn.Conv1d``/``nn.Conv2d`` (any stride, padding, dilation, groups), ``nn.BatchNorm1d``/``2d``
(on feature maps), ``nn.GroupNorm``, ``nn.Linear`` and parameter-free modules; a model holding anything else
(``nn.LayerNorm`` over features, attention, embeddings) is refused, naming the layer. The forward code of the
model must be channel-agnostic: per-channel or per-example operations (ReLU, residual sums, pooling,
``flatten(2).mean(-1)``) are; a reshape that mixes channels of different members (``x.flatten(1)`` feeding a
Linear on feature maps) is not: compare the packed output with each member's own output once (:func:`member_outputs`) before
training a new architecture packed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sparseflow.errors import SparseflowError

_CONV = (nn.Conv1d, nn.Conv2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_PARAMETER_FREE = (nn.Identity, nn.ReLU, nn.Sequential, nn.Flatten, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                   nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool1d, nn.MaxPool2d, nn.Dropout, nn.ModuleList)


class PackedLinear(nn.Module):
    """K Linear layers side by side: input ``(N, K * in)``, output ``(N, K * out)``, member-major."""

    def __init__(self, members: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.k, self.in_features, self.out_features = len(members), members[0].in_features, members[0].out_features
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in members]).clone())  # (K, out, in)
        has_bias = members[0].bias is not None
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in members]).clone()) if has_bias else None

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        h = x.reshape(-1, self.k, self.in_features).transpose(0, 1)  # (K, N, in)
        y = torch.bmm(h, self.weight.transpose(1, 2))  # (K, N, out)
        if self.bias is not None:
            y = y + self.bias.unsqueeze(1)
        return y.transpose(0, 1).reshape(*lead, self.k * self.out_features)


def _cat(tensors: list[Tensor | None]) -> Tensor | None:
    return None if tensors[0] is None else torch.cat([t.detach() for t in tensors]).clone()  # type: ignore[union-attr]


def _pack_module(members: list[nn.Module], name: str) -> nn.Module:
    first, k = members[0], len(members)
    if isinstance(first, _CONV):
        c = first
        packed = type(c)(k * c.in_channels, k * c.out_channels, c.kernel_size, stride=c.stride, padding=c.padding,
                          dilation=c.dilation, groups=k * c.groups, bias=c.bias is not None,
                          padding_mode=c.padding_mode)
        packed.weight = nn.Parameter(_cat([m.weight for m in members]))
        if c.bias is not None:
            packed.bias = nn.Parameter(_cat([m.bias for m in members]))
        return packed
    if isinstance(first, _BN):
        b = first
        packed = type(b)(k * b.num_features, eps=b.eps, momentum=b.momentum, affine=b.affine,
                         track_running_stats=b.track_running_stats)
        if b.affine:
            packed.weight = nn.Parameter(_cat([m.weight for m in members]))
            packed.bias = nn.Parameter(_cat([m.bias for m in members]))
        if b.track_running_stats:
            packed.running_mean.copy_(_cat([m.running_mean for m in members]))
            packed.running_var.copy_(_cat([m.running_var for m in members]))
            packed.num_batches_tracked.copy_(first.num_batches_tracked)
        return packed
    if isinstance(first, nn.GroupNorm):
        g = first
        packed = nn.GroupNorm(k * g.num_groups, k * g.num_channels, eps=g.eps, affine=g.affine)
        if g.affine:
            packed.weight = nn.Parameter(_cat([m.weight for m in members]))
            packed.bias = nn.Parameter(_cat([m.bias for m in members]))
        return packed
    if isinstance(first, nn.Linear):
        return PackedLinear(members)  # type: ignore[arg-type]
    raise SparseflowError(f"cannot pack layer {name!r} ({type(first).__name__}): pack() supports Conv1d/Conv2d, "
                          "BatchNorm1d/2d, GroupNorm, Linear and parameter-free modules")


def _leaf(module: nn.Module) -> bool:
    return isinstance(module, (*_CONV, *_BN, nn.GroupNorm, nn.Linear))


def pack(models: Sequence[nn.Module]) -> nn.Module:
    """One network holding ``models`` (same class and shapes) side by side; see the module docstring.

    The packed network takes input ``(N, K * C_in, ...)``, member k's examples in channel block k
    (:func:`pack_inputs` builds it), and returns ``(N, K * D)``, which :func:`member_outputs` splits. The members
    are copied, not shared."""
    models = list(models)
    if not models:
        raise SparseflowError("pack() needs at least one model")
    base = type(models[0])
    names = [n for n, _ in models[0].named_modules()]
    for i, m in enumerate(models[1:], 1):
        if type(m) is not base or [n for n, _ in m.named_modules()] != names:
            raise SparseflowError(f"pack() needs models of one architecture: model {i} is {type(m).__name__} with "
                                  f"other layers than model 0 ({base.__name__})")
        for (n, p), (_, q) in zip(models[0].named_parameters(), m.named_parameters()):
            if p.shape != q.shape:
                raise SparseflowError(f"pack() needs equal shapes: {n!r} is {tuple(q.shape)} in model {i}, "
                                      f"{tuple(p.shape)} in model 0")
    packed = copy.deepcopy(models[0])
    modules = [dict(m.named_modules()) for m in models]
    for name, module in list(packed.named_modules()):
        if not name:
            continue
        if _leaf(module):
            parent_name, _, attr = name.rpartition(".")
            parent = packed.get_submodule(parent_name) if parent_name else packed
            setattr(parent, attr, _pack_module([mods[name] for mods in modules], name))
        elif not isinstance(module, _PARAMETER_FREE) and any(True for _ in module.parameters(recurse=False)):
            raise SparseflowError(f"cannot pack layer {name!r} ({type(module).__name__}): pack() supports Conv1d/"
                                  "Conv2d, BatchNorm1d/2d, GroupNorm, Linear and parameter-free modules")
    if any(True for _ in packed.parameters(recurse=False)) or any(True for _ in packed.buffers(recurse=False)):
        raise SparseflowError(f"cannot pack {base.__name__}: it holds parameters or buffers of its own")
    packed.pack_size = len(models)  # type: ignore[assignment]
    return packed


def unpack(packed: nn.Module, models: Sequence[nn.Module]) -> None:
    """Copy each member of ``packed`` (built by :func:`pack`) back into ``models[k]`` (same architecture),
    parameters and buffers (BatchNorm's running statistics) included."""
    k = len(models)
    if getattr(packed, "pack_size", None) != k:
        raise SparseflowError(f"unpack() got {k} models for a network packing {getattr(packed, 'pack_size', None)}")
    for name, module in packed.named_modules():
        if not name or not _leaf(module) and not isinstance(module, PackedLinear):
            continue
        for i, model in enumerate(models):
            target = model.get_submodule(name)
            with torch.no_grad():
                for pname, t in list(target.named_parameters(recurse=False)) + list(target.named_buffers(recurse=False)):
                    src = getattr(module, pname)
                    if pname == "num_batches_tracked":
                        t.copy_(src)
                    elif isinstance(module, PackedLinear):
                        t.copy_(src[i])
                    else:
                        t.copy_(src.chunk(k)[i])


def pack_inputs(xs: Sequence[Tensor] | Tensor) -> Tensor:
    """Member batches ``xs[k]`` of shape ``(N, C, ...)`` (or a ``(K, N, C, ...)`` tensor) as the packed input
    ``(N, K * C, ...)``; pass the same batch K times to show every member the same examples."""
    x = torch.stack(list(xs)) if not isinstance(xs, Tensor) else xs
    k, n, c = x.shape[:3]
    return x.transpose(0, 1).reshape(n, k * c, *x.shape[3:])


def member_outputs(y: Tensor, k: int) -> Tensor:
    """The packed output ``(N, K * D)`` as ``(K, N, D)``: member k's outputs at ``[k]``."""
    n = y.shape[0]
    return y.reshape(n, k, -1).transpose(0, 1)


def packed_masks(masks: Sequence[dict[str, Tensor]], packed: nn.Module) -> dict[str, Tensor]:
    """Per-member masks ``{parameter name: bool tensor}`` (one dict per member; a member without a mask for a
    parameter keeps it dense) as masks of the packed network's parameters of the same names."""
    k = len(masks)
    params = dict(packed.named_parameters())
    names = sorted({n for m in masks for n in m})
    out = {}
    for name in names:
        if name not in params:
            raise SparseflowError(f"mask for {name!r}, which the packed network does not have")
        p = params[name]
        stacked = isinstance(packed.get_submodule(name.rpartition(".")[0]), PackedLinear)  # (K, out, in)
        shape = p.shape[1:] if stacked else (p.shape[0] // k, *p.shape[1:])
        parts = [m.get(name, torch.ones(shape, dtype=torch.bool)).to(torch.bool).reshape(shape) for m in masks]
        out[name] = torch.stack(parts) if stacked else torch.cat(parts)
    return out
