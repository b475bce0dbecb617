"""Sweeps: one training job per cell of a grid (method x sparsity x seed x dataset), run in parallel.

A :class:`~sparseflow.sweep.config.Sweep` holds the grid and the fields every cell shares; its ``cells()`` are
one TrainJob per cell (see :mod:`sparseflow.sweep.config`). Each cell trains with
:func:`~sparseflow.training.run.run_train_job` into ``OUT/cells/<job.run_name()>``, named by the config hash:

* a cell whose ``result.json`` is stamped by this version and whose ``config.json`` holds the same job is
  finished: a rerun skips it and reads its row back from disk (so a grown grid trains only the new cells);
* a cell with a checkpoint but no result (an interrupted run) resumes from the checkpoint; one whose result
  is stale (another version, another config, unreadable) is cleared and trained from the start;
* a cell that raises is recorded with its error (and ``error.txt`` in its folder) and the sweep goes on;
  a rerun tries it again.

Executors (local processes, Ray): :mod:`sparseflow.sweep.executors`; tables and the figure:
:mod:`sparseflow.sweep.report`.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparseflow.errors import SparseflowError
from sparseflow.sweep.config import Sweep
from sparseflow.training.job import TrainJob

if TYPE_CHECKING:
    from sparseflow.sweep.executors import LocalExecutor, RayExecutor

RESULT, CONFIG, CHECKPOINT = "result.json", "config.json", "checkpoint.safetensors"
# Training examples and input pixels per dataset, and seconds per SGD step of batch 64 at 28x28 (one torch
# thread on a 2-core x86-64, including mask updates and evaluation): they size the --yes check.
TRAIN_EXAMPLES = {"digits": 1437, "mnist1d": 4000, "mnist": 60000, "fashion-mnist": 60000}
PIXELS = {"digits": 64, "mnist1d": 40, "mnist": 784, "fashion-mnist": 784}
STEP_S = {"mlp": 0.0025, "lenet300-100": 0.0025, "conv2": 0.25, "conv4": 0.4, "conv6": 0.6, "resnet": 0.18}
CELL_OVERHEAD_S = 1.0  # report, stored model, connectivity check


def estimate_s(jobs: list[TrainJob], parallel: int = 1) -> float:
    """Seconds to train ``jobs`` with ``parallel`` cells at a time (STEP_S, scaled by batch and input size)."""
    total = 0.0
    for j in jobs:
        n = min(j.subset or TRAIN_EXAMPLES[j.dataset], TRAIN_EXAMPLES[j.dataset])
        steps = j.epochs * -(-n // j.batch_size)
        step = STEP_S[j.model] * j.batch_size / 64
        if j.model not in ("mlp", "lenet300-100"):
            step *= PIXELS[j.dataset] / 784  # convolutions cost per pixel
        runs = 2 if j.baseline and j.method != "dense" else 1
        total += runs * steps * step + CELL_OVERHEAD_S
    return total / max(1, parallel)


def cell_dir(out: Path, job: TrainJob) -> Path:
    return Path(out) / "cells" / job.run_name()


def finished(job: TrainJob, directory: Path) -> dict[str, Any] | None:
    """The stored ``result.json`` of a finished cell (stamped by this version, same job), else None."""
    from sparseflow.training.rundir import read_run

    if not (directory / RESULT).is_file():
        return None
    try:
        result = read_run(directory, "train")
        config = json.loads((directory / CONFIG).read_text())
    except (SparseflowError, OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("job") != job.to_dict():
        return None
    return result


def row(job: TrainJob, status: str, result: dict[str, Any] | None = None, error: str | None = None,
        wall_s: float = 0.0) -> dict[str, Any]:
    """One line of the results: the cell's grid values, its figures (from result.json) and its status."""
    r = result or {}
    return {"cell": job.run_name(), "dataset": job.dataset, "method": job.method, "sparsity": job.sparsity,
            "seed": job.seed, "status": status, "accuracy": r.get("accuracy"),
            "dense_accuracy": r.get("dense_accuracy"), "measured_sparsity": r.get("sparsity"),
            "wall_s": r.get("wall_s", wall_s), "error": error}


@dataclass(frozen=True)
class Cell:
    """What a worker needs to train one cell (picklable: sent to processes and Ray tasks)."""

    job: TrainJob
    directory: Path
    data_dir: Path | None = None
    threads: int | None = None
    command: str | None = None


