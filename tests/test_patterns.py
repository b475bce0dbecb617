"""Patterns against brute force: Unstructured top-k = sorting, NM per input group, Block = best tile sums."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sparseflow import NM, Block, MaskError, Unstructured
from sparseflow.patterns import _as_matrix, _from_matrix, largest_among, topk_mask


def _scores(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))  # distinct with probability 1


# --- matrix view -------------------------------------------------------------------------------------
def test_matrix_view_puts_input_channels_innermost() -> None:
    t = _scores(3, 4, 2, 5)  # (out, in, kh, kw)
    mat = _as_matrix(t)
    assert mat.shape == (3, 2 * 5 * 4)
    for o, c, i, j in itertools.product(range(3), range(4), range(2), range(5)):
        assert mat[o, (i * 5 + j) * 4 + c] == t[o, c, i, j]
    assert torch.equal(_from_matrix(mat, t.shape), t)
    lin = _scores(3, 4)
    assert _as_matrix(lin) is lin


# --- Unstructured ------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), data=st.data())
def test_unstructured_topk_equals_sorting(shape: list[int], data: st.DataObject) -> None:
    scores = _scores(*shape, seed=len(shape))
    n = scores.numel()
    k = data.draw(st.integers(0, n))
    mask = Unstructured().topk(scores, k)
    expected = torch.zeros(n, dtype=torch.bool)
    expected[torch.argsort(scores.reshape(-1), descending=True)[:k]] = True
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert torch.equal(mask.reshape(-1), expected)
    assert Unstructured().units(tuple(shape)) == n


def test_topk_ties_at_the_threshold_go_to_lower_indices() -> None:
    scores = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0, 3.0])
    # 3.0 is kept; two of the three 2.0s are needed: the first two
    assert Unstructured().topk(scores, 3).tolist() == [False, True, True, False, False, True]
    # excluded positions (-inf) are taken last, again lowest index first
    scores = torch.tensor([-math.inf, 0.5, -math.inf, -math.inf, 0.25])
    assert Unstructured().topk(scores, 3).tolist() == [True, True, False, False, True]
    assert Unstructured().topk(scores, 0).tolist() == [False] * 5
    assert Unstructured().topk(scores, 5).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_unstructured_topk_other_dtypes(dtype: torch.dtype) -> None:
    scores = torch.randperm(50, generator=torch.Generator().manual_seed(0)).to(dtype)  # distinct, exact
    mask = Unstructured().topk(scores.reshape(5, 10), 7)
    assert torch.equal(mask.reshape(-1), scores >= 43)


def test_unstructured_topk_out_of_range() -> None:
    with pytest.raises(MaskError):
        Unstructured().topk(_scores(2, 3), 7)
    with pytest.raises(MaskError):
        Unstructured().topk(_scores(2, 3), -1)


# --- k largest among allowed positions ----------------------------------------------------------------
def _masked_topk(scores: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    return topk_mask(scores.masked_fill(~allowed, -math.inf), k).nonzero().squeeze(1)


@settings(max_examples=60, deadline=None)
@given(
    n=st.sampled_from([1, 7, 100, 5000, 20000, 70000]),
    density=st.floats(0.01, 1.0),
    levels=st.sampled_from([0, 2, 5]),  # 0: distinct scores; else that many distinct values (ties everywhere)
    frac=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]),  # float16: the masked top-k path
    seed=st.integers(0, 2**16),
)
@example(n=70000, density=0.5, levels=5, frac=0.02, dtype=torch.float32, seed=1)  # the sampled threshold, ties
@example(n=70000, density=0.3, levels=0, frac=0.1, dtype=torch.float32, seed=2)  # the sampled threshold
def test_largest_among_equals_topk_mask_on_masked_scores(n, density, levels, frac, dtype, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    allowed = torch.rand(n, generator=g) < density
    scores = torch.randn(n, generator=g)
    if levels:
        scores = (scores * levels).round()
    scores = scores.to(dtype)
    k = math.floor(frac * int(allowed.sum()))
    got = largest_among(scores, allowed, k)
    assert got.dtype == torch.int64 and torch.equal(got, _masked_topk(scores, allowed, k))


@pytest.mark.parametrize("k", [1, 100, 2000])
def test_largest_among_sample_missing_the_kth_score_falls_back(k: int) -> None:
    # The strided sample sees only huge scores, so its threshold admits fewer than k: all allowed are ranked.
    g = torch.Generator().manual_seed(k)
    n = 100_000
    scores, allowed = torch.rand(n, generator=g), torch.rand(n, generator=g) < 0.5
    scores[:: n // 4096] = 1e6
    assert torch.equal(largest_among(scores, allowed, k), _masked_topk(scores, allowed, k))


def test_largest_among_rejects_k_beyond_the_allowed() -> None:
    allowed = torch.tensor([True, False, True])
    assert largest_among(torch.tensor([3.0, 9.0, 1.0]), allowed, 2).tolist() == [0, 2]
    assert largest_among(torch.tensor([3.0, 9.0, 3.0]), allowed, 1).tolist() == [0]  # tie: lower index
    with pytest.raises(MaskError, match="3 of 2"):
        largest_among(torch.zeros(3), allowed, 3)


# --- NM ------------------------------------------------------------------------------------------
def _nm_brute_linear(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    out, inp = scores.shape
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for o in range(out):
        for g in range(0, inp, m):
            group = [(float(scores[o, g + j]), g + j) for j in range(m)]
            for _, col in sorted(group, reverse=True)[:n]:
                keep[o, col] = True
    return keep


def _nm_brute_conv(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    # groups of m consecutive input channels at one (output channel, kernel position)
    out, inp, kh, kw = scores.shape
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for o, i, j in itertools.product(range(out), range(kh), range(kw)):
        for g in range(0, inp, m):
            group = [(float(scores[o, g + c, i, j]), g + c) for c in range(m)]
            for _, c in sorted(group, reverse=True)[:n]:
                keep[o, c, i, j] = True
    return keep


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (1, 2), (3, 8), (4, 4)])
def test_nm_linear_matches_brute_force(n: int, m: int) -> None:
    scores = _scores(5, 16, seed=n * 10 + m)
    mask = NM(n, m).topk(scores, 5 * 16 * n // m)
    assert torch.equal(mask, _nm_brute_linear(scores, n, m))
    assert (mask.reshape(5, -1, m).sum(-1) == n).all()  # exactly n of every m consecutive inputs


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 2)])
def test_nm_conv_groups_input_channels(n: int, m: int) -> None:
    scores = _scores(3, 8, 2, 3, seed=n + m)
    mask = NM(n, m).topk(scores, scores.numel() * n // m)
    assert torch.equal(mask, _nm_brute_conv(scores, n, m))
    # per (out, kernel position): exactly n of every m consecutive input channels
    assert (mask.permute(0, 2, 3, 1).reshape(-1, m).sum(-1) == n).all()


def test_nm_rejects_wrong_k_and_bad_shapes() -> None:
    with pytest.raises(MaskError, match="exactly 40"):
        NM(2, 4).topk(_scores(5, 16), 41)
    with pytest.raises(MaskError, match="'fc.weight'"):
        NM(2, 4).check("fc.weight", (5, 6))
    with pytest.raises(MaskError, match="'conv.weight'"):
        NM(2, 4).check("conv.weight", (8, 3, 3, 3))  # 3 input channels; 8 outputs do not help
    NM(2, 4).check("conv.weight", (3, 8, 3, 3))
    with pytest.raises(MaskError):
        NM(2, 4).check("bias", (8,))


@pytest.mark.parametrize("args", [(3, 2), (0, 4), (2.0, 4), (-1, 4), (2, "4")])
def test_nm_constructor_validates(args: tuple) -> None:
    with pytest.raises(MaskError):
        NM(*args)


def test_nm_density() -> None:
    assert NM(2, 4).density == 0.5 and NM(1, 8).density == 0.125


# --- Block ------------------------------------------------------------------------------------------
def _block_brute(mat_scores: torch.Tensor, r: int, c: int, k: int) -> torch.Tensor:
    rows, cols = mat_scores.shape
    tiles = []
    for i, j in itertools.product(range(rows // r), range(cols // c)):
        total = sum(float(mat_scores[i * r + a, j * c + b]) for a in range(r) for b in range(c))
        tiles.append((total, i, j))
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    for _, i, j in sorted(tiles, reverse=True)[:k]:
        keep[i * r : (i + 1) * r, j * c : (j + 1) * c] = True
    return keep


@pytest.mark.parametrize(("r", "c", "k"), [(2, 2, 5), (1, 4, 3), (3, 1, 7), (2, 3, 0), (6, 12, 1)])
def test_block_linear_keeps_top_tiles(r: int, c: int, k: int) -> None:
    scores = _scores(6, 12, seed=r * 7 + c)
    assert Block(r, c).units((6, 12)) == (6 // r) * (12 // c)
    mask = Block(r, c).topk(scores, k)
    assert torch.equal(mask, _block_brute(scores, r, c, k))
    assert int(mask.sum()) == k * r * c


def test_block_conv_tiles_the_matrix_view() -> None:
    scores = _scores(4, 2, 3, 3, seed=3)  # matrix view (4, 18), input channels innermost
    pattern = Block(2, 3)
    assert pattern.units(scores.shape) == 2 * 6
    mask = pattern.topk(scores, 5)
    expected = torch.zeros_like(mask)
    keep_mat = _block_brute(_as_matrix(scores), 2, 3, 5)
    for o, c, i, j in itertools.product(range(4), range(2), range(3), range(3)):
        expected[o, c, i, j] = keep_mat[o, (i * 3 + j) * 2 + c]
    assert torch.equal(mask, expected)
    # unit scores are the tile sums, row-major over tiles
    us = pattern.unit_scores(scores)
    assert us.shape == (12,)
    assert us[1] == pytest.approx(float(_as_matrix(scores)[0:2, 3:6].sum()), rel=1e-6)


def test_block_rejects_bad_tiles_and_shapes() -> None:
    for args in [(0, 2), (2, 0), (2.0, 2), (1, -1)]:
        with pytest.raises(MaskError):
            Block(*args)  # type: ignore[arg-type]
    with pytest.raises(MaskError, match="'fc.weight'"):
        Block(4, 4).check("fc.weight", (6, 8))
    with pytest.raises(MaskError, match="'fc.weight'"):
        Block(2, 3).check("fc.weight", (6, 8))
    Block(2, 4).check("fc.weight", (6, 8))
    with pytest.raises(MaskError):
        Block(2, 2).check("bias", (8,))
    with pytest.raises(MaskError):
        Block(2, 2).topk(_scores(4, 4), 5)  # only 4 tiles
