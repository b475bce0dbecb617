"""``sparseflow bench training``: the grid of single-layer training steps, the optimizer state, and the criteria.

The measurements are :mod:`sparseflow.bench.training.measure`'s. The criteria name the cell the goals are set
at (4096 x 4096, batch 64, one thread) and compare the sparse layer with dense and with SparseLab there; the
``auto`` path is held to dense over every cell; the optimizer state at density 0.1 to a fifth of dense.

``end_to_end`` is the place for whole-model training runs (``sparseflow train``): rows added to the result are
written to the JSON and the report beside the single layers; their criteria join :func:`criteria`'s.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparseflow.bench import BenchOptions
from sparseflow.bench.training.measure import (Cell, dense_execution, executions, layer_cell, mask_of, memory_rows,
                                               release_sparselab, sparselab_version, state_bytes)
from sparseflow.errors import SparseflowError
from sparseflow.experiments.protocol import Tick, no_progress
from sparseflow.training.autotune import OPTIMIZERS
from sparseflow.training.options import check, option

GOAL_SHAPE, GOAL_BATCH, GOAL_THREADS = (4096, 4096), 64, 1
SPEEDUP_GOALS = {0.1: 2.5, 0.05: 4.0}  # density -> sparse over dense at the goal cell
AUTO_GOAL = 0.95  # dense time / auto time, every cell
STATE_DENSITY, STATE_GOAL = 0.1, 0.2  # optimizer state of the sparse layer / dense, at this density


def parse_shape(text: str) -> tuple[int, int]:
    """``"4096x1024"`` -> (4096, 1024): (out_features, in_features); one clear error otherwise."""
    out, sep, inp = str(text).strip().lower().partition("x")
    try:
        shape = (int(out), int(inp)) if sep else None
    except ValueError:
        shape = None
    if shape is None or min(shape) < 1:
        raise SparseflowError(f"layer shape {text!r} is not OUTxIN with positive integers; write e.g. 4096x4096 "
                              "(--shapes 4096x4096,3072x768)")
    return shape


@dataclass(frozen=True)
class TrainingConfig:
    """Every (shape, density, threads, batch) cell; the quick run times the goal layer at two densities."""

    shapes: tuple[str, ...] = option(("4096x4096", "3072x768", "768x3072", "1024x4096"),
                                     "Layer shapes OUTxIN (out_features x in_features).", quick=("4096x4096",),
                                     distinct=True)
    densities: tuple[float, ...] = option((0.2, 0.1, 0.05, 0.02), "Weight densities (kept fraction).", min=0,
                                          min_open=True, max=1, quick=(0.1, 0.05), distinct=True)
    batches: tuple[int, ...] = option((16, 64, 256), "Rows per step (batch x positions).", min=1, quick=(16, 64),
                                      distinct=True)
    threads: tuple[int, ...] = option((1, 2), "torch thread counts.", min=1, quick=(1,), distinct=True)
    repeats: int = option(7, "Timed rounds per cell at most (a cell whose rounds would take over 10 s runs fewer, "
                             "never under 3); medians are reported.", min=1, quick=3)
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)
        for s in self.shapes:
            parse_shape(s)
        if len({parse_shape(s) for s in self.shapes}) != len(self.shapes):
            raise SparseflowError(f"--shapes {','.join(self.shapes)} names a shape twice; list each once")

    def parsed_shapes(self) -> list[tuple[int, int]]:
        return [parse_shape(s) for s in self.shapes]


@dataclass
class TrainingResult:
    config: TrainingConfig
    cells: list[Cell]
    memory: list[dict[str, Any]]  # out, inp, density, optimizer, dense/sparse/sparselab bytes and ratios
    machine: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    command_line: str | None = None
    end_to_end: list[dict[str, Any]] = field(default_factory=list)  # whole-model runs (module docstring)

    def criteria(self) -> dict[str, dict[str, Any]]:
        return criteria(self)

    def to_json(self) -> dict[str, Any]:
        from sparseflow.training.options import to_dict

        return {"command": "bench training", "quick": self.config.quick, "config": to_dict(self.config),
                "machine": self.machine, "wall_s": self.wall_s, "command_line": self.command_line,
                "cells": [c.to_json() for c in self.cells], "memory": self.memory,
                "end_to_end": self.end_to_end, "criteria": self.criteria()}


# --- criteria -------------------------------------------------------------------------------------
def _entry(value: float | None, target: str, ok: bool | None, note: str = "", **extra: Any) -> dict[str, Any]:
    if value is None:
        return {"value": None, "target": target, "pass": None, "note": note, **extra}
    return {"value": float(f"{value:.4g}"), "target": target, "pass": bool(ok), **extra}


def criteria(result: TrainingResult) -> dict[str, dict[str, Any]]:
    """The goals, each computed from the measured cells (``"pass": None`` and why, where a cell was not run)."""
    cells = result.cells

    def find(d: float) -> Cell | None:
        return next((c for c in cells if ((c.out, c.inp), c.density, c.batch, c.threads)
                     == (GOAL_SHAPE, d, GOAL_BATCH, GOAL_THREADS)), None)

    where = f"{GOAL_SHAPE[0]}x{GOAL_SHAPE[1]} batch {GOAL_BATCH} {GOAL_THREADS} thread"
    missing = (f"this run has no {where} cell at this density (the full run has it: sparseflow bench training "
               "without --quick)")
    out: dict[str, dict[str, Any]] = {}
    for d, goal in SPEEDUP_GOALS.items():
        c = find(d)
        v = c.speedup("sparse") if c else None
        out[f"{where} density {d:g}: sparse vs dense"] = _entry(v, f">= {goal:g}x", v is not None and v >= goal,
                                                                 missing)
    for d in SPEEDUP_GOALS:
        c = find(d)
        lab = c.ms.get("sparselab") if c else None
        v = lab / c.ms["sparse"] if c and lab is not None else None  # type: ignore[operator]
        note = missing if c is None else "sparselab is not installed (pip install sparselab to compare)"
        out[f"{where} density {d:g}: sparse vs SparseLab"] = _entry(v, "> 1x (faster than SparseLab)",
                                                                    v is not None and v > 1.0, note)
    if cells:
        worst = min(cells, key=lambda c: c.speedup("auto"))  # type: ignore[arg-type, return-value]
        v = worst.speedup("auto")
        out["auto vs dense, worst cell"] = _entry(
            v, f">= {AUTO_GOAL:g}x", v is not None and v >= AUTO_GOAL,
            cell=f"{worst.out}x{worst.inp} density {worst.density:g} batch {worst.batch} threads {worst.threads} "
                 f"(auto: {worst.auto})")
    else:
        out["auto vs dense, worst cell"] = _entry(None, f">= {AUTO_GOAL:g}x", None, "no cell was measured")
    labels = {"sgd": "SGD momentum", "adamw": "AdamW moments"}
    for name in OPTIMIZERS:
        rows = [r for r in result.memory if r["optimizer"] == name and r["density"] == STATE_DENSITY]
        row = max(rows, key=lambda r: r["out"] * r["inp"], default=None)  # the largest layer measured
        out[f"optimizer state at density {STATE_DENSITY:g}, {labels[name]}: sparse vs dense"] = _entry(
            None if row is None else row["sparse_ratio"], f"<= {STATE_GOAL:g}x",
            row is not None and row["sparse_ratio"] <= STATE_GOAL,
            f"density {STATE_DENSITY:g} is not among this run's --densities",
            **({} if row is None else {"layer": f"{row['out']}x{row['inp']}"}))
    # The end-to-end runs (result.end_to_end) add their criteria here.
    return out


# --- the run --------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """The vector ISA the compiled kernels run (from cpuid; the CPU's flags when the extension is missing), the
    core count, torch's and SparseLab's versions, the load when the run ended."""
    from sparseflow.bench.oneshot import machine as cpu
    from sparseflow.inference.kernels import best_isa

    isa = best_isa()
    return {"isa": isa.name if isa is not None else cpu()["isa"], "processor": platform.processor() or
            platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__, "sparselab": sparselab_version(),
            "load_average": os.getloadavg()}


def run(config: TrainingConfig, out: Path | None = None, progress: Tick = no_progress, *,
        options: BenchOptions = BenchOptions()) -> TrainingResult:
    """Time the grid (shapes, densities, threads, batches, outermost first) and measure the optimizer state;
    ``out`` is not used (the writers write it)."""
    from sparseflow.training.options import command_line

    c = config
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    progress("", advance=0, total=len(c.shapes) * len(c.densities) * (1 + len(c.threads) * len(c.batches)))
    cells: list[Cell] = []
    memory: list[dict[str, Any]] = []
    try:
        for si, (o, i) in enumerate(c.parsed_shapes()):
            torch.set_num_threads(max(c.threads))
            dense = dense_execution(o, i)
            dense_bytes = {name: state_bytes(dense_execution(o, i).model, name, i) for name in OPTIMIZERS}
            for di, d in enumerate(c.densities):
                seed = 1000 * si + di
                mask = mask_of(o, i, d, seed)
                torch.set_num_threads(max(c.threads))
                ex = executions(mask, dense, seed)
                memory += memory_rows(ex, mask, d, dense_bytes)
                progress(f"{o}x{i} density {d:g}: optimizer state")
                for t in c.threads:
                    for b in c.batches:
                        cell = layer_cell(ex, mask, d, b, t, repeats=c.repeats, seed=seed)
                        cells.append(cell)
                        progress(f"{o}x{i} density {d:g} batch {b} threads {t}: sparse "
                                 f"{cell.speedup('sparse'):.2f}x, auto ({cell.auto}) {cell.speedup('auto'):.2f}x")
                for e in ex.values():
                    e.close()
                del ex
                release_sparselab()
    finally:
        torch.set_num_threads(threads_before)
    return TrainingResult(c, cells, memory, machine(), time.perf_counter() - t0,
                          command_line("sparseflow bench training", c, dataclasses.replace(options, out=out)))
