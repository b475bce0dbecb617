"""The one runner every command prints through: progress, tables, the criteria table, ``--json`` and the exit status.

With ``--json`` stdout carries only the JSON object (its last line); tables and progress go to stderr.
Tables and lines are never cut or wrapped when the output is not a terminal (a file, a pipe, a CI log): the
console is then :data:`UNBOUNDED` columns wide, unless ``COLUMNS`` sets a width. The exit status is 1 when a
measured criterion fails (``"pass": false``); a criterion the run cannot test (``"pass": null``) does not fail.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sparseflow.io import json_safe

Tick = Callable[..., None]  # tick(what="", advance=1, total=None): one unit of work done


LOG_EVERY_S = 10.0  # progress lines when stderr is not a terminal: at most one per this many seconds
UNBOUNDED = 1000  # console columns when the output is not a terminal: tables take the width they need


def console(stderr: bool, min_width: int | None = None) -> Console:
    """A console that does not wrap tables: a terminal's own width (``min_width`` columns at least); anything
    else (a file, a pipe) :data:`UNBOUNDED` columns, or ``COLUMNS`` when that is set."""
    width = Console(stderr=stderr).width
    if not Console(stderr=stderr).is_terminal and not os.environ.get("COLUMNS"):
        width = UNBOUNDED
    return Console(stderr=stderr, soft_wrap=False, width=max(width, min_width or 0))


def failed_criteria(obj: dict[str, Any] | None) -> list[str]:
    """Names of the criteria of ``obj`` that were measured and failed (``"pass": false``)."""
    crit = obj.get("criteria") if isinstance(obj, dict) else None
    if not isinstance(crit, dict):
        return []
    return [name for name, c in crit.items() if isinstance(c, dict) and c.get("pass") is False]


def emit_json(obj: dict[str, Any]) -> None:
    """Write ``obj`` as one compact JSON line on stdout (NaN and inf as null)."""
    sys.stdout.write(json.dumps(json_safe(obj), separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Runner:
    """Output of one command: ``out`` for its tables (stderr under --json), ``err`` for progress and notes."""

    def __init__(self, name: str, as_json: bool, quick: bool) -> None:
        self.name, self.as_json, self.quick = name, as_json, quick
        self.out = console(as_json)
        self.err = console(True)

    def wide(self, min_width: int) -> Console:
        """The table console at least ``min_width`` columns wide."""
        return console(self.as_json, min_width)

    @contextmanager
    def progress(self, label: str, total: float | None = None, *, enabled: bool = True) -> Iterator[Tick]:
        """A labelled bar on stderr; the yielded ``tick(what="", advance=1, total=None)`` moves it.

        When stderr is not a terminal (a log file, ``nohup``), a bar cannot redraw: plain lines
        ``label: done/total what (elapsed)`` are printed instead, at most one per :data:`LOG_EVERY_S` seconds
        (ticks that only change ``what`` included) and always the last one."""
        plain = enabled and not self.err.is_terminal
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=self.err, disable=not enabled or plain)
        start, state = time.monotonic(), {"done": 0.0, "total": total, "last": -math.inf}
        with bar:
            task = bar.add_task(label, total=total)

            def tick(what: str = "", advance: float = 1, total: float | None = None) -> None:
                bar.update(task, description=f"{label}: {what}" if what else label, advance=advance,
                           **({"total": total} if total is not None else {}))
                if not plain:
                    return
                state["done"] += advance
                if total is not None:
                    state["total"] = total
                now, end = time.monotonic(), state["total"] is not None and state["done"] >= state["total"]
                # a tick that only says what is going on (advance 0, e.g. an epoch inside a long unit) is printed
                # too, at the same rate: a log must not stay silent through a long unit of work
                if (advance or what) and (end or now - state["last"] >= LOG_EVERY_S):
                    state["last"] = now
                    of = f"/{state['total']:g}" if state["total"] is not None else ""
                    doing = f" {what}" if what else ""
                    self.err.print(f"{label}: {state['done']:g}{of}{doing} ({now - start:.0f} s)", markup=False,
                                   highlight=False)

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
        """The criteria table: name, measured value, target, pass / FAIL / n/a (not testable here: the reason
        under the table)."""
        if not criteria:
            return
        rows, reasons = [], []
        for name, c in criteria.items():
            v = c.get("value")
            value = f"{v:.4g}" if isinstance(v, float) else str(v)
            verdict = "n/a" if c.get("pass") is None else "pass" if c["pass"] else "[red]FAIL[/]"
            rows.append((name, value, c.get("target", ""), verdict))
            if c.get("pass") is None and c.get("note"):
                reasons.append(f"n/a {name}: {c['note']}")
        self.table(title, ("criterion", "value", "target", "result"), rows, left=("criterion", "target"))
        for line in reasons:
            self.print(line)

    def finish(self, obj: dict[str, Any] | None = None, *, criteria: bool = True, exit_code: int = 0) -> None:
        """Print the criteria table of ``obj`` (if any and ``criteria``), its JSON line under --json, then exit:
        with ``exit_code`` if given, else 1 when a measured criterion failed (named in one line on stderr)."""
        if obj is not None and criteria and isinstance(obj.get("criteria"), dict):
            self.criteria(obj["criteria"])
        if obj is not None and self.as_json:
            emit_json(obj)
        failed = failed_criteria(obj)
        if failed:
            self.note(f"{len(failed)} {'criterion' if len(failed) == 1 else 'criteria'} failed: {', '.join(failed)} "
                      "(exit status 1)")
        if exit_code or failed:
            raise typer.Exit(exit_code or 1)
