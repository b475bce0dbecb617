"""``sparseflow bench oneshot``: one-shot pruning of a trained character-level GPT, against dense.

1. **The dense model**: the GPT of ``sparseflow train --dataset tinyshakespeare --model gpt --method dense``
   (trained into OUT/dense, or reused from there or from ``--dense RUN``).
2. **One-shot grid**: magnitude, Wanda (per output row, as the paper; and per layer) and SparseGPT at every level (unstructured sparsities and N:M
   patterns), each calibrated on ``seeds`` independent draws of ``calibration`` training windows (magnitude
   reads no data: one result per level); validation perplexity of each pruned model.
3. **Recovery**: each method's seed-0 model at the ``recovery`` levels, fine-tuned under its mask for a
   fixed budget (:func:`~sparseflow.training.finetune.finetune`).
4. **Three routes at one training budget** (``route_epochs`` epochs of the same batches, at each ``routes``
   sparsity): dense training for all epochs but the last, SparseGPT, and masked fine-tuning for one epoch's
   steps (dense-to-sparse after training); GMP (dense-to-sparse during training); RigL (sparse from scratch).
   These run as ``sparseflow train`` run directories under OUT/routes, in ``--workers`` processes.

The criteria are the papers' orderings (Frantar & Alistarh 2023; Sun et al. 2023) tested on the measured
perplexities; the routes' ordering is reported, not required.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparseflow.bench import BenchOptions
from sparseflow.errors import DataError, SparseflowError
from sparseflow.experiments.protocol import Experiment, Tick, no_progress
from sparseflow.patterns import NM
from sparseflow.training.options import check, option

METHODS = ("magnitude", "wanda", "wanda-layer", "sparsegpt")
LABELS = {"magnitude": "magnitude", "wanda": "Wanda", "wanda-layer": "Wanda (per layer)", "sparsegpt": "SparseGPT"}
ROUTES = ("one-shot + fine-tune", "GMP", "RigL")
FINETUNE_BATCH = 32  # windows per step of the recovery fine-tuning


@dataclass(frozen=True)
class Level:
    """A sparsity level: unstructured (``nm`` None) or an N:M pattern (sparsity 1 - N/M)."""

    label: str
    sparsity: float
    nm: NM | None = None


def parse_level(text: str) -> Level:
    """``"0.7"`` -> unstructured 70 %; ``"2:4"`` -> N:M (refused with one clear error otherwise)."""
    t = str(text).strip()
    if ":" in t:
        from sparseflow.training.prune import parse_nm

        nm = parse_nm(t)
        if not 0 < nm.n < nm.m:
            raise SparseflowError(f"level {t!r}: N:M needs 0 < N < M (e.g. 2:4)")
        return Level(f"{nm.n}:{nm.m}", 1 - nm.n / nm.m, nm)
    try:
        s = float(t)
    except ValueError:
        raise SparseflowError(f"level {t!r} is neither a sparsity (e.g. 0.7) nor an N:M pattern (e.g. 2:4)") from None
    if not 0 < s < 1:
        raise SparseflowError(f"level {t!r}: a sparsity must lie in (0, 1), e.g. 0.7")
    return Level(f"{s:g}", s)


@dataclass(frozen=True)
class OneshotConfig:
    """The grid, the recovery budget and the routes; the quick run trains a small dense model."""

    levels: tuple[str, ...] = option(("0.5", "0.6", "0.7", "0.8", "2:4", "4:8"),
                                     "Comma-separated levels: sparsities (0.7) and N:M patterns (2:4).",
                                     quick=("0.5", "0.7", "2:4"), distinct=True)
    seeds: int = option(3, "Calibration draws per (method, level): seeds 0..N-1.", min=1, quick=2)
    calibration: int = option(64, "Calibration windows of 128 characters per draw.", min=1, quick=16)
    recovery: tuple[str, ...] = option(("0.5", "0.6", "0.7", "0.8", "2:4", "4:8"),
                                       "Levels at which each method's seed-0 model is fine-tuned under its mask "
                                       "(each must be among --levels).", quick=("0.7",), distinct=True,
                                       nonempty=False)
    finetune_steps: int = option(100, f"Steps of the recovery fine-tuning (AdamW, lr 3e-4 cosine-decayed to 0, "
                                      f"{FINETUNE_BATCH} windows a step).", min=1, quick=20)
    routes: tuple[float, ...] = option((0.5, 0.8), "Sparsities at which the three routes train on one budget "
                                       "(empty: none).", quick=(), distinct=True, nonempty=False)
    route_epochs: int = option(4, "Epochs of each route's budget (one-shot route: dense for all but the last, "
                                  "then one epoch's steps of masked fine-tuning).", min=2)
    dense_epochs: int = option(30, "Epochs of the dense model (the default of `sparseflow train`).", min=1, quick=1)
    dense_subset: int | None = option(None, "Training windows per epoch of the dense model (default: the text's "
                                            "7,840 non-overlapping windows).", min=1, quick=1600)
    batch_size: int = option(64, "Windows per step of the dense model and the routes.", min=1, quick=16)
    eval_windows: int | None = option(None, "Validation windows the perplexity is measured on (default: all 871).",
                                      min=1, quick=128)

    def __post_init__(self) -> None:
        check(self)
        levels = [parse_level(t) for t in self.levels]
        labels = [lv.label for lv in levels]
        for t in self.recovery:
            if parse_level(t).label not in labels:
                raise SparseflowError(f"--recovery level {t!r} is not among --levels ({', '.join(self.levels)}); "
                                      "add it to --levels or drop it")
        for s in self.routes:
            if not 0 < s < 1:
                raise SparseflowError(f"--routes sparsity {s!r} must lie in (0, 1), e.g. 0.5,0.8")

    def parsed_levels(self) -> list[Level]:
        return [parse_level(t) for t in self.levels]


@dataclass(frozen=True)
class OneshotOptions(BenchOptions):
    """Where the text is, which dense model to prune and how many processes train the routes."""

    data_dir: Path | None = option(None, "Folder with Tiny Shakespeare's input.txt (../shared/data/tinyshakespeare).")
    dense: Path | None = option(None, "A finished `sparseflow train --dataset tinyshakespeare --model gpt --method "
                                      "dense` run to prune (default: train one into OUT/dense).")
    workers: int = option(2, "Processes training the routes (threads are split among them).", min=1)


def check_options(config: OneshotConfig, options: OneshotOptions) -> list[str]:
    """Refuse a run without the text (or with a dense run that is not one) before any work."""
    from sparseflow.training.text import load_text

    if options.data_dir is None:
        raise DataError("bench oneshot prunes a GPT trained on Tiny Shakespeare: pass --data-dir, the folder holding "
                        "its input.txt (here: ../shared/data/tinyshakespeare)")
    load_text("tinyshakespeare", options.data_dir)  # verifies the file
    notes = []
    if options.dense is not None:
        if not (Path(options.dense) / "config.json").is_file():
            raise SparseflowError(f"--dense {str(options.dense)!r} is not a run directory of `sparseflow train` (no "
                                  "config.json); train one with `sparseflow train --dataset tinyshakespeare --model "
                                  "gpt --method dense`, or leave --dense out")
        notes.append(f"pruning the dense model of {options.dense} (--dense-epochs and --dense-subset are not used)")
    return notes


@dataclass
class OneshotResult:
    config: dict[str, Any]
    dense: dict[str, Any]  # source, job, perplexity, wall_s
    grid: list[dict[str, Any]]  # method, level, seed, perplexity, density, error, seconds
    recovery: list[dict[str, Any]]  # method, level, oneshot, finetuned, seconds
    routes: list[dict[str, Any]] = field(default_factory=list)  # route, sparsity, perplexity, steps, run_dir
    machine: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    command_line: str | None = None  # the command that repeats the run

    def perplexities(self, method: str, level: str) -> list[float]:
        return [r["perplexity"] for r in self.grid if r["method"] == method and r["level"] == level]

    def criteria(self) -> dict[str, dict[str, Any]]:
        from sparseflow.bench.oneshot_report import criteria

        return criteria(self)

    def to_json(self) -> dict[str, Any]:
        return {"command": "bench oneshot", **asdict(self), "criteria": self.criteria()}


def machine() -> dict[str, Any]:
    """The CPU's vector ISA, the core count and torch's version (the figures depend on them)."""
    isa = "unknown"
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "x86-64/other"
    except OSError:
        pass
    return {"isa": isa, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}


# --- the dense model and the routes (sparseflow train run directories) -------------------------------
def _job(config: OneshotConfig, method: str, sparsity: float, epochs: int, subset: int | None) -> Any:
    from sparseflow.training.job import TrainJob

    return TrainJob(method=method, sparsity=sparsity, model="gpt", dataset="tinyshakespeare", epochs=epochs,
                    subset=subset, batch_size=config.batch_size, baseline=False)


def _train(job: Any, run_dir: Path, data_dir: Path) -> Any:
    from sparseflow.training.options import command_line
    from sparseflow.training.run import run_train_job

    resume = (run_dir / "config.json").is_file()  # a run of the same settings is reused (or finished)
    command = f"{command_line('sparseflow train', job)} --data-dir {data_dir} --out {run_dir}"
    return run_train_job(job, run_dir, data_dir=data_dir, progress=False, resume=resume, command=command)


def _route(kind: str, sparsities: tuple[float, ...], config: OneshotConfig, data_dir: str, root: str,
           threads: int) -> list[dict[str, Any]]:
    """One route at its sparsities (a worker process): rows of (route, sparsity, perplexity, steps, run_dir)."""
    from sparseflow.training.finetune import finetune
    from sparseflow.training.prune import load_language_model, perplexity
    from sparseflow.training.text import load_text

    torch.set_num_threads(threads)
    ds = load_text("tinyshakespeare", data_dir)
    val = _validation(ds, config)
    rows = []
    if kind == "one-shot + fine-tune":
        run_dir = Path(root) / "one-shot-dense"
        dense = _train(_job(config, "dense", 0.0, config.route_epochs - 1, config.dense_subset), run_dir, Path(data_dir))
        steps_per_epoch = dense.sparse.steps // (config.route_epochs - 1)
        for s in sparsities:
            model = load_language_model(run_dir, ds).model
            method = _prune(model, "sparsegpt", Level(f"{s:g}", s), ds, config.calibration, seed=0)
            finetune(model, method.mask, ds.train_tokens, steps=steps_per_epoch, batch=config.batch_size,
                     context=ds.context, seed=0)
            rows.append({"route": kind, "sparsity": s, "perplexity": perplexity(model, *val),
                         "steps": dense.sparse.steps + steps_per_epoch, "run_dir": str(run_dir)})
        return rows
    method = "gmp" if kind == "GMP" else "rigl"
    for s in sparsities:
        run_dir = Path(root) / f"{method}-{s:g}"
        result = _train(_job(config, method, s, config.route_epochs, config.dense_subset), run_dir, Path(data_dir))
        model = load_language_model(run_dir, ds).model
        rows.append({"route": kind, "sparsity": s, "perplexity": perplexity(model, *val),
                     "steps": result.sparse.steps, "run_dir": str(run_dir)})
    return rows


def _validation(ds: Any, config: OneshotConfig) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(ds.x_test) if config.eval_windows is None else min(config.eval_windows, len(ds.x_test))
    return ds.x_test[:n], ds.y_test[:n]


def _prune(model: torch.nn.Module, method: str, level: Level, ds: Any, calibration: int, seed: int) -> Any:
    from sparseflow.training.prune import oneshot_method, windows

    calib, _ = windows(ds.train_tokens, ds.context, calibration, torch.Generator().manual_seed(seed))
    m = oneshot_method(method, level.sparsity, level.nm, calib)
    m.prepare(model)
    return m


# --- the benchmark --------------------------------------------------------------------------------
def run(config: OneshotConfig, out: Path | None = None, progress: Tick = no_progress, *,
        options: OneshotOptions = OneshotOptions()) -> OneshotResult:
    """Train or reuse the dense GPT, prune it on the grid, fine-tune, train the routes (module docstring)."""
    from sparseflow.training.finetune import finetune
    from sparseflow.training.job import read_job
    from sparseflow.training.options import command_line, to_dict
    from sparseflow.training.prune import load_language_model, perplexity
    from sparseflow.training.text import load_text

    t0 = time.perf_counter()
    ds = load_text("tinyshakespeare", options.data_dir)  # (check_options has refused a missing --data-dir)
    data_dir = Path(options.data_dir)  # type: ignore[arg-type]
    levels = config.parsed_levels()
    seeds = range(config.seeds)
    n_grid = sum(1 if m == "magnitude" else config.seeds for lv in levels for m in _methods(lv))
    n_routes = len(_route_tasks(config))
    n_recovery = sum(len(_methods(parse_level(t))) for t in config.recovery)
    progress("", advance=0, total=1 + n_grid + n_recovery + n_routes)
    torch.set_num_threads(os.cpu_count() or 1)
    val = _validation(ds, config)

    with tempfile.TemporaryDirectory(prefix="sparseflow-oneshot-") as scratch:
        root = Path(out) if out is not None else Path(scratch)
        if options.dense is not None:
            dense_dir, trained_s = Path(options.dense), None
        else:
            dense_dir = root / "dense"
            progress(f"training the dense GPT ({config.dense_epochs} epochs) into {dense_dir}", advance=0)
            t = time.perf_counter()
            _train(_job(config, "dense", 0.0, config.dense_epochs, config.dense_subset), dense_dir, data_dir)
            trained_s = time.perf_counter() - t
        dense_model = load_language_model(dense_dir, ds).model
        dense_ppl = perplexity(dense_model, *val)
        dense = {"source": str(dense_dir) if options.dense is not None else "OUT/dense",
                 "job": read_job(dense_dir).to_dict(), "perplexity": dense_ppl, "train_s": trained_s}
        progress(f"dense perplexity {dense_ppl:.3f}")

        grid: list[dict[str, Any]] = []
        kept: dict[tuple[str, str], tuple[Any, Any, float]] = {}  # (method, level) -> seed 0's model, method, ppl
        recovery_labels = {parse_level(t).label for t in config.recovery}
        for level in levels:
            for name in _methods(level):
                for seed in (seeds if name != "magnitude" else range(1)):
                    model = copy.deepcopy(dense_model)
                    t = time.perf_counter()
                    method = _prune(model, name, level, ds, config.calibration, seed)
                    seconds = time.perf_counter() - t
                    ppl = perplexity(model, *val)
                    report = list(getattr(method, "report", []))
                    grid.append({"method": name, "level": level.label, "sparsity": level.sparsity, "seed": seed,
                                 "perplexity": ppl, "density": method.density(), "seconds": seconds,
                                 "error": statistics.fmean(r.error for r in report) if report else None})
                    if seed == 0 and level.label in recovery_labels:
                        kept[(name, level.label)] = (model, method, ppl)
                    progress(f"{LABELS[name]} {level.label} seed {seed}: perplexity {ppl:.3f}")

        recovery = []
        for level in [lv for lv in levels if lv.label in recovery_labels]:
            label = level.label
            for name in _methods(level):
                model, method, before = kept.pop((name, label))
                t = time.perf_counter()
                finetune(model, method.mask, ds.train_tokens, steps=config.finetune_steps, batch=FINETUNE_BATCH,
                         context=ds.context, seed=0)
                after = perplexity(model, *val)
                recovery.append({"method": name, "level": label, "oneshot": before, "finetuned": after,
                                 "seconds": time.perf_counter() - t, "density": method.density()})
                progress(f"{LABELS[name]} {label} fine-tuned: {before:.3f} -> {after:.3f}")

        routes = _run_routes(config, data_dir, root / "routes", options.workers, progress) if config.routes else []
    if out is None:  # the run folders lived in a temporary directory
        for r in routes:
            r["run_dir"] = None
    return OneshotResult(config={**to_dict(config), "methods": list(METHODS), "finetune_batch": FINETUNE_BATCH},
                         dense=dense, grid=grid, recovery=recovery, routes=routes, machine=machine(),
                         wall_s=time.perf_counter() - t0,
                         command_line=command_line("sparseflow bench oneshot", config,
                                                   dataclasses.replace(options, out=out)))


def _methods(level: Level) -> tuple[str, ...]:
    """The methods run at ``level``: under N:M, Wanda per layer is Wanda (the groups decide), so it is left out."""
    return tuple(m for m in METHODS if not (level.nm is not None and m == "wanda-layer"))


def _route_tasks(config: OneshotConfig) -> list[tuple[str, tuple[float, ...]]]:
    """The routes' units of work: the one-shot route at every sparsity (one dense model), GMP and RigL at each."""
    if not config.routes:
        return []
    return [(ROUTES[0], tuple(config.routes))] + [(k, (s,)) for k in ROUTES[1:] for s in config.routes]


