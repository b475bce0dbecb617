"""Which parameters are prunable.

By default the weights (not biases) of ``nn.Linear`` and ``nn.Conv1d/2d/3d`` are targets, in the order
``model.named_modules()`` yields them (for sequential models: input layer first, classifier last).
:class:`Targets` narrows or widens that set by name patterns (``fnmatch`` over parameter names such as
``"layers.0.weight"`` or ``"*.conv1.weight"``) or by module type, and can leave the first or last target
layer dense, as many papers do (Frankle & Carbin 2019 prune the output layer at half rate; Evci et al. 2020
keep the first convolution dense).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from sparseflow.errors import MaskError

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class Targets:
    """A rule selecting prunable parameters.

    Attributes:
        types: module types whose ``weight`` is a target.
        include: if non-empty, only parameter names matching one of these fnmatch patterns are targets
            (any parameter may be named here, not only weights of ``types``).
        exclude: parameter names matching one of these patterns are never targets.
        exclude_types: module types whose weights are never targets (e.g. ``nn.Conv1d``).
        first_layer: prune the first selected layer (False keeps it dense).
        last_layer: prune the last selected layer (False keeps it dense).
    """

    types: tuple[type[nn.Module], ...] = DEFAULT_TYPES
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    exclude_types: tuple[type[nn.Module], ...] = ()
    first_layer: bool = True
    last_layer: bool = True

    def select(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Name -> parameter of every target of ``model``, in module order.

        Raises MaskError when nothing is selected (a model with no prunable parameters, or patterns
        that match nothing).
        """
        chosen: dict[str, nn.Parameter] = {}
        seen: set[int] = set()
        for mod_name, module in model.named_modules():
            for p_name, param in module.named_parameters(recurse=False):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if id(param) in seen:  # shared parameter seen through another module: first name only,
                    continue  # as in model.named_parameters()
                seen.add(id(param))
                if self.include:
                    hit = any(fnmatch.fnmatchcase(full, pat) for pat in self.include)
                else:
                    hit = p_name == "weight" and isinstance(module, self.types)
                if isinstance(module, self.exclude_types) or any(
                    fnmatch.fnmatchcase(full, pat) for pat in self.exclude
                ):
                    hit = False
                if hit:
                    chosen[full] = param
        names = list(chosen)
        if names and not self.first_layer:
            del chosen[names[0]]
        if names and not self.last_layer and names[-1] in chosen:
            del chosen[names[-1]]
        if not chosen:
            raise MaskError(
                f"the model has no prunable parameters under {self!r}; sparseflow prunes the weights of "
                "Linear and Conv1d/2d/3d layers by default: add patterns with `include=` or other "
                "module types with `types=`"
            )
        for name, p in chosen.items():
            if p.dim() < 2 and not self.include:
                raise MaskError(f"target {name!r} has shape {tuple(p.shape)}; weights need >= 2 dims")
        return chosen


def prunable(model: nn.Module, targets: Targets | None = None) -> dict[str, nn.Parameter]:
    """Name -> parameter of the prunable parameters of ``model`` (see :class:`Targets`)."""
    return (targets or Targets()).select(model)
