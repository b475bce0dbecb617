"""The sparse-initialisation experiment: mean-field theory values, criteria computed from measurements,
both arms sharing mask and draw, and the CLI writing results.json, report.md and figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import criteria_exit

from sparseflow.cli import main
from sparseflow.errors import SparseflowError
from sparseflow.experiments.sparse_init.run import InitConfig, InitResult, Run, _data, criteria, theory_moments, train_one


def test_theory_moments_by_hand() -> None:
    assert theory_moments(1.5, 0.1, 3, "he") == pytest.approx([0.3, 0.03, 0.003])
    assert theory_moments(1.5, 0.1, 3, "sparse") == pytest.approx([3.0, 3.0, 3.0])


def _run(s: float, init: str, acc: float, chi: float) -> Run:
    moments = tuple(2.0 * chi**l for l in range(1, 21))
    return Run(s, init, 0, acc, 1.0, (1.0,), moments, 1.0, False)


def test_criteria_follow_the_measurements() -> None:
    cfg = InitConfig(seeds=1, sparsities=(0.9, 0.98))
    runs = (_run(0.0, "dense", 0.9, 1.0), _run(0.9, "he", 0.1, 0.1), _run(0.9, "sparse", 0.8, 1.0),
            _run(0.98, "he", 0.11, 0.02), _run(0.98, "sparse", 0.5, 1.1))
    crit = criteria(InitResult(cfg, "x", 0.1, 10, runs))
    gap, chance, chi = crit.values()
    assert gap["pass"] and gap["value"]["gap"] == pytest.approx(0.39)
    assert chance["pass"] and chance["value"]["he"] == 0.11
    assert chi["pass"] and chi["value"]["worst relative error"] == pytest.approx(0.1)
    worse = runs[:3] + (_run(0.98, "he", 0.3, 0.05), _run(0.98, "sparse", 0.45, 1.0))
    gap, chance, chi = criteria(InitResult(cfg, "x", 0.1, 10, worse)).values()
    assert not gap["pass"] and not chance["pass"] and not chi["pass"]  # χ 0.05 vs d = 0.02: 150 % off


def test_arms_share_the_mask_and_draw_and_the_variance_follows_theory() -> None:
    cfg = InitConfig(depth=20, width=64, seeds=1, epochs=1, train_size=64, test_size=64)
    ds = _data(cfg)
    he, _ = train_one(ds, cfg, 0.9, "he", 0)
    sp, steps = train_one(ds, cfg, 0.9, "sparse", 0)
    assert steps == 1 and he.input_moment == sp.input_moment
    # per-layer χ: d for masked He, 1 for the per-unit init (geometric mean over 19 hidden layers)
    chi = lambda r: (r.moments[-1] / r.moments[0]) ** (1 / 19)  # noqa: E731
    assert chi(he) == pytest.approx(0.1, rel=0.3) and chi(sp) == pytest.approx(1.0, rel=0.3)


def test_cli_quick_json_writes_results_report_and_figures(tmp_path: Path, capsys) -> None:
    out = tmp_path / "init"
    with pytest.raises(SystemExit) as e:
        main(["experiment", "init", "--quick", "--json", "--width", "32", "--train-size", "128", "--epochs", "1",
              "--out", str(out)])
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (e.value.code or 0) == criteria_exit(obj)  # at this reduced scale a criterion may fail: exit status 1
    assert obj["command"] == "experiment init" and "digits" in obj["dataset"]
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 7  # dense + 3 sparsities x 2 inits, one seed
    for name, c in obj["criteria"].items():
        assert isinstance(c["pass"], bool) and c["target"], name
    gap = obj["criteria"]["sparsity-aware beats He by >= 0.2 at s=0.98"]
    assert gap["pass"] == (gap["value"]["sparse"] - gap["value"]["he"] >= 0.2)
    for f in ("report.md", "accuracy.png", "loss.png", "variance.png"):
        assert (out / f).stat().st_size > 0
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| sparsity |" in (out / "report.md").read_text()


def test_cli_bad_input_is_one_error_line(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["experiment", "init", "--quick", "--width", "0"])
    assert e.value.code == 2 and "width must be an integer >= 1" in capsys.readouterr().err
    with pytest.raises(SparseflowError, match="sparsities"):
        InitConfig(sparsities=(1.5,)).check()
