"""Schedules against the papers' formulas at hand-picked steps."""

from __future__ import annotations

import math

import pytest

import sparseflow as sf
from sparseflow.schedules import cosine_drop, cubic, is_update

# Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, here s_i = 0.1, s_f = 0.9,
# t0 = 10, dt = 5, n = 4 (last pruning step 30).
KW = {"initial": 0.1, "final": 0.9, "start": 10, "every": 5, "n": 4}


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (0, 0.1),  # before start: initial
        (9, 0.1),
        (10, 0.1),  # t0: (1 - 0)^3 = 1
        (15, 0.9 - 0.8 * 0.75**3),  # t0 + dt: 0.9 - 0.8 * 0.421875 = 0.5625
        (17, 0.5625),  # between steps: held at the last pruning step's value
        (19, 0.5625),
        (20, 0.9 - 0.8 * 0.5**3),  # 0.8
        (25, 0.9 - 0.8 * 0.25**3),  # 0.8875
        (30, 0.9),  # end
        (31, 0.9),  # after end: final
        (1000, 0.9),
    ],
)
def test_cubic_matches_zhu_gupta(t: int, expected: float) -> None:
    assert cubic(t, **KW) == pytest.approx(expected, abs=1e-15)


def test_cubic_is_monotone_and_rejects_bad_arguments() -> None:
    values = [cubic(t, **KW) for t in range(40)]
    assert all(b >= a - 1e-15 for a, b in zip(values, values[1:]))  # up to rounding at t0
    with pytest.raises(ValueError):
        cubic(3, initial=0.0, final=0.5, start=0, every=0, n=2)
    with pytest.raises(ValueError):
        cubic(3, initial=0.0, final=0.5, start=0, every=1, n=0)


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (0, 0.3),  # (0.3 / 2)(1 + cos 0) = 0.3
        (25, 0.15 * (1 + math.cos(math.pi / 4))),  # 0.2561
        (50, 0.15),  # cos(pi / 2) = 0
        (75, 0.15 * (1 - math.cos(math.pi / 4))),
        (100, 0.0),  # cos(pi) = -1
        (101, 0.0),  # past the end: no more drops
    ],
)
def test_cosine_drop(t: int, expected: float) -> None:
    assert cosine_drop(t, alpha=0.3, end=100) == pytest.approx(expected, abs=1e-15)


def test_is_update() -> None:
    hits = [t for t in range(40) if is_update(t, every=5, start=10, end=30)]
    assert hits == [10, 15, 20, 25, 30]
    assert [t for t in range(8) if is_update(t, every=3)] == [0, 3, 6]
    assert not is_update(33, every=3, end=30) and is_update(30, every=3, end=30)


def test_gmp_follows_the_cubic_schedule_at_its_updates() -> None:
    # end = 32 is rounded down to the last multiple of every after start: n = (32 - 10) // 5 = 4 -> 30
    gmp = sf.GMP(0.9, initial_sparsity=0.1, start=10, end=32, every=5)
    assert gmp.n == 4
    targets = {t: gmp.target_sparsity(t) for t in range(40)}
    assert {t: s for t, s in targets.items() if s is not None} == {
        10: pytest.approx(0.1),
        15: pytest.approx(0.5625),
        20: pytest.approx(0.8),
        25: pytest.approx(0.8875),
        30: pytest.approx(0.9),
    }


def test_magnitude_pruning_prunes_once() -> None:
    mp = sf.MagnitudePruning(0.5, at_step=7)
    assert [t for t in range(20) if mp.target_sparsity(t) is not None] == [7]
