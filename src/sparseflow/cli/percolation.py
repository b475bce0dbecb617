"""``sparseflow experiment percolation``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, experiment_app
from sparseflow.errors import SparseflowError


@experiment_app.command("percolation")
def experiment_percolation(
    out: Annotated[Optional[Path], typer.Option(help="Write results.json, report.md and the PNGs here.")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Seeds for the Monte Carlo and the training (default 10 / 3; quick 4 / 1).")] = None,
    widths: Annotated[Optional[str], typer.Option(help="Widths of the random-mask Monte Carlo, e.g. 256,1024,4096.")] = None,
    depths: Annotated[Optional[str], typer.Option(help="Depths at which the surviving fraction is read, e.g. 10,30,100.")] = None,
    pc_width: Annotated[Optional[int], typer.Option("--pc-width", help="Width of the fan-out networks for p_c (default 4096; quick 1024).")] = None,
    pc_depth: Annotated[Optional[int], typer.Option("--pc-depth", help="Depth L for p_c; curves at L/2 and L cross (default 100; quick 40).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Train on MNIST read from this folder (default: scikit-learn digits).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per training run (default 30 on digits, 10 on MNIST).")] = None,
    no_train: Annotated[bool, typer.Option("--no-train", help="Skip the training sweep.")] = False,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Percolation threshold of sparse layered networks: p_c = 1 - 1/b, ρ = 1 - exp(-cρ), and accuracy vs fan-in."""
    import dataclasses

    from sparseflow.experiments.percolation.report import PercolationConfig, run_percolation, work_units, write_outputs

    cfg = PercolationConfig.default(quick=quick, seeds=seeds, train=not no_train, data_dir=data_dir)
    changes: dict[str, object] = {}
    if widths is not None:
        changes["widths"] = _ints("--widths", widths, 1)
    if depths is not None:
        changes["depths"] = _ints("--depths", depths, 2)
    if pc_width is not None:
        changes["pc_width"] = _ints("--pc-width", str(pc_width), 1)[0]
    if pc_depth is not None:
        changes["pc_depth"] = _ints("--pc-depth", str(pc_depth), 2)[0]
    if epochs is not None:
        changes["train_epochs"] = _ints("--epochs", str(epochs), 1)[0]
    if data_dir is not None and not data_dir.is_dir():
        raise SparseflowError(f"--data-dir {str(data_dir)!r} is not a folder; pass the folder holding the MNIST IDX files")
    if max(cfg.cs) > min(changes.get("widths", cfg.widths)):  # type: ignore[arg-type]
        raise SparseflowError(f"--widths must be >= the largest mean fan-in {max(cfg.cs):g}, got {widths}")
    cfg = dataclasses.replace(cfg, **changes)

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True))
    with bar:
        task = bar.add_task("percolation", total=work_units(cfg))
        result = run_percolation(cfg, lambda what: bar.update(task, advance=1, description=what))
    if out is not None:
        write_outputs(result, out)

    console = _console(as_json)
    t = Table(title=f"percolation criteria ({'quick' if quick else 'full'} run, {result.wall_s:.1f} s)")
    for col in ("criterion", "value", "target", "result"):
        t.add_column(col, justify="right" if col == "value" else "left")
    criteria = result.criteria()
    for name, v in criteria.items():
        t.add_row(name, "none" if v["value"] is None else f"{v['value']:.4f}", v["target"], "pass" if v["pass"] else "FAIL")
    console.print(t)
    if out is not None:
        console.print(f"wrote {out}/report.md, results.json and the PNGs", highlight=False)
    if as_json:
        obj = result.to_json()
        if out is not None:
            obj["out"] = str(out)
        _emit_json(obj)


def _ints(flag: str, text: str, minimum: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SparseflowError(f"{flag} takes comma-separated integers such as 256,1024, got {text!r}") from None
    if not values or min(values) < minimum:
        raise SparseflowError(f"{flag} needs integers >= {minimum}, got {text!r}")
    return values
