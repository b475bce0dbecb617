"""``sparseflow sweep``: train a grid of cells (method x sparsity x seed x dataset) locally or on Ray."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, _parse_hidden, app, parse_numbers

QUICK = {"methods": "gmp,rigl", "sparsities": "0.8,0.9", "seeds": "0,1"}
DEFAULT = {"methods": "gmp,rigl", "sparsities": "0.8,0.9", "seeds": "0,1,2", "datasets": "digits"}



@app.command()
def sweep(
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated: dense | magnitude | gmp | random | snip | grasp | synflow | set | rigl (default gmp,rigl).")] = None,
    sparsities: Annotated[Optional[str], typer.Option(help="Comma-separated sparsities in [0, 1) (default 0.8,0.9).")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds (default 0,1,2; quick 0,1).")] = None,
    datasets: Annotated[Optional[str], typer.Option(help="Comma-separated: digits | mnist1d | mnist | fashion-mnist (default digits).")] = None,
    model: Annotated[str, typer.Option(help="mlp | lenet300-100 | conv2 | conv4 | conv6 | resnet")] = "mlp",
    hidden: Annotated[Optional[str], typer.Option(help="MLP widths, e.g. 300,100 (model mlp only).")] = None,
    distribution: Annotated[Optional[str], typer.Option(help="uniform | er | erk | global (default: each method's paper)")] = None,
    pattern: Annotated[str, typer.Option(help="unstructured | N:M (e.g. 2:4) | RxC blocks (e.g. 4x4)")] = "unstructured",
    norm: Annotated[str, typer.Option(help="batch | layer | group | none")] = "none",
    data_dir: Annotated[Optional[Path], typer.Option(help="IDX files of mnist / fashion-mnist: DIR/<dataset>/ if it exists, else DIR.")] = None,
    subset: Annotated[Optional[int], typer.Option(help="Use this many training examples.")] = None,
    test_subset: Annotated[Optional[int], typer.Option(help="Evaluate on the first N test examples.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs per cell (default 30; quick at most 5).")] = None,
    batch_size: Annotated[int, typer.Option(help="Minibatch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine decay).")] = 0.05,
    optimizer: Annotated[str, typer.Option(help="sgd | adam | adamw")] = "sgd",
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 5e-4,
    baseline: Annotated[bool, typer.Option(help="Also train each cell's dense baseline (or add method 'dense').")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Sweep folder (default runs/sweep-<grid hash>); rerunning skips finished cells.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Local processes (default min(cores, cells)); each gets cores // workers torch threads.")] = None,
    ray: Annotated[Optional[str], typer.Option("--ray", help="Run the cells on the Ray cluster at ADDRESS (HOST:PORT); needs sparseflow[ray].")] = None,
    cpus_per_cell: Annotated[int, typer.Option(help="CPUs each Ray task reserves (and torch threads it uses).")] = 1,
    yes: Annotated[bool, typer.Option("--yes", help="Run even when the estimate exceeds an hour.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar over cells (on stderr).")] = True,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train every cell of a grid, skipping cells finished by an earlier run; write results.json, table.md
    (mean ± 95 % interval over seeds) and accuracy.png. Exit status 1 when a cell failed."""
    from sparseflow.training.rundir import _human, check_budget
    from sparseflow.training.job import TrainJob
    from sparseflow.sweep.grid import Sweep, cell_dir, estimate_s, finished, run_sweep
    from sparseflow.sweep.executors import LocalExecutor, RayExecutor

    if quick:  # sized to finish within 60 s on 2 cores (digits: about 10 s)
        methods, sparsities = methods or QUICK["methods"], sparsities or QUICK["sparsities"]
        seeds = ",".join((seeds or QUICK["seeds"]).split(",")[:2])
        epochs = min(epochs or 5, 5)
        dsets = (datasets or DEFAULT["datasets"]).split(",")
        if any(d.strip() in ("mnist", "fashion-mnist") for d in dsets) and subset is None:
            subset, test_subset = 2000, 1000
    grid = Sweep(
        methods=parse_numbers("--methods", methods or DEFAULT["methods"], str),
        sparsities=parse_numbers("--sparsities", sparsities or DEFAULT["sparsities"], float),
        seeds=parse_numbers("--seeds", seeds or DEFAULT["seeds"], int),
        datasets=parse_numbers("--datasets", datasets or DEFAULT["datasets"], str),
        distribution=distribution,
        base=TrainJob(model=model, hidden=_parse_hidden(hidden), pattern=pattern, norm=norm, subset=subset,
                      test_subset=test_subset, epochs=30 if epochs is None else epochs, batch_size=batch_size,
                      lr=lr, optimizer=optimizer, weight_decay=weight_decay, baseline=baseline),
    )
    out = out if out is not None else Path("runs") / f"sweep-{grid.digest()}"
    executor = RayExecutor(ray, cpus_per_cell) if ray is not None else LocalExecutor(workers)
    err = Console(stderr=True, highlight=False)
    command = "sparseflow " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        jobs = grid.cells()
        todo = [j for j in jobs if finished(j, cell_dir(out, j)) is None]
        if todo:
            parallel = executor.parallel(len(todo))
            check_budget(estimate_s(todo, parallel), yes, f"sweep of {len(todo)} cells")
            err.print(f"{len(jobs)} cells, {len(jobs) - len(todo)} finished before; about "
                      f"{_human(estimate_s(todo, parallel))} on {executor.describe(len(todo))}")
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=err, disable=not progress)
        with bar:
            task = bar.add_task("cells", total=len(jobs))

            def advance(r: dict) -> None:
                bar.update(task, advance=1, description=f"{r['status']}: {r['method']} s={r['sparsity']:g} "
                                                        f"seed {r['seed']} {r['dataset']}")

            result = run_sweep(grid, out, executor, data_dir=data_dir, on_cell=advance, command=command)
    finally:
        if isinstance(executor, RayExecutor):
            executor.close()

    console = _console(as_json, min_width=100)
    obj = result.to_json()
    t = Table(title=f"test accuracy (%), mean ± 95 % t-interval over seeds ({len(jobs)} cells, {result.wall_s:.1f} s)")
    for col in ("dataset", "method", "sparsity", "seeds", "accuracy", "measured sparsity", "failed"):
        t.add_column(col, justify="left" if col in ("dataset", "method") else "right")
    for r in obj["table"]:
        acc = "-" if r["accuracy_mean"] is None else f"{100 * r['accuracy_mean']:.2f}" + (
            "" if r["accuracy_half"] is None else f" ± {100 * r['accuracy_half']:.2f}")
        sp = "-" if r["measured_sparsity_mean"] is None else f"{r['measured_sparsity_mean']:.4f}"
        t.add_row(r["dataset"], r["method"], f"{r['sparsity']:g}", str(r["n"]), acc, sp,
                  f"[bold red]{r['failed']}[/]" if r["failed"] else "0")
    console.print(t)
    console.print(f"{obj['cells_ran']} trained, {obj['cells_skipped']} finished before (skipped), "
                  f"{obj['cells_failed']} failed; wrote {out}/results.json, table.md, accuracy.png", highlight=False)
    for r in result.failed():
        err.print(f"[bold red]failed:[/] {r['cell']}: {r['error']}  (details: {out}/cells/{r['cell']}/error.txt)")
    if as_json:
        _emit_json({k: v for k, v in obj.items() if k != "rows"})
    if result.failed():
        raise typer.Exit(1)
