"""Whole-model training runs of ``sparseflow bench training``: RigL on an MLP, in dense and in sparse execution,
beside dense training of the same MLP.

Per seed, three runs of the same model, data order and budget, interleaved (dense, masked, sparse, next seed):

- ``dense``: dense training (no sparsity method), the baseline of the speed ratio;
- ``masked``: RigL in dense execution (``execution="dense"``: masked dense tensors, how every method trains by
  default), the reference of the accuracy;
- ``sparse``: RigL in sparse execution (``execution="sparse"``: only the kept weights are stored, multiplied and
  updated).

Each run trains in a fresh interpreter (:func:`~sparseflow.training.processes.worker_pool`), so that its peak
memory is its own: the process's peak resident set is reset (``/proc/self/clear_refs``) after the data is loaded
and read when training ends, and the bytes of the parameters and the optimizer state are counted after the
first epoch. An epoch's time is training alone: from the start of the epoch (after the previous evaluation) to
the end of its last step, data loading, RigL's updates and the method's bookkeeping included, the evaluation
not.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

RUNS = ("dense", "masked", "sparse")
LABELS = {"dense": "dense training", "masked": "RigL, dense execution (masked)",
          "sparse": "RigL, sparse execution"}


@dataclass(frozen=True)
class RunSpec:
    """One training run (all a worker process needs)."""

    run: str  # one of RUNS
    seed: int
    dataset: str
    data_dir: str | None
    subset: int | None
    test_subset: int | None
    hidden: tuple[int, ...]
    sparsity: float
    epochs: int
    batch_size: int
    threads: int


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _reset_peak() -> bool:
    """Reset this process's peak resident set (Linux >= 4.0); False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.dim() > 0)
    return {"param_bytes": params, "optimizer_bytes": state}


def train_one(spec: RunSpec) -> dict[str, Any]:
    """Train ``spec`` in this process; the row of the result (times, accuracy, memory)."""
    from sparseflow.training.build import build_method, first_batch
    from sparseflow.training.data import load_dataset, loaders
    from sparseflow.training.job import TrainJob
    from sparseflow.training.loop import TrainConfig, fit
    from sparseflow.training.models import build_model
    from sparseflow.training.state import Callback, TrainState

    torch.set_num_threads(spec.threads)
    ds = load_dataset(spec.dataset, spec.data_dir, subset=spec.subset, seed=spec.seed if spec.subset else 0)
    if spec.test_subset is not None:
        import dataclasses

        ds = dataclasses.replace(ds, x_test=ds.x_test[: spec.test_subset], y_test=ds.y_test[: spec.test_subset])
    job = TrainJob(method="dense" if spec.run == "dense" else "rigl", sparsity=spec.sparsity, model="mlp",
                   hidden=spec.hidden, dataset=spec.dataset, subset=spec.subset, epochs=spec.epochs,
                   batch_size=spec.batch_size, seed=spec.seed, baseline=False,
                   execution="sparse" if spec.run == "sparse" else "dense")
    model = build_model("mlp", ds.input_shape, ds.num_classes, hidden=spec.hidden, seed=spec.seed)
    train, test = loaders(ds, spec.batch_size, seed=spec.seed)
    method = build_method(job, spec.epochs * len(train), batch=first_batch(ds, job), input_shape=ds.input_shape)

    class Clock(Callback):
        def __init__(self) -> None:
            self.epochs: list[float] = []
            self.memory: dict[str, int] = {}
            self.start = self.last = 0.0

        def on_train_start(self, state: TrainState) -> None:
            self.start = self.last = time.perf_counter()

        def on_step_end(self, state: TrainState) -> None:
            self.last = time.perf_counter()

        def on_epoch_end(self, state: TrainState) -> None:
            self.epochs.append(self.last - self.start)
            if not self.memory:
                self.memory = _state_bytes(state.model, state.optimizer)
            self.start = time.perf_counter()

    clock = Clock()
    before = _rss_bytes()
    reset = _reset_peak()
    result = fit(model, train, test, TrainConfig(**job.train_config_kwargs()), method=method, callbacks=[clock],
                 progress=False)
    peak = _peak_bytes() if reset else None
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    kept = sum(int(torch.count_nonzero(w)) for w in weights) / sum(w.numel() for w in weights)
    return {**asdict(spec), "hidden": list(spec.hidden), "epoch_s": clock.epochs, "wall_s": result.wall_s,
            "test_acc": result.test_acc, "steps": result.steps, "density": kept, **clock.memory,
            "peak_rss_bytes": peak, "rss_before_bytes": before,
            "train_peak_bytes": None if peak is None or before is None else max(0, peak - before)}


def run_all(specs: list[RunSpec], progress: Any) -> list[dict[str, Any]]:
    """Each spec in a fresh worker process, in order; ``progress(text)`` after each."""
    from sparseflow.training.processes import worker_pool

    rows = []
    for spec in specs:
        with worker_pool(1) as pool:  # a new interpreter per run: its peak memory is its own
            row = pool.submit(train_one, spec).result()
        rows.append(row)
        progress(f"{LABELS[spec.run]}, seed {spec.seed}: epoch {statistics.median(row['epoch_s']):.1f} s, "
                 f"accuracy {100 * row['test_acc']:.2f} %")
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run kind: the median epoch time over every epoch of every seed, its ratio to dense, accuracy
    mean and standard deviation over seeds, the largest memory figures."""
    out = []
    dense = [t for r in rows if r["run"] == "dense" for t in r["epoch_s"]]
    dense_s = statistics.median(dense) if dense else None
    for run in RUNS:
        mine = [r for r in rows if r["run"] == run]
        if not mine:
            continue
        epochs = [t for r in mine for t in r["epoch_s"]]
        acc = [100 * r["test_acc"] for r in mine]
        peaks = [r["train_peak_bytes"] for r in mine if r["train_peak_bytes"] is not None]
        out.append({"run": run, "label": LABELS[run], "seeds": len(mine), "epoch_s": statistics.median(epochs),
                    "speedup": None if dense_s is None else dense_s / statistics.median(epochs),
                    "acc_mean": statistics.fmean(acc), "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "density": statistics.fmean(r["density"] for r in mine),
                    "param_bytes": max(r.get("param_bytes", 0) for r in mine),
                    "optimizer_bytes": max(r.get("optimizer_bytes", 0) for r in mine),
                    "train_peak_bytes": max(peaks) if peaks else None,
                    "peak_rss_bytes": max((r["peak_rss_bytes"] or 0) for r in mine) or None})
    return out


def data_of(data_dir: Path | None) -> tuple[str, str | None]:
    """(dataset, folder): MNIST where a folder is given, else scikit-learn's digits (embedded)."""
    return ("mnist", str(data_dir)) if data_dir is not None else ("digits", None)
