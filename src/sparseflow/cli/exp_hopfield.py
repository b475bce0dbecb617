"""``sparseflow experiment hopfield``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, experiment_app
from sparseflow.cli._app import parse_numbers as _numbers


@experiment_app.command("hopfield")
def experiment_hopfield(
    out: Annotated[Optional[Path], typer.Option(help="Write results.json, report.md and the PNGs here.")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Seeds per (a, N), >= 2 (default 3).")] = None,
    codings: Annotated[Optional[str], typer.Option(help="Coding levels a in (0, 0.5], e.g. 0.5,0.1,0.02.")] = None,
    sizes: Annotated[Optional[str], typer.Option(help="Network sizes N, e.g. 500,1000,2000,4000.")] = None,
    cues: Annotated[Optional[int], typer.Option(help="Stored patterns tested per load (default 50).")] = None,
    m0: Annotated[Optional[float], typer.Option("--m0", help="Overlap of the corrupted cue (default 0.8).")] = None,
    mode: Annotated[Optional[str], typer.Option(help="Recall dynamics: async (default) or sync.")] = None,
    connectivity: Annotated[Optional[float], typer.Option(help="Connectivity c of the grid (default 1).")] = None,
    dilution: Annotated[Optional[str], typer.Option(help="Connectivities of the dilution curve, e.g. 1,0.5,0.25,0.1, "
                                                         "or 'none' (default: that list; quick: none).")] = None,
    tol: Annotated[Optional[float], typer.Option(help="Resolution of P_max (default 0.01; quick 0.02).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Run even when the estimate exceeds an hour.")] = False,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Capacity P_max/N of a sparse Hopfield memory vs coding level a and size N (covariance rule, threshold)."""
    import dataclasses

    from sparseflow.experiments.hopfield.run import HopConfig, run_hopfield
    from sparseflow.experiments.hopfield.report import summary, write_outputs
    from sparseflow.training.rundir import _human, check_budget

    cfg = HopConfig.default(quick=quick, seeds=seeds)
    changes: dict[str, object] = {}
    if codings is not None:
        changes["codings"] = _numbers("--codings", codings, float)
    if sizes is not None:
        changes["sizes"] = _numbers("--sizes", sizes, int)
    if dilution is not None:
        changes["dilution"] = () if dilution.strip().lower() == "none" else _numbers("--dilution", dilution, float)
    for name, value in (("cues", cues), ("m0", m0), ("mode", mode), ("connectivity", connectivity), ("tol", tol)):
        if value is not None:
            changes[name] = value
    cfg = dataclasses.replace(cfg, **changes)
    cfg.check()
    check_budget(cfg.estimate_s(), yes, "experiment hopfield")

    err = Console(stderr=True)
    err.print(f"about {_human(cfg.estimate_s())} for {cfg.runs()} capacity searches", highlight=False)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err)
    with bar:
        task = bar.add_task("capacity searches", total=cfg.runs())
        result = run_hopfield(cfg, lambda what: bar.update(task, advance=1, description=what))
    if out is not None:
        flags = [("--codings", codings), ("--sizes", sizes), ("--seeds", seeds), ("--cues", cues), ("--m0", m0),
                 ("--mode", mode), ("--connectivity", connectivity), ("--dilution", dilution), ("--tol", tol),
                 ("--out", out)]
        command = " ".join(["sparseflow experiment hopfield", *(f"{k} {v}" for k, v in flags if v is not None),
                            *(["--quick"] if quick else [])])
        write_outputs(result, out, command)

    console = _console(as_json, min_width=100)
    obj = summary(result)
    cell = {(r["a"], r["n"]): r for r in obj["table"]}
    t = Table(title=f"capacity P_max/N, mean ± 95 % t-interval over {len(cfg.seeds)} seeds")
    for col in ("a", *(f"N={n}" for n in cfg.sizes), "reference"):
        t.add_column(col, justify="right")
    for a in cfg.codings:
        t.add_row(f"{a:g}", *(f"{cell[(a, n)]['alpha_mean']:.3f} ± {cell[(a, n)]['alpha_half']:.3f}"
                              for n in cfg.sizes),
                  f"{cell[(a, cfg.sizes[0])]['reference']:.3f}")
    console.print(t)
    t = Table(title=f"hopfield criteria ({'quick run, ' if quick else ''}{result.wall_s:.0f} s)")
    for col in ("criterion", "value", "target", "result"):
        t.add_column(col)
    for name, c in result.criteria().items():
        t.add_row(name, f"{c['value']:.3f}", c["target"], "pass" if c["pass"] else "FAIL")
    console.print(t)
    if out is not None:
        console.print(f"wrote {out}/report.md, results.json and the figures", highlight=False)
    if as_json:
        obj = {k: v for k, v in result.to_json().items() if k not in ("cells", "dilution_cells")}
        if out is not None:
            obj["out"] = str(out)
        _emit_json(obj)

