"""The ``sparseflow`` command-line tool.

Every subcommand takes ``--json`` (one JSON object, the last line of stdout; human output then goes to
stderr) and ``--quick`` (a reduced run that finishes within a minute on a 2-core machine). User mistakes
print one line starting with ``error:`` and exit with status 2; a failed criterion (``"pass": false``) gives
exit status 1 (:mod:`sparseflow.cli.runner`).

One module per command family; importing it registers its commands on :data:`app`.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from sparseflow.cli import (analyze, bench, experiments, lottery, report, stain, storage, sweep,  # noqa: F401
                            train)  # (importing a module registers its commands)
from sparseflow import _status_line
from sparseflow.cli._app import app
from sparseflow.errors import SparseflowError

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app, turning user mistakes into one 'error:' line and exit status 2."""
    _status_line(erase=True)  # the line `import sparseflow` showed at a terminal
    try:
        args = sys.argv[1:] if argv is None else list(argv)
        _check_experiment_name(args)
        app(args=train.legacy_resume_args(args))
    except SparseflowError as e:
        # escaped: a message may hold brackets, e.g. pip install 'sparseflow[ray]'
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(e))}", markup=True)
        sys.exit(2)


def _check_experiment_name(args: list[str]) -> None:
    # "sparseflow experiment NAME": an unknown NAME is answered with the list of known experiments.
    if len(args) >= 2 and args[0] == "experiment" and not args[1].startswith("-"):
        from sparseflow.experiments.registry import experiment_names

        known = experiment_names()
        if args[1] not in known:
            raise SparseflowError(f"unknown experiment {args[1]!r}; known experiments: {', '.join(known)}")
