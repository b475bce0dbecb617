"""Run settings that experiments share and that do not change what a run computes, only where its data comes
from or whether it may start: ``--data-dir`` (MNIST instead of the embedded 8x8 digits) and ``--yes``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparseflow.errors import SparseflowError
from sparseflow.training.options import RunOptions, check, option
from sparseflow.training.rundir import check_budget


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
class BudgetOptions(RunOptions):
    """``--out`` and ``--yes``: run a grid even when its estimated time exceeds an hour."""

    yes: bool = option(False, "Run even when the estimated time exceeds an hour.")

    def __post_init__(self) -> None:
        check(self)

    def check_budget(self, estimate_s: float, what: str) -> None:
        """Refuse a run estimated past the budget unless ``--yes`` (:func:`sparseflow.training.rundir.check_budget`)."""
        check_budget(estimate_s, self.yes, what)


@dataclass(frozen=True)
class DataBudgetOptions(DataOptions, BudgetOptions):
    """``--out``, ``--data-dir`` and ``--yes``."""
