"""``sparseflow bench init``: whether restoring the dense signal variance after the first mask helps, per
method and depth.

Every method that starts sparse (static uniform and ERK masks, SNIP, GraSP, SynFlow, SET, RigL) trains twice
per seed: with ``sparse_init=True`` ("on": every unit's dense squared norm given back,
:func:`sparseflow.init.rescale_` with ``reference``; SNIP and GraSP calibrate each layer on their data batch back
to the dense variance ratio, :func:`sparseflow.init.calibrate_`) and with ``sparse_init=False`` ("off": the
dense draw, masked). Both arms share the draw, the mask, the data order and the budget, so a seed is a paired
replicate. Two depths:

* **LeNet-300-100** (3 weight layers) with PyTorch's default initialisation, the model as users build it;
  MNIST, SGD with momentum, 10 epochs, the setting of ``sparseflow bench methods``.
* **A 20-layer ReLU MLP** (19 hidden layers of 256), He's initialisation and zero biases, the setting of
  ``sparseflow experiment init``: MNIST, SGD with momentum, lr 0.02, 3 epochs.

Mean field (Poole et al. 2016) for a ReLU layer: q_l = σ_w² k q_{l-1} / 2 with k kept inputs per unit. A
dense draw masked to density d keeps k = d·fan_in, so masking alone multiplies the signal's second moment by
d per layer, d^L over L layers. The report says what the default does in every cell (``sparse_init_applied``)
and whether it ever loses to the other arm.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparseflow.bench import DataBenchOptions, result_writer
from sparseflow.bench.methods import VARIANTS, _dataset
from sparseflow.distributions import check_sparsity
from sparseflow.errors import SparseflowError
from sparseflow.experiments.methods.result import ci95
from sparseflow.experiments.protocol import Experiment, TableData, Tick, no_progress
from sparseflow.training.options import check, option
from sparseflow.training.processes import worker_pool

# The methods whose own default is sparse_init=True (they start sparse): labels as in ``sparseflow bench methods``.
METHODS = tuple(v for v in VARIANTS if v[1] in ("random", "snip", "grasp", "synflow", "set", "rigl"))
ARMS = ("on", "off")  # sparse_init=True, sparse_init=False


@dataclass(frozen=True)
class Depth:
    """One network and its training setting."""

    name: str
    model: str
    hidden: tuple[int, ...] | None
    he: bool  # He's initialisation (normal, fan-in, ReLU gain) with zero biases instead of PyTorch's default
    epochs: int
    lr: float
    weight_decay: float

    def layers(self) -> int:
        return 3 if self.hidden is None else len(self.hidden) + 1


DEPTHS = {
    "lenet300-100": Depth("lenet300-100", "lenet300-100", None, False, 10, 0.1, 1e-4),
    "mlp20": Depth("mlp20", "mlp", (256,) * 19, True, 3, 0.02, 0.0),
}


@dataclass(frozen=True)
class InitBenchConfig:
    """Methods x {on, off} x depths x seeds at one sparsity; the quick run uses MNIST-1D."""

    seeds: int = option(3, "Seeds per (depth, method, arm); paired over seeds.", min=1, quick=1)
    sparsity: float = option(0.9, "Sparsity of every run, in (0, 1).")
    depths: tuple[str, ...] = option(("lenet300-100", "mlp20"), "Comma-separated: lenet300-100 (3 layers, "
                                     "PyTorch init), mlp20 (20 layers, He init).", choices=tuple(DEPTHS), distinct=True)
    epochs: int | None = option(None, "Epochs for every depth (default: LeNet 10, mlp20 3; quick 5).", min=1,
                                quick=5)
    dataset: str = option("mnist", "Dataset (MNIST-1D is generated locally).", cli=False, quick="mnist1d")
    subset: int | None = option(None, "Training examples (default: all).", cli=False, min=1, quick=2000)
    batch_size: int = option(128, "Batch size.", cli=False, min=1)
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)
        if check_sparsity(self.sparsity) <= 0:
            raise SparseflowError(f"sparsity must be in (0, 1), e.g. 0.9; got {self.sparsity!r}")

    def depth(self, name: str) -> Depth:
        d = DEPTHS[name]
        return d if self.epochs is None else Depth(**{**vars(d), "epochs": self.epochs})

    def to_json(self) -> dict[str, Any]:
        return {"seeds": list(range(self.seeds)), "sparsity": self.sparsity, "dataset": self.dataset,
                "subset": self.subset, "batch_size": self.batch_size, "quick": self.quick,
                "depths": {n: vars(self.depth(n)) for n in self.depths}}


@dataclass(frozen=True)
class Spec:
    depth: str
    label: str  # "dense" or a METHODS label
    method: str
    distribution: str | None
    arm: str  # "on" | "off" ("dense" for the dense run, "default" for the probe of the default)
    seed: int


def he_init_(model: torch.nn.Module, seed: int) -> None:
    """He's normal initialisation of every Linear weight (fan-in, ReLU gain), zero biases, seeded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, math.sqrt(2.0 / m.in_features), generator=g)
                if m.bias is not None:
                    m.bias.zero_()


