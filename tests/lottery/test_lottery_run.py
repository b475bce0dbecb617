"""Lottery runs on tiny models: masks, rewinding, controls, resume bit-identity, refusals and the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from sparseflow.errors import SparseflowError
from sparseflow.lottery import LotteryJob, criteria, next_mask, run_lottery
from sparseflow.lottery.run import _data
from sparseflow.lottery.trainer import LevelData, train_arm
from sparseflow.mask import Mask
from sparseflow.training.models import build_model
from sparseflow.storage.sequence import load_masks
from sparseflow.training.loop import TrainConfig
from conftest import criteria_exit

JOB = LotteryJob(dataset="digits", hidden=(16,), iterations=40, batch_size=32, eval_every=10, lr=1e-2,
                 target_density=None, levels=2, seeds=(0, 1))


def outputs(out: Path) -> dict:
    """Everything a run leaves that must be reproducible: level records, masks, trained tickets."""
    from sparseflow.io import load_state

    got = {}
    for seed_dir in sorted(out.glob("seed*")):
        for level_dir in sorted(seed_dir.glob("level_*")):
            got[str(level_dir.relative_to(out))] = json.loads((level_dir / "result.json").read_text())
            got[str(level_dir.relative_to(out)) + "/ticket"] = load_state(level_dir / "ticket.safetensors")[0]
        got[seed_dir.name + "/masks"] = load_masks(seed_dir / "masks.sfm")
    return got


def same(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    for k in a:
        if k.endswith("/ticket"):
            assert all(torch.equal(a[k][n], b[k][n]) for n in a[k]), k
        else:
            assert a[k] == b[k], k
    return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ref")
    result = run_lottery(JOB, out)
    return out, {"result": result, "outputs": outputs(out)}


def test_masks_are_nested_pruned_from_the_ticket_and_controls_match_densities(reference) -> None:
    out, ref = reference
    from sparseflow.io import load_state

    masks = load_masks(out / "seed0" / "masks.sfm")
    assert len(masks) == 3 and masks[0].density() == 1.0
    counts = [{"layers.0.weight": 1024, "layers.1.weight": 160}, {"layers.0.weight": 819, "layers.1.weight": 144},
              {"layers.0.weight": 655, "layers.1.weight": 130}]  # 20 % per level, output layer 10 %, by hand
    assert [m.counts() for m in masks] == counts
    for lv in (0, 1):  # M_{L+1} = the largest surviving |w| of level L's trained ticket
        w = load_state(out / "seed0" / f"level_0{lv}" / "ticket.safetensors")[0]
        assert next_mask(masks[lv], w, counts[lv + 1]) == masks[lv + 1]
        assert not any((masks[lv + 1][n] & ~masks[lv][n]).any() for n in masks[lv])
    rec = ref["result"].levels[0][2]
    assert set(rec["arms"]) == {"ticket", "reinit", "random"}
    assert rec["arms"]["random"]["layer_density"] == rec["arms"]["ticket"]["layer_density"]
    assert rec["density"] == pytest.approx((655 + 130) / 1184)
    assert masks != load_masks(out / "seed1" / "masks.sfm")  # each replicate has its own ticket


def test_level_one_ticket_trains_from_the_masked_initialisation(reference, tmp_path: Path) -> None:
    # Oracle: train the seed-0 initialisation, masked with M_1, for the level's steps by hand.
    out, ref = reference
    x, y, val, test, shape, classes = _data(JOB, None)
    model = build_model("mlp", shape, classes, hidden=(16,), seed=0)
    mask = load_masks(out / "seed0" / "masks.sfm")[1]
    cfg = TrainConfig(batch_size=32, lr=1e-2, optimizer="adam", weight_decay=0.0, lr_schedule="constant")
    res = train_arm(model, mask, LevelData(x, y, 32, 0, val, test), cfg, start=0, end=40, eval_every=10,
                    run_dir=tmp_path)
    assert res.to_json()["evals"] == ref["result"].levels[0][1]["arms"]["ticket"]["evals"]


@pytest.mark.slow
def test_interrupted_run_resumes_bit_identically(reference, tmp_path: Path) -> None:
    def crash(seed: int, level: int, arm: str, step: int) -> None:
        if (seed, level, arm, step) == (0, 1, "reinit", 25):  # mid-arm, after the checkpoint at step 20
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_lottery(JOB, tmp_path, on_step=crash)
    assert (tmp_path / "seed0" / "level_01" / "reinit" / "checkpoint.safetensors").exists()
    assert not (tmp_path / "seed0" / "level_01" / "result.json").exists()
    steps: list[tuple] = []
    run_lottery(JOB, tmp_path, on_step=lambda *a: steps.append(a))
    assert steps[0] == (0, 1, "reinit", 21)  # resumed from the checkpoint; level 0 and the ticket skipped
    assert same(outputs(tmp_path), reference[1]["outputs"])


def test_late_rewinding_saves_weights_at_step_k(tmp_path: Path) -> None:
    job = LotteryJob(dataset="digits", hidden=(16,), iterations=30, batch_size=32, eval_every=10, lr=1e-2,
                     target_density=None, levels=1, rewind_step=7, random_mask=False, reinit=False)
    result = run_lottery(job, tmp_path)
    x, y, val, test, shape, classes = _data(job, None)
    model = build_model("mlp", shape, classes, hidden=(16,), seed=0)
    cfg = TrainConfig(batch_size=32, lr=1e-2, optimizer="adam", weight_decay=0.0, lr_schedule="constant")
    train_arm(model, Mask.ones({n: p for n, p in model.named_parameters() if n.endswith("weight")}),
              LevelData(x, y, 32, 0, val, test), cfg, start=0, end=7, eval_every=7, run_dir=tmp_path / "oracle")
    from sparseflow.io import load_state

    saved = load_state(tmp_path / "seed0" / "rewind.safetensors")[0]
    assert all(torch.equal(saved[n], p) for n, p in model.state_dict().items())
    level1 = result.levels[0][1]
    assert level1["start_step"] == 7 and level1["arms"]["ticket"]["evals"][0]["step"] == 10


def test_other_configuration_in_run_directory_is_refused(reference) -> None:
    out, _ = reference
    with pytest.raises(SparseflowError, match=r"prune_fraction is 0.2 there, 0.3 here"):
        run_lottery(LotteryJob(**{**JOB.__dict__, "prune_fraction": 0.3}), out)


def test_corrupted_level_file_names_level_and_recompute_restores(reference, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    path = out / "seed1" / "level_01" / "result.json"
    path.write_text(path.read_text().replace('"final_acc": 0.', '"final_acc": 1.', 1))
    with pytest.raises(SparseflowError, match=r"level 1 of seed 1 is corrupted.*--recompute-level 1"):
        run_lottery(JOB, out)
    run_lottery(JOB, out, recompute_level=1)
    assert same(outputs(out), reference[1]["outputs"])
    masks = out / "seed0" / "masks.sfm"
    data = bytearray(masks.read_bytes())
    data[-3] ^= 0xFF  # inside the last level's coded mask
    masks.write_bytes(bytes(data))
    with pytest.raises(SparseflowError, match=r"level \d of seed 0 is corrupted.*--recompute-level"):
        run_lottery(JOB, out)


def test_criteria_are_computed_from_the_levels(reference) -> None:
    result = reference[1]["result"]
    crit = criteria(result)
    acc = {a: sum(result.levels[s][2]["arms"][a]["final_acc"] for s in (0, 1)) / 2 for a in ("ticket", "reinit", "random")}
    dense = sum(result.levels[s][0]["arms"]["ticket"]["final_acc"] for s in (0, 1)) / 2
    assert crit["ticket_matches_dense"]["value"] == pytest.approx(acc["ticket"] - dense)
    assert crit["ticket_beats_reinit"]["value"] == pytest.approx(acc["ticket"] - acc["reinit"])
    assert crit["ticket_beats_reinit"]["pass"] == (acc["ticket"] - acc["reinit"] >= 0.02)
    assert "ticket_beats_random_mask" not in crit  # that goal belongs to MNIST-1D
    mnist1d = dataclasses.replace(result, job=dataclasses.replace(result.job, dataset="mnist1d"))
    assert set(criteria(mnist1d)) == {"ticket_beats_random_mask"}
    assert criteria(mnist1d)["ticket_beats_random_mask"]["value"] == pytest.approx(acc["ticket"] - acc["random"])
    # paired over the two seeds: t(0.975, 1) = 12.706 x |d0 - d1| / 2
    d = [result.levels[s][2]["arms"]["ticket"]["final_acc"] - result.levels[s][2]["arms"]["reinit"]["final_acc"]
         for s in (0, 1)]
    half = 12.7062047 * abs(d[0] - d[1]) / 2
    assert crit["ticket_beats_reinit"]["interval"] == pytest.approx([sum(d) / 2 - half, sum(d) / 2 + half], rel=1e-6)
    assert "converged" not in crit  # no validation set: nothing to stop on


def test_criteria_read_early_stopping_with_a_validation_set(tmp_path: Path) -> None:
    """With val_size, every arm is read at its lowest validation loss, and an arm whose validation loss is still
    lowest at the last evaluation is reported as not converged; controls_at trains the controls at one level."""
    job = dataclasses.replace(JOB, val_size=200, controls_at=(0.7,))
    result = run_lottery(job, tmp_path)
    densities = [result.levels[0][lv]["density"] for lv in range(3)]
    want = min((1, 2), key=lambda lv: abs(densities[lv] - 0.7))
    assert job.control_levels(densities) == {want}
    for s in (0, 1):
        for lv in (1, 2):
            assert set(result.levels[s][lv]["arms"]) == ({"ticket", "reinit", "random"} if lv == want else {"ticket"})
    crit = criteria(result)  # the last level with controls, not the last level
    assert f"level {want}," in crit["ticket_beats_reinit"]["target"] and "at early stopping" in crit["ticket_beats_reinit"]["target"]

    def at_best(rec: dict) -> float:  # oracle: test accuracy of the evaluation with the lowest validation loss
        return min(rec["evals"], key=lambda r: (r["val_loss"], r["step"]))["test_acc"]

    d = [at_best(result.levels[s][want]["arms"]["ticket"]) - at_best(result.levels[s][want]["arms"]["reinit"])
         for s in (0, 1)]
    assert crit["ticket_beats_reinit"]["value"] == pytest.approx(sum(d) / 2)
    assert crit["ticket_beats_reinit"]["per_seed"] == pytest.approx(d)
    late = [f"seed {s} {a}" for s in (0, 1) for a, rec in result.levels[s][want]["arms"].items()
            if min(rec["evals"], key=lambda r: (r["val_loss"], r["step"]))["step"] == rec["evals"][-1]["step"]]
    assert crit["converged"]["still_improving"] == late and crit["converged"]["pass"] == (not late)
    with pytest.raises(SparseflowError, match="controls_at"):
        dataclasses.replace(JOB, controls_at=(1.5,))


def test_cli_runs_reports_and_refuses_bad_input(run_cli, tmp_path: Path) -> None:
    args = ["lottery", "--dataset", "digits", "--hidden", "16", "--iterations", "20", "--batch-size", "32",
            "--eval-every", "10", "--levels", "1", "--no-progress", "--out", str(tmp_path), "--json"]
    code, stdout, _ = run_cli(args)
    obj = json.loads(stdout.strip().splitlines()[-1])
    assert code == criteria_exit(obj)  # 1 when a criterion failed at this tiny scale
    assert [r["level"] for r in obj["levels"]] == [0, 1]
    assert obj["criteria"]["ticket_matches_dense"]["value"] == pytest.approx(
        obj["levels"][1]["arms"]["ticket"]["final_acc"]["mean"] - obj["dense_acc"])
    assert (tmp_path / "report.md").exists() and (tmp_path / "accuracy.png").exists()
    for bad, msg in ((["--prune-fraction", "1.0"], "prune_fraction"), (["--rewind-step", "20"], "rewind_step"),
                     (["--target-density", "0.01"], "not reachable in 1 levels"),
                     (["--lr", "0.5"], "another lottery configuration")):
        code, _, err = run_cli(args + bad)
        assert code == 2 and "error:" in err and msg in err.replace("\n", " "), err


def test_cli_names_each_level_and_a_finished_run(run_cli, tmp_path: Path) -> None:
    args = ["lottery", "--dataset", "digits", "--hidden", "16", "--iterations", "20", "--batch-size", "32",
            "--eval-every", "10", "--levels", "1", "--out", str(tmp_path), "--json"]
    _, _, err = run_cli(args)
    assert err.index("lottery seed 0 level 0/1") < err.index("lottery seed 0 level 1/1")
    _, _, err = run_cli(args)  # everything is done: one line says so, nothing is trained
    assert "lottery seed 0: levels 0-1 of 0-1 already finished (read back, not trained again)" in err
    assert "level 1/1" not in err


def test_early_stopping_is_described_as_what_the_code_measures(tmp_path: Path, monkeypatch) -> None:
    """The early-stopping step is the evaluation with the lowest loss on the validation set, which is the test
    set when val_size is 0: the records, the figure's axis and the report all say the same."""
    from sparseflow.lottery import report

    labels = {}
    monkeypatch.setattr(report, "_plot", lambda rows, key, ylabel, path, dense: labels.setdefault(key, ylabel))
    for val_size, where, loss in ((0, "the test set", "test"), (200, "200 held-out training examples", "validation")):
        job = dataclasses.replace(JOB, iterations=20, levels=1, seeds=(0,), val_size=val_size)
        result = run_lottery(job, tmp_path / str(val_size))
        for level in result.levels[0]:
            for arm in level["arms"].values():
                best = min(arm["evals"], key=lambda r: (r["val_loss"], r["step"]))  # the oracle: lowest val_loss
                assert arm["early_stop_step"] == best["step"]
        labels.clear()
        report.write_report(result, criteria(result))
        text = (tmp_path / str(val_size) / "report.md").read_text()
        assert f"the evaluation where the loss on {where}" in text and "is lowest" in text
        assert labels["early_stop_step"] == f"early-stopping step (lowest {loss} loss)"
        assert "accuracy" not in labels["early_stop_step"]


