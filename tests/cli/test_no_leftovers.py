"""A failed run leaves no empty folder: what a failing command created is removed unless it can be resumed.

Oracle: the file system before and after. A run that stops before its first checkpoint (or a folder of
figures whose plotting fails) leaves nothing; one that stops after a checkpoint keeps its folder, and
``--resume`` continues it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import RunCli
from sparseflow.errors import SparseflowError
from sparseflow.io import removed_on_failure


def test_a_failing_block_removes_the_folders_it_created(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with removed_on_failure(tmp_path / "a" / "b" / "run"):
            (tmp_path / "a" / "b" / "run" / "sub").mkdir(parents=True)
            (tmp_path / "a" / "b" / "run" / "config.json").write_text("{}")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []  # a/ and a/b/ were created with the run folder: gone with it


@pytest.mark.parametrize("case", ["existed", "has a file", "succeeded", "disabled"])
def test_what_is_kept(tmp_path: Path, case: str) -> None:
    run = tmp_path / "run"
    if case == "existed":
        run.mkdir()
    with pytest.raises(SparseflowError) if case != "succeeded" else _nothing():
        with removed_on_failure(run, enabled=case != "disabled"):
            run.mkdir(exist_ok=True)
            if case == "has a file":
                (run / "checkpoint.safetensors").write_bytes(b"x")
            if case != "succeeded":
                raise SparseflowError("boom")
    assert run.is_dir()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


def test_train_failing_before_any_training_leaves_no_folder(tmp_path: Path, run_cli: RunCli) -> None:
    out = tmp_path / "runs" / "nm"  # N:M fixes the sparsity at 0.5: refused when the method is built
    code, _, err = run_cli(["train", "--pattern", "2:4", "--no-progress", "--out", str(out)])
    assert code == 2 and "pass sparsity=0.5" in err
    assert os.listdir(tmp_path) == []


def test_train_failing_in_its_first_epoch_leaves_no_folder(tmp_path: Path, run_cli: RunCli) -> None:
    out = tmp_path / "r"  # every layer would keep no weight: refused at the first pruning step, after config.json
    code, _, err = run_cli(["train", "--sparsity", "0.999999", "--epochs", "1", "--no-progress", "--out", str(out)])
    assert code == 2 and "would keep no weights" in err
    assert not out.exists()


def test_train_interrupted_after_a_checkpoint_keeps_its_folder(tmp_path: Path, run_cli: RunCli,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import sparseflow.training.resume as resume

    out, real = tmp_path / "r", resume.write_metrics

    def interrupted(run_dir, history):  # Ctrl-C right after the first epoch's checkpoint
        real(run_dir, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(resume, "write_metrics", interrupted)
    code, _, _ = run_cli(["train", "--quick", "--epochs", "2", "--no-baseline", "--no-progress", "--out", str(out)])
    assert code == 130  # (click turns Ctrl-C into exit status 130)
    assert (out / "checkpoint.safetensors").is_file() and (out / "metrics.jsonl").is_file()
    monkeypatch.setattr(resume, "write_metrics", real)
    code, _, err = run_cli(["train", "--resume", str(out), "--no-progress"])
    assert code == 0, err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
