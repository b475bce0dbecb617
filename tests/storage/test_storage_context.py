"""Context-model mask coder: exact round trips, loud failures on malformed payloads, and a trained mask coded
below its i.i.d. bound ``N·H(n/N)``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseflow.errors import SparseflowError
from sparseflow.storage import context


def roundtrip(mask: np.ndarray) -> bytes:
    payload = context.encode(mask)
    back = context.decode(payload, *mask.shape, int(mask.sum()))
    assert back.dtype == bool and back.shape == mask.shape
    assert np.array_equal(back, mask)
    return payload


def entropy_bits(mask: np.ndarray) -> float:
    p = mask.mean()
    return 0.0 if p in (0.0, 1.0) else mask.size * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), density=st.sampled_from([0.0, 1.0, 0.02, 0.1, 0.5, 0.93]),
       seed=st.integers(0, 2**31 - 1))
def test_random_masks_round_trip(rows: int, cols: int, density: float, seed: int) -> None:
    roundtrip(np.random.default_rng(seed).random((rows, cols)) < density)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(2, 60), cols=st.integers(2, 60), seed=st.integers(0, 2**31 - 1))
def test_structured_masks_round_trip(rows: int, cols: int, seed: int) -> None:
    # Rank-1 densities plus empty and full rows and columns: exercises every row symbol and the contexts.
    rng = np.random.default_rng(seed)
    p = np.clip(rng.gamma(0.5, size=(rows, 1)) * rng.gamma(0.5, size=(1, cols)) * 0.3, 0, 1)
    mask = rng.random((rows, cols)) < p
    mask[rng.integers(rows)] = True
    mask[:, rng.integers(cols)] = False
    roundtrip(mask)
    roundtrip(np.ascontiguousarray(np.repeat(mask, 2, axis=0)))  # rows repeat at lag 1


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (17, 1), (3, 3)])
@pytest.mark.parametrize("fill", ["zeros", "ones", "single", "all_but_one"])
def test_edge_cases(shape: tuple[int, int], fill: str) -> None:
    mask = np.zeros(shape, dtype=bool) if fill in ("zeros", "single") else np.ones(shape, dtype=bool)
    if fill in ("single", "all_but_one"):
        mask.flat[mask.size // 2] = fill == "single"
    payload = roundtrip(mask)
    if fill in ("zeros", "ones") or mask.size == 1:
        assert payload == b"\x00"  # a constant mask is the flag byte alone


def test_trained_mlp_beats_iid_bound() -> None:
    # An MLP trained on the embedded digits set and globally magnitude-pruned to 90 %: inputs (pixels) and
    # units keep very different numbers of weights, which the context model learns and i.i.d. cannot.
    from sparseflow.training.data import load_dataset

    torch.manual_seed(0)
    ds = load_dataset("digits")
    x, y = ds.x_train.flatten(1), ds.y_train
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(20):
        for s in range(0, len(x), 128):
            opt.zero_grad()
            F.cross_entropy(model(x[s : s + 128]), y[s : s + 128]).backward()
            opt.step()
    weights = [m.weight.detach().numpy() for m in model if isinstance(m, nn.Linear)]
    flat = np.concatenate([np.abs(w).ravel() for w in weights])
    threshold = np.sort(flat)[int(0.9 * flat.size)]
    masks = [np.abs(w) >= threshold for w in weights]
    bits = sum(8 * len(roundtrip(m)) for m in masks)
    assert bits < sum(entropy_bits(m) for m in masks)


# ---------------------------------------------------------------------------------------------
# Malformed payloads: always SparseflowError, never another exception.


@pytest.fixture(scope="module")
def good() -> tuple[np.ndarray, bytes]:
    rng = np.random.default_rng(1)
    mask = rng.random((20, 30)) < np.clip(rng.gamma(1, size=(20, 1)) * 0.15, 0, 1)
    return mask, context.encode(mask)


@pytest.mark.parametrize("change, message", [
    (lambda p: b"", "truncated"),
    (lambda p: bytes([0x10]) + p[1:], "unknown flags"),
    (lambda p: bytes([0x06]) + p[1:], "unknown flags"),  # three lags
    (lambda p: p[:-1], "multiple of 4"),
    (lambda p: p + b"\x01\x00\x00\x00", "left over|header says|does not decode|impossible"),
    (lambda p: bytes([0x02]) + (999).to_bytes(4, "little") + p[1:], "lags"),
    (lambda p: bytes([0x04]) + (1).to_bytes(4, "little") * 2 + p[1:], "lags"),  # repeated lag
    (lambda p: bytes([0x02]), "truncated"),
])
def test_malformed_payloads_raise(good: tuple[np.ndarray, bytes], change, message: str) -> None:
    mask, payload = good
    with pytest.raises(SparseflowError, match=message):
        context.decode(change(payload), *mask.shape, int(mask.sum()))


def test_wrong_count_and_shape_raise(good: tuple[np.ndarray, bytes]) -> None:
    mask, payload = good
    nnz = int(mask.sum())
    # Another count changes the prior the probabilities start from, so the stream desynchronises.
    with pytest.raises(SparseflowError, match=f"header says {nnz + 1}|left over|does not decode"):
        context.decode(payload, *mask.shape, nnz + 1)
    with pytest.raises(SparseflowError, match="do not fit"):
        context.decode(payload, *mask.shape, mask.size + 1)
    with pytest.raises(SparseflowError, match="non-negative"):
        context.decode(payload, -1, 30, nnz)
    with pytest.raises(SparseflowError, match="codes to 1"):
        context.decode(payload, *mask.shape, 0)
    with pytest.raises(SparseflowError, match="2-D bool"):
        context.encode(mask.astype(np.uint8))


@settings(max_examples=80, deadline=None)
@given(data=st.binary(max_size=64), rows=st.integers(1, 12), cols=st.integers(1, 12), frac=st.floats(0, 1))
def test_garbage_decodes_or_raises(data: bytes, rows: int, cols: int, frac: float) -> None:
    nnz = int(frac * rows * cols)
    try:
        out = context.decode(data, rows, cols, nnz)
    except SparseflowError:
        return
    assert out.shape == (rows, cols) and int(out.sum()) == nnz
