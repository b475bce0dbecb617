"""Checkpoints: mid-epoch resume, the previous checkpoint as fallback, checksums, a full disk, bad input.

Oracle throughout: an uninterrupted run with the same seed, compared bit for bit (weights and history).
"""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import RunCli
from sparseflow.training.checkpoints import (
    CHECKPOINT_FILE,
    PREVIOUS_FILE,
    has_checkpoint,
    latest_checkpoint,
    load_checkpoint,
)
from sparseflow.errors import CheckpointError, SparseflowError
from sparseflow.io import load_state, save_state
from sparseflow.methods import SET
from sparseflow.training.loop import Callback, TrainConfig, TrainState, fit

N, BATCH = 96, 16  # 6 batches per epoch


class Crash(Exception):
    pass


class CrashAt(Callback):
    """Stops training (like a kill) right after step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: TrainState) -> None:
        if state.step == self.step:
            raise Crash


def run(run_dir: Path, *, resume: bool = False, callbacks=(), every: int | None = 4, epochs: int = 3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 10, generator=g)
    y = torch.randint(0, 3, (N,), generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    test = DataLoader(TensorDataset(x, y), batch_size=32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))  # dropout: torch RNG
    method = SET(sparsity=0.5, seed=0, update_every=2, until=14)
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH, lr=0.1, checkpoint_every=every)
    result = fit(model, train, test, cfg, method=method, run_dir=run_dir, resume=resume, progress=False,
                 callbacks=callbacks)
    return result, model


def assert_same(a, b) -> None:
    (ra, ma), (rb, mb) = a, b
    for (name, p), q in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(p, q), name
    strip = lambda h: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in h]  # noqa: E731
    assert strip(ra.history) == strip(rb.history) and ra.steps == rb.steps


def crash(run_dir: Path, step: int, **kw) -> None:
    with pytest.raises(Crash):
        run(run_dir, resume=True, callbacks=[CrashAt(step)], **kw)


def flip_tensor_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    data[8 + header_len + (len(data) - 8 - header_len) // 2] ^= 0x01  # one bit, in the middle of the tensor data
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory):
    return run(tmp_path_factory.mktemp("whole"))


@pytest.mark.parametrize("stops", [[5], [6], [7, 13], [1, 2, 3, 9, 17]])
def test_resume_anywhere_equals_uninterrupted(tmp_path: Path, whole, stops: list[int]) -> None:
    # 5 and 7 stop mid-epoch (checkpoints at 4 and 8 do not fall on an epoch's end at 6, 12, 18)
    for step in stops:
        crash(tmp_path, step)
    assert_same(run(tmp_path, resume=True), whole)


def test_resume_mid_epoch_from_checkpoint_every_1(tmp_path: Path, whole) -> None:
    crash(tmp_path, 9, every=1)  # stopped in step 9's callbacks, before its checkpoint
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.state["step"] == 8 and ckpt.state["position"]["batches"] == 2
    assert_same(run(tmp_path, resume=True, every=1), whole)


def test_finished_run_resumes_to_its_result_without_training(tmp_path: Path, whole) -> None:
    run(tmp_path)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    assert_same(run(tmp_path, resume=True), whole)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before  # nothing trained, nothing written


def test_two_checkpoints_kept_with_checksums(tmp_path: Path) -> None:
    crash(tmp_path, 10)
    new, prev = load_state(tmp_path / CHECKPOINT_FILE), load_state(tmp_path / PREVIOUS_FILE)
    assert (new[1]["step"], prev[1]["step"]) == (8, 6)  # every 4 steps and at the end of epoch 1 (step 6)
    assert not list(tmp_path.glob(".*tmp"))


def test_damaged_newest_falls_back_to_previous(tmp_path: Path, whole, capsys: pytest.CaptureFixture[str]) -> None:
    crash(tmp_path, 10)
    flip_tensor_byte(tmp_path / CHECKPOINT_FILE)
    with pytest.raises(SparseflowError, match="SHA-256"):
        load_state(tmp_path / CHECKPOINT_FILE)
    ckpt = load_checkpoint(tmp_path, quiet=True)
    assert ckpt.path == tmp_path / PREVIOUS_FILE and ckpt.state["step"] == 6
    assert str(tmp_path / CHECKPOINT_FILE) in ckpt.fallback and "previous" in ckpt.fallback
    assert latest_checkpoint(tmp_path) == tmp_path / PREVIOUS_FILE
    capsys.readouterr()
    result = run(tmp_path, resume=True)  # from step 6: still the same run
    assert_same(result, whole)
    assert "warning:" in capsys.readouterr().err
    assert any(str(tmp_path / CHECKPOINT_FILE) in note for note in result[0].notes)
    assert (tmp_path / (CHECKPOINT_FILE + ".damaged")).is_file()  # kept aside, not rotated into the previous slot


def test_missing_newest_falls_back_and_neither_valid_is_an_error(tmp_path: Path) -> None:
    crash(tmp_path, 10)
    (tmp_path / CHECKPOINT_FILE).unlink()
    ckpt = load_checkpoint(tmp_path, quiet=True)
    assert ckpt.path.name == PREVIOUS_FILE and "missing" in ckpt.fallback
    flip_tensor_byte(tmp_path / PREVIOUS_FILE)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path)
    assert str(tmp_path / CHECKPOINT_FILE) in str(e.value) and str(tmp_path / PREVIOUS_FILE) in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=f"has no {CHECKPOINT_FILE}"):
        load_checkpoint(tmp_path / "empty")


def test_full_disk_keeps_the_old_checkpoint(tmp_path: Path, whole, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    class DiskFills(Callback):
        def on_step_end(self, state: TrainState) -> None:
            if state.step == 7:  # the write at step 8 fails

                def fsync(fd: int) -> None:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                monkeypatch.setattr(os, "fsync", fsync)

    with pytest.raises(CheckpointError) as e:
        run(tmp_path, callbacks=[DiskFills()])
    message = str(e.value)
    assert "disk is full" in message and str(tmp_path / CHECKPOINT_FILE) in message
    assert "unchanged" in message and f"--resume {tmp_path}" in message and "step 8" in message
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not list(tmp_path.glob(".*tmp"))  # no half-written temporary left behind
    ckpt = load_checkpoint(tmp_path, quiet=True)
    assert ckpt.fallback is None and ckpt.state["step"] == 6  # the old checkpoint, intact
    assert_same(run(tmp_path, resume=True), whole)


class DiskFull:
    """From ``arm()`` on, fsync of the temporary file of ``name`` fails with ENOSPC (inside the atomic writer,
    where a full disk shows up on filesystems that allocate late)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        import tempfile

        self.armed, self.fds = False, set()
        real_mkstemp, real_fsync = tempfile.mkstemp, os.fsync

        def mkstemp(*args, **kwargs):
            fd, path = real_mkstemp(*args, **kwargs)
            (self.fds.add if Path(path).name.startswith(f".{name}.") else self.fds.discard)(fd)  # (fds are reused)
            return fd, path

        def fsync(fd: int) -> None:
            if self.armed and fd in self.fds:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "fsync", fsync)
        self.undo = lambda: (monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp),
                             monkeypatch.setattr(os, "fsync", real_fsync))


