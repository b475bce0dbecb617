"""The regularisation experiment: statistics and criteria against hand computations, the MNIST-1D pool
against the mnist1d package, the residual MLP against explicit matrix products, batches against counts,
and the CLI writing results.json, report.md and figures."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseflow.errors import SparseflowError
from sparseflow.analysis.stats import t_interval
from sparseflow.experiments.regularisation.config import RegConfig
from sparseflow.experiments.regularisation.run import RegResult, criteria
from sparseflow.experiments.regularisation.stats import gap, tied, trend
from sparseflow.experiments.regularisation.train import Cell, ResidualMLP, batch_indices, mnist1d_pool, train_cell
from sparseflow.training.options import build
from sparseflow.training.rundir import read_run
from conftest import criteria_exit


def test_t_interval_by_hand() -> None:
    # mean 3, sd sqrt(2.5); t(0.975, 4) = 2.7764 (any t table): half = 2.7764 * 1.5811 / sqrt(5) = 1.9632
    mean, half = t_interval([1, 2, 3, 4, 5])
    assert mean == 3.0 and half == pytest.approx(2.7764 * math.sqrt(2.5) / math.sqrt(5), rel=1e-4)
    with pytest.raises(ValueError):
        t_interval([1.0])


def _acc(means: list[list[float]], noise: list[float]) -> np.ndarray:
    """(sizes, sparsities, seeds): every cell is its mean plus the same per-seed offsets (sum 0)."""
    return np.array([[[m + e for e in noise] for m in row] for row in means])


SP = (0.0, 0.5, 0.9)


def test_trend_best_falls_with_data() -> None:
    acc = _acc([[0.30, 0.33, 0.35], [0.60, 0.63, 0.61], [0.80, 0.79, 0.70]], [0.0, 0.01, -0.01])
    tr = trend(acc, (500, 4000, 16000), SP)
    assert tr == {"best_sparsity": [0.9, 0.5, 0.0], "raw_increases": [], "significant_increases": []}


def test_trend_counts_only_significant_increases() -> None:
    sizes = (1, 2, 3)
    # Size 2: 0.5 beats 0 by 0.2 pp in the mean but the paired differences (+0.012, -0.008) straddle 0.
    noisy = np.array([[[0.5, 0.5], [0.4, 0.4], [0.3, 0.3]],
                      [[0.6, 0.6], [0.612, 0.592], [0.3, 0.3]],
                      [[0.7, 0.7], [0.6, 0.6], [0.5, 0.5]]])
    tr = trend(noisy, sizes, SP)
    assert tr["best_sparsity"] == [0.0, 0.5, 0.0] and tr["raw_increases"] == [2] and tr["significant_increases"] == []
    # A best that creeps up (0 -> 0.5 -> 0.9) is compared with the smallest earlier best, 0: at size 3 the
    # paired differences 0.9 - 0 are 0.10 and 0.12, mean 0.11, half 12.706 * 0.01414 / 1.414 = 0.127 > 0.11:
    # not significant; with differences 0.10 and 0.11 (half 0.0635) it is.
    creep = np.array([[[0.5, 0.5], [0.4, 0.4], [0.3, 0.3]],
                      [[0.6, 0.6], [0.612, 0.592], [0.3, 0.3]],
                      [[0.5, 0.5], [0.55, 0.55], [0.60, 0.62]]])
    assert trend(creep, sizes, SP)["significant_increases"] == []
    creep[2, 2] = [0.60, 0.61]
    (inc,) = trend(creep, sizes, SP)["significant_increases"]
    assert inc["size"] == 3 and inc["from"] == 0.0 and inc["to"] == 0.9
    assert inc["diff_pp"] == pytest.approx(10.5) and inc["half_pp"] == pytest.approx(100 * 12.7062 * 0.005, rel=1e-4)


def test_gap_and_tied_by_hand() -> None:
    acc_n = np.array([[0.60, 0.62, 0.61], [0.63, 0.65, 0.64], [0.64, 0.64, 0.67], [0.50, 0.52, 0.51]])
    b, mean, half = gap(acc_n)  # level means 0.61, 0.64, 0.65, 0.51: the best sparse level is index 2
    assert b == 2 and mean == pytest.approx(0.04)
    assert half == pytest.approx(4.3027 * np.std([0.04, 0.02, 0.06], ddof=1) / math.sqrt(3), rel=1e-4)
    # best - level 1: (0.01, -0.01, 0.03), mean 0.01 < half -> tied; best - dense: 0.04 ± 0.0497 -> tied too;
    # best - level 3: 0.14, 0.12, 0.16 -> significantly worse.
    assert tied(acc_n) == [0, 1, 2]


def _result(acc: np.ndarray, sizes: tuple[int, ...], sparsities: tuple[float, ...]) -> RegResult:
    cfg = RegConfig(quick=True, sizes=sizes, sparsities=sparsities, seeds=acc.shape[2])
    cells = tuple(Cell(n, s, seed, float(acc[i, j, k]), 1.0, 0.0, 0.0) for i, n in enumerate(sizes)
                  for j, s in enumerate(sparsities) for k, seed in enumerate(range(cfg.seeds)))
    return RegResult(cfg, cells)


def test_criteria_follow_the_measurements() -> None:
    sizes = (500, 4000, 16000)
    good = _result(_acc([[0.30, 0.33, 0.35], [0.60, 0.63, 0.61], [0.80, 0.79, 0.70]], [0, 0.01, -0.01]), sizes, SP)
    assert np.array_equal(good.acc()[1, 1], [0.63, 0.64, 0.62])
    (a, b) = criteria(good).values()
    assert a["pass"] and a["value"] == 0 and a["best_sparsity"] == {"500": 0.9, "4000": 0.5, "16000": 0.0}
    assert b["pass"] and b["value"] == pytest.approx(3.0) and b["best_sparsity"] == 0.5
    assert "N=4000" in list(criteria(good))[1]
    # the opposite trend, and a 1 pp gain at 4000: both fail
    bad = _result(_acc([[0.36, 0.33, 0.30], [0.60, 0.61, 0.55], [0.70, 0.75, 0.80]], [0, 0.01, -0.01]), sizes, SP)
    (a, b) = criteria(bad).values()
    assert not a["pass"] and a["value"] == 2 and [i["size"] for i in a["significant_increases"]] == [4000, 16000]
    assert not b["pass"] and b["value"] == pytest.approx(1.0)


def test_config_checks_and_compare_size() -> None:
    cfg = RegConfig()
    assert cfg.runs() == 6 * 7 * 5 and cfg.compare_size() == 4000
    macs = 40 * 500 + 500 * 500 + 500 * 10
    assert cfg.estimate_s() == pytest.approx(210 * 1500 * 100 * macs * 2.0e-10 + 20000 * 3.5e-4)
    # 2000 and 8000 are equally far from 4000 on a log scale: the smaller wins
    assert RegConfig(quick=True, sizes=(500, 2000, 8000), sparsities=SP, seeds=2).compare_size() == 2000
    for bad in (dict(sizes=(4000, 500)), dict(sparsities=(0.5, 0.9)), dict(seeds=1), dict(sparsities=(0.0, 1.0)),
                dict(steps=0), dict(lr=-1.0)):
        with pytest.raises(SparseflowError):
            build(RegConfig, bad, quick=True)
    with pytest.raises(SparseflowError, match="seeds"):
        build(RegConfig, {"seeds": 1}, quick=True)


def test_batches_are_full_and_cover_every_example_equally() -> None:
    batches = list(batch_indices(10, 4, 5, torch.Generator().manual_seed(0)))  # 20 indices = 2 passes of 10
    assert [len(b) for b in batches] == [4] * 5
    assert torch.bincount(torch.cat(batches), minlength=10).tolist() == [2] * 10
    small = list(batch_indices(3, 100, 2, torch.Generator().manual_seed(0)))  # fewer examples than a batch
    assert [sorted(b.tolist()) for b in small] == [[0, 1, 2], [0, 1, 2]]


def test_residual_mlp_matches_explicit_products_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    model = ResidualMLP(6, 5, 3, torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), state)
    again = ResidualMLP(6, 5, 3, torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    (w1, b1), (w2, b2), (w3, b3) = [(lin.weight, lin.bias) for lin in model.layers]
    assert w1.abs().max() <= 1 / math.sqrt(6) and w2.abs().max() <= 1 / math.sqrt(5)
    x = torch.randn(4, 1, 6, generator=torch.Generator().manual_seed(1))
    h = torch.clamp(x[:, 0] @ w1.T + b1, min=0)
    h = h + torch.clamp(h @ w2.T + b2, min=0)
    torch.testing.assert_close(model(x), h @ w3.T + b3)


def test_pool_is_the_packages_draw_and_the_test_set_ignores_the_training_size() -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    py_state, np_state = random.getstate(), np.random.get_state()
    small, large = mnist1d_pool(25, 40, train_seed=3, test_seed=4), mnist1d_pool(50, 40, train_seed=3, test_seed=4)
    assert random.getstate() == py_state and np.array_equal(np.random.get_state()[1], np_state[1])
    assert small.x_train.shape == (25, 1, 40) and small.x_test.shape == (40, 1, 40) and small.y_train.dtype == torch.int64
    assert torch.equal(small.x_test, large.x_test) and torch.equal(small.y_test, large.y_test)
    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = 30, 1.0, 3  # 25 rounds up to 3 per class
    raw = make_dataset(args)
    random.setstate(py_state)  # make_dataset reseeded the global generators
    np.random.set_state(np_state)
    np.testing.assert_allclose(small.x_train[:, 0].numpy(), raw["x"][:25].astype(np.float32))
    assert small.y_train.tolist() == raw["y"][:25].tolist()
    with pytest.raises(SparseflowError, match="differ"):
        mnist1d_pool(10, 10, train_seed=1, test_seed=1)


def test_train_cell_is_deterministic_and_paired() -> None:
    data = mnist1d_pool(60, 50, train_seed=3, test_seed=4)
    cfg = RegConfig(quick=True, sizes=(20, 60), sparsities=SP, seeds=2, steps=5, hidden=16, batch_size=8)
    a, b = train_cell(data, cfg, 20, 0.9, 1), train_cell(data, cfg, 20, 0.9, 1)
    assert (a.test_acc, a.train_acc, a.final_loss) == (b.test_acc, b.train_acc, b.final_loss)
    assert (a.size, a.sparsity, a.seed) == (20, 0.9, 1) and 0 <= a.test_acc <= 1


def test_cli_tiny_run_writes_results_report_and_figures(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "reg"
    code, stdout, err = run_cli(["experiment", "regularisation", "--sizes", "40,80", "--sparsities", "0,0.5,0.9",
                                 "--seeds", "2", "--steps", "4", "--hidden", "16", "--test-size", "60",
                                 "--out", str(out), "--json"])
    obj = json.loads(stdout.strip().splitlines()[-1])
    assert code == criteria_exit(obj), err
    assert obj["command"] == "experiment regularisation" and obj["out"] == str(out) and "cells" not in obj
    saved = read_run(out, "regularisation")
    assert {p.name for p in out.iterdir()} >= {"results.json", "report.md", "accuracy.png", "gap.png"}
    assert len(saved["cells"]) == 2 * 3 * 2 and saved["config"]["sizes"] == [40, 80]
    # the table is the mean of the cells, and the criteria are what criteria() computes from them
    for row in saved["table"]:
        accs = [c["test_acc"] for c in saved["cells"] if (c["size"], c["sparsity"]) == (row["size"], row["sparsity"])]
        assert row["test_mean"] == pytest.approx(sum(accs) / 2)
    assert set(saved["criteria"]) == {"best sparsity does not increase with data size",
                                      "best sparse beats dense by >= 1.5 pp at N=80"}
    report = (out / "report.md").read_text()
    assert "![test and training accuracy vs sparsity](accuracy.png)" in report and "--sizes 40,80" in report


@pytest.mark.parametrize("args, words", [
    (["--seeds", "1"], "seeds"),
    (["--sparsities", "0.5,0.9"], "dense"),
    (["--sizes", "500,abc"], "--sizes"),
    (["--sizes", "4000,500"], "increasing"),
])
def test_cli_bad_input_exits_2_with_a_clear_message(run_cli, args: list[str], words: str) -> None:
    code, _, err = run_cli(["experiment", "regularisation", "--steps", "1", *args])
    assert code == 2 and "error:" in err and words in err
