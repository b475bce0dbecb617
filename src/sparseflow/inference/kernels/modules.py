"""Inference modules that run the sparse kernels: ``SparseLinear`` and ``SparseConv2d``.

Each holds its weight in CSR (``CsrWeight``) and a per-batch-size plan: a tuple of ``Choice`` values,
one per measured batch size, each saying which kernel won there (dense, the compiled CSR kernel with
its instruction set and register tile, or torch's CSR). A call with batch B follows the choice of the
largest measured batch size <= B (the smallest one below all of them). A module whose plan contains a
dense choice also keeps the dense weight, so that it is never slower than dense where dense won.
Convolutions become the same product: 1x1 convolutions over pixels, k x k through ``F.unfold``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparseflow.errors import SparseflowError
from sparseflow.inference.kernels import CsrWeight, Isa, spmm_checked_inputs, torch_chunk_spmm

__all__ = ["Choice", "Kernel", "SparseConv2d", "SparseLinear"]


class Kernel(enum.Enum):
    DENSE = "dense"
    CSR = "csr"              # the compiled extension
    TORCH_CSR = "torch-csr"  # torch.sparse_csr with int32 indices, chunked batch (fallback)


@dataclass(frozen=True)
class Choice:
    """What runs at ``batch`` rows, with the measured times (ms; None when chosen by the cost model)."""

    batch: int
    kernel: Kernel
    isa: Isa | None = None
    tile: int = 0
    dense_ms: float | None = None
    sparse_ms: float | None = None


class SparseLinear(nn.Module):
    """``y = x @ W.T + b`` with W sparse; accepts [..., in_features] fp32 CPU inputs like nn.Linear."""

    def __init__(self, csr: CsrWeight, bias: torch.Tensor | None, plan: tuple[Choice, ...],
                 dense_weight: torch.Tensor | None = None) -> None:
        super().__init__()
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
        self._torch_csr: torch.Tensor | None = None  # built on first use

    @property
    def csr(self) -> CsrWeight:
        # rebuilt from the buffers each time so that load_state_dict / .to() can never leave it stale
        return CsrWeight(self.rowptr, self.col, self.values, (self.out_features, self.in_features))

    def choice(self, batch: int) -> Choice:
        pick = self.plan[0]
        for c in self.plan:
            if c.batch <= batch:
                pick = c
        return pick

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise SparseflowError(f"input of shape {tuple(x.shape)} does not fit a layer with "
                                  f"in_features={self.in_features}: the last dimension must be {self.in_features}")
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise SparseflowError(f"converted layers run fp32 on CPU, got {x.dtype} on {x.device}; "
                                  "call x.float().cpu() or keep the dense model for other dtypes/devices")
        if x.requires_grad and torch.is_grad_enabled():
            raise SparseflowError("converted layers are inference-only (no autograd through the sparse kernels); "
                                  "run them under torch.no_grad() / torch.inference_mode() or train the dense model")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        c = self.choice(x2.shape[0])
        if c.kernel is Kernel.DENSE:
            y = F.linear(x2, self.dense_weight, self.bias)
        elif c.kernel is Kernel.CSR:
            # shape, dtype and device were checked above; the plan's isa was checked by convert
            y = spmm_checked_inputs(self.csr, x2.contiguous(), self.bias, c.isa, c.tile)
        else:
            if self._torch_csr is None:
                self._torch_csr = self.csr.torch_csr()
            y = torch_chunk_spmm(self._torch_csr, x2, self.bias)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        density = self.csr.nnz / max(1, self.in_features * self.out_features)
        plan = ", ".join(f"B>={c.batch}:{c.kernel.value}" + (f"/{c.isa.name}/K{c.tile}" if c.isa is not None else "")
                         for c in self.plan)
        return (f"in_features={self.in_features}, out_features={self.out_features}, density={density:.4f}, "
                f"index_bytes={self.csr.index_bytes}, plan=[{plan}]")


class SparseConv2d(nn.Module):
    """A groups=1 Conv2d as a SparseLinear over pixels (1x1) or over unfolded k x k patches."""

    def __init__(self, conv: nn.Conv2d, linear: SparseLinear) -> None:
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = tuple(conv.kernel_size), tuple(conv.stride)
        self.padding, self.dilation = tuple(conv.padding), tuple(conv.dilation)
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise SparseflowError(f"input of shape {tuple(x.shape)} does not fit a conv layer with "
                                  f"in_channels={self.in_channels}: need [N, {self.in_channels}, H, W]")
        n, _, h, w = x.shape
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        if self.kernel_size == (1, 1) and self.padding == (0, 0):
            xs = x[:, :, ::self.stride[0], ::self.stride[1]]
            rows = xs.permute(0, 2, 3, 1).reshape(-1, self.in_channels)       # [N*OH*OW, C]
        else:
            cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [N, C*kh*kw, L]
            rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])              # [N*L, C*kh*kw]
        y = self.linear(rows)                                                   # [N*OH*OW, out]
        return y.reshape(n, oh, ow, self.out_channels).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, " \
               f"padding={self.padding}, dilation={self.dilation}"
