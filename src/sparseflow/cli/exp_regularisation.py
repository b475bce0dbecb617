"""``sparseflow experiment regularisation``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, experiment_app
from sparseflow.cli._app import parse_numbers as _numbers


@experiment_app.command("regularisation")
def experiment_regularisation(
    out: Annotated[Optional[Path], typer.Option(help="Write results.json, report.md and the PNGs here.")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Seeds per cell, >= 2 (default 5; quick 2).")] = None,
    sizes: Annotated[Optional[str], typer.Option(help="Training-set sizes, e.g. 500,1000,2000,4000,8000,16000.")] = None,
    sparsities: Annotated[Optional[str], typer.Option(help="Sparsities including 0 (dense), e.g. 0,0.5,0.8,0.9.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Adam steps per run, the same for every cell (default 1500; quick 300).")] = None,
    hidden: Annotated[Optional[int], typer.Option(help="Hidden width of the residual MLP (default 500).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate (default 0.02, the notebook's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Batch size (default 100).")] = None,
    test_size: Annotated[Optional[int], typer.Option("--test-size", help="Test signals (default 4000; quick 1000).")] = None,
    sparse_init: Annotated[bool, typer.Option("--sparse-init", help="Rescale kept weights to their fan-in (off in the notebook).")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Run even when the estimate exceeds an hour.")] = False,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Sparsity as a regulariser: MNIST-1D test accuracy vs sparsity for training sets of 500 to 16000."""
    import dataclasses

    from sparseflow.experiments.regularisation.run import RegConfig, run_regularisation
    from sparseflow.experiments.regularisation.report import summary, write_outputs
    from sparseflow.training.rundir import _human, check_budget

    cfg = RegConfig.default(quick=quick, seeds=seeds)
    changes: dict[str, object] = {"sparse_init": sparse_init}
    if sizes is not None:
        changes["sizes"] = _numbers("--sizes", sizes, int)
    if sparsities is not None:
        changes["sparsities"] = _numbers("--sparsities", sparsities, float)
    for name, value in (("steps", steps), ("hidden", hidden), ("lr", lr), ("batch_size", batch_size),
                        ("test_size", test_size)):
        if value is not None:
            changes[name] = value
    cfg = dataclasses.replace(cfg, **changes)
    cfg.check()
    check_budget(cfg.estimate_s(), yes, "experiment regularisation")

    err = Console(stderr=True)
    err.print(f"about {_human(cfg.estimate_s())} for {cfg.runs()} training runs", highlight=False)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err)
    with bar:
        task = bar.add_task("generating MNIST-1D", total=cfg.runs())
        result = run_regularisation(cfg, lambda what: bar.update(task, advance=1, description=what))
    if out is not None:
        flags = [("--sizes", sizes), ("--sparsities", sparsities), ("--seeds", seeds), ("--steps", steps),
                 ("--hidden", hidden), ("--lr", lr), ("--batch-size", batch_size), ("--test-size", test_size),
                 ("--out", out)]
        command = " ".join(["sparseflow experiment regularisation", *(f"{k} {v}" for k, v in flags if v is not None),
                            *(["--sparse-init"] if sparse_init else []), *(["--quick"] if quick else [])])
        write_outputs(result, out, command)

    console = _console(as_json, min_width=100)
    obj = summary(result)
    cell = {(r["size"], r["sparsity"]): r for r in obj["table"]}
    t = Table(title=f"test accuracy (%), mean ± 95 % t-interval over {len(cfg.seeds)} seeds; * = best")
    for col in ("N", *(f"s={s:g}" for s in cfg.sparsities)):
        t.add_column(col, justify="right")
    best = {b["size"]: b["best_sparsity"] for b in obj["best"]}
    for n in cfg.sizes:
        t.add_row(str(n), *(f"{100 * cell[(n, s)]['test_mean']:.1f} ± {100 * cell[(n, s)]['test_half']:.1f}"
                            + ("*" if s == best[n] else " ") for s in cfg.sparsities))
    console.print(t)
    t = Table(title=f"regularisation criteria ({'quick run, ' if quick else ''}{result.wall_s:.0f} s)")
    for col in ("criterion", "value", "target", "result"):
        t.add_column(col)
    criteria = result.criteria()
    for name, c in criteria.items():
        value = f"{c['value']:.2f}" if isinstance(c["value"], float) else str(c["value"])
        t.add_row(name, value, c["target"], "pass" if c["pass"] else "FAIL")
    console.print(t)
    if out is not None:
        console.print(f"wrote {out}/report.md, results.json, accuracy.png and gap.png", highlight=False)
    if as_json:
        obj = {k: v for k, v in result.to_json().items() if k != "cells"}
        if out is not None:
            obj["out"] = str(out)
        _emit_json(obj)

