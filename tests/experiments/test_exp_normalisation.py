"""The normalisation experiment: learning-rate rule, data pooling, BN with batch statistics, criteria, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from sparseflow.experiments.normalisation.config import NormConfig
from sparseflow.experiments.normalisation.report import conclusion, report_markdown
from sparseflow.experiments.normalisation.result import Cell, NormResult, bn_minus, t_interval
from sparseflow.experiments.normalisation.run import batch_stats_accuracy, load_data, scaled_lr, train_cell
from sparseflow.training.options import build
from conftest import criteria_exit

DATA = Path("/work/shared/data/fashion-mnist")
needs_data = pytest.mark.skipif(not (DATA / "t10k-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not present")


def test_scaled_lr_is_the_square_root_rule() -> None:
    assert scaled_lr(128, 3e-3, 128) == pytest.approx(3e-3)
    assert scaled_lr(2, 3e-3, 128) == pytest.approx(3e-3 / 8)  # sqrt(2 / 128) = 1/8
    assert scaled_lr(32, 1.0, 8) == pytest.approx(2.0)


def test_estimate_by_hand() -> None:
    # Batch sizes 4 and 8 over 8 images for 3 epochs: 6 steps of (STEP_S + 4 x per-example) and 3 of
    # (STEP_S + 8 x per-example) at 14 x 14, one norm ("group", so no BN evaluation), dense, one seed; plus
    # 10 test images evaluated once per cell (2 cells).
    from sparseflow.experiments.normalisation.config import EVAL_S, EXAMPLE_S, SPARSE_OVERHEAD, STEP_S

    cfg = NormConfig(quick=True, seeds=1, norms=("group",), batch_sizes=(4, 8), variants=("dense",),
                     epochs=3, train_size=8, test_size=10)
    steps = 3 * 2 * (STEP_S + 4 * EXAMPLE_S) + 3 * 1 * (STEP_S + 8 * EXAMPLE_S)
    assert cfg.estimate_s() == pytest.approx(steps + 2 * 10 * EVAL_S)
    two = NormConfig(**{**cfg.__dict__, "seeds": 2})
    assert two.estimate_s() == pytest.approx(2 * cfg.estimate_s())
    sparse = NormConfig(**{**cfg.__dict__, "variants": ("sparse",)})
    assert sparse.estimate_s() == pytest.approx(SPARSE_OVERHEAD * steps + 2 * 10 * EVAL_S)
    # BatchNorm adds, per cell, ceil(10 / b) forward passes of a third of a step and one more pass over the test set.
    bn = NormConfig(**{**cfg.__dict__, "norms": ("batch",)})
    extra = (3 + 2) * STEP_S / 3 + 2 * 10 * EVAL_S
    assert bn.estimate_s() == pytest.approx(cfg.estimate_s() + extra)
    # Full width-16 images (pool 1) cost 4x per example; the fixed part per step does not change.
    full = NormConfig(**{**cfg.__dict__, "pool": 1})
    assert full.estimate_s() == pytest.approx(9 * STEP_S + 4 * (steps - 9 * STEP_S) + 4 * 2 * 10 * EVAL_S)


def test_default_grid_is_the_issue_grid() -> None:
    full = NormConfig()
    assert set(full.norms) == {"batch", "group", "layer", "none"} and full.batch_sizes == (2, 4, 8, 32, 128)
    assert full.variants == ("dense", "sparse") and full.sparsity == 0.9 and full.seeds >= 3
    assert full.estimate_s() <= 40 * 60  # sized for the 40-minute budget of the full run
    quick = build(NormConfig, {}, quick=True)
    assert quick.batch_sizes == full.batch_sizes and quick.seeds == 2 and quick.estimate_s() <= 30


def test_t_interval_by_hand() -> None:
    # n = 2: t(0.975, 1) = 12.7062; sd of (0.8, 0.9) is 0.1 / sqrt(2); half = 12.7062 * sd / sqrt(2) = 0.635.
    mean, half = t_interval([0.8, 0.9])
    assert mean == pytest.approx(0.85) and half == pytest.approx(12.7062047 * 0.05, rel=1e-6)
    # n = 3: t(0.975, 2) = 4.30265; values 1, 2, 3 have sd 1.
    assert t_interval([1.0, 2.0, 3.0]) == pytest.approx((2.0, 4.3026527 / math.sqrt(3)), rel=1e-6)
    assert t_interval([0.7]) == (0.7, 0.0)


def test_batch_stats_accuracy_normalises_each_batch_by_itself() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    bn.running_mean.fill_(5.0)  # running statistics far from the data: eval mode would predict differently
    model = nn.Sequential(bn).eval()
    x, y = torch.randn(12, 3) * torch.tensor([1.0, 3.0, 0.5]), torch.randint(0, 3, (12,))
    expected = 0
    for i in range(0, 12, 4):  # oracle: biased per-batch variance, as BatchNorm uses for normalising
        xb = x[i:i + 4]
        z = (xb - xb.mean(0)) / torch.sqrt(xb.var(0, unbiased=False) + bn.eps)
        expected += int((z.argmax(1) == y[i:i + 4]).sum())
    before = bn.running_mean.clone()
    assert batch_stats_accuracy(model, x, y, 4) == pytest.approx(expected / 12)
    assert torch.equal(bn.running_mean, before) and not model.training  # ran on a copy: model untouched


def _cell(variant: str, norm: str, batch: int, seed: int, acc: float) -> Cell:
    return Cell(variant, norm, batch, seed, acc, None, 0.5, 1e-3, 10, 1.0, 0.1)


def test_criteria_from_hand_made_cells() -> None:
    cfg = NormConfig(seeds=2, norms=("batch", "group", "layer"), batch_sizes=(2, 8, 128), variants=("dense",))
    acc = {("batch", 2): (0.80, 0.82), ("batch", 8): (0.84, 0.84), ("batch", 128): (0.86, 0.84),
           ("group", 2): (0.85, 0.85), ("group", 8): (0.852, 0.854), ("group", 128): (0.848, 0.850),
           ("layer", 2): (0.84, 0.84), ("layer", 8): (0.83, 0.83), ("layer", 128): (0.825, 0.825)}
    cells = tuple(_cell("dense", n, b, s, a[s]) for (n, b), a in acc.items() for s in (0, 1))
    result = NormResult(cfg, cells, 1.0)
    crit = result.criteria()
    bn = crit["dense: BN drop, batch 2 vs 128"]
    assert bn["value"] == pytest.approx(100 * (0.85 - 0.81)) and bn["pass"]
    # paired over seeds: differences (0.86 - 0.80, 0.84 - 0.82) = (6, 2) pp, sd 2 * sqrt(2), half 12.706 * 2
    assert bn["interval_pp"] == pytest.approx([4 - 12.7062047 * 2, 4 + 12.7062047 * 2], rel=1e-6)
    gn = crit["dense: GroupNorm range over batch sizes"]
    assert gn["value"] == pytest.approx(100 * (0.853 - 0.849)) and gn["pass"]
    assert (gn["best_batch"], gn["worst_batch"]) == (8, 128) and gn["control_range_pp"] is None  # no "none" row
    ln = crit["dense: LayerNorm range over batch sizes"]
    assert ln["value"] == pytest.approx(1.5) and not ln["pass"]
    row = next(r for r in result.summary() if (r["norm"], r["batch"]) == ("batch", 128))
    assert (row["min"], row["max"], row["mean"]) == pytest.approx((0.84, 0.86, 0.85))
    assert row["half"] == pytest.approx(12.7062047 * 0.01, rel=1e-6)
    # BatchNorm - GroupNorm at batch 2, paired: (0.80 - 0.85, 0.82 - 0.85) = (-5, -3) pp, sd sqrt(2), half 12.706
    d = next(x for x in bn_minus(result) if (x["norm"], x["batch"]) == ("group", 2))
    assert (d["diff_pp"], d["half_pp"]) == pytest.approx((-4.0, 12.7062047), rel=1e-6)
    assert len(bn_minus(result)) == 2 * 3  # GroupNorm and LayerNorm x 3 batch sizes, one variant
    text = conclusion(result)
    assert "at batch 128 minus at batch 2: +4.0 pp" in text and "LayerNorm 1.5 pp" in text
    assert "LayerNorm computes nothing across the batch" in text and "GroupNorm computes" not in text


def test_quick_scale_reports_the_criteria_as_untestable() -> None:
    """The quick grid (128 images, one epoch: one step at batch 128) cannot resolve 1-3 pp: the criteria carry
    the measured values with "pass": None and the reason, and the report says n/a, not FAIL."""
    quick = build(NormConfig, {}, quick=True)
    cfg = dataclasses.replace(quick, norms=("batch", "layer"), variants=("dense",), batch_sizes=(2, 128))
    acc = {("batch", 2): (0.30, 0.32), ("batch", 128): (0.31, 0.31), ("layer", 2): (0.40, 0.40),
           ("layer", 128): (0.20, 0.20)}
    cells = tuple(dataclasses.replace(_cell("dense", n, b, s, a[s]), batch_stats_accuracy=a[s] if n == "batch" else None)
                  for (n, b), a in acc.items() for s in (0, 1))
    result = NormResult(cfg, cells, 1.0)
    crit = result.criteria()
    assert set(crit) == {"dense: BN drop, batch 2 vs 128", "dense: LayerNorm range over batch sizes"}
    for c in crit.values():
        assert c["pass"] is None and "quick run trains on 128 images for 1 epoch(s) (1 step(s) at batch 128)" in c["note"]
    assert crit["dense: LayerNorm range over batch sizes"]["value"] == pytest.approx(20.0)  # still measured
    text = report_markdown(dataclasses.replace(result, command="sparseflow experiment normalisation --quick"))
    assert "Verdict: not testable at the quick scale" in text and "FAIL" not in text
    assert "| dense: LayerNorm range over batch sizes | +20.00 | max - min of mean acc over batch sizes [2, 128] <= 1 pp | n/a (the quick run" in text
    # The same measurements at the full scale are tested: the LayerNorm range of 20 pp fails.
    full = NormResult(dataclasses.replace(cfg, quick=False, train_size=2048, epochs=4, test_size=None), cells, 1.0)
    assert full.criteria()["dense: LayerNorm range over batch sizes"]["pass"] is False


def test_result_survives_json(tmp_path: Path) -> None:
    cfg = NormConfig(quick=True, seeds=2, norms=("group", "none"), batch_sizes=(2, 8),
                     variants=("sparse",))
    cells = tuple(_cell("sparse", n, b, s, 0.5 + 0.01 * s + 0.001 * b)
                  for n in cfg.norms for b in (2, 8) for s in (0, 1))
    result = NormResult(cfg, cells, 3.5)
    back = NormResult.from_json(json.loads(json.dumps(result.to_json())))
    assert back == result
    crit = back.criteria()["sparse: GroupNorm range over batch sizes"]
    assert crit["value"] == pytest.approx(0.6) and crit["control_range_pp"] == pytest.approx(0.6)


@needs_data
def test_load_data_pools_and_keeps_the_test_subset_fixed() -> None:
    cfg = NormConfig(quick=True, seeds=1, train_size=20, test_size=30, pool=2, batch_sizes=(2, 4))
    a, b = load_data(cfg, DATA, 0), load_data(cfg, DATA, 1)
    assert a.x_train.shape == (20, 1, 14, 14) and a.x_test.shape == (30, 1, 14, 14)
    assert torch.equal(a.x_test, b.x_test) and not torch.equal(a.x_train, b.x_train)
    full = load_data(NormConfig(**{**cfg.__dict__, "pool": 1}), DATA, 0)
    blocks = full.x_train.reshape(20, 1, 14, 2, 14, 2).mean((3, 5))  # oracle: mean of each 2 x 2 block
    assert torch.allclose(a.x_train, blocks, atol=1e-6)


@needs_data
def test_train_cell_sparse_counts() -> None:
    cfg = NormConfig(quick=True, seeds=1, epochs=2, train_size=10, test_size=20, batch_sizes=(2, 4))
    ds = load_data(cfg, DATA, 0)
    cell = train_cell(ds, cfg, "sparse", "group", 4, seed=0)
    assert cell.steps == 2 * math.ceil(10 / 4) and cell.lr == pytest.approx(scaled_lr(4, cfg.lr_ref, cfg.batch_ref))
    assert cell.density == pytest.approx(0.1, abs=1e-3) and cell.batch_stats_accuracy is None
    assert 0.0 <= cell.accuracy <= 1.0 and cell.accuracy * 20 == pytest.approx(round(cell.accuracy * 20))


@needs_data
def test_cli_tiny_run(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stdout, err = run_cli(["experiment", "normalisation", "--data-dir", str(DATA), "--batch-sizes", "2,8",
                                 "--norms", "batch,group", "--variants", "dense", "--epochs", "1", "--train-size", "16",
                                 "--test-size", "32", "--seeds", "2", "--out", str(out), "--json"])
    obj = json.loads(stdout.strip().splitlines()[-1])
    assert code == criteria_exit(obj), err  # not --quick: the criteria are tested (and fail at this size)
    mean = {(r["norm"], r["batch"]): r["mean"] for r in obj["summary"]}
    assert len(obj["summary"]) == 4 and all(r["seeds"] == 2 for r in obj["summary"])
    crit = obj["criteria"]
    assert crit["dense: BN drop, batch 2 vs 8"]["value"] == pytest.approx(100 * (mean["batch", 8] - mean["batch", 2]))
    gn = 100 * abs(mean["group", 8] - mean["group", 2])
    assert crit["dense: GroupNorm range over batch sizes"]["value"] == pytest.approx(gn)
    assert all(r["batch_stats_mean"] is not None for r in obj["summary"] if r["norm"] == "batch")
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "normalisation" and saved["criteria"] == obj["criteria"]
    assert len(saved["cells"]) == 8 and (out / "accuracy.png").stat().st_size > 0
    assert "range (pp)" in (out / "report.md").read_text()


@pytest.mark.slow
@needs_data
def test_cli_quick(run_cli, tmp_path: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "quick"
    code, stdout, err = run_cli(["experiment", "normalisation", "--data-dir", str(DATA), "--quick", "--out", str(out),
                                 "--json"])
    assert code == 0, err
    assert torch.get_num_threads() == threads  # --threads is undone after the run
    obj = json.loads(stdout.strip().splitlines()[-1])
    assert obj["quick"] and len(obj["summary"]) == 2 * 4 * 5 and all(r["seeds"] == 2 for r in obj["summary"])
    assert set(obj["criteria"]) == {f"{v}: {c}" for v in ("dense", "sparse") for c in (
        "BN drop, batch 2 vs 128", "GroupNorm range over batch sizes", "LayerNorm range over batch sizes")}
    mean = {(r["variant"], r["norm"], r["batch"]): 100 * r["mean"] for r in obj["summary"]}
    for v in ("dense", "sparse"):  # recomputed from the table it reports; not testable at this scale
        c = obj["criteria"][f"{v}: BN drop, batch 2 vs 128"]
        assert c["value"] == pytest.approx(mean[v, "batch", 128] - mean[v, "batch", 2])
        assert c["pass"] is None and "the full run tests this" in c["note"]
        ln = [mean[v, "layer", b] for b in (2, 4, 8, 32, 128)]
        c = obj["criteria"][f"{v}: LayerNorm range over batch sizes"]
        assert c["value"] == pytest.approx(max(ln) - min(ln)) and c["pass"] is None
    for name in ("results.json", "report.md", "accuracy.png", "bn_minus.png"):
        assert (out / name).stat().st_size > 0
    code, _, err = run_cli(["report", str(out), "--out", str(tmp_path / "page.html")])
    assert code == 0, err


@pytest.mark.parametrize("args, needle", [
    ([], "--data-dir"),
    (["--data-dir", "/nonexistent/fmnist"], "not a folder"),
    (["--threads", "0"], "--threads"),
    (["--norms", "batch,weird"], "norms"),
    (["--batch-sizes", "2,x"], "--batch-sizes"),
    (["--batch-sizes", "8,2"], "increasing"),
    (["--train-size", "64", "--batch-sizes", "2,128"], "train_size"),
    (["--train-size", "60000", "--epochs", "50"], "--yes"),
])
def test_cli_bad_input(run_cli, args: list[str], needle: str) -> None:
    if args[:1] != ["--data-dir"] and args:
        if not DATA.is_dir():
            pytest.skip("Fashion-MNIST not present")
        args = ["--data-dir", str(DATA), *args]
    code, _, err = run_cli(["experiment", "normalisation", *args])
    assert code == 2 and "error:" in err and needle in err


def test_cli_folder_without_the_files(run_cli, tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    code, _, err = run_cli(["experiment", "normalisation", "--data-dir", str(tmp_path), "--quick"])
    assert code == 2 and "lacks train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz" in err
    assert "train-images-idx3-ubyte.gz," not in err  # the file that is there is not named as missing
