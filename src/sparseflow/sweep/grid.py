"""Sweeps: one training job per cell of a grid (method x sparsity x seed x dataset), run in parallel.

A :class:`Sweep` holds the grid and a :class:`~sparseflow.training.job.TrainJob` with the fields every cell shares
(model, epochs, batch size, lr, subset, ...). :meth:`Sweep.cells` expands it into one TrainJob per cell,
datasets outermost, then methods, sparsities and seeds (the order of every table). 'dense' has sparsity 0
whatever the grid says, so it is one cell per seed and dataset. Each cell trains with
:func:`~sparseflow.training.job.run_train_job` into ``OUT/cells/<job.run_name()>``, named by the config hash:

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

import dataclasses
import hashlib
import itertools
import json
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparseflow.training.data import DATASETS
from sparseflow.distributions import check_sparsity
from sparseflow.errors import SparseflowError
from sparseflow.training.job import METHODS, TrainJob

if TYPE_CHECKING:
    from sparseflow.sweep.executors import LocalExecutor, RayExecutor

GRID = ("methods", "sparsities", "seeds", "datasets")
RESULT, CONFIG, CHECKPOINT = "result.json", "config.json", "checkpoint.safetensors"
# Training examples and input pixels per dataset, and seconds per SGD step of batch 64 at 28x28 (one torch
# thread on a 2-core x86-64, including mask updates and evaluation): they size the --yes check.
TRAIN_EXAMPLES = {"digits": 1437, "mnist1d": 4000, "mnist": 60000, "fashion-mnist": 60000}
PIXELS = {"digits": 64, "mnist1d": 40, "mnist": 784, "fashion-mnist": 784}
STEP_S = {"mlp": 0.0025, "lenet300-100": 0.0025, "conv2": 0.25, "conv4": 0.4, "conv6": 0.6, "resnet": 0.18}
CELL_OVERHEAD_S = 1.0  # report, stored model, connectivity check


@dataclass(frozen=True)
class Sweep:
    """The grid and the job fields all cells share. ``distribution=None``: each method's default."""

    methods: tuple[str, ...] = ("gmp", "rigl")
    sparsities: tuple[float, ...] = (0.8, 0.9)
    seeds: tuple[int, ...] = (0, 1, 2)
    datasets: tuple[str, ...] = ("digits",)
    base: TrainJob = field(default_factory=lambda: TrainJob(baseline=False))
    distribution: str | None = None

    def __post_init__(self) -> None:
        for name in GRID:
            values = tuple(getattr(self, name))
            if not values:
                raise SparseflowError(f"{name} is empty: a sweep needs at least one value in each of {', '.join(GRID)}")
            dupes = sorted({str(v) for v in values if values.count(v) > 1})
            if dupes:
                raise SparseflowError(f"{name} lists {', '.join(dupes)} more than once")
            object.__setattr__(self, name, values)
        for m in self.methods:
            if m not in METHODS:
                raise SparseflowError(f"unknown method {m!r}; choose one of {', '.join(METHODS)}")
        for s in self.sparsities:
            check_sparsity(s)
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise SparseflowError(f"seeds must be integers >= 0, got {s!r}")
        for d in self.datasets:
            if d not in DATASETS:
                raise SparseflowError(f"unknown dataset {d!r}; choose one of {', '.join(DATASETS)}")
        self.cells()  # every combination must be a valid TrainJob

    def cells(self) -> list[TrainJob]:
        """One TrainJob per cell: datasets, then methods, sparsities, seeds (duplicate 'dense' cells dropped)."""
        jobs: dict[str, TrainJob] = {}
        for d, m, s, seed in itertools.product(self.datasets, self.methods, self.sparsities, self.seeds):
            job = dataclasses.replace(self.base, dataset=d, method=m, sparsity=s, seed=seed,
                                      distribution=self.distribution)
            jobs.setdefault(job.digest(), job)
        return list(jobs.values())

    def to_dict(self) -> dict[str, Any]:
        shared = {k: v for k, v in self.base.to_dict().items()
                  if k not in ("method", "sparsity", "seed", "dataset", "distribution")}
        return {"methods": list(self.methods), "sparsities": list(self.sparsities), "seeds": list(self.seeds),
                "datasets": list(self.datasets), "distribution": self.distribution, "shared": shared}

    def digest(self) -> str:
        """Stable 10-hex-digit hash of the grid and shared fields: the default output folder's suffix."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]


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

    from sparseflow.training.job import run_train_job

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
