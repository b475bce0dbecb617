"""Sparse execution for training: a Linear layer that stores, multiplies and updates only its kept weights.

:class:`SparseTrainLinear` holds the kept weights of an ``(out, in)`` matrix as one flat parameter ``values``
(nnz entries, in the row-major order of the mask), so the optimizer and its state (momentum, Adam moments) are
nnz-sized and shrink with the density. Its autograd function multiplies with the compressed matrix (CSR):

- forward: ``y = x Wᵀ + b``, a sparse x dense product;
- input gradient: ``dx = dy W``, the same product with the transposed index (built once per mask; the kernel
  reads the values through a fixed permutation, the fallback gathers them);
- weight gradient: ``dW = dyᵀ x`` computed only at the kept positions (a sampled dense-dense product, SDDMM).

The products run on the compiled kernels of :mod:`sparseflow.inference.kernels` (AVX-512 / AVX2 / baseline
chosen at run time, torch's threads) for fp32 CPU tensors, and on PyTorch's own CSR kernels
(``torch.sparse.mm``, ``torch.sparse.sampled_addmm``) otherwise: without the extension, with
``SPARSEFLOW_KERNELS=torch``, on other devices or dtypes.

Training with it gives the same weights as masked-dense training of an ``nn.Linear`` under the same mask, up to
the order of floating-point sums. Mask changes (SET, RigL, :meth:`~sparseflow.methods.Method.set_mask`) go
through :meth:`SparseTrainLinear.set_mask_`; a layer can also hand out the dense gradient of one backward pass
(:attr:`SparseTrainLinear.collect_dense_grad`), which RigL reads at its update steps only.

``state_dict()`` holds the dense ``weight`` (zeros outside the mask), exactly as the ``nn.Linear`` it replaces,
so checkpoints, :func:`sparseflow.save` and Hugging Face export see the same tensors in either execution.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from sparseflow.errors import MaskError, SparseflowError
from sparseflow.inference import kernels as K


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _narrow(col: Tensor, n: int) -> Tensor:
    """Column indices as the compiled kernels read them: uint16 bits in int16 when ``n`` allows, else int32."""
    return col.to(torch.int32).to(torch.int16) if n <= 2**16 else col.to(torch.int32)


class _Structure:
    """The CSR index of a mask and of its transpose, with the permutation from the one's values to the other's."""

    def __init__(self, mask: Tensor) -> None:
        out_f, in_f = mask.shape
        mask = mask.detach().cpu()
        rows, cols = mask.nonzero(as_tuple=True)  # row-major: the order of the values
        self.shape = (int(out_f), int(in_f))
        self.nnz = int(rows.numel())
        self.crow = torch.zeros(out_f + 1, dtype=torch.int64)
        self.crow[1:] = torch.cumsum(torch.bincount(rows, minlength=out_f), 0)
        self.col = cols.to(torch.int64)
        self.perm = torch.argsort(cols * out_f + rows)  # the values in the transpose's row-major order
        self.t_crow = torch.zeros(in_f + 1, dtype=torch.int64)
        self.t_crow[1:] = torch.cumsum(torch.bincount(cols, minlength=in_f), 0)
        self.t_col = rows[self.perm].to(torch.int64)
        self.flat = rows * in_f + self.col  # positions in the flattened (out, in) matrix, in the values' order
        # The compiled kernels' index (CPU): int32 row pointers, 16-bit columns where they fit.
        self.k_rowptr = self.crow.to(torch.int32)
        self.k_col = _narrow(self.col, in_f)
        self.k_t_rowptr = self.t_crow.to(torch.int32)
        self.k_t_col = _narrow(self.t_col, out_f)
        self.k_perm = self.perm.to(torch.int32)  # the transpose reads the values through it: no gather

    def to(self, device: torch.device) -> _Structure:
        for name in ("crow", "col", "perm", "t_crow", "t_col", "flat"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def matrix(self, values: Tensor) -> Tensor:
        return _csr(self.crow, self.col, values, self.shape)

    def transposed(self, values: Tensor) -> Tensor:
        return _csr(self.t_crow, self.t_col, values.index_select(0, self.perm), self.shape[::-1])


def _compiled(*tensors: Tensor) -> bool:
    """Whether the compiled kernels take these tensors: fp32 on the CPU, the extension built and not disabled."""
    return (K.available_backend() is K.Backend.COMPILED
            and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors))


def _kernel_product(rowptr: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int], x: Tensor,
                    perm: Tensor | None = None) -> Tensor:
    """``x Wᵀ`` on the compiled kernels for W given by a structure of this module (valid by construction) and
    ``values`` (read through ``perm`` when given); x is a contiguous fp32 CPU [N, shape[1]]."""
    isa = K.Isa(K.best_isa())
    return K.spmm_checked_inputs(K.CsrWeight(rowptr, col, values, shape), x, None, isa, K.tile_for(x.shape[0], isa),
                                 perm)


class _SparseMatmul(torch.autograd.Function):
    """``x (N, in) -> x Wᵀ (N, out)`` for W given by ``values`` on ``layer``'s structure."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, values: Tensor, layer: SparseTrainLinear) -> Tensor:  # type: ignore[override]
        s = layer._structure
        ctx.structure, ctx.layer = s, layer
        ctx.save_for_backward(x, values)
        if _compiled(x, values):
            return _kernel_product(s.k_rowptr, s.k_col, values.detach(), s.shape, x.contiguous())
        return torch.sparse.mm(s.matrix(values), x.t()).t()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, values = ctx.saved_tensors
        s: _Structure = ctx.structure
        layer: SparseTrainLinear = ctx.layer
        grad_x = grad_values = None
        compiled = _compiled(x, values, grad)
        if ctx.needs_input_grad[0]:
            if compiled:
                grad_x = _kernel_product(s.k_t_rowptr, s.k_t_col, values.detach(), s.shape[::-1], grad.contiguous(),
                                         s.k_perm)
            else:
                grad_x = torch.sparse.mm(s.transposed(values), grad.t()).t()
        if ctx.needs_input_grad[1]:
            if layer.collect_dense_grad and layer._structure is s:
                dense = grad.t() @ x  # the whole gradient, for a method that grows where it is large (RigL)
                layer._dense_grad = dense if layer._dense_grad is None else layer._dense_grad + dense
                grad_values = dense.reshape(-1).index_select(0, s.flat)
            elif compiled:
                grad_values = K.sddmm(s.k_rowptr, s.k_col, grad.contiguous(), x.contiguous(), check=False)
            else:
                pattern = s.matrix(torch.zeros_like(values))
                grad_values = torch.sparse.sampled_addmm(pattern, grad.t().contiguous(), x.contiguous(),
                                                         beta=0.0).values()
        return grad_x, grad_values, None


