"""Run settings that experiments share and that do not change what a run computes, only where its data comes
from or whether it may start: ``--data-dir`` (MNIST instead of the embedded 8x8 digits) and ``--yes``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparseflow.errors import SparseflowError
from sparseflow.training.options import BudgetOptions, RunOptions, check, option


@dataclass(frozen=True)
class DataOptions(RunOptions):
    """``--out`` and ``--data-dir``: train on MNIST read from a folder instead of the embedded 8x8 digits."""

    data_dir: Path | None = option(None, "Folder with the MNIST IDX files (default: the embedded 8x8 digits).")

    def __post_init__(self) -> None:
        check(self)
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise SparseflowError(f"--data-dir {str(self.data_dir)!r} is not a folder; "
                                  "pass the folder holding the MNIST IDX files")

    @property
    def dataset(self) -> str:
        return "digits" if self.data_dir is None else "mnist"


@dataclass(frozen=True)
class DataBudgetOptions(DataOptions, BudgetOptions):
    """``--out``, ``--data-dir`` and ``--yes``."""
