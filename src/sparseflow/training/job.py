"""The main job: train a sparse network and, on the same budget, its dense baseline.

One frozen config (:class:`TrainJob`) feeds the CLI, the run-directory name (a stable hash of the config,
pinned by a test) and the report. :func:`run_train_job` writes a run directory::

    OUT/config.json            the TrainJob, the derived method schedule and the command
    OUT/metrics.jsonl          one line per epoch of the sparse run
    OUT/checkpoint.safetensors model, optimizer, method (mask, step), RNG and data position of the sparse
                               run; no pickle (OUT/checkpoint.prev.safetensors: the one before; see
                               sparseflow.training.checkpoints)
    OUT/dense/...              the same for the dense baseline
    OUT/model.sfz              the sparse model alone: entropy-coded masks and kept values (sparseflow.save)
    OUT/report.md, curves.png  tables and learning curves
    OUT/result.json            the figures the CLI prints with --json

The reported sparsity and per-layer counts are measured from the saved checkpoint, not taken from the
target.

``resume=True`` continues an interrupted job wherever it stopped: in the sparse run (from its newest
checkpoint), between the two runs, or in the dense baseline; a finished job is reported again without
training. The TrainJob must be the one in ``OUT/config.json`` (:func:`read_job` reads it back); a
different one is refused, naming each differing setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseflow.analysis.connectivity import Connectivity, connectivity
from sparseflow.training import distributed
from sparseflow.analysis.signal import SignalReport, signal
from sparseflow.training.checkpoints import load_checkpoint
from sparseflow.training.data import DATASETS, Dataset, load_dataset, loaders
from sparseflow.distributions import DISTRIBUTIONS, GLOBAL, check_sparsity
from sparseflow.errors import SparseflowError
from sparseflow.training.rundir import write_results
from sparseflow.methods import GMP, MagnitudePruning, Method, RandomSparse
from sparseflow.training.models import MODELS, NORMS, build_model
from sparseflow.patterns import NM, Block, Pattern, Unstructured
from sparseflow.targets import Targets
from sparseflow.training.loop import OPTIMIZERS, Callback, TrainConfig, TrainResult, TrainState, fit

METHODS = ("dense", "magnitude", "gmp", "random", "snip", "grasp", "synflow", "set", "rigl")
# Each method's layer-wise distribution in its paper, used when none is given.
DEFAULT_DISTRIBUTION = {
    "dense": "uniform", "magnitude": "uniform", "gmp": "uniform", "random": "erk",
    "snip": "global", "grasp": "global", "synflow": "global", "set": "erk", "rigl": "erk",
}


def parse_pattern(text: str) -> Pattern:
    """'unstructured' | 'N:M' (e.g. '2:4') | 'RxC' (e.g. '4x4') -> pattern value."""
    t = text.strip().lower()
    if t == "unstructured":
        return Unstructured()
    if m := re.fullmatch(r"(\d+):(\d+)", t):
        return NM(int(m[1]), int(m[2]))
    if m := re.fullmatch(r"(\d+)x(\d+)", t):
        return Block(int(m[1]), int(m[2]))
    raise SparseflowError(f"unknown pattern {text!r}; use 'unstructured', 'N:M' such as '2:4', or 'RxC' such as '4x4'")


@dataclass(frozen=True)
class TrainJob:
    """Everything that determines a training run's result (paths and display flags excluded)."""

    method: str = "gmp"
    sparsity: float = 0.9
    distribution: str | None = None  # None: the method's default (DEFAULT_DISTRIBUTION)
    pattern: str = "unstructured"
    model: str = "mlp"
    hidden: tuple[int, ...] | None = None
    norm: str = "none"
    dataset: str = "digits"
    subset: int | None = None
    test_subset: int | None = None
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    seed: int = 0
    baseline: bool = True
    prune_first: bool = True
    prune_last: bool = True
    # Data-parallel processes (torchrun): each takes batch_size examples of every global batch of
    # world_size * batch_size, so the run equals one process with that global batch.
    world_size: int = 1

    def __post_init__(self) -> None:
        def one_of(name: str, choices: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in choices:
                raise SparseflowError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")

        one_of("method", METHODS)
        if self.distribution is None:
            object.__setattr__(self, "distribution", DEFAULT_DISTRIBUTION.get(self.method, "uniform"))
        one_of("distribution", (*DISTRIBUTIONS, "global"))
        one_of("model", MODELS)
        one_of("norm", NORMS)
        one_of("dataset", DATASETS)
        one_of("optimizer", OPTIMIZERS)
        check_sparsity(self.sparsity)
        parse_pattern(self.pattern)
        if self.method == "dense" and self.sparsity != 0:
            object.__setattr__(self, "sparsity", 0.0)  # a dense run has no sparsity to speak of
        if self.hidden is not None:
            object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise SparseflowError(f"world_size (number of processes) must be an integer >= 1, got {self.world_size!r}")
        for name in ("subset", "test_subset"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise SparseflowError(f"{name} must be a positive number of examples, got {v!r}")
        TrainConfig(**self.train_config_kwargs())  # validates epochs, batch size, lr, ...

    def train_config_kwargs(self) -> dict[str, Any]:
        return dict(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
            weight_decay=self.weight_decay, seed=self.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden) if self.hidden is not None else None
        if self.world_size == 1:  # single-process runs keep the names (hashes) they had before world_size existed
            del d["world_size"]
        return d

    def digest(self) -> str:
        """Stable 10-hex-digit hash of the config: the run-directory suffix."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def run_name(self) -> str:
        return f"train-{self.dataset}-{self.model}-{self.method}-s{self.sparsity:g}-{self.digest()}"


def read_job(run_dir: Path) -> TrainJob:
    """The TrainJob ``run_dir`` (a directory written by :func:`run_train_job`) was started with."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise SparseflowError(f"run directory {str(run_dir)!r} does not exist; pass the directory of an earlier "
                              "`sparseflow train` run")
    if not path.is_file():
        raise SparseflowError(f"{str(run_dir)!r} holds no training run (no config.json); pass the directory of an "
                              "earlier `sparseflow train` run, or start a new one with --out")
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise SparseflowError(f"{str(path)!r} is not valid JSON ({e}); restore it or start a new run") from None
    saved = config.get("job") if isinstance(config, dict) else None
    if not isinstance(saved, dict):
        raise SparseflowError(f"{str(path)!r} is not the config of a `sparseflow train` run (it has no 'job' entry)")
    try:
        return TrainJob(**saved)
    except TypeError as e:
        raise SparseflowError(f"{str(path)!r} holds settings this version of sparseflow does not know ({e}); "
                              "resume it with the version that wrote it, or start a new run") from None


def job_differences(saved: TrainJob, now: TrainJob, names: tuple[str, ...] | None = None) -> list[str]:
    """``"epochs: 3 in the run directory, 5 now"`` for every setting (of ``names``, default all) that differs."""
    a, b = saved.to_dict(), now.to_dict()
    return [f"{k}: {json.dumps(a[k])} in the run directory, {json.dumps(b[k])} now"
            for k in (names if names is not None else tuple(a)) if a[k] != b[k]]


def first_batch(ds: Dataset, job: TrainJob) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random training batch of ``job.batch_size * job.world_size`` examples (one global batch: the
    data SNIP and GraSP score on; every rank draws the same one)."""
    g = torch.Generator().manual_seed(job.seed)
    idx = torch.randperm(len(ds.x_train), generator=g)[: job.batch_size * job.world_size]
    return ds.x_train[idx], ds.y_train[idx]


def build_method(job: TrainJob, total_steps: int, *, batch: tuple[torch.Tensor, torch.Tensor] | None = None,
                 input_shape: tuple[int, ...] | None = None) -> Method | None:
    """The method named by ``job`` with its schedule derived from the number of training steps.

    magnitude: train dense for half the steps, prune once, fine-tune the rest.
    gmp: cubic schedule from 10 % to 60 % of the steps, 20 pruning updates (Zhu & Gupta 2017).
    random: a static random mask drawn before training.
    snip, grasp: pruned at initialisation on ``batch``; synflow: at initialisation, data-free, 100 rounds.
    set, rigl: prune-and-regrow every 100 steps (fewer on short runs) until 75 % of training, α = 0.3.
    """
    from sparseflow.methods import SET, SNIP, GraSP, RigL, SynFlow

    if job.method == "dense":
        return None
    distribution = GLOBAL if job.distribution == "global" else DISTRIBUTIONS[job.distribution]
    pattern = parse_pattern(job.pattern)
    targets = Targets(first_layer=job.prune_first, last_layer=job.prune_last)
    common = dict(sparsity=job.sparsity, distribution=distribution, pattern=pattern, targets=targets)
    if job.method == "magnitude":
        return MagnitudePruning(**common, at_step=total_steps // 2)
    if job.method == "gmp":
        start = int(0.1 * total_steps)
        end = int(0.6 * total_steps)
        every = max(1, (end - start) // 20)
        if end - start < every or end <= start:
            raise SparseflowError(
                f"{total_steps} training steps are too few for a GMP schedule; train for more epochs"
            )
        return GMP(**common, start=start, end=end, every=every)
    if job.method in ("snip", "grasp"):
        if batch is None:
            raise SparseflowError(f"{job.method} scores weights on a data batch: pass batch=(x, y)")
        return (SNIP if job.method == "snip" else GraSP)(**common, data=batch)
    if job.method == "synflow":
        return SynFlow(**common, input_shape=input_shape)
    if job.method in ("set", "rigl"):
        until = int(0.75 * total_steps)
        every = min(100, max(1, until // 4))
        return (SET if job.method == "set" else RigL)(**common, seed=job.seed, update_every=every, until=until,
                                                      total_steps=total_steps)
    return RandomSparse(**common, seed=job.seed)


@dataclass(frozen=True)
class LayerStats:
    name: str
    shape: tuple[int, ...]
    numel: int
    nonzeros: int
    target: bool  # pruned by the method (False: kept dense)

    @property
    def density(self) -> float:
        return self.nonzeros / self.numel

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "numel": self.numel,
                "nonzeros": self.nonzeros, "density": self.density, "pruned": self.target}


def layer_stats(state_dict: dict[str, torch.Tensor], names: list[str], targets: set[str]) -> list[LayerStats]:
    """Per-layer nonzero counts measured from saved weights; ``targets`` are the layers the method prunes."""
    out = []
    for n in names:
        w = state_dict[n]
        out.append(LayerStats(n, tuple(w.shape), w.numel(), int(torch.count_nonzero(w)), n in targets))
    return out


@dataclass(frozen=True)
class JobResult:
    job: TrainJob
    run_dir: Path
    accuracy: float
    dense_accuracy: float | None
    sparsity: float
    layers: list[LayerStats]
    sparse: TrainResult
    dense: TrainResult | None
    wall_s: float
    mask_sparsity: float = 0.0  # from the saved mask (the method's state), not the weights
    schedule: dict[str, Any] = field(default_factory=dict)
    connectivity: Connectivity | None = None  # of the final sparse model
    signal: SignalReport | None = None  # of the sparse model when training started (None when resumed)
    storage: dict[str, Any] | None = None  # sizes of OUT/model.sfz against dense fp32 and the entropy bound

    @property
    def warnings(self) -> list[str]:
        notes = [*self.sparse.notes, *(self.dense.notes if self.dense is not None else ())]
        return health_warnings(self.connectivity, self.signal) + notes

    def to_json(self) -> dict[str, Any]:
        target = self.job.sparsity
        n = sum(layer.numel for layer in self.layers if layer.target) or sum(layer.numel for layer in self.layers)
        return {
            "command": "train",
            "run_dir": str(self.run_dir),
            "method": self.job.method,
            "dataset": self.job.dataset,
            "model": self.job.model,
            "target_sparsity": target,
            "sparsity": self.sparsity,  # over the pruned layers, measured from the checkpoint
            "overall_sparsity": 1 - sum(x.nonzeros for x in self.layers) / sum(x.numel for x in self.layers),
            "accuracy": self.accuracy,
            "dense_accuracy": self.dense_accuracy,
            "accuracy_gap": None if self.dense_accuracy is None else self.dense_accuracy - self.accuracy,
            "layers": [layer.to_dict() for layer in self.layers],
            "steps": self.sparse.steps,
            "wall_s": self.wall_s,
            "schedule": self.schedule,
            "mask_sparsity": self.mask_sparsity,
            "connectivity": None if self.connectivity is None else self.connectivity.to_json(),
            "signal": None if self.signal is None else self.signal.to_json(),
            "warnings": self.warnings,
            "storage": self.storage,
            "criteria": {
                # The exact-count rule rounds the total to whole weights: the mask is within 1/N of target,
                # and no weight outside it is nonzero (a kept weight may still be exactly zero, e.g. one
                # just regrown on an input that is always 0), so the measured sparsity is at least that.
                "sparsity_reached": {
                    "value": self.sparsity,
                    "target": f">= {target:g} - 1/N (N = {n} target weights)",
                    "pass": self.sparsity >= target - 1.0 / n - 1e-12,
                },
                "mask_count_exact": {
                    "value": self.mask_sparsity,
                    "target": f"within 1/N of {target:g}",
                    "pass": abs(self.mask_sparsity - target) <= 1.0 / n + 1e-12,
                },
            },
        }


class SignalProbe(Callback):
    """Measures signal propagation on a fixed batch when training starts (after the method's ``prepare``):
    the sparse network as it is initialised, which is where vanishing or exploding signal stalls training."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.batch = batch
        self.report: SignalReport | None = None

    def on_train_start(self, state: TrainState) -> None:
        if state.step == 0:  # a resumed run has moved on from its initialisation
            dev = next((p.device for p in state.model.parameters()), torch.device("cpu"))
            self.report = signal(state.model, self.batch[0].to(dev), self.batch[1].to(dev))


def health_warnings(conn: Connectivity | None, sig: SignalReport | None) -> list[str]:
    """Warnings for the report and the console: a collapsed network, dead units, a signal far from critical."""
    out = []
    if conn is not None:
        if conn.collapsed:
            out.append("layer collapse: no input-output path survives the mask; the output ignores the input")
        dead = [f"{l.name} ({l.unreachable}/{l.out_units})" for l in conn.layers if l.unreachable]
        if dead and not conn.collapsed:
            out.append("units no input reaches: " + ", ".join(dead))
    if sig is not None and sig.verdict != "critical":
        out.append(f"signal at initialisation is {sig.verdict}: gain {sig.gain:.3g} over {len(sig.layers)} layers "
                   f"(critical is 1; see sparseflow.init)")
    return out


def _store(model: nn.Module, method: Method | None, out: Path) -> dict[str, Any]:
    """Write OUT/model.sfz (fp32, the method's masks) and return its sizes."""
    from sparseflow.storage import inspect, save

    save(out / "model.sfz", model, mask=method.mask if method is not None else None)
    r = inspect(out / "model.sfz")
    bound = r.mask_bound_bytes
    return {"file": "model.sfz", "file_bytes": r.file_bytes, "dense_fp32_bytes": r.dense_fp32_bytes,
            "mask_bytes": r.mask_bytes, "mask_bound_bytes": bound, "values_bytes": r.values_bytes,
            "mask_ratio": r.mask_bytes / bound if bound else None}


def run_train_job(job: TrainJob, out: Path, *, data_dir: Path | None = None, download: bool = False,
                  progress: bool = True, command: str | None = None, resume: bool = False,
                  checkpoint_every: int | None = None) -> JobResult | None:
    """Train ``job``'s sparse model and (if ``job.baseline``) its dense baseline on the same budget.

    ``checkpoint_every``: also checkpoint every that many steps (always at every epoch's end).
    Under torch.distributed (``job.world_size`` processes) every rank trains; rank 0 alone measures, stores
    and reports, and the other ranks return None.
    """
    from sparseflow.training.report import write_train_report  # matplotlib is imported only when reporting

    t0 = time.perf_counter()
    if resume and (out / "config.json").is_file():
        differ = job_differences(read_job(out), job)
        if differ:
            raise SparseflowError(f"run directory {str(out)!r} holds a run with another configuration ("
                                  + "; ".join(differ) + "); resume with its settings, or choose a new directory")
    if job.world_size != distributed.world_size():
        raise SparseflowError(
            f"the job asks for world_size={job.world_size} processes, but {distributed.world_size()} are running; "
            "launch with torchrun --nproc-per-node N (or sparseflow train --nproc N) and pass the same N"
        )
    device = distributed.device()
    ds = load_dataset(job.dataset, data_dir, download=download, subset=job.subset, seed=job.seed)
    if job.test_subset is not None:  # the first examples of the fixed test split: the same for every seed
        ds = Dataset(ds.name, ds.x_train, ds.y_train, ds.x_test[: job.test_subset], ds.y_test[: job.test_subset],
                     ds.num_classes)
    cfg = TrainConfig(**job.train_config_kwargs(), checkpoint_every=checkpoint_every)
    out.mkdir(parents=True, exist_ok=True)

    probe = SignalProbe(first_batch(ds, job))

    def one_run(method_name: str, run_dir: Path) -> tuple[TrainResult, Method | None, nn.Module, dict]:
        sub = dataclasses.replace(job, method=method_name)
        model = build_model(job.model, ds.input_shape, ds.num_classes, norm=job.norm, hidden=job.hidden, seed=job.seed)
        train_loader, test_loader = loaders(ds, job.batch_size, seed=job.seed)
        if distributed.active():  # each rank takes its part of every global batch of world_size * batch_size
            train_loader = distributed.shard(train_loader)
        method = build_method(sub, cfg.epochs * len(train_loader), batch=first_batch(ds, sub),
                              input_shape=ds.input_shape)
        schedule = {} if method is None else {
            f.name: getattr(method, f.name) for f in dataclasses.fields(method)
            if f.init and isinstance(getattr(method, f.name), (int, float, str, bool, type(None)))
        } | {"name": type(method).__name__, "distribution": job.distribution, "pattern": job.pattern}
        config = {"job": sub.to_dict(), "schedule": schedule, "command": command, "sparseflow_run": job.run_name()}
        result = fit(model, train_loader, test_loader, cfg, method=method, run_dir=run_dir, resume=resume,
                     progress=progress, config=config, callbacks=[probe] if method_name == job.method else [],
                     device=device)
        return result, method, model.to("cpu"), schedule

    sparse, method, model, schedule = one_run(job.method, out)
    dense = one_run("dense", out / "dense")[0] if job.baseline and job.method != "dense" else None
    if not distributed.is_main():
        return None  # fit has synchronised the ranks at every checkpoint; rank 0 measures and reports

    ckpt = load_checkpoint(out, quiet=True).state  # fit has just written it (and said so if it fell back)
    targets = set(method.mask) if method is not None else set()
    layers = layer_stats(ckpt["model"], list(Targets().select(model)), targets)  # every weight layer
    nnz = sum(layer.nonzeros for layer in layers if layer.target or method is None)
    numel = sum(layer.numel for layer in layers if layer.target or method is None)
    if ckpt["method"] is not None:
        saved = ckpt["method"]["mask"]
        mask_sparsity = 1.0 - sum(int(torch.count_nonzero(m)) for m in saved.values()) / sum(m.numel() for m in saved.values())
    else:
        mask_sparsity = 0.0
    try:
        conn: Connectivity | None = connectivity(model)
    except SparseflowError:  # a model the tracer refuses: the report says so instead
        conn = None
    result = JobResult(
        connectivity=conn, signal=probe.report, storage=_store(model, method, out),
        job=job, run_dir=out, accuracy=sparse.test_acc,
        dense_accuracy=dense.test_acc if dense is not None else (sparse.test_acc if job.method == "dense" else None),
        sparsity=1.0 - nnz / numel, layers=layers, sparse=sparse, dense=dense, mask_sparsity=mask_sparsity,
        wall_s=time.perf_counter() - t0, schedule=schedule,
    )
    write_train_report(result, out, command=command)
    write_results(out, "train", result.to_json(), "result.json")
    return result

