"""``sparseflow bench training``: the quick run through the command line, its files, and its criteria.

Oracles: every ratio in result.json is the quotient of two timings in the same JSON; every criterion is
recomputed from the cells and memory rows; the optimizer state of the sparse layer is the byte count of its
kept weights and bias (SGD momentum: (nnz + out) x 4 bytes). Never a timing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparseflow.bench.training import Cell, TrainingConfig, TrainingResult, criteria, parse_shape
from sparseflow.errors import SparseflowError

GOAL = "4096x4096 batch 64 1 thread"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from sparseflow.cli import main

    out = tmp_path_factory.mktemp("training") / "run"
    try:
        # the end-to-end runs on the embedded digits, with a small MLP: the machinery, not the speed
        main(["bench", "training", "--quick", "--json", "--out", str(out), "--e2e-hidden", "64,64"])
    except SystemExit as e:
        assert e.code in (0, 1, None), e.code  # a criterion may fail on a busy machine (exit 1)
    return out, json.loads((out / "result.json").read_text())


def _sig(v: float) -> float:
    return float(f"{v:.4g}")


def test_quick_run_writes_its_files_and_ratios_come_from_its_timings(quick) -> None:  # noqa: ANN001
    out, obj = quick
    assert {"result.json", "report.md", "speedup.png"} <= {p.name for p in out.iterdir()}
    assert obj["command"] == "bench training" and obj["quick"] is True and obj["end_to_end"]["dataset"] == "digits"
    assert obj["machine"]["isa"] and obj["machine"]["cores"] >= 1
    cfg = obj["config"]
    assert (cfg["shapes"], cfg["threads"]) == (["4096x4096"], [1])
    linear = [c for c in obj["cells"] if c["kind"] == "linear"]
    convs = [c for c in obj["cells"] if c["kind"] == "conv1x1"]
    assert len(linear) == len(cfg["densities"]) * len(cfg["batches"])
    assert cfg["convs"] == ["1024x256x14"] and len(convs) == len(cfg["densities"])
    for c in convs:  # 1x1 convolutions: against a dense nn.Conv2d; SparseLab has no convolution
        assert (c["out"], c["inp"], c["size"], c["batch"]) == (1024, 256, 14, cfg["conv_batch"])
        assert c["ms"]["sparselab"] is None and c["speedup"]["sparse"] == pytest.approx(c["ms"]["dense"] /
                                                                                        c["ms"]["sparse"])
    for c in obj["cells"]:
        ms = c["ms"]
        assert c["threads"] == 1 and 1 <= c["repeats"] <= cfg["repeats"]
        assert c["auto"] in ("sparse", "dense")
        assert c["auto_ms"] == ms["sparse" if c["auto"] == "sparse" else "masked"]
        for m in ("masked", "sparse", "sparselab"):
            want = None if ms[m] is None else ms["dense"] / ms[m]
            assert c["speedup"][m] == pytest.approx(want), m
        assert c["speedup"]["auto"] == pytest.approx(ms["dense"] / c["auto_ms"])
        assert c["nnz"] == pytest.approx(c["density"] * c["out"] * c["inp"], rel=0.02)
    report = (out / "report.md").read_text()
    assert "Reproduce with: `sparseflow bench training --quick" in report and "ISA" in report
    assert "## Criteria" in report and "threads 1" in report and "End to end: MLP 64-64 on digits" in report
    assert "1x1 convolutions" in report


def test_quick_end_to_end_runs_train_the_same_rigl_in_both_executions(quick) -> None:  # noqa: ANN001
    _, obj = quick
    e2e = obj["end_to_end"]
    runs = {r["run"]: r for r in e2e["runs"]}
    assert [r["run"] for r in e2e["runs"]] == ["dense", "masked", "sparse"] and {r["seed"] for r in runs.values()} == {0}
    dense, masked, sparse = runs["dense"], runs["masked"], runs["sparse"]
    assert dense["density"] == 1.0 and masked["density"] == pytest.approx(0.1, abs=0.01)
    # RigL in sparse execution trains the same network as in dense execution: the same masks, the same accuracy
    # up to float rounding (a couple of test examples at most)
    assert sparse["density"] == masked["density"] and sparse["steps"] == masked["steps"] == dense["steps"]
    assert abs(sparse["test_acc"] - masked["test_acc"]) <= 2 / 360 + 1e-9
    # an MLP 64-64-64-10: 8832 weights and 138 biases; SGD momentum: one float32 per stored parameter
    weights, biases = 64 * 64 + 64 * 64 + 64 * 10, 64 + 64 + 10
    assert dense["param_bytes"] == masked["param_bytes"] == 4 * (weights + biases) == dense["optimizer_bytes"]
    assert sparse["param_bytes"] == sparse["optimizer_bytes"] == 4 * (round(sparse["density"] * weights) + biases)
    for r in e2e["runs"]:
        assert len(r["epoch_s"]) == r["epochs"] == 1 and 0 < r["epoch_s"][0] <= r["wall_s"]
        assert r["train_peak_bytes"] is None or r["train_peak_bytes"] <= r["peak_rss_bytes"]
    rows = {r["run"]: r for r in e2e["summary"]}
    for name in ("masked", "sparse"):
        assert rows[name]["speedup"] == pytest.approx(dense["epoch_s"][0] / runs[name]["epoch_s"][0])
        assert rows[name]["acc_mean"] == pytest.approx(100 * runs[name]["test_acc"])
    crit = obj["criteria"]
    speed = next(v for k, v in crit.items() if k.startswith("end to end") and "epoch" in k)
    acc = next(v for k, v in crit.items() if k.startswith("end to end") and "accuracy" in k)
    assert speed["value"] == _sig(rows["sparse"]["speedup"]) and speed["pass"] is None and "digits" in speed["note"]
    assert acc["value"] == _sig(abs(rows["sparse"]["acc_mean"] - rows["masked"]["acc_mean"]))
    assert acc["pass"] is None


def test_quick_criteria_follow_from_the_json(quick) -> None:  # noqa: ANN001
    _, obj = quick
    crit, cells = obj["criteria"], obj["cells"]
    for name, c in crit.items():
        assert set(c) >= {"value", "target", "pass"}, name
        if c["pass"] is None:  # why, and no value where nothing was measured (those judged at full scale only
            # have one)
            assert c["note"] and (c["value"] is None or name.startswith(("end to end", "auto"))), name
    for d in (0.1, 0.05):
        cell = next(c for c in cells if (c["out"], c["inp"], c["density"], c["batch"]) == (4096, 4096, d, 64))
        speedup = cell["ms"]["dense"] / cell["ms"]["sparse"]
        assert crit[f"{GOAL} density {d:g}: sparse vs dense"]["value"] == _sig(speedup)
        lab = crit[f"{GOAL} density {d:g}: sparse vs SparseLab"]
        if cell["ms"]["sparselab"] is None:
            assert lab["pass"] is None and "sparselab" in lab["note"]
        else:
            assert lab["value"] == _sig(cell["ms"]["sparselab"] / cell["ms"]["sparse"])
            assert lab["pass"] == (cell["ms"]["sparselab"] / cell["ms"]["sparse"] > 1)
    worst = min(c["ms"]["dense"] / c["auto_ms"] for c in cells)
    assert crit["auto vs dense, worst cell"]["value"] == _sig(worst)
    assert crit["auto vs dense, worst cell"]["pass"] is None  # judged over the full grid only
    assert "quick" in crit["auto vs dense, worst cell"]["note"]
    for row in obj["memory"]:
        cell = next(c for c in cells if (c["out"], c["inp"], c["density"]) == (row["out"], row["inp"], row["density"]))
        assert row["sparse_ratio"] == pytest.approx(row["sparse_bytes"] / row["dense_bytes"])
        if row["optimizer"] == "sgd":  # one momentum buffer per kept weight and per bias entry, float32
            assert row["sparse_bytes"] == (cell["nnz"] + row["out"]) * 4
            assert row["dense_bytes"] == (row["out"] * row["inp"] + row["out"]) * 4
    sgd = next(r for r in obj["memory"] if r["optimizer"] == "sgd" and r["density"] == 0.1)
    state = crit["optimizer state at density 0.1, SGD momentum: sparse vs dense"]
    assert state["value"] == _sig(sgd["sparse_ratio"]) and state["pass"] == (sgd["sparse_ratio"] <= 0.2)


def _cell(d: float, b: int, t: int, ms: dict, auto: str = "sparse", shape=(4096, 4096)) -> Cell:  # noqa: ANN001
    full = {"dense": None, "masked": None, "sparse": None, "sparselab": None} | ms
    return Cell(*shape, d, int(d * shape[0] * shape[1]), b, t, 3, full, auto, 0.1)


def test_criteria_are_computed_not_given() -> None:
    cells = [_cell(0.1, 64, 1, {"dense": 100.0, "masked": 110.0, "sparse": 40.0, "sparselab": 50.0}),
             _cell(0.05, 64, 1, {"dense": 100.0, "masked": 105.0, "sparse": 30.0}),
             _cell(0.2, 256, 2, {"dense": 100.0, "masked": 104.0, "sparse": 120.0}, auto="dense")]
    result = TrainingResult(TrainingConfig(), cells, [])
    crit = criteria(result)
    assert crit[f"{GOAL} density 0.1: sparse vs dense"] == {"value": 2.5, "target": ">= 2.5x", "pass": True}
    assert crit[f"{GOAL} density 0.05: sparse vs dense"]["pass"] is False  # 3.33x < 4x
    assert crit[f"{GOAL} density 0.1: sparse vs SparseLab"]["value"] == 1.25
    lab = crit[f"{GOAL} density 0.05: sparse vs SparseLab"]
    assert lab["pass"] is None and "sparselab is not installed" in lab["note"]
    auto = crit["auto vs dense, worst cell"]  # the masked path auto picked at density 0.2: 100 / 104
    assert auto["value"] == _sig(100 / 104) and auto["pass"] is True and "density 0.2" in auto["cell"]
    state = crit["optimizer state at density 0.1, SGD momentum: sparse vs dense"]
    assert state["pass"] is None and "--densities" in state["note"]
    small = criteria(TrainingResult(TrainingConfig(), [_cell(0.1, 64, 1, {"dense": 1.0, "masked": 1.2, "sparse": 2.0},
                                                             auto="dense", shape=(64, 64))], []))
    assert small[f"{GOAL} density 0.1: sparse vs dense"]["pass"] is None
    assert small["auto vs dense, worst cell"]["pass"] is False  # 1 / 1.2


def test_shapes_parse_and_bad_values_are_refused() -> None:
    assert parse_shape("3072x768") == (3072, 768) and parse_shape(" 8X4 ") == (8, 4)
    for bad in ("4096", "0x4", "ax4", "4x4x4"):
        with pytest.raises(SparseflowError, match="OUTxIN"):
            parse_shape(bad)
    with pytest.raises(SparseflowError, match="twice"):
        TrainingConfig(shapes=("8x4", "8X4"))


@pytest.mark.parametrize("args, needle", [
    (["--shapes", "4096"], "'4096' is not OUTxIN"),
    (["--densities", "0.1,1.5"], "--densities"),
    (["--batches", "16,0"], "--batches"),
    (["--threads", "0"], "--threads"),
    (["--convs", "256x64"], "'256x64' is not OUTxINxSIZE"),
    (["--repeats", "0"], "--repeats must be an integer >= 1, got 0"),
    (["--out", "/dev/null/x"], "--out"),
])
def test_bad_options_are_one_error_line(run_cli, args: list[str], needle: str) -> None:  # noqa: ANN001
    code, out, err = run_cli(["bench", "training", "--quick", *args])
    assert code == 2, err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_explicit_options_win_over_quick(run_cli) -> None:  # noqa: ANN001
    code, out, err = run_cli(["bench", "training", "--quick", "--json", "--shapes", "64x32", "--densities", "0.5",
                              "--batches", "4", "--repeats", "1", "--no-end-to-end", "--convs", "32x16x4"])
    assert code in (0, 1), err
    obj = json.loads(out.strip().splitlines()[-1])
    assert obj["config"]["shapes"] == ["64x32"] and obj["config"]["threads"] == [1] and obj["config"]["repeats"] == 1
    assert [(c["kind"], c["out"], c["inp"], c["density"], c["batch"]) for c in obj["cells"]] == [
        ("linear", 64, 32, 0.5, 4), ("conv1x1", 32, 16, 0.5, 8)]
    assert obj["command_line"] == ("sparseflow bench training --quick --shapes 64x32 --densities 0.5 --batches 4 "
                                   "--convs 32x16x4 --repeats 1 --no-end-to-end")
    assert obj["end_to_end"]["runs"] == []


def _e2e_rows(dense_s: float, sparse_s: float, masked_acc: list[float], sparse_acc: list[float]) -> list[dict]:
    rows = []
    for seed, (a, b) in enumerate(zip(masked_acc, sparse_acc)):
        for run, t, acc in (("dense", dense_s, 0.99), ("masked", dense_s * 1.1, a), ("sparse", sparse_s, b)):
            rows.append({"run": run, "seed": seed, "epoch_s": [t, t], "test_acc": acc, "density": 0.1,
                         "param_bytes": 1, "optimizer_bytes": 1, "train_peak_bytes": 1, "peak_rss_bytes": 2})
    return rows


def test_end_to_end_criteria_are_computed_and_judged_only_at_full_scale_on_mnist() -> None:
    key = "end to end, RigL MLP 4096-4096 at 0.9"
    full = TrainingResult(TrainingConfig(), [], [], end_to_end=_e2e_rows(100.0, 40.0, [0.97, 0.96, 0.98],
                                                                         [0.972, 0.961, 0.98]), dataset="mnist")
    crit = criteria(full)
    assert crit[f"{key}: epoch, sparse execution vs dense training"] == {"value": 2.5, "target": ">= 2x",
                                                                          "pass": True}
    gap = crit[f"{key}: accuracy, sparse vs dense execution (pp)"]  # means 97.1 and 97.1(1): 0.1 pp
    assert gap["value"] == _sig(abs(100 * (0.972 + 0.961 + 0.98) / 3 - 100 * (0.97 + 0.96 + 0.98) / 3))
    assert gap["pass"] is True
    slow = criteria(TrainingResult(TrainingConfig(), [], [], end_to_end=_e2e_rows(100.0, 60.0, [0.97] * 3,
                                                                                   [0.975] * 3), dataset="mnist"))
    assert slow[f"{key}: epoch, sparse execution vs dense training"]["pass"] is False  # 1.67x
    assert slow[f"{key}: accuracy, sparse vs dense execution (pp)"]["pass"] is False  # 0.5 pp
    one_seed = criteria(TrainingResult(TrainingConfig(e2e_seeds=1), [], [],
                                       end_to_end=_e2e_rows(100.0, 40.0, [0.97], [0.97]), dataset="mnist"))
    assert one_seed[f"{key}: epoch, sparse execution vs dense training"]["pass"] is True
    assert one_seed[f"{key}: accuracy, sparse vs dense execution (pp)"]["pass"] is None
    digits = criteria(TrainingResult(TrainingConfig(), [], [], end_to_end=_e2e_rows(100.0, 40.0, [0.9] * 3,
                                                                                     [0.9] * 3), dataset="digits"))
    assert all(v["pass"] is None and "MNIST" in v["note"] for k, v in digits.items() if k.startswith(key))
    off = criteria(TrainingResult(TrainingConfig(end_to_end=False), [], []))
    assert all(v["pass"] is None and "--no-end-to-end" in v["note"] for k, v in off.items() if k.startswith(key))


def test_a_full_run_without_mnist_is_refused_before_anything_is_timed(run_cli) -> None:  # noqa: ANN001
    code, out, err = run_cli(["bench", "training", "--shapes", "64x32", "--densities", "0.5", "--batches", "4"])
    assert code == 2 and "--data-dir" in err and "--no-end-to-end" in err and "Traceback" not in err
