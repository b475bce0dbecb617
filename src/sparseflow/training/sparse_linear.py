"""Sparse execution for training: a Linear layer that stores, multiplies and updates only its kept weights.

:class:`SparseTrainLinear` holds the kept weights of an ``(out, in)`` matrix as one flat parameter ``values``
(nnz entries, in the row-major order of the mask), so the optimizer and its state (momentum, Adam moments) are
nnz-sized and shrink with the density. Its autograd function multiplies with the compressed matrix (CSR):

- forward: ``y = x Wᵀ + b`` as ``W_csr @ xᵀ``;
- input gradient: ``dx = dy W`` as ``Wᵀ_csr @ dyᵀ``, with the transposed index built once and the values
  gathered through a fixed permutation;
- weight gradient: ``dW = dyᵀ x`` computed only at the kept positions (a sampled dense-dense product, SDDMM).

The products are PyTorch's own CSR kernels (``torch.sparse.mm``, ``torch.sparse.sampled_addmm``). Training
with it gives the same weights as masked-dense training of an ``nn.Linear`` under the same mask
(:class:`~sparseflow.FixedMask`), up to the order of floating-point sums; a test holds them within 1e-4 after
100 steps. Static masks only: a mask change (SET, RigL) would rebuild the layer.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from sparseflow.errors import MaskError, SparseflowError


class _Structure:
    """The CSR index of a mask and of its transpose, with the permutation from the one's values to the other's."""

    def __init__(self, mask: Tensor) -> None:
        out_f, in_f = mask.shape
        rows, cols = mask.nonzero(as_tuple=True)  # row-major: the order of the values
        self.shape = (int(out_f), int(in_f))
        self.crow = torch.zeros(out_f + 1, dtype=torch.int64)
        self.crow[1:] = torch.cumsum(torch.bincount(rows, minlength=out_f), 0)
        self.col = cols.to(torch.int64)
        self.perm = torch.argsort(cols * out_f + rows)  # the values in the transpose's row-major order
        self.t_crow = torch.zeros(in_f + 1, dtype=torch.int64)
        self.t_crow[1:] = torch.cumsum(torch.bincount(cols, minlength=in_f), 0)
        self.t_col = rows[self.perm].to(torch.int64)
        self.rows = rows

    def to(self, device: torch.device) -> _Structure:
        for name in ("crow", "col", "perm", "t_crow", "t_col", "rows"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def matrix(self, values: Tensor) -> Tensor:
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.col, values, self.shape, check_invariants=False)

    def transposed(self, values: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.t_crow, self.t_col, values[self.perm], self.shape[::-1],
                                           check_invariants=False)


class _SparseMatmul(torch.autograd.Function):
    """``x (N, in) -> x Wᵀ (N, out)`` for W given by ``values`` on ``structure``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, values: Tensor, structure: _Structure) -> Tensor:  # type: ignore[override]
        ctx.structure = structure
        ctx.save_for_backward(x, values)
        return torch.sparse.mm(structure.matrix(values), x.t()).t()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, values = ctx.saved_tensors
        s: _Structure = ctx.structure
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.sparse.mm(s.transposed(values), grad.t()).t()
        if ctx.needs_input_grad[1]:
            pattern = s.matrix(torch.zeros_like(values))
            grad_values = torch.sparse.sampled_addmm(pattern, grad.t().contiguous(), x.contiguous(),
                                                     beta=0.0).values()
        return grad_x, grad_values, None


class SparseTrainLinear(nn.Module):
    """A Linear layer of ``out_features x in_features`` whose weights exist only where ``mask`` is True.

    Build it from a trained or initialised ``nn.Linear`` with :meth:`from_linear` (the weights outside the mask
    are dropped); :meth:`to_linear` gives the dense ``nn.Linear`` back (zeros outside the mask).
    """

    def __init__(self, mask: Tensor, values: Tensor | None = None, bias: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.dtype != torch.bool:
            raise MaskError(f"SparseTrainLinear needs a 2-D bool mask (out, in), got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
        mask = mask.detach().cpu()
        nnz = int(mask.sum())
        if nnz == 0:
            raise MaskError("SparseTrainLinear: the mask keeps no weight; keep at least one per layer")
        self.out_features, self.in_features = (int(d) for d in mask.shape)
        self._structure = _Structure(mask)
        if values is None:  # PyTorch's Linear init, per kept weight
            bound = 1 / math.sqrt(self.in_features)
            values = torch.empty(nnz).uniform_(-bound, bound)
        if values.shape != (nnz,):
            raise SparseflowError(f"SparseTrainLinear: values must hold the {nnz} kept weights, got shape "
                                  f"{tuple(values.shape)}")
        self.values = nn.Parameter(values.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor) -> SparseTrainLinear:
        """The layer holding ``linear``'s weights at ``mask`` (and its bias)."""
        if tuple(mask.shape) != tuple(linear.weight.shape):
            raise MaskError(f"mask of shape {tuple(mask.shape)} for a weight of shape {tuple(linear.weight.shape)}")
        mask = mask.detach().to(torch.bool).cpu()
        layer = cls(mask, linear.weight.detach().cpu()[mask], None if linear.bias is None else linear.bias.detach())
        return layer.to(linear.weight.device)

    def _apply(self, fn: Any, recurse: bool = True) -> SparseTrainLinear:  # .to(device) moves the index too
        super()._apply(fn, recurse)
        self._structure.to(self.values.device)
        return self

    @property
    def mask(self) -> Tensor:
        m = torch.zeros(self.out_features, self.in_features, dtype=torch.bool, device=self.values.device)
        m[self._structure.rows, self._structure.col] = True
        return m

    def dense_weight(self) -> Tensor:
        """The ``(out, in)`` weight with zeros outside the mask (a copy)."""
        w = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device)
        w[self._structure.rows, self._structure.col] = self.values.detach()
        return w

    def to_linear(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.dense_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise SparseflowError(f"SparseTrainLinear takes inputs of {self.in_features} features, got shape "
                                  f"{tuple(x.shape)}")
        lead = x.shape[:-1]
        y = _SparseMatmul.apply(x.reshape(-1, self.in_features), self.values, self._structure)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        nnz = self.values.numel()
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}, "
                f"density={nnz / (self.in_features * self.out_features):.4f}, bias={self.bias is not None}")


def sparse_linear_(model: nn.Module, mask: dict[str, Tensor]) -> dict[str, SparseTrainLinear]:
    """Replace, in place, every ``nn.Linear`` whose weight ``mask`` names (``"<module>.weight"``) by a
    :class:`SparseTrainLinear` holding its kept weights; returns {module name: new layer}. Build the optimizer
    after this call (the parameters change)."""
    done = {}
    for key, m in mask.items():
        name = key.removesuffix(".weight")
        if name == key:
            raise MaskError(f"mask key {key!r} does not name a weight ('<module>.weight')")
        module = model.get_submodule(name)
        if type(module) is not nn.Linear:
            raise SparseflowError(f"{name!r} is a {type(module).__name__}; sparse execution covers nn.Linear")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = SparseTrainLinear.from_linear(module, m)
        setattr(parent, child, layer)
        done[name] = layer
    return done
