"""``sparseflow sweep``: train a grid of cells (method x sparsity x seed x dataset) locally or on Ray; generated
from Sweep and SweepOptions."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from sparseflow.cli._app import app
from sparseflow.cli.generate import Call, command
from sparseflow.io import check_folder_target
from sparseflow.sweep.config import Sweep, SweepOptions


def sweep(call: Call) -> None:
    """Train every cell of a grid, skipping cells finished by an earlier run; write results.json, table.md
    (mean ± 95 % interval over seeds), report.md and accuracy.png. Exit status 1 when a cell failed."""
    from sparseflow.sweep.executors import LocalExecutor, RayExecutor
    from sparseflow.sweep.grid import cell_dir, estimate_s, finished, run_sweep
    from sparseflow.training.rundir import _human

    grid, o, run = call.config, call.options, call.run
    out = o.out if o.out is not None else Path("runs") / f"sweep-{grid.digest()}"
    check_folder_target(out, "--out")
    executor = RayExecutor(o.ray, o.cpus_per_cell) if o.ray is not None else LocalExecutor(o.workers)
    command_line = "sparseflow " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        jobs = grid.cells()
        todo = [j for j in jobs if finished(j, cell_dir(out, j)) is None]
        if todo:
            parallel = executor.parallel(len(todo))
            o.check_budget(estimate_s(todo, parallel), f"sweep of {len(todo)} cells")
            run.note(f"{len(jobs)} cells, {len(jobs) - len(todo)} finished before; about "
                     f"{_human(estimate_s(todo, parallel))} on {executor.describe(len(todo))}")
        with run.progress("cells", len(jobs), enabled=o.progress) as tick:
            def advance(r: dict) -> None:
                tick(f"{r['status']}: {r['method']} s={r['sparsity']:g} seed {r['seed']} {r['dataset']}")

            result = run_sweep(grid, out, executor, data_dir=o.data_dir, on_cell=advance, command=command_line)
    finally:
        if isinstance(executor, RayExecutor):
            executor.close()

    obj = result.to_json()
    rows = []
    for r in obj["table"]:
        acc = "-" if r["accuracy_mean"] is None else f"{100 * r['accuracy_mean']:.2f}" + (
            "" if r["accuracy_half"] is None else f" ± {100 * r['accuracy_half']:.2f}")
        sp = "-" if r["measured_sparsity_mean"] is None else f"{r['measured_sparsity_mean']:.4f}"
        rows.append((r["dataset"], r["method"], f"{r['sparsity']:g}", r["n"], acc, sp,
                     f"[bold red]{r['failed']}[/]" if r["failed"] else "0"))
    run.table(f"test accuracy (%), mean ± 95 % t-interval over seeds ({len(jobs)} cells, {result.wall_s:.1f} s)",
              ("dataset", "method", "sparsity", "seeds", "accuracy", "measured sparsity", "failed"), rows,
              left=("dataset", "method"), min_width=100)
    run.print(f"{obj['cells_ran']} trained, {obj['cells_skipped']} finished before (skipped), "
              f"{obj['cells_failed']} failed; wrote {out}/results.json, table.md, report.md, accuracy.png")
    for r in result.failed():
        run.err.print(f"[bold red]failed:[/] {r['cell']}: {r['error']}  (details: {out}/cells/{r['cell']}/error.txt)",
                      highlight=False)
    run.finish({k: v for k, v in obj.items() if k != "rows"}, exit_code=1 if result.failed() else 0)


command(app, "sweep", sweep, config=Sweep, options=SweepOptions)
