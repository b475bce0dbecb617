"""The SELL-8 batch-1 layout and kernel: the layout against the CSR it came from (same matrix, chunk shapes,
sorting within windows), the kernel against a float64 oracle on every instruction set this CPU runs with both
ways of fetching x, bit-for-bit independence from neighbouring rows and thread splits, SparseLinear and
convert with a SELL plan against the dense model, and bad input.

Tolerance: |y - y64| <= 1e-5 * (|W| @ |x| + |b|) elementwise, as for the CSR kernels.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseflow.errors import SparseflowError
from sparseflow.inference.convert import convert, deconvert
from sparseflow.inference.kernels import SELL_C, Isa, best_isa, csr_from_dense, sell_from_csr, spmm, spmv_sell
from sparseflow.inference.kernels.modules import Choice, Kernel, SparseLinear
from sparseflow.inference.plan import _candidates
from sparseflow.inference.kernels import Backend

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


def isas() -> list[Isa]:
    return [i for i in Isa if i <= best_isa()]


@settings(max_examples=60, deadline=None)
@given(out=st.integers(0, 40), inp=st.integers(1, 120), density=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
       window=st.integers(1, 50), seed=st.integers(0, 2**16), bits=st.sampled_from([16, 32]))
def test_layout_holds_the_same_matrix(out, inp, density, window, seed, bits):
    w = sparse_weight(out, inp, density, seed, empty_rows=min(2, out))
    c = csr_from_dense(w, index_bits=bits)
    s = sell_from_csr(c, window=window)
    assert torch.equal(s.to_dense(), w)
    nch = (out + SELL_C - 1) // SELL_C
    assert s.chunks == nch and s.rows.numel() == nch * SELL_C and s.col.dtype == c.col.dtype
    real = s.rows[s.rows >= 0].sort().values
    assert torch.equal(real, torch.arange(out, dtype=torch.int32))  # every row once
    assert bool((s.rows[out:] == -1).all()) if out % SELL_C else True
    length = c.rowptr.diff()
    lane_len = torch.where(s.rows >= 0, length[s.rows.clamp_min(0).long()] if out else s.rows, torch.zeros_like(s.rows))
    # each chunk is as long as its longest row; rows come longest first within each window
    assert torch.equal(s.chunk_ptr.diff(), lane_len.view(-1, SELL_C).amax(dim=1) if nch else s.chunk_ptr.diff())
    order = s.rows[:out].long()
    for w0 in range(0, out, window):
        lens = length[order[w0:w0 + window]]
        assert bool((lens[:-1] >= lens[1:]).all())
        assert set(order[w0:w0 + window].tolist()) == set(range(w0, min(out, w0 + window)))


@needs_ext
@settings(max_examples=120, deadline=None)
@given(out=st.integers(1, 48), inp=st.integers(1, 300), density=st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0]),
       batch=st.integers(1, 5), empty=st.integers(0, 3), seed=st.integers(0, 2**16), bits=st.sampled_from([16, 32]),
       threads=st.sampled_from([1, 2]), bias=st.booleans(), loads=st.booleans(), window=st.sampled_from([1, 8, 256]),
       data=st.data())
def test_kernel_matches_oracle(out, inp, density, batch, empty, seed, bits, threads, bias, loads, window, data):
    w = sparse_weight(out, inp, density, seed, empty_rows=min(empty, out))
    g = torch.Generator().manual_seed(seed + 1)
    x, b = torch.randn(batch, inp, generator=g), (torch.randn(out, generator=g) if bias else None)
    isa = data.draw(st.sampled_from(isas()))
    y = spmv_sell(sell_from_csr(csr_from_dense(w, index_bits=bits), window=window), x, b, isa=isa, loads=loads,
                  threads=threads)
    assert_close(y, w, x, b)


@needs_ext
def test_high_column_indices_and_long_rows():
    # columns past 32767 and past 65535 (int32 indices); rows of very different lengths in one chunk
    for inp in (40000, 70000):
        w = sparse_weight(21, inp, 0.01, 3, empty_rows=2)
        w[5, :3000] = torch.randn(3000)
        x = torch.randn(2, inp)
        for isa in isas():
            for loads in (True, False):
                assert_close(spmv_sell(sell_from_csr(csr_from_dense(w)), x, isa=isa, loads=loads), w, x, None)


@needs_ext
@pytest.mark.parametrize("bits", [16, 32])
def test_rows_sum_alike_whatever_their_chunk_and_thread_split(bits):
    """A row's result does not depend on the rows sharing its chunk (padding adds exact zeros) or on the thread
    split: the whole matrix equals each row multiplied on its own, and 1 thread equals 2, bit for bit."""
    g = torch.Generator().manual_seed(5)
    lengths = [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 100, 3, 40, 29] * 3
    w = torch.zeros(len(lengths), 300)
    for r, n in enumerate(lengths):
        w[r, torch.randperm(300, generator=g)[:n]] = torch.randn(n, generator=g)
    x = torch.randn(1, 300, generator=g)
    s = sell_from_csr(csr_from_dense(w, index_bits=bits))
    for isa in isas():
        for loads in (True, False):
            whole = spmv_sell(s, x, isa=isa, loads=loads, threads=1)
            alone = torch.cat([spmv_sell(sell_from_csr(csr_from_dense(w[r:r + 1].contiguous(), index_bits=bits)), x,
                                         isa=isa, loads=loads, threads=1) for r in range(len(lengths))], dim=1)
            assert torch.equal(whole, alone), (isa, loads)
            assert torch.equal(whole, spmv_sell(s, x, isa=isa, loads=loads, threads=2)), (isa, loads)
            assert_close(whole, w, x, None)


@needs_ext
def test_sparse_linear_with_a_sell_plan_matches_dense_and_keeps_its_layout():
    w = sparse_weight(50, 77, 0.1, 1, empty_rows=3)
    b = torch.randn(50)
    csr = csr_from_dense(w)
    plan = (Choice(1, Kernel.SELL, Isa.AVX2 if best_isa() >= Isa.AVX2 else Isa.BASELINE, 1),
            Choice(16, Kernel.CSR, best_isa(), 1))
    mod = SparseLinear(csr, b, plan)
    assert "sell/" in repr(mod) and mod.sell_values is not None
    for batch in (1, 3, 20):
        x = torch.randn(batch, 77)
        with torch.no_grad():
            assert_close(mod(x), w, x, b)
    # the state dict carries the layout: a module loaded from it gives the same outputs
    other = SparseLinear(csr_from_dense(torch.zeros(50, 77)), torch.zeros(50), plan)
    with pytest.raises(RuntimeError):  # the SELL buffers differ in size: loading must not pass silently
        other.load_state_dict(mod.state_dict())
    x = torch.randn(1, 77)
    twin = SparseLinear(csr, b, plan)
    twin.load_state_dict(mod.state_dict())
    with torch.no_grad():
        assert torch.equal(twin(x), mod(x))
    # without a SELL choice the layout is not kept
    assert SparseLinear(csr, b, plan[1:]).sell_values is None


@needs_ext
def test_planner_measures_sell_at_batch_1_only():
    c1 = _candidates(1, Backend.COMPILED)
    assert any(k is Kernel.SELL for k, _, _ in c1)
    if best_isa() >= Isa.AVX2:
        assert {(k, i, t) for k, i, t in c1 if k is Kernel.SELL} == {(Kernel.SELL, Isa.AVX2, 0), (Kernel.SELL, Isa.AVX2, 1)}
    assert not any(k is Kernel.SELL for k, _, _ in _candidates(16, Backend.COMPILED))


@needs_ext
def test_convert_with_sell_matches_dense_and_deconverts():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10)).eval()
    with torch.no_grad():
        for m in (dense[0], dense[2]):
            m.weight[torch.rand(m.weight.shape) >= 0.1] = 0
    fast = convert(dense, batch_sizes=(1, 16), repeats=1)
    # whatever won the measurement, force SELL at batch 1 on the first layer and compare with dense
    lin = fast[0]
    forced = SparseLinear(lin.csr, lin.bias, (Choice(1, Kernel.SELL, min(best_isa(), Isa.AVX2), 1),))
    x = torch.randn(1, 300)
    with torch.no_grad():
        ref = dense[0](x)
        assert float((forced(x) - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
        out = fast(x)
        assert float((out - dense(x)).abs().max()) <= 1e-5 * float(dense(x).abs().max())
    assert torch.equal(deconvert(fast)[0].weight, dense[0].weight)


@needs_ext
def test_bad_input_raises():
    s = sell_from_csr(csr_from_dense(sparse_weight(4, 6, 0.5, 0)))
    with pytest.raises(SparseflowError, match="does not fit"):
        spmv_sell(s, torch.randn(1, 5))
    with pytest.raises(SparseflowError, match="fp32"):
        spmv_sell(s, torch.randn(1, 6, dtype=torch.float64))
    with pytest.raises(SparseflowError, match="bias"):
        spmv_sell(s, torch.randn(1, 6), torch.randn(5))
    with pytest.raises(SparseflowError, match="window"):
        sell_from_csr(csr_from_dense(sparse_weight(4, 6, 0.5, 0)), window=0)


def test_spmm_and_sell_agree_on_the_same_rows():
    if not COMPILED:
        pytest.skip("compiled kernels not built")
    w = sparse_weight(64, 500, 0.1, 9)
    x = torch.randn(1, 500)
    c = csr_from_dense(w)
    a, b = spmm(c, x, tile=0), spmv_sell(sell_from_csr(c), x)
    assert float((a - b).abs().max()) <= 1e-5 * float((x.abs() @ w.abs().T).max())
