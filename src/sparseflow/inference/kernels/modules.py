"""Inference modules that run the sparse kernels: ``SparseLinear`` (nn.Linear and the GPT-2 family's ``Conv1D``).

Each holds its weight in CSR (``CsrWeight``) and a per-batch-size plan: a tuple of ``Choice`` values,
one per measured batch size, each saying which kernel won there (dense, the compiled CSR kernel with
its instruction set and register tile, the compiled SELL-8 kernel for batch 1, or torch's CSR). A module
whose plan uses SELL-8 also keeps that layout (``SellWeight``: about 6 more bytes per nonzero). A call with batch B follows the choice of the
largest measured batch size <= B (the smallest one below all of them). A module whose plan contains a
dense choice also keeps the dense weight, so that it is never slower than dense where dense won.

A converted layer has no dense ``weight`` parameter, yet model code often reads one (T5 casts its input to
``wo.weight.dtype``, ViT to its patch projection's, torch's transformer fast paths gather every projection
weight). ``weight`` is therefore a :class:`StubWeight`: the dense weight's shape, dtype and device, no values.
Reading those works; any computation with it raises, so nothing can silently run on a stand-in. Torch's fused
attention and encoder-layer fast paths see a tensor subclass (``has_torch_function``) and take their plain
path, which calls the converted modules.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparseflow.errors import SparseflowError
from sparseflow.inference.kernels import CsrWeight, Isa, SellWeight, _spmm, sell_from_csr, torch_chunk_spmm

__all__ = ["Choice", "Kernel", "SparseLinear", "StubWeight"]


class Kernel(enum.Enum):
    DENSE = "dense"
    CSR = "csr"              # the compiled extension
    SELL = "sell"            # the compiled extension, SELL-8 layout (one pass per batch row: batch 1)
    TORCH_CSR = "torch-csr"  # torch.sparse_csr with int32 indices, chunked batch (fallback)


@dataclass(frozen=True)
class Choice:
    """What runs at ``batch`` rows, with the measured times (ms; None when chosen by the cost model).

    ``tile``: for ``Kernel.CSR`` the register tile K (vectors of batch columns; 0: row-at-a-time dot products);
    for ``Kernel.SELL`` how x is fetched: 0 with the gather instruction, 1 with scalar loads."""

    batch: int
    kernel: Kernel
    isa: Isa | None = None
    tile: int = 0
    dense_ms: float | None = None
    sparse_ms: float | None = None

    @property
    def label(self) -> str:
        """Short name of the kernel, e.g. ``csr/AVX2/K4``, ``sell/AVX2/loads``, ``dense``."""
        if self.isa is None:
            return self.kernel.value
        if self.kernel is Kernel.SELL:
            return f"sell/{self.isa.name}/{'loads' if self.tile else 'gather'}"
        return f"{self.kernel.value}/{self.isa.name}/K{self.tile}"


# what code may read from a StubWeight: metadata, never values
_READABLE = frozenset({
    torch.Tensor.dtype.__get__, torch.Tensor.shape.__get__, torch.Tensor.device.__get__, torch.Tensor.ndim.__get__,
    torch.Tensor.layout.__get__, torch.Tensor.requires_grad.__get__, torch.Tensor.is_cuda.__get__,
    torch.Tensor.is_sparse.__get__, torch.Tensor.is_nested.__get__, torch.Tensor.is_meta.__get__,
    torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel, torch.Tensor.is_floating_point,
    torch.Tensor.element_size, torch.Tensor.__len__,
})


class StubWeight(torch.Tensor):
    """Stands for a converted layer's dense weight: its shape, dtype and device, no values (one zero, expanded).

    Metadata reads (``.dtype``, ``.shape``, ``.device``, ``.size()``, ``.dim()``, ...) work; everything else
    raises :class:`SparseflowError`, so code that computes with a layer's weight fails loudly instead of silently
    using a stand-in.
    """

    @staticmethod
    def of(shape: tuple[int, ...]) -> "StubWeight":
        return torch.zeros(()).expand(*shape).as_subclass(StubWeight)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _READABLE:
            return super().__torch_function__(func, types, args, kwargs or {})
        name = getattr(func, "__name__", repr(func))
        raise SparseflowError(f"{name}() on the weight of a converted layer: sf.convert keeps its weight in CSR and "
                              "the `weight` attribute only describes it (shape, dtype, device). Run this code on the "
                              "dense model, or call sf.deconvert(model) to get dense layers back")

    def __repr__(self) -> str:  # Tensor.__repr__ would read the values
        return f"StubWeight(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"


class SparseLinear(nn.Module):
    """``y = x @ W.T + b`` with W sparse; accepts [..., in_features] fp32 CPU inputs like nn.Linear.

    ``kind`` names the layer it replaces: ``"Linear"``, or ``"Conv1D"`` (Hugging Face, weight stored (in, out):
    the CSR holds its transpose, so the product is the same) -- ``weight`` and ``sf.deconvert`` follow it.
    """

    KINDS = ("Linear", "Conv1D")

    def __init__(self, csr: CsrWeight, bias: torch.Tensor | None, plan: tuple[Choice, ...],
                 dense_weight: torch.Tensor | None = None, kind: str = "Linear", sell: SellWeight | None = None) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise SparseflowError(f"SparseLinear kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind
        if not plan or list(plan) != sorted(plan, key=lambda c: c.batch):
            raise SparseflowError(f"plan must be a non-empty tuple sorted by batch size, got {plan}")
        if any(c.kernel is Kernel.DENSE for c in plan) and dense_weight is None:
            raise SparseflowError("a plan with dense choices needs the dense weight")
        self.out_features, self.in_features = csr.shape
        self.plan = plan
        self.register_buffer("rowptr", csr.rowptr)
        self.register_buffer("col", csr.col)
        self.register_buffer("values", csr.values)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous().clone())
        self.register_buffer("dense_weight", None if dense_weight is None else dense_weight.detach().float().contiguous().clone())
        if any(c.kernel is Kernel.SELL for c in plan):
            sell = sell_from_csr(csr) if sell is None else sell
            if sell.shape != csr.shape:
                raise SparseflowError(f"SELL layout of shape {sell.shape} given for a CSR weight of shape {csr.shape}")
        else:
            sell = None
        for name in ("chunk_ptr", "col", "values", "rows"):
            self.register_buffer(f"sell_{name}", None if sell is None else getattr(sell, name))
        self._torch_csr: torch.Tensor | None = None  # built on first use

    @property
    def weight(self) -> StubWeight:
        shape = (self.out_features, self.in_features)
        return StubWeight.of(shape[::-1] if self.kind == "Conv1D" else shape)

    @property
    def csr(self) -> CsrWeight:
        # rebuilt from the buffers each time so that load_state_dict / .to() can never leave it stale
        return CsrWeight(self.rowptr, self.col, self.values, (self.out_features, self.in_features))

    @property
    def sell(self) -> SellWeight:
        return SellWeight(self.sell_chunk_ptr, self.sell_col, self.sell_values, self.sell_rows,
                          (self.out_features, self.in_features))

    def choice(self, batch: int) -> Choice:
        pick = self.plan[0]
        for c in self.plan:
            if c.batch <= batch:
                pick = c
        return pick

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the compiled kernels are called directly with the buffers' addresses: a batch-1 call of a small layer
        # costs a few microseconds here, so every Python step on this path counts (attribute reads go through
        # _buffers once, no wrapper objects are built)
        buf = self._buffers
        values = buf["values"]
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise SparseflowError(f"input of shape {tuple(x.shape)} does not fit a layer with "
                                  f"in_features={self.in_features}: the last dimension must be {self.in_features}")
        if x.dtype is not torch.float32 or not x.is_cpu:
            raise SparseflowError(f"converted layers run fp32 on CPU, got {x.dtype} on {x.device}; "
                                  "call x.float().cpu() or keep the dense model for other dtypes/devices")
        if values.dtype is not torch.float32 or not values.is_cpu:  # after model.half() / .to(...)
            raise SparseflowError(f"this converted layer's weights are {values.dtype} on {values.device}; "
                                  "the sparse kernels run fp32 on CPU: call .float().cpu() on the converted model")
        if x.requires_grad and torch.is_grad_enabled():
            raise SparseflowError("converted layers are inference-only (no autograd through the sparse kernels); "
                                  "run them under torch.no_grad() / torch.inference_mode() or train the dense model")
        flat = x.dim() == 2
        x2 = x if flat else x.reshape(-1, self.in_features)
        batch = x2.shape[0]
        c = self.choice(batch)
        kern, bias = c.kernel, buf["bias"]
        if kern is Kernel.DENSE:
            y = F.linear(x2, buf["dense_weight"], bias)
        elif kern is Kernel.CSR or kern is Kernel.SELL:
            # shape, dtype and device were checked above; the plan's isa was checked by convert
            if not x2.is_contiguous():
                x2 = x2.contiguous()
            y = torch.empty(batch, self.out_features, dtype=torch.float32)
            bp = 0 if bias is None else bias.data_ptr()
            if kern is Kernel.CSR:
                col = buf["col"]
                _spmm.spmm(int(c.isa), int(col.dtype is torch.int32), buf["rowptr"].data_ptr(), col.data_ptr(),
                           values.data_ptr(), self.out_features, self.in_features, x2.data_ptr(), batch, y.data_ptr(),
                           bp, torch.get_num_threads(), c.tile, 0)
            else:
                col = buf["sell_col"]
                cp = buf["sell_chunk_ptr"]
                _spmm.spmv_sell(int(c.isa), int(col.dtype is torch.int32), c.tile, cp.data_ptr(), col.data_ptr(),
                                buf["sell_values"].data_ptr(), buf["sell_rows"].data_ptr(), cp.numel() - 1,
                                self.out_features, self.in_features, x2.data_ptr(), batch, y.data_ptr(), bp,
                                torch.get_num_threads())
        else:
            if self._torch_csr is None:
                self._torch_csr = self.csr.torch_csr()
            y = torch_chunk_spmm(self._torch_csr, x2, bias)
        return y if flat else y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        density = self.csr.nnz / max(1, self.in_features * self.out_features)
        plan = ", ".join(f"B>={c.batch}:{c.label}" for c in self.plan)
        kind = "" if self.kind == "Linear" else f"kind={self.kind}, "
        return (f"{kind}in_features={self.in_features}, out_features={self.out_features}, density={density:.4f}, "
                f"index_bytes={self.csr.index_bytes}, plan=[{plan}]")
