"""Percolation in layered sparse networks: theory and seeded Monte Carlo.

A sparse feed-forward network is a layered random graph: the units of a layer are its nodes, the kept weights
its links. Information reaches a unit only along a path of kept links, so a mask that is too sparse cuts every
input-output path even when no layer is empty (Tanaka et al. 2020; Frankle & Carbin 2019 note the same
failure). Two classical results say where this happens (Harris 1963 for branching processes; Erdős & Rényi
1960 for the giant component, in its directed, layered form).

**Fixed fan-out b, pruned fraction p** (each of a unit's b outgoing links, to uniformly random units of the
next layer, drawn with replacement, is kept with probability 1 - p). Starting from one unit, the units it reaches
form a Galton-Watson branching process with Binomial(b, 1 - p) children: it survives forever with positive
probability iff the mean b(1 - p) exceeds 1, i.e. iff p < p_c = 1 - 1/b (:func:`critical_prune_fraction`).

**Layered random mask of mean fan-in c** (each of the width² links between consecutive layers kept with
probability c/width). Start from a *fully active* input layer and call a unit reached when some kept link joins
it to a reached unit of the layer before. With a fraction ρ of a layer reached, a unit of the next layer has
Poisson(cρ) links from reached units in the wide limit, so ρ' = 1 - exp(-cρ). From ρ_0 = 1 the iterates
(:func:`mean_field_fractions`) fall to the largest root of ρ = 1 - exp(-cρ) (:func:`surviving_fraction`):
ρ = 1 + W_0(-c e^{-c})/c with W_0 the principal Lambert W branch, positive iff c > 1 and 0 for c <= 1, where
ρ_L ~ 2/L at c = 1 and decays like c^L below. The fan-out model obeys the same recursion with c = b(1 - p), its
in-degree being Poisson(b(1 - p)) in the wide limit, so its surviving fraction is ρ(b(1 - p)), zero from
p_c = 1 - 1/b on: both models share the threshold.

What is measured: the *forward surviving fraction* ρ_L, the fraction of layer-L units reachable from a fully
active layer 0 (:func:`forward_reach`). It is what ρ(c) predicts, and it is compared with ρ(c) only. The
fraction of the middle layer's units that lie on a full input-to-output path (reached from layer 0 *and*
reaching layer L, :func:`on_path_fraction`) is also measured; by the forward/backward symmetry of the random
mask and the independence of the two in the wide limit it is ≈ ρ_{L/2}², reported next to it, not a criterion.

**Estimating p_c at finite depth** (:func:`crossing`). At finite depth the threshold is smeared: just above
p_c, ρ_L has not yet reached its (zero) limit. In the mean-field scaling form ρ_L ≈ L^{-1} f((p_c - p) L)
(δ = β/ν_∥ = 1 for directed percolation above its upper critical dimension, which a layered random graph is),
L·ρ_L tends to a constant at p_c (= 2, from ρ' ≈ ρ - ρ²/2), grows with L below p_c and vanishes above.
So the curves L·ρ_L(p) for two depths L/2 and L cross at p_c, up to O(log L / L) corrections: for the
mean-field iterates at L = 64 the crossing sits at c = 0.9976, i.e. p_c + 0.0024/b. The estimator uses no
knowledge of b or of the theory; it is the first downward sign change of L·ρ_L - (L/2)·ρ_{L/2} over a
coarse grid of p, refined on a fine grid inside the coarse bracket, linearly interpolated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import lambertw

from sparseflow.errors import SparseflowError

# One layer's kept links as (source unit, target unit) index arrays, both int64 of shape (links,).
Links = tuple[np.ndarray, np.ndarray]


# --- theory -------------------------------------------------------------------------------------


def critical_prune_fraction(b: int) -> float:
    """p_c = 1 - 1/b: the pruned fraction at which a fan-out-b branching process becomes critical."""
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
        raise SparseflowError(f"fan-out b must be an integer >= 1, got {b!r}")
    return 1.0 - 1.0 / int(b)


def _check_c(c: float) -> float:
    if isinstance(c, bool) or not isinstance(c, (int, float, np.floating, np.integer)) or not math.isfinite(c) or c < 0:
        raise SparseflowError(f"mean fan-in c must be a finite number >= 0, got {c!r}")
    return float(c)


def surviving_fraction(c: float) -> float:
    """Largest root ρ of ρ = 1 - exp(-cρ): ρ = 1 + W_0(-c e^{-c})/c for c > 1, else 0 (Lambert W form)."""
    c = _check_c(c)
    if c <= 1.0:
        return 0.0
    # For c > 1, -c e^{-c} lies in (-1/e, 0); W_0 of it is the root in (-1, 0), not the trivial -c (branch -1).
    return float(1.0 + lambertw(-c * math.exp(-c), 0).real / c)


def mean_field_fractions(c: float, depth: int) -> np.ndarray:
    """ρ_0 = 1, ρ_{l+1} = 1 - exp(-c ρ_l) for l < depth: the wide-network surviving fraction at each depth."""
    c = _check_c(c)
    _check_int(depth, "depth", 0)
    out = np.empty(depth + 1)
    out[0] = 1.0
    for i in range(depth):
        out[i + 1] = -math.expm1(-c * out[i])
    return out


def _check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SparseflowError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --- random layered graphs ------------------------------------------------------------------------


def random_mask_links(c: float, width: int, rng: np.random.Generator) -> Links:
    """Kept links of one width x width mask whose entries are i.i.d. Bernoulli(c / width).

    Drawn exactly without touching all width² entries: Binomial(width², q) kept links at distinct uniform
    positions (that is the law of an i.i.d. Bernoulli mask), so a 4096-wide layer costs O(c·width).
    """
    c, width = _check_c(c), _check_int(width, "width", 1)
    if c > width:
        raise SparseflowError(f"mean fan-in c={c} exceeds the width {width}; pass c <= width")
    k = int(rng.binomial(width * width, c / width))
    pos = rng.choice(width * width, size=k, replace=False)
    return pos // width, pos % width  # (source in layer l, target in layer l+1)


def fan_out_links(b: int, p: float, width: int, rng: np.random.Generator) -> Links:
    """Kept links of one layer where every unit sends b links to uniform random units (with replacement),
    each kept with probability 1 - p."""
    b, width = _check_int(b, "fan-out b", 1), _check_int(width, "width", 1)
    if not (0.0 <= p <= 1.0):
        raise SparseflowError(f"pruned fraction p must be in [0, 1], got {p!r}")
    targets = rng.integers(0, width, size=(width, b))
    kept = rng.random((width, b)) >= p  # P(kept) = 1 - p
    src = np.broadcast_to(np.arange(width)[:, None], (width, b))
    return src[kept], targets[kept]


def forward_reach(layers: Sequence[Links], width: int) -> np.ndarray:
    """Reached units, bool (len(layers) + 1, width): row l is reached from a fully active row 0."""
    reached = np.zeros((len(layers) + 1, width), dtype=bool)
    reached[0] = True
    for i, (src, dst) in enumerate(layers):
        reached[i + 1, dst[reached[i, src]]] = True
    return reached


def backward_reach(layers: Sequence[Links], width: int) -> np.ndarray:
    """Units that reach the last row, bool (len(layers) + 1, width) (row L itself fully active)."""
    reaches = np.zeros((len(layers) + 1, width), dtype=bool)
    reaches[-1] = True
    for i in range(len(layers) - 1, -1, -1):
        src, dst = layers[i]
        reaches[i, src[reaches[i + 1, dst]]] = True
    return reaches


def on_path_fraction(layers: Sequence[Links], width: int, row: int) -> float:
    """Fraction of row ``row``'s units on some path from row 0 to the last row."""
    fwd = forward_reach(layers[:row], width)[-1]
    bwd = backward_reach(layers[row:], width)[0]
    return float((fwd & bwd).mean())


