"""Datasets: two embedded defaults that need no files, and MNIST / Fashion-MNIST from their original files.

Every loader returns a :class:`Dataset` of float32 inputs and int64 labels. Images keep their shape
``(N, C, H, W)``; 1-D signals are ``(N, 1, L)``, so convolutional models see a channel axis either way.

- ``digits``: scikit-learn's 1,797 8x8 digits (Alpaydin & Kaynak 1998, UCI), scaled to [0, 1], with a fixed
  stratified 80/20 split so that the test set is the same for every seed.
- ``mnist1d``: MNIST-1D (Greydanus & Kobak 2024, "Scaling down deep learning with MNIST-1D"), generated
  locally with the package's canonical arguments (seed 42): 4,000 train / 1,000 test signals of length 40.
- ``mnist`` (LeCun et al. 1998) and ``fashion-mnist`` (Xiao, Rasul & Vollgraf 2017): the four original IDX
  files, checked against their sha256 before they are parsed, normalised with the customary mean / std.
- ``tinyshakespeare``: character-level text for language models, a :class:`~sparseflow.training.text.TextDataset`
  of int64 next-character windows (:mod:`sparseflow.training.text`).

The ``seed`` of :func:`load_dataset` only chooses the training ``subset``; test sets never depend on it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import random
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from sparseflow.errors import DataError, SparseflowError
from sparseflow.io import write_error

DATASETS = ("digits", "mnist1d", "mnist", "fashion-mnist", "tinyshakespeare")

# The four original files, in the order (train images, train labels, test images, test labels).
_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# sha256 of the canonical .gz files (the same bytes on both official mirrors and in Debian's package).
_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "71524e2cd1ad2968737f7f2f2ff69cbfc32df8ccddff51593f7cb2d4e0eb5b64",
        "train-labels-idx1-ubyte.gz": "fe03b8bd7915f70bf5aa08be480aa413fbd85afcaa58b35d230d335f284fd88e",
        "t10k-images-idx3-ubyte.gz": "5634745efa576a17e7d4cf5cd9d09123c75e6538e5114267c2d156edaf519341",
        "t10k-labels-idx1-ubyte.gz": "ae18e77e031ccde52407f794d123116439864147d33ac992975f85dd4dc42af6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    },
}
_MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
# Mean and std of the training pixels in [0, 1]: the values used throughout the literature
# (PyTorch's MNIST example; Fashion-MNIST's own statistics).
_MEAN_STD = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}
_MNIST1D_SEED = 42  # get_dataset_args()'s default: the published MNIST-1D


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors with == is elementwise, not a bool
class Dataset:
    """A classification dataset held in memory: float32 inputs ``(N, *input_shape)``, int64 labels ``(N,)``."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != torch.float32 or y.dtype != torch.int64 or len(x) != len(y):
                raise DataError(
                    f"dataset {self.name!r}: {split} split needs float32 inputs and as many int64 labels, "
                    f"got x {x.dtype} {tuple(x.shape)} and y {y.dtype} {tuple(y.shape)}; build it with load_dataset()"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(1, 28, 28)`` for MNIST or ``(1, 40)`` for MNIST-1D."""
        return tuple(self.x_train.shape[1:])


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    download: bool = False,
    subset: int | None = None,
    seed: int = 0,
    context: int | None = None,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`); ``subset`` keeps that many seeded-random train examples.

    ``data_dir`` is the folder that directly holds the four IDX files of ``mnist`` / ``fashion-mnist``, or
    ``input.txt`` of ``tinyshakespeare`` (ignored for the embedded datasets); ``download=True`` fetches the IDX
    files missing there first. ``context`` is the window length of a text dataset (default 128; text only).
    """
    if name not in DATASETS:
        raise SparseflowError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset <= 0):
        raise SparseflowError(f"subset must be a positive number of training examples, got {subset!r}")
    if context is not None and name != "tinyshakespeare":
        raise SparseflowError(f"context={context!r} is the window length of a text dataset; {name!r} has none, "
                              "leave it unset")
    if name == "tinyshakespeare":
        from sparseflow.training.text import DEFAULT_CONTEXT, load_text

        if download:
            download_dataset(name, data_dir)  # (refuses: see there)
        ds = load_text(name, data_dir, DEFAULT_CONTEXT if context is None else context)
    elif name == "digits":
        ds = _digits()
    elif name == "mnist1d":
        ds = _mnist1d()
    else:
        if data_dir is None:
            raise DataError(
                f"dataset {name!r} is read from files: pass data_dir (CLI: --data-dir DIR), the folder holding "
                f"{', '.join(_FILES)} "
                f"(add download=True / --download to fetch them from {_MIRRORS[name]})"
            )
        if download:
            download_dataset(name, data_dir)
        ds = _idx_dataset(name, Path(data_dir))
    if subset is None:
        return ds
    if subset > len(ds.x_train):
        raise SparseflowError(
            f"subset={subset} exceeds the {len(ds.x_train)} training examples of {name!r}; "
            f"pass at most {len(ds.x_train)} or leave subset unset"
        )
    keep = torch.randperm(len(ds.x_train), generator=torch.Generator().manual_seed(seed))[:subset]
    return dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep])