def test_full_disk_on_metrics_names_the_file_keeps_it_and_resumes(tmp_path: Path, whole,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    disk = DiskFull(monkeypatch, "metrics.jsonl")

    class FillsAt(Callback):
        def on_step_end(self, state: TrainState) -> None:
            if state.step == 7:  # epoch 2: its checkpoint is written, then its metrics.jsonl fails
                disk.armed = True

    with pytest.raises(SparseflowError) as e:
        run(tmp_path, callbacks=[FillsAt()])
    message = str(e.value)
    target = tmp_path / "metrics.jsonl"
    assert f"cannot write {str(target)!r} (the disk is full): the previous file is unchanged" in message
    assert ".tmp" not in message
    disk.undo()
    assert [json.loads(line)["epoch"] for line in target.read_text().splitlines()] == [1]  # epoch 1's, intact
    assert not list(tmp_path.glob(".*tmp"))
    assert_same(run(tmp_path, resume=True), whole)  # the run goes on from its checkpoint as if nothing happened


def test_full_disk_on_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = DiskFull(monkeypatch, "config.json")
    disk.armed = True
    with pytest.raises(SparseflowError) as e:
        run(tmp_path / "run")
    assert f"cannot write {str(tmp_path / 'run' / 'config.json')!r} (the disk is full): no file was written" \
        in str(e.value)
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC  # still an OSError for code that handles those
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []


def test_checksum_covers_tensors_and_skeleton(tmp_path: Path) -> None:
    save_state(tmp_path / "a.safetensors", {"w": torch.arange(10.0), "n": 3}, checksum=True)
    assert load_state(tmp_path / "a.safetensors")[0]["n"] == 3
    flip_tensor_byte(tmp_path / "a.safetensors")
    with pytest.raises(SparseflowError, match=r"a\.safetensors.*SHA-256"):
        load_state(tmp_path / "a.safetensors")


def test_bad_input(tmp_path: Path) -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(SparseflowError, match="checkpoint_every"):
            TrainConfig(checkpoint_every=bad)
    assert not has_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent")
    crash(tmp_path, 5)
    with pytest.raises(SparseflowError, match=r"epochs: 3 in the run directory, 4 now"):
        run(tmp_path, resume=True, epochs=4)
    run(tmp_path, resume=True, every=5)  # checkpoint_every does not change the result: may differ


def test_cli_resume_errors_and_fallback(tmp_path: Path, run_cli: RunCli) -> None:
    out = tmp_path / "r"
    args = ["train", "--quick", "--no-progress", "--epochs", "2", "--method", "random", "--no-baseline"]
    assert run_cli([*args, "--checkpoint-every", "5", "--out", str(out)])[0] == 0
    for extra, needle in [
        (["--checkpoint-every", "0", "--out", str(tmp_path / "x")], "--checkpoint-every must be"),
        (["--resume", str(tmp_path / "absent")], "does not exist"),
        (["--resume", str(tmp_path)], "no config.json"),
        (["--resume", str(out), "--epochs", "3"], "epochs: 2 in the run directory, 3 now"),
        (["--resume", str(out), "--method", "set"], 'method: "random" in the run directory, "set" now'),
        (["--resume"], "--resume takes the run directory"),
    ]:
        code, _, err = run_cli(["train", "--no-progress", *extra])
        assert code == 2 and needle in err and "Traceback" not in err, (extra, err)
    # a finished run is reported again; a damaged newest checkpoint is named and the previous one used
    flip_tensor_byte(out / CHECKPOINT_FILE)
    code, stdout, err = run_cli(["train", "--no-progress", "--resume", str(out), "--json"])
    result = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and result["steps"] == 46 and str(out / CHECKPOINT_FILE) in err
    assert any("previous checkpoint" in w for w in result["warnings"])
    # the old spelling, --out DIR --resume, still continues the run (all options given, as before)
    code, stdout, _ = run_cli([*args, "--out", str(out), "--resume", "--json"])
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["steps"] == 46
    # readers take the newest valid checkpoint, falling back as training does
    flip_tensor_byte(out / CHECKPOINT_FILE)
    code, _, err = run_cli(["analyze", str(out), "--json"])
    assert code == 0 and "using the previous checkpoint" in err
