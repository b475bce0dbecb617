"""sparseflow train's torch threads: one for the fully connected models (their small matrices only make threads
wait for each other), PyTorch's setting otherwise, --threads N when given; restored after the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import RunCli
from sparseflow.training.run import train_threads


def test_the_default_is_one_thread_for_fully_connected_models_only() -> None:
    assert train_threads("mlp", None) == 1 and train_threads("lenet300-100", None) == 1
    assert train_threads("gpt", None) == 1
    assert train_threads("conv2", None) == torch.get_num_threads()
    assert train_threads("mlp", 3) == 3


def test_train_runs_on_those_threads_and_restores_the_setting(tmp_path: Path, run_cli: RunCli,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import sparseflow.training.run as run

    seen, real = [], run.fit

    def fit(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "fit", fit)
    before = torch.get_num_threads()
    args = ["train", "--quick", "--epochs", "1", "--no-baseline", "--no-progress"]
    assert run_cli([*args, "--out", str(tmp_path / "a")])[0] == 0
    assert run_cli([*args, "--threads", "2", "--out", str(tmp_path / "b")])[0] == 0
    assert seen == [1, 2] and torch.get_num_threads() == before
    code, _, err = run_cli([*args, "--threads", "0", "--out", str(tmp_path / "c")])
    assert code == 2 and "--threads" in err
