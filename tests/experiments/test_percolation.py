"""Percolation: theory against closed forms and root finding, Monte Carlo against theory and brute force,
the p_c estimator on simulated data, the training sweep's connectivity, and the CLI contract."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

from sparseflow.errors import SparseflowError
from sparseflow.experiments.collapse.run import has_path
from sparseflow.experiments.percolation.theory import (
    backward_reach,
    critical_prune_fraction,
    critical_scan,
    crossing,
    fan_out_links,
    forward_reach,
    mean_field_fractions,
    on_path_fraction,
    random_mask_links,
    simulate_fan_out,
    simulate_random_mask,
    surviving_fraction,
)
from sparseflow.experiments.percolation.train import reached_fractions
from conftest import RunCli, criteria_exit


# --- theory -----------------------------------------------------------------------------------


@given(st.floats(min_value=1.001, max_value=50))
@settings(max_examples=60, deadline=None)
def test_fixed_point_lambert_w_equals_root_finding(c: float) -> None:
    # Oracle: brentq on g(ρ) = ρ - 1 + exp(-cρ), bracketed away from the trivial root 0.
    root = brentq(lambda r: r - 1 + math.exp(-c * r), 1e-9 if c > 1.01 else 1e-6, 1.0, xtol=1e-14)
    rho = surviving_fraction(c)
    assert rho == pytest.approx(root, abs=1e-9)
    assert rho == pytest.approx(1 - math.exp(-c * rho), abs=1e-12)


def test_fixed_point_known_values_and_subcritical() -> None:
    assert surviving_fraction(2.0) == pytest.approx(0.7968121300200199, abs=1e-12)  # 1 + W(-2e^-2)/2
    # ρ = 1/2 needs c with 1/2 = 1 - e^{-c/2}: c = 2 ln 2
    assert surviving_fraction(2 * math.log(2)) == pytest.approx(0.5, abs=1e-12)
    for c in (0.0, 0.3, 0.99, 1.0):
        assert surviving_fraction(c) == 0.0
    # near threshold ρ ≈ 2(c - 1)
    assert surviving_fraction(1.001) == pytest.approx(0.002, rel=0.01)
    assert critical_prune_fraction(2) == 0.5 and critical_prune_fraction(10) == pytest.approx(0.9)
    with pytest.raises(SparseflowError, match="fan-out b"):
        critical_prune_fraction(0)
    with pytest.raises(SparseflowError, match="mean fan-in"):
        surviving_fraction(-1.0)
    with pytest.raises(SparseflowError, match="mean fan-in"):
        surviving_fraction(float("nan"))


def test_mean_field_iterates_converge_to_fixed_point_and_vanish_below_one() -> None:
    assert mean_field_fractions(3.0, 200)[-1] == pytest.approx(surviving_fraction(3.0), abs=1e-12)
    rho = mean_field_fractions(1.0, 1000)
    assert 1000 * rho[-1] == pytest.approx(2.0, rel=0.02)  # critical decay ρ_L ≈ 2/L
    assert mean_field_fractions(0.5, 50)[-1] < 0.5**49


# --- Monte Carlo --------------------------------------------------------------------------------


def _dense(links: tuple[np.ndarray, np.ndarray], width: int) -> torch.Tensor:
    m = torch.zeros(width, width, dtype=torch.bool)  # (out, in) like a Linear weight
    m[torch.as_tensor(links[1]), torch.as_tensor(links[0])] = True
    return m


def test_reach_equals_brute_force_boolean_products() -> None:
    rng = np.random.default_rng(0)
    width = 12
    for c in (0.7, 1.5, 4.0):
        layers = [random_mask_links(c, width, rng) for _ in range(6)]
        masks = [_dense(li, width) for li in layers]
        fwd = forward_reach(layers, width)
        reached = torch.ones(width, dtype=torch.bool)
        for i, m in enumerate(masks):  # oracle: reached_{l+1} = M_l @ reached_l over the booleans
            reached = (m.float() @ reached.float()) > 0
            assert fwd[i + 1].tolist() == reached.tolist()
        assert reached_fractions(masks)[-1] == pytest.approx(fwd[-1].mean())
        assert bool(fwd[-1].any()) == has_path(masks)
        bwd = backward_reach(layers, width)
        # unit u of row 0 reaches the last row iff the product of the masks has a nonzero column u
        prod = torch.eye(width)
        for m in masks:
            prod = (m.float() @ prod).clamp(max=1)
        assert bwd[0].tolist() == (prod.sum(0) > 0).tolist()
        assert on_path_fraction(layers, width, 3) == pytest.approx((forward_reach(layers[:3], width)[-1] & backward_reach(layers[3:], width)[0]).mean())


def test_link_samplers_have_the_right_law() -> None:
    rng = np.random.default_rng(1)
    width = 200
    counts = [len(random_mask_links(3.0, width, rng)[0]) for _ in range(200)]
    assert np.mean(counts) / width == pytest.approx(3.0, rel=0.02)  # mean fan-in c (sd of the mean ~0.3 %)
    src, dst = random_mask_links(3.0, width, rng)
    assert len(set(zip(src.tolist(), dst.tolist()))) == len(src)  # no link drawn twice
    src, dst = fan_out_links(4, 0.25, width, rng)
    assert len(src) / (4 * width) == pytest.approx(0.75, abs=0.05)
    assert np.bincount(src, minlength=width).max() <= 4
    with pytest.raises(SparseflowError, match="exceeds the width"):
        random_mask_links(20.0, 10, rng)
    with pytest.raises(SparseflowError, match="width"):
        random_mask_links(1.0, 0, rng)


@pytest.mark.parametrize("c", [1.5, 3.0, 10.0])
def test_random_mask_matches_fixed_point(c: float) -> None:
    sims = np.array([simulate_random_mask(c, 1024, 20, seed) for seed in range(4)])
    assert sims[:, 20].mean() == pytest.approx(surviving_fraction(c), abs=0.02)
    assert simulate_random_mask(c, 256, 5, 3).tolist() == simulate_random_mask(c, 256, 5, 3).tolist()  # seeded


def test_fan_out_matches_fixed_point_of_b_times_kept() -> None:
    sims = np.array([simulate_fan_out(4, 0.5, 1024, 20, seed) for seed in range(4)])  # c = 4 * 0.5 = 2
    assert sims[:, 20].mean() == pytest.approx(surviving_fraction(2.0), abs=0.02)


def test_subcritical_surviving_fraction_vanishes_with_depth() -> None:
    for c in (0.5, 0.8):
        rho = np.mean([simulate_random_mask(c, 2048, 60, seed) for seed in range(3)], axis=0)
        assert rho[10] > rho[30] >= rho[60]
        assert rho[60] <= 2 / 2048  # at most a unit or two out of 2048 left
        assert rho[4] == pytest.approx(mean_field_fractions(c, 4)[-1], rel=0.1)


# --- p_c from finite depth --------------------------------------------------------------------


def test_crossing_on_mean_field_curves_recovers_threshold() -> None:
    # Oracle: the wide-network iterates, where only the O(log L / L) correction separates the crossing from p_c.
    for b in (2, 4, 10):
        ps = np.linspace(0, 0.99, 199)
        half = [mean_field_fractions(b * (1 - p), 32)[-1] for p in ps]
        full = [mean_field_fractions(b * (1 - p), 64)[-1] for p in ps]
        assert crossing(ps, half, full, 64) == pytest.approx(1 - 1 / b, abs=0.005)
    assert crossing([0.1, 0.2], [0.1, 0.1], [0.2, 0.2], 10) is None  # no sign change
    assert crossing([0.0, 1.0], [0.0, 0.1], [0.1, 0.0], 2) == pytest.approx(0.2 / 0.3)  # D = 0.2 then -0.1
    with pytest.raises(SparseflowError, match="ascending"):
        crossing([0.2, 0.1], [0, 0], [0, 0], 4)


@pytest.mark.parametrize("b", [2, 4, 10])
def test_critical_scan_recovers_one_minus_one_over_b(b: int) -> None:
    scan = critical_scan(b, width=512, depth=32, seeds=(0, 1, 2))
    assert scan.estimate is not None
    assert abs(scan.estimate - (1 - 1 / b)) <= 0.02
    assert list(scan.ps) == sorted(scan.ps) and scan.rho_full.shape == (3, len(scan.ps))


# --- CLI ----------------------------------------------------------------------------------------




def test_cli_small_run_writes_report_and_criteria(tmp_path: Path, run_cli: RunCli) -> None:
    args = ["experiment", "percolation", "--quick", "--json", "--out", str(tmp_path / "r"), "--seeds", "2",
            "--widths", "256", "--depths", "10,20", "--pc-width", "512", "--pc-depth", "24", "--epochs", "2"]
    code, out, _ = run_cli(args)
    result = json.loads(out.strip().splitlines()[-1])
    assert code == criteria_exit(result)
    crit = result["criteria"]
    assert {f"surviving fraction c={c:g}" for c in (1.5, 2, 3, 5, 10)} | {f"p_c b={b}" for b in (2, 4, 10)} <= set(crit)
    assert "accuracy at chance for c < 1" in crit
    for name, v in crit.items():  # pass is computed from value, not hard-coded
        if name.startswith("surviving"):
            assert v["pass"] == (v["value"] <= 0.03)
        if name.startswith("p_c"):
            assert v["value"] == pytest.approx(abs(v["estimate"] - v["theory"]))
    rows = result["random_mask"]
    assert {r["width"] for r in rows} == {256} and {r["depth"] for r in rows} == {10, 20}
    for r in rows:
        assert r["theory"] == pytest.approx(surviving_fraction(r["c"]))
    c_half = [p for p in result["training"]["points"] if p["c"] == 0.5]
    assert c_half and all(0 <= p["reached"] <= 1 for p in c_half)
    for name in ("results.json", "report.md", "surviving.png", "threshold.png", "training.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "r" / "results.json").read_text())["criteria"].keys() == crit.keys()
    assert "| c | width |" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0"], "seeds must be an integer >= 1"),
        (["--widths", "256,abc"], "comma-separated integers"),
        (["--widths", "0"], "--widths must be comma-separated values, each an integer >= 1"),
        (["--widths", "8"], "must be >= the largest mean fan-in"),
        (["--pc-depth", "1"], "--pc-depth must be an integer >= 2"),
        (["--data-dir", "/nonexistent/mnist"], "is not a folder"),
    ],
)
def test_cli_rejects_bad_input(args: list[str], message: str, run_cli: RunCli) -> None:
    code, _, err = run_cli(["experiment", "percolation", "--quick", "--no-train", *args])
    assert code == 2 and "error:" in err and message in err and "Traceback" not in err
