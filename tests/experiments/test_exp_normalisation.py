"""The normalisation experiment: learning-rate schedule, data split, packed training against one network at a
time, BN with batch statistics, convergence and seed criteria, CLI."""

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
from sparseflow.experiments.normalisation import run as norm_run
from sparseflow.experiments.normalisation.config import NormOptions
from sparseflow.experiments.normalisation.result import Cell, NormResult, bn_minus, flatness, t_interval
from sparseflow.experiments.normalisation.run import (batch_stats_accuracy, load_split, lr_at, scaled_lr, train_pack,
                                                      wall_estimate_s)
from sparseflow.training.options import build
from conftest import criteria_exit

DATA = Path("/work/shared/data/fashion-mnist")
needs_data = pytest.mark.skipif(not (DATA / "t10k-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not present")


def test_scaled_lr_is_the_linear_rule() -> None:
    assert scaled_lr(128, 0.2, 128) == pytest.approx(0.2)
    assert scaled_lr(2, 0.2, 128) == pytest.approx(0.2 / 64)
    assert scaled_lr(32, 1.0, 8) == pytest.approx(4.0)


def test_lr_at_warms_up_then_decays_by_cosine() -> None:
    # 10 steps, 4 of warm-up from lr / 10: 0.1, 0.325, 0.55, 0.775 x lr; then cos over the 6 steps left.
    lrs = [lr_at(s, 10, 4, 2.0) for s in range(11)]
    assert lrs[:4] == pytest.approx([0.2, 0.65, 1.1, 1.55])
    assert lrs[4] == pytest.approx(2.0) and lrs[7] == pytest.approx(1.0) and lrs[10] == pytest.approx(0.0)
    assert lrs[5] == pytest.approx(1.0 + math.cos(math.pi / 6))
    assert lr_at(0, 10, 0, 2.0) == pytest.approx(2.0)  # no warm-up: cosine from the first step


def test_estimate_by_hand() -> None:
    # One norm ("group"), batch sizes 4 and 8 over 8 images for 3 epochs, 1 seed x 1 variant = 1 member per pack:
    # 6 steps of (STEP_S + MEMBER_S + 4 x EXAMPLE_S) and 3 of (... 8 x ...), scaled per example by (8 / 16)^2 for
    # width 8 at 14 x 14; evaluation: 3 epochs x 5 validation images + 10 test images per pack.
    from sparseflow.experiments.normalisation.config import BN_OVERHEAD, EVAL_S, EXAMPLE_S, MEMBER_S, STEP_S

    cfg = NormConfig(quick=True, seeds=1, norms=("group",), batch_sizes=(4, 8), variants=("dense",),
                     epochs=3, train_size=8, val_size=5, test_size=10, warmup_epochs=0, width=8)
    sc = 0.25
    train4, train8 = 6 * (STEP_S + MEMBER_S + 4 * EXAMPLE_S * sc), 3 * (STEP_S + MEMBER_S + 8 * EXAMPLE_S * sc)
    ev = (3 * 5 + 10) * EVAL_S * sc
    assert cfg.pack_estimate_s("group", 4) == pytest.approx(train4 + ev)
    assert cfg.estimate_s() == pytest.approx(train4 + train8 + 2 * ev)
    # Two seeds of two variants: four members per pack share the fixed part of each step.
    four = dataclasses.replace(cfg, seeds=2, variants=("dense", "sparse"))
    assert four.pack_estimate_s("group", 4) == pytest.approx(
        6 * (STEP_S + 4 * (MEMBER_S + 4 * EXAMPLE_S * sc)) + 4 * ev)
    # BatchNorm: training costs BN_OVERHEAD times as much; the test set is evaluated twice.
    assert cfg.pack_estimate_s("batch", 4) == pytest.approx(BN_OVERHEAD * train4 + (3 * 5 + 20) * EVAL_S * sc)
    # Two workers: the packs dealt largest first to the less loaded worker.
    grid = dataclasses.replace(cfg, norms=("batch", "group", "layer"), batch_sizes=(4, 8))
    costs = sorted((grid.pack_estimate_s(n, b) for n in grid.norms for b in grid.batch_sizes), reverse=True)
    loads = [0.0, 0.0]
    for c in costs:
        loads[loads.index(min(loads))] += c
    assert wall_estimate_s(grid, 2) == pytest.approx(max(loads)) and wall_estimate_s(grid, 1) == pytest.approx(
        grid.estimate_s())


def test_default_grid_is_the_issue_grid() -> None:
    full = NormConfig()
    assert set(full.norms) == {"batch", "group", "layer", "none"} and full.batch_sizes == (2, 4, 8, 32, 128)
    assert full.variants == ("dense", "sparse") and full.sparsity == 0.9 and full.seeds >= 3
    assert wall_estimate_s(full, NormOptions().workers) <= 60 * 60  # the full run's budget: an hour on 2 cores
    quick = build(NormConfig, {}, quick=True)
    assert quick.batch_sizes == full.batch_sizes and quick.seeds == 2 and quick.estimate_s() <= 30


def test_flatness_by_hand() -> None:
    # 20 evaluations: the window is the last 2 and the one before; the largest |L - L_end| / L_end there.
    loss = [3.0] * 17 + [1.10, 1.05, 1.00]
    assert flatness(loss) == pytest.approx(0.10)
    assert flatness([2.0, 1.0]) == pytest.approx(1.0) and flatness([1.0]) is None
    # 30 evaluations: window 3 (+1), so the value 4 evaluations before the end counts, 5 before does not.
    assert flatness([9.0] * 25 + [1.3, 1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.0)
    assert flatness([9.0] * 26 + [1.3, 1.0, 1.0, 1.0]) == pytest.approx(0.3)


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


def _cell(variant: str, norm: str, batch: int, seed: int, acc: float, flat: float | None = None) -> Cell:
    return Cell(variant, norm, batch, seed, acc, None, 0.5, 1e-3, 10, 1.0, 0.1, flatness=flat)


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
    seeds = crit["seeds: every mean's 95 % half-width"]  # widest: BatchNorm at 2 and 128, 12.706 x 0.01 = 12.7 pp
    assert seeds["value"] == pytest.approx(100 * 12.7062047 * 0.01, rel=1e-6) and seeds["pass"] is False
    assert seeds["widest"] in ("dense batch batch 2", "dense batch batch 128")
    assert "converged: validation loss flat over the last 10 % of training" not in crit  # no curves recorded


def test_convergence_and_seed_criteria() -> None:
    """Convergence is read on each cell's seed-mean validation curve (a network's own epoch-to-epoch noise
    averages out over seeds, a trend does not); the seed criterion on the widest 95 % half-width."""
    cfg = NormConfig(seeds=3, norms=("group",), batch_sizes=(2, 128), variants=("dense",), flat_tol=0.02)
    acc = {2: (0.850, 0.851, 0.852), 128: (0.853, 0.853, 0.854)}
    # batch 2: each seed's curve jitters by 6 % at the end, in different directions: the mean is flat (0.0).
    # batch 128: every seed still falls, the mean by (1.03 - 1.00) / 1.00 over the last 10 % of 10 epochs (+1).
    noisy = [(2.0,) * 8 + (1.06, 1.0), (2.0,) * 8 + (0.94, 1.0), (2.0,) * 8 + (1.0, 1.0)]
    falling = [(2.0,) * 8 + (1.03 + d, 1.0 + d) for d in (0.0, 0.01, -0.01)]
    cells = tuple(dataclasses.replace(_cell("dense", "group", b, s, acc[b][s], flatness((noisy if b == 2 else
                                                                                          falling)[s])),
                                      val_loss=(noisy if b == 2 else falling)[s]) for b in (2, 128) for s in range(3))
    crit = NormResult(cfg, cells, 1.0).criteria()
    conv = crit["converged: validation loss flat over the last 10 % of training"]
    assert conv["value"] == pytest.approx(0.03) and conv["pass"] is False and conv["worst"] == "dense group batch 128"
    assert conv["worst_network"]["network"] == "dense group batch 2 seed 0"  # 0.06: the noisiest single network
    assert conv["worst_network"]["flatness"] == pytest.approx(0.06)
    ok = NormResult(dataclasses.replace(cfg, flat_tol=0.05), cells, 1.0).criteria()
    assert ok["converged: validation loss flat over the last 10 % of training"]["pass"] is True
    # half-widths: values (0.850, 0.851, 0.852) sd 0.001 -> 4.30265 x 0.001 / sqrt(3) = 0.248 pp; (0.853, 0.853,
    # 0.854) sd 0.000577 -> 0.143 pp
    seeds = crit["seeds: every mean's 95 % half-width"]
    assert seeds["value"] == pytest.approx(100 * 4.3026527 * 0.001 / math.sqrt(3), rel=1e-5) and seeds["pass"]
    assert seeds["widest"] == "dense group batch 2"


def test_quick_scale_reports_the_criteria_as_untestable() -> None:
    """The quick grid (128 images, two epochs: two steps at batch 128) cannot resolve 1-3 pp: the criteria carry
    the measured values with "pass": None and the reason, and the report says n/a, not FAIL."""
    quick = build(NormConfig, {}, quick=True)
    cfg = dataclasses.replace(quick, norms=("batch", "layer"), variants=("dense",), batch_sizes=(2, 128))
    acc = {("batch", 2): (0.30, 0.32), ("batch", 128): (0.31, 0.31), ("layer", 2): (0.40, 0.40),
           ("layer", 128): (0.20, 0.20)}
    cells = tuple(dataclasses.replace(_cell("dense", n, b, s, a[s]), batch_stats_accuracy=a[s] if n == "batch" else None)
                  for (n, b), a in acc.items() for s in (0, 1))
    result = NormResult(cfg, cells, 1.0)
    crit = result.criteria()
    assert set(crit) == {"dense: BN drop, batch 2 vs 128", "dense: LayerNorm range over batch sizes",
                         "seeds: every mean's 95 % half-width"}
    for name in ("dense: BN drop, batch 2 vs 128", "dense: LayerNorm range over batch sizes"):
        assert crit[name]["pass"] is None
        assert "quick run trains on 128 images for 2 epoch(s) (2 step(s) at batch 128)" in crit[name]["note"]
    seeds = crit["seeds: every mean's 95 % half-width"]
    assert seeds["pass"] is None and "the quick run has 2 seeds" in seeds["note"]
    assert crit["dense: LayerNorm range over batch sizes"]["value"] == pytest.approx(20.0)  # still measured
    text = report_markdown(dataclasses.replace(result, command="sparseflow experiment normalisation --quick"))
    assert "Verdict: not testable at the quick scale" in text and "FAIL" not in text
    assert "| dense: LayerNorm range over batch sizes | +20 | max - min of mean acc over batch sizes [2, 128] <= 1 pp | n/a (the quick run" in text
    # The same measurements at the full scale are tested: the LayerNorm range of 20 pp fails.
    full = NormResult(dataclasses.replace(cfg, quick=False, train_size=2048, epochs=4, test_size=None), cells, 1.0)
    assert full.criteria()["dense: LayerNorm range over batch sizes"]["pass"] is False


def test_result_survives_json(tmp_path: Path) -> None:
    cfg = NormConfig(quick=True, seeds=2, norms=("group", "none"), batch_sizes=(2, 8),
                     variants=("sparse",))
    cells = tuple(dataclasses.replace(_cell("sparse", n, b, s, 0.5 + 0.01 * s + 0.001 * b, 0.01),
                                      val_loss=(2.0, 1.5, 1.2), val_acc=(0.3, 0.4, 0.5), train_losses=(2.1, 1.6, 1.3))
                  for n in cfg.norms for b in (2, 8) for s in (0, 1))
    result = NormResult(cfg, cells, 3.5)
    back = NormResult.from_json(json.loads(json.dumps(result.to_json())))
    assert back == result
    crit = back.criteria()["sparse: GroupNorm range over batch sizes"]
    assert crit["value"] == pytest.approx(0.6) and crit["control_range_pp"] == pytest.approx(0.6)


@needs_data
def test_load_split_pools_and_holds_out_validation() -> None:
    cfg = NormConfig(quick=True, seeds=1, train_size=20, val_size=12, test_size=30, pool=2, batch_sizes=(2, 4))
    a = load_split(cfg, DATA)
    assert a.x_train.shape == (20, 1, 14, 14) and a.x_val.shape == (12, 1, 14, 14) and a.x_test.shape == (30, 1, 14, 14)
    # the validation images are training-split images the network never trains on: no image in both
    flat_train, flat_val = a.x_train.flatten(1), a.x_val.flatten(1)
    assert not (torch.cdist(flat_val, flat_train).min(1).values < 1e-6).any()
    b = load_split(dataclasses.replace(cfg, train_size=24), DATA)  # a fixed draw: a larger subset extends it
    assert torch.equal(b.x_train[:20], a.x_train) and torch.equal(b.x_test, a.x_test)
    full = load_split(dataclasses.replace(cfg, pool=1), DATA)
    blocks = full.x_train.reshape(20, 1, 14, 2, 14, 2).mean((3, 5))  # oracle: mean of each 2 x 2 block
    assert torch.allclose(a.x_train, blocks, atol=1e-6)


@needs_data
@pytest.mark.parametrize("norm", ["batch", "group"])
def test_packed_training_equals_one_network_at_a_time(norm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pack is a speed-up only: the same cells, curves and accuracies as training each member alone."""
    cfg = NormConfig(quick=True, seeds=2, epochs=2, train_size=16, val_size=16, test_size=32, batch_sizes=(2, 4),
                     warmup_epochs=0.5, width=4)
    split = load_split(cfg, DATA)
    packed = train_pack(split, cfg, norm, 4)
    monkeypatch.setattr(norm_run, "PACK_MAX_BATCH", 0)  # every member alone
    alone = train_pack(split, cfg, norm, 4)
    assert [(c.variant, c.seed) for c in packed] == [("dense", 0), ("dense", 1), ("sparse", 0), ("sparse", 1)]
    for p, a in zip(packed, alone):
        assert (p.variant, p.seed, p.steps, p.lr) == (a.variant, a.seed, 2 * 4, scaled_lr(4, cfg.lr_ref, 128))
        assert p.val_loss == pytest.approx(a.val_loss, rel=1e-4) and p.train_losses == pytest.approx(a.train_losses,
                                                                                                  rel=1e-4)
        assert p.accuracy == pytest.approx(a.accuracy, abs=1 / 32 + 1e-9)  # at most one image on a tie
        assert len(p.val_loss) == 2 and p.flatness == pytest.approx(flatness(p.val_loss))
        assert (p.batch_stats_accuracy is None) == (norm != "batch")
    sparse = [c for c in packed if c.variant == "sparse"]
    assert all(c.density == pytest.approx(0.1, abs=0.01) for c in sparse)
    assert packed[0].val_loss != packed[1].val_loss  # seeds differ


@needs_data
def test_cli_tiny_run(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["experiment", "normalisation", "--data-dir", str(DATA), "--batch-sizes", "2,8", "--norms", "batch,group",
            "--variants", "dense", "--epochs", "2", "--warmup-epochs", "0.5", "--train-size", "16", "--val-size", "16",
            "--test-size", "32", "--seeds", "2", "--width", "4", "--json"]
    code, stdout, err = run_cli([*args, "--workers", "2", "--out", str(out)])  # two worker processes
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
    assert len(saved["cells"]) == 8 and all(len(c["val_loss"]) == 2 for c in saved["cells"])
    assert all((out / f).stat().st_size > 0 for f in ("accuracy.png", "curves.png", "bn_minus.png"))
    assert "range (pp)" in (out / "report.md").read_text() and "curves.png" in (out / "report.md").read_text()
    # one process gives the same networks: the workers change the speed only
    code, stdout, err = run_cli([*args, "--workers", "1", "--out", str(tmp_path / "one")])
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    key = lambda c: (c["norm"], c["batch"], c["seed"])  # noqa: E731
    for a, b in zip(sorted(saved["cells"], key=key), sorted(one["cells"], key=key)):
        assert key(a) == key(b) and a["accuracy"] == b["accuracy"] and a["val_loss"] == pytest.approx(b["val_loss"])


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
        "BN drop, batch 2 vs 128", "GroupNorm range over batch sizes", "LayerNorm range over batch sizes")} | {
        "converged: validation loss flat over the last 10 % of training", "seeds: every mean's 95 % half-width"}
    assert all(c["pass"] is None and c["note"] for c in obj["criteria"].values())  # none testable at this scale
    mean = {(r["variant"], r["norm"], r["batch"]): 100 * r["mean"] for r in obj["summary"]}
    for v in ("dense", "sparse"):  # recomputed from the table it reports; not testable at this scale
        c = obj["criteria"][f"{v}: BN drop, batch 2 vs 128"]
        assert c["value"] == pytest.approx(mean[v, "batch", 128] - mean[v, "batch", 2])
        assert c["pass"] is None and "the full run tests this" in c["note"]
        ln = [mean[v, "layer", b] for b in (2, 4, 8, 32, 128)]
        c = obj["criteria"][f"{v}: LayerNorm range over batch sizes"]
        assert c["value"] == pytest.approx(max(ln) - min(ln)) and c["pass"] is None
    for name in ("results.json", "report.md", "accuracy.png", "bn_minus.png", "curves.png"):
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
    (["--train-size", "50000", "--epochs", "50"], "--yes"),
    (["--epochs", "2", "--warmup-epochs", "2"], "warmup_epochs"),
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
