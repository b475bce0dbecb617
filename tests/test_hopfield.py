"""Hopfield: weights against the covariance sum by hand and the ±1 Hebb rule, recall of one and of a few
patterns, the energy under asynchronous updates, cues and overlaps against closed forms, the dilution mask."""

from __future__ import annotations

import itertools

import pytest
import torch

from sparseflow.errors import SparseflowError
import math

import numpy as np

from sparseflow.hopfield import (Hopfield, _recall_probability, _retrieval_state, capacity_theory, corrupt,
                                 optimal_threshold, random_patterns)


def _hand_weights(x: list[list[int]], a: float) -> list[list[float]]:
    n = len(x[0])
    w = [[0.0] * n for _ in range(n)]
    for i, j in itertools.product(range(n), range(n)):
        if i != j:
            w[i][j] = sum((p[i] - a) * (p[j] - a) for p in x) / (n * a * (1 - a))
    return w


def test_weights_are_the_covariance_sum_by_hand() -> None:
    x = [[1, 0, 0, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]  # a = 2/8
    net = Hopfield(8, 0.25)
    net.store(torch.tensor(x))
    torch.testing.assert_close(net.weights, torch.tensor(_hand_weights(x, 0.25)))
    # one pattern at a time gives the same counts; the sparse path (a <= 0.1) the same sums
    inc = Hopfield(8, 0.25)
    for row in x:
        inc.store(torch.tensor([row]))
    assert inc.p == 3 and torch.equal(inc.weights, net.weights)
    xs = random_patterns(30, 60, 0.05, torch.Generator().manual_seed(0)).int().tolist()  # 3 active of 60
    sparse = Hopfield(60, 0.05)
    sparse.store(torch.tensor(xs))
    torch.testing.assert_close(sparse.weights, torch.tensor(_hand_weights(xs, 0.05)), rtol=1e-5, atol=1e-6)


def test_half_coding_is_the_pm1_hebb_network() -> None:
    # a = 1/2: J = (1/N) sum sigma sigma^T with sigma = 2 xi - 1, and the default threshold -alpha/2 is 0 of
    # the ±1 network (h01 = (h_pm - alpha) / 2 for patterns with exactly N/2 active units)
    x = random_patterns(7, 40, 0.5, torch.Generator().manual_seed(1))
    net = Hopfield(40, 0.5)
    net.store(x)
    sigma = 2 * x.float() - 1
    hebb = sigma.T @ sigma / 40
    hebb.fill_diagonal_(0)
    torch.testing.assert_close(net.weights, hebb)
    assert net.threshold() == -7 / 40 / 2
    s = x[:3].float()
    torch.testing.assert_close(s @ net.weights, ((2 * s - 1) @ hebb - 7 / 40) / 2)


def test_patterns_cues_and_overlaps_follow_their_closed_forms() -> None:
    g = torch.Generator().manual_seed(2)
    x = random_patterns(20, 200, 0.1, g)
    assert x.dtype == torch.bool and x.sum(1).tolist() == [20] * 20
    assert torch.equal(x, random_patterns(20, 200, 0.1, torch.Generator().manual_seed(2)))
    net = Hopfield(200, 0.1)
    torch.testing.assert_close(net.overlap(x, x), torch.ones(20))
    # m0 = 0.8: k = round(0.2 * 0.9 * 20) = 4 active units moved -> m = 1 - 4 / (0.9 * 20)
    cues = corrupt(x, 0.8, 0.1, g)
    assert cues.sum(1).tolist() == [20] * 20 and ((cues & ~x).sum(1) == 4).all()
    torch.testing.assert_close(net.overlap(cues, x), torch.full((20,), 1 - 4 / 18))
    # a = 1/2, m0 = 0.8: 10 % of the bits flipped, the ±1 overlap 0.8 exactly
    h = random_patterns(3, 100, 0.5, g)
    ch = corrupt(h, 0.8, 0.5, g)
    assert ((ch != h).sum(1) == 10).all()
    torch.testing.assert_close(Hopfield(100, 0.5).overlap(ch, h), torch.full((3,), 0.8))


@pytest.mark.parametrize("a", [0.5, 0.1])
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_one_stored_pattern_is_recalled_perfectly(a: float, mode: str) -> None:
    g = torch.Generator().manual_seed(3)
    x = random_patterns(1, 300, a, g)
    net = Hopfield(300, a)
    net.store(x)
    r = net.recall(corrupt(x.expand(5, -1), 0.6, a, g), mode=mode)
    assert torch.equal(r.states, x.expand(5, -1)) and r.converged.all()


@pytest.mark.parametrize("a", [0.5, 0.05])
def test_a_few_patterns_at_large_n_are_recalled_exactly(a: float) -> None:
    g = torch.Generator().manual_seed(4)
    for p in (1, 2, 5):
        x = random_patterns(p, 2000, a, g)
        net = Hopfield(2000, a)
        net.store(x)
        r = net.recall(corrupt(x, 0.8, a, g), generator=g)
        assert torch.equal(r.states, x), f"P={p}"
        torch.testing.assert_close(net.overlap(r.states, x), torch.ones(p))


@pytest.mark.parametrize("c", [1.0, 0.5])
def test_energy_never_increases_under_asynchronous_updates(c: float) -> None:
    g = torch.Generator().manual_seed(5)
    x = random_patterns(12, 80, 0.2, g)  # overloaded (alpha 0.15 at a = 0.2 with noise): many updates
    net = Hopfield(80, 0.2, c=c, seed=1)
    net.store(x)
    cues = torch.rand(6, 80, generator=g) < 0.3
    theta = 0.05
    energies = [net.energy(cues, theta)]
    for k in range(1, 30):  # the same update order each time: the k-sweep run extends the (k-1)-sweep run
        r = net.recall(cues, theta=theta, max_sweeps=k, generator=torch.Generator().manual_seed(9))
        energies.append(net.energy(r.states, theta))
    e = torch.stack(energies)
    assert (e[1:] <= e[:-1] + 1e-5).all() and (e[-1] < e[0]).all()
    assert r.converged.all()  # a fixed point: no unit wants to change
    h = r.states.float() @ net.weights
    assert torch.equal(r.states, h > theta) or ((h - theta).abs() < 1e-4)[r.states != (h > theta)].all()


def test_synchronous_recall_ends_at_a_fixed_point_or_a_two_cycle() -> None:
    g = torch.Generator().manual_seed(6)
    x = random_patterns(30, 60, 0.5, g)  # far beyond capacity
    net = Hopfield(60, 0.5)
    net.store(x)
    r = net.recall(torch.rand(8, 60, generator=g) < 0.5, mode="sync", max_sweeps=200)
    s = r.states.float()
    step = lambda v: (v @ net.weights > net.threshold()).float()  # noqa: E731
    assert torch.equal(step(step(s))[~r.converged], s[~r.converged])
    assert torch.equal(step(s)[r.converged], s[r.converged])


def test_dilution_mask_is_symmetric_seeded_and_scales_the_weights() -> None:
    x = random_patterns(10, 300, 0.1, torch.Generator().manual_seed(7))
    full, dil = Hopfield(300, 0.1), Hopfield(300, 0.1, c=0.3, seed=11)
    full.store(x)
    dil.store(x)
    mask = dil.mask
    assert full.mask is None and torch.equal(mask, mask.T) and not mask.diagonal().any()
    # density of the off-diagonal mask ~ Binomial: within 5 standard deviations of 0.3
    pairs = 300 * 299 / 2
    assert abs(mask.triu(1).sum().item() / pairs - 0.3) < 5 * (0.3 * 0.7 / pairs) ** 0.5
    torch.testing.assert_close(dil.weights, full.weights * mask / 0.3)
    again = Hopfield(300, 0.1, c=0.3, seed=11)
    again.store(x)
    assert torch.equal(again.weights, dil.weights)


def test_optimal_threshold_limits() -> None:
    assert optimal_threshold(0.5, 0.1) == -0.05
    # no noise: from a cue of overlap m0 every theta in (-a m0, (1 - a) m0) recalls; the middle is m0 (1 - 2a) / 2
    assert optimal_threshold(0.1, 1e-7, m0=0.8) == pytest.approx(0.8 * 0.8 / 2, abs=0.01)
    # more load, more noise: a sparse network raises its threshold to keep inactive units silent
    assert optimal_threshold(0.02, 1.0) > optimal_threshold(0.02, 0.1)


def test_bad_input_is_refused_with_the_value() -> None:
    with pytest.raises(SparseflowError, match="1.5"):
        Hopfield(100, 1.5)
    with pytest.raises(SparseflowError, match="connectivity"):
        Hopfield(100, 0.1, c=0.0)
    net = Hopfield(10, 0.5)
    with pytest.raises(SparseflowError, match=r"\(P, 10\)"):
        net.store(torch.zeros(3, 9))
    with pytest.raises(SparseflowError, match="0/1"):
        net.store(torch.full((2, 10), 0.5))
    with pytest.raises(SparseflowError, match="'fast'"):
        net.recall(torch.zeros(1, 10), mode="fast")
    with pytest.raises(SparseflowError, match="active units"):
        random_patterns(1, 10, 0.01, torch.Generator())


# --- the mean-field capacity ------------------------------------------------------------------------
def _ags_overlap(alpha: float) -> float:
    """Amit, Gutfreund & Sompolinsky's zero-temperature retrieval overlap of the ±1 network (their eqs. for m,
    C and r, iterated from m = 1): m = erf(m / sqrt(2 alpha r)), C = sqrt(2 / (pi alpha r)) exp(-m^2 / (2 alpha r)),
    r = 1 / (1 - C)^2."""
    m, r = 1.0, 1.0
    for _ in range(5000):
        c = math.sqrt(2 / (math.pi * alpha * r)) * math.exp(-m * m / (2 * alpha * r))
        m, r = math.erf(m / math.sqrt(2 * alpha * r)), 1 / (1 - c) ** 2
    return m


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.13])
def test_half_coding_retrieval_state_is_the_ags_solution(alpha: float) -> None:
    m = _retrieval_state(0.5, alpha, np.array([-alpha / 2]))[0][0]
    assert m == pytest.approx(_ags_overlap(alpha), abs=1e-6)


