"""Options given explicitly win over --quick; a run folder is reused only for the same settings, and a reused
finished run says so in one line (without training again)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import RunCli

from conftest import criteria_exit

LOTTERY = ["lottery", "--quick", "--no-progress", "--hidden", "8,8", "--iterations", "20", "--eval-every", "10",
           "--prune-fraction", "0.5", "--target-density", "0.3", "--seeds", "0"]


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_lottery_explicit_options_win_over_quick_and_a_finished_run_says_so(tmp_path: Path, run_cli: RunCli) -> None:
    out = tmp_path / "l"
    code, stdout, err = run_cli([*LOTTERY, "--json", "--out", str(out)])
    assert code == criteria_exit(json.loads(stdout.splitlines()[-1])), err  # 1: a criterion failed at this scale
    job = json.loads((out / "config.json").read_text())["job"]
    # --quick would set hidden 100,100, 300 iterations, eval every 50, prune fraction 0.4 and no target
    assert (job["hidden"], job["iterations"], job["eval_every"], job["prune_fraction"], job["target_density"]) == (
        [8, 8], 20, 10, 0.5, 0.3)
    assert "finished before" not in err
    files = _mtimes(out / "seed0")

    code, stdout, err = run_cli([*LOTTERY, "--json", "--out", str(out)])  # the same command again: read, not trained
    assert code == criteria_exit(json.loads(stdout.splitlines()[-1])), err
    notes = [line for line in err.splitlines() if "finished before" in line]
    assert len(notes) == 1 and str(out) in notes[0], err
    assert _mtimes(out / "seed0") == files

    code, _, err = run_cli([*LOTTERY[:-4], "--target-density", "0.2", "--seeds", "0", "--out", str(out)])
    assert code == 2 and "holds another lottery configuration" in err and "target_density is 0.3 there" in err
    assert _mtimes(out / "seed0") == files


def test_train_explicit_options_win_over_quick_and_a_finished_run_says_so(tmp_path: Path, run_cli: RunCli) -> None:
    out = tmp_path / "r"
    args = ["train", "--quick", "--no-progress", "--epochs", "1", "--method", "random", "--no-baseline",
            "--hidden", "16"]
    code, _, err = run_cli([*args, "--out", str(out)])
    assert code == 0, err
    job = json.loads((out / "config.json").read_text())["job"]
    assert (job["epochs"], job["hidden"], job["method"]) == (1, [16], "random")  # --quick alone: 10 epochs
    ckpt = (out / "checkpoint.safetensors").stat().st_mtime_ns

    code, _, err = run_cli([*args, "--out", str(out)])  # onto the finished run, without --resume
    assert code == 2 and f"--resume {out}" in err and "resume=True" not in err
    code, _, err = run_cli(["train", "--no-progress", "--resume", str(out)])
    assert code == 0, err
    notes = [line for line in err.splitlines() if "finished before" in line]
    assert len(notes) == 1 and str(out) in notes[0], err
    assert (out / "checkpoint.safetensors").stat().st_mtime_ns == ckpt  # nothing trained
    code, _, err = run_cli(["train", "--no-progress", "--resume", str(out), "--epochs", "3"])
    assert code == 2 and "epochs: 1 in the run directory, 3 now" in err
