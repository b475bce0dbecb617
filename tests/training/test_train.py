"""Tests for sparseflow.training.loop: learning, callback order, exact resume, divergence, config, run dir."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparseflow.errors import SparseflowError
from sparseflow.training.loop import (
    Callback,
    SparsityMethod,
    TrainConfig,
    TrainState,
    evaluate,
    fit,
    make_optimizer,
    make_scheduler,
)

# A synthetic, linearly separable-ish problem: 4 Gaussian blobs in 8 dimensions. It exists to test the
# mechanics of the loop, not to say anything about generalisation.
N_TRAIN, N_TEST, DIM, CLASSES, BATCH = 512, 256, 8, 4, 32
Data = tuple[TensorDataset, TensorDataset]


def make_data(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.randn(CLASSES, DIM, generator=g)

    def sample(n: int) -> TensorDataset:
        y = torch.randint(0, CLASSES, (n,), generator=g)
        return TensorDataset(centers[y] + torch.randn(n, DIM, generator=g), y)

    return sample(N_TRAIN), sample(N_TEST)


def make_loaders(train: TensorDataset, test: TensorDataset, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    gen = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=BATCH, shuffle=True, generator=gen),
        DataLoader(test, batch_size=64, shuffle=False),
    )


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # Dropout draws from torch's global RNG, so the resume test also checks that RNG state is restored.
    return nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, CLASSES))


class FixedMask:
    """A fake sparsity method: a fixed random mask, re-applied after every optimizer step."""

    def __init__(self, density: float = 0.5, seed: int = 1) -> None:
        self.density, self.seed = density, seed
        self.steps = 0
        self.masks: dict[str, torch.Tensor] = {}
        self.model: nn.Module | None = None

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        g = torch.Generator().manual_seed(self.seed)
        self.model = model
        params = [(n, p) for n, p in model.named_parameters() if p.dim() > 1]
        self.masks = {n: torch.rand(p.shape, generator=g) < self.density for n, p in params}
        self._apply()

    def step(self) -> None:
        self.steps += 1
        self._apply()

    @torch.no_grad()
    def _apply(self) -> None:
        assert self.model is not None
        for name, p in self.model.named_parameters():
            if name in self.masks:
                p.mul_(self.masks[name])

    def state_dict(self) -> dict[str, Any]:
        return {"masks": dict(self.masks), "steps": self.steps}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.masks = {k: v.clone() for k, v in d["masks"].items()}
        self.steps = d["steps"]


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def on_train_start(self, state: TrainState) -> None:
        self.events.append(("start", state.epoch, state.step))

    def on_step_end(self, state: TrainState) -> None:
        self.events.append(("step", state.epoch, state.step))

    def on_epoch_end(self, state: TrainState) -> None:
        self.events.append(("epoch", state.epoch, state.step))

    def on_train_end(self, state: TrainState) -> None:
        self.events.append(("end", state.epoch, state.step))


class Crash(Callback):
    def __init__(self, after_epoch: int) -> None:
        self.after_epoch = after_epoch

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch == self.after_epoch:
            raise KeyboardInterrupt("simulated crash")


@pytest.fixture(scope="module")
def data() -> Data:
    return make_data()


def test_fake_method_satisfies_protocol() -> None:
    assert isinstance(FixedMask(), SparsityMethod)
    with pytest.raises(SparseflowError, match="lacks prepare"):
        not_a_method: Any = object()
        fit(make_model(), *make_loaders(*make_data()), TrainConfig(epochs=1), method=not_a_method, progress=False)


def test_mlp_learns_and_mask_holds(data: Data) -> None:
    method = FixedMask(density=0.5)
    model = make_model()
    result = fit(model, *make_loaders(*data), TrainConfig(epochs=3), method=method, progress=False)
    assert result.test_acc > 0.9
    assert result.steps == 3 * N_TRAIN // BATCH == method.steps
    assert len(result.history) == 3 and result.history[-1]["test_acc"] == result.test_acc
    assert math.isclose(result.test_acc, evaluate(model, make_loaders(*data)[1])[0])
    for name, p in model.named_parameters():
        if name in method.masks:
            assert torch.all(p[~method.masks[name]] == 0), name
    assert 0.4 < result.history[-1]["density"] < 0.6


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_other_optimizers_learn(data: Data, optimizer: str) -> None:
    cfg = TrainConfig(epochs=2, optimizer=optimizer, lr=1e-2, lr_schedule="constant")
    result = fit(make_model(), *make_loaders(*data), cfg, progress=False)
    assert result.test_acc > 0.9
    assert result.history[-1]["lr"] == 1e-2


def test_make_optimizer_and_cosine_schedule() -> None:
    model = make_model()
    opt = make_optimizer(model, TrainConfig(lr=0.1, momentum=0.8))
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.8 and opt.param_groups[0]["nesterov"] is False
    assert isinstance(make_optimizer(model, TrainConfig(optimizer="adamw")), torch.optim.AdamW)
    sched = make_scheduler(opt, TrainConfig(lr=0.1), total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.1 and math.isclose(lrs[5], 0.05) and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert opt.param_groups[0]["lr"] == 0.0


def test_callbacks_order_and_counts(data: Data) -> None:
    rec = Recorder()
    fit(make_model(), *make_loaders(*data), TrainConfig(epochs=2), callbacks=[rec], progress=False)
    per_epoch = N_TRAIN // BATCH
    expected = [("start", 0, 0)]
    for e in (1, 2):
        expected += [("step", e, (e - 1) * per_epoch + i) for i in range(1, per_epoch + 1)]
        expected.append(("epoch", e, e * per_epoch))
    expected.append(("end", 2, 2 * per_epoch))
    assert rec.events == expected


def test_resume_after_crash_is_bit_exact(data: Data, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=3, seed=7)
    model_a, method_a = make_model(), FixedMask()
    full = fit(model_a, *make_loaders(*data), cfg, method=method_a, run_dir=tmp_path / "a", progress=False)

    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), *make_loaders(*data), cfg, method=FixedMask(), run_dir=tmp_path / "b",
            callbacks=[Crash(after_epoch=2)], progress=False)
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2

    # A new process: fresh model, method and loaders built the same way, then resume.
    model_b, method_b, rec = make_model(), FixedMask(), Recorder()
    resumed = fit(model_b, *make_loaders(*data), cfg, method=method_b, run_dir=tmp_path / "b", resume=True,
                  callbacks=[rec], progress=False)
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
    assert method_b.steps == method_a.steps == full.steps == resumed.steps
    drop_time = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in full.history]
    assert [{k: v for k, v in r.items() if k != "elapsed_s"} for r in resumed.history] == drop_time
    assert rec.events[0] == ("start", 2, 2 * N_TRAIN // BATCH)
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 3


def test_run_dir_refuses_overwrite_and_changed_config(data: Data, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1)
    fit(make_model(), *make_loaders(*data), cfg, run_dir=tmp_path, progress=False)
    with pytest.raises(SparseflowError, match="already holds a checkpoint"):
        fit(make_model(), *make_loaders(*data), cfg, run_dir=tmp_path, progress=False)
    with pytest.raises(SparseflowError, match=r"lr: 0.05 in the run directory, 0.1 now"):
        other = TrainConfig(epochs=1, lr=0.1)
        fit(make_model(), *make_loaders(*data), other, run_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(SparseflowError, match="without a sparsity method"):
        fit(make_model(), *make_loaders(*data), cfg, method=FixedMask(), run_dir=tmp_path, resume=True,
            progress=False)
    with pytest.raises(SparseflowError, match="needs a run_dir"):
        fit(make_model(), *make_loaders(*data), cfg, resume=True, progress=False)


def test_run_dir_files(data: Data, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, eval_every_epoch=False)
    config = {"model": "mlp", "train": dataclasses.asdict(cfg)}
    fit(make_model(), *make_loaders(*data), cfg, method=FixedMask(), run_dir=tmp_path / "run", config=config,
        progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == config
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert set(lines[0]) == {"epoch", "step", "train_loss", "test_loss", "test_acc", "lr", "elapsed_s", "density"}
    assert lines[0]["test_acc"] is None and lines[1]["test_acc"] > 0.9
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()


def test_default_config_json_is_train_config(data: Data, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, optimizer="adam", lr=1e-3)
    fit(make_model(), *make_loaders(*data), cfg, run_dir=tmp_path, progress=False)
    assert TrainConfig(**json.loads((tmp_path / "config.json").read_text())) == cfg


def test_nonfinite_loss_names_step(data: Data) -> None:
    train, test = data
    x = train.tensors[0].clone()
    x[3, 0] = float("nan")
    with pytest.raises(SparseflowError, match=r"at step \d+ \(epoch 1\).*smaller lr"):
        loaders = make_loaders(TensorDataset(x, train.tensors[1]), test)
        fit(make_model(), *loaders, TrainConfig(epochs=1), progress=False)


def test_huge_lr_diverges(data: Data) -> None:
    with pytest.raises(SparseflowError, match="diverged"):
        cfg = TrainConfig(epochs=3, lr=1e12, lr_schedule="constant")
        fit(make_model(), *make_loaders(*data), cfg, progress=False)


@pytest.mark.parametrize(
    "bad",
    [
        {"epochs": 0}, {"epochs": 1.5}, {"batch_size": 0}, {"lr": 0.0}, {"lr": float("nan")}, {"momentum": 1.0},
        {"weight_decay": -1.0}, {"optimizer": "rmsprop"}, {"lr_schedule": "step"}, {"log_every": -1},
    ],
)
def test_config_validation(bad: dict[str, Any]) -> None:
    (name, value), = bad.items()
    with pytest.raises(SparseflowError, match=rf"TrainConfig\.{name} must be .*got {value!r}"):
        TrainConfig(**bad)


def test_progress_writes_to_stderr_only(data: Data, capsys: pytest.CaptureFixture[str]) -> None:
    fit(make_model(), *make_loaders(*data), TrainConfig(epochs=1, log_every=4), progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "epoch 1/1" in err and "step 4/16" in err
