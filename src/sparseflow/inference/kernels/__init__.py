"""Sparse x dense kernels for inference: the compiled extension and its pure-PyTorch fallback.

``CsrWeight`` holds a weight matrix W [out, in] in CSR with the narrowest column index that fits
(uint16 when ``in <= 65536``, stored as int16 bits, else int32): at batch 1 the product is bound by
the bytes read per nonzero, 6 instead of 8 (Gale et al. 2020, "Sparse GPU kernels for deep learning",
make the same argument for 16-bit indices). ``spmm(w, x)`` computes ``x @ W.T`` with

* the C++ extension ``_spmm`` (built by ``pip install``), AVX-512 / AVX2 / baseline chosen at run
  time from cpuid, batch 1 as gathered dot products and batch > 1 with register tiles over the
  batch (see impl.h); or
* ``Backend.TORCH``: torch's CSR matmul with int32 indices, the batch cut into chunks of 32 columns
  (MKL's sparse product slows down past ~64 columns). Used when the extension is missing or forced.

``SellWeight`` (``sell_from_csr``) is a second layout of the same matrix for batch 1, SELL-8 (sliced
ELLPACK, Kreutzer et al. 2014): rows sorted by length within windows of ``SELL_WINDOW`` rows, cut into chunks
of 8, each chunk stored column-major and padded to its longest row, so that one vector op handles one nonzero
of 8 rows. It removes the per-row horizontal sum, tail and mispredicted loop exit that dominate short rows.
``spmv_sell`` gathers x with the gather instruction or with scalar loads (``loads=True``); which is faster
depends on the core (AMD Zen 2/3 gather slowly), so ``convert`` measures both.

``sddmm(rowptr, col, dy, x)`` is the training counterpart: ``(dy.T @ x)`` at the stored positions of
a CSR structure only (sampled dense-dense product), i.e. the gradient of W's stored values in
``y = x @ W.T``, in CSR order. The extension packs dy and x into batch panels so that each stored
position is one contiguous dot product, reduced 16 (AVX-512) or 8 (AVX2) positions at a time (see
sddmm.h); ``torch_sddmm`` is the fallback, ``torch.sparse.sampled_addmm`` on the same pattern
(at 10 % density 2.5-4x faster on CPU than the dense ``dy.T @ x`` sliced at the stored positions).
"""

from __future__ import annotations

import enum
import os
import warnings
from dataclasses import dataclass

import torch

from sparseflow.errors import SparseflowError

try:  # the extension is optional: a missing compiler at install time leaves the fallback
    from sparseflow.inference.kernels import _spmm
except ImportError:  # pragma: no cover - depends on the build
    _spmm = None

__all__ = ["Backend", "CsrWeight", "Isa", "SELL_WINDOW", "SellWeight", "available_backend", "best_isa",
           "csr_from_dense", "hardware_isa", "sddmm", "sddmm_tile_for", "sell_from_csr", "spmm", "spmv_sell", "tile_for",
           "torch_chunk_spmm", "torch_sddmm"]

#: Set to "torch" to force the fallback everywhere (tests, comparisons); read at call time.
ENV_FORCE = "SPARSEFLOW_KERNELS"
#: Set to "avx2" or "baseline" to cap the instruction set the kernels choose by default (e.g. to measure the AVX2
#: path on an AVX-512 CPU); read at call time.
ENV_MAX_ISA = "SPARSEFLOW_MAX_ISA"
TORCH_CHUNK = 32
#: Rows sorted by length within windows of this many rows before SELL-8 chunking (the "sigma" of SELL-C-sigma):
#: wide enough that chunks hold rows of near-equal length, narrow enough that output rows stay nearby.
SELL_WINDOW = 256
SELL_C = 8


class Backend(enum.Enum):
    COMPILED = "compiled"
    TORCH = "torch"


class Isa(enum.IntEnum):
    BASELINE = 0
    AVX2 = 1
    AVX512 = 2

    @property
    def width(self) -> int:
        return (1, 8, 16)[self]


def available_backend() -> Backend:
    """COMPILED when the extension loaded and is not disabled by ``SPARSEFLOW_KERNELS=torch``."""
    if _spmm is None or os.environ.get(ENV_FORCE, "").lower() == "torch":
        return Backend.TORCH
    return Backend.COMPILED


def hardware_isa() -> Isa | None:
    """The widest instruction set this CPU and OS run (None: the extension is not built)."""
    return None if _spmm is None else Isa(_spmm.best_isa())


