"""Datasets against oracles: scikit-learn's digits, raw IDX bytes parsed by hand, sha256 checks, a local mirror."""

from __future__ import annotations

import functools
import os
import gzip
import http.server
import random
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseflow.training.data import DATASETS, Dataset, download_dataset, load_dataset, loaders
from sparseflow.errors import DataError, SparseflowError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MNIST_DIR = SHARED / "mnist"
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
needs_mnist = pytest.mark.skipif(
    not all((MNIST_DIR / f).is_file() for f in FILES), reason=f"MNIST files not found in {MNIST_DIR}"
)


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist", MNIST_DIR)


@pytest.fixture(scope="module")
def mnist1d() -> Dataset:
    return load_dataset("mnist1d")


def test_digits_equals_sklearn() -> None:
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    bunch = load_digits()
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert (len(ds.x_train), len(ds.x_test)) == (1437, 360)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    # Every example is an unmodified sklearn example divided by 16, with its own label.
    x = torch.cat([ds.x_train, ds.x_test]).reshape(-1, 64) * 16
    y = torch.cat([ds.y_train, ds.y_test])
    order = np.lexsort(np.c_[bunch.data, bunch.target].T)
    ours = np.lexsort(np.c_[x.numpy(), y.numpy()].T)
    np.testing.assert_allclose(x.numpy()[ours], bunch.data[order], atol=1e-5)
    np.testing.assert_array_equal(y.numpy()[ours], bunch.target[order])
    # Stratified: each class keeps its share in the test set to within one example.
    expected = np.bincount(bunch.target) * 0.2
    assert np.all(np.abs(np.bincount(ds.y_test.numpy()) - expected) <= 1)


def test_subset_is_seeded_and_test_set_fixed() -> None:
    a = load_dataset("digits", subset=100, seed=1)
    b = load_dataset("digits", subset=100, seed=1)
    c = load_dataset("digits", subset=100, seed=2)
    full = load_dataset("digits")
    assert len(a.x_train) == 100
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)
    assert torch.equal(a.x_test, c.x_test) and torch.equal(a.x_test, full.x_test)


def test_mnist1d_shapes_standardised_and_rng_untouched(mnist1d: Dataset) -> None:
    assert mnist1d.input_shape == (1, 40)
    assert (len(mnist1d.x_train), len(mnist1d.x_test)) == (4000, 1000)
    assert abs(mnist1d.x_train.mean().item()) < 1e-4 and abs(mnist1d.x_train.std().item() - 1) < 1e-3
    assert set(mnist1d.y_train.unique().tolist()) == set(range(10))
    # make_dataset reseeds numpy and random globally; the loader must restore both.
    np.random.seed(123), random.seed(123)
    expected = (np.random.rand(), random.random())
    np.random.seed(123), random.seed(123)
    again = load_dataset("mnist1d", subset=10)
    assert (np.random.rand(), random.random()) == expected
    assert torch.equal(again.x_test, mnist1d.x_test)


@needs_mnist
def test_mnist_matches_raw_bytes(mnist: Dataset) -> None:
    assert (len(mnist.x_train), len(mnist.x_test)) == (60000, 10000)
    assert mnist.input_shape == (1, 28, 28)
    for split, fname in ((mnist.y_train, FILES[1]), (mnist.y_test, FILES[3])):
        raw = np.frombuffer(gzip.decompress((MNIST_DIR / fname).read_bytes())[8:], dtype=np.uint8)
        assert torch.bincount(split, minlength=10).tolist() == np.bincount(raw, minlength=10).tolist()
    # Hand parse: 16-byte header (magic, count, rows, cols), then row-major 28x28 bytes per image.
    with gzip.open(MNIST_DIR / FILES[0]) as f:
        header = f.read(16)
        first = np.frombuffer(f.read(784), dtype=np.uint8).reshape(28, 28)
    assert int.from_bytes(header[:4], "big") == 2051 and int.from_bytes(header[4:8], "big") == 60000
    expected = (first / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(mnist.x_train[0, 0].numpy(), expected, atol=1e-5)
    assert mnist.y_train[0].item() == 5  # the famous first MNIST digit


@needs_mnist
def test_corrupt_file_names_the_file(tmp_path: Path) -> None:
    for f in FILES:
        shutil.copy(MNIST_DIR / f, tmp_path / f)
    bad = tmp_path / FILES[3]
    blob = bytearray(bad.read_bytes())
    blob[100] ^= 0xFF
    bad.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=FILES[3]) as info:
        load_dataset("mnist", tmp_path)
    assert "ae18e77e" in str(info.value)  # the expected hash is in the message


