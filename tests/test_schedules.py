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


# --- schedule values -----------------------------------------------------------------------------------
def test_one_shot_value() -> None:
    s = sf.OneShot(7)
    assert [t for t in range(20) if s.is_update(t)] == [7]
    assert s.sparsity_at(7, 0.5) == 0.5
    assert sf.OneShot() == sf.OneShot(at_step=0) and sf.OneShot().is_update(0)
    with pytest.raises(sf.SparseflowError, match="at_step must be an integer >= 0, got -1"):
        sf.OneShot(-1)


def test_cubic_value_by_hand() -> None:
    # end = 32 rounds down to the last update 30: n = (32 - 10) // 5 = 4, Δt = 5; s_i = 0.1, s_f = 0.9
    s = sf.Cubic(start=10, end=32, every=5, initial_sparsity=0.1)
    assert s.n == 4
    assert [t for t in range(60) if s.is_update(t)] == [10, 15, 20, 25, 30]
    by_hand = {10: 0.1, 15: 0.9 - 0.8 * 0.421875, 20: 0.9 - 0.8 * 0.125, 25: 0.9 - 0.8 * 0.015625, 30: 0.9}
    for t, want in by_hand.items():
        assert s.sparsity_at(t, 0.9) == pytest.approx(want, abs=1e-15)
    assert sf.Cubic(start=0, end=10, every=5).sparsity_at(5, 0.8) == pytest.approx(0.8 - 0.8 * 0.125)  # s_i = 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": 5, "end": 9, "every": 5}, "end - start >= every.*start=5, end=9, every=5"),
        ({"start": 0, "end": 10, "every": 0}, "every must be an integer >= 1, got 0"),
        ({"start": -1, "end": 10, "every": 5}, "start must be an integer >= 0, got -1"),
        ({"start": 0, "end": 10.0, "every": 5}, "end must be an integer"),
        ({"start": 0, "end": 10, "every": 5, "initial_sparsity": 1.0}, "initial_sparsity must be in"),
    ],
)
def test_cubic_value_rejects(kwargs: dict, match: str) -> None:
    with pytest.raises(sf.SparseflowError, match=match):
        sf.Cubic(**kwargs)


def test_cosine_drop_value_by_hand() -> None:
    s = sf.CosineDrop(until=45, update_every=10)  # α = 0.3 by default
    assert [t for t in range(200) if s.is_update(t)] == [10, 20, 30, 40]
    assert s.drop_fraction(15) == pytest.approx(0.15 * 1.5, abs=1e-15)  # cos(π/3) = 1/2
    assert s.drop_fraction(0) == pytest.approx(0.3) and s.drop_fraction(45) == pytest.approx(0.0, abs=1e-17)
    assert s.drop_fraction(46) == 0.0
    started = sf.CosineDrop(until=50, update_every=10, start=5, alpha=1)
    assert [t for t in range(200) if started.is_update(t)] == [5, 15, 25, 35, 45]
    assert started.alpha == 1.0 and isinstance(started.alpha, float)
    assert [t for t in range(100) if sf.CosineDrop(until=50, update_every=100, start=50).is_update(t)] == [50]
    with pytest.raises(sf.SparseflowError, match="until=40 is before the first update at step 45"):
        sf.CosineDrop(until=40, update_every=10, start=45)
    with pytest.raises(sf.SparseflowError, match="alpha.*1.5"):
        sf.CosineDrop(until=40, update_every=10, alpha=1.5)


# --- schedules injected into methods -------------------------------------------------------------------
def test_gmp_is_magnitude_pruning_on_a_cubic_schedule() -> None:
    gmp = sf.GMP(0.9, initial_sparsity=0.1, start=10, end=32, every=5)
    same = sf.MagnitudePruning(0.9, schedule=sf.Cubic(start=10, end=32, every=5, initial_sparsity=0.1))
    assert isinstance(gmp, sf.MagnitudePruning) and gmp.schedule == same.schedule
    assert [gmp.target_sparsity(t) for t in range(40)] == [same.target_sparsity(t) for t in range(40)]
    assert sf.GMP(0.9, schedule=sf.Cubic(start=10, end=32, every=5)).end == 32  # keywords mirror the schedule
    assert sf.MagnitudePruning(0.5, at_step=7).schedule == sf.OneShot(7)
    assert sf.MagnitudePruning(0.5).schedule == sf.OneShot(0)


def test_set_keywords_and_schedule_are_the_same_method() -> None:
    by_keywords = sf.SET(0.9, update_every=25, until=75, start=5, alpha=0.5)
    by_value = sf.SET(0.9, schedule=sf.CosineDrop(until=75, update_every=25, start=5, alpha=0.5))
    assert by_keywords.schedule == by_value.schedule
    assert (by_value.until, by_value.update_every, by_value.start, by_value.alpha) == (75, 25, 5, 0.5)
    assert sf.RigL(0.9, until=175).schedule == sf.CosineDrop(until=175, update_every=100, start=0, alpha=0.3)


def test_replace_keeps_the_schedule() -> None:
    import dataclasses

    gmp = sf.GMP(0.9, initial_sparsity=0.1, start=10, end=32, every=5)
    assert dataclasses.replace(gmp, sparsity=0.8).schedule == gmp.schedule
    rigl = sf.RigL(0.9, update_every=25, until=75)
    assert dataclasses.replace(rigl, seed=3).schedule == rigl.schedule


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: sf.MagnitudePruning(0.5, at_step=3, schedule=sf.OneShot(4)), "at_step=3 disagree"),
        (lambda: sf.MagnitudePruning(0.5, at_step=3, schedule=sf.Cubic(start=0, end=10, every=5)), "at_step=3"),
        (lambda: sf.MagnitudePruning(0.5, schedule=sf.Cubic(start=0, end=10, every=5, initial_sparsity=0.6)),
         "initial_sparsity must be in"),
        (lambda: sf.MagnitudePruning(0.5, schedule=sf.CosineDrop(until=10, update_every=5)), "sparsity_at"),
        (lambda: sf.GMP(0.5, end=10, every=5, schedule=sf.Cubic(start=0, end=20, every=5)), "end=10 disagree"),
        (lambda: sf.GMP(0.5, schedule=sf.OneShot(3)), "cubic schedule"),
        (lambda: sf.SET(0.5, alpha=0.1, schedule=sf.CosineDrop(until=10, update_every=5)), "alpha=0.1"),
        (lambda: sf.RigL(0.5, schedule=sf.OneShot(3)), "drop_fraction"),
        (lambda: sf.SET(0.5, total_steps=5, schedule=sf.CosineDrop(until=10, update_every=5)), "until=10 is beyond"),
    ],
)
def test_schedule_and_keywords_must_agree(make, match: str) -> None:
    with pytest.raises(sf.SparseflowError, match=match):
        make()


def test_any_value_with_the_interface_is_a_schedule() -> None:
    class Twice:  # prune to half the final sparsity at step 2, to all of it at step 4
        def is_update(self, step: int) -> bool:
            return step in (2, 4)

        def sparsity_at(self, step: int, final: float) -> float:
            return final / 2 if step == 2 else final

    method = sf.MagnitudePruning(0.8, schedule=Twice())
    assert [method.target_sparsity(t) for t in range(6)] == [None, None, 0.4, None, 0.8, None]
    assert method.at_step is None
