"""The command-line tool, run in-process and as a subprocess: JSON contract, run directory, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparseflow.io import load_state
from sparseflow.training.job import TrainJob
from conftest import RunCli, criteria_exit




def test_train_quick_json_matches_checkpoint(tmp_path: Path, run_cli: RunCli) -> None:
    code, out, _ = run_cli(["train", "--quick", "--json", "--no-progress", "--epochs", "4", "--out", str(tmp_path / "r")])
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    # Oracle: count the nonzeros of the saved weights ourselves.
    ckpt, _ = load_state(tmp_path / "r" / "checkpoint.safetensors")
    nnz = sum(int(torch.count_nonzero(ckpt["model"][layer["name"]])) for layer in result["layers"])
    numel = sum(ckpt["model"][layer["name"]].numel() for layer in result["layers"])
    assert result["sparsity"] == pytest.approx(1 - nnz / numel)
    assert abs(result["sparsity"] - 0.9) <= 1 / numel
    assert [layer["nonzeros"] for layer in result["layers"]] == [
        int(torch.count_nonzero(ckpt["model"][layer["name"]])) for layer in result["layers"]
    ]
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["dense_accuracy"] <= 1.0
    assert result["criteria"]["sparsity_reached"]["pass"] is True
    for name in ("config.json", "metrics.jsonl", "report.md", "curves.png", "result.json", "dense/checkpoint.safetensors"):
        assert (tmp_path / "r" / name).exists(), name
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["epoch"] == 4
    # digits in 4 epochs is enough for a dense MLP to beat chance (0.1) by far
    assert result["dense_accuracy"] > 0.5


def test_rerun_same_out_without_resume_is_refused(tmp_path: Path, run_cli: RunCli) -> None:
    args = ["train", "--quick", "--no-progress", "--epochs", "2", "--method", "random", "--no-baseline", "--out", str(tmp_path / "r")]
    assert run_cli(args)[0] == 0
    code, _, err = run_cli(args)
    assert code == 2 and "already holds a checkpoint" in err
    code, out, _ = run_cli([*args, "--resume", "--json"])  # a finished run is reused
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["steps"] == 2 * 23


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
        (["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
        (["--method", "prune-everything"], "unknown method 'prune-everything'"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["--model", "vgg"], "unknown model 'vgg'"),
        (["--distribution", "normal"], "unknown distribution 'normal'"),
        (["--pattern", "3/4"], "unknown pattern '3/4'"),
        (["--pattern", "2:4", "--sparsity", "0.9"], "NM(n=2, m=4) fixes every layer's sparsity"),
        (["--dataset", "mnist"], "pass data_dir"),
        (["--hidden", "a,b"], "--hidden takes comma-separated widths"),
        (["--epochs", "0"], "epochs must be an integer >= 1"),
    ],
)
def test_bad_input_exits_2_with_one_error_line(args: list[str], needle: str, tmp_path: Path,
                                               run_cli: RunCli) -> None:
    code, out, err = run_cli(["train", "--no-progress", "--out", str(tmp_path / "r"), *args])
    assert code == 2
    assert needle in err
    assert "Traceback" not in err


def test_corrupt_dataset_names_file(tmp_path: Path, run_cli: RunCli) -> None:
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes(b"not a real file")
    code, _, err = run_cli(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--no-progress",
                            "--out", str(tmp_path / "r")])
    assert code == 2 and "idx" in err and "sha256" in err.lower()


def test_subprocess_entry_point_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "sparseflow.cli", "train", "--sparsity", "2"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


def test_run_name_hash_is_pinned() -> None:
    # The run directory name is part of the contract: changing TrainJob's fields or hashing breaks resume.
    job = TrainJob()
    assert job.run_name() == "train-digits-mlp-gmp-s0.9-" + job.digest()
    assert job.digest() == PINNED_DEFAULT_DIGEST
    assert TrainJob(seed=1).digest() != job.digest()


PINNED_DEFAULT_DIGEST = "d76d981908"


def test_dense_first_layer_is_listed_and_excluded_from_sparsity(tmp_path: Path, run_cli: RunCli) -> None:
    code, out, _ = run_cli(["train", "--quick", "--json", "--no-progress", "--epochs", "2", "--no-baseline",
                            "--method", "random", "--no-prune-first", "--out", str(tmp_path / "r")])
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    first, *rest = result["layers"]
    assert first["pruned"] is False and first["nonzeros"] == first["numel"]  # dense init has no exact zeros
    assert all(layer["pruned"] for layer in rest)
    kept = sum(layer["nonzeros"] for layer in rest)
    total = sum(layer["numel"] for layer in rest)
    assert result["sparsity"] == pytest.approx(1 - kept / total)
    assert total - kept == int(0.9 * total + 0.5)  # exact count rule over the pruned layers only


def test_experiment_collapse_quick_json(tmp_path: Path, run_cli: RunCli) -> None:
    code, out, _ = run_cli(["experiment", "collapse", "--quick", "--seeds", "1", "--json", "--out", str(tmp_path)])
    result = json.loads(out.strip().splitlines()[-1])
    assert code == criteria_exit(result)  # exit status 1 exactly when a measured criterion failed
    assert set(result["summary"]) >= {"magnitude", "snip", "grasp", "synflow"}
    syn = result["summary"]["synflow"]["collapse"]
    mag = result["summary"]["magnitude"]["collapse"]
    crit = result["criteria"]["SynFlow collapses later than magnitude"]
    assert crit["pass"] == (mag is not None and (syn is None or syn > mag))


def test_bench_methods_needs_data_dir(run_cli: RunCli) -> None:
    code, _, err = run_cli(["bench", "methods"])
    assert code == 2 and "--data-dir" in err
    code, _, err = run_cli(["bench", "methods", "--sparsities", "0.9,1.2", "--quick"])
    assert code == 2 and "sparsity must be in [0, 1)" in err