def _run_routes(config: OneshotConfig, data_dir: Path, root: Path, workers: int, progress: Tick) -> list[dict[str, Any]]:
    from sparseflow.training.processes import worker_pool

    root.mkdir(parents=True, exist_ok=True)
    tasks = _route_tasks(config)
    workers = max(1, min(workers, len(tasks)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    progress(f"training the three routes ({config.route_epochs} epochs each) in {workers} processes", advance=0)
    rows: list[dict[str, Any]] = []
    with worker_pool(workers) as pool:
        futures = {pool.submit(_route, kind, sparsities, config, str(data_dir), str(root), threads): kind
                   for kind, sparsities in tasks}
        for fut in futures:
            got = fut.result()
            rows += got
            progress(f"{futures[fut]}: " + ", ".join(f"{r['sparsity']:g}: {r['perplexity']:.3f}" for r in got))
    return rows


def write_outputs(result: OneshotResult, out: Path) -> dict[str, Any]:
    from sparseflow.bench.oneshot_report import write_report

    return write_report(result, out)


def tables(result: OneshotResult) -> list[Any]:
    from sparseflow.bench.oneshot_report import tables as make

    return make(result)


BENCHMARK = Experiment(
    "oneshot", "one-shot pruning of a trained GPT: magnitude, Wanda, SparseGPT", OneshotConfig, run, write_outputs,
    options=OneshotOptions, tables=tables, check=check_options,
    doc="Prune a character-level GPT trained on Tiny Shakespeare with magnitude, Wanda and SparseGPT at 50-80 % "
        "and 2:4 / 4:8 over calibration seeds, fine-tune under the mask, and train the three routes (one-shot + "
        "fine-tune, GMP, RigL) on one budget; validation perplexity against dense.")
