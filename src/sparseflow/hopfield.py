"""Associative memory for sparse binary patterns: the covariance rule with a threshold (Tsodyks & Feigel'man 1988).

Units are 0/1; a pattern has exactly ``K = round(a N)`` active units (coding level ``a``). Storing P patterns
builds the covariance weights (Tsodyks & Feigel'man 1988, "The enhanced storage capacity in neural networks
with low activity level")::

    J_ij = c_ij / (c N a (1 - a)) * sum_mu (xi_i^mu - a)(xi_j^mu - a),   J_ii = 0,

with ``c_ij`` a symmetric random 0/1 dilution mask of density ``c`` (``c = 1``: fully connected). Recall
iterates ``s_i <- [h_i > theta]`` with ``h = J s``, asynchronously (random sequential single-unit updates,
each with the current fields: the energy ``E = -s J s / 2 + theta sum s`` never increases and the state
ends at a fixed point) or synchronously (all units at once: it ends at a fixed point or a 2-cycle, the
only other attractor of parallel dynamics with symmetric weights, which :class:`Recall` reports as not
converged). Retrieval quality is the normalised overlap ``m = sum_i (xi_i - a) s_i / (N a (1 - a))``:
1 for the pattern itself, about 0 for an unrelated state. At ``a = 1/2`` the model is the ±1 Hopfield
network (Amit, Gutfreund & Sompolinsky 1985, alpha_c = 0.138) with ``J`` and ``h`` halved.

Counts, not weights, are accumulated: ``C = X^T X`` and ``n = X^T 1`` (integers, exact in float32 up to
2^24 patterns), so storing more patterns is incremental and :meth:`Hopfield.copy` is a cheap checkpoint.
Nothing of size P x N x N is ever built; recall of B cues costs B x N x N per sweep.

:func:`capacity_theory` predicts the capacity from mean-field theory, at finite N or in the limit.

The threshold: :func:`optimal_threshold` (used when none is given) maximises the overlap predicted by a
signal-to-noise analysis of retrieval from a cue of overlap ``m0`` at load ``alpha = P / N`` (see there).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sparseflow.errors import SparseflowError


def _check_coding(a: float) -> float:
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1:
        raise SparseflowError(f"coding level a must be a fraction of active units in (0, 1), e.g. 0.1; got {a!r}")
    return float(a)


def random_patterns(p: int, n: int, a: float, generator: torch.Generator) -> Tensor:
    """(p, n) bool patterns, each with exactly ``round(a n)`` active units at random positions."""
    k = round(_check_coding(a) * n)
    if not 1 <= k < n:
        raise SparseflowError(f"a = {a!r} leaves round(a N) = {k} active units of N = {n}; choose 1/N <= a < 1")
    idx = torch.rand(p, n, generator=generator).argsort(dim=1)[:, :k]
    return torch.zeros(p, n, dtype=torch.bool).scatter_(1, idx, True)


def corrupt(patterns: Tensor, m0: float, a: float, generator: torch.Generator) -> Tensor:
    """Cues of normalised overlap ``m0`` that keep each pattern's activity: ``k`` active units of each pattern
    are moved to random inactive positions, ``k = round((1 - m0)(1 - a) K)``, so ``m = 1 - k / ((1 - a) K)``.
    At a = 1/2 and m0 = 0.8 that flips 10 % of the bits, the classic ±1 setting."""
    if not 0 <= m0 <= 1:
        raise SparseflowError(f"cue overlap m0 must lie in [0, 1], e.g. 0.8; got {m0!r}")
    k_act = int(patterns[0].sum())
    k = round((1 - m0) * (1 - a) * k_act)
    r = torch.rand(patterns.shape, generator=generator)
    on, off = r.masked_fill(~patterns, 2.0), r.masked_fill(patterns, 2.0)  # pick k of each kind at random
    cues = patterns.clone()
    if k:
        cues.scatter_(1, on.argsort(dim=1)[:, :k], False)
        cues.scatter_(1, off.argsort(dim=1)[:, :k], True)
    return cues


def optimal_threshold(a: float, alpha: float, *, c: float = 1.0, m0: float = 0.8, grid: int = 2001) -> float:
    """Threshold maximising the retrieval overlap predicted by signal-to-noise analysis (no reaction term).

    With the network near pattern nu (overlap m, activity q = mean of s) the field of unit i is Gaussian:
    mean ``(xi_i - a) m - alpha q`` (the shift comes from the fixed activity of the other patterns) and
    variance ``(alpha / c) q (1 - q)`` (cross-talk of the P - 1 others). Iterating
    ``p1 = P(h > theta | active)``, ``p0 = P(h > theta | inactive)``, ``m = p1 - p0``, ``q = a p1 + (1 - a) p0``
    from ``(m0, a)`` predicts the end overlap for each theta of a grid; the threshold returned is the middle of
    the thetas within 1e-4 of the best. For small ``a`` it approaches the active units' signal, so that almost
    no inactive unit fires: the choice behind the capacity ``1 / (2 a |ln a|)`` of Tsodyks & Feigel'man (1988).
    At ``a = 1/2`` it is ``-alpha / 2``, i.e. threshold 0 of the ±1 network.
    """
    from scipy.special import ndtr

    if a == 0.5:
        return -alpha / 2  # exact by symmetry (the grid below would round it)
    theta = np.linspace(-a - alpha - 0.5, 1.5, grid)
    m, q = np.full(grid, float(m0)), np.full(grid, float(a))
    for _ in range(60):
        sd = np.sqrt(np.maximum(alpha / c * q * (1 - q), 1e-12))
        p1 = ndtr((m * (1 - a) - alpha * q - theta) / sd)
        p0 = ndtr((-m * a - alpha * q - theta) / sd)
        m, q = p1 - p0, a * p1 + (1 - a) * p0
    best = np.flatnonzero(m >= m.max() - 1e-4)
    return float(theta[best].mean())


def _retrieval_state(a: float, alpha: float, theta: np.ndarray, iterations: int = 400) -> tuple[np.ndarray, ...]:
    """Zero-temperature replica-symmetric retrieval state, per threshold of ``theta``: (m, p1, p0).

    The mean-field equations of the covariance model in the signal-to-noise form with the reaction term
    (Shiino & Fukai's self-consistent signal-to-noise analysis; Amit, Gutfreund & Sompolinsky at a = 1/2). Near
    pattern 1 the field of unit i is ``(xi_i - a) m + sqrt(alpha r) z + (alpha u / (1 - u)) s_i - alpha q / (1 - u)``
    with z standard normal: the cross-talk of the other patterns (variance ``alpha r``, ``r = q (1 - q) / (1 - u)^2``
    for patterns of exactly a N active units, q the activity), their reaction to the unit's own state (the
    zero diagonal removes the direct part) and the mean shift of fixed-activity patterns. The state is 1 when
    the field exceeds theta, with the reaction counted at half (the Maxwell rule of the replica solution).
    Self-consistency: ``p1, p0 = P(s = 1 | xi = 1, 0)``, ``m = p1 - p0``, ``q = a p1 + (1 - a) p0``,
    ``u = <dS/dh> = (a phi(x1) + (1 - a) phi(x0)) / sqrt(alpha r)``; iterated (damped) from the pattern itself.
    """
    from scipy.special import ndtr

    theta = np.asarray(theta, dtype=np.float64)
    m, q, u = np.ones_like(theta), np.full_like(theta, a), np.zeros_like(theta)
    p1, p0 = np.ones_like(theta), np.zeros_like(theta)
    for _ in range(iterations):
        sd = np.sqrt(np.maximum(alpha * q * (1 - q), 1e-18)) / (1 - u)
        shift = alpha * u / (1 - u) / 2 - alpha * q / (1 - u) - theta
        x1, x0 = (m * (1 - a) + shift) / sd, (-m * a + shift) / sd
        p1, p0 = ndtr(x1), ndtr(x0)
        un = np.minimum((a * np.exp(-x1 * x1 / 2) + (1 - a) * np.exp(-x0 * x0 / 2)) / (np.sqrt(2 * np.pi) * sd), 0.99)
        mn, qn = p1 - p0, a * p1 + (1 - a) * p0
        done = max(np.abs(mn - m).max(), np.abs(qn - q).max(), np.abs(un - u).max()) < 1e-11
        m, q, u = (m + mn) / 2, (q + qn) / 2, (u + un) / 2
        if done:
            break
    return m, p1, p0


def _recall_probability(n: int, a: float, p1: np.ndarray, p0: np.ndarray, m_min: float) -> np.ndarray:
    """P(a pattern's end overlap >= m_min) when each of its K = round(a n) active units stays on with
    probability p1 and each of the n - K others turns on with p0, independently: the overlap is
    ``n1 / K - n0 / (n - K)`` with binomial n1 and n0."""
    from scipy.stats import binom

    k = round(a * n)
    n1 = np.arange(k + 1)[:, None]
    most = np.floor((n1 / k - m_min) * (n - k) + 1e-9)  # the false units that overlap >= m_min allows
    ok = np.where(most >= 0, binom.cdf(np.maximum(most, 0), n - k, p0[None, :]), 0.0)
    return (binom.pmf(n1, k, p1[None, :]) * ok).sum(0)


def capacity_theory(a: float, n: int | None = None, *, m_min: float = 0.95, success: float = 0.9,
                    tol: float = 1e-3) -> float:
    """The capacity alpha = P_max / N that mean-field theory predicts for :class:`Hopfield` at coding level ``a``,
    at the best fixed threshold, with the retrieval criterion of ``sparseflow experiment hopfield``.

    ``n = None``: the large-N limit, the largest load whose retrieval state (:func:`_retrieval_state`, the
    replica-symmetric solution) has overlap >= ``m_min``; at a = 1/2 it is Amit, Gutfreund & Sompolinsky's
    0.138 (the state's m jumps from 0.967 to 0 there), and it tends to Tsodyks & Feigel'man's
    1 / (2 a |ln a|) as a -> 0, slowly. Finite ``n``: a pattern's end state has K = round(a n) active units and
    its errors are binomial around the mean-field rates, so its overlap fluctuates; the load succeeds when a
    pattern reaches ``m_min`` with probability >= ``success`` (the fraction of cues the experiment asks). With few
    active units (a n of tens) one or two missed units already cost the criterion, which lowers the capacity
    most at small a and n.

    The dynamics from a cue (its basin of attraction) are not modelled: the theory asks that the retrieval
    state exist and meet the criterion. The threshold is searched over a grid (at a = 1/2 it is fixed by
    symmetry, as in the experiment), the load by bisection to ``tol`` (relative).
    """
    a = _check_coding(a)
    if a > 0.5:
        raise SparseflowError(f"capacity_theory covers coding levels a <= 0.5 (a and 1 - a are the same network "
                              f"after relabelling the units); got a = {a!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= round(a * n) < n):
        raise SparseflowError(f"n must be a number of units with 1 <= round(a n) < n (or None for the large-N "
                              f"limit); got n = {n!r} at a = {a:g}")
    if not 0 < m_min < 1 or not 0 < success < 1:
        raise SparseflowError(f"m_min and success must be fractions in (0, 1), got {m_min!r} and {success!r}")
    return _capacity(a, n, float(m_min), float(success), float(tol))


@functools.lru_cache(maxsize=256)
def _capacity(a: float, n: int | None, m_min: float, success: float, tol: float) -> float:
    def succeeds(alpha: float) -> bool:
        theta = np.array([-alpha / 2]) if a == 0.5 else np.linspace(-0.6, 1.0, 321)
        m, p1, p0 = _retrieval_state(a, alpha, theta)
        if n is None:
            return bool((m >= m_min).any())
        # P(overlap >= m_min) >= success needs a mean overlap of at least success m_min - (1 - success) (an
        # overlap is >= -1): the other thresholds cannot pass
        live = m >= success * m_min - (1 - success)
        if not live.any():
            return False
        return bool(_recall_probability(n, a, p1[live], p0[live], m_min).max() >= success)

    lo, hi = 1e-3, 1.0
    while succeeds(hi):
        lo, hi = hi, 2 * hi
    if not succeeds(lo):
        return 0.0
    while hi / lo - 1 > tol:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if succeeds(mid) else (lo, mid)
    return lo


@dataclass(frozen=True)
class Recall:
    """End states (B, N) bool, sweeps used, and per cue whether it ended at a fixed point."""

    states: Tensor
    sweeps: int
    converged: Tensor


class Hopfield:
    """Covariance-rule associative memory of ``n`` 0/1 units, coding level ``a``, connectivity ``c`` (mask seeded
    by ``seed``). ``store`` adds patterns; ``recall`` runs the dynamics; ``overlap`` measures retrieval."""

    def __init__(self, n: int, a: float = 0.5, *, c: float = 1.0, seed: int = 0) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise SparseflowError(f"n must be a number of units >= 2, got {n!r}")
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1:
            raise SparseflowError(f"connectivity c must be a fraction in (0, 1], e.g. 0.5; got {c!r}")
        self.n, self.a, self.c, self.seed = n, _check_coding(a), float(c), seed
        self.p = 0
        self._counts = torch.zeros(n, n)  # C = X^T X over stored patterns
        self._active = torch.zeros(n)  # n_i = times unit i was active
        self._mask: Tensor | None = None
        if c < 1:
            g = torch.Generator().manual_seed(seed)
            upper = torch.triu(torch.rand(n, n, generator=g) < c, 1)
            self._mask = upper | upper.T  # symmetric, zero diagonal
        self._weights: Tensor | None = None

    def copy(self) -> Hopfield:
        other = Hopfield.__new__(Hopfield)
        other.__dict__.update(self.__dict__)
        other._counts, other._active = self._counts.clone(), self._active.clone()
        return other

    def store(self, patterns: Tensor) -> None:
        """Add (P, N) 0/1 patterns to the memory (incremental: storing A then B equals storing both)."""
        if patterns.dim() != 2 or patterns.shape[1] != self.n:
            raise SparseflowError(f"patterns must be shaped (P, {self.n}), got {tuple(patterns.shape)}")
        x = patterns.to(torch.float32)
        if not torch.all((x == 0) | (x == 1)):
            raise SparseflowError("patterns must be 0/1 (or bool); got other values")
        k = max(1, int(x.sum(1).mean()))
        if self.a <= 0.1 and k < self.n // 8:
            # sparse patterns: scatter-add the K x K active pairs of each pattern instead of a dense product
            for chunk in x.split(max(1, 2_000_000 // (k * k))):
                idx = [row.nonzero().flatten() for row in chunk]
                flat = torch.cat([(i[:, None] * self.n + i[None, :]).flatten() for i in idx])
                self._counts.view(-1).index_add_(0, flat, torch.ones(len(flat)))
        else:
            self._counts.addmm_(x.T, x)
        self._active += x.sum(0)
        self.p += len(x)
        self._weights = None

    @property
    def mask(self) -> Tensor | None:
        """(N, N) bool connectivity (symmetric, zero diagonal), or None when fully connected."""
        return self._mask

    @property
    def weights(self) -> Tensor:
        """(N, N) float32 symmetric weights with zero diagonal (see the module docstring)."""
        if self._weights is None:
            a, n = self.a, self._active
            w = self._counts - a * (n[:, None] + n[None, :]) + self.p * a * a
            w /= self.c * self.n * a * (1 - a)
            w.fill_diagonal_(0.0)
            if self._mask is not None:
                w.mul_(self._mask)
            self._weights = w
        return self._weights

    def threshold(self, m0: float = 0.8) -> float:
        """The default threshold: :func:`optimal_threshold` at this load and connectivity."""
        return optimal_threshold(self.a, self.p / self.n, c=self.c, m0=m0)

    def energy(self, states: Tensor, theta: float) -> Tensor:
        """E = -s J s / 2 + theta sum(s) per state (B,)."""
        s = states.to(torch.float32)
        return -0.5 * ((s @ self.weights) * s).sum(1) + theta * s.sum(1)

    def overlap(self, states: Tensor, patterns: Tensor) -> Tensor:
        """Normalised overlap of each state with its pattern (row by row): sum (xi - a) s / (N a (1 - a))."""
        a = self.a
        return ((patterns.float() - a) * states.float()).sum(1) / (self.n * a * (1 - a))

    def recall(self, cues: Tensor, *, theta: float | None = None, mode: str = "async", max_sweeps: int = 100,
               generator: torch.Generator | None = None, max_activity: float = 1.0) -> Recall:
        """Run the dynamics from (B, N) cues. ``theta`` defaults to :meth:`threshold`; ``generator`` orders the
        asynchronous updates. A unit whose field is within ``TIE`` of ``theta`` keeps its state (the ±1 network's
        sign(0) convention; without it float rounding could flip such a unit forever). ``max_activity`` gives up
        early (cues reported as not converged) once the mean activity of the batch exceeds it: a threshold
        search uses it to cut short the slow runaway of a threshold set too low."""
        if mode not in ("async", "sync"):
            raise SparseflowError(f"mode must be 'async' or 'sync', got {mode!r}")
        if cues.dim() != 2 or cues.shape[1] != self.n:
            raise SparseflowError(f"cues must be shaped (B, {self.n}), got {tuple(cues.shape)}")
        th = self.threshold() if theta is None else float(theta)
        s = cues.to(torch.float32).clone()
        if mode == "sync":
            return _sync(self.weights, s, th, max_sweeps, max_activity)
        g = generator or torch.Generator().manual_seed(self.seed)
        return _async(self.weights, s, th, max_sweeps, g, max_activity)


TIE = 1e-5  # fields closer than this to the threshold leave the unit as it is


def _step(h: Tensor, s: Tensor, theta: float) -> Tensor:
    return torch.where((h - theta).abs() <= TIE, s, (h > theta).to(torch.float32))


def _sync(w: Tensor, s: Tensor, theta: float, max_sweeps: int, max_activity: float) -> Recall:
    prev = None
    for sweep in range(1, max_sweeps + 1):
        new = _step(s @ w, s, theta)
        if torch.equal(new, s):
            return Recall(s.bool(), sweep, torch.ones(len(s), dtype=torch.bool))
        if prev is not None and torch.equal(new, prev):  # every cue is at a fixed point or in a 2-cycle
            break
        prev, s = s, new
        if float(s.mean()) > max_activity:
            break
    fixed = (_step(s @ w, s, theta) == s).all(1)
    return Recall(s.bool(), sweep, fixed)


def _async(w: Tensor, s: Tensor, theta: float, max_sweeps: int, g: torch.Generator, max_activity: float) -> Recall:
    # Random sequential single-unit updates on all cues at once. Each sweep visits, in a random order, the
    # units that are unstable in some cue at its start; a visited unit takes the sign of its *current* field,
    # and the fields of every cue that changed are updated by a rank-1 term. Skipping a unit that was stable
    # is a no-op of the dynamics, so this is exact asynchronous dynamics; it stops when no unit is unstable.
    sn, wn = s.numpy(), w.numpy()
    for sweep in range(1, max_sweeps + 1):
        h = (s @ w).numpy()  # recomputed each sweep: no drift from accumulated rank-1 updates
        unstable = np.flatnonzero((((h > theta) != (sn > 0.5)) & (np.abs(h - theta) > TIE)).any(0))
        if len(unstable) == 0:
            return Recall(s.bool(), sweep, torch.ones(len(s), dtype=torch.bool))
        if sn.mean() > max_activity:
            break
        order = unstable[torch.randperm(len(unstable), generator=g).numpy()]
        for i in order:
            hi = h[:, i]
            new = np.where(np.abs(hi - theta) <= TIE, sn[:, i], hi > theta).astype(np.float32)
            d = new - sn[:, i]
            rows = np.flatnonzero(d)
            if len(rows):
                sn[rows, i] = new[rows]
                h[rows] += d[rows, None] * wn[i]
    return Recall(s.bool(), sweep, (_step(s @ w, s, theta) == s).all(1))