def best_isa() -> Isa | None:
    """The instruction set the kernels use by default: the hardware's, capped by ``SPARSEFLOW_MAX_ISA``."""
    hw = hardware_isa()
    cap = os.environ.get(ENV_MAX_ISA, "").strip()
    if hw is None or not cap:
        return hw
    try:
        return min(hw, Isa[cap.upper()])
    except KeyError:
        raise SparseflowError(f"{ENV_MAX_ISA}={cap!r} is not an instruction set: use one of "
                              f"{', '.join(i.name.lower() for i in Isa)} (or unset it)") from None


@dataclass(frozen=True, eq=False)
class CsrWeight:
    """W [out, in] in CSR: rowptr int32 [out+1], col int16 (uint16 bits) or int32 [nnz], values fp32."""

    rowptr: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def index_bytes(self) -> int:
        return self.col.element_size()

    def to_dense(self) -> torch.Tensor:
        col = self.col.to(torch.int64) & 0xFFFF if self.index_bytes == 2 else self.col.to(torch.int64)
        rows = torch.repeat_interleave(torch.arange(self.shape[0]), self.rowptr.diff().to(torch.int64))
        out = torch.zeros(self.shape, dtype=torch.float32)
        out[rows, col] = self.values
        return out

    def torch_csr(self) -> torch.Tensor:
        """The same matrix as a torch sparse CSR tensor with int32 indices (fallback backend)."""
        col = (self.col.to(torch.int32) & 0xFFFF) if self.index_bytes == 2 else self.col
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.rowptr, col, self.values, self.shape, check_invariants=False)


def csr_from_dense(w: torch.Tensor, *, index_bits: int | None = None) -> CsrWeight:
    """CSR of the nonzeros of a 2-D fp32 tensor; 16-bit indices when the column count allows."""
    if w.dim() != 2:
        raise SparseflowError(f"csr_from_dense needs a 2-D weight, got shape {tuple(w.shape)}")
    if w.dtype != torch.float32:
        raise SparseflowError(f"sparse kernels run fp32 weights, got {w.dtype}; convert the model with .float()")
    rows, cols = w.shape
    nz = w.detach().cpu().contiguous() != 0
    if nz.sum() >= 2**31:
        raise SparseflowError(f"weight of shape {tuple(w.shape)} has >= 2**31 nonzeros; int32 row pointers cannot hold it")
    bits = index_bits if index_bits is not None else (16 if cols <= 2**16 else 32)
    if bits not in (16, 32) or (bits == 16 and cols > 2**16):
        raise SparseflowError(f"index_bits must be 16 (in_features <= 65536) or 32, got {bits} for {cols} columns")
    rowptr = torch.zeros(rows + 1, dtype=torch.int32)
    rowptr[1:] = nz.sum(dim=1).cumsum(0).to(torch.int32)
    col = nz.nonzero()[:, 1]
    col = col.to(torch.int32).to(torch.int16) if bits == 16 else col.to(torch.int32)  # int16 wraps = uint16 bits
    values = w.detach().cpu().contiguous()[nz].to(torch.float32).contiguous()
    return CsrWeight(rowptr.contiguous(), col.contiguous(), values, (rows, cols))


@dataclass(frozen=True, eq=False)
class SellWeight:
    """W [out, in] in SELL-8: ``chunk_ptr`` int32 [chunks+1] (offsets in slots of 8 entries); ``col`` (int16 as
    uint16 bits, or int32) and ``values`` fp32 [8 * slots], slot j of chunk c at entries ``8*(chunk_ptr[c]+j)``
    onwards, one per lane; ``rows`` int32 [8 * chunks], the output row of each lane (-1 where a chunk has fewer
    than 8 rows). Padding entries hold value 0 at a column of the lane's own row."""

    chunk_ptr: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    rows: torch.Tensor
    shape: tuple[int, int]

    @property
    def chunks(self) -> int:
        return int(self.chunk_ptr.numel()) - 1

    @property
    def padding(self) -> float:
        """Stored entries per nonzero (1.0: no padding)."""
        nnz = int((self.values != 0).sum())
        return self.values.numel() / max(1, nnz)

    def to_dense(self) -> torch.Tensor:
        col = self.col.to(torch.int64) & 0xFFFF if self.col.dtype == torch.int16 else self.col.to(torch.int64)
        slots = self.chunk_ptr.diff().to(torch.int64)
        lane_rows = self.rows.view(-1, SELL_C).repeat_interleave(slots, dim=0).reshape(-1).to(torch.int64)
        out = torch.zeros(self.shape, dtype=torch.float32)
        real = lane_rows >= 0
        out.index_put_((lane_rows[real], col[real]), self.values[real], accumulate=True)
        return out


