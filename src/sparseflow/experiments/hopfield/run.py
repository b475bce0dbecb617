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
Tsodyks & Feigel'man. Statistics and criteria: :mod:`.result`; figures and report: :mod:`.report`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from sparseflow.experiments.hopfield.config import HopConfig
from sparseflow.experiments.hopfield.result import Cell, HopResult, Trial
from sparseflow.experiments.protocol import Tick, command_line, no_progress
from sparseflow.hopfield import Hopfield, corrupt, optimal_threshold, random_patterns
from sparseflow.training.options import BudgetOptions
from sparseflow.training.rundir import _human, check_budget

BLOCK = 256  # patterns are drawn in seeded blocks: pattern mu is the same whatever the search visits


def guess_alpha(a: float) -> float:
    """Where the search starts: 0.14 at a = 1/2, else 0.09 / (a |ln a|) (a rough finite-N value; it only sets
    the first load tried)."""
    return 0.14 if a == 0.5 else 0.09 / (a * abs(math.log(a)))


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


def check(config: HopConfig, options: BudgetOptions) -> Sequence[str]:
    """Refuse a grid estimated past an hour without ``--yes``; the estimate, as a note."""
    check_budget(config.estimate_s(), options.yes, "experiment hopfield")
    return [f"about {_human(config.estimate_s())} for {config.runs()} capacity searches"]


def run(config: HopConfig, out: Path | None = None, progress: Tick = no_progress, *,
        options: BudgetOptions | None = None) -> HopResult:
    """Every (a, N, seed) capacity search, then the dilution curve; ``progress(what)`` after each. One thread
    (restored afterwards: the machine may be shared). ``out`` only names the run in its command line."""
    cfg = config
    options = dataclasses.replace(options or BudgetOptions(), out=out)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared machine
    cells, dil = [], []
    progress("capacity searches", advance=0, total=cfg.runs())
    try:
        for n in cfg.sizes:
            for a in cfg.codings:
                for seed in cfg.seed_values:
                    cells.append(capacity(a, n, seed, cfg))
                    progress(f"a={a:g} N={n} seed {seed}: alpha={cells[-1].alpha:.3f}")
        for c in cfg.dilution:
            for seed in cfg.seed_values:
                dil.append(capacity(cfg.dilution_coding, cfg.dilution_size, seed, cfg, c=c))
                progress(f"dilution c={c:g} seed {seed}: alpha={dil[-1].alpha:.3f}")
    finally:
        torch.set_num_threads(threads)
    return HopResult(cfg, tuple(cells), tuple(dil), time.perf_counter() - t0, command_line("hopfield", cfg, options))
