"""Tiny Shakespeare: the split, the checksum and the windows against the file read by hand; the loaders' epochs."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import pytest
import torch

from sparseflow.errors import DataError, SparseflowError
from sparseflow.training.data import load_dataset, loaders
from sparseflow.training.text import TINYSHAKESPEARE_SHA256, TextDataset

TEXT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare"
needs_text = pytest.mark.skipif(not (TEXT_DIR / "input.txt").is_file(), reason=f"no input.txt in {TEXT_DIR}")


@pytest.fixture(scope="module")
def text() -> str:
    return (TEXT_DIR / "input.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def ds() -> TextDataset:
    return load_dataset("tinyshakespeare", TEXT_DIR)


@needs_text
def test_checksum_is_the_published_one() -> None:
    blob = (TEXT_DIR / "input.txt").read_bytes()
    listed = dict(line.split()[::-1] for line in (TEXT_DIR / "SHA256SUMS").read_text().splitlines() if line.strip())
    assert hashlib.sha256(blob).hexdigest() == TINYSHAKESPEARE_SHA256 == listed["input.txt"]


@needs_text
def test_split_and_vocabulary_by_hand(ds: TextDataset, text: str) -> None:
    n = len(text)
    assert n == 1_115_394
    n_train = int(n * 0.9)  # nanoGPT's prepare.py
    assert (len(ds.train_tokens), len(ds.val_tokens)) == (n_train, n - n_train) == (1_003_854, 111_540)
    assert ds.vocab == "".join(sorted(set(text))) and ds.num_classes == 65
    assert ds.decode(ds.train_tokens) == text[:n_train]
    assert ds.decode(ds.val_tokens) == text[n_train:]
    assert ds.encode("First Citizen:").tolist() == [ds.vocab.index(c) for c in "First Citizen:"]


@needs_text
def test_windows_are_the_text_slices(ds: TextDataset, text: str) -> None:
    t, n_train, n = 128, 1_003_854, len(text)
    assert ds.context == t and ds.input_shape == (t,)
    assert ds.x_train.shape == ds.y_train.shape == (n_train - t, t)  # every start with a full target window
    for i in (0, 1, 777_777, n_train - t - 1):
        assert ds.decode(ds.x_train[i]) == text[i : i + t]
        assert ds.decode(ds.y_train[i]) == text[i + 1 : i + t + 1]
    assert ds.x_test.shape == ((n - n_train - 1) // t, t) == (871, t)  # the last partial window dropped
    for j in (0, 500, 870):
        start = n_train + j * t  # non-overlapping validation windows
        assert ds.decode(ds.x_test[j]) == text[start : start + t]
        assert ds.decode(ds.y_test[j]) == text[start + 1 : start + t + 1]
    assert ds.epoch_windows == n_train // t == 7842


@needs_text
def test_loader_draws_an_epoch_of_random_windows_reproducibly(ds: TextDataset) -> None:
    train, test = loaders(ds, 64, seed=3)
    assert len(train) == math.ceil(7842 / 64) and len(test) == math.ceil(871 / 64)
    first = [next(iter(loaders(ds, 64, seed=3)[0]))[0] for _ in range(2)]
    assert torch.equal(first[0], first[1])  # same seed, same windows
    it = iter(train)
    x, y = next(it)
    assert x.shape == y.shape == (64, 128) and torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    assert not torch.equal(next(iter(train))[0], x)  # the next epoch draws other windows


@needs_text
def test_subset_and_context(ds: TextDataset) -> None:
    small = load_dataset("tinyshakespeare", TEXT_DIR, context=16, subset=100, seed=1)
    assert isinstance(small, TextDataset) and small.x_train.shape == (100, 16) and small.epoch_windows == 100
    assert small.vocab == ds.vocab and small.x_test.shape == ((111_540 - 1) // 16, 16)
    cut = dataclasses.replace(small, x_test=small.x_test[:5], y_test=small.y_test[:5])
    assert isinstance(cut, TextDataset) and len(cut.x_test) == 5
    with pytest.raises(SparseflowError, match="context"):
        load_dataset("digits", context=16)
    with pytest.raises(SparseflowError, match="not in the tinyshakespeare vocabulary"):
        ds.encode("naïve")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="pass data_dir"):
        load_dataset("tinyshakespeare")
    with pytest.raises(DataError, match=f"{tmp_path / 'input.txt'} does not exist.*point data_dir"):
        load_dataset("tinyshakespeare", tmp_path)
    with pytest.raises(DataError, match="does not download"):
        load_dataset("tinyshakespeare", tmp_path, download=True)


@needs_text
def test_changed_file_is_refused(tmp_path: Path) -> None:
    blob = bytearray((TEXT_DIR / "input.txt").read_bytes())
    blob[1000] ^= 1  # one bit
    (tmp_path / "input.txt").write_bytes(bytes(blob))
    with pytest.raises(DataError, match=f"{tmp_path / 'input.txt'} is not the original.*sha256.*replace it"):
        load_dataset("tinyshakespeare", tmp_path)


def test_shards_of_an_epoch_of_windows_are_the_single_process_batches() -> None:
    """Data-parallel ranks split the same epoch-sized draw from all windows that one process makes."""
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    from sparseflow.training.distributed import ShardedBatches

    n, per_epoch, batch, world = 50, 20, 4, 2
    ds = TensorDataset(torch.arange(n))
    g = torch.Generator().manual_seed(5)
    ref = DataLoader(ds, batch_size=world * batch, sampler=RandomSampler(ds, num_samples=per_epoch, generator=g),
                     generator=g)
    gens = [torch.Generator().manual_seed(5) for _ in range(world)]
    parts = [ShardedBatches(n, batch, g, rank=r, world=world, num_samples=per_epoch) for r, g in enumerate(gens)]
    shards = [DataLoader(ds, batch_sampler=p, generator=g) for p, g in zip(parts, gens)]
    for _epoch in range(2):
        expected = [b[0] for b in ref]
        got = list(zip(*[[b[0] for b in s] for s in shards]))
        assert len(got) == len(expected) == len(parts[0]) == 3  # 20 windows: 8 + 8 + 4
        for whole, pieces in zip(expected, got):
            assert torch.equal(torch.cat(pieces), whole)