def test_missing_files_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="download") as info:
        load_dataset("mnist", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value) and FILES[0] in str(info.value)
    with pytest.raises(DataError, match="data_dir"):
        load_dataset("fashion-mnist")
    with pytest.raises(SparseflowError, match="cifar10.*digits"):
        load_dataset("cifar10")
    for subset in (0, -3, 2.5, 10**9):
        with pytest.raises(SparseflowError, match="subset"):
            load_dataset("digits", subset=subset)


def test_loaders_seeded_order_and_validation() -> None:
    ds = load_dataset("digits", subset=64)
    first = [torch.cat([y for _, y in loaders(ds, 16, seed=s)[0]]) for s in (0, 0, 1)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])
    _, test = loaders(ds, 100, seed=0)
    assert torch.equal(torch.cat([y for _, y in test]), ds.y_test)
    for bad in (0, -1, 1.5):
        with pytest.raises(SparseflowError, match="batch_size"):
            loaders(ds, bad, seed=0)  # type: ignore[arg-type]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on an ephemeral port serving an (empty) folder; yields (url, folder)."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root
    finally:
        server.shutdown()
        server.server_close()


@needs_mnist
def test_download_from_mirror(mirror: tuple[str, Path], tmp_path: Path, mnist: Dataset) -> None:
    url, root = mirror
    for f in FILES:
        shutil.copy(MNIST_DIR / f, root / f)
    dest = tmp_path / "data" / "mnist"
    assert download_dataset("mnist", dest, base_url=url) == [dest / f for f in FILES]
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)  # no temporary files left
    assert download_dataset("mnist", dest, base_url=url) == []  # nothing missing, nothing fetched
    assert torch.equal(load_dataset("mnist", dest, download=True).y_test, mnist.y_test)


@needs_mnist
def test_corrupt_download_leaves_nothing(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, root = mirror
    dest = tmp_path / "data"
    dest.mkdir()
    for f in FILES[:3]:  # only the test labels are missing, and the mirror serves them corrupted
        shutil.copy(MNIST_DIR / f, dest / f)
    blob = bytearray((MNIST_DIR / FILES[3]).read_bytes())
    blob[-1] ^= 0xFF
    (root / FILES[3]).write_bytes(bytes(blob))
    with pytest.raises(DataError, match=FILES[3]):
        download_dataset("mnist", dest, base_url=url)
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES[:3])


def test_download_failures_name_the_url(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = mirror  # serves an empty folder: every file is a 404
    with pytest.raises(DataError, match=f"{url}{FILES[0]}.*manually"):
        download_dataset("fashion-mnist", tmp_path / "a", base_url=url)
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    with pytest.raises(DataError, match=closed):
        download_dataset("mnist", tmp_path / "b", base_url=closed, timeout=5)
    assert list((tmp_path / "a").iterdir()) == [] and list((tmp_path / "b").iterdir()) == []
    assert download_dataset("digits", tmp_path / "c") == []
    with pytest.raises(SparseflowError, match="timeout"):
        download_dataset("mnist", tmp_path, timeout=0)


def test_full_disk_during_a_download_names_the_file_not_the_network(mirror: tuple[str, Path], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    url, root = mirror
    (root / FILES[0]).write_bytes(b"x" * 1000)
    real_fdopen = os.fdopen

    class FullFile:  # the temporary download file: its writes fail as on a full disk
        def __init__(self, fd: int, mode: str) -> None:
            self.f = real_fdopen(fd, mode)

        def __enter__(self) -> "FullFile":
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fdopen", FullFile)
    with pytest.raises(SparseflowError) as e:
        download_dataset("mnist", tmp_path / "d", base_url=url)
    dest = tmp_path / "d" / FILES[0]
    assert str(e.value).startswith(f"cannot write {str(dest)!r} (the disk is full): no file was written")
    assert not isinstance(e.value, DataError)  # not "check the network"
    assert list((tmp_path / "d").iterdir()) == []  # no partial file


def test_dataset_names_are_the_public_list() -> None:
    assert DATASETS == ("digits", "mnist1d", "mnist", "fashion-mnist", "tinyshakespeare")
