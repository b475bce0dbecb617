"""``sparseflow report RUN_DIR`` (one HTML page) and ``sparseflow experiment all``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, app, experiment_app
from sparseflow.errors import SparseflowError


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (experiment, bench, lottery, train or 'experiment all').")],
    out: Annotated[Optional[Path], typer.Option(help="HTML file to write (default RUN_DIR/report.html).")] = None,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Render a run directory as one self-contained HTML page: report, criteria and figures."""
    from sparseflow.experiments.html import write_html

    del quick  # rendering is always quick; the flag is accepted like every command's
    path, runs = write_html(run_dir, out)
    crit = [c for r in runs for c in r.criteria().values()]
    passed = sum(bool(c.get("pass")) for c in crit)
    console = _console(as_json)
    console.print(f"wrote {path}: {len(runs)} run(s), {passed} of {len(crit)} criteria pass, "
                  f"{sum(len(r.figures) for r in runs)} figures", highlight=False)
    if as_json:
        _emit_json({"html": str(path), "runs": [{"name": r.name, "path": str(r.path)} for r in runs],
                    "criteria_passed": passed, "criteria_total": len(crit)})


@experiment_app.command("all")
def experiment_all(
    out: Annotated[Path, typer.Option(help="Run directory: one sub-folder per experiment, results.json, report.html.")] = Path("runs/all"),
    only: Annotated[Optional[str], typer.Option(help="Comma-separated experiment names (default: all of them).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Folder holding mnist/ and fashion-mnist/ (the experiments that need them are skipped without it).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Run even when the estimated time exceeds an hour.")] = False,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Run every experiment (or --only some) one after another and write one report."""
    from sparseflow.experiments.registry import run_all, select
    from sparseflow.training.rundir import check_budget

    entries = select(only)
    if data_dir is not None and not data_dir.is_dir():
        raise SparseflowError(f"--data-dir {str(data_dir)!r} is not a folder; pass the folder holding mnist/ "
                              "and fashion-mnist/")
    if out.exists() and not out.is_dir():
        raise SparseflowError(f"--out {str(out)!r} is a file; pass a folder")
    if not quick:
        check_budget(sum(e.full_s for e in entries), yes, "experiment all (full runs)")
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True))
    with bar:
        task = bar.add_task("experiments", total=len(entries))
        started: list[str] = []

        def tick(name: str) -> None:
            if started:
                bar.advance(task)
            started.append(name)
            bar.update(task, description=f"experiment {name}")

        outcomes = run_all(entries, quick, out, data_dir, tick)
        bar.advance(task)

    console = _console(as_json)
    t = Table(title=f"experiment all ({'quick' if quick else 'full'}) -> {out}")
    for col in ("experiment", "status", "criteria passed", "wall s", "detail"):
        t.add_column(col, justify="right" if col in ("criteria passed", "wall s") else "left")
    for o in outcomes:
        j = o.to_json()
        t.add_row(o.name, o.status, f"{j['criteria_passed']} / {j['criteria_total']}", f"{o.wall_s:.1f}",
                  o.detail if o.status != "ok" else "")
    console.print(t)
    if (out / "report.html").is_file():
        console.print(f"report: {out / 'report.html'}", highlight=False)
    if as_json:
        runs = [o.to_json() for o in outcomes]
        crit = {f"{o.name}.{k}": v for o in outcomes for k, v in o.criteria.items()}
        _emit_json({"out": str(out), "quick": quick, "runs": runs, "criteria": crit,
                    "failed": [o.name for o in outcomes if o.status == "failed"]})
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)