def test_large_n_capacity_is_ags_at_half_coding_and_rises_slowly_towards_tsodyks_feigelman() -> None:
    assert capacity_theory(0.5) == pytest.approx(0.138, abs=0.002)  # AGS: m jumps from 0.967 to 0 at 0.138
    scaled = [capacity_theory(a) * a * abs(math.log(a)) for a in (0.1, 0.01, 0.001)]
    assert scaled == sorted(scaled) and scaled[-1] < 0.5  # alpha a|ln a| -> 1/2 as a -> 0, from below


def test_finite_n_capacity_grows_to_the_large_n_limit() -> None:
    caps = [capacity_theory(0.05, n, tol=1e-3) for n in (400, 2000, 10000)]
    limit = capacity_theory(0.05)
    assert caps == sorted(caps) and caps[-1] < limit * 1.001
    assert capacity_theory(0.05, 2000, m_min=0.9) > caps[1]  # a looser criterion holds more patterns


def test_recall_probability_is_the_binomial_overlap_law() -> None:
    # Monte Carlo of the same law: K active units each kept with p1, n - K others each on with p0
    n, a, m_min = 400, 0.05, 0.95
    p1, p0 = np.array([0.97, 0.995]), np.array([0.002, 0.0005])
    rng = np.random.default_rng(0)
    k = round(a * n)
    for j in range(2):
        n1, n0 = rng.binomial(k, p1[j], 200_000), rng.binomial(n - k, p0[j], 200_000)
        mc = float(np.mean(n1 / k - n0 / (n - k) >= m_min))
        assert _recall_probability(n, a, p1, p0, m_min)[j] == pytest.approx(mc, abs=4e-3)


def test_capacity_theory_refuses_bad_input() -> None:
    with pytest.raises(SparseflowError, match="a <= 0.5"):
        capacity_theory(0.7)
    with pytest.raises(SparseflowError, match="n = 10"):
        capacity_theory(0.05, 10)
    with pytest.raises(SparseflowError, match="fractions"):
        capacity_theory(0.1, 1000, m_min=1.0)
