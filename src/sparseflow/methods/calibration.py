"""Sequential calibration: the inputs every target layer sees, block by block, as SparseGPT and Wanda do it.

A transformer is a stack of blocks (``transformer.h`` in GPT-2, ``model.layers`` in Llama,
``encoder.layer`` in BERT, ``layers`` of ``nn.TransformerEncoder``): :func:`find_blocks` takes the
``nn.ModuleList`` of same-type modules that holds the most target weights. The calibration batches run
through the model once, up to the first block, whose inputs (positional and keyword: attention masks,
rotary position embeddings) are kept. Then for each block in turn: hooks on its target layers hand every
layer's inputs to the pruner (which keeps only its statistics: ‖X_j‖ for Wanda, XXᵀ for SparseGPT), the
block's targets are pruned, and the block runs again with its pruned weights to give the next block its
inputs. Memory holds one block's statistics and the hidden states of the calibration batches. Targets
outside the blocks (a classifier head) are calibrated last, in one pass of the whole pruned model.

A layer's inputs are handed over as a matrix ``(tokens, features)`` in the order of the weight's matrix view
``(out, kernel..., in)`` (:func:`matrix_view`), the view N:M groups run along: a Linear's or HF ``Conv1D``'s
inputs as they are, a convolution's as unfolded patches, ``nn.MultiheadAttention``'s q, k and v projections
from its query, key and value, and its ``out_proj`` from the attention output before the projection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseflow.errors import SparseflowError
from sparseflow.layouts import Layout, attention_before_out_proj, call, matches_type

Consumer = Callable[[str, Tensor], None]  # (target name, inputs as (tokens, features))


def matrix_view(t: Tensor, layout: Layout) -> Tensor:
    """A weight (or its mask or scores) as the matrix ``(out, kernel... × in)``: input channels innermost."""
    c = layout.canonical(t)
    return c if c.dim() == 2 else c.movedim(1, -1).reshape(c.shape[0], -1)


def from_matrix_view(m: Tensor, layout: Layout, shape: torch.Size) -> Tensor:
    """Inverse of :func:`matrix_view` for a weight of stored ``shape``."""
    c_shape = layout.canonical_shape(shape)
    c = m if len(c_shape) == 2 else m.reshape(c_shape[0], *c_shape[2:], c_shape[1]).movedim(-1, 1)
    return layout.restore(c.contiguous())


@dataclass(frozen=True)
class Site:
    """Where a target's inputs are observed: the module holding it, its leaf name and its layout."""

    name: str
    module: nn.Module
    leaf: str
    layout: Layout


def find_blocks(model: nn.Module, names: list[str]) -> tuple[str, list[nn.Module]]:
    """``(path, blocks)`` of the ``nn.ModuleList`` of same-type modules holding the most of ``names``; ``("", [])``
    when there is none (the whole model is then calibrated in one pass)."""
    best: tuple[int, str, list[nn.Module]] = (0, "", [])
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        kinds = {type(m) for m in module}
        if len(kinds) != 1:
            continue
        held = sum(1 for n in names if n.startswith(f"{path}."))
        if held > best[0]:
            best = (held, path, list(module))
    return best[1], best[2]


class _Stop(Exception):
    """Raised by the capture hook: the rest of the forward pass is not needed."""


def capture_inputs(model: nn.Module, first: nn.Module, batches: list[Any]) -> list[tuple[tuple, dict]]:
    """The ``(args, kwargs)`` the first block receives for each batch of model inputs."""
    seen: list[tuple[tuple, dict]] = []

    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args, dict(kwargs)))
        raise _Stop

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    config = getattr(model, "config", None)
    cached = getattr(config, "use_cache", None)
    if cached:  # a Hugging Face key/value cache would grow each time a block runs again
        config.use_cache = False
    try:
        for inputs in batches:
            try:
                call(model, inputs)
            except _Stop:
                continue
            raise SparseflowError("the calibration pass never reached the first transformer block: the model's forward "
                                  "does not call it")
    finally:
        handle.remove()
        if cached:
            config.use_cache = cached
    for _, kwargs in seen:
        for key in ("past_key_values", "past_key_value", "layer_past"):
            if kwargs.get(key) is not None:
                kwargs[key] = None
    return seen


