"""What :func:`sparseflow.save` stores from a module or a state dict: tensors, tied names, masks, axes.

* **Tied tensors.** A parameter reachable under several names (GPT-2's ``lm_head.weight`` *is*
  ``transformer.wte.weight``; T5's ``shared.weight`` is also both ``embed_tokens.weight`` and
  ``lm_head.weight``) appears in ``state_dict()`` once per name, all views of the same memory. It is stored
  once, under its first name in the state dict's order (for a module, the name ``named_parameters()``
  gives it), and every other name is recorded as an *alias* of that one. Two entries are the same tensor
  when they have the same data pointer, shape, strides and dtype; entries that merely overlap in memory
  (a slice of another) are stored as the separate tensors they are.
* **torch.nn.utils.prune.** ``x_orig`` + ``x_mask`` are folded into ``x = x_orig * x_mask`` with its mask;
  two folded tensors are one tensor when their ``_orig`` are tied and their masks are equal.
* **Masks.** Each mask given to ``save`` (and each folded one) is checked against its tensor and recorded by
  the name it was given under, so :func:`sparseflow.load_mask` returns exactly those; a mask given under an
  alias masks the tensor it names.
* **Axes.** For a module, the :class:`~sparseflow.Layout` of each weight (:func:`sparseflow.layout_of`) says
  which axes are its outputs and inputs; the mask coder may code a mask in that ``(out, in, *rest)`` view,
  where N:M groups and blocks run along the input axis whatever the stored order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparseflow.errors import StorageError
from sparseflow.layouts import Layout, layout_of
from sparseflow.mask import Mask

__all__ = ["Prepared", "prepare", "tied_names", "RESERVED_SUFFIXES", "STORABLE_DTYPES"]

RESERVED_SUFFIXES = ("::mask", "::values")
STORABLE_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                   torch.int16, torch.int8, torch.uint8, torch.bool)


@dataclass
class Prepared:
    """``state``: name -> tensor, each tensor once; ``aliases``: every other name -> the name it is stored
    under; ``order``: every name, stored or alias, in the state dict's order; ``masks``: stored name -> bool
    mask (CPU); ``masked``: the names masks were given under, in order (None when no mask was given);
    ``layouts``: stored name -> layout, for weights whose outputs and inputs are not axes 0 and 1."""

    state: dict[str, Tensor]
    aliases: dict[str, str]
    order: list[str]
    masks: dict[str, Tensor]
    masked: list[str] | None
    layouts: dict[str, Layout]


def _identity(t: Tensor) -> tuple | None:
    """What makes two state entries the same tensor; None for an empty tensor (any two share pointer 0)."""
    if t.numel() == 0:
        return None
    return (t.device, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)


def tied_names(state: Mapping[str, Tensor]) -> dict[str, str]:
    """``{alias: first name}`` for every entry of ``state`` that is the same tensor as an earlier entry."""
    first: dict[tuple, str] = {}
    out: dict[str, str] = {}
    for name, t in state.items():
        key = _identity(t)
        if key is None:
            continue
        if key in first:
            out[name] = first[key]
        else:
            first[key] = name
    return out


def _checked(obj: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(obj, nn.Module):
        state = dict(obj.state_dict())
    elif isinstance(obj, Mapping):
        state = dict(obj)
    else:
        raise StorageError(f"save needs an nn.Module or a state dict, got {type(obj).__name__}")
    for name, t in state.items():
        if not isinstance(name, str) or not isinstance(t, Tensor):
            raise StorageError(f"state entry {name!r} is a {type(t).__name__}, not a tensor; save stores tensors only")
        if name.endswith(RESERVED_SUFFIXES):
            raise StorageError(f"tensor name {name!r} ends in a suffix reserved for the file layout; rename it")
        if t.dtype not in STORABLE_DTYPES:
            raise StorageError(f"tensor {name!r} has dtype {t.dtype}, which the file format does not store")
    return {n: t.detach() for n, t in state.items()}


def _fold(raw: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str], list[str], dict[str, Tensor]]:
    """(state, aliases, order, folded masks): torch.nn.utils.prune pairs folded, each tensor kept once."""
    tied = tied_names(raw)
    root = lambda n: tied.get(n, n)  # noqa: E731
    state: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    order: list[str] = []
    folded: dict[str, Tensor] = {}
    # What each stored tensor is made of -> its stored names; an output name is an alias of an earlier one
    # made of the same tensor (and, folded, the same mask).
    sources: dict[tuple, list[str]] = {}
    for name, t in raw.items():
        if name.endswith("_mask") and name[: -len("_mask")] + "_orig" in raw:
            continue  # read with its _orig
        if name.endswith("_orig") and name[: -len("_orig")] + "_mask" in raw:
            base = name[: -len("_orig")]
            order.append(base)
            m = raw[base + "_mask"] != 0
            key: tuple = ("folded", root(name))
            same = next((n for n in sources.get(key, []) if torch.equal(folded[n], m.cpu())), None)
            if same is not None:
                aliases[base] = same
                continue
            if base in raw:
                raise StorageError(f"state has both {base!r} and the torch.nn.utils.prune pair {name!r}/"
                                   f"{base + '_mask'!r}; pass one of them")
            state[base] = t * m.to(t.dtype)
            folded[base] = m.cpu()
        else:
            order.append(name)
            key = ("plain", root(name))
            if key in sources:
                aliases[name] = sources[key][0]
                continue
            state[name] = t
            base = name
        sources.setdefault(key, []).append(base)
    return state, aliases, order, folded


def _layouts(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Layout]:
    """Stored name -> layout of the weight, for weights whose outputs/inputs are not axes 0/1."""
    modules = dict(model.named_modules(remove_duplicate=False))
    out = {}
    for name, t in state.items():
        mod, _, leaf = name.rpartition(".")
        module = modules.get(mod)
        layout = layout_of(module, leaf) if module is not None and t.dim() >= 2 else None
        if layout is not None and (layout.out_axis % t.dim(), layout.in_axis % t.dim()) != (0, 1):
            out[name] = layout
    return out


def prepare(model: nn.Module | Mapping[str, Tensor], mask: Mask | Mapping[str, Tensor] | None) -> Prepared:
    """Everything :func:`sparseflow.save` writes about ``model`` and ``mask``, checked (see the module docstring)."""
    state, aliases, order, folded = _fold(_checked(model))
    masks = dict(folded)
    masked = list(folded) if folded or mask is not None else None
    given: dict[str, str] = {}  # stored name -> the first given name that masks it
    for name, m in (mask or {}).items():
        stored = aliases.get(name, name)
        if stored not in state:
            raise StorageError(f"mask names {name!r}, which is not a tensor of the model; tensors: "
                               f"{list(state)[:8]}{'...' if len(state) > 8 else ''}")
        if not isinstance(m, Tensor):
            raise StorageError(f"mask for {name!r} is a {type(m).__name__}, not a tensor")
        if tuple(m.shape) != tuple(state[stored].shape):
            raise StorageError(f"mask for {name!r} has shape {tuple(m.shape)} but the tensor has shape "
                               f"{tuple(state[stored].shape)}")
        m = m.detach().to("cpu", torch.bool)
        if stored in given and not torch.equal(masks[stored], m):
            raise StorageError(f"{name!r} and {given[stored]!r} are one tensor (tied) but their masks differ; "
                               "give one mask for it")
        given.setdefault(stored, name)
        masks[stored] = m
        if name not in masked:  # type: ignore[operator]
            masked.append(name)  # type: ignore[union-attr]
    layouts = _layouts(model, state) if isinstance(model, nn.Module) else {}
    return Prepared(state, aliases, order, masks, masked, layouts)
