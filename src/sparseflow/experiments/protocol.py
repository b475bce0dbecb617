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
``run`` then takes it as a keyword argument ``options=``. ``check(config, options)``, when given, runs before
anything else: it raises a :class:`~sparseflow.errors.SparseflowError` to refuse the run (an estimate past the
time budget without ``--yes``) and may return a line to show before the run starts.

A benchmark (``sparseflow bench NAME``, :mod:`sparseflow.bench.registry`) is an :class:`Experiment` too; it
writes its files only when ``out`` is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
    min_width: int | None = None  # console columns at least (wide tables are never cut)
    note: str = ""  # a line printed under the table

    def rich(self) -> Any:
        """The table as a ``rich.table.Table``: the ``left`` columns aligned left, the others right."""
        from rich.table import Table

        table = Table(title=self.title)
        left = (self.columns[0],) if self.left is None else tuple(self.left)
        for col in self.columns:
            table.add_column(col, justify="left" if col in left else "right")
        for row in self.rows:
            table.add_row(*(str(v) for v in row))
        return table


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
    check: Callable[[Any, Any], str | None] | None = None  # before running: refuse (raise) or return a note
