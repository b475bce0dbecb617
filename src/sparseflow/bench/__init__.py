"""Benchmarks run by ``sparseflow bench``: measured ratios against a dense baseline in the same run.

Each benchmark follows the experiment protocol (:mod:`sparseflow.experiments.protocol`): a frozen config,
``run(config, out, progress) -> Result`` and ``write_outputs(result, out)``; :mod:`sparseflow.bench.registry`
lists them and the command-line tool generates one command per entry. A benchmark writes files only when
``--out`` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparseflow.training.options import RunOptions, check, option
from sparseflow.training.rundir import write_results


@dataclass(frozen=True)
class BenchOptions(RunOptions):
    """``--out``: where a benchmark writes its files (nothing is written without it)."""

    out: Path | None = option(None, "Write result.json (and the report files, if any) here; nothing is written "
                                    "without it.")


@dataclass(frozen=True)
class DataBenchOptions(BenchOptions):
    """:class:`BenchOptions` and ``--data-dir``, the folder a benchmark reads its dataset from."""

    data_dir: Path | None = option(None, "Folder with the MNIST IDX .gz files.")

    def __post_init__(self) -> None:
        check(self)
        if self.data_dir is not None and not Path(self.data_dir).is_dir():  # even where --quick would not read it
            from sparseflow.errors import DataError

            raise DataError(f"--data-dir {str(self.data_dir)!r} is not a folder: pass the folder that holds the "
                            "MNIST IDX .gz files (e.g. ../shared/data/mnist)")


def result_writer(name: str) -> Callable[[Any, Path], dict[str, Any]]:
    """A ``write_outputs`` for a benchmark whose only file is OUT/result.json (stamped ``name``): the JSON object."""

    def write_outputs(result: Any, out: Path) -> dict[str, Any]:
        data = result.to_json()
        write_results(out, name, data, "result.json")
        return data

    return write_outputs
