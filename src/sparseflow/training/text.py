"""Tiny Shakespeare at the character level: the language-modelling set of char-rnn (Karpathy 2015) and nanoGPT.

``input.txt`` (1,115,394 characters, 65 distinct) is read from ``data_dir``, checked against its SHA-256 before
it is used, and split as nanoGPT's ``data/shakespeare_char/prepare.py`` splits it: the first 90 % of the
characters for training, the last 10 % for validation. The vocabulary is the sorted set of characters of the
whole file, so a character's id is its rank (``"\\n"`` is 0, ``" "`` is 1, ``"a"`` is 39).

Examples are windows of ``context`` characters: ``x = text[i : i + T]``, ``y = text[i + 1 : i + T + 1]`` (the
next character at every position). Training windows start at every position (``x_train`` is a view of the
encoded text, not a copy: do not materialise it) and an epoch draws :attr:`TextDataset.epoch_windows` of
them at random starts without replacement (as many as the text has non-overlapping windows, so an epoch
sees every character once in expectation), with the loader's seeded generator: nanoGPT's random windows,
reproducible and resumable like any other loader of :func:`~sparseflow.training.data.loaders`.
Validation windows are fixed and non-overlapping (stride ``T``, the last partial window dropped), so the
validation loss is the mean cross-entropy over the same characters for every run; perplexity is its exp.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sparseflow.errors import DataError, SparseflowError
from sparseflow.training.data import Dataset

TEXT_DATASETS = ("tinyshakespeare",)
TEXT_FILE = "input.txt"
# sha256 of karpathy/char-rnn's data/tinyshakespeare/input.txt (the file nanoGPT downloads).
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TRAIN_FRACTION = 0.9
DEFAULT_CONTEXT = 128


@dataclass(frozen=True, eq=False)
class TextDataset(Dataset):
    """A character-level corpus as next-character windows: ``x`` and ``y`` are int64 ``(N, context)``.

    ``num_classes`` is the vocabulary size; :meth:`encode` and :meth:`decode` map text to ids and back.
    ``train_tokens`` / ``val_tokens`` hold the whole encoded splits (1-D int64).
    """

    vocab: str = ""
    train_tokens: Tensor | None = None
    val_tokens: Tensor | None = None

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != torch.int64 or y.dtype != torch.int64 or x.dim() != 2 or x.shape != y.shape:
                raise DataError(
                    f"text dataset {self.name!r}: {split} split needs int64 windows x and y of one shape (N, T), "
                    f"got x {x.dtype} {tuple(x.shape)} and y {y.dtype} {tuple(y.shape)}; build it with load_dataset()"
                )
        if len(self.vocab) != self.num_classes or len(set(self.vocab)) != len(self.vocab):
            raise DataError(f"text dataset {self.name!r}: vocabulary of {len(self.vocab)} characters "
                            f"(distinct: {len(set(self.vocab))}) for num_classes={self.num_classes}")

    @property
    def context(self) -> int:
        """Characters per window (the model's context length)."""
        return int(self.x_train.shape[1])

    @property
    def epoch_windows(self) -> int:
        """Training windows per epoch: the text's non-overlapping windows, or all of a smaller subset."""
        n_chars = len(self.train_tokens) if self.train_tokens is not None else len(self.x_train) * self.context
        return max(1, min(len(self.x_train), n_chars // self.context))

    def encode(self, text: str) -> Tensor:
        """Character ids of ``text`` (int64, 1-D); a character outside the vocabulary is refused."""
        index = {c: i for i, c in enumerate(self.vocab)}
        missing = sorted(set(text) - index.keys())
        if missing:
            raise SparseflowError(f"characters {''.join(missing)!r} are not in the {self.name} vocabulary "
                                  f"({len(self.vocab)} characters); remove them from the text")
        return torch.tensor([index[c] for c in text], dtype=torch.int64)

    def decode(self, ids: Tensor | list[int]) -> str:
        """The text of character ids (any shape is read flat)."""
        flat = ids.reshape(-1).tolist() if isinstance(ids, Tensor) else list(ids)
        if any(not 0 <= i < len(self.vocab) for i in flat):
            raise SparseflowError(f"ids must lie in [0, {len(self.vocab)}), got {min(flat)}..{max(flat)}")
        return "".join(self.vocab[i] for i in flat)


def load_text(name: str, data_dir: str | Path | None, context: int = DEFAULT_CONTEXT) -> TextDataset:
    """Read, check and split ``name`` (one of :data:`TEXT_DATASETS`) from ``data_dir/input.txt``."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise SparseflowError(f"context must be a positive number of characters, got {context!r}")
    if data_dir is None:
        raise DataError(f"dataset {name!r} is read from a file: pass data_dir, the folder holding {TEXT_FILE} "
                        f"(here: ../shared/data/{name})")
    path = Path(data_dir) / TEXT_FILE
    if not path.is_file():
        hint = f" (a subfolder {Path(data_dir) / name} exists: pass that)" if (Path(data_dir) / name).is_dir() else ""
        raise DataError(f"dataset {name!r}: {path} does not exist{hint}; point data_dir at the folder that holds "
                        f"Tiny Shakespeare's {TEXT_FILE} (karpathy/char-rnn, data/tinyshakespeare/input.txt)")
    blob = path.read_bytes()
    actual = hashlib.sha256(blob).hexdigest()
    if actual != TINYSHAKESPEARE_SHA256:  # checked before decoding: a changed file must never be trained on
        raise DataError(f"{path} is not the original Tiny Shakespeare file: sha256 {actual}, expected "
                        f"{TINYSHAKESPEARE_SHA256}; replace it with the original {TEXT_FILE} (1,115,394 bytes)")
    codes = np.frombuffer(blob.decode("utf-8").encode("utf-32-le"), dtype=np.uint32)  # one code point each
    chars = np.unique(codes)  # sorted: the id of a character is its rank
    ids = torch.from_numpy(np.searchsorted(chars, codes).astype(np.int64))
    vocab = "".join(map(chr, chars.tolist()))
    n_train = int(len(ids) * TRAIN_FRACTION)
    train, val = ids[:n_train], ids[n_train:]
    if len(val) <= context:
        raise SparseflowError(f"context={context} leaves no validation window in {len(val)} characters; "
                              f"use a context below {len(val)}")
    # unfold(0, T, step) is a view: window i is tokens[i * step : i * step + T]; y is the same shifted by one.
    return TextDataset(
        name, train[:-1].unfold(0, context, 1), train[1:].unfold(0, context, 1),
        val[:-1].unfold(0, context, context), val[1:].unfold(0, context, context), len(vocab),
        vocab=vocab, train_tokens=train, val_tokens=val,
    )