def _run(spec: Spec, cfg: InitBenchConfig, data_dir: str | None, threads: int) -> tuple[Spec, float, float, str | None]:
    """One training run in a worker: (spec, test accuracy, final training loss, what sparse_init did: "rescaled",
    "calibrated" or None)."""
    from sparseflow.targets import Targets
    from sparseflow.training.build import build_method, first_batch
    from sparseflow.training.data import loaders
    from sparseflow.training.job import TrainJob
    from sparseflow.training.loop import TrainConfig, fit
    from sparseflow.training.models import build_model

    torch.set_num_threads(threads)
    depth = cfg.depth(spec.depth)
    ds = _dataset(cfg.dataset, data_dir, cfg.subset, spec.seed if cfg.subset is not None else 0)
    job = TrainJob(method=spec.method, sparsity=0.0 if spec.method == "dense" else cfg.sparsity,
                   distribution=spec.distribution, model=depth.model, hidden=depth.hidden, dataset=cfg.dataset,
                   subset=cfg.subset, epochs=depth.epochs, batch_size=cfg.batch_size, lr=depth.lr,
                   weight_decay=depth.weight_decay, seed=spec.seed, baseline=False,
                   sparse_init={"on": "rescale", "off": "none"}.get(spec.arm, "auto"))
    model = build_model(depth.model, ds.input_shape, ds.num_classes, hidden=depth.hidden, seed=spec.seed)
    if depth.he:
        he_init_(model, spec.seed)
    train, test = loaders(ds, cfg.batch_size, seed=spec.seed)
    method = build_method(job, depth.epochs * len(train), batch=first_batch(ds, job), input_shape=ds.input_shape)
    if spec.arm == "default":  # no training: which arm the method's own default takes on this model and mask
        method.prepare(model)
        return spec, math.nan, math.nan, method.sparse_init_applied
    try:
        result = fit(model, train, test, TrainConfig(**job.train_config_kwargs()), method=method, progress=False)
    except SparseflowError as e:
        if "diverged" not in str(e):
            raise
        # a diverged run predicts nothing: counted at chance, its loss infinite (the report counts them)
        return spec, 1.0 / ds.num_classes, math.inf, None if method is None else method.sparse_init_applied
    weights = list(Targets().select(model).values())
    sparsity = 1.0 - sum(int(torch.count_nonzero(w)) for w in weights) / sum(w.numel() for w in weights)
    if method is not None and sparsity < cfg.sparsity - 0.01:
        raise SparseflowError(f"{spec}: measured sparsity {sparsity:.4f}, target {cfg.sparsity}")
    return spec, result.test_acc, result.train_loss, None if method is None else method.sparse_init_applied


def specs(cfg: InitBenchConfig) -> list[Spec]:
    seeds = range(cfg.seeds)
    out = [Spec(d, "dense", "dense", None, "dense", s) for d in cfg.depths for s in seeds]
    out += [Spec(d, label, m, dist, arm, s) for d in cfg.depths for label, m, dist in METHODS for arm in ARMS
            for s in seeds]
    # the default, as a user gets it (sparse_init left to the method), prepared but not trained: which arm it picks
    out += [Spec(d, label, m, dist, "default", 0) for d in cfg.depths for label, m, dist in METHODS]
    # deep runs first, so no long run is left alone at the end
    return sorted(out, key=lambda sp: -cfg.depth(sp.depth).layers())


