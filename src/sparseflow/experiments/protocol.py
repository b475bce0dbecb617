"""The one protocol every experiment follows, so that the CLI, ``experiment all`` and the docs treat them alike.

An experiment lives in ``sparseflow/experiments/<name>/`` and exports ``EXPERIMENT``, an :class:`Experiment`:

- ``config``: a frozen dataclass whose fields are declared with :func:`sparseflow.training.options.option`;
  ``Config()`` is the full run and ``build(Config, {}, quick=True)`` the quick one (each field's ``quick=``);
- ``run(config, out, progress) -> Result``: does the work (``out`` may hold partial results to resume from;
  ``progress(what="", advance=1, total=None)`` is called as units of work finish);
- ``Result.criteria()``: ``{name: {"value", "target", "pass"}}`` computed from the measurements (``"pass": None``
  with a ``"note"`` when the scale cannot test it), ``Result.to_json()`` and, optionally, ``Result.tables()``;
- ``write_outputs(result, out) -> dict``: writes ``results.json`` (stamped), ``report.md`` and the figures, and
  returns the JSON object the CLI prints with ``--json``.

``options`` is an optional dataclass of run settings that do not change the result (data folders, ``--yes``);
``run`` then takes it as a keyword argument ``options=``. ``check(config, options)``, optional, runs before
``run``: it refuses what cannot run (a missing data folder, a grid past the time budget without ``--yes``)
with a :class:`~sparseflow.errors.SparseflowError` and returns notes for stderr (the estimate, what is
skipped). ``full_s`` (the measured wall time of the full run) and ``data`` (the datasets it reads) are what
``sparseflow experiment all`` needs to size and feed it (:mod:`sparseflow.experiments.registry`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sparseflow.training.options import command_line as options_command_line

Tick = Callable[..., None]


def no_progress(what: str = "", advance: float = 1, total: float | None = None) -> None:
    """The default progress callback: does nothing."""


@dataclass(frozen=True)
class TableData:
    """A table a result shows on the console: title, column names, rows of cells (str or numbers)."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    left: Sequence[str] | None = None  # columns aligned left (default: the first)
    min_width: int | None = None  # console columns it needs at least (rich would elide numbers below)
    note: str = ""  # a line printed under the table


@dataclass(frozen=True)
class Data:
    """The datasets an experiment reads: sub-folders of ``experiment all --data-dir``, each passed by a flag."""

    folders: tuple[str, ...]  # e.g. ("mnist", "fashion-mnist")
    flags: tuple[str, ...]  # the flag passing each folder, e.g. ("--mnist-dir", "--fashion-dir")
    optional: bool = False  # runs without them too (on a built-in dataset)
    any: bool = False  # runs on whichever of them are given; skipped only when none is


class Result(Protocol):
    def criteria(self) -> dict[str, dict[str, Any]]: ...

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Experiment:
    """One experiment: its name, one-line summary, config, run and outputs (see the module docstring)."""

    name: str
    summary: str
    config: type
    run: Callable[..., Any]
    write_outputs: Callable[[Any, Path], dict[str, Any]]
    options: type | None = None
    tables: Callable[[Any], list[TableData]] | None = None  # console tables besides the criteria
    doc: str = ""  # the command's help (default: the summary)
    check: Callable[[Any, Any], Sequence[str] | str | None] | None = None  # before run: refuse, or notes for stderr
    full_s: float = 0.0  # wall seconds of the full run on the reference 2-core machine (README)
    data: Data | None = None


def command_line(name: str, config: Any, options: Any = None) -> str:
    """``sparseflow experiment NAME`` with the flags that reproduce ``config`` and ``options``
    (:func:`sparseflow.training.options.command_line`)."""
    return options_command_line(f"sparseflow experiment {name}", config, *(() if options is None else (options,)))