def loaders(ds: Dataset, batch_size: int, *, seed: int) -> tuple[DataLoader, DataLoader]:
    """(train, test) loaders over ``ds``; the train order is reshuffled each epoch by a generator seeded
    with ``seed`` (same seed, same order), the test order is fixed.

    An epoch of a text dataset is ``ds.epoch_windows`` windows drawn without replacement from all training
    windows (random starts, :mod:`sparseflow.training.text`); of any other, every training example once.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SparseflowError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    examples = TensorDataset(ds.x_train, ds.y_train)
    g = torch.Generator().manual_seed(seed)
    per_epoch = getattr(ds, "epoch_windows", len(examples))  # (a TextDataset's; importing it here would cycle)
    # RandomSampler with num_samples = len draws exactly what shuffle=True draws.
    sampler = RandomSampler(examples, num_samples=per_epoch, generator=g)
    train = DataLoader(examples, batch_size=batch_size, sampler=sampler, generator=g)
    test = DataLoader(TensorDataset(ds.x_test, ds.y_test), batch_size=batch_size, shuffle=False)
    return train, test


def _digits() -> Dataset:
    # Imported here: scikit-learn takes about a second to import and most runs never touch it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    # random_state is fixed, not the user's seed: the test set must be the same for every run.
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return Dataset("digits", *(torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te)), 10)


def _mnist1d() -> Dataset:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = _MNIST1D_SEED
    # make_dataset reseeds the global `random` and numpy generators; put them back so that loading
    # data never changes the randomness of the caller's code.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        raw = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    mean, std = raw["x"].mean(), raw["x"].std()  # statistics of the training split only

    def prep(a: np.ndarray) -> Tensor:
        return torch.from_numpy(((a - mean) / std).astype(np.float32)[:, None, :])

    labels = [torch.from_numpy(np.asarray(raw[k], dtype=np.int64)) for k in ("y", "y_test")]
    return Dataset("mnist1d", prep(raw["x"]), labels[0], prep(raw["x_test"]), labels[1], 10)


def _idx_dataset(name: str, root: Path) -> Dataset:
    missing = [f for f in _FILES if not (root / f).is_file()]
    if missing:
        hint = ""
        if (root / name).is_dir():
            hint = f" (a subfolder {root / name} exists: did you mean data_dir={str(root / name)!r} (CLI: --data-dir {root / name})?)"
        raise DataError(
            f"dataset {name!r}: {root} lacks {', '.join(missing)}{hint}; pass download=True (CLI: --download) "
            f"to fetch them from {_MIRRORS[name]}, or point data_dir (CLI: --data-dir) at the folder that holds the four files"
        )
    arrays = [_read_idx(root / f, _SHA256[name][f], ndim=3 if "images" in f else 1) for f in _FILES]
    mean, std = _MEAN_STD[name]
    x_tr, y_tr, x_te, y_te = arrays
    for x, y, f in ((x_tr, y_tr, _FILES[1]), (x_te, y_te, _FILES[3])):
        if len(x) != len(y) or x.shape[1:] != (28, 28) or y.max() > 9:
            raise DataError(
                f"{root / f}: {len(y)} labels (max {y.max()}) for {len(x)} images of {x.shape[1:]}; "
                f"expected 28x28 images with one label 0..9 each: replace the files with the originals"
            )

    def images(a: np.ndarray) -> Tensor:
        t = torch.from_numpy(a.astype(np.float32)[:, None])  # astype copies: frombuffer's array is read-only
        return t.mul_(1.0 / (255.0 * std)).sub_(mean / std)  # ((a / 255) - mean) / std, in place

    def labels(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return Dataset(name, images(x_tr), labels(y_tr), images(x_te), labels(y_te), 10)


def _read_idx(path: Path, sha256: str, *, ndim: int) -> np.ndarray:
    """Verify ``path`` against ``sha256``, then parse the gzipped IDX file (LeCun's format) into a uint8 array."""
    blob = path.read_bytes()
    actual = hashlib.sha256(blob).hexdigest()
    # Checked before parsing: a truncated or tampered file must never reach the decoder.
    if actual != sha256:
        raise DataError(
            f"{path} is corrupt or not the original file: sha256 {actual}, expected {sha256}; "
            f"delete it and fetch it again (download=True / --download)"
        )
    raw = gzip.decompress(blob)
    # Header: two zero bytes, type code 0x08 (unsigned byte), number of dims, then each dim as big-endian int32.
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x0800 + ndim:
        raise DataError(f"{path}: IDX magic number {magic:#010x}, expected {0x0800 + ndim:#010x}; replace the file")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {len(raw) - offset} bytes of data; replace the file")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def download_dataset(
    name: str, data_dir: str | Path, *, base_url: str | None = None, timeout: float = 30
) -> list[Path]:
    """Fetch the IDX files of ``name`` that ``data_dir`` lacks; return the paths written (empty if none were missing).

    Each file is streamed to a temporary file beside its destination, checked against its sha256 and only
    then renamed into place, so an interrupted or corrupt download never leaves a file that looks complete.
    ``base_url`` replaces the official mirror (e.g. a local copy). ``digits`` and ``mnist1d`` need no files;
    ``tinyshakespeare`` is not downloaded (a DataError says where to place it).
    """
    if name not in DATASETS:
        raise SparseflowError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not timeout > 0:
        raise SparseflowError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if name == "tinyshakespeare":
        raise DataError("sparseflow does not download tinyshakespeare: place karpathy/char-rnn's "
                        f"data/tinyshakespeare/input.txt in {data_dir} and leave download off")
    if name not in _SHA256:
        return []
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    base = (base_url or _MIRRORS[name]).rstrip("/") + "/"
    written = []
    for fname in _FILES:
        if not (root / fname).is_file():
            _fetch(base + fname, root / fname, _SHA256[name][fname], timeout)
            written.append(root / fname)
    return written


T = TypeVar("T")


def _fetch(url: str, dest: Path, sha256: str, timeout: float) -> None:
    tmp = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            response = _network(url, dest, lambda: urllib.request.urlopen(url, timeout=timeout))
            with response:
                while chunk := _network(url, dest, lambda: response.read(1 << 20)):
                    digest.update(chunk)
                    out.write(chunk)  # a full disk fails here, not in the network calls
            out.flush()
            os.fsync(out.fileno())  # the bytes must be on disk before the rename makes them visible
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a dataset file is meant to be shared
        if digest.hexdigest() != sha256:
            raise DataError(
                f"downloaded {url} has sha256 {digest.hexdigest()}, expected {sha256}; nothing was saved. "
                f"The mirror may be broken: try again later, or place the original file manually as {dest}"
            )
        os.replace(tmp, dest)
    except OSError as e:  # writing (the network's errors are DataErrors by now)
        raise write_error(dest, e, kept=False) from e
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _network(url: str, dest: Path, call: Callable[[], T]) -> T:
    try:
        return call()
    except (OSError, urllib.error.URLError) as e:  # URLError, HTTPError and timeouts are all OSErrors
        raise DataError(
            f"could not download {url}: {e}; check the network, or place the file manually as {dest}"
        ) from e