def sell_from_csr(w: CsrWeight, window: int = SELL_WINDOW) -> SellWeight:
    """The SELL-8 layout of a CSR matrix (rows sorted by length, longest first, within windows of ``window``)."""
    rows_n, _ = w.shape
    if window < 1:
        raise SparseflowError(f"SELL window must be a positive number of rows, got {window}")
    length = w.rowptr.diff().to(torch.int64)
    r = torch.arange(rows_n)
    # longest first within each window; stable, so equal lengths keep their order
    key = (r // window) * (int(length.max()) + 1 if rows_n else 1) + (length.max() - length if rows_n else length)
    order = torch.sort(key, stable=True).indices
    nch = (rows_n + SELL_C - 1) // SELL_C
    lanes = torch.full((nch * SELL_C,), -1, dtype=torch.int64)
    lanes[:rows_n] = order
    lane_len = torch.zeros(nch * SELL_C, dtype=torch.int64)
    lane_len[:rows_n] = length[order]
    slots = lane_len.view(nch, SELL_C).amax(dim=1) if nch else torch.zeros(0, dtype=torch.int64)
    chunk_ptr = torch.zeros(nch + 1, dtype=torch.int64)
    chunk_ptr[1:] = slots.cumsum(0)
    total = int(chunk_ptr[-1]) * SELL_C
    if total >= 2**31:
        raise SparseflowError(f"weight of shape {tuple(w.shape)} needs {total} SELL entries; int32 offsets cannot hold it")
    col64 = w.col.to(torch.int64) & 0xFFFF if w.index_bytes == 2 else w.col.to(torch.int64)
    # padding: value 0 at the column of the lane's last nonzero (column 0 for an empty row)
    start = w.rowptr.to(torch.int64)
    last_col = torch.zeros(nch * SELL_C, dtype=torch.int64)
    has = lane_len > 0
    last_col[has] = col64[start[lanes[has]] + lane_len[has] - 1]
    col = last_col.view(nch, SELL_C).repeat_interleave(slots, dim=0).reshape(-1)
    values = torch.zeros(total, dtype=torch.float32)
    if w.nnz:
        row_of = torch.repeat_interleave(r, length)
        j = torch.arange(w.nnz) - start[row_of]
        lane = torch.empty(rows_n, dtype=torch.int64)
        lane[order] = torch.arange(rows_n)
        li = lane[row_of]
        pos = (chunk_ptr[li // SELL_C] + j) * SELL_C + li % SELL_C
        col[pos] = col64
        values[pos] = w.values
    col = col.to(torch.int32).to(torch.int16) if w.index_bytes == 2 else col.to(torch.int32)
    return SellWeight(chunk_ptr.to(torch.int32), col.contiguous(), values, lanes.to(torch.int32), w.shape)


def spmv_sell(w: SellWeight, x: torch.Tensor, bias: torch.Tensor | None = None, *, isa: Isa | None = None,
              loads: bool = True, threads: int | None = None, check: bool = True) -> torch.Tensor:
    """``x @ W.T + bias`` from the SELL-8 layout (one pass over W per row of x: made for batch 1).

    ``loads``: fetch x by scalar loads (else the gather instruction; the baseline ISA always loads).
    ``check``: validate x and bias (SparseLinear checks them itself)."""
    if _spmm is None:
        raise SparseflowError("the compiled sparse kernels are not built here; reinstall with a C++ compiler "
                              "(pip install -e .) or use the torch fallback (Backend.TORCH)")
    rows, cols = w.shape
    best = Isa(_spmm.best_isa())
    use = best_isa() if isa is None else Isa(isa)
    if check:
        if x.dim() != 2 or x.shape[1] != cols:
            raise SparseflowError(f"input of shape {tuple(x.shape)} does not fit weight {tuple(w.shape)}: need [batch, {cols}]")
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise SparseflowError(f"sparse kernels take fp32 CPU inputs, got {x.dtype} on {x.device}")
        if use > best:
            raise SparseflowError(f"instruction set {use.name} is not supported by this CPU (best: {best.name})")
        if bias is not None and (bias.shape != (rows,) or bias.dtype != torch.float32 or not bias.is_contiguous()):
            raise SparseflowError(f"bias must be a contiguous fp32 vector of {rows}, got {tuple(bias.shape)} {bias.dtype}")
        x = x.contiguous()
    batch = x.shape[0]
    y = torch.empty(batch, rows, dtype=torch.float32)
    nt = torch.get_num_threads() if threads is None else threads
    _spmm.spmv_sell(int(use), int(w.col.dtype == torch.int32), int(loads), w.chunk_ptr.data_ptr(), w.col.data_ptr(),
                    w.values.data_ptr(), w.rows.data_ptr(), w.chunks, rows, cols, x.data_ptr(), batch, y.data_ptr(),
                    0 if bias is None else bias.data_ptr(), nt)
    return y


def tile_for(batch: int, isa: Isa) -> int:
    """Register tile K (vectors per tile) for a batch: 0 means row-at-a-time dot products."""
    if batch < 2:
        return 0
    k = 1
    while k * isa.width < batch and k < (8 if isa.width < 16 else 4):
        k *= 2
    return k


def spmm(w: CsrWeight, x: torch.Tensor, bias: torch.Tensor | None = None, *, isa: Isa | None = None,
         threads: int | None = None, tile: int | None = None, perm: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` with the compiled kernels; x [B, in] fp32 CPU, returns [B, out].

    ``perm``: an int32 [nnz] tensor; the value of W's stored position j is then ``w.values[perm[j]]`` (a
    matrix whose values are kept in another order, e.g. the transpose of a sparse training layer's weight,
    multiplied without gathering its values first)."""
    if _spmm is None:
        raise SparseflowError("the compiled sparse kernels are not built here; reinstall with a C++ compiler "
                              "(pip install -e .) or use the torch fallback (Backend.TORCH)")
    rows, cols = w.shape
    if x.dim() != 2 or x.shape[1] != cols:
        raise SparseflowError(f"input of shape {tuple(x.shape)} does not fit weight {tuple(w.shape)}: need [batch, {cols}]")
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise SparseflowError(f"sparse kernels take fp32 CPU inputs, got {x.dtype} on {x.device}")
    x = x.contiguous()
    best = Isa(_spmm.best_isa())
    use = best_isa() if isa is None else Isa(isa)
    if use > best:
        raise SparseflowError(f"instruction set {use.name} is not supported by this CPU (best: {best.name})")
    if bias is not None and (bias.shape != (rows,) or bias.dtype != torch.float32 or not bias.is_contiguous()):
        raise SparseflowError(f"bias must be a contiguous fp32 vector of {rows}, got {tuple(bias.shape)} {bias.dtype}")
    if perm is not None:
        nnz = int(w.rowptr[-1])
        if perm.dtype != torch.int32 or perm.shape != (nnz,) or not perm.is_contiguous() or perm.device.type != "cpu":
            raise SparseflowError(f"perm must be a contiguous int32 CPU vector of {nnz} (one per stored position), "
                                  f"got {perm.dtype} of shape {tuple(perm.shape)}")
        if nnz and (int(perm.min()) < 0 or int(perm.max()) >= w.values.numel()):
            raise SparseflowError(f"perm indexes outside the {w.values.numel()} values: its entries span "
                                  f"[{int(perm.min())}, {int(perm.max())}]")
    batch = x.shape[0]
    y = torch.empty(batch, rows, dtype=torch.float32)
    k = tile_for(batch, use) if tile is None else tile
    nt = torch.get_num_threads() if threads is None else threads
    _spmm.spmm(int(use), int(w.index_bytes == 4), w.rowptr.data_ptr(), w.col.data_ptr(), w.values.data_ptr(),
               rows, cols, x.data_ptr(), batch, y.data_ptr(), 0 if bias is None else bias.data_ptr(), nt, k,
               0 if perm is None else perm.data_ptr())
    return y


def spmm_checked_inputs(w: CsrWeight, x: torch.Tensor, bias: torch.Tensor | None, isa: Isa, tile: int,
                        perm: torch.Tensor | None = None) -> torch.Tensor:
    """``spmm`` for callers that already checked x ([B, in] fp32 contiguous CPU), bias, isa and perm
    (SparseLinear, the sparse training layer)."""
    batch, rows = x.shape[0], w.shape[0]
    y = torch.empty(batch, rows, dtype=torch.float32)
    _spmm.spmm(int(isa), int(w.index_bytes == 4), w.rowptr.data_ptr(), w.col.data_ptr(), w.values.data_ptr(),
               rows, w.shape[1], x.data_ptr(), batch, y.data_ptr(), 0 if bias is None else bias.data_ptr(),
               torch.get_num_threads(), tile, 0 if perm is None else perm.data_ptr())
    return y


def torch_chunk_spmm(w_csr: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None,
                     chunk: int = TORCH_CHUNK) -> torch.Tensor:
    """Fallback ``x @ W.T + bias`` with a torch CSR tensor, batch cut into ``chunk`` columns."""
    xt = x.t()
    parts = [torch.mm(w_csr, xt[:, i:i + chunk].contiguous()) for i in range(0, max(x.shape[0], 1), chunk)]
    y = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).t()
    return y + bias if bias is not None else y.contiguous()


def sddmm_tile_for(batch: int, isa: Isa) -> int:
    """Panel width K (vectors of batch columns per panel) for ``sddmm``; 0: no packing, gathers.

    Batch <= 2 with vector ISAs: gathers straight from x beat padding the batch to a full vector.
    Otherwise the narrowest panel that holds the batch, at most 4 vectors with AVX-512 (16
    accumulators + K registers of dy) and 8 otherwise; larger batches take several panels."""
    if batch <= 2 and isa >= Isa.AVX2:
        return 0
    k, kmax = 1, (4 if isa == Isa.AVX512 else 8)
    while k * isa.width < batch and k < kmax:
        k *= 2
    return k


def _sddmm_inputs(rowptr: torch.Tensor, col: torch.Tensor, dy: torch.Tensor, x: torch.Tensor,
                  out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Checked dtypes, devices and shapes for ``sddmm``; returns contiguous dy, x and nnz."""
    def what(t) -> str:
        return f"{t.dtype} of shape {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__

    if not isinstance(rowptr, torch.Tensor) or rowptr.dtype != torch.int32 or rowptr.dim() != 1 or rowptr.numel() < 1:
        raise SparseflowError("sddmm: rowptr must be a 1-D int32 tensor of out_features + 1 row offsets, "
                              f"got {what(rowptr)}")
    if not isinstance(col, torch.Tensor) or col.dtype not in (torch.int16, torch.int32) or col.dim() != 1:
        raise SparseflowError("sddmm: col must be a 1-D int16 (uint16 bits) or int32 tensor of column indices, "
                              f"got {what(col)}")
    for name, t in (("dy", dy), ("x", x)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.device.type != "cpu":
            raise SparseflowError(f"sddmm takes fp32 CPU tensors, got {name} {what(t)}")
        if t.dim() != 2:
            raise SparseflowError(f"sddmm: {name} must be 2-D [batch, features], got shape {tuple(t.shape)}")
    if rowptr.device.type != "cpu" or col.device.type != "cpu":
        raise SparseflowError(f"sddmm takes CPU tensors, got rowptr on {rowptr.device} and col on {col.device}")
    rows = rowptr.numel() - 1
    if dy.shape[0] != x.shape[0]:
        raise SparseflowError(f"sddmm: dy {tuple(dy.shape)} and x {tuple(x.shape)} have different batch sizes")
    if dy.shape[1] != rows:
        raise SparseflowError(f"sddmm: dy of shape {tuple(dy.shape)} does not fit a structure of {rows} rows: "
                              f"need [batch, {rows}]")
    nnz = col.numel()
    if out is not None and (out.dtype != torch.float32 or out.device.type != "cpu" or out.shape != (nnz,)
                            or not out.is_contiguous()):
        raise SparseflowError(f"sddmm: out must be a contiguous fp32 CPU vector of {nnz} (one per stored position), "
                              f"got {out.dtype} of shape {tuple(out.shape)}")
    return dy.contiguous(), x.contiguous(), nnz


def _torch_check_structure(rowptr: torch.Tensor, col: torch.Tensor, ncols: int) -> str | None:
    """What ``_spmm.csr_check`` reports, with torch ops (fallback without the extension)."""
    if int(rowptr[0]) != 0:
        return f"rowptr[0] is {int(rowptr[0])}, not 0"
    steps = rowptr.diff()
    if steps.numel() and bool((steps < 0).any()):
        r = int((steps < 0).nonzero()[0, 0])
        return f"rowptr decreases at row {r} ({int(rowptr[r])} -> {int(rowptr[r + 1])})"
    if int(rowptr[-1]) != col.numel():
        return f"rowptr[-1] is {int(rowptr[-1])} but there are {col.numel()} column indices"
    c = col.to(torch.int64) & 0xFFFF if col.dtype == torch.int16 else col.to(torch.int64)
    bad = (c < 0) | (c >= ncols)
    if c.numel() and bool(bad.any()):
        j = int(bad.nonzero()[0, 0])
        return f"column index {int(c[j])} at position {j} is outside [0, {ncols})"
    return None


def torch_sddmm(rowptr: torch.Tensor, col: torch.Tensor, dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Fallback of ``sddmm`` (unchecked inputs): ``torch.sparse.sampled_addmm`` on the CSR pattern."""
    rows, cols = rowptr.numel() - 1, x.shape[1]
    col32 = (col.to(torch.int32) & 0xFFFF) if col.dtype == torch.int16 else col
    if col.numel() == 0 or dy.shape[0] == 0:
        return torch.zeros(col.numel(), dtype=torch.float32)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(rowptr, col32, torch.zeros(col.numel(), dtype=torch.float32), (rows, cols),
                                          check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, dy.t(), x, beta=0.0).values()


def sddmm(rowptr: torch.Tensor, col: torch.Tensor, dy: torch.Tensor, x: torch.Tensor, *,
          out: torch.Tensor | None = None, isa: Isa | None = None, threads: int | None = None,
          tile: int | None = None, check: bool = True) -> torch.Tensor:
    """``(dy.T @ x)`` at the stored positions of a CSR structure, in CSR order: returns g [nnz] with
    ``g[k] = sum_b dy[b, row(k)] * x[b, col(k)]``.

    For a sparse Linear ``y = x @ W.T`` with W in CSR (``CsrWeight``), ``sddmm(w.rowptr, w.col, dy, x)``
    is the gradient of ``w.values``. rowptr: int32 [out+1]; col: int16 (uint16 bits) or int32 [nnz];
    dy: fp32 [B, out]; x: fp32 [B, in] (CPU). ``out``: an fp32 [nnz] tensor to write into.
    ``isa``/``tile``: pick the compiled kernel's instruction set and panel width (``sddmm_tile_for``);
    either one requires the extension. Without them the fallback ``torch_sddmm`` runs when the extension
    is missing or ``SPARSEFLOW_KERNELS=torch``. ``check``: verify that rowptr is monotone from 0 to nnz
    and every column index is below in_features (one pass over col; the kernel reads x at those
    indices unchecked).
    """
    dy, x, nnz = _sddmm_inputs(rowptr, col, dy, x, out)
    rows, cols, batch = dy.shape[1], x.shape[1], x.shape[0]
    rowptr, col = rowptr.contiguous(), col.contiguous()
    compiled = isa is not None or tile is not None or available_backend() is Backend.COMPILED
    if compiled and _spmm is None:
        raise SparseflowError("the compiled sparse kernels are not built here; reinstall with a C++ compiler "
                              "(pip install -e .) or call sddmm without isa/tile to use the torch fallback")
    if check:
        if compiled:
            fault = _spmm.csr_check(int(col.dtype == torch.int32), rowptr.data_ptr(), col.data_ptr(), rows, cols, nnz)
        else:
            fault = _torch_check_structure(rowptr, col, cols)
        if fault is not None:
            raise SparseflowError(f"sddmm: invalid CSR structure for {rows} x {cols}: {fault}")
    if not compiled:
        g = torch_sddmm(rowptr, col, dy, x)
        return g if out is None else out.copy_(g)
    best = Isa(_spmm.best_isa())
    use = best_isa() if isa is None else Isa(isa)
    if use > best:
        raise SparseflowError(f"instruction set {use.name} is not supported by this CPU (best: {best.name})")
    k = sddmm_tile_for(batch, use) if tile is None else tile
    if k not in (0, 1, 2, 4, 8):
        raise SparseflowError(f"sddmm: tile must be 0, 1, 2, 4 or 8 vectors, got {k}")
    g = torch.empty(nnz, dtype=torch.float32) if out is None else out
    nt = torch.get_num_threads() if threads is None else threads
    _spmm.sddmm(int(use), int(col.dtype == torch.int32), rowptr.data_ptr(), col.data_ptr(), rows, cols,
                dy.data_ptr(), x.data_ptr(), batch, g.data_ptr(), nt, k)
    return g
