"""Which parameters are prunable.

By default the weights (not biases) of ``nn.Linear``, ``nn.Conv1d/2d/3d``, Hugging Face's ``Conv1D`` (the
GPT-2 family's projections) and ``nn.MultiheadAttention`` (``in_proj_weight``, or ``q/k/v_proj_weight``
when keys and values have their own sizes; ``out_proj`` is a Linear) are targets, in the order
``model.named_modules()`` yields them (for sequential models: input layer first, classifier last).
Embeddings, normalisation layers and biases are not targets unless asked for.

:class:`Targets` narrows or widens that set by name patterns (``fnmatch`` over parameter names such as
``"layers.0.weight"`` or ``"*.conv1.weight"``) or by module type (a class, or ``"package.module.Name"`` for
a class whose package need not be imported): a module type targets every weight matrix of that module whose
layout :mod:`sparseflow.layouts` knows, so ``types=(nn.LSTM,)`` targets an LSTM's ``weight_ih_l*`` and
``weight_hh_l*``. It can leave the first or last target layer dense, as many papers do (Frankle & Carbin 2019
prune the output layer at half rate; Evci et al. 2020 keep the first convolution dense).

**Tied parameters** (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) are one target, named by
their first name in ``model.named_parameters()`` and reachable by any of their names in ``include`` and
``exclude``; their mask applies once. Selected by type, a tied parameter is a target only when every module
holding it is of a target type, so a language model's tied embedding and output head stay dense by default.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from sparseflow.errors import MaskError
from sparseflow.layouts import DEFAULT, Layout, layout_of, matches_type

ModuleType = type[nn.Module] | str
DEFAULT_TYPES: tuple[ModuleType, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention,
                                         "transformers.pytorch_utils.Conv1D")
Alias = tuple[str, nn.Module, str]  # (full name, module holding the parameter, its leaf name there)


def aliases(model: nn.Module) -> dict[str, list[Alias]]:
    """First name -> every ``(full name, module, leaf)`` under which that parameter is reachable, in module
    order. A tied parameter has several; the first name is the one ``model.named_parameters()`` gives."""
    by_id: dict[int, list[Alias]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for leaf, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{leaf}" if mod_name else leaf
            names = by_id.setdefault(id(p), [])
            if all(full != n for n, _, _ in names):
                names.append((full, module, leaf))
    return {names[0][0]: names for names in by_id.values()}


def _check_types(what: str, types: object) -> None:
    if not isinstance(types, tuple) or not all(
        isinstance(t, str) or (isinstance(t, type) and issubclass(t, nn.Module)) for t in types
    ):
        raise MaskError(f"Targets({what}=...) needs a tuple of nn.Module classes or 'package.module.Name' strings, "
                        f"got {types!r}")


@dataclass(frozen=True)
class Targets:
    """A rule selecting prunable parameters.

    Attributes:
        types: module types (classes or ``"package.module.Name"``) whose weight matrices are targets.
        include: if non-empty, only parameter names matching one of these fnmatch patterns are targets
            (any parameter may be named here, not only weights of ``types``; any name of a tied parameter).
        exclude: parameter names matching one of these patterns are never targets.
        exclude_types: module types whose weights are never targets (e.g. ``nn.Conv1d``).
        first_layer: prune the first selected layer (False keeps it dense).
        last_layer: prune the last selected layer (False keeps it dense).
    """

    types: tuple[ModuleType, ...] = DEFAULT_TYPES
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    exclude_types: tuple[ModuleType, ...] = ()
    first_layer: bool = True
    last_layer: bool = True

    def __post_init__(self) -> None:
        _check_types("types", self.types)
        _check_types("exclude_types", self.exclude_types)
        for what in ("include", "exclude"):
            value = getattr(self, what)
            if isinstance(value, str) or not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise MaskError(f"Targets({what}=...) needs a tuple of name patterns such as ('*.weight',), "
                                f"got {value!r}")

    def _of_type(self, module: nn.Module, leaf: str, types: tuple[ModuleType, ...]) -> bool:
        known = layout_of(module, leaf) is not None or leaf == "weight"  # a user's type: its .weight, (out, in)
        return known and any(matches_type(module, t) for t in types)

    def _hit(self, names: list[Alias], dims: int) -> bool:
        if any(any(matches_type(m, t) for t in self.exclude_types) for _, m, _ in names):
            return False
        if any(fnmatch.fnmatchcase(full, pat) for full, _, _ in names for pat in self.exclude):
            return False
        if self.include:
            return any(fnmatch.fnmatchcase(full, pat) for full, _, _ in names for pat in self.include)
        return dims >= 2 and all(self._of_type(m, leaf, self.types) for _, m, leaf in names)

    def select(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Name -> parameter of every target of ``model``, in module order.

        Raises MaskError when nothing is selected (a model with no prunable parameters, or patterns
        that match nothing).
        """
        params = dict(model.named_parameters())
        chosen = {first: params[first] for first, names in aliases(model).items()
                  if first in params and self._hit(names, params[first].dim())}
        names = list(chosen)
        if names and not self.first_layer:
            del chosen[names[0]]
        if names and not self.last_layer and names[-1] in chosen:
            del chosen[names[-1]]
        if not chosen:
            rule = "the default Targets()" if self == Targets() else repr(self)
            raise MaskError(f"the model has no prunable parameters under {rule}: " + self._suggestion(model, names))
        for name, p in chosen.items():
            if p.dim() < 2 and not self.include:
                raise MaskError(f"target {name!r} has shape {tuple(p.shape)}; weights need >= 2 dims")
        return chosen

    def _suggestion(self, model: nn.Module, selected: list[str]) -> str:
        """What to pass instead, for the error of an empty selection: the module types that hold weights."""
        if selected:
            return (f"it selects only {selected[0]!r}, and first_layer=False or last_layer=False leaves that dense; "
                    "pass first_layer=True and last_layer=True, or select more with `types=` or `include=`")
        found: dict[type, list[str]] = {}
        for first, names in aliases(model).items():
            full, module, leaf = names[0]
            if module.get_parameter(leaf).dim() >= 2:
                found.setdefault(type(module), []).append(full)
        if not found:
            return "it has no parameter with >= 2 dimensions (weights); biases and norms are not pruned"
        kinds = list(found)
        spell = ", ".join(f"nn.{k.__name__}" if getattr(nn, k.__name__, None) is k else repr(f"{k.__module__}.{k.__qualname__}")
                          for k in kinds)
        where = "; ".join(f"{k.__name__}: {', '.join(repr(n) for n in found[k][:3])}"
                          + (f" and {len(found[k]) - 3} more" if len(found[k]) > 3 else "") for k in kinds)
        return (f"its weights are in modules of other types ({where}); sparseflow prunes Linear, Conv1d/2d/3d, "
                f"Hugging Face Conv1D and MultiheadAttention weights by default: pass "
                f"targets=sf.Targets(types=({spell}{',' if len(kinds) == 1 else ''})) to prune the weight matrices of "
                "those types, or name "
                "parameters with `include=` patterns")

    def layouts(self, model: nn.Module) -> dict[str, Layout]:
        """Target name -> its weight :class:`~sparseflow.Layout`: that of the first module holding it that is
        of a target type, else of the first one with a layout rule, else ``(out, in, *rest)``."""
        out: dict[str, Layout] = {}
        all_names = aliases(model)
        for name in self.select(model):
            holders = all_names[name]
            preferred = [h for h in holders if any(matches_type(h[1], t) for t in self.types)] + holders
            found = (layout_of(m, leaf) for _, m, leaf in preferred)
            out[name] = next((lay for lay in found if lay is not None), DEFAULT)
        return out


def prunable(model: nn.Module, targets: Targets | None = None) -> dict[str, nn.Parameter]:
    """Name -> parameter of the prunable parameters of ``model`` (see :class:`Targets`)."""
    return (targets or Targets()).select(model)