def _rng(*key: int) -> np.random.Generator:
    # One independent stream per (experiment, parameters, seed): results do not depend on run order.
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def simulate_random_mask(c: float, width: int, depth: int, seed: int) -> np.ndarray:
    """Forward surviving fraction at every depth 0..depth of one seeded layered random mask, shape (depth + 1,)."""
    rng = _rng(1, seed, width, round(c * 1_000_000))
    layers = [random_mask_links(c, width, rng) for _ in range(_check_int(depth, "depth", 1))]
    return forward_reach(layers, width).mean(axis=1)


def simulate_random_mask_paths(c: float, width: int, depths: Sequence[int], seed: int) -> tuple[np.ndarray, list[float]]:
    """(forward fractions up to max(depths), on-path fraction of the middle row of the first d layers per d)."""
    rng = _rng(1, seed, width, round(c * 1_000_000))  # same stream as simulate_random_mask: same graphs
    layers = [random_mask_links(c, width, rng) for _ in range(max(depths))]
    frac = forward_reach(layers, width).mean(axis=1)
    return frac, [on_path_fraction(layers[:d], width, d // 2) for d in depths]


def simulate_fan_out(b: int, p: float, width: int, depth: int, seed: int) -> np.ndarray:
    """Forward surviving fraction at every depth 0..depth of one seeded fan-out-b network, shape (depth + 1,)."""
    rng = _rng(2, seed, width, b, round(p * 1_000_000))
    layers = [fan_out_links(b, p, width, rng) for _ in range(_check_int(depth, "depth", 1))]
    return forward_reach(layers, width).mean(axis=1)


# --- p_c from finite depth ------------------------------------------------------------------------


def crossing(ps: Sequence[float], rho_half: Sequence[float], rho_full: Sequence[float], depth: int) -> float | None:
    """p where depth·ρ_depth(p) first falls to (depth//2)·ρ_{depth//2}(p), linearly interpolated.

    ``ps`` ascending; ``rho_half`` and ``rho_full`` the surviving fractions at depths depth//2 and depth.
    None when the difference never changes sign from positive to non-positive on the grid.
    """
    found = _first_drop(ps, rho_half, rho_full, depth)
    if found is None:
        return None
    (p0, p1), (d0, d1) = found
    return p0 + (p1 - p0) * d0 / (d0 - d1)


def _first_drop(
    ps: Sequence[float], rho_half: Sequence[float], rho_full: Sequence[float], depth: int
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """((p_i-1, p_i), (D_i-1, D_i)) for the first i with D_i-1 > 0 >= D_i, D = L·ρ_L - (L/2)·ρ_{L/2}."""
    x = np.asarray(ps, dtype=float)
    d = depth * np.asarray(rho_full, dtype=float) - (depth // 2) * np.asarray(rho_half, dtype=float)
    if x.ndim != 1 or d.shape != x.shape or np.any(np.diff(x) <= 0):
        raise SparseflowError(f"crossing needs ascending ps and curves of the same length, got {x.shape} and {d.shape}")
    for i in range(1, len(x)):
        if d[i - 1] > 0 >= d[i]:
            return (float(x[i - 1]), float(x[i])), (float(d[i - 1]), float(d[i]))
    return None


def fan_out_curves(b: int, ps: Sequence[float], width: int, depth: int, seeds: Sequence[int]) -> np.ndarray:
    """Surviving fractions at every depth, shape (len(seeds), len(ps), depth + 1)."""
    return np.array([[simulate_fan_out(b, float(p), width, depth, s) for p in ps] for s in seeds])


@dataclass(frozen=True)
class CriticalScan:
    """Surviving fractions of the fan-out-b model over a grid of pruned fractions, and p_c estimated from them.

    ``rho_half`` / ``rho_full``: shape (seeds, len(ps)), at depths depth//2 and depth. ``estimate``: the
    crossing of the seed-mean curves; ``per_seed``: the crossing of each seed's curves (None: no crossing).
    """

    b: int
    width: int
    depth: int
    seeds: tuple[int, ...]
    ps: tuple[float, ...]
    rho_half: np.ndarray
    rho_full: np.ndarray
    estimate: float | None
    per_seed: tuple[float | None, ...]

    @property
    def theory(self) -> float:
        return critical_prune_fraction(self.b)


def critical_scan(
    b: int, *, width: int, depth: int, seeds: Sequence[int], coarse: float = 0.05, fine: float = 0.005
) -> CriticalScan:
    """Scan p on a coarse grid (0, coarse, ..., < 1), then on a fine grid over the coarse bracket where the
    seed-mean L·ρ_L - (L/2)·ρ_{L/2} first turns non-positive (widened by one coarse step each side), and
    estimate p_c by :func:`crossing` on the union of both grids."""
    depth = _check_int(depth, "depth", 2)
    if not seeds:
        raise SparseflowError("critical_scan needs at least one seed")
    grid = [round(k * coarse, 10) for k in range(int(math.ceil(1 / coarse)))]
    curves = {p: fan_out_curves(b, [p], width, depth, seeds)[:, 0] for p in grid}  # p -> (seeds, depth+1)

    m = np.array([curves[p].mean(axis=0) for p in grid])
    bracket = _first_drop(grid, m[:, depth // 2], m[:, depth], depth)
    if bracket is not None:  # refine over the bracket and one coarse step either side, so each seed's
        lo = bracket[0][0] - coarse  # own crossing (which noise may move across a coarse point) is resolved too
        for k in range(1, 3 * int(round(coarse / fine))):
            p = round(lo + k * fine, 10)
            if 0 <= p < 1 and p not in curves:
                curves[p] = fan_out_curves(b, [p], width, depth, seeds)[:, 0]
    ps = sorted(curves)
    stack = np.stack([curves[p] for p in ps], axis=1)  # (seeds, len(ps), depth+1)
    mean = stack.mean(axis=0)  # (len(ps), depth+1)
    estimate = crossing(ps, mean[:, depth // 2], mean[:, depth], depth)
    per_seed = tuple(crossing(ps, stack[i, :, depth // 2], stack[i, :, depth], depth) for i in range(len(seeds)))
    return CriticalScan(
        b, width, depth, tuple(seeds), tuple(ps), stack[:, :, depth // 2], stack[:, :, depth], estimate, per_seed
    )
