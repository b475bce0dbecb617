"""Console table, ``result.json`` and ``table.md`` of ``sparseflow bench inference``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from sparseflow.bench.inference.measure import METHODS
from sparseflow.bench.inference.run import InferenceResult
from sparseflow.experiments.protocol import TableData
from sparseflow.io import atomic_write_text
from sparseflow.training.rundir import write_results


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def speedup_table(result: InferenceResult, note: str = "") -> TableData:
    """Speedup of every method over dense F.linear, per cell (the transformer-sized layers, then the cold-cache
    cells last)."""
    shown = [m for m in METHODS if m != "dense_linear"]
    rows = [(f"{c.out}x{c.inp}" + (" cold" if cold else ""), f"{c.density:g}", str(c.batch), str(c.threads),
             f"{c.ms['dense_linear']:.3f}", *[_fmt(c.speedup(m)) for m in shown], f"{c.bound:.2f}", c.plan)
            for cells, cold in ((result.cells, False), (result.transformer, False), (result.cold, True)) for c in cells]
    title = (f"speedup over dense F.linear (warm cache, median of {result.config.repeats}); "
             f"backend: {result.backend}" + (f"; CPU: {result.cpu}" if result.cpu else ""))
    return TableData(title, ("layer (out x in)", "density", "batch", "thr", "F.linear ms", *shown, "bound", "plan"),
                     rows, left=("layer (out x in)", "plan"), min_width=150, note=note)


def tables(result: InferenceResult) -> list[TableData]:
    mlp = "\n".join(
        f"MLP 784-4096-4096-10 90% ERK batch {r['batch']}, {r['threads']} thread: dense {r['dense_ms']:.3f} ms, "
        f"ours {r['ours_ms']:.3f} ms, {r['speedup']:.2f}x, max rel err {r['max_rel_err']:.1e}" for r in result.mlp)
    out = [speedup_table(result, note=mlp)] if result.cells or result.cold or result.transformer else []
    if result.models:
        out.append(models_table(result))
    return out


def models_table(result: InferenceResult) -> TableData:
    """Whole models, dense against converted, per workload and thread count."""
    rows = [(r.model, r.workload, f"1 x {r.tokens}", str(r.threads), f"{r.dense_ms:.2f}", f"{r.sparse_ms:.2f}",
             f"{r.speedup:.2f}", _fmt(r.floor_ms), _fmt(r.bound), f"{r.max_rel_err:.1e}") for r in result.models]
    note = "\n".join(f"{i['model']}: {i['shape']}; sparsity {i['sparsity']:.3f} of the attention and MLP weights, "
                     f"{i['sparse_layers']} of {i['layers']} weight layers run sparse; convert took {i['convert_s']} s"
                     for i in result.model_info)
    return TableData(f"whole models, end to end at batch 1 (median of {result.config.repeats} interleaved calls)",
                     ("model", "workload", "tokens", "thr", "dense ms", "sparse ms", "speedup", "floor ms",
                      "bound", "max rel err"), rows, left=("model", "workload"),
                     note=note + "\nfloor: the converted model with its sparse layers returning zeros at no cost; "
                                 "bound = dense / floor, the most a sparse kernel could gain")


def write_outputs(result: InferenceResult, out: Path) -> dict[str, Any]:
    """OUT/result.json and OUT/table.md (the tables as the console shows them); returns the JSON object."""
    from rich.console import Console

    data = result.to_json()
    write_results(out, "bench-inference", data, "result.json")
    console = Console(file=io.StringIO(), width=200)
    for t in tables(result):
        console.print(t.rich())
    atomic_write_text(out / "table.md", console.file.getvalue())
    return data
