"""``sparseflow analyze``: connectivity of a run or checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, app
from sparseflow.errors import SparseflowError


@app.command()
def analyze(
    path: Annotated[Path, typer.Argument(help="Run directory of `sparseflow train`, or a .safetensors checkpoint.")],
    repair: Annotated[Optional[Path], typer.Option(
        help="Write weights repaired so that every hidden unit has an input and an output (same count per layer).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the repair's tie-breaking and the signs of moved weights.")] = 0,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Connectivity per layer: dead units, unreachable units, inputs reaching an output, effective sparsity,
    layer collapse (Vysogorets & Kempe 2023; Tanaka et al. 2020). --quick is accepted; the analysis is fast."""
    from sparseflow.analysis.loader import load_for_analysis, save_repaired
    from sparseflow.analysis.connectivity import connectivity
    from sparseflow.analysis.repair import apply_repair_, repair_mask

    if repair is not None and repair.suffix != ".safetensors":
        raise SparseflowError(f"--repair writes a .safetensors file; got {str(repair)!r}")
    loaded = load_for_analysis(path)
    c = connectivity(loaded.model, loaded.mask)
    console = _console(as_json)
    show = lambda n: loaded.names.get(n, n)  # noqa: E731  (checkpoint names for an inferred MLP)
    table = Table(title=f"connectivity of {loaded.source} ({type(loaded.model).__name__})")
    table.add_column("layer", no_wrap=True)
    for col in ("in", "out", "nonzeros", "no in", "no out", "unreached", "dead end", "const", "effective"):
        table.add_column(col, justify="right")
    for r in c.layers:
        table.add_row(show(r.name), *(f"{v:,}" for v in (r.in_units, r.out_units, r.nonzeros, r.no_incoming,
                                                           r.no_outgoing, r.unreachable, r.dead_end, r.constant,
                                                           r.effective)))
    console.print(table)
    console.print(c.summary(), highlight=False)
    result = {"command": "analyze", "path": str(path), "source": loaded.source, "model": type(loaded.model).__name__,
              **c.to_json()}
    for row in result["layers"]:
        row["name"] = show(row["name"])
    if repair is not None:
        new_mask, report = repair_mask(loaded.model, loaded.mask, seed=seed)
        apply_repair_(loaded.model, new_mask, seed=seed)
        save_repaired(repair, loaded.model, new_mask, loaded)
        after = connectivity(loaded.model, new_mask)
        t = Table(title=f"repair (written to {repair})")
        t.add_column("layer", no_wrap=True)
        for col in ("kept", "units given an input", "units before given an output", "moved", "unfixed"):
            t.add_column(col, justify="right")
        for r in report.layers:
            t.add_row(show(r.name), *(f"{v:,}" for v in (r.kept, r.given_input, r.given_output, r.moved, r.unfixed)))
        console.print(t)
        console.print(f"after repair: {after.summary()}", highlight=False)
        rep = report.to_json()
        for row in rep["layers"]:
            row["name"] = show(row["name"])
        result["repair"] = {**rep, "out": str(repair), "after": after.to_json()}
    if as_json:
        _emit_json(result)
