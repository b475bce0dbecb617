"""``sparseflow bench methods``: every way of making LeNet-300-100 sparse, on one training budget.

Each method trains LeNet-300-100 (Frankle & Carbin 2019) on MNIST for the same number of optimizer steps
with the same optimizer, learning-rate schedule, batch size and seeds; only the way the mask is made
differs. Methods use the layer-wise distribution of their paper unless told otherwise (magnitude and GMP:
uniform; SNIP, GraSP, SynFlow: global; static random, SET and RigL: ERK, plus static uniform).
Results are mean ± sample std over seeds. ``--quick`` runs MNIST-1D (generated locally) instead.
"""

from __future__ import annotations

import functools
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparseflow.bench import DataBenchOptions
from sparseflow.bench.overhead import OverheadRow, rigl_overhead
from sparseflow.distributions import check_sparsity
from sparseflow.errors import SparseflowError
from sparseflow.experiments.protocol import Experiment, TableData, Tick, no_progress
from sparseflow.training.processes import worker_pool
from sparseflow.training.options import check, option
from sparseflow.training.rundir import write_results

# (row label, method name, distribution or None for the method's default)
VARIANTS: tuple[tuple[str, str, str | None], ...] = (
    ("static uniform", "random", "uniform"),
    ("static ERK", "random", "erk"),
    ("SNIP", "snip", None),
    ("GraSP", "grasp", None),
    ("SynFlow", "synflow", None),
    ("magnitude + fine-tune", "magnitude", None),
    ("GMP", "gmp", None),
    ("SET", "set", None),
    ("RigL", "rigl", None),
)


@dataclass(frozen=True)
class MethodsConfig:
    """Every variant and dense, per sparsity and seed, on one training budget; the quick run uses MNIST-1D."""

    seeds: int = option(3, "Seeds per (method, sparsity); mean ± std over them.", min=1, quick=2)
    epochs: int = option(10, "Training epochs, the same budget for every method.", min=1)
    sparsities: tuple[float, ...] = option((0.8, 0.9, 0.95, 0.98), "Comma-separated sparsities, each in [0, 1).",
                                           quick=(0.9, 0.98))
    dataset: str = option("mnist", "Dataset (MNIST-1D is generated locally).", cli=False, quick="mnist1d")
    model: str = option("lenet300-100", "Model.", cli=False)
    batch_size: int = option(128, "Batch size.", cli=False, min=1)
    lr: float = option(0.1, "Learning rate.", cli=False, min=0, min_open=True)
    weight_decay: float = option(1e-4, "Weight decay.", cli=False, min=0)
    subset: int | None = option(None, "Training examples (default: all).", cli=False, min=1)
    overhead_repeats: int = option(10, "Repeats of RigL's step-time measurement.", cli=False, min=1, quick=5)

    def __post_init__(self) -> None:
        check(self)
        # The library's own check, so that a bad level reads as everywhere else: "sparsity must be in [0, 1)".
        object.__setattr__(self, "sparsities", tuple(check_sparsity(s) for s in self.sparsities))

    def to_json(self) -> dict[str, Any]:
        """The training settings as the results record them (the seeds as a list)."""
        return {"dataset": self.dataset, "model": self.model, "sparsities": list(self.sparsities),
                "seeds": list(range(self.seeds)), "epochs": self.epochs, "batch_size": self.batch_size,
                "lr": self.lr, "weight_decay": self.weight_decay, "subset": self.subset}


@dataclass(frozen=True)
class MethodsOptions(DataBenchOptions):
    """Where the data is and how many processes train; neither changes the result."""

    workers: int = option(2, "Parallel training processes (threads are split among them).", min=1)


@dataclass(frozen=True)
class RunSpec:
    label: str
    method: str
    distribution: str | None
    sparsity: float
    seed: int


@functools.lru_cache(maxsize=8)
def _dataset(name: str, data_dir: str | None, subset: int | None, seed: int):  # noqa: ANN202
    # A worker trains many runs on the same data: read and verify the files once per process.
    from sparseflow.training.data import load_dataset

    return load_dataset(name, data_dir, subset=subset, seed=seed)


