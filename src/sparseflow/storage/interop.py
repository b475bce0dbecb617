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
    """The masks of every tensor pruned with ``torch.nn.utils.prune`` (``weight_mask != 0``)."""
    return Mask({full: getattr(module, name + "_mask").detach() != 0 for full, module, name in _pruned(model)})


def to_torch_prune_(model: nn.Module, mask: Mask) -> None:
    """Install ``mask`` with ``torch.nn.utils.prune.custom_from_mask`` (a tensor already pruned that way gets
    the new mask combined with its old one, as PyTorch does)."""
    modules = dict(model.named_modules())
    for full, m in mask.items():
        mod_name, _, name = full.rpartition(".")
        module = modules.get(mod_name)
        current = getattr(module, name, None) if module is not None else None
        if not isinstance(current, torch.Tensor):
            raise MaskError(f"mask names {full!r}, which is not a tensor of the model")
        if tuple(current.shape) != tuple(m.shape):
            raise MaskError(f"mask for {full!r} has shape {tuple(m.shape)} but the tensor has shape "
                            f"{tuple(current.shape)}")
        prune.custom_from_mask(module, name, m.to(current.device))


def remove_torch_prune_(model: nn.Module) -> None:
    """Make every ``torch.nn.utils.prune`` reparametrisation permanent (``prune.remove``): plain parameters
    with zeros outside their masks."""
    for _, module, name in _pruned(model):
        prune.remove(module, name)