def test_learning_rate_rewinding_retrains_the_trained_ticket(tmp_path: Path) -> None:
    # Renda et al. 2020: keep the trained weights, replay the schedule from step k (cosine, so the LR matters).
    job = LotteryJob(dataset="digits", hidden=(16,), iterations=30, batch_size=32, eval_every=10, lr=1e-2,
                     lr_schedule="cosine", target_density=None, levels=1, rewind="lr", rewind_step=10,
                     random_mask=False, reinit=False)
    result = run_lottery(job, tmp_path)
    from sparseflow.io import load_state

    x, y, val, test, shape, classes = _data(job, None)
    model = build_model("mlp", shape, classes, hidden=(16,), seed=0)
    model.load_state_dict(load_state(tmp_path / "seed0" / "level_00" / "ticket.safetensors")[0])
    cfg = TrainConfig(batch_size=32, lr=1e-2, optimizer="adam", weight_decay=0.0, lr_schedule="cosine")
    res = train_arm(model, load_masks(tmp_path / "seed0" / "masks.sfm")[1], LevelData(x, y, 32, 0, val, test), cfg,
                    start=10, end=30, eval_every=10, run_dir=tmp_path / "oracle")
    assert res.to_json()["evals"] == result.levels[0][1]["arms"]["ticket"]["evals"]
    assert [e["step"] for e in res.evals] == [20, 30]