def with_hidden(args: tuple, kwargs: dict, hidden: Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def block_output(out: Any) -> Tensor:
    """The hidden states a block returns (a tensor, or the first element of a tuple)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise SparseflowError(f"cannot find the hidden states in a block's output ({type(out).__name__})")


def _features(site: Site, x: Tensor) -> Tensor:
    """A layer input as ``(tokens, features)`` in the order of :func:`matrix_view`."""
    m = site.module
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise SparseflowError(f"calibrated pruning reads {site.name!r} as unfolded patches, which needs groups=1 and "
                                  "numeric zero padding; leave it out with Targets(exclude=...)")
        x4 = x.unsqueeze(-2) if isinstance(m, nn.Conv1d) else x
        k = (1, *m.kernel_size) if isinstance(m, nn.Conv1d) else m.kernel_size
        pad = (0, *m.padding) if isinstance(m, nn.Conv1d) else m.padding
        stride = (1, *m.stride) if isinstance(m, nn.Conv1d) else m.stride
        dil = (1, *m.dilation) if isinstance(m, nn.Conv1d) else m.dilation
        cols = F.unfold(x4, k, dilation=dil, padding=pad, stride=stride)  # (B, C·K, L), channel-major
        b, ck, length = cols.shape
        c = m.in_channels
        return cols.reshape(b, c, ck // c, length).permute(0, 3, 2, 1).reshape(b * length, ck)
    if isinstance(m, nn.modules.conv._ConvNd):
        raise SparseflowError(f"calibrated pruning does not read the inputs of {type(m).__name__} {site.name!r}; "
                              "leave it out with Targets(exclude=...)")
    return x.reshape(-1, x.shape[-1])


@contextmanager
def observing(sites: list[Site], consume: Consumer) -> Iterator[None]:
    """Hand the inputs of every site to ``consume`` while the context is open."""
    handles = []
    by_module: dict[int, list[Site]] = {}
    for s in sites:
        by_module.setdefault(id(s.module), []).append(s)
    for group in by_module.values():
        module = group[0].module
        if isinstance(module, nn.MultiheadAttention):
            handles.append(module.register_forward_hook(_attention_hook(group, consume), with_kwargs=True))
        elif matches_type(module, nn.Linear) or matches_type(module, "transformers.pytorch_utils.Conv1D") \
                or isinstance(module, nn.modules.conv._ConvNd):
            handles.append(module.register_forward_pre_hook(_input_hook(group[0], consume)))
        else:
            raise SparseflowError(f"calibrated pruning cannot observe the inputs of {group[0].name!r} "
                                  f"({type(module).__name__}); leave it out with Targets(exclude=...)")
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _input_hook(site: Site, consume: Consumer) -> Callable[..., None]:
    def hook(_m: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor):
            consume(site.name, _features(site, args[0].detach()))
    return hook


def _attention_hook(group: list[Site], consume: Consumer) -> Callable[..., None]:
    inside = [False]

    def hook(m: nn.MultiheadAttention, args: tuple, kwargs: dict, out: Any) -> None:
        if inside[0]:
            return
        qkv = [args[i] if i < len(args) else kwargs.get(k) for i, k in enumerate(("query", "key", "value"))]
        for s in group:
            if s.leaf == "in_proj_weight":
                if not (qkv[0] is qkv[1] is qkv[2]):
                    raise SparseflowError(f"{s.name!r}: one mask over q, k and v needs self-attention (query, key and "
                                          "value the same tensor); leave it out with Targets(exclude=...)")
                consume(s.name, qkv[0].detach().reshape(-1, qkv[0].shape[-1]))
            elif s.leaf in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                x = qkv["qkv".index(s.leaf[0])]
                consume(s.name, x.detach().reshape(-1, x.shape[-1]))
            else:  # out_proj.weight: the attention output before the projection, by running it with W = I
                inside[0] = True
                try:
                    pre = attention_before_out_proj(m, args, kwargs)
                finally:
                    inside[0] = False
                consume(s.name, pre.detach().reshape(-1, pre.shape[-1]))
    return hook


def sites_of(model: nn.Module, names: list[str], layouts: dict[str, Layout]) -> dict[str, Site]:
    """The :class:`Site` of every target: its module's own parameter, or MHA's ``out_proj`` seen from the MHA."""
    out: dict[str, Site] = {}
    for name in names:
        path, _, leaf = name.rpartition(".")
        module = model.get_submodule(path) if path else model
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        if child == "out_proj" and isinstance(parent, nn.MultiheadAttention):
            module, leaf = parent, "out_proj.weight"
        out[name] = Site(name, module, leaf, layouts[name])
    return out
