"""``sparseflow bench methods``: every way of making LeNet-300-100 sparse, on one training budget.

Each method trains LeNet-300-100 (Frankle & Carbin 2019) on MNIST for the same number of optimizer steps
with the same optimizer, learning-rate schedule, batch size and seeds; only the way the mask is made
differs. Methods use the layer-wise distribution of their paper unless told otherwise (magnitude and GMP:
uniform; SNIP, GraSP, SynFlow: global; static random, SET and RigL: ERK, plus static uniform).
Results are mean ± sample std over seeds. ``--quick`` runs MNIST-1D (generated locally) instead.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    dataset: str = "mnist"
    model: str = "lenet300-100"
    sparsities: tuple[float, ...] = (0.8, 0.9, 0.95, 0.98)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 1e-4
    subset: int | None = None


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
    import torch

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
    specs = [RunSpec("dense", "dense", None, 0.0, seed) for seed in cfg.seeds]
    specs += [RunSpec(label, m, d, s, seed) for s in cfg.sparsities for label, m, d in VARIANTS for seed in cfg.seeds]
    threads = max(1, (os.cpu_count() or 1) // workers)
    acc: dict[tuple[str, float], list[float]] = {}
    measured: dict[tuple[str, float], list[float]] = {}
    # 'spawn': a forked child of a process whose torch thread pool has run can deadlock in its first parallel op.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
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
    return {"config": dataclasses.asdict(cfg), "rows": rows}


def find_row(result: dict[str, Any], label: str, s: float) -> dict[str, Any] | None:
    for row in result["rows"]:
        if row["method"] == label and abs(row["sparsity"] - s) < 1e-9:
            return row
    return None


def criteria(result: dict[str, Any], rigl_ratio: float | None) -> dict[str, dict[str, Any]]:
    """The literature's expectations as pass/fail checks computed from the measured means."""
    out: dict[str, dict[str, Any]] = {}
    dense = find_row(result, "dense", 0.0)
    sparsities = result["config"]["sparsities"]
    if dense is not None and 0.9 in sparsities:
        rigl = find_row(result, "RigL", 0.9)
        if rigl is not None:
            gap = 100 * (dense["mean"] - rigl["mean"])
            out["RigL within 0.5 pp of dense at 90%"] = {"value": round(gap, 3), "target": "<= 0.5 pp", "pass": gap <= 0.5}
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
            "value": round(rigl_ratio, 4), "target": "<= 1.05x", "pass": rigl_ratio <= 1.05,
        }
    return out
