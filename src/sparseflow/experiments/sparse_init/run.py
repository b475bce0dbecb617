"""Dense He initialisation vs sparsity-aware initialisation in a deep, unnormalised sparse ReLU MLP.

Mean-field theory (Poole et al. 2016; Schoenholz et al. 2017) for a ReLU layer with zero-mean weights of
variance σ_w² and k kept inputs per unit: q_l = σ_w² k q_{l-1} / 2, so the per-layer ratio is
χ = σ_w² k / 2. Dense He init (σ_w² = 2/fan_in, He et al. 2015) masked to density d keeps k = d·fan_in
inputs: χ = d, and the pre-activation second moment falls as q_l = 2 q_0 d^l (the first layer sees the raw
input, mean square q_0, not a ReLU output). The sparsity-aware init of Evci et al. 2022 (σ_w² = 2/k per
unit, :func:`sparseflow.init.rescale_` of a He draw, the default of :class:`~sparseflow.RandomSparse`)
gives χ = 1 and q_l = 2 q_0 at every depth.

Setting: a 20-layer plain ReLU MLP (19 hidden layers of ``width``, no normalisation, zero biases) on
MNIST (or 8x8 digits when no MNIST folder is given), static random masks with the *uniform* distribution
(every layer at density d = 1 - s, so the theory above applies layer by layer), at 90, 95 and 98 %
sparsity. Both arms share the dense He draw, the mask (``RandomSparse(seed=seed)``), the data order, SGD
with momentum and the budget; they differ only in ``sparse_init``. A dense He network is the reference.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparseflow.distributions import uniform
from sparseflow.experiments.options import DataOptions
from sparseflow.experiments.protocol import Tick, no_progress
from sparseflow.experiments.sparse_init.config import InitConfig
from sparseflow.init import variance_ratios
from sparseflow.io import json_safe
from sparseflow.methods import RandomSparse
from sparseflow.training.data import Dataset, load_dataset
from sparseflow.training.models import MLP
from sparseflow.training.loop import optimizer_step

INITS = ("he", "sparse")  # dense He then masked; sparsity-aware (per-unit fan-in)
LOSS_POINTS = 40  # training-loss curve: mean loss over this many equal stretches of training


@dataclass(frozen=True)
class Run:
    """One trained network: ``init`` is "he", "sparse" or "dense" (s = 0, He)."""

    sparsity: float
    init: str
    seed: int
    test_acc: float
    final_loss: float  # mean training loss over the last stretch
    loss_curve: tuple[float, ...]  # LOSS_POINTS means over equal stretches of training (nan after divergence)
    moments: tuple[float, ...]  # q_l at init on the probe batch, layer 1..depth
    input_moment: float  # q_0
    diverged: bool


@dataclass(frozen=True)
class InitResult:
    config: InitConfig
    dataset: str
    chance: float  # accuracy of always predicting the most frequent test class
    steps: int
    runs: tuple[Run, ...] = field(repr=False)
    wall_s: float = 0.0
    data_dir: str | None = None  # the MNIST folder; None: the 8x8 digits

    def mean_acc(self, sparsity: float, init: str) -> float:
        accs = [r.test_acc for r in self.runs if r.sparsity == sparsity and r.init == init]
        return sum(accs) / len(accs)

    def std_acc(self, sparsity: float, init: str) -> float:
        accs = [r.test_acc for r in self.runs if r.sparsity == sparsity and r.init == init]
        m = sum(accs) / len(accs)
        return math.sqrt(sum((a - m) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0

    def criteria(self) -> dict[str, dict]:
        return criteria(self)

    def summary(self) -> list[dict[str, Any]]:
        """Mean and std test accuracy per (sparsity, init), the dense reference first."""
        return [{"sparsity": s, "init": i, "mean_acc": self.mean_acc(s, i), "std_acc": self.std_acc(s, i)}
                for s in (0.0, *self.config.sparsities) for i in (("dense",) if s == 0.0 else INITS)]

    def to_json(self) -> dict[str, Any]:
        return json_safe({
            "command": "experiment init", "config": {**dataclasses.asdict(self.config), "data_dir": self.data_dir},
            "dataset": self.dataset, "chance": self.chance, "steps_per_run": self.steps,
            "wall_s": round(self.wall_s, 1), "summary": self.summary(), "criteria": self.criteria(),
            "runs": [dataclasses.asdict(r) for r in self.runs],
        })


def _data(cfg: InitConfig, data_dir: str | Path | None = None) -> Dataset:
    if data_dir is None:
        ds = load_dataset("digits")
    else:
        ds = load_dataset("mnist", data_dir)
    if cfg.train_size is not None and cfg.train_size < len(ds.x_train):
        ds = load_dataset(ds.name, data_dir, subset=cfg.train_size, seed=0)
    if cfg.test_size is not None and cfg.test_size < len(ds.x_test):
        keep = torch.randperm(len(ds.x_test), generator=torch.Generator().manual_seed(1))[: cfg.test_size]
        ds = Dataset(ds.name, ds.x_train, ds.y_train, ds.x_test[keep], ds.y_test[keep], ds.num_classes)
    return ds


def _network(ds: Dataset, cfg: InitConfig, seed: int) -> MLP:
    torch.manual_seed(seed)
    model = MLP(math.prod(ds.input_shape), ds.num_classes, hidden=(cfg.width,) * (cfg.depth - 1))
    # Not `seed` itself: RandomSparse(seed=seed) draws its mask scores from a generator seeded the same way,
    # and uniforms and normals from one stream are dependent (the mask would keep the largest |w|).
    g = torch.Generator().manual_seed(10_000 + seed)
    for lin in model.layers:  # dense He (σ_w² = 2 / fan_in), zero biases: the plain deep-ReLU setting
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu", generator=g)
        nn.init.zeros_(lin.bias)
    return model


def train_one(ds: Dataset, cfg: InitConfig, sparsity: float, init: str, seed: int) -> tuple[Run, int]:
    """Mask (uniform random, seeded), initialise as ``init``, train with SGD; return the run and its steps."""
    model = _network(ds, cfg, seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    method = None
    if init != "dense":
        method = RandomSparse(sparsity, distribution=uniform, seed=seed, sparse_init=init == "sparse")
        method.prepare(model, opt)
    probe = ds.x_train[:512]
    r = variance_ratios(model, probe)
    n = len(ds.x_train)
    order = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    diverged = False
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=order)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
            if not torch.isfinite(loss):
                diverged = True
                break
            losses.append(optimizer_step(loss, opt, method))
        if diverged:
            break
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    acc = 0.0 if diverged else _accuracy(model, ds)
    curve = _binned(losses, steps)
    return Run(sparsity, init, seed, acc, curve[-1], curve, r.moments, r.input_moment, diverged), steps


@torch.no_grad()
def _accuracy(model: nn.Module, ds: Dataset) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(ds.x_test.split(1000), ds.y_test.split(1000)))
    return correct / len(ds.y_test)


def _binned(losses: list[float], steps: int) -> tuple[float, ...]:
    # Mean over LOSS_POINTS equal stretches of the planned steps; stretches after a divergence are nan.
    edges = [round(steps * i / LOSS_POINTS) for i in range(LOSS_POINTS + 1)]
    out = []
    for a, b in zip(edges, edges[1:]):
        chunk = losses[a:max(b, a + 1)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return tuple(out)


def run(config: InitConfig, out: Path | None = None, progress: Tick = no_progress, *,
        options: DataOptions | None = None) -> InitResult:
    """Train every (sparsity, init, seed) and a dense He reference per seed, on MNIST from ``options.data_dir``
    or the 8x8 digits. One torch thread (restored). ``out`` is not used: the run keeps no partial results."""
    data_dir = None if options is None or options.data_dir is None else str(options.data_dir)
    cfg = replace(config, epochs=config.train_epochs("digits" if data_dir is None else "mnist"))
    jobs = [(0.0, "dense", seed) for seed in range(cfg.seeds)]
    jobs += [(s, init, seed) for s in cfg.sparsities for init in INITS for seed in range(cfg.seeds)]
    progress("", advance=0, total=len(jobs))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        ds = _data(cfg, data_dir)
        runs, steps = [], 0
        for s, init, seed in jobs:
            run, steps = train_one(ds, cfg, s, init, seed)
            runs.append(run)
            progress(f"sparsity {s:g}, init {init}, seed {seed}")
    finally:
        torch.set_num_threads(threads)
    chance = float(torch.bincount(ds.y_test, minlength=ds.num_classes).max()) / len(ds.y_test)
    name = ds.name + (" (no --data-dir given: 8x8 digits instead of MNIST)" if data_dir is None else "")
    return InitResult(cfg, name, chance, steps, tuple(runs), time.perf_counter() - t0, data_dir)


def theory_moments(q0: float, density: float, depth: int, init: str) -> list[float]:
    """Mean-field q_l, l = 1..depth: 2 q0 d^l for masked dense He, 2 q0 for the sparsity-aware init."""
    d = 1.0 if init in ("sparse", "dense") else density
    return [2 * q0 * d**l for l in range(1, depth + 1)]


def criteria(result: InitResult, margin: float = 0.2, near_chance: float = 0.05) -> dict[str, dict]:
    """Pass/fail from the measurements at the highest sparsity, plus the init-variance theory check."""
    s = max(result.config.sparsities)
    he, sp = result.mean_acc(s, "he"), result.mean_acc(s, "sparse")
    out = {
        f"sparsity-aware beats He by >= {margin:g} at s={s:g}": {
            "value": {"sparse": round(sp, 4), "he": round(he, 4), "gap": round(sp - he, 4)},
            "target": f"sparse - he >= {margin:g}", "pass": sp - he >= margin},
        f"He within {near_chance:g} of chance at s={s:g}": {
            "value": {"he": round(he, 4), "chance": round(result.chance, 4)},
            "target": f"he - chance <= {near_chance:g}", "pass": he - result.chance <= near_chance},
    }
    # χ per hidden layer (geometric mean of q_l / q_{l-1}, l >= 2) against d (He) and 1 (sparse), within 25 %.
    worst = 0.0
    chis = {}
    for r in (r for r in result.runs if r.init in INITS):
        q = r.moments
        chi = (q[-1] / q[0]) ** (1 / (len(q) - 1)) if q[0] > 0 and q[-1] > 0 else 0.0
        want = (1 - r.sparsity) if r.init == "he" else 1.0
        chis[f"{r.init} s={r.sparsity:g} seed {r.seed}"] = round(chi, 4)
        worst = max(worst, abs(chi / want - 1))
    out["per-layer chi at init matches mean field (He: d, sparse: 1)"] = {
        "value": {"worst relative error": round(worst, 4), **chis}, "target": "<= 0.25 for every run",
        "pass": worst <= 0.25}
    return out
