"""The ``sparseflow`` app object and its sub-apps; commands attach to them through :mod:`sparseflow.cli.generate`.

Every subcommand takes ``--json`` (one JSON object, the last line of stdout; human output then goes to
stderr) and ``--quick`` (a reduced run that finishes within a minute on a 2-core machine). User mistakes
print one line starting with ``error:`` and exit with status 2; a failed criterion (``"pass": false``) gives
exit status 1 (:mod:`sparseflow.cli.runner`).
"""

from __future__ import annotations

import typer

from sparseflow import __version__
from sparseflow.cli.generate import version_option

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sparse neural networks: create, analyse, store and run them.",
)
version_option(app, __version__)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: ratios against a dense baseline in the same run.")
app.add_typer(bench_app, name="bench")
experiment_app = typer.Typer(no_args_is_help=True, help="Experiments: one principle each, with a report.")
app.add_typer(experiment_app, name="experiment")
