"""Capacity of a sparse associative memory: alpha = P_max / N vs coding level a and size N.

Model: :class:`sparseflow.hopfield.Hopfield` (covariance rule, 0/1 units, patterns with exactly a N active
units), asynchronous recall. References: alpha_c = 0.138 for a = 1/2, the ±1 network (Amit, Gutfreund &
Sompolinsky 1985); alpha_c ~ 1 / (2 a |ln a|) as a -> 0 (Tsodyks & Feigel'man 1988).

Protocol, per (a, N, seed). Patterns come from one seeded stream, so the memory at load P holds the first P
of them and growing P only adds patterns. A load P *succeeds* when, of ``cues`` stored patterns drawn at
random, each cued with a corrupted copy of overlap ``m0`` = 0.8 (same activity; at a = 1/2 that is 10 % of
the bits flipped), at least ``min_fraction`` = 90 % end (at a fixed point of the asynchronous dynamics) with
overlap >= ``min_overlap`` = 0.95. P_max is the largest succeeding P found by a search: P grows by 25 % from
a guess while it succeeds, then bisection between the last success and the first failure, to 1 %
(or 1 pattern). The bisection assumes success falls with P; near P_max it is a noisy quantity, so P_max is a
point inside the transition, read to that resolution.

Threshold. At a = 1/2 it is fixed by symmetry (0 in the ±1 network, see :func:`~sparseflow.hopfield.
optimal_threshold`). For sparse patterns retrieval works only in a window of thresholds that narrows as P grows:
below it false activity spreads (slowly, over tens of sweeps), above it the activity dies out. The window moves
with P and sits a little above the signal-to-noise optimum (which leaves out the reaction of the state on its
own noise), so each load gets the best fixed threshold by measurement: the final mean activity falls with the
threshold, and a bisection on theta (``theta_steps`` steps in [theta_snr - 0.2, theta_snr + 0.4]) for the
threshold where it crosses a visits the window if there is one. The load succeeds if any visited threshold
succeeds; the search stops at the first that does. This is the capacity at the optimal threshold, as in
Tsodyks & Feigel'man. Statistics, criteria and report: :mod:`sparseflow.experiments.hopfield.report`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sparseflow.errors import SparseflowError
from sparseflow.hopfield import Hopfield, corrupt, optimal_threshold, random_patterns

CODINGS = (0.5, 0.2, 0.1, 0.05, 0.02)
SIZES = (500, 1000, 2000, 4000)
BLOCK = 256  # patterns are drawn in seeded blocks: pattern mu is the same whatever the search visits
# Seconds per N^2 for one capacity search at a = 1/2 (one recall per load), measured on 2 shared cores under
# load, one thread; a sparse search costs theta_steps / 2 times more (thresholds tried per load).
S_PER_N2 = 1.3e-6


def tf_capacity(a: float) -> float:
    """Tsodyks & Feigel'man's small-a capacity 1 / (2 a |ln a|)."""
    return 1 / (2 * a * abs(math.log(a)))


def guess_alpha(a: float) -> float:
    """Where the search starts: 0.14 at a = 1/2, else 0.09 / (a |ln a|) (a rough finite-N value; it only sets
    the first load tried)."""
    return 0.14 if a == 0.5 else 0.09 / (a * abs(math.log(a)))


@dataclass(frozen=True)
class HopConfig:
    """Everything one run does; :meth:`default` gives the full and the quick scale."""

    quick: bool
    codings: tuple[float, ...]
    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    m0: float = 0.8
    min_overlap: float = 0.95
    min_fraction: float = 0.9
    cues: int = 50
    mode: str = "async"
    connectivity: float = 1.0
    tol: float = 0.01
    theta_steps: int = 7
    dilution: tuple[float, ...] = ()  # optional curve: connectivities c at dilution_coding, dilution_size
    dilution_coding: float = 0.1
    dilution_size: int = 1000

    @classmethod
    def default(cls, *, quick: bool, seeds: int | None = None) -> HopConfig:
        if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2):
            raise SparseflowError(f"seeds must be an integer >= 2 (a t-interval needs two), got {seeds!r}")
        if quick:
            return cls(quick=True, codings=(0.5, 0.1, 0.05, 0.02), sizes=(400, 800),
                       seeds=tuple(range(seeds or 3)), tol=0.02)
        return cls(quick=False, codings=CODINGS, sizes=SIZES, seeds=tuple(range(seeds or 3)),
                   dilution=(1.0, 0.5, 0.25, 0.1))

    def check(self) -> None:
        for name in ("cues", "theta_steps", "dilution_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SparseflowError(f"{name} must be an integer >= 1, got {v!r}")
        if not self.codings or any(not isinstance(a, (int, float)) or not 0 < a <= 0.5 for a in self.codings):
            raise SparseflowError(f"codings must be coding levels in (0, 0.5], e.g. 0.5,0.1,0.02; got {self.codings!r}")
        if len(set(self.codings)) != len(self.codings):
            raise SparseflowError(f"codings must be distinct, got {self.codings!r}")
        if not self.sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 50 for n in self.sizes):
            raise SparseflowError(f"sizes must be numbers of units >= 50, e.g. 500,1000; got {self.sizes!r}")
        if len(set(self.sizes)) != len(self.sizes) or list(self.sizes) != sorted(self.sizes):
            raise SparseflowError(f"sizes must be distinct and increasing, got {self.sizes!r}")
        for a in self.codings:
            for n in self.sizes:
                if round(a * n) < 5:
                    raise SparseflowError(f"a = {a:g} at N = {n} leaves {round(a * n)} active units; "
                                          "use a larger N or a (a N >= 5)")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise SparseflowError(f"need at least 2 distinct seeds for a t-interval, got {self.seeds!r}")
        for name in ("m0", "min_overlap", "min_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise SparseflowError(f"{name} must lie in (0, 1], got {v!r}")
        if self.mode not in ("async", "sync"):
            raise SparseflowError(f"mode must be async or sync, got {self.mode!r}")
        if any(not 0 < c <= 1 for c in (self.connectivity, *self.dilution)):
            raise SparseflowError(f"connectivities must lie in (0, 1], got {(self.connectivity, *self.dilution)!r}")
        if not 0 < self.tol < 0.5:
            raise SparseflowError(f"tol must be a relative resolution in (0, 0.5), e.g. 0.01; got {self.tol!r}")

    def runs(self) -> int:
        return len(self.codings) * len(self.sizes) * len(self.seeds) + len(self.dilution) * len(self.seeds)

    def estimate_s(self) -> float:
        """Seconds on 2 shared cores: per search S_PER_N2 x N^2, times theta_steps / 2 for sparse patterns."""
        def one(n: int, a: float) -> float:
            return (1 if a == 0.5 else self.theta_steps / 2) * n * n * S_PER_N2 * self.cues / 50

        grid = sum(one(n, a) for n in self.sizes for a in self.codings)
        dil = sum(one(self.dilution_size, self.dilution_coding) for _ in self.dilution)
        return (grid + dil) * len(self.seeds)


@dataclass(frozen=True)
class Trial:
    """One load tried: P, the threshold that did best, the fraction of cues recalled and their mean overlap."""

    p: int
    theta: float
    fraction: float
    overlap: float
    success: bool


@dataclass(frozen=True)
class Cell:
    """One capacity search."""

    a: float
    n: int
    seed: int
    c: float
    p_max: int
    trials: tuple[Trial, ...]
    wall_s: float

    @property
    def alpha(self) -> float:
        return self.p_max / self.n


class _Stream:
    """Pattern mu of (a, N, seed) from a block-seeded generator; blocks cached."""

    def __init__(self, a: float, n: int, seed: int) -> None:
        self.a, self.n, self.key = a, n, (seed * 1_000_003 + n) * 1_009 + round(a * 10_000)
        self.blocks: dict[int, torch.Tensor] = {}

    def block(self, b: int) -> torch.Tensor:
        if b not in self.blocks:
            g = torch.Generator().manual_seed(self.key * 65_537 + b)
            self.blocks[b] = random_patterns(BLOCK, self.n, self.a, g)
        return self.blocks[b]

    def get(self, lo: int, hi: int) -> torch.Tensor:
        blocks = range(lo // BLOCK, (hi - 1) // BLOCK + 1)
        parts = [self.block(b)[max(lo - b * BLOCK, 0):hi - b * BLOCK] for b in blocks]
        return torch.cat(parts)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.block(int(i) // BLOCK)[int(i) % BLOCK] for i in idx])


def try_load(net: Hopfield, stream: _Stream, cfg: HopConfig, seed: int) -> Trial:
    """Recall ``cfg.cues`` stored patterns from corrupted cues at the network's load (see the module docstring)."""
    p, a = net.p, net.a
    g = torch.Generator().manual_seed(seed * 7_919 + p)
    idx = torch.randperm(p, generator=g)[:cfg.cues]
    targets = stream.rows(idx)
    cues = corrupt(targets, cfg.m0, a, g)
    order_seed = int(torch.randint(0, 2**31, (1,), generator=g))

    def attempt(theta: float) -> tuple[Trial, float]:
        r = net.recall(cues, theta=theta, mode=cfg.mode, generator=torch.Generator().manual_seed(order_seed),
                       max_activity=min(1.0, 4 * a))
        m = net.overlap(r.states, targets)
        ok = (m >= cfg.min_overlap) & r.converged
        frac = float(ok.float().mean())
        return Trial(p, theta, frac, float(m.mean()), frac >= cfg.min_fraction), float(r.states.float().mean())

    alpha = p / net.n
    centre = optimal_threshold(a, alpha, c=net.c, m0=cfg.m0)
    if a == 0.5:
        return attempt(centre)[0]
    best, lo, hi = None, centre - 0.2, centre + 0.4
    theta = centre
    for _ in range(cfg.theta_steps):
        trial, activity = attempt(theta)
        if best is None or (trial.fraction, trial.overlap) > (best.fraction, best.overlap):
            best = trial
        if trial.success:
            break
        lo, hi = (theta, hi) if activity > a else (lo, theta)
        theta = (lo + hi) / 2
    return best