def run_cell(cell: Cell) -> dict[str, Any]:
    """Train one cell into its folder and return its row; never raises (a failure is a 'failed' row)."""
    import torch

    from sparseflow.training.run import run_train_job

    t0 = time.perf_counter()
    if cell.threads:
        torch.set_num_threads(cell.threads)
    d = cell.directory
    try:
        if (d / RESULT).exists():  # a stale result (another version or config): its files are not ours
            shutil.rmtree(d)
        (d / "error.txt").unlink(missing_ok=True)
        resume = (d / CHECKPOINT).exists()
        kwargs = dict(data_dir=cell.data_dir, progress=False, command=cell.command)
        try:
            result = run_train_job(cell.job, d, resume=resume, **kwargs)
        except Exception:
            if not resume:
                raise
            shutil.rmtree(d)  # a checkpoint it could not continue from: start this cell over
            result = run_train_job(cell.job, d, resume=False, **kwargs)
        return row(cell.job, "ran", result.to_json())
    except Exception as e:
        message = str(e) if isinstance(e, SparseflowError) else f"{type(e).__name__}: {e}"
        try:
            d.mkdir(parents=True, exist_ok=True)
            (d / "error.txt").write_text(traceback.format_exc())
        except OSError:
            pass
        return row(cell.job, "failed", error=message, wall_s=time.perf_counter() - t0)


@dataclass(frozen=True)
class SweepResult:
    sweep: Sweep
    out: Path
    rows: list[dict[str, Any]]  # one per cell, in grid order
    wall_s: float
    executor: str

    def count(self, *status: str) -> int:
        return sum(r["status"] in status for r in self.rows)

    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]

    def to_json(self) -> dict[str, Any]:
        from sparseflow.sweep.report import table

        n, done = len(self.rows), self.count("ran", "skipped")
        return {
            "command": "sweep", "out": str(self.out), "sweep": self.sweep.to_dict(), "executor": self.executor,
            "cells_total": n, "cells_finished": done, "cells_ran": self.count("ran"),
            "cells_skipped": self.count("skipped"), "cells_failed": self.count("failed"),
            "failed_cells": [{"cell": r["cell"], "error": r["error"]} for r in self.failed()],
            "wall_s": self.wall_s, "table": table(self.rows), "rows": self.rows,
            "criteria": {"all_cells_finished": {"value": done, "target": f"== {n} (cells in the grid)",
                                                "pass": done == n}},
        }


def data_dir_for(root: Path | None, dataset: str) -> Path | None:
    """``root/<dataset>`` when that folder exists (one root for several file datasets), else ``root``."""
    if root is None:
        return None
    root = Path(root).resolve()
    return root / dataset if (root / dataset).is_dir() else root


def run_sweep(sweep: Sweep, out: Path, executor: LocalExecutor | RayExecutor | None = None, *,
              data_dir: Path | None = None, on_cell: Callable[[dict[str, Any]], None] | None = None,
              command: str | None = None) -> SweepResult:
    """Train every unfinished cell of ``sweep`` into ``out/cells`` with ``executor`` (default: local processes);
    write results.json, table.md and accuracy.png; ``on_cell`` is called with each cell's row as it is known."""
    from sparseflow.sweep.executors import LocalExecutor
    from sparseflow.sweep.report import write_outputs

    t0 = time.perf_counter()
    out = Path(out).resolve()  # workers (and Ray nodes) may run in another directory
    executor = executor if executor is not None else LocalExecutor()
    rows: dict[str, dict[str, Any]] = {}

    def done(r: dict[str, Any]) -> None:
        rows[r["cell"]] = r
        if on_cell is not None:
            on_cell(r)

    jobs, todo = sweep.cells(), []
    for job in jobs:
        stored = finished(job, cell_dir(out, job))
        if stored is not None:
            done(row(job, "skipped", stored))
        else:
            todo.append(Cell(job, cell_dir(out, job), data_dir_for(data_dir, job.dataset), command=command))
    description = executor.describe(len(todo)) if todo else "none (every cell was finished)"
    if todo:
        executor.run(todo, done)
    result = SweepResult(sweep, out, [rows[j.run_name()] for j in jobs], time.perf_counter() - t0, description)
    write_outputs(result, command)
    return result
