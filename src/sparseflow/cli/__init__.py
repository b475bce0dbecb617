"""The ``sparseflow`` command-line tool.

Every subcommand takes ``--json`` (one JSON object, the last line of stdout; human output then goes to
stderr) and ``--quick`` (a reduced run that finishes within a minute on a 2-core machine). User mistakes
print one line starting with ``error:`` and exit with status 2; a failed criterion (``"pass": false``) gives
exit status 1 (:mod:`sparseflow.cli.runner`).

One module per command family; importing it registers its commands on :data:`app`.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from sparseflow.cli import (analyze, bench, experiments, lottery, prune, report, stain, storage, sweep,  # noqa: F401
                            train, usage)  # (importing a module registers its commands)
from sparseflow import _status_line
from sparseflow.cli._app import app
from sparseflow.errors import SparseflowError

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app; every user mistake ends in one line ``error: ...`` and exit status 2.

    A :class:`SparseflowError` prints its message; a usage error (unknown option or command, a value of the
    wrong type, a missing argument) and an operating-system error on a path are put in the same one-line
    form by :mod:`sparseflow.cli.usage`. Anything else is a bug and keeps its traceback.
    """
    _status_line(erase=True)  # the line `import sparseflow` showed at a terminal
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        _check_experiment_name(args)
        code = app(args=train.legacy_resume_args(args), prog_name="sparseflow", standalone_mode=False)
    except SparseflowError as e:
        _fail(str(e))
    except usage.click_errors.ClickException as e:
        if isinstance(e, getattr(usage.click_errors, "NoArgsIsHelpError", ())):
            _help(args)  # a bare group ("sparseflow", "sparseflow bench") shows its help
        _fail(usage.usage_message(e, args))
    except typer.Abort:
        Console(stderr=True).print("Aborted!", highlight=False)
        sys.exit(1)
    except OSError as e:  # a path the command cannot use, met outside sparseflow's own checks
        _fail(usage.os_message(e))
    if isinstance(code, int) and code:
        sys.exit(code)


def _fail(message: str) -> None:
    # escaped: a message may hold brackets, e.g. pip install 'sparseflow[ray]'
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]error:[/] {escape(usage.one_line(message))}", markup=True)
    sys.exit(2)


def _help(args: list[str]) -> None:
    try:
        app(args=[*args, "--help"], prog_name="sparseflow", standalone_mode=False)
    finally:
        sys.exit(2)


def _check_experiment_name(args: list[str]) -> None:
    # "sparseflow experiment NAME": an unknown NAME is answered with the list of known experiments.
    if len(args) >= 2 and args[0] == "experiment" and not args[1].startswith("-"):
        from sparseflow.experiments.registry import experiment_names

        known = experiment_names()
        if args[1] not in known:
            raise SparseflowError(f"unknown experiment {args[1]!r}; known experiments: {', '.join(known)}")
