"""The one runner every command prints through: progress, tables, the criteria table, ``--json`` and the exit status.

With ``--json`` stdout carries only the JSON object (its last line); tables and progress go to stderr.
Tables are never cut: when stdout is not a terminal they take the width they need.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sparseflow.io import json_safe

Tick = Callable[..., None]  # tick(what="", advance=1, total=None): one unit of work done


def console(stderr: bool, min_width: int | None = None) -> Console:
    """A console that does not wrap tables; ``min_width`` columns at least (80 when not a terminal otherwise)."""
    if min_width is None:
        return Console(stderr=stderr, soft_wrap=False)
    return Console(stderr=stderr, soft_wrap=False, width=max(Console(stderr=stderr).width, min_width))


def emit_json(obj: dict[str, Any]) -> None:
    """Write ``obj`` as one compact JSON line on stdout (NaN and inf as null)."""
    sys.stdout.write(json.dumps(json_safe(obj), separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Runner:
    """Output of one command: ``out`` for its tables (stderr under --json), ``err`` for progress and notes."""

    def __init__(self, name: str, as_json: bool, quick: bool) -> None:
        self.name, self.as_json, self.quick = name, as_json, quick
        self.out = console(as_json)
        self.err = Console(stderr=True)

    def wide(self, min_width: int) -> Console:
        """The table console at least ``min_width`` columns wide."""
        return console(self.as_json, min_width)

    @contextmanager
    def progress(self, label: str, total: float | None = None, *, enabled: bool = True) -> Iterator[Tick]:
        """A labelled bar on stderr; the yielded ``tick(what="", advance=1, total=None)`` moves it."""
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=self.err, disable=not enabled)
        with bar:
            task = bar.add_task(label, total=total)

            def tick(what: str = "", advance: float = 1, total: float | None = None) -> None:
                bar.update(task, description=f"{label}: {what}" if what else label, advance=advance,
                           **({"total": total} if total is not None else {}))

            yield tick

    @contextmanager
    def status(self, label: str) -> Iterator[Callable[[str], None]]:
        """A spinner with a message on stderr; the yielded function replaces the message's detail."""
        with self.err.status(label) as st:
            yield lambda what: st.update(f"{label}: {what}")

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
              left: Sequence[str] | None = None, min_width: int | None = None) -> None:
        """Print a table: the first column (or those in ``left``) left-aligned, the others right-aligned."""
        t = Table(title=title)
        left = (columns[0],) if left is None else tuple(left)
        for col in columns:
            t.add_column(col, justify="left" if col in left else "right")
        for row in rows:
            t.add_row(*(str(v) for v in row))
        (self.wide(min_width) if min_width else self.out).print(t)

    def print(self, text: str) -> None:
        self.out.print(text, highlight=False)

    def note(self, text: str) -> None:
        """A line on stderr (never in the JSON stream), never wrapped."""
        self.err.print(text, highlight=False, markup=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.out.print(f"[bold yellow]warning:[/] {text}", highlight=False)

    def criteria(self, criteria: dict[str, dict[str, Any]], title: str = "criteria") -> None:
        """The criteria table: name, measured value, target, pass / FAIL / n/a (not testable here)."""
        if not criteria:
            return
        rows = []
        for name, c in criteria.items():
            v = c.get("value")
            value = f"{v:.4g}" if isinstance(v, float) else str(v)
            verdict = "n/a" if c.get("pass") is None else "pass" if c["pass"] else "[red]FAIL[/]"
            rows.append((name, value, c.get("target", ""), verdict))
        self.table(title, ("criterion", "value", "target", "result"), rows, left=("criterion", "target"))

    def finish(self, obj: dict[str, Any] | None = None, *, criteria: bool = True, exit_code: int = 0) -> None:
        """Print the criteria table of ``obj`` (if any and ``criteria``), its JSON line under --json, then exit."""
        if obj is not None and criteria and isinstance(obj.get("criteria"), dict):
            self.criteria(obj["criteria"])
        if obj is not None and self.as_json:
            emit_json(obj)
        if exit_code:
            raise typer.Exit(exit_code)