def _run(spec: RunSpec, cfg: MethodsConfig, data_dir: str | None, threads: int) -> tuple[RunSpec, float, float]:
    """One training run in a worker process: (spec, test accuracy, measured sparsity of the targets)."""
    from sparseflow.training.build import build_method, first_batch
    from sparseflow.training.job import TrainJob
    from sparseflow.training.data import loaders
    from sparseflow.training.models import build_model
    from sparseflow.targets import Targets
    from sparseflow.training.loop import TrainConfig, fit

    torch.set_num_threads(threads)
    ds = _dataset(cfg.dataset, data_dir, cfg.subset, spec.seed if cfg.subset is not None else 0)
    job = TrainJob(method=spec.method, sparsity=spec.sparsity, distribution=spec.distribution, model=cfg.model,
                   dataset=cfg.dataset, subset=cfg.subset, epochs=cfg.epochs, batch_size=cfg.batch_size,
                   lr=cfg.lr, weight_decay=cfg.weight_decay, seed=spec.seed, baseline=False)
    model = build_model(cfg.model, ds.input_shape, ds.num_classes, seed=spec.seed)
    train, test = loaders(ds, cfg.batch_size, seed=spec.seed)
    method = build_method(job, cfg.epochs * len(train), batch=first_batch(ds, job), input_shape=ds.input_shape)
    result = fit(model, train, test, TrainConfig(**job.train_config_kwargs()), method=method, progress=False)
    weights = list(Targets().select(model).values())
    nnz = sum(int(torch.count_nonzero(w)) for w in weights)
    return spec, result.test_acc, 1.0 - nnz / sum(w.numel() for w in weights)


