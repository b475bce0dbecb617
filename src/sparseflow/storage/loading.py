"""Reading an ``.sfz`` file back: as a state dict, into a model, or as the masks it was saved with.

:func:`load` restores every name of the saved state dict (a tied tensor's aliases are the same tensor object
as its stored name) or copies the tensors into a model in place, so a model built from the same config keeps
its own tying: GPT-2's ``lm_head.weight`` stays ``transformer.wte.weight``. A model that ties two names the file
holds as different tensors is refused rather than loaded with one of them silently overwritten.

:func:`load_mask` returns the masks ``save`` was given (``mask=`` or ``torch.nn.utils.prune`` buffers), by the
names and in the order they were given, so ``method.set_mask(sf.load_mask(path))`` restores a method's mask.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from sparseflow.errors import StorageError
from sparseflow.mask import Mask
from sparseflow.storage.container import MAX_NUMEL, Stored, read
from sparseflow.storage.state import tied_names

__all__ = ["load", "load_into", "load_mask"]


def load(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    strict: bool = True,
    max_numel: int = MAX_NUMEL,
) -> dict[str, Tensor] | nn.Module:
    """Read an ``.sfz`` file. Without ``model``: the state dict (every saved name, dtypes as saved; the
    names of a tied tensor share one tensor).

    With ``model``: load into it in place and return it (its parameters stay the same objects, so an optimizer
    built on them and the model's own tying are kept). Names the tensor and both shapes on a shape mismatch;
    with ``strict`` (default) missing or unexpected names are errors too. A model pruned with
    ``torch.nn.utils.prune`` gets its ``weight_orig``/``weight_mask`` filled from the stored weight and mask.
    """
    stored = read(path, max_numel=max_numel)
    if model is None:
        return stored.tensors
    load_into(model, stored, strict=strict, where=str(path))
    return model


def load_into(model: nn.Module, stored: Stored, *, strict: bool = True, where: str = "file") -> None:
    """Copy ``stored`` into ``model`` (see :func:`load`)."""
    own = model.state_dict()
    state: dict[str, Tensor] = {}
    for name, t in stored.tensors.items():
        if name not in own and name + "_orig" in own and name + "_mask" in own:  # torch.nn.utils.prune
            kept = stored.aliases.get(name, name)
            m = stored.mask[kept] if kept in stored.mask else t != 0
            state[name + "_orig"], state[name + "_mask"] = t, m.to(own[name + "_mask"].dtype)
        else:
            state[name] = t
    for name, t in state.items():
        if name in own and tuple(own[name].shape) != tuple(t.shape):
            raise StorageError(f"{where}: tensor {name!r} has shape {tuple(t.shape)} in the file but "
                               f"{tuple(own[name].shape)} in the model")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        raise StorageError(f"{where}: file and model differ: missing from the file {missing[:6]}, not in the "
                           f"model {unexpected[:6]}; pass strict=False to load the common tensors")
    # The model's tied names are one tensor: the file must give them one value, or the last copy would win.
    for alias, first in tied_names({n: own[n] for n in own if n in state}).items():
        if state[alias] is not state[first] and not torch.equal(state[alias], state[first]):
            raise StorageError(f"{where}: the model ties {alias!r} to {first!r} (one tensor), but the file holds "
                               "different values for them; build the model with those weights untied")
    with torch.no_grad():
        for name, t in state.items():
            if name in own:
                own[name].copy_(t)


def load_mask(path: str | os.PathLike[str], *, max_numel: int = MAX_NUMEL) -> Mask:
    """The masks the file was saved with, as a :class:`~sparseflow.Mask`: exactly those given to
    :func:`~sparseflow.save` (``mask=``, e.g. ``method.mask``, or folded ``torch.nn.utils.prune`` buffers), by
    the names and in the order given, so ``method.set_mask(load_mask(path))`` and ``load_mask(path) ==
    method.mask`` hold.

    A file saved without masks, or written before files recorded them, has no such record; then this returns
    the masks of the tensors stored sparse that have at least 2 dimensions (weights), leaving out the 1-D
    tensors stored sparse only because they are mostly zero (zero biases, norm shifts, running means).
    """
    stored = read(path, max_numel=max_numel)
    if stored.masked is None:
        return Mask({n: m for n, m in stored.mask.items() if m.dim() >= 2})
    out = Mask()
    for name in stored.masked:
        kept = stored.aliases.get(name, name)
        # A masked tensor with no elements is stored dense; its (empty) mask keeps everything.
        empty = torch.ones(stored.info[kept]["shape"], dtype=torch.bool)
        out[name] = stored.mask[kept] if kept in stored.mask else empty
    return out
