"""The sparse kernels against a float64 oracle, over shapes, densities, batch sizes, every instruction
set this CPU runs, every register tile, 16- and 32-bit indices, 1 and 2 threads, and the torch fallback.

Tolerance: |y - y64| <= 1e-5 * (|W| @ |x| + |b|) elementwise, the scale of fp32 rounding in a sum.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseflow.errors import SparseflowError
from sparseflow.inference.kernels import Backend, Isa, available_backend, best_isa, csr_from_dense, spmm, torch_chunk_spmm

COMPILED = best_isa() is not None
needs_ext = pytest.mark.skipif(not COMPILED, reason="compiled kernels not built")


def sparse_weight(out: int, inp: int, density: float, seed: int, empty_rows: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    w[torch.rand(out, inp, generator=g) >= density] = 0
    w[:empty_rows] = 0
    return w


def assert_close(y: torch.Tensor, w: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None) -> None:
    ref = x.double() @ w.double().T + (0 if b is None else b.double())
    scale = x.double().abs() @ w.double().abs().T + (0 if b is None else b.double().abs())
    assert y.shape == ref.shape
    assert bool(((y.double() - ref).abs() <= 1e-5 * scale + 1e-30).all()), float(((y.double() - ref).abs() - 1e-5 * scale).max())


def test_csr_roundtrip_and_index_width():
    w = sparse_weight(9, 70, 0.3, 0)
    c16, c32 = csr_from_dense(w), csr_from_dense(w, index_bits=32)
    assert (c16.index_bytes, c32.index_bytes) == (2, 4)
    assert torch.equal(c16.to_dense(), w) and torch.equal(c32.to_dense(), w)
    wide = torch.zeros(2, 70000)
    wide[0, 69999] = 1.5  # a column index above 32767: the uint16 bits must not read as negative
    assert csr_from_dense(wide).index_bytes == 4
    assert torch.equal(csr_from_dense(wide[:, :65536].clone()).to_dense(), wide[:, :65536])
    with pytest.raises(SparseflowError, match="index_bits"):
        csr_from_dense(wide, index_bits=16)
    with pytest.raises(SparseflowError, match="fp32"):
        csr_from_dense(w.double())


@needs_ext
@settings(max_examples=150, deadline=None)
@given(out=st.integers(1, 48), inp=st.integers(1, 300), density=st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0]),
       batch=st.integers(1, 70), empty=st.integers(0, 3), seed=st.integers(0, 2**16), bits=st.sampled_from([16, 32]),
       threads=st.sampled_from([1, 2]), bias=st.booleans(), data=st.data())
def test_compiled_matches_oracle(out, inp, density, batch, empty, seed, bits, threads, bias, data):
    w = sparse_weight(out, inp, density, seed, empty_rows=min(empty, out))
    g = torch.Generator().manual_seed(seed + 1)
    x, b = torch.randn(batch, inp, generator=g), (torch.randn(out, generator=g) if bias else None)
    isa = data.draw(st.sampled_from([i for i in Isa if i <= best_isa()]))
    tile = data.draw(st.sampled_from([0, 1, 2, 4] + ([8] if isa < Isa.AVX512 else [])))
    y = spmm(csr_from_dense(w, index_bits=bits), x, b, isa=isa, tile=tile, threads=threads)
    assert_close(y, w, x, b)


@needs_ext
@settings(max_examples=80, deadline=None)
@given(out=st.integers(1, 40), inp=st.integers(1, 200), density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       batch=st.integers(1, 70), seed=st.integers(0, 2**16), bits=st.sampled_from([16, 32]),
       threads=st.sampled_from([1, 2]), data=st.data())
def test_values_read_through_a_permutation(out, inp, density, batch, seed, bits, threads, data):
    # values kept in another order (a random permutation of the stored positions): the same product
    w = sparse_weight(out, inp, density, seed)
    c = csr_from_dense(w, index_bits=bits)
    g = torch.Generator().manual_seed(seed + 2)
    order = torch.randperm(c.nnz, generator=g)
    stored = torch.empty_like(c.values)
    stored[order] = c.values  # position j's value now lives at order[j]
    x = torch.randn(batch, inp, generator=g)
    isa = data.draw(st.sampled_from([i for i in Isa if i <= best_isa()]))
    tile = data.draw(st.sampled_from([0, 1, 2, 4] + ([8] if isa < Isa.AVX512 else [])))
    permuted = type(c)(c.rowptr, c.col, stored, c.shape)
    y = spmm(permuted, x, isa=isa, tile=tile, threads=threads, perm=order.to(torch.int32))
    assert_close(y, w, x, None)


@needs_ext
def test_bad_permutation_raises():
    c = csr_from_dense(sparse_weight(4, 6, 0.5, 0))
    x = torch.randn(3, 6)
    with pytest.raises(SparseflowError, match="int32"):
        spmm(c, x, perm=torch.arange(c.nnz))
    with pytest.raises(SparseflowError, match="one per stored position"):
        spmm(c, x, perm=torch.arange(c.nnz + 1, dtype=torch.int32))
    with pytest.raises(SparseflowError, match="outside"):
        spmm(c, x, perm=torch.arange(c.nnz, dtype=torch.int32) + 1)


@needs_ext
def test_high_column_indices_every_isa():
    # columns past 32767 and past 65535 (int32), rows longer than a vector and with ragged tails
    for inp in (40000, 70000):
        w = sparse_weight(20, inp, 0.01, 3, empty_rows=2)
        x = torch.randn(5, inp)
        for isa in [i for i in Isa if i <= best_isa()]:
            for tile in (0, 1):
                assert_close(spmm(csr_from_dense(w), x, isa=isa, tile=tile), w, x, None)


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 40), inp=st.integers(1, 200), density=st.sampled_from([0.0, 0.1, 1.0]),
       batch=st.integers(1, 100), seed=st.integers(0, 2**16))
def test_torch_fallback_matches_oracle(out, inp, density, batch, seed):
    w = sparse_weight(out, inp, density, seed)
    x, b = torch.randn(batch, inp), torch.randn(out)
    assert_close(torch_chunk_spmm(csr_from_dense(w).torch_csr(), x, b, chunk=32), w, x, b)


@needs_ext
def test_bad_inputs_raise():
    c = csr_from_dense(sparse_weight(4, 6, 0.5, 0))
    with pytest.raises(SparseflowError, match="does not fit"):
        spmm(c, torch.randn(3, 5))
    with pytest.raises(SparseflowError, match="fp32"):
        spmm(c, torch.randn(3, 6, dtype=torch.float64))
    with pytest.raises(SparseflowError, match="bias"):
        spmm(c, torch.randn(3, 6), torch.randn(5))


def test_forcing_the_fallback(monkeypatch):
    monkeypatch.setenv("SPARSEFLOW_KERNELS", "torch")
    assert available_backend() is Backend.TORCH


@needs_ext
@pytest.mark.parametrize("bits", [16, 32])
def test_batch1_rows_sum_alike_whatever_their_neighbour_and_thread_split(bits):
    """The batch-1 kernel runs rows in pairs; a row's result must not depend on the row it is paired with (or on
    the thread split): the whole matrix equals each row multiplied on its own, bit for bit, on every ISA, and
    matches the float64 oracle. Row lengths straddle the vector steps (0 to 100 nonzeros, odd row count)."""
    g = torch.Generator().manual_seed(5)
    lengths = [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 100, 3, 40, 29]
    w = torch.zeros(len(lengths), 300)
    for r, n in enumerate(lengths):
        w[r, torch.randperm(300, generator=g)[:n]] = torch.randn(n, generator=g)
    x = torch.randn(1, 300, generator=g)
    for isa in [i for i in Isa if i <= best_isa()]:
        whole = spmm(csr_from_dense(w, index_bits=bits), x, isa=isa, tile=0, threads=1)
        alone = torch.cat([spmm(csr_from_dense(w[r:r + 1].contiguous(), index_bits=bits), x, isa=isa, tile=0, threads=1)
                           for r in range(len(lengths))], dim=1)
        assert torch.equal(whole, alone), isa
        assert torch.equal(whole, spmm(csr_from_dense(w, index_bits=bits), x, isa=isa, tile=0, threads=2)), isa
        assert_close(whole, w, x, None)


@needs_ext
@pytest.mark.parametrize("isa", list(Isa), ids=[i.name for i in Isa])
def test_every_isa_path_against_the_oracle_or_a_stated_skip(isa):
    """Each instruction-set path by name: the CSR kernels at every tile and the SELL-8 kernel (both ways of
    fetching x) against the float64 oracle; a path this CPU cannot run is skipped and says why."""
    from sparseflow.inference.kernels import sell_from_csr, spmv_sell

    if isa > best_isa():
        pytest.skip(f"this CPU cannot run {isa.name} (best: {best_isa().name}); its kernels are tested where it can")
    g = torch.Generator().manual_seed(11)
    w = sparse_weight(37, 301, 0.1, 4, empty_rows=2)
    b = torch.randn(37, generator=g)
    for bits in (16, 32):
        c = csr_from_dense(w, index_bits=bits)
        for batch in (1, 3, 40):
            x = torch.randn(batch, 301, generator=g)
            for tile in [0, 1, 2, 4] + ([8] if isa < Isa.AVX512 else []):
                assert_close(spmm(c, x, b, isa=isa, tile=tile), w, x, b)
            for loads in (True, False):
                assert_close(spmv_sell(sell_from_csr(c), x, b, isa=isa, loads=loads), w, x, b)