def test_glorot_init_by_hand() -> None:
    """init="glorot": Gaussian weights with std sqrt(2 / (fan_in + fan_out)) (torch's xavier_normal_ as the
    oracle for the fans), zero biases, reproducible per seed, different across seeds."""
    from torch import nn

    from sparseflow.lottery.run import glorot

    model = glorot(nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.Conv2d(3, 64, 5)), 0)
    for m in (model[0], model[2], model[3]):
        ref = torch.empty_like(m.weight)
        nn.init.xavier_normal_(ref)  # same fans, another draw
        assert float(m.weight.std()) == pytest.approx(float(ref.std()), rel=0.05)
        assert float(m.weight.mean()) == pytest.approx(0.0, abs=3 * float(ref.std()) / m.weight.numel() ** 0.5)
        assert torch.count_nonzero(m.bias) == 0
    again = glorot(nn.Sequential(nn.Linear(784, 300)), 0)
    other = glorot(nn.Sequential(nn.Linear(784, 300)), 1)
    assert torch.equal(again[0].weight, model[0].weight) and not torch.equal(other[0].weight, model[0].weight)
    job = dataclasses.replace(JOB, init="glorot", levels=1, iterations=20, seeds=(0,))
    assert job.digest() != dataclasses.replace(job, init="default").digest()  # a different run
    assert "init" not in LotteryJob().non_default()  # the default names no run differently


def test_seeds_in_worker_processes_equal_one_process(tmp_path: Path) -> None:
    """workers=2 trains the two seeds in two processes (one torch thread each): the same level records, masks and
    tickets as one process with one thread, bit for bit."""
    job = dataclasses.replace(JOB, iterations=20, levels=1, val_size=100)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_lottery(job, tmp_path / "one")
        torch.set_num_threads(2)  # two workers: one thread each
        seen: list[str] = []
        two = run_lottery(job, tmp_path / "two", workers=2, progress=lambda label, steps: seen.append(label))
    finally:
        torch.set_num_threads(threads)
    assert same(outputs(tmp_path / "one"), outputs(tmp_path / "two"))
    assert two.levels == one.levels and two.levels_trained == 4 and sorted(seen) == [
        "seed 0: 2 levels done", "seed 1: 2 levels done"]
    assert criteria(two) == criteria(one)
    with pytest.raises(SparseflowError, match="on_step"):
        run_lottery(job, tmp_path / "three", workers=2, on_step=lambda *a: None)