def capacity(a: float, n: int, seed: int, cfg: HopConfig, c: float | None = None) -> Cell:
    """P_max of one (a, N, seed) by growth then bisection over P (see the module docstring)."""
    t0 = time.perf_counter()
    c = cfg.connectivity if c is None else c
    stream, trials = _Stream(a, n, seed), []

    def build(p: int) -> Hopfield:
        net = Hopfield(n, a, c=c, seed=seed)
        net.store(stream.get(0, p))
        return net

    def extend(base: Hopfield, p: int) -> Hopfield:  # base with the next stored patterns up to p (base kept)
        net = base.copy()
        net.store(stream.get(base.p, p))
        return net

    def test(net: Hopfield) -> bool:
        trials.append(try_load(net, stream, cfg, seed))
        return trials[-1].success

    p = max(2, round(0.8 * guess_alpha(a) * c * n))
    net = build(p)
    lo_net = hi = None
    if test(net):
        lo_net = net
        while hi is None:
            nxt = max(lo_net.p + 1, math.ceil(1.25 * lo_net.p))
            net = extend(lo_net, nxt)
            if test(net):
                lo_net = net
            else:
                hi = nxt
    else:
        hi = p
        while lo_net is None:
            p = max(1, math.floor(p / 1.25)) if p > 1 else 0
            if p == 0:
                return Cell(a, n, seed, c, 0, tuple(trials), time.perf_counter() - t0)
            net = build(p)
            if test(net):
                lo_net = net
            else:
                hi = p
    while hi - lo_net.p > max(1, cfg.tol * lo_net.p):
        mid = (lo_net.p + hi) // 2
        net = extend(lo_net, mid)
        if test(net):
            lo_net = net
        else:
            hi = mid
    return Cell(a, n, seed, c, lo_net.p, tuple(trials), time.perf_counter() - t0)