def _check_mask(mask: Any, shape: tuple[int, int] | None = None) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.dtype != torch.bool:
        raise MaskError(f"SparseTrainLinear needs a 2-D bool mask (out, in), got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    if shape is not None and tuple(mask.shape) != shape:
        raise MaskError(f"mask of shape {tuple(mask.shape)} for a layer of shape {shape}")
    if not bool(mask.any()):
        raise MaskError("SparseTrainLinear: the mask keeps no weight; keep at least one per layer")
    return mask.detach().cpu()


class SparseTrainLinear(nn.Module):
    """A Linear layer of ``out_features x in_features`` whose weights exist only where ``mask`` is True.

    Build it from a trained or initialised ``nn.Linear`` with :meth:`from_linear` (the weights outside the mask
    are dropped); :meth:`to_linear` gives the dense ``nn.Linear`` back (zeros outside the mask). It has no
    ``weight`` attribute (a write to it could not reach the kept values): read :meth:`dense_weight`.

    Attributes:
        collect_dense_grad: when True, the next backward passes also compute the dense weight gradient
            ``dyᵀ x`` (a dense product, as in dense training) and keep it for :meth:`take_dense_grad`.
    """

    def __init__(self, mask: Tensor, values: Tensor | None = None, bias: Tensor | None = None) -> None:
        super().__init__()
        mask = _check_mask(mask)
        nnz = int(torch.count_nonzero(mask))
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
        self.collect_dense_grad = False
        self._dense_grad: Tensor | None = None
        self._register_state_dict_hook(_dense_state)
        self.register_load_state_dict_pre_hook(_load_dense)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor) -> SparseTrainLinear:
        """The layer holding ``linear``'s weights at ``mask`` (and its bias), on ``linear``'s device and dtype."""
        if tuple(mask.shape) != tuple(linear.weight.shape):
            raise MaskError(f"mask of shape {tuple(mask.shape)} for a weight of shape {tuple(linear.weight.shape)}")
        mask = mask.detach().to(torch.bool).cpu()
        w = linear.weight.detach()
        layer = cls(mask, w.cpu()[mask], None if linear.bias is None else linear.bias.detach().cpu())
        layer.values.requires_grad_(linear.weight.requires_grad)
        return layer.to(device=w.device, dtype=w.dtype)

    def _apply(self, fn: Any, recurse: bool = True) -> SparseTrainLinear:  # .to(device) moves the index too
        super()._apply(fn, recurse)
        self._structure.to(self.values.device)
        return self

    @property
    def nnz(self) -> int:
        return self._structure.nnz

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The shape of the dense weight this layer stands for: ``(out, in)``."""
        return (self.out_features, self.in_features)

    def _weight_view(self, t: Tensor) -> Tensor:
        """An ``(out, in)`` tensor in the layout of the weight this layer stands for (:attr:`weight_shape`)."""
        return t.reshape(self.weight_shape)

    def _out_in(self, w: Tensor) -> Tensor:
        """A tensor in the weight's layout as ``(out, in)`` (the order the values are kept in)."""
        return w.reshape(self.out_features, self.in_features)

    @property
    def mask(self) -> Tensor:
        """The kept positions, a new bool tensor of :attr:`weight_shape`."""
        m = torch.zeros(self.out_features, self.in_features, dtype=torch.bool, device=self.values.device)
        m.view(-1)[self._structure.flat] = True
        return self._weight_view(m)

    def dense_weight(self) -> Tensor:
        """The dense weight (:attr:`weight_shape`) with zeros outside the mask (a copy)."""
        return self.scatter(self.values.detach())

    def scatter(self, flat: Tensor) -> Tensor:
        """A flat nnz-sized tensor (the values, their gradient, optimizer state) as the dense one
        (:attr:`weight_shape`)."""
        w = torch.zeros(self.out_features, self.in_features, dtype=flat.dtype, device=flat.device)
        w.view(-1).index_copy_(0, self._structure.flat, flat)
        return self._weight_view(w)

    def gather(self, dense: Tensor) -> Tensor:
        """A dense tensor of :attr:`weight_shape` at the kept positions, in the order of ``values``."""
        return self._out_in(dense).reshape(-1).index_select(0, self._structure.flat)

    @torch.no_grad()
    def set_mask_(self, mask: Tensor, weight: Tensor) -> None:
        """Rebuild the structure for ``mask`` with the values ``weight[mask]``. When the count of kept weights is
        unchanged (SET, RigL) the ``values`` parameter stays the same object, overwritten in place (an optimizer
        holding it keeps working); otherwise ``values`` becomes a new parameter of the new size, which the
        optimizer must be given in place of the old one (autograd keeps a parameter's size from its first use)."""
        if isinstance(mask, Tensor) and tuple(mask.shape) == self.weight_shape:
            mask = self._out_in(mask)
        mask = _check_mask(mask, (self.out_features, self.in_features))
        structure = _Structure(mask).to(self.values.device)
        weight = weight.detach().to(self.values.device, self.values.dtype)
        if tuple(weight.shape) == self.weight_shape:
            weight = self._out_in(weight)
        new = weight.reshape(-1).index_select(0, structure.flat)
        if new.shape == self.values.shape:
            self.values.copy_(new)
        else:
            self.values = nn.Parameter(new, requires_grad=self.values.requires_grad)
        self._structure = structure
        self._dense_grad = None

    def take_dense_grad(self) -> Tensor | None:
        """The dense weight gradient collected since the last call (None when not collected), and forget it."""
        g, self._dense_grad = self._dense_grad, None
        return g

    def to_module(self) -> nn.Module:
        """The dense module this layer stands for (zeros outside the mask): an ``nn.Linear``."""
        return self.to_linear()

    def to_linear(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.dense_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        lin.weight.requires_grad_(self.values.requires_grad)
        return lin

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise SparseflowError(f"SparseTrainLinear takes inputs of {self.in_features} features, got shape "
                                  f"{tuple(x.shape)}")
        lead = x.shape[:-1]
        y = _SparseMatmul.apply(x.reshape(-1, self.in_features), self.values, self)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        nnz = self.values.numel()
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}, "
                f"density={nnz / (self.in_features * self.out_features):.4f}, bias={self.bias is not None}")


