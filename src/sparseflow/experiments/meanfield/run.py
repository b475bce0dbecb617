"""The mean-field critical line of sparse ReLU networks (Poole et al. 2016; Schoenholz et al. 2017; Evci et
al. 2022, "Gradient Flow in Sparse Neural Networks and How Lottery Tickets Win").

Setting: ReLU MLPs of 30 Linear layers, all ``width`` x ``width`` (zero biases, no normalisation), every
layer masked by a uniformly random mask of the same density s in {1, 0.5, 0.1, 0.05}, fed a Gaussian batch
x ~ N(0, I). Two initialisations:

(a) dense He init, w ~ N(0, 2/fan_in) then masked: mean field predicts q_l / q_{l-1} = s·σ_w²/2 = s for
    every ReLU layer, so ln q_l is linear in l with slope ln s. Criterion: the least-squares slope of ln q_l
    over the 30 layers (mean over seeds) is within 5 % of ln s; for s = 1 the target slope is 0 and a
    relative error is undefined, so we use the absolute tolerance 5 % of |ln 0.5| = 0.035 (the smallest
    nonzero target slope on a halving grid).
(b) sparsity-aware init (:func:`sparseflow.init.sparse_init_`, per unit: N(0, 2/k_j), k_j = kept fan-in):
    χ = 1, so q_l stays flat. Criterion: max_l q_l / min_l q_l <= 2 over the 30 layers, worst seed.

Finite width makes ln q_l a random walk around the mean-field line (per-layer noise of order 1/sqrt(width));
the quick run keeps width 1024 (at width 512 the sparse-init spread reaches 2.2, just over the bound) with one
seed and a batch of 128. All measurements come
from :func:`sparseflow.analysis.signal.signal` (second moments in float64: at s = 0.05, q_30 ~ 1e-39).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sparseflow.analysis.signal import signal
from sparseflow.experiments.meanfield.config import DENSITIES, MeanfieldConfig
from sparseflow.experiments.protocol import Tick, no_progress
from sparseflow.distributions import uniform
from sparseflow.init import sparse_init_
from sparseflow.methods import RandomSparse
from sparseflow.training.models import MLP

INITS = ("he", "sparse")
SLOPE_RTOL = 0.05
SPREAD_MAX = 2.0


@dataclass(frozen=True)
class MeanfieldRun:
    """One network: per-layer measured q, measured and predicted gains, and the fitted ln q slope."""

    init: str
    density: float
    seed: int
    q: tuple[float, ...]
    measured: tuple[float, ...]
    predicted: tuple[float | None, ...]
    input_q: float
    slope: float
    spread: float
    verdict: str


def fit_slope(values: tuple[float, ...] | list[float]) -> float:
    """Least-squares slope of ln(values) against layer index 1..L."""
    y = torch.tensor([math.log(v) for v in values], dtype=torch.float64)
    x = torch.arange(1, len(values) + 1, dtype=torch.float64)
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def slope_target(density: float) -> tuple[float, float]:
    """(target slope ln s, tolerance): 5 % of |ln s|, or 5 % of |ln 0.5| for the dense s = 1."""
    target = math.log(density)
    return target, SLOPE_RTOL * (abs(target) if density < 1 else math.log(2))


def build(width: int, depth: int, density: float, init: str, seed: int) -> MLP:
    """A ``depth``-layer ReLU MLP of width ``width``, zero biases, masked to ``density``, initialised by ``init``."""
    # The weights' generator must not share the mask's seed: torch.rand and normal_ of two generators seeded
    # alike consume the same uniform stream, and the "random" mask would keep the largest weights.
    g = torch.Generator().manual_seed(1_000_003 + seed)
    model = MLP(width, width, hidden=(width,) * (depth - 1))
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.normal_(0.0, math.sqrt(2.0 / layer.in_features), generator=g)  # He: σ_w² = 2
            layer.bias.zero_()
    mask = None
    if density < 1:
        method = RandomSparse(1 - density, distribution=uniform, seed=seed, sparse_init=False)
        method.prepare(model)  # draws the mask and zeroes the weights outside it
        method.remove()
        mask = method.mask.to_dict()
    if init == "sparse":
        sparse_init_(model, mask, per="unit", generator=g)
    return model


def run_one(width: int, depth: int, density: float, init: str, seed: int, batch: int) -> MeanfieldRun:
    model = build(width, depth, density, init, seed)
    x = torch.randn(batch, width, generator=torch.Generator().manual_seed(10_000 + seed))
    rep = signal(model, x)
    q = tuple(r.q for r in rep.layers)
    return MeanfieldRun(
        init, density, seed, q, tuple(r.measured for r in rep.layers), tuple(r.predicted for r in rep.layers),
        rep.input_q, fit_slope(q), max(q) / min(q), rep.verdict,
    )


@dataclass(frozen=True)
class MeanfieldResult:
    runs: tuple[MeanfieldRun, ...]
    width: int
    depth: int
    batch: int
    seeds: tuple[int, ...]
    quick: bool

    def of(self, init: str, density: float) -> list[MeanfieldRun]:
        return [r for r in self.runs if r.init == init and r.density == density]

    def densities(self) -> list[float]:
        return sorted({r.density for r in self.runs}, reverse=True)

    def criteria(self) -> dict[str, dict]:
        """Per density: the He-init slope against ln s and the sparse-init spread against 2."""
        out: dict[str, dict] = {}
        for s in self.densities():
            he, sp = self.of("he", s), self.of("sparse", s)
            if he:
                slope = sum(r.slope for r in he) / len(he)
                target, tol = slope_target(s)
                out[f"he_slope_s{s:g}"] = {
                    "value": slope,
                    "target": f"|slope - ({target:.4f})| <= {tol:.4f}",
                    "pass": abs(slope - target) <= tol,
                    "note": "target ln s, tolerance 5% of |ln s|" if s < 1
                    else "target ln 1 = 0: absolute tolerance 5% of |ln 0.5|",
                    "relative_error": abs(slope - target) / abs(target) if s < 1 else None,
                }
            if sp:
                worst = max(r.spread for r in sp)
                out[f"sparse_spread_s{s:g}"] = {
                    "value": worst, "target": f"max/min q_l <= {SPREAD_MAX:g}", "note": "worst seed",
                    "pass": worst <= SPREAD_MAX,
                }
        return out

    def setting(self) -> str:
        return (f"{self.depth}-layer ReLU MLP, width {self.width}, zero biases, uniform random masks, Gaussian "
                f"batch of {self.batch}, seeds {list(self.seeds)}" + (" (quick run)" if self.quick else ""))

    def to_json(self) -> dict:
        return {"command": "experiment meanfield", "setting": self.setting(), "width": self.width,
                "depth": self.depth, "batch": self.batch, "seeds": list(self.seeds), "quick": self.quick,
                "criteria": self.criteria(), "runs": [asdict(r) for r in self.runs]}


def run(config: MeanfieldConfig, out: Path | None = None, progress: Tick = no_progress) -> MeanfieldResult:
    """Run both initialisations at every density, single-threaded (restored afterwards: the machine may be
    shared). ``out`` is not used: the run is fast and keeps no partial results."""
    c = config
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = []
    progress("", advance=0, total=len(c.densities) * len(INITS) * c.seeds)
    try:
        for s in c.densities:
            for init in INITS:
                for seed in range(c.seeds):
                    runs.append(run_one(c.width, c.depth, s, init, seed, c.batch))
                    progress(f"{init} init, density {s:g}, seed {seed}")
    finally:
        torch.set_num_threads(threads)
    return MeanfieldResult(tuple(runs), c.width, c.depth, c.batch, tuple(range(c.seeds)), c.quick)
