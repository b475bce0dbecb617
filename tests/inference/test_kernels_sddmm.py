"""sddmm (dy.T @ x at a CSR structure's stored positions) against the dense oracle (dy.T @ x)[mask]:
every instruction set this CPU runs, every panel width, 16- and 32-bit indices, 1 and 2 threads,
batches 1/3/17/64, empty rows, in_features that are not multiples of a vector, the torch fallback,
and the input errors.

Tolerance: |g - ref| <= 1e-4 * (|dy|.T @ |x|)[mask] elementwise, relative to the size of the sum.
"""

from __future__ import annotations

import pytest
import torch

from sparseflow.errors import SparseflowError
from sparseflow.inference.kernels import Isa, best_isa, csr_from_dense, sddmm, sddmm_tile_for, torch_sddmm

COMPILED = best_isa() is not None
needs_ext = pytest.mark.skipif(not COMPILED, reason="compiled kernels not built")
ISAS = [i for i in Isa if COMPILED and i <= best_isa()]


def sparse_weight(out: int, inp: int, density: float, seed: int, empty_rows: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    w[torch.rand(out, inp, generator=g) >= density] = 0
    w[:empty_rows] = 0
    w[out // 2] = 0  # and one in the middle
    return w


def inputs(w: torch.Tensor, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, w.shape[0], generator=g), torch.randn(batch, w.shape[1], generator=g)


def oracle(w: torch.Tensor, dy: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy.T @ x)[W != 0] in float64 (row-major = CSR order) and the scale of each sum."""
    mask = w != 0
    return (dy.double().t() @ x.double())[mask], (dy.double().abs().t() @ x.double().abs())[mask]


def assert_close(got: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, x: torch.Tensor,
                 ref: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    want, scale = oracle(w, dy, x) if ref is None else ref
    assert got.dtype == torch.float32 and got.shape == want.shape
    err = (got.double() - want).abs() - 1e-4 * scale
    assert bool((err <= 1e-30).all()), float(err.max())


# (out, in, density, empty leading rows): in_features 37/70/300 are not multiples of 8 or 16; rows of
# the 24 x 37 full one hold two whole groups of 16 and a tail; the 0-density one has no nonzero.
SHAPES = [(33, 70, 0.3, 3), (24, 37, 1.0, 0), (40, 300, 0.05, 5), (8, 20, 0.0, 0)]


@needs_ext
@pytest.mark.parametrize("isa", ISAS, ids=lambda i: i.name)
@pytest.mark.parametrize("bits", [16, 32])
@pytest.mark.parametrize("batch", [1, 3, 17, 64])
def test_compiled_matches_oracle(isa, bits, batch):
    for n, (out, inp, density, empty) in enumerate(SHAPES):
        w = sparse_weight(out, inp, density, n, empty_rows=empty)
        c = csr_from_dense(w, index_bits=bits)
        dy, x = inputs(w, batch, n + 10)
        assert_close(sddmm(c.rowptr, c.col, dy, x, isa=isa, threads=1), w, dy, x)


@needs_ext
@pytest.mark.parametrize("isa", ISAS, ids=lambda i: i.name)
def test_every_panel_width_and_both_threads(isa):
    # 600 x 1000 at 20 %: at batch 40, 4.8M multiply-adds, enough that 2 threads really split the rows
    w = sparse_weight(600, 1000, 0.2, 1, empty_rows=7)
    for bits in (16, 32):
        c = csr_from_dense(w, index_bits=bits)
        for batch in (3, 17, 40):
            dy, x = inputs(w, batch, batch)
            ref = oracle(w, dy, x)
            for tile in (0, 1, 2, 4, 8):
                for threads in (1, 2):
                    assert_close(sddmm(c.rowptr, c.col, dy, x, isa=isa, tile=tile, threads=threads), w, dy, x, ref)


@needs_ext
def test_high_column_indices_every_isa():
    # columns past 32767 (the int16 storage must read as unsigned) and past 65535 (int32)
    for inp in (40000, 70000):
        w = sparse_weight(12, inp, 0.002, 3, empty_rows=2)
        w[-1, -1] = 1.5
        c = csr_from_dense(w)
        dy, x = inputs(w, 5, 4)
        for isa in ISAS:
            for tile in (0, 1):
                assert_close(sddmm(c.rowptr, c.col, dy, x, isa=isa, tile=tile), w, dy, x)


@needs_ext
def test_default_tile_out_argument_and_views():
    w = sparse_weight(30, 50, 0.4, 5)
    c = csr_from_dense(w)
    dy, x = inputs(w, 20, 6)
    buf = torch.full((c.nnz,), float("nan"))
    g = sddmm(c.rowptr, c.col, dy.t().contiguous().t(), x, out=buf)  # dy as a transposed view
    assert g is buf
    assert_close(g, w, dy, x)
    assert sddmm_tile_for(1, Isa.AVX512) == 0 and sddmm_tile_for(17, Isa.AVX512) == 2
    assert sddmm_tile_for(256, Isa.AVX512) == 4 and sddmm_tile_for(256, Isa.AVX2) == 8
    assert sddmm_tile_for(1, Isa.BASELINE) == 1 and sddmm_tile_for(5, Isa.BASELINE) == 8


@pytest.mark.parametrize("backend", ["compiled", "torch"])
def test_empty_batch_and_no_nonzeros(backend, monkeypatch):
    if backend == "torch":
        monkeypatch.setenv("SPARSEFLOW_KERNELS", "torch")
    elif not COMPILED:
        pytest.skip("compiled kernels not built")
    w = sparse_weight(6, 9, 0.5, 2)
    c = csr_from_dense(w)
    assert torch.equal(sddmm(c.rowptr, c.col, torch.zeros(0, 6), torch.zeros(0, 9)), torch.zeros(c.nnz))
    e = csr_from_dense(torch.zeros(6, 9))
    assert sddmm(e.rowptr, e.col, torch.randn(4, 6), torch.randn(4, 9)).shape == (0,)


def test_torch_fallback_matches_oracle(monkeypatch):
    monkeypatch.setenv("SPARSEFLOW_KERNELS", "torch")
    for n, (out, inp, density, empty) in enumerate(SHAPES + [(5, 40000, 0.01, 1)]):
        w = sparse_weight(out, inp, density, n, empty_rows=empty)
        for bits in (16, 32):
            c = csr_from_dense(w, index_bits=bits)
            for batch in (1, 17):
                dy, x = inputs(w, batch, n)
                assert_close(sddmm(c.rowptr, c.col, dy, x), w, dy, x)
                assert_close(torch_sddmm(c.rowptr, c.col, dy, x), w, dy, x)
    buf = torch.empty(c.nnz)
    assert sddmm(c.rowptr, c.col, dy, x, out=buf) is buf


@pytest.mark.parametrize("backend", ["compiled", "torch"])
def test_bad_inputs_raise(backend, monkeypatch):
    if backend == "torch":
        monkeypatch.setenv("SPARSEFLOW_KERNELS", "torch")
    elif not COMPILED:
        pytest.skip("compiled kernels not built")
    w = sparse_weight(4, 6, 0.6, 0)
    w[0, 5] = 1.0
    c = csr_from_dense(w)
    dy, x = torch.randn(3, 4), torch.randn(3, 6)
    with pytest.raises(SparseflowError, match="fp32"):
        sddmm(c.rowptr, c.col, dy.double(), x)
    with pytest.raises(SparseflowError, match="fp32"):
        sddmm(c.rowptr, c.col, dy, x.half())
    with pytest.raises(SparseflowError, match="does not fit"):
        sddmm(c.rowptr, c.col, torch.randn(3, 5), x)
    with pytest.raises(SparseflowError, match="batch"):
        sddmm(c.rowptr, c.col, torch.randn(2, 4), x)
    with pytest.raises(SparseflowError, match="2-D"):
        sddmm(c.rowptr, c.col, dy, x[0])
    with pytest.raises(SparseflowError, match="rowptr"):
        sddmm(c.rowptr.long(), c.col, dy, x)
    with pytest.raises(SparseflowError, match="col"):
        sddmm(c.rowptr, c.col.long(), dy, x)
    with pytest.raises(SparseflowError, match="out"):
        sddmm(c.rowptr, c.col, dy, x, out=torch.empty(c.nnz + 1))
    # structures the kernel must not read through
    with pytest.raises(SparseflowError, match="outside"):
        sddmm(c.rowptr, c.col, dy, x[:, :5])  # a stored column past in_features
    bad = c.col.clone()
    bad[0] = -1  # int16 bits of 65535
    with pytest.raises(SparseflowError, match="outside"):
        sddmm(c.rowptr, bad, dy, x)
    rp = c.rowptr.clone()
    rp[1] = int(rp[2]) + 1
    with pytest.raises(SparseflowError, match="decreases"):
        sddmm(rp, c.col, dy, x)
    with pytest.raises(SparseflowError, match="column indices"):
        sddmm(c.rowptr, c.col[:-1], dy, x)


@needs_ext
def test_bad_kernel_options_raise():
    w = sparse_weight(4, 6, 0.6, 0)
    c = csr_from_dense(w)
    dy, x = torch.randn(3, 4), torch.randn(3, 6)
    with pytest.raises(SparseflowError, match="tile"):
        sddmm(c.rowptr, c.col, dy, x, tile=3)
    if best_isa() < Isa.AVX512:
        with pytest.raises(SparseflowError, match="not supported"):
            sddmm(c.rowptr, c.col, dy, x, isa=Isa.AVX512)


def test_without_the_extension(monkeypatch):
    import sparseflow.inference.kernels as kernels

    monkeypatch.setattr(kernels, "_spmm", None)
    w = sparse_weight(10, 30, 0.3, 7)
    c = csr_from_dense(w)
    dy, x = inputs(w, 4, 8)
    assert_close(sddmm(c.rowptr, c.col, dy, x), w, dy, x)  # the torch fallback
    with pytest.raises(SparseflowError, match="not built"):
        sddmm(c.rowptr, c.col, dy, x, isa=Isa.BASELINE)
