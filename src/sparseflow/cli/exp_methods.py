"""``sparseflow experiment methods``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, experiment_app, parse_numbers
from sparseflow.errors import SparseflowError

JOURNAL = "runs.partial.jsonl"  # finished tasks of an unfinished run: rerunning the same command resumes
_DIR_FLAGS = {"mnist": "--mnist-dir", "fashion-mnist": "--fashion-dir"}


@experiment_app.command("methods")
def experiment_methods(
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Folder with mnist/ and fashion-mnist/ subfolders of IDX .gz files.")] = None,
    mnist_dir: Annotated[Optional[Path], typer.Option("--mnist-dir", help="Folder with MNIST's four IDX files (overrides --data-dir).")] = None,
    fashion_dir: Annotated[Optional[Path], typer.Option("--fashion-dir", help="Folder with Fashion-MNIST's four IDX files (overrides --data-dir).")] = None,
    datasets: Annotated[Optional[str], typer.Option(help="Comma-separated: mnist (LeNet-300-100), fashion-mnist (Conv-4). "
                                                  "Default: each one whose folder is given, the others skipped with a note.")] = None,
    sparsities: Annotated[Optional[str], typer.Option(help="Comma-separated sparsities (default 0.8,0.9,0.95,0.98; quick 0.9).")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Seeds per cell (default 3, quick 1).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs for every dataset (default: MNIST 2, Fashion-MNIST 1).")] = None,
    train_size: Annotated[Optional[int], typer.Option("--train-size", help="Training examples for every dataset (default: MNIST all, Fashion-MNIST 5120).")] = None,
    test_size: Annotated[Optional[int], typer.Option("--test-size", help="Test examples for every dataset (default: MNIST all, Fashion-MNIST 2000).")] = None,
    workers: Annotated[int, typer.Option(help="Parallel training processes (one thread each on 2 cores).")] = 2,
    out: Annotated[Optional[Path], typer.Option(help="Write results.json, report.md and accuracy.png here; an interrupted run "
                                                "resumes from its finished runs when the same command is run again.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Run even when the estimate exceeds an hour.")] = False,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Dense-to-sparse vs sparse-from-scratch vs dynamic at equal budget: orderings vs the RigL paper's."""
    import dataclasses

    from sparseflow.experiments.methods.run import ComparisonConfig
    from sparseflow.experiments.methods.train import run_methods
    from sparseflow.experiments.methods.report import accuracy_rows, write_outputs
    from sparseflow.training.rundir import check_budget

    if seeds is not None and seeds < 1:
        raise SparseflowError(f"--seeds must be >= 1, got {seeds}")
    cfg = ComparisonConfig.default(quick=quick, seeds=seeds)
    known = {s.dataset: s for s in cfg.settings}
    given = {"mnist": mnist_dir, "fashion-mnist": fashion_dir}
    skipped = []
    if datasets is None:  # every dataset whose files were pointed at; the rest skipped with a note
        names = [d for d in known if given[d] is not None or (data_dir is not None and (data_dir / d).is_dir())]
        skipped = [d for d in known if d not in names]
        if not names:
            raise SparseflowError("no data given: pass --mnist-dir and/or --fashion-dir (folders holding the four IDX "
                                  ".gz files), or --data-dir (a folder with mnist/ and fashion-mnist/ subfolders)")
    else:
        names = [d.strip() for d in datasets.split(",") if d.strip()]
        bad = [d for d in names if d not in known]
        if bad or not names:
            raise SparseflowError(f"--datasets takes a comma-separated subset of {', '.join(known)}, got {datasets!r}")
    changes = {k: v for k, v in (("epochs", epochs), ("train_size", train_size), ("test_size", test_size)) if v is not None}
    settings = tuple(dataclasses.replace(known[d], **changes) for d in known if d in names)
    dirs = {}
    for d in names:
        folder = given[d] or (data_dir / d if data_dir is not None else None)
        if folder is None:
            raise SparseflowError(f"{d} is read from its IDX files: pass --data-dir (a folder with a {d}/ subfolder) "
                                  f"or {_DIR_FLAGS[d]}")
        if not folder.is_dir():
            raise SparseflowError(f"{str(folder)!r} is not a folder; pass the folder holding {d}'s four IDX .gz files "
                                  f"({_DIR_FLAGS[d]}) or their parent (--data-dir)")
        dirs[d] = str(folder)
    levels = cfg.sparsities if sparsities is None else parse_numbers("--sparsities", sparsities, float, "0.8,0.9")
    cfg = dataclasses.replace(cfg, settings=settings, sparsities=levels, data_dirs=tuple(dirs.items()), workers=workers)
    cfg.check()
    check_budget(cfg.estimate_s(), yes, "experiment methods")

    err = Console(stderr=True)
    for d in skipped:
        err.print(f"note: {d} skipped (no {_DIR_FLAGS[d]} and no {d}/ under --data-dir)", highlight=False)
    err.print(f"about {cfg.estimate_s() / 60:.1f} min for {cfg.units()} training runs on {cfg.workers} worker(s)", highlight=False)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err)
    with bar:
        task = bar.add_task("methods", total=cfg.units())
        journal = None if out is None else out / JOURNAL
        result = run_methods(cfg, lambda what, n: bar.update(task, advance=n, description=what), journal=journal)
    if out is not None:
        flags = [("--data-dir", data_dir), ("--mnist-dir", mnist_dir), ("--fashion-dir", fashion_dir),
                 ("--datasets", datasets), ("--sparsities", sparsities),
                 ("--seeds", seeds), ("--epochs", epochs), ("--train-size", train_size), ("--test-size", test_size),
                 ("--workers", None if workers == 2 else workers), ("--out", out)]
        command = " ".join(["sparseflow experiment methods", *(f"{k} {v}" for k, v in flags if v is not None),
                            *(["--quick"] if quick else [])])
        write_outputs(result, out, command)
        (out / JOURNAL).unlink(missing_ok=True)  # every record is in results.json now

    console = _console(as_json, min_width=120)
    for s in cfg.settings:
        t = Table(title=f"test accuracy (%), {s.model} on {s.dataset}, {s.steps()} steps, 95 % interval over {len(cfg.seeds)} seed(s)")
        for col in ("method", "family", *(f"{100 * x:g} %" for x in cfg.sparsities)):
            t.add_column(col, justify="left" if col in ("method", "family") else "right")
        for row in accuracy_rows(result, s.dataset):
            t.add_row(*row)
        console.print(t)
    t = Table(title="measured ordering (worst to best) and Kendall τ_b against the RigL paper's")
    for col in ("dataset", "sparsity", "ordering", "τ_b (means)", "τ_b per seed (95 %)"):
        t.add_column(col)
    for c in result.orderings():
        seeds = "-" if c["tau_b_ci95"] is None else f"{c['tau_b_seed_mean']:+.2f} ± {c['tau_b_ci95']:.2f}"
        t.add_row(c["dataset"], f"{100 * c['sparsity']:g} %", " < ".join(c["ascending"]), f"{c['tau_b']:+.2f}", seeds)
    console.print(t)
    t = Table(title=f"methods criteria ({'quick' if cfg.quick else 'full'} run, {result.wall_s:.0f} s)")
    for col in ("criterion", "value", "target", "result"):
        t.add_column(col)
    criteria = result.criteria()
    for name, c in criteria.items():
        t.add_row(name, str(c["value"]), c["target"], "pass" if c["pass"] else "FAIL")
    console.print(t)
    if out is not None:
        console.print(f"wrote {out}/report.md, results.json and accuracy.png", highlight=False)
    if as_json:
        obj = {k: v for k, v in result.to_json().items() if k != "runs"}
        obj["skipped"] = skipped
        if out is not None:
            obj["out"] = str(out)
        _emit_json(obj)

