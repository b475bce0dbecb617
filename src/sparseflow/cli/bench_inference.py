"""``sparseflow bench inference``: sparse kernels against dense and the stock sparse libraries."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, bench_app
from sparseflow.errors import SparseflowError
from sparseflow.training.rundir import write_results


def _criteria(cells: list, cold: list, mlp: list) -> dict[str, dict[str, Any]]:
    def find(d, b, t, rows=cells):
        return next((c for c in rows if (c.out, c.inp, c.density, c.batch, c.threads) == (4096, 4096, d, b, t)), None)

    out: dict[str, dict[str, Any]] = {}

    def add(name, value, target, ok):
        if value is not None:
            out[name] = {"value": float(f"{value:.4g}"), "target": target, "pass": bool(ok(value))}

    for d, b, goal in ((0.1, 1, 4.5), (0.1, 16, 5.0), (0.1, 256, 3.0), (0.05, 1, 9.0)):
        c = find(d, b, 1)
        add(f"4096x4096 {1 - d:.0%} sparse batch {b} 1 thread warm: ours vs dense", c and c.speedup("ours"),
            f">= {goal}x", lambda v, g=goal: v >= g)
    c = find(0.1, 1, 1)
    if c and c.ms.get("scipy_csr"):
        add("4096x4096 90% sparse batch 1 1 thread warm: ours vs scipy", c.ms["scipy_csr"] / c.ms["ours"], ">= 1.7x",
            lambda v: v >= 1.7)
    for b in (16, 256):
        c1, c2 = find(0.1, b, 1), find(0.1, b, 2)
        if c1 and c2:
            add(f"4096x4096 90% sparse batch {b}: 2 threads vs 1 thread (ours)", c1.ms["ours"] / c2.ms["ours"], ">= 1.7x",
                lambda v: v >= 1.7)
    if cells:
        worst = min(cells, key=lambda c: min(c.ms["dense_mm"], c.ms["dense_linear"]) / c.ms["ours"])
        add("every cell: ours vs the faster dense (worst cell)",
            min(worst.ms["dense_mm"], worst.ms["dense_linear"]) / worst.ms["ours"], ">= 0.95x", lambda v: v >= 0.95)
    if mlp:
        add("MLP 784-4096-4096-10 90% ERK: max relative error vs dense", max(r["max_rel_err"] for r in mlp), "<= 1e-5",
            lambda v: v <= 1e-5)
    return out


@bench_app.command("inference")
def bench_inference(
    repeats: Annotated[int, typer.Option(help="Timed calls per method and cell; medians are reported.")] = 7,
    out: Annotated[Optional[Path], typer.Option(help="Write result.json and table.md here.")] = None,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Sparse x dense products per layer shape, density, batch and threads, side by side; MLP end to end."""
    import torch

    from sparseflow.bench.inference import BATCHES, DENSITIES, QUICK, SHAPES, THREADS, backend_name, layer_cell, mlp_rows

    if repeats < 1:
        raise SparseflowError(f"--repeats must be >= 1, got {repeats}")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # scipy's product is single-threaded anyway
    grid = QUICK if quick else dict(shapes=SHAPES, densities=DENSITIES, batches=BATCHES, threads=THREADS)
    reps = min(repeats, 5) if quick else repeats
    err = Console(stderr=True)
    cells, cold = [], []
    with err.status("timing") as status:
        for t in grid["threads"]:
            for (o, i) in grid["shapes"]:
                for d in grid["densities"]:
                    for b in grid["batches"]:
                        status.update(f"{o}x{i} density {d} batch {b} threads {t}")
                        cells.append(layer_cell(o, i, d, b, t, repeats=reps))
        for d in (0.1, 0.05):
            status.update(f"cold cache, density {d}")
            cold.append(layer_cell(4096, 4096, d, 1, 1, repeats=reps, cold=True))
        status.update("MLP 784-4096-4096-10")
        mlp = mlp_rows((1, 64), 1, reps)
    torch.set_num_threads(os.cpu_count() or 1)
    methods = ("dense_mm", "dense_linear", "torch_csr32", "scipy_csr", "sparselab", "ours")
    console = _console(as_json, min_width=150)
    table = Table(title=f"speedup over dense F.linear (warm cache, median of {reps}); backend: {backend_name()}")
    for col in ("layer (out x in)", "density", "batch", "thr", "F.linear ms", *methods[:1], *methods[2:], "bound", "plan"):
        table.add_column(col, justify="left" if col in ("layer (out x in)", "plan") else "right")

    def fmt(v):
        return "-" if v is None else f"{v:.2f}"

    for c in cells + cold:
        tag = f"{c.out}x{c.inp}" + (" cold" if c in cold else "")
        table.add_row(tag, f"{c.density:g}", str(c.batch), str(c.threads), f"{c.ms['dense_linear']:.3f}",
                      *[fmt(c.speedup(m)) for m in methods if m != "dense_linear"], f"{c.bound:.2f}", c.plan)
    console.print(table)
    for r in mlp:
        console.print(f"MLP 784-4096-4096-10 90% ERK batch {r['batch']}, {r['threads']} thread: dense {r['dense_ms']:.3f} ms, "
                      f"ours {r['ours_ms']:.3f} ms, {r['speedup']:.2f}x, max rel err {r['max_rel_err']:.1e}")
    crit = _criteria(cells, cold, mlp)
    for k, v in crit.items():
        console.print(f"{'PASS' if v['pass'] else 'FAIL'}  {k}: {v['value']} (target {v['target']})")
    result = {"command": "bench inference", "quick": quick, "repeats": reps, "torch": torch.__version__,
              "backend": backend_name(), "machine": platform.processor() or platform.machine(),
              "load_average": os.getloadavg(), "cells": [c.__dict__ for c in cells], "cold_cells": [c.__dict__ for c in cold],
              "mlp": mlp, "criteria": crit}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_results(out, "bench-inference", result, "result.json")
        Console(file=open(out / "table.md", "w"), width=200).print(table)
    if as_json:
        _emit_json(result)