@dataclass(frozen=True)
class HopResult:
    config: HopConfig
    cells: tuple[Cell, ...] = field(repr=False)
    dilution: tuple[Cell, ...] = field(default=(), repr=False)
    wall_s: float = 0.0

    def alphas(self, a: float, n: int) -> list[float]:
        return [c.alpha for c in self.cells if c.a == a and c.n == n]

    def criteria(self) -> dict[str, dict]:
        from sparseflow.experiments.hopfield.report import criteria

        return criteria(self)

    def to_json(self) -> dict:
        from sparseflow.experiments.hopfield.report import summary

        def cell(c: Cell) -> dict:
            return {"a": c.a, "n": c.n, "seed": c.seed, "c": c.c, "p_max": c.p_max, "alpha": c.alpha,
                    "wall_s": c.wall_s, "trials": [t.__dict__ for t in c.trials]}

        return {"command": "experiment hopfield", "quick": self.config.quick, "wall_s": self.wall_s,
                "config": self.config.__dict__, **summary(self), "criteria": self.criteria(),
                "cells": [cell(c) for c in self.cells], "dilution_cells": [cell(c) for c in self.dilution]}


def result_from_json(obj: dict) -> HopResult:
    """Rebuild a :class:`HopResult` from its ``results.json`` (to redraw figures without rerunning)."""
    conf = {k: tuple(v) if isinstance(v, list) else v for k, v in obj["config"].items()}

    def cell(d: dict) -> Cell:
        return Cell(d["a"], d["n"], d["seed"], d["c"], d["p_max"], tuple(Trial(**t) for t in d["trials"]), d["wall_s"])

    return HopResult(HopConfig(**conf), tuple(map(cell, obj["cells"])), tuple(map(cell, obj["dilution_cells"])),
                     obj["wall_s"])


def run_hopfield(cfg: HopConfig, progress: Callable[[str], None] = lambda _: None) -> HopResult:
    """Every (a, N, seed) capacity search, then the dilution curve; ``progress(what)`` after each. One thread."""
    cfg.check()
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared machine
    cells, dil = [], []
    try:
        for n in cfg.sizes:
            for a in cfg.codings:
                for seed in cfg.seeds:
                    cells.append(capacity(a, n, seed, cfg))
                    progress(f"a={a:g} N={n} seed {seed}: alpha={cells[-1].alpha:.3f}")
        for c in cfg.dilution:
            for seed in cfg.seeds:
                dil.append(capacity(cfg.dilution_coding, cfg.dilution_size, seed, cfg, c=c))
                progress(f"dilution c={c:g} seed {seed}: alpha={dil[-1].alpha:.3f}")
    finally:
        torch.set_num_threads(threads)
    return HopResult(cfg, tuple(cells), tuple(dil), time.perf_counter() - t0)