def _dense_state(module: SparseTrainLinear, state: dict[str, Any], prefix: str, _meta: Any) -> None:
    """state_dict hook: ``weight`` (dense, zeros outside the mask) in place of ``values``, as nn.Linear has it."""
    values = state.pop(prefix + "values", None)
    if values is None:
        return
    weight = module.scatter(values)
    entries = list(state.items())
    state.clear()  # keep nn.Linear's order: weight before bias
    for k, v in entries:
        if k == prefix + "bias":
            state[prefix + "weight"] = weight
        state[k] = v
    if prefix + "weight" not in state:
        state[prefix + "weight"] = weight


def _load_dense(module: SparseTrainLinear, state: dict[str, Any], prefix: str, _meta: Any, _strict: bool,
                _missing: list[str], _unexpected: list[str], errors: list[str]) -> None:
    """load_state_dict pre-hook: a dense ``weight`` (as nn.Linear's) becomes ``values`` at the layer's mask."""
    key = prefix + "weight"
    if key not in state:
        return
    weight = state.pop(key)
    shape = module.weight_shape
    if tuple(weight.shape) != shape:
        errors.append(f"size mismatch for {key}: copying a param with shape {tuple(weight.shape)}, the layer has "
                      f"shape {shape}")
        return
    mask = module.mask.to(weight.device)
    if bool((weight != 0).logical_and(~mask).any()):
        errors.append(f"{key} has nonzero weights outside the layer's mask ({module.nnz} kept): load the sparsity "
                      "method's state first (method.load_state_dict), which sets the mask the weights were saved with")
        return
    state[prefix + "values"] = module.gather(weight)