def methods_benchmark(cfg: MethodsConfig, *, data_dir: str | Path | None, workers: int = 2,
                      on_result: Callable[[RunSpec, float], None] | None = None) -> dict[str, Any]:
    """Run every (variant, sparsity, seed) plus dense per seed; returns rows of mean ± std accuracy."""
    seeds = range(cfg.seeds)
    specs = [RunSpec("dense", "dense", None, 0.0, seed) for seed in seeds]
    specs += [RunSpec(label, m, d, s, seed) for s in cfg.sparsities for label, m, d in VARIANTS for seed in seeds]
    threads = max(1, (os.cpu_count() or 1) // workers)
    acc: dict[tuple[str, float], list[float]] = {}
    measured: dict[tuple[str, float], list[float]] = {}
    # 'spawn' workers that end with this process (Ctrl-C, SIGTERM, SIGKILL): sparseflow.training.processes.
    with worker_pool(workers) as pool:
        futures = [pool.submit(_run, spec, cfg, None if data_dir is None else str(data_dir), threads) for spec in specs]
        for fut in futures:
            spec, a, s = fut.result()
            acc.setdefault((spec.label, spec.sparsity), []).append(a)
            measured.setdefault((spec.label, spec.sparsity), []).append(s)
            if on_result:
                on_result(spec, a)
    rows = []
    for (label, s), values in acc.items():
        rows.append({
            "method": label, "sparsity": s, "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values),
            "accuracies": values, "measured_sparsity": statistics.fmean(measured[(label, s)]),
        })
    return {"config": cfg.to_json(), "rows": rows}


def find_row(result: dict[str, Any], label: str, s: float) -> dict[str, Any] | None:
    for row in result["rows"]:
        if row["method"] == label and abs(row["sparsity"] - s) < 1e-9:
            return row
    return None


# Why the quick run (MNIST-1D, two seeds, five timing repeats) cannot test two of the expectations.
QUICK_ACCURACY = ("0.5 pp is the gap expected on MNIST, where every method nears 98 % after 10 epochs; on the quick "
                  "run's MNIST-1D no method is near convergence, so the gap measures how fast each learns, not what "
                  "it reaches; the full run (MNIST) tests it")
QUICK_TIMING = ("a 5 % bound is within the run-to-run noise of a step time (about ±3 % on a shared machine); the "
                "quick run's 5 repeats measure it but cannot test it; the full run's 10 repeats do")


def criteria(result: dict[str, Any], rigl_ratio: float | None) -> dict[str, dict[str, Any]]:
    """The literature's expectations as pass/fail checks computed from the measured means.

    The orderings are tested on any dataset. The 0.5 pp gap to dense is an expectation for MNIST: on another
    dataset (the quick run's MNIST-1D) it is reported with ``"pass": None`` and the reason, and so is the
    timing bound with fewer than 10 repeats.
    """
    out: dict[str, dict[str, Any]] = {}
    config = result["config"]
    on_mnist = config.get("dataset", "mnist") == "mnist"

    def verdict(ok: bool, untestable: bool, why: str) -> dict[str, Any]:
        return {"pass": None, "note": why} if untestable else {"pass": ok}

    dense = find_row(result, "dense", 0.0)
    sparsities = config["sparsities"]
    if dense is not None and 0.9 in sparsities:
        rigl = find_row(result, "RigL", 0.9)
        if rigl is not None:
            gap = 100 * (dense["mean"] - rigl["mean"])
            out["RigL within 0.5 pp of dense at 90%"] = {"value": round(gap, 3), "target": "<= 0.5 pp",
                                                         **verdict(gap <= 0.5, not on_mnist, QUICK_ACCURACY)}
    for s in (0.95, 0.98):
        if s not in sparsities:
            continue
        rigl, set_, static = find_row(result, "RigL", s), find_row(result, "SET", s), find_row(result, "static ERK", s)
        if rigl and set_ and static:
            value = [round(100 * r["mean"], 2) for r in (rigl, set_, static)]
            out[f"RigL >= SET >= static ERK at {s:g}"] = {
                "value": value, "target": "non-increasing (mean accuracy, %)",
                "pass": rigl["mean"] >= set_["mean"] >= static["mean"],
            }
    for s in sparsities:
        erk, uni = find_row(result, "static ERK", s), find_row(result, "static uniform", s)
        if erk and uni:
            diff = 100 * (erk["mean"] - uni["mean"])
            out[f"static ERK >= uniform at {s:g}"] = {"value": round(diff, 3), "target": ">= 0 pp", "pass": diff >= 0}
    if rigl_ratio is not None:
        out["RigL amortised step overhead vs dense (dT=100)"] = {
            "value": round(rigl_ratio, 4), "target": "<= 1.05x",
            **verdict(rigl_ratio <= 1.05, result.get("overhead_repeats", 10) < 10, QUICK_TIMING),
        }
    return out


# --- the benchmark --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodsResult:
    """Accuracy rows per (variant, sparsity), and RigL's step time against dense (:func:`rigl_overhead`)."""

    data: dict[str, Any]  # {"config", "rows"} of methods_benchmark
    overhead: tuple[OverheadRow, ...]
    repeats: int = 10  # of the overhead timing

    def record(self) -> dict[str, Any]:
        """What result.json holds: config, rows, overhead rows and criteria."""
        rigl = next(r for r in self.overhead if r.variant == "rigl")
        data = {**self.data, "overhead": [vars(r) for r in self.overhead], "overhead_repeats": self.repeats}
        return {**data, "criteria": criteria(data, rigl.ratio)}

    def criteria(self) -> dict[str, dict[str, Any]]:
        return self.record()["criteria"]

    def to_json(self) -> dict[str, Any]:
        return {"command": "bench methods", **self.record()}


def check_data(config: MethodsConfig, options: MethodsOptions) -> None:
    """Refuse a run on MNIST without its files, before any worker starts."""
    if config.dataset != "mnist":
        return
    if options.data_dir is None:
        raise SparseflowError("bench methods trains on MNIST: pass --data-dir, the folder holding its four IDX "
                              ".gz files (or --quick for MNIST-1D, generated locally)")
    from sparseflow.training.data import load_dataset

    load_dataset("mnist", options.data_dir)  # verify the files


def run(config: MethodsConfig, out: Path | None = None, progress: Tick = no_progress, *,
        options: MethodsOptions = MethodsOptions()) -> MethodsResult:
    """Train every run on ``options.workers`` processes, then time RigL's step against dense on all cores
    (:func:`check_data` first)."""

    def done(spec: RunSpec, acc: float) -> None:
        progress(f"{spec.label} s={spec.sparsity:g} seed={spec.seed}: {acc:.4f}")

    progress("", advance=0, total=config.seeds * (1 + len(config.sparsities) * len(VARIANTS)))
    data = methods_benchmark(config, data_dir=options.data_dir, workers=options.workers, on_result=done)
    progress("timing RigL's training step against dense", advance=0)
    torch.set_num_threads(os.cpu_count() or 1)
    return MethodsResult(data, tuple(rigl_overhead(repeats=config.overhead_repeats)), config.overhead_repeats)


def tables(result: MethodsResult) -> list[TableData]:
    cfg = result.data["config"]
    rows = []
    for label in ["dense"] + [label for label, _, _ in VARIANTS]:
        cells = []
        for s in cfg["sparsities"]:
            row = find_row(result.data, label, 0.0 if label == "dense" else s)
            cells.append("-" if row is None else f"{100 * row['mean']:.2f} ± {100 * row['std']:.2f}")
        rows.append((label, *cells))
    title = (f"test accuracy (%), {cfg['model']} on {cfg['dataset']}, {cfg['epochs']} epochs, mean ± std over "
             f"{len(cfg['seeds'])} seeds")
    return [TableData(title, ("method", *(f"s={s:g}" for s in cfg["sparsities"])), rows)]


def write_outputs(result: MethodsResult, out: Path) -> dict[str, Any]:
    """OUT/result.json (config, rows, overhead, criteria); returns the JSON object."""
    write_results(out, "bench-methods", result.record(), "result.json")
    return result.to_json()


BENCHMARK = Experiment(
    "methods", "every sparsification method on one training budget", MethodsConfig, run, write_outputs,
    options=MethodsOptions, tables=tables, check=check_data,
    doc="Every method on LeNet-300-100 / MNIST at equal budget, mean ± std over seeds, plus RigL's overhead.")
