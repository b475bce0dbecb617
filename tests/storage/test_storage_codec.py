"""Mask codecs: exact round trips, sizes against log2 C(N, n), structured codecs chosen when they apply."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseflow as sf
from sparseflow.errors import StorageError
from sparseflow.storage import codec
from sparseflow.storage.codec import decode_iid, decode_mask, encode_iid, encode_mask, iid_bound_bits


def brute_log2_binom(n: int, k: int) -> float:
    return math.log2(math.comb(n, k))


def test_bound_matches_exact_binomial() -> None:
    for n, k in [(10, 3), (1000, 17), (4096, 2048), (5, 0), (5, 5)]:
        assert iid_bound_bits(n, k) == pytest.approx(brute_log2_binom(n, k), abs=1e-6)


@pytest.mark.parametrize("density", [0.005, 0.01, 0.05, 0.1, 0.2, 0.5, 0.8, 0.95, 0.995])
def test_iid_size_within_spec_of_the_bound(density: float) -> None:
    # ≤ 1.002 × log2 C(N, n) + 64 bytes per tensor, for i.i.d. random masks at every density and its mirror.
    rng = np.random.default_rng(int(density * 1000))
    mask = rng.random(200_000) < density
    nnz = int(mask.sum())
    payload = encode_iid(mask)
    assert 8 * len(payload) <= 1.002 * iid_bound_bits(mask.size, nnz) + 64 * 8
    assert np.array_equal(decode_iid(payload, mask.size, nnz), mask)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 300), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1), st.booleans())
def test_iid_round_trip_any_mask(n: int, p: float, seed: int, runs: bool) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random(n) < p
    if runs and n:  # long runs at either end exercise escapes and the all-zero-gap tail
        cut = int(rng.integers(0, n))
        mask[:cut] = bool(rng.integers(0, 2))
    assert np.array_equal(decode_iid(encode_iid(mask), n, int(mask.sum())), mask)


def test_long_gaps_use_escapes_and_still_round_trip() -> None:
    mask = np.zeros(3_000_000, dtype=bool)
    mask[[5, 2_999_999]] = True  # one gap of ~3M positions: far beyond the alphabet
    payload = encode_iid(mask)
    assert np.array_equal(decode_iid(payload, mask.size, 2), mask)
    assert 8 * len(payload) <= iid_bound_bits(mask.size, 2) + 64 * 8


def test_all_false_and_all_true_cost_nothing() -> None:
    for value in (False, True):
        mask = np.full(1000, value)
        assert encode_iid(mask) == b""
        assert np.array_equal(decode_iid(b"", 1000, 1000 if value else 0), mask)


def test_payload_cannot_claim_more_positions_than_it_holds() -> None:
    with pytest.raises(StorageError, match="cannot hold"):
        decode_iid(b"", 10_000, 5_000)
    payload = encode_iid(np.arange(1000) % 7 == 0)
    with pytest.raises(StorageError):
        decode_iid(payload[:-4], 1000, 143)  # truncated: the sentinel check fails
    with pytest.raises(StorageError):
        decode_iid(payload, 1000, 150)  # wrong count


def test_nm_codec_costs_log2_binom_m_n_per_group() -> None:
    torch.manual_seed(0)
    w = torch.randn(256, 512)
    groups = w.abs().reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(2, dim=1).indices, True)
    mask = keep.reshape(256, 512).numpy()
    payload = encode_mask(mask)
    assert payload[0] == codec.NM
    bits_per_position = 8 * (len(payload) - 3) / mask.size  # minus codec byte and n, m
    assert bits_per_position <= 1.002 * math.log2(6) / 4 + 64 * 8 / mask.size
    assert np.array_equal(decode_mask(payload, mask.shape, int(mask.sum())), mask)


def test_nm_codec_follows_the_conv_matrix_view() -> None:
    # NM groups run along input channels of (out, in, kh, kw); the codec must find them in that view.
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 4, 3))
    method = sf.MagnitudePruning(sparsity=0.5, pattern=sf.NM(2, 4))
    method.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    mask = method.mask["0.weight"].numpy()
    payload = encode_mask(mask)
    assert payload[0] == codec.NM
    assert np.array_equal(decode_mask(payload, mask.shape, int(mask.sum())), mask)


def test_block_codec_codes_the_tile_grid() -> None:
    rng = np.random.default_rng(3)
    grid = rng.random((32, 16)) < 0.2
    mask = np.repeat(np.repeat(grid, 4, axis=0), 8, axis=1)  # 128 x 128, 4x8 tiles
    payload = encode_mask(mask)
    assert payload[0] == codec.BLOCK
    assert 8 * len(payload) <= iid_bound_bits(grid.size, int(grid.sum())) + 64 * 8
    assert np.array_equal(decode_mask(payload, mask.shape, int(mask.sum())), mask)


def test_structured_codecs_never_lose_to_iid() -> None:
    rng = np.random.default_rng(5)
    for shape in [(64, 64), (3, 5, 2, 2), (1, 100), (100,), (7,)]:
        mask = rng.random(shape) < 0.3
        payload = encode_mask(mask)
        assert len(payload) <= 1 + len(encode_iid(mask.reshape(-1)))
        assert np.array_equal(decode_mask(payload, shape, int(mask.sum())), mask)


def test_decode_mask_rejects_bad_headers() -> None:
    mask = np.random.default_rng(0).random((16, 16)) < 0.5
    payload = encode_mask(mask)
    with pytest.raises(StorageError, match="outside"):
        decode_mask(payload, (16, 16), 300)
    with pytest.raises(StorageError, match="empty"):
        decode_mask(b"", (16, 16), 10)
    with pytest.raises(StorageError, match="codec"):
        decode_mask(bytes([99]) + payload[1:], (16, 16), int(mask.sum()))
