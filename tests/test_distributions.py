"""Distributions and counts against hand computations (ERK/ER with and without saturation)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseflow import MaskError, allocate, er, erk, kept_total, uniform
from sparseflow.distributions import check_sparsity

# The 3-layer MLP Linear 10->20, 20->20, 20->5: weight shapes (out, in).
MLP3 = {"l1": (20, 10), "l2": (20, 20), "l3": (5, 20)}  # sizes 200, 400, 100; N = 700


def _mean_density(shapes: dict[str, tuple[int, ...]], dens: dict[str, float]) -> float:
    return sum(dens[n] * math.prod(sh) for n, sh in shapes.items()) / sum(math.prod(sh) for sh in shapes.values())


# --- sparsity values --------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-0.1, 1.0, 1, 1.5, float("nan"), float("inf"), "0.5", None, True, [0.5]])
def test_check_sparsity_rejects(bad: object) -> None:
    with pytest.raises(MaskError, match="sparsity"):
        check_sparsity(bad)
    for dist in (uniform, er, erk):
        with pytest.raises(MaskError):
            dist(MLP3, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [0, 0.0, 0.5, 0.99, 0.999999])
def test_check_sparsity_accepts(good: float) -> None:
    assert check_sparsity(good) == float(good) and isinstance(check_sparsity(good), float)


@pytest.mark.parametrize(
    ("n", "s", "kept"),
    [
        (10, 0.25, 7),  # 2.5 pruned rounds half up to 3
        (10, 0.34, 7),  # 3.4 -> 3 pruned
        (10, 0.36, 6),  # 3.6 -> 4 pruned
        (7, 0.5, 3),  # 3.5 -> 4 pruned
        (100, 0.9, 10),
        (700, 0.0, 700),
        (3, 0.98, 0),
    ],
)
def test_kept_total_rounds_half_up(n: int, s: float, kept: int) -> None:
    assert kept_total(n, s) == kept


# --- uniform ------------------------------------------------------------------------------------------
def test_uniform_plain_and_with_dense_layers() -> None:
    assert uniform(MLP3, 0.7) == {n: pytest.approx(0.3) for n in MLP3}
    # l2 dense (400 weights) at sparsity 0.5: budget 350 - 400 < 0 -> impossible
    with pytest.raises(MaskError, match="l2"):
        uniform(MLP3, 0.5, dense=["l2"])
    # l3 dense (100 weights): the other 600 weights share 350 - 100 = 250 -> density 250/600
    d = uniform(MLP3, 0.5, dense=["l3"])
    assert d == {"l1": pytest.approx(250 / 600), "l2": pytest.approx(250 / 600), "l3": 1.0}
    assert _mean_density(MLP3, d) == pytest.approx(0.5)
    assert uniform(MLP3, 0.5, dense=list(MLP3)) == {n: 1.0 for n in MLP3}


@pytest.mark.parametrize("dist", [uniform, er, erk])
def test_unknown_dense_layer_raises(dist) -> None:
    with pytest.raises(MaskError, match="nope"):
        dist(MLP3, 0.5, dense=["nope"])


# --- ERK ----------------------------------------------------------------------------------------------
def test_erk_hand_computation_without_saturation() -> None:
    # raw_l = sum(shape) / prod(shape):
    #   l1 (20, 10): 30 / 200 = 0.15;  l2 (20, 20): 40 / 400 = 0.10;  l3 (5, 20): 25 / 100 = 0.25
    # kept budget at s = 0.5: 0.5 * 700 = 350
    # eps * (0.15 * 200 + 0.10 * 400 + 0.25 * 100) = eps * (30 + 40 + 25) = eps * 95 = 350
    eps = 350 / 95  # = 3.6842...; largest density 0.25 * eps = 0.921 <= 1, so no layer saturates
    expected = {"l1": 0.15 * eps, "l2": 0.10 * eps, "l3": 0.25 * eps}  # 0.5526, 0.3684, 0.9211
    d = erk(MLP3, 0.5)
    assert d == {n: pytest.approx(v, rel=1e-12) for n, v in expected.items()}
    assert _mean_density(MLP3, d) == pytest.approx(0.5, rel=1e-12)
    # counts: total kept = 700 - floor(0.5 * 700 + 0.5) = 350; ideals 110.53, 147.37, 92.11;
    # floors 110 + 147 + 92 = 349, one unit left for the largest remainder (l1: 0.53)
    assert allocate({n: math.prod(s) for n, s in MLP3.items()}, d, kept_total(700, 0.5)) == {
        "l1": 111,
        "l2": 147,
        "l3": 92,
    }


def test_erk_hand_computation_with_saturation() -> None:
    # s = 0.3: budget 0.7 * 700 = 490, eps = 490 / 95 = 5.158; l3 would get 0.25 * 5.158 = 1.29 > 1,
    # so l3 is made dense and eps recomputed over l1, l2 for what is left:
    #   eps * (0.15 * 200 + 0.10 * 400) = eps * 70 = 490 - 100 = 390  ->  eps = 5.5714
    assert 0.25 * (490 / 95) > 1
    eps = 390 / 70
    assert 0.15 * eps <= 1  # 0.8357: nothing else saturates
    d = erk(MLP3, 0.3)
    assert d == {"l1": pytest.approx(0.15 * eps, rel=1e-12), "l2": pytest.approx(0.10 * eps, rel=1e-12), "l3": 1.0}
    assert _mean_density(MLP3, d) == pytest.approx(0.7, rel=1e-12)
    # counts: total kept 700 - floor(210 + 0.5) = 490; ideals 167.14, 222.86, 100 -> floors 489, l2 gets one
    assert allocate({n: math.prod(s) for n, s in MLP3.items()}, d, 490) == {"l1": 167, "l2": 223, "l3": 100}


def test_erk_with_dense_layer() -> None:
    # l3 dense: eps * (30 + 40) = 0.5 * 700 - 100 = 250  ->  eps = 250 / 70 = 3.5714
    d = erk(MLP3, 0.5, dense=["l3"])
    assert d == {"l1": pytest.approx(0.15 * 250 / 70), "l2": pytest.approx(0.10 * 250 / 70), "l3": 1.0}
    assert _mean_density(MLP3, d) == pytest.approx(0.5)
    with pytest.raises(MaskError):  # the dense l2 alone needs 400 > 0.4 * 700 = 280 kept
        erk(MLP3, 0.6, dense=["l2"])


# --- ER: (n_in + n_out) / (n_in n_out), kernel dimensions ignored ---------------------------------------
CONVNET = {"conv": (8, 3, 3, 3), "fc": (10, 8)}  # sizes 216, 80; N = 296


def test_er_ignores_kernel_dims_hand_computation() -> None:
    # raw: conv (8 + 3) / (8 * 3) = 11/24 = 0.4583 (the 3x3 kernel ignored); fc (10 + 8) / 80 = 0.225
    # s = 0.5: eps * (11/24 * 216 + 0.225 * 80) = eps * (99 + 18) = eps * 117 = 148  ->  eps = 1.2650
    eps = 148 / 117
    d = er(CONVNET, 0.5)
    assert d == {"conv": pytest.approx(11 / 24 * eps, rel=1e-12), "fc": pytest.approx(0.225 * eps, rel=1e-12)}
    assert _mean_density(CONVNET, d) == pytest.approx(0.5, rel=1e-12)
    # ERK would count the kernel: conv raw (8 + 3 + 3 + 3) / 216 = 17/216 instead
    eps_k = 148 / (17 / 216 * 216 + 18 / 80 * 80)  # = 148 / 35
    assert erk(CONVNET, 0.5)["conv"] == pytest.approx(17 / 216 * eps_k, rel=1e-12)


def test_er_hand_computation_with_saturation() -> None:
    # s = 0.1: budget 0.9 * 296 = 266.4; eps = 266.4 / 117 = 2.277; conv would get 11/24 * 2.277 = 1.04 > 1
    assert 11 / 24 * (266.4 / 117) > 1
    # conv dense: eps * 18 = 266.4 - 216 = 50.4  ->  eps = 2.8, fc density 0.225 * 2.8 = 0.63
    d = er(CONVNET, 0.1)
    assert d == {"conv": 1.0, "fc": pytest.approx(0.63, rel=1e-12)}
    assert _mean_density(CONVNET, d) == pytest.approx(0.9, rel=1e-12)


def test_er_accepts_a_vector() -> None:
    # a 1-D parameter (selectable through Targets(include=...)) is treated as (n, 1)
    # raw: w (4 + 4) / 16 = 0.5, b (4 + 1) / 4 = 1.25; eps * (0.5 * 16 + 1.25 * 4) = eps * 13 = 10
    d = er({"w": (4, 4), "b": (4,)}, 0.5)
    assert d == {"w": pytest.approx(0.5 * 10 / 13), "b": pytest.approx(1.25 * 10 / 13)}


# --- properties ---------------------------------------------------------------------------------------
shape_st = st.one_of(
    st.tuples(st.integers(1, 40), st.integers(1, 40)),
    st.tuples(st.integers(1, 16), st.integers(1, 16), st.integers(1, 5), st.integers(1, 5)),
)


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(shape_st, min_size=1, max_size=5),
    sparsity=st.floats(0.0, 0.99, exclude_max=True),
    dist=st.sampled_from([uniform, er, erk]),
)
def test_weighted_mean_density_is_one_minus_sparsity(shapes, sparsity, dist) -> None:
    named = {f"l{i}": sh for i, sh in enumerate(shapes)}
    d = dist(named, sparsity)
    assert list(d) == list(named)
    assert all(0.0 < v <= 1.0 for v in d.values())
    assert _mean_density(named, d) == pytest.approx(1 - sparsity, rel=1e-9, abs=1e-12)
    if dist is not uniform:  # saturated layers aside, density is proportional to the raw score
        free = [n for n in named if d[n] < 1.0]
        raw = {
            n: sum(sh) / math.prod(sh) if dist is erk else (sh[0] + sh[1]) / (sh[0] * sh[1])
            for n, sh in named.items()
        }
        ratios = [d[n] / raw[n] for n in free]
        assert all(r == pytest.approx(ratios[0], rel=1e-9) for r in ratios)
        assert all(d[n] == 1.0 or raw[n] * ratios[0] <= 1.0 + 1e-12 for n in named)


# --- allocate -----------------------------------------------------------------------------------------
def test_allocate_largest_remainder_by_hand() -> None:
    units = {"a": 10, "b": 10, "c": 10}
    # ideals 2.2, 3.7, 5.1: floors 2 + 3 + 5 = 10, one left -> b (remainder 0.7)
    assert allocate(units, {"a": 0.22, "b": 0.37, "c": 0.51}, 11) == {"a": 2, "b": 4, "c": 5}
    # ideals 2.5, 3.5, 5.5: two left, remainders tie -> earlier layers first
    assert allocate(units, {"a": 0.25, "b": 0.35, "c": 0.55}, 12) == {"a": 3, "b": 4, "c": 5}


def test_allocate_respects_limits() -> None:
    # a may keep at most 3: the 2 units it cannot take go to b
    assert allocate({"a": 10, "b": 10}, {"a": 0.5, "b": 0.5}, 10, limit={"a": 3, "b": 10}) == {"a": 3, "b": 7}
    with pytest.raises(MaskError):
        allocate({"a": 10, "b": 10}, {"a": 0.5, "b": 0.5}, 14, limit={"a": 3, "b": 10})
    with pytest.raises(MaskError):
        allocate({"a": 10}, {"a": 1.0}, 11)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 500), min_size=1, max_size=6),
    sparsity=st.floats(0.0, 0.99, exclude_max=True),
    dist=st.sampled_from([uniform, erk]),
)
def test_allocate_total_exact_and_within_one_unit(sizes, sparsity, dist) -> None:
    shapes = {f"l{i}": (n, 1) for i, n in enumerate(sizes)}
    units = {k: n for k, n in zip(shapes, sizes)}
    d = dist(shapes, sparsity)
    total = kept_total(sum(sizes), sparsity)
    counts = allocate(units, d, total)
    assert sum(counts.values()) == total
    assert all(abs(counts[k] - d[k] * units[k]) < 1 + 1e-9 and 0 <= counts[k] <= units[k] for k in units)
