"""``sparseflow experiment meanfield``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, experiment_app
from sparseflow.errors import SparseflowError


@experiment_app.command("meanfield")
def experiment_meanfield(
    seeds: Annotated[Optional[int], typer.Option(help="Seeds per density and init (default 3, quick 1).")] = None,
    width: Annotated[int, typer.Option(help="Units per layer (the criteria are stated for >= 1024).")] = 1024,
    depth: Annotated[int, typer.Option(help="Linear layers.")] = 30,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/meanfield[-quick]).")] = None,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Mean-field critical line of sparse ReLU MLPs: ln q_l slope = ln s under He init, flat q_l under
    sparsity-aware init (Poole et al. 2016; Evci et al. 2022)."""
    from sparseflow.experiments.meanfield import meanfield
    from sparseflow.experiments.meanfield_report import write_report

    if width < 2 or depth < 2 or (seeds is not None and seeds < 1):
        raise SparseflowError(f"--width and --depth must be >= 2 and --seeds >= 1, got {width}, {depth}, {seeds}")
    out = out or Path("runs") / ("meanfield-quick" if quick else "meanfield")
    if out.exists() and not out.is_dir():
        raise SparseflowError(f"--out {out} is a file; pass a directory for report.md, results.json and the plots")
    with Console(stderr=True).status("propagating signals") as status:
        result = meanfield(quick=quick, width=width, depth=depth, seeds=seeds,
                           progress=lambda msg: status.update(f"propagating signals: {msg}"))
        data = write_report(result, out)
    console = _console(as_json)
    t = Table(title=result.setting())
    for col in ("criterion", "value", "target", "pass"):
        t.add_column(col, justify="left" if col in ("criterion", "target") else "right", no_wrap=col == "criterion")
    for name, c in data["criteria"].items():
        t.add_row(name, f"{c['value']:.4f}", c["target"], "yes" if c["pass"] else "[red]no[/]")
    console.print(t)
    console.print(f"run directory: {out}  (report.md, results.json, variance.png, chi.png)", highlight=False)
    if as_json:
        data["out"] = str(out)
        _emit_json(data)
