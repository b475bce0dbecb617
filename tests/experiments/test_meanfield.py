"""experiment meanfield: slope fit, model construction, criteria computed from the runs, the CLI contract."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sparseflow.experiments.meanfield import MeanfieldConfig, run
from sparseflow.experiments.meanfield.run import build, fit_slope, slope_target
from conftest import RunCli, criteria_exit


def test_fit_slope_of_geometric_sequence_is_log_ratio() -> None:
    assert fit_slope([3.0 * 0.1**k for k in range(30)]) == pytest.approx(math.log(0.1), rel=1e-12)
    assert fit_slope([2.0] * 5) == pytest.approx(0.0, abs=1e-12)


def test_slope_target_and_tolerance() -> None:
    assert slope_target(0.1) == pytest.approx((math.log(0.1), 0.05 * math.log(10)))
    assert slope_target(1.0) == pytest.approx((0.0, 0.05 * math.log(2)))  # absolute at s = 1


@pytest.mark.parametrize("init", ["he", "sparse"])
def test_build_density_and_variance(init: str) -> None:
    model = build(512, 3, 0.25, init, seed=0)
    for layer in model.layers:
        w = layer.weight.detach()
        kept = w != 0
        assert float(kept.double().mean()) == pytest.approx(0.25, abs=1 / w.numel())  # exact uniform count
        assert float(layer.bias.detach().abs().max()) == 0.0
        row_sq = w.double().pow(2).sum(1)  # (out,)
        if init == "he":
            # N(0, 2/fan_in) masked at 0.25: mean row sum 0.5. A mask correlated with |w| would show here.
            assert float(row_sq.mean()) == pytest.approx(0.5, rel=0.03)
        else:
            # N(0, 2/k_j) on the k_j kept inputs: every unit's expected row sum is 2.
            # Per unit, not per layer: units with few and with many kept inputs both average 2 (a per-layer
            # scale would give about 1.88 and 2.12 here).
            k = kept.sum(1)
            few = k <= k.median()
            assert float(row_sq[few].mean()) == pytest.approx(2.0, rel=0.03)
            assert float(row_sq[~few].mean()) == pytest.approx(2.0, rel=0.03)


def test_small_run_criteria_follow_from_the_runs() -> None:
    threads = torch.get_num_threads()
    res = run(MeanfieldConfig(width=256, depth=8, seeds=1, densities=(1.0, 0.1)))
    assert torch.get_num_threads() == threads  # restored after running single-threaded
    crit = res.criteria()
    assert set(crit) == {"he_slope_s1", "sparse_spread_s1", "he_slope_s0.1", "sparse_spread_s0.1"}
    for s in (1.0, 0.1):
        slope = res.of("he", s)[0].slope
        target, tol = slope_target(s)
        assert crit[f"he_slope_s{s:g}"]["value"] == slope
        assert crit[f"he_slope_s{s:g}"]["pass"] == (abs(slope - target) <= tol)
        q = res.of("sparse", s)[0].q
        assert crit[f"sparse_spread_s{s:g}"]["value"] == pytest.approx(max(q) / min(q))
    # Mean field at work even at width 256: ln q falls by ln 10 per layer under He init at s = 0.1.
    assert res.of("he", 0.1)[0].slope == pytest.approx(math.log(0.1), rel=0.1)




def test_cli_quick_json_writes_files(tmp_path: Path, run_cli: RunCli) -> None:
    out_dir = tmp_path / "mf"
    code, out, _ = run_cli(["experiment", "meanfield", "--quick", "--json", "--width", "64", "--depth", "6",
                         "--out", str(out_dir)])
    data = json.loads(out.strip().splitlines()[-1])
    assert code == criteria_exit(data)
    assert {p.name for p in out_dir.iterdir()} == {"results.json", "report.md", "variance.png", "chi.png"}
    assert json.loads((out_dir / "results.json").read_text())["criteria"] == data["criteria"]
    assert len(data["criteria"]) == 8 and data["quick"] is True and data["width"] == 64
    for run in data["runs"]:
        assert run["slope"] == pytest.approx(fit_slope(run["q"]), rel=1e-9)
    for s in (1.0, 0.5, 0.1, 0.05):
        spreads = [max(r["q"]) / min(r["q"]) for r in data["runs"] if r["init"] == "sparse" and r["density"] == s]
        assert data["criteria"][f"sparse_spread_s{s:g}"]["pass"] == (max(spreads) <= 2)
    assert "| 0.05 |" in (out_dir / "report.md").read_text()
    assert (out_dir / "variance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_bad_width(run_cli: RunCli) -> None:
    code, _, err = run_cli(["experiment", "meanfield", "--width", "1", "--quick"])
    assert code == 2 and "error:" in err and "--width" in err