def sparse_linear_(model: nn.Module, mask: dict[str, Tensor]) -> dict[str, SparseTrainLinear]:
    """Replace, in place, every ``nn.Linear`` whose weight ``mask`` names (``"<module>.weight"``) by a
    :class:`SparseTrainLinear` holding its kept weights; returns {module name: new layer}. Build the optimizer
    after this call (the parameters change), or let a method do both: ``method.prepare(model, optimizer,
    execution="sparse")``."""
    done = {}
    for key, m in mask.items():
        name = key.removesuffix(".weight")
        if name == key:
            raise MaskError(f"mask key {key!r} does not name a weight ('<module>.weight')")
        module = model.get_submodule(name)
        if type(module) is not nn.Linear:
            raise SparseflowError(f"{name!r} is a {type(module).__name__}; sparse execution covers nn.Linear")
        layer = SparseTrainLinear.from_linear(module, m)
        replace_module(model, name, layer)
        done[name] = layer
    return done


def dense_equivalent(model: nn.Module) -> nn.Module:
    """``model`` itself when it has no :class:`SparseTrainLinear`; else a copy in which each is the ``nn.Linear``
    (or 1x1 ``nn.Conv2d``) it stands for (zeros outside the mask), for code that reads ``module.weight``
    (analysis, export)."""
    if not any(isinstance(m, SparseTrainLinear) for m in model.modules()):
        return model
    copy = __import__("copy").deepcopy(model)
    for name, m in list(copy.named_modules()):
        if isinstance(m, SparseTrainLinear):
            replace_module(copy, name, m.to_module())
    return copy


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class SparseTrainConv1x1(SparseTrainLinear):
    """A 1x1 ``nn.Conv2d`` (one group, no padding) in sparse execution: the product over channels at every
    output position is a :class:`SparseTrainLinear` product, with the rows the positions of the batch.

    ``weight_shape`` is the convolution's ``(out, in, 1, 1)``: masks, ``state_dict`` and :meth:`to_module` speak
    the convolution's shapes. A stride takes every ``stride``-th position, as the convolution does.
    """

    def __init__(self, mask: Tensor, values: Tensor | None = None, bias: Tensor | None = None,
                 stride: tuple[int, int] = (1, 1)) -> None:
        if not isinstance(mask, Tensor) or mask.dim() != 4 or tuple(mask.shape[2:]) != (1, 1):
            raise MaskError(f"SparseTrainConv1x1 needs a 4-D bool mask (out, in, 1, 1), got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
        super().__init__(mask.reshape(mask.shape[0], mask.shape[1]), values, bias)
        self.stride = (int(stride[0]), int(stride[1]))

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features, 1, 1)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mask: Tensor) -> SparseTrainConv1x1:
        """The layer holding ``conv``'s weights at ``mask`` (and its bias), on ``conv``'s device and dtype."""
        if not conv1x1_eligible(conv):
            raise SparseflowError(f"{conv} is not a 1x1 Conv2d with one group and no padding; only those run in "
                                  "sparse execution")
        if tuple(mask.shape) != tuple(conv.weight.shape):
            raise MaskError(f"mask of shape {tuple(mask.shape)} for a weight of shape {tuple(conv.weight.shape)}")
        mask = mask.detach().to(torch.bool).cpu()
        w = conv.weight.detach()
        layer = cls(mask, w.cpu()[mask], None if conv.bias is None else conv.bias.detach().cpu(), conv.stride)
        layer.values.requires_grad_(conv.weight.requires_grad)
        return layer.to(device=w.device, dtype=w.dtype)

    def to_module(self) -> nn.Conv2d:
        conv = nn.Conv2d(self.in_features, self.out_features, 1, stride=self.stride, bias=self.bias is not None,
                         device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        conv.weight.requires_grad_(self.values.requires_grad)
        return conv

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_features:
            raise SparseflowError(f"SparseTrainConv1x1 takes (N, {self.in_features}, H, W) inputs, got shape "
                                  f"{tuple(x.shape)}")
        if self.stride != (1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", stride={self.stride}" if self.stride != (1, 1) else "")


def conv1x1_eligible(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution sparse execution takes: a plain 1x1 ``nn.Conv2d``, one group, no
    padding (any stride)."""
    return (type(module) is nn.Conv2d and module.kernel_size == (1, 1) and module.groups == 1
            and module.padding == (0, 0))


class SparseTrainConv1D(SparseTrainLinear):
    """Hugging Face's ``Conv1D`` (the projections of GPT-2 and its family) in sparse execution: a Linear layer
    whose weight is stored transposed, ``(in, out)``. Masks, ``state_dict`` and :meth:`to_module` speak that
    layout; the kept values are held in the ``(out, in)`` order every sparse layer uses."""

    def __init__(self, mask: Tensor, values: Tensor | None = None, bias: Tensor | None = None) -> None:
        if not isinstance(mask, Tensor) or mask.dim() != 2:
            raise MaskError(f"SparseTrainConv1D needs a 2-D bool mask (in, out), got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
        super().__init__(mask.t().contiguous(), values, bias)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.in_features, self.out_features)

    def _weight_view(self, t: Tensor) -> Tensor:
        return t.reshape(self.out_features, self.in_features).t().contiguous()

    def _out_in(self, w: Tensor) -> Tensor:
        return w.reshape(self.in_features, self.out_features).t()

    @classmethod
    def from_conv1d(cls, conv: nn.Module, mask: Tensor) -> SparseTrainConv1D:
        """The layer holding a ``Conv1D``'s weights at ``mask`` (``(in, out)``, as its weight) and its bias."""
        w = conv.weight.detach()
        if tuple(mask.shape) != tuple(w.shape):
            raise MaskError(f"mask of shape {tuple(mask.shape)} for a weight of shape {tuple(w.shape)}")
        mask = mask.detach().to(torch.bool).cpu()
        bias = getattr(conv, "bias", None)
        layer = cls(mask, w.cpu().t()[mask.t()], None if bias is None else bias.detach().cpu())
        layer.values.requires_grad_(conv.weight.requires_grad)
        return layer.to(device=w.device, dtype=w.dtype)

    def to_module(self) -> nn.Module:
        from transformers.pytorch_utils import Conv1D

        conv = Conv1D(self.out_features, self.in_features).to(device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
            else:  # Conv1D always has a bias; a layer without one stands for a zero bias
                conv.bias.zero_()
        conv.weight.requires_grad_(self.values.requires_grad)
        return conv


HF_CONV1D = "transformers.pytorch_utils.Conv1D"


def conv1d_eligible(module: nn.Module) -> bool:
    """Whether ``module`` is Hugging Face's ``Conv1D`` itself (not a subclass, whose forward may differ)."""
    return f"{type(module).__module__}.{type(module).__qualname__}" == HF_CONV1D


def sparse_module(module: nn.Module, mask: Tensor) -> SparseTrainLinear:
    """The sparse-execution layer standing for ``module``: an ``nn.Linear``, an eligible 1x1 ``nn.Conv2d`` or
    Hugging Face's ``Conv1D``."""
    if type(module) is nn.Linear:
        return SparseTrainLinear.from_linear(module, mask)
    if conv1x1_eligible(module):
        return SparseTrainConv1x1.from_conv(module, mask)  # type: ignore[arg-type]
    if conv1d_eligible(module):
        return SparseTrainConv1D.from_conv1d(module, mask)
    raise SparseflowError(f"a {type(module).__name__} has no sparse execution; it covers nn.Linear, 1x1 "
                          "nn.Conv2d (one group, no padding) and Hugging Face's Conv1D")
