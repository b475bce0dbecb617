"""Masks to and from ``torch.nn.utils.prune``.

PyTorch's pruning utilities reparametrise a pruned tensor ``weight`` as a parameter ``weight_orig`` and a
buffer ``weight_mask`` (float, 1 = kept), recomputing ``weight = weight_orig * weight_mask`` before every
forward. :func:`from_torch_prune` reads those buffers as a :class:`~sparseflow.Mask` (named by the pruned
tensor, ``"0.weight"``), :func:`to_torch_prune_` installs a Mask that way, and :func:`remove_torch_prune_`
folds the masks in, leaving a plain model with zeros outside the masks. :func:`sparseflow.save` folds a
pruned model on its own; :func:`sparseflow.load` fills ``weight_orig``/``weight_mask`` of a pruned model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from sparseflow.errors import MaskError
from sparseflow.mask import Mask

__all__ = ["from_torch_prune", "to_torch_prune_", "remove_torch_prune_"]


def _pruned(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(full name, module, tensor name) for every tensor under a torch.nn.utils.prune reparametrisation."""
    out = []
    for mod_name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):  # a PruningContainer is one too, with the same name
                out.append((f"{mod_name}.{hook._tensor_name}" if mod_name else hook._tensor_name, module,
                            hook._tensor_name))
    return out


def from_torch_prune(model: nn.Module) -> Mask:
    """The masks of every tensor pruned with ``torch.nn.utils.prune`` (``weight_mask != 0``). A tied tensor
    pruned under each of its names with one mask (as :func:`to_torch_prune_` does) is reported once, by its
    first name."""
    out = Mask()
    seen: dict[int, list[str]] = {}  # id of a pruned tensor's *_orig parameter -> names reported for it
    for full, module, name in _pruned(model):
        m = getattr(module, name + "_mask").detach() != 0
        names = seen.setdefault(id(getattr(module, name + "_orig")), [])
        if any(torch.equal(out[n], m) for n in names):
            continue
        names.append(full)
        out[full] = m
    return out


def to_torch_prune_(model: nn.Module, mask: Mask) -> None:
    """Install ``mask`` with ``torch.nn.utils.prune.custom_from_mask`` (a tensor already pruned that way gets
    the new mask combined with its old one, as PyTorch does). A tied parameter (GPT-2's
    ``transformer.wte.weight``, also ``lm_head.weight``) is pruned under each of its names, so every module
    that uses it sees the masked weight and the names stay tied (one ``weight_orig``)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    names_of: dict[int, list[str]] = {}
    for full, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(full)
    installs: list[tuple[str, torch.Tensor]] = []
    for full, m in mask.items():
        mod_name, _, name = full.rpartition(".")
        module = modules.get(mod_name)
        current = getattr(module, name, None) if module is not None else None
        if not isinstance(current, torch.Tensor):
            raise MaskError(f"mask names {full!r}, which is not a tensor of the model")
        if tuple(current.shape) != tuple(m.shape):
            raise MaskError(f"mask for {full!r} has shape {tuple(m.shape)} but the tensor has shape "
                            f"{tuple(current.shape)}")
        tied = names_of.get(id(current), [full])
        installs += [(n, m) for n in [full, *tied] if n == full or n not in mask]
    done: set[tuple[int, str]] = set()  # a module reachable under two names is pruned once
    for full, m in installs:  # names found before any install: pruning moves the parameter to *_orig
        mod_name, _, name = full.rpartition(".")
        module = modules[mod_name]
        if (id(module), name) in done:
            continue
        done.add((id(module), name))
        prune.custom_from_mask(module, name, m.to(getattr(module, name).device))


def remove_torch_prune_(model: nn.Module) -> None:
    """Make every ``torch.nn.utils.prune`` reparametrisation permanent (``prune.remove``): plain parameters
    with zeros outside their masks."""
    for _, module, name in _pruned(model):
        prune.remove(module, name)
