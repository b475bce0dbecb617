"""The Mask: the currency of sparseflow.

A :class:`Mask` maps parameter names to boolean tensors of the same shape (``True`` = kept). Pruning
produces masks; training, storage, analysis and reports consume them. It validates loudly on every write,
naming the tensor and both shapes, so a wrong mask fails where it is made rather than where it is used.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping

import torch
from torch import Tensor, nn

from sparseflow.errors import MaskError


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise MaskError(f"mask for {name!r} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype != torch.bool:
        raise MaskError(
            f"mask for {name!r} must have dtype torch.bool, got {value.dtype}; "
            "convert with `tensor != 0` or `tensor.bool()`"
        )
    return value


def as_mask(mask: object, who: str) -> Mask | None:
    """``mask`` as a :class:`Mask` (a Mask, or a mapping of names to bool tensors, checked), or None; anything
    else raises :class:`~sparseflow.errors.MaskError` naming ``who`` (the function it was passed to)."""
    if mask is None or isinstance(mask, Mask):
        return mask
    if not isinstance(mask, Mapping):
        raise MaskError(f"{who}: mask must be a sf.Mask or a dict of bool tensors (or None), got "
                        f"{type(mask).__name__}")
    return Mask(mask)


def check_module(model: object, who: str) -> None:
    """Refuse anything but an ``nn.Module``, naming ``who`` and what was passed."""
    if not isinstance(model, nn.Module):
        raise MaskError(f"{who} needs an nn.Module, got {type(model).__name__} ({str(model)[:40]!r})")


class Mask(MutableMapping[str, Tensor]):
    """Parameter name -> boolean tensor (``True`` where the weight is kept).

    Replacing an entry keeps its shape: a mask for an existing name with a different shape raises
    :class:`~sparseflow.errors.MaskError` naming the parameter and both shapes.

    A method's mask (``method.mask``) is a read-only view (:meth:`read_only`): writing into it would bypass
    what the method does when its mask changes (zeroing weights and optimizer state outside it), so every
    write raises :class:`~sparseflow.errors.MaskError` pointing to ``method.set_mask``. ``clone()`` gives a
    writable copy.
    """

    def __init__(self, masks: Mapping[str, Tensor] | None = None) -> None:
        self._masks: dict[str, Tensor] = {}
        self._owner: str | None = None  # set on a read-only view: how its owner changes it
        for name, value in (masks or {}).items():
            self[name] = value

    def read_only(self, owner: str) -> Mask:
        """A view of this mask (the same tensors, kept up to date) that refuses writes, naming ``owner``, the
        call that does change it (such as ``"RigL.set_mask"``)."""
        view = Mask()
        view._masks, view._owner = self._masks, owner
        return view

    def _refuse_write(self, name: object) -> None:
        if self._owner is not None:
            raise MaskError(
                f"this mask is read-only (writing {name!r}): it belongs to a method, and a write here would not "
                f"zero the weights or optimizer state; change it with {self._owner}({{name: bool tensor, ...}}) "
                "for every target, or edit a copy from mask.clone()")

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def ones(cls, params: Mapping[str, Tensor]) -> Mask:
        """An all-kept mask for the given parameters (name -> tensor)."""
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})

    @classmethod
    def from_nonzeros(cls, params: Mapping[str, Tensor]) -> Mask:
        """The mask of the nonzero entries of the given tensors (e.g. a pruned state dict)."""
        return cls({n: p.detach() != 0 for n, p in params.items()})

    # --- mapping protocol -----------------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._masks[name]
        except KeyError:
            raise MaskError(f"no mask for parameter {name!r}; masked parameters: {list(self._masks)}") from None

    def __setitem__(self, name: str, value: Tensor) -> None:
        self._refuse_write(name)
        value = _check_tensor(name, value)
        old = self._masks.get(name)
        if old is not None and old.shape != value.shape:
            raise MaskError(
                f"mask for {name!r} has shape {tuple(value.shape)}, expected {tuple(old.shape)} "
                "(the shape of the parameter it masks)"
            )
        self._masks[name] = value

    def __contains__(self, name: object) -> bool:
        return name in self._masks

    def __delitem__(self, name: str) -> None:
        self._refuse_write(name)
        if name not in self._masks:
            raise MaskError(f"no mask for parameter {name!r} to delete; masked parameters: {list(self._masks)}")
        del self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, density={self.density():.4f})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return list(self.keys()) == list(other.keys()) and all(
            torch.equal(self[k], other[k]) for k in self
        )

    # --- measurements -----------------------------------------------------------------------
    def count(self) -> int:
        """Number of kept entries over all tensors."""
        return sum(int(torch.count_nonzero(m)) for m in self._masks.values())

    def numel(self) -> int:
        """Number of entries over all tensors."""
        return sum(m.numel() for m in self._masks.values())

    def density(self) -> float:
        """Fraction of kept entries (1.0 for an empty mask)."""
        n = self.numel()
        return self.count() / n if n else 1.0

    def sparsity(self) -> float:
        return 1.0 - self.density()

    def counts(self) -> dict[str, int]:
        """Kept entries per tensor."""
        return {n: int(torch.count_nonzero(m)) for n, m in self._masks.items()}

    def densities(self) -> dict[str, float]:
        return {n: int(torch.count_nonzero(m)) / m.numel() if m.numel() else 1.0 for n, m in self._masks.items()}

    def clone(self) -> Mask:
        return Mask({n: m.clone() for n, m in self._masks.items()})

    def to_dict(self) -> dict[str, Tensor]:
        return dict(self._masks)

    # --- model interaction ----------------------------------------------------------------------
    def check(self, model: nn.Module) -> None:
        """Raise MaskError unless every entry names a parameter of ``model`` with the same shape."""
        params = dict(model.named_parameters())
        for name, m in self._masks.items():
            if name not in params:
                raise MaskError(
                    f"mask names parameter {name!r}, which the model does not have; "
                    f"model parameters: {list(params)[:10]}{' ...' if len(params) > 10 else ''}"
                )
            if params[name].shape != m.shape:
                raise MaskError(
                    f"mask for {name!r} has shape {tuple(m.shape)} but the parameter has shape "
                    f"{tuple(params[name].shape)}"
                )

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> None:
        """Zero every weight of ``model`` outside the mask, in place."""
        self.check(model)
        params = dict(model.named_parameters())
        for name, m in self._masks.items():
            p = params[name]
            p.mul_(m.to(device=p.device, dtype=p.dtype))
