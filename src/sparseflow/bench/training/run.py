"""``sparseflow bench training``: the grid of single-layer training steps, the optimizer state, and the criteria.

The measurements are :mod:`sparseflow.bench.training.measure`'s; 1x1 convolutions (``--convs``) are timed the
same way, against a dense ``nn.Conv2d``. The criteria name the cell the goals are set at (4096 x 4096, batch 64,
one thread) and compare the sparse layer with dense and with SparseLab there; the ``auto`` path is held to dense
over every cell, the convolutions' included; the optimizer state at density 0.1 to a fifth of dense.

``end_to_end`` holds the whole-model runs (:mod:`sparseflow.bench.training.end_to_end`): RigL on the MLP
784-4096-4096-10 at 90 % on MNIST (``--data-dir``; the quick run without it trains on the embedded digits), in
dense and sparse execution, beside dense training; ``end_to_end_summary`` is their table.
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

from sparseflow.bench import DataBenchOptions
from sparseflow.bench.training import end_to_end as e2e
from sparseflow.bench.training.measure import (Cell, conv_executions, dense_execution, executions, layer_cell,
                                               mask_of, memory_rows, release_sparselab, sparselab_version,
                                               state_bytes)
from sparseflow.errors import SparseflowError
from sparseflow.experiments.protocol import Tick, no_progress
from sparseflow.methods.autotune import OPTIMIZERS
from sparseflow.training.options import check, option

GOAL_SHAPE, GOAL_BATCH, GOAL_THREADS = (4096, 4096), 64, 1
SPEEDUP_GOALS = {0.1: 2.5, 0.05: 4.0}  # density -> sparse over dense at the goal cell
AUTO_GOAL = 0.95  # dense time / auto time, every cell
STATE_DENSITY, STATE_GOAL = 0.1, 0.2  # optimizer state of the sparse layer / dense, at this density
E2E_GOAL = 2.0  # dense training's epoch time / RigL's in sparse execution, MLP on MNIST
E2E_ACC_PP = 0.3  # |accuracy of RigL in sparse execution - in dense execution|, mean over seeds, in points
E2E_SEEDS = 3  # the seeds the accuracy goal is set over


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


def parse_conv(text: str) -> tuple[int, int, int]:
    """``"1024x256x14"`` -> (1024, 256, 14): output channels, input channels, feature-map side; one clear error
    otherwise."""
    parts = str(text).strip().lower().split("x")
    try:
        conv = tuple(int(p) for p in parts) if len(parts) == 3 else None
    except ValueError:
        conv = None
    if conv is None or min(conv) < 1:
        raise SparseflowError(f"1x1 convolution {text!r} is not OUTxINxSIZE with positive integers (channels out, "
                              "channels in, side of the square feature map); write e.g. 1024x256x14")
    return conv  # type: ignore[return-value]


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
    convs: tuple[str, ...] = option(("256x64x56", "512x128x28", "1024x256x14", "2048x512x7"),
                                    "1x1 convolutions OUTxINxSIZE (channels out, in, square feature-map side; the "
                                    "default: ResNet-50's bottleneck expansions), at every density and thread "
                                    "count; none with --convs ''.", quick=("1024x256x14",), distinct=True)
    conv_batch: int = option(16, "Images per step of the convolution cells.", min=1, quick=8)
    repeats: int = option(7, "Timed rounds per cell at most (a cell whose rounds would take over 10 s runs fewer, "
                             "never under 3); medians are reported.", min=1, quick=3)
    end_to_end: bool = option(True, "Also train the MLP end to end: RigL in dense and in sparse execution beside "
                                    "dense training (MNIST from --data-dir; without it, the embedded digits).",
                              flag="--end-to-end/--no-end-to-end")
    e2e_hidden: tuple[int, ...] = option((4096, 4096), "Hidden widths of the end-to-end MLP.", min=1,
                                         metavar="WIDTHS")
    e2e_sparsity: float = option(0.9, "RigL's sparsity in the end-to-end runs.", min=0, max=1, max_open=True)
    e2e_epochs: int = option(1, "Epochs of each end-to-end run.", min=1)
    e2e_seeds: int = option(E2E_SEEDS, "Seeds of the end-to-end runs (each trains dense, masked and sparse).",
                            min=1, quick=1)
    e2e_subset: int | None = option(None, "Training examples of the end-to-end runs (default all; quick: 1024 of "
                                          "MNIST).", min=1, quick=1024)
    e2e_test_subset: int | None = option(None, "Test examples the end-to-end runs evaluate on (default all; "
                                               "quick: the first 1000 of MNIST).", min=1, quick=1000)
    e2e_batch: int = option(64, "Batch size of the end-to-end runs.", min=1)
    e2e_threads: int = option(1, "torch threads of the end-to-end runs.", min=1)
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)
        for s in self.shapes:
            parse_shape(s)
        for s in self.convs:
            parse_conv(s)
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
    end_to_end: list[dict[str, Any]] = field(default_factory=list)  # whole-model runs, one row per run
    dataset: str | None = None  # the end-to-end runs' dataset

    @property
    def end_to_end_summary(self) -> list[dict[str, Any]]:
        return e2e.summary(self.end_to_end)

    def criteria(self) -> dict[str, dict[str, Any]]:
        return criteria(self)

    def to_json(self) -> dict[str, Any]:
        from sparseflow.training.options import to_dict

        return {"command": "bench training", "quick": self.config.quick, "config": to_dict(self.config),
                "machine": self.machine, "wall_s": self.wall_s, "command_line": self.command_line,
                "cells": [c.to_json() for c in self.cells], "memory": self.memory,
                "end_to_end": {"dataset": self.dataset, "runs": self.end_to_end,
                               "summary": self.end_to_end_summary},
                "criteria": self.criteria()}


# --- criteria -------------------------------------------------------------------------------------
def _entry(value: float | None, target: str, ok: bool | None, note: str = "", **extra: Any) -> dict[str, Any]:
    if value is None:
        return {"value": None, "target": target, "pass": None, "note": note, **extra}
    return {"value": float(f"{value:.4g}"), "target": target, "pass": bool(ok), **extra}


def criteria(result: TrainingResult) -> dict[str, dict[str, Any]]:
    """The goals, each computed from the measured cells (``"pass": None`` and why, where a cell was not run)."""
    cells = result.cells

    def find(d: float) -> Cell | None:
        return next((c for c in cells if ((c.out, c.inp), c.density, c.batch, c.threads, c.kind)
                     == (GOAL_SHAPE, d, GOAL_BATCH, GOAL_THREADS, "linear")), None)

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
        cell = (f"{worst.label} density {worst.density:g} batch {worst.batch} threads {worst.threads} "
                f"(auto: {worst.auto})")
        if result.config.quick:  # 3 rounds a cell: a cell within a few percent of dense is noise, not a verdict
            out["auto vs dense, worst cell"] = {
                "value": float(f"{v:.4g}"), "target": f">= {AUTO_GOAL:g}x", "pass": None, "cell": cell,
                "note": "quick run: a few cells of 3 rounds each; the goal is over the full grid (without --quick)"}
        else:
            out["auto vs dense, worst cell"] = _entry(v, f">= {AUTO_GOAL:g}x", v is not None and v >= AUTO_GOAL,
                                                      cell=cell)
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
    out.update(e2e_criteria(result))
    return out


def e2e_criteria(result: TrainingResult) -> dict[str, dict[str, Any]]:
    """The end-to-end goals: an epoch of RigL in sparse execution against dense training, and its accuracy
    against RigL in dense execution; judged on MNIST at full scale, reported with ``"pass": None`` and why
    otherwise."""
    c = result.config
    name = f"end to end, RigL MLP {'-'.join(map(str, c.e2e_hidden))} at {c.e2e_sparsity:g}"
    rows = {r["run"]: r for r in result.end_to_end_summary}
    speed = rows["sparse"]["speedup"] if "sparse" in rows else None
    gap = abs(rows["sparse"]["acc_mean"] - rows["masked"]["acc_mean"]) if {"sparse", "masked"} <= set(rows) else None
    if not c.end_to_end:
        why = "the end-to-end runs were not run (--no-end-to-end)"
    elif result.dataset != "mnist":
        why = f"trained on {result.dataset}: the goal is on MNIST (pass --data-dir, the MNIST folder)"
    elif c.quick:
        why = "quick run: a subset of MNIST, one seed; the goal is the full run's (without --quick)"
    else:
        why = ""
    acc_why = why or (f"{c.e2e_seeds} seed(s): the goal is a mean over {E2E_SEEDS}" if c.e2e_seeds < E2E_SEEDS
                      else "")

    def judged(value: float | None, target: str, ok: bool, note: str) -> dict[str, Any]:
        if value is None or note:
            return {"value": None if value is None else float(f"{value:.4g}"), "target": target, "pass": None,
                    "note": note or "not measured"}
        return _entry(value, target, ok)

    return {f"{name}: epoch, sparse execution vs dense training":
            judged(speed, f">= {E2E_GOAL:g}x", speed is not None and speed >= E2E_GOAL, why),
            f"{name}: accuracy, sparse vs dense execution (pp)":
            judged(gap, f"<= {E2E_ACC_PP:g} pp (mean over {E2E_SEEDS} seeds)",
                   gap is not None and gap <= E2E_ACC_PP, acc_why)}


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


def check_data(config: TrainingConfig, options: DataBenchOptions) -> str | None:
    """The end-to-end runs' dataset, its files verified before anything is timed; one clear error where the full
    run has no MNIST folder."""
    if not config.end_to_end:
        return None
    dataset, folder = e2e.data_of(options.data_dir)
    if dataset != "mnist" and not config.quick:
        raise SparseflowError("bench training's end-to-end runs train on MNIST: pass --data-dir, the folder holding "
                              "its four IDX .gz files (or --no-end-to-end for the single layers alone, or --quick "
                              "to train on the embedded digits)")
    from sparseflow.training.data import load_dataset

    load_dataset(dataset, folder)  # verify the files
    return dataset


def e2e_specs(config: TrainingConfig, dataset: str, folder: str | None) -> list[e2e.RunSpec]:
    c = config
    on_files = dataset == "mnist"  # the digits are small: every example, whatever the quick subset says
    return [e2e.RunSpec(run, seed, dataset, folder, c.e2e_subset if on_files else None,
                        c.e2e_test_subset if on_files else None, tuple(c.e2e_hidden), c.e2e_sparsity, c.e2e_epochs,
                        c.e2e_batch, c.e2e_threads)
            for seed in range(c.e2e_seeds) for run in e2e.RUNS]


def run(config: TrainingConfig, out: Path | None = None, progress: Tick = no_progress, *,
        options: DataBenchOptions = DataBenchOptions()) -> TrainingResult:
    """Time the grid (shapes, densities, threads, batches, outermost first), measure the optimizer state, then
    train the end-to-end runs; ``out`` is not used (the writers write it)."""
    from sparseflow.training.options import command_line

    c = config
    dataset = check_data(c, options)
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    specs = e2e_specs(c, dataset, e2e.data_of(options.data_dir)[1]) if dataset else []
    progress("", advance=0,
             total=len(c.shapes) * len(c.densities) * (1 + len(c.threads) * len(c.batches))
             + len(c.convs) * len(c.densities) * len(c.threads) + len(specs))
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
        for ci, (o, i, size) in enumerate(parse_conv(s) for s in c.convs):
            for di, d in enumerate(c.densities):
                seed = 100_000 + 1000 * ci + di
                mask = mask_of(o, i, d, seed).reshape(o, i, 1, 1)
                torch.set_num_threads(max(c.threads))
                ex = conv_executions(mask)
                for t in c.threads:
                    cell = layer_cell(ex, mask, d, c.conv_batch, t, repeats=c.repeats, seed=seed, size=size)
                    cells.append(cell)
                    progress(f"{cell.label} density {d:g} threads {t}: sparse {cell.speedup('sparse'):.2f}x, auto "
                             f"({cell.auto}) {cell.speedup('auto'):.2f}x")
                for e in ex.values():
                    e.close()
                del ex
    finally:
        torch.set_num_threads(threads_before)
    rows = e2e.run_all(specs, progress) if specs else []
    return TrainingResult(c, cells, memory, machine(), time.perf_counter() - t0,
                          command_line("sparseflow bench training", c, dataclasses.replace(options, out=out)),
                          rows, dataset)
