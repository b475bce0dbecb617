"""``sparseflow experiment collapse``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, experiment_app
from sparseflow.errors import SparseflowError
from sparseflow.training.rundir import write_results


@experiment_app.command("collapse")
def experiment_collapse(
    seeds: Annotated[Optional[int], typer.Option(help="Seeds (default 5, quick 2).")] = None,
    depth: Annotated[int, typer.Option(help="Hidden layers of the MLP.")] = 10,
    width: Annotated[int, typer.Option(help="Units per hidden layer.")] = 100,
    out: Annotated[Optional[Path], typer.Option(help="Write report.md and result.json here.")] = None,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Layer collapse at initialisation (Tanaka et al. 2020 Fig. 1): magnitude, random, SNIP, GraSP, SynFlow."""
    from sparseflow.experiments.collapse.run import collapse_table
    from sparseflow.io import atomic_write_text

    if depth < 1 or width < 1 or (seeds is not None and seeds < 1):
        raise SparseflowError(f"--depth, --width and --seeds must be >= 1, got {depth}, {width}, {seeds}")
    with Console(stderr=True).status("pruning at many sparsities"):
        table = collapse_table(quick=quick, seeds=None if seeds is None else range(seeds), depth=depth, width=width)
    console = _console(as_json)
    t = Table(title="sparsity at which the mask cuts every input-output path (median over seeds)")
    for col in ("method", "collapse sparsity", "largest sparsity with no empty layer"):
        t.add_column(col, justify="left" if col == "method" else "right")
    summary = table.summary()
    for name, (c, e) in summary.items():
        t.add_row(name, "none on grid" if c is None else f"{c:.5f}", "none" if e is None else f"{e:.5f}")
    console.print(t)
    console.print(table.setting, highlight=False)
    result = {
        "command": "experiment collapse", "setting": table.setting, "grid": list(table.grid),
        "summary": {k: {"collapse": c, "largest_nonempty": e} for k, (c, e) in summary.items()},
        "rows": [r.__dict__ for r in table.rows],
    }
    if "synflow" in summary and "magnitude" in summary:
        syn, mag = summary["synflow"][0], summary["magnitude"][0]
        later = mag is not None and (syn is None or syn > mag)
        result["criteria"] = {"SynFlow collapses later than magnitude": {
            "value": {"SynFlow": syn, "magnitude": mag}, "target": "SynFlow > magnitude (Tanaka et al. 2020)",
            "pass": later}}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "report.md", "# Layer collapse at initialisation\n\n" + table.markdown())
        write_results(out, "collapse", result, "result.json")
    if as_json:
        _emit_json(result)