@dataclass(frozen=True)
class InitBenchResult:
    config: InitBenchConfig
    runs: tuple[tuple[Spec, float, float, str | None], ...]

    def diverged(self, depth: str, label: str, arm: str) -> int:
        return sum(1 for sp, _, loss, _ in self.runs if sp.depth == depth and sp.label == label and sp.arm == arm
                   and math.isinf(loss))

    def _acc(self, depth: str, label: str, arm: str) -> dict[int, float]:
        return {sp.seed: a for sp, a, _, _ in self.runs if sp.depth == depth and sp.label == label and sp.arm == arm}

    def default_arm(self, depth: str, label: str) -> str | None:
        """Which arm the method's default picked (from the ``default`` run: its ``sparse_init``)."""
        got = [on for sp, _, _, on in self.runs if sp.depth == depth and sp.label == label and sp.arm == "default"]
        return None if not got else ("on" if got[0] else "off")

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for d in self.config.depths:
            dense = self._acc(d, "dense", "dense")
            for label, _, _ in METHODS:
                on, off = self._acc(d, label, "on"), self._acc(d, label, "off")
                does = sorted({a for sp, _, _, a in self.runs if sp.depth == d and sp.label == label and sp.arm == "on" and a})
                seeds = sorted(set(on) & set(off))
                diff = [100 * (on[k] - off[k]) for k in seeds]
                out.append({"depth": d, "method": label, "on": statistics.fmean(on.values()) if on else None,
                            "off": statistics.fmean(off.values()) if off else None, "on_does": "/".join(does) or None,
                            "dense": statistics.fmean(dense.values()) if dense else None,
                            "diff_pp": statistics.fmean(diff) if diff else None, "ci95_pp": ci95(diff),
                            "default": self.default_arm(d, label), "n": len(seeds),
                            "diverged": {a: self.diverged(d, label, a) for a in ARMS},
                            "accuracies": {"on": on, "off": off}})
        return out

    def criteria(self) -> dict[str, dict[str, Any]]:
        """Per depth: the default arm is never worse than the other with 95 % confidence (the upper end of the
        paired interval of default - other is >= 0), and the mean gap it leaves."""
        out, all_rows = {}, self.rows()
        for d in self.config.depths:
            rows = [r for r in all_rows if r["depth"] == d and r["diff_pp"] is not None and r["default"]]
            if not rows:
                continue
            gaps, worse = [], []
            for r in rows:
                sign = 1 if r["default"] == "on" else -1
                gap, half = sign * r["diff_pp"], r["ci95_pp"]
                gaps.append(gap)
                if half is not None and gap + half < 0:
                    worse.append(r["method"])
            entry = {"value": round(min(gaps), 3), "resolved_worse": worse,
                     "target": "default arm - other arm (pp, paired over seeds): no method where the 95 % interval "
                               "lies below 0 (value: the smallest mean)"}
            if self.config.seeds < 2:
                entry |= {"pass": None, "note": "one seed: no interval; the full run (3 seeds) tests it"}
            else:
                entry["pass"] = not worse
            out[f"default not worse, {d}"] = entry
        return out

    def to_json(self) -> dict[str, Any]:
        return {"command": "bench init", "config": self.config.to_json(), "rows": self.rows(),
                "criteria": self.criteria(),
                "runs": [{**vars(sp), "accuracy": a, "final_loss": loss, "sparse_init_applied": on}
                         for sp, a, loss, on in self.runs]}


def check_data(config: InitBenchConfig, options: DataBenchOptions) -> None:
    if config.dataset != "mnist":
        return
    if options.data_dir is None:
        raise SparseflowError("bench init trains on MNIST: pass --data-dir, the folder holding its four IDX .gz "
                              "files (or --quick for MNIST-1D, generated locally)")
    from sparseflow.training.data import load_dataset

    load_dataset("mnist", options.data_dir)


@dataclass(frozen=True)
class InitBenchOptions(DataBenchOptions):
    workers: int = option(2, "Parallel training processes (threads are split among them).", min=1)


def run(config: InitBenchConfig, out: Path | None = None, progress: Tick = no_progress, *,
        options: InitBenchOptions = InitBenchOptions()) -> InitBenchResult:
    todo = specs(config)
    progress("", advance=0, total=len(todo))
    threads = max(1, (os.cpu_count() or 1) // options.workers)
    data_dir = None if options.data_dir is None else str(options.data_dir)
    runs = []
    with worker_pool(options.workers) as pool:
        for fut in [pool.submit(_run, sp, config, data_dir, threads) for sp in todo]:
            sp, acc, loss, on = fut.result()
            runs.append((sp, acc, loss, on))
            progress(f"{sp.depth} {sp.label}: the default: {on or 'nothing done'}" if sp.arm == "default"
                     else f"{sp.depth} {sp.label} {sp.arm} seed {sp.seed}: {acc:.4f}")
    return InitBenchResult(config, tuple(runs))


def tables(result: InitBenchResult) -> list[TableData]:
    rows = []
    for r in result.rows():
        pct = (lambda v: "-" if v is None else f"{100 * v:.2f}")
        diff = "-" if r["diff_pp"] is None else f"{r['diff_pp']:+.2f}" + ("" if r["ci95_pp"] is None else f" ± {r['ci95_pp']:.2f}")
        rows.append((r["depth"], r["method"], pct(r["dense"]), pct(r["on"]), pct(r["off"]), diff, r["on_does"] or "-",
                     r["default"] or "-"))
    cfg = result.config
    title = (f"test accuracy (%) at {100 * cfg.sparsity:g} % sparsity on {cfg.dataset}, mean over {cfg.seeds} seed(s); "
             "on - off paired, 95 % interval")
    return [TableData(title, ("depth", "method", "dense", "on", "off", "on - off (pp)", "on does", "default"), rows,
                      left=("depth", "method"))]


BENCHMARK = Experiment(
    "init", "sparse_init on vs off per method and depth", InitBenchConfig, run, result_writer("bench-init"),
    options=InitBenchOptions, tables=tables, check=check_data,
    doc="Every method that starts sparse with sparse_init on and off (the dense signal variance restored after "
        "the first mask, or not), on LeNet-300-100 and a 20-layer MLP; what the default does, and whether it "
        "ever loses.")
