"""A method that holds a mask given from outside: lottery tickets, their controls, masks loaded from disk.

``FixedMask(keep=mask)`` never changes its mask. ``prepare`` installs it (zeroing the weights outside it)
and, like every :class:`~sparseflow.Method`, keeps the pruned weights and optimizer state at zero while
training. It never rescales the kept weights: a lottery ticket is defined by the *values* it is rewound to
(Frankle & Carbin 2019), so ``sparse_init`` is refused here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sparseflow.errors import MaskError, SparseflowError
from sparseflow.mask import Mask
from sparseflow.methods.base import Method


@dataclass(eq=False)
class FixedMask(Method):
    """Train under a fixed mask ``keep`` ({parameter name -> bool tensor}), e.g. a lottery ticket's.

    The mask must cover exactly the parameters ``targets`` selects (default: every Linear/Conv weight),
    with their shapes. ``sparsity`` is derived from the mask.
    """

    sparsity: float = field(init=False, default=0.0)
    keep: Mapping[str, Tensor] = field(default_factory=dict, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.keep, Mapping) or not self.keep:
            raise MaskError(f"FixedMask needs keep={{name: bool tensor}}, got {self.keep!r}")
        self.keep = self.keep if isinstance(self.keep, Mask) else Mask(dict(self.keep))
        if self.sparse_init:
            raise SparseflowError(
                "FixedMask keeps the given weights as they are; sparse_init=True would rescale them. "
                "Rescale explicitly with sparseflow.init.rescale_ if that is what you want"
            )
        self.sparsity = 1.0 - self.keep.density()  # an all-empty mask (sparsity 1) is refused below
        super().__post_init__()

    def target_sparsity(self, step: int) -> float | None:
        return None  # the mask never changes

    def _setup(self) -> None:
        # Runs in prepare() once the targets are selected: install the given mask as the first one.
        if set(self.keep) != set(self._params):
            raise MaskError(
                f"FixedMask covers {sorted(self.keep)}, but the targets of this model are {sorted(self._params)}; "
                "pass a mask for exactly these parameters (or matching targets=Targets(...))"
            )
        for name, p in self._params.items():
            m = self.keep[name]
            if tuple(m.shape) != tuple(p.shape):
                raise MaskError(f"mask for {name!r} has shape {tuple(m.shape)}, parameter has {tuple(p.shape)}")
            self._mask[name] = m.to(device=p.device, dtype=torch.bool)
        self._refresh()
