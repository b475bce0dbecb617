"""``sparseflow bench masks``: trained LeNet-300-100 masks coded against the i.i.d. bound."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, bench_app
from sparseflow.errors import SparseflowError
from sparseflow.training.rundir import write_results


@bench_app.command("masks")
def bench_masks_cmd(
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with the MNIST IDX .gz files.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs (Adam 1e-3, batch 128).")] = 5,
    threads: Annotated[int, typer.Option(help="torch.set_num_threads for training.")] = 1,
    out: Annotated[Optional[Path], typer.Option(help="Write result.json and report.md here.")] = None,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train LeNet-300-100 on MNIST, prune globally by magnitude to 90 % and 96.4 %, and code each mask as
    sparseflow.save does: bits against N·H(p) per layer and in total, random masks of equal densities as the
    control. Goal: trained masks ≤ 0.90 × Σ N_l·H(p_l). --quick trains 2 epochs."""
    import torch

    from sparseflow.bench.masks import SPARSITIES, bench_masks
    from sparseflow.io import atomic_write_text
    from sparseflow.training.report import md_table

    if data_dir is None:
        raise SparseflowError("bench masks trains on MNIST: pass --data-dir, the folder holding its four IDX .gz files")
    if epochs < 1 or threads < 1:
        raise SparseflowError(f"--epochs and --threads must be >= 1, got {epochs} and {threads}")
    if out is not None and out.exists() and not out.is_dir():
        raise SparseflowError(f"--out {str(out)!r} exists and is not a directory")
    torch.set_num_threads(threads)
    err = Console(stderr=True)
    with err.status("training LeNet-300-100 on MNIST") as status:
        b = bench_masks(data_dir, quick=quick, epochs=epochs, tick=lambda msg: status.update(msg))
    console = _console(as_json, min_width=110)
    headers = ["masks", "sparsity", "layer", "shape", "density", "codec", "bits", "N·H(p)", "ratio"]
    rows = [[r.kind, f"{r.sparsity:.1%}", r.layer, "x".join(map(str, r.shape)), f"{r.density:.4f}", r.codec,
             f"{r.bits:,}", f"{r.entropy_bits:,.0f}", f"{r.ratio:.3f}"] for r in b.rows]
    table = Table(title=f"LeNet-300-100 masks ({b.epochs} epochs, test accuracy {b.accuracy:.4f})")
    for h in headers:
        table.add_column(h, justify="left" if h in ("masks", "layer", "shape", "codec") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    totals = [[k, f"{s:.1%}", f"{b.total(k, s):.4f}"] for s in SPARSITIES for k in ("trained", "random")]
    for kind, s, v in totals:
        console.print(f"{kind} masks at {s}: total {v} x Σ N_l·H(p_l)", highlight=False)
    crit = b.criteria()
    for name, c in crit.items():
        console.print(f"{name}: {c['value']:.4f} (target {c['target']}): {'pass' if c['pass'] else 'FAIL'}",
                      highlight=False)
    result = {"command": "bench masks", "quick": quick, "torch": torch.__version__, **b.to_json()}
    crit_rows = [[n, f"{c['value']:.4f}", c["target"], c["pass"]] for n, c in crit.items()]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_results(out, "bench-masks", result, "result.json")
        atomic_write_text(out / "report.md", (
            "# Trained masks against the i.i.d. bound\n\n"
            f"LeNet-300-100 on MNIST, Adam 1e-3, {b.epochs} epochs ({b.train_examples:,} examples, test accuracy "
            f"{b.accuracy:.4f}), global magnitude pruning; each mask coded as `sparseflow.save` codes it.\n\n"
            f"{md_table(headers, rows)}\n\n## Totals (bits / Σ N_l·H(p_l))\n\n"
            f"{md_table(['masks', 'sparsity', 'ratio'], totals)}\n\n## Criteria\n\n"
            f"{md_table(['criterion', 'value', 'target', 'pass'], crit_rows)}\n"))
    if as_json:
        _emit_json(result)
