"""The ``sparseflow`` app object, its sub-apps and the option types and output helpers every command shares.

Every subcommand takes ``--json`` (one JSON object, the last line of stdout; human output then goes to
stderr) and ``--quick`` (a reduced run that finishes within a minute on a 2-core machine). User mistakes
print one line starting with ``error:`` and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from sparseflow import __version__
from sparseflow.cli.generate import version_option
from sparseflow.errors import SparseflowError
from sparseflow.io import json_safe

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sparse neural networks: create, analyse, store and run them.",
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: ratios against a dense baseline in the same run.")
version_option(app, __version__)
app.add_typer(bench_app, name="bench")
experiment_app = typer.Typer(no_args_is_help=True, help="Experiments: one principle each, with a report.")
app.add_typer(experiment_app, name="experiment")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]
QuickOpt = Annotated[bool, typer.Option("--quick", help="A reduced run that finishes within 60 s.")]


def _console(as_json: bool, min_width: int | None = None) -> Console:
    # With --json, stdout carries only the JSON object; tables go to stderr. A wide table asks for
    # min_width columns: below that (80 when not a terminal) rich would elide its numbers.
    if min_width is None:
        return Console(stderr=as_json, soft_wrap=False)
    return Console(stderr=as_json, soft_wrap=False, width=max(Console(stderr=as_json).width, min_width))


def _emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(json_safe(obj), separators=(",", ":")) + "\n")
    sys.stdout.flush()


def parse_numbers(flag: str, text: str, kind: type, example: str | None = None) -> tuple:
    """``"500,1000"`` -> ``(500, 1000)`` for a comma-separated option (``kind`` int, float or str); one clear
    error naming ``flag`` otherwise."""
    try:
        values = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        example = example or ("500,1000" if kind is int else "0.5,0.1,0.02")
        raise SparseflowError(f"{flag} takes comma-separated {'integers' if kind is int else 'numbers'} "
                              f"such as {example}, got {text!r}") from None
    if not values:
        raise SparseflowError(f"{flag} needs at least one value, got {text!r}")
    return values
