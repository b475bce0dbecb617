"""Kill -9 a training process at random points, resume it each time: the result equals an uninterrupted run.

The oracle is the uninterrupted run itself (same script, same seed, CPU), compared bit for bit: weights,
mask, the per-epoch losses (which need the partial loss sums of a broken epoch) and the step count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparseflow.training.checkpoints import load_checkpoint

SRC = str(Path(__file__).resolve().parents[2] / "src")
# One driver process imports torch and sparseflow once, then forks a training process per attempt (so ten
# kills cost ten forks, not ten interpreter starts). Each child builds its model and method itself and
# runs fit(); it reports every finished step on a pipe and waits for the driver's answer; the driver
# kill -9s it right after (or a few ms after, to land inside a checkpoint write) answering for the step it
# drew, waits, and forks the next one, which resumes. The parent loads the data (numpy) but runs no
# tensor operation before forking (OpenMP is not fork-safe once its threads exist).
# SET draws its regrowth from its own generator and the loader reshuffles every epoch: both must be restored
# exactly. 23 batches per epoch, 2 epochs: 46 steps, a checkpoint every 3 (and at every epoch's end).
DRIVER = """
import os, random, signal, sys, time
import torch._dynamo  # noqa: F401  (the first optimizer.step() imports it: 1.5 s in every child otherwise)
from sparseflow.training.data import load_dataset, loaders
from sparseflow.methods import SET
from sparseflow.training.models import build_model
from sparseflow.training.loop import Callback, TrainConfig, fit

DS = load_dataset("digits")  # numpy work and a tensor wrapped around it: no parallel region before forking

def train(run_dir, fd, ack):
    class Report(Callback):
        def on_step_end(self, state):
            os.write(fd, f"{state.step}\\n".encode())
            os.read(ack, 1)  # wait for the driver: on a busy machine it could otherwise fall steps behind

    ds = DS
    train, test = loaders(ds, 64, seed=0)
    model = build_model("mlp", ds.input_shape, ds.num_classes, hidden=(64, 32), seed=0)
    method = SET(sparsity=0.8, seed=0, update_every=4, until=36)
    cfg = TrainConfig(epochs=2, batch_size=64, seed=0, checkpoint_every=3)
    fit(model, train, test, cfg, method=method, run_dir=run_dir, resume=True, progress=False, callbacks=[Report()])

def attempt(run_dir, kill_at=None, delay=0.0):
    r, w = os.pipe()
    ack_r, ack_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.close(ack_w)
        try:
            train(run_dir, w, ack_r)
        except BaseException as e:
            print(f"child failed: {e!r}", file=sys.stderr, flush=True)
            os._exit(1)
        os._exit(0)
    os.close(w)
    os.close(ack_r)
    seen = None
    with os.fdopen(r) as lines:
        for line in lines:
            seen = int(line)
            os.write(ack_w, b"x")
            if kill_at is not None and seen >= kill_at:
                time.sleep(delay)
                os.kill(pid, signal.SIGKILL)
                break
    os.close(ack_w)
    _, status = os.waitpid(pid, 0)
    if kill_at is None:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    else:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (kill_at, seen, status)
    return seen

whole, killed, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("whole", attempt(whole), flush=True)
rng = random.Random(seed)
for target in sorted(rng.sample(range(1, 40), 10)):  # 10 ms cannot finish the last 6 steps and an epoch
    print("killed", target, attempt(killed, target, rng.uniform(0.0, 0.01)), flush=True)
print("resumed", attempt(killed), flush=True)
"""
TOTAL_STEPS = 46


def _env() -> dict[str, str]:
    # One thread: these tiny models gain nothing from more, and a busy machine makes spinning threads slow.
    # Every run of a comparison gets the same environment, so the bit-for-bit oracle is unaffected.
    path = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _final(run_dir: Path) -> dict:
    ckpt = load_checkpoint(run_dir, quiet=True)
    assert ckpt.fallback is None
    return ckpt.state


def _assert_same_run(got: dict, want: dict) -> None:
    assert got["step"] == want["step"]
    assert got["model"].keys() == want["model"].keys()
    for name in want["model"]:
        assert torch.equal(got["model"][name], want["model"][name]), name
    if want["method"] is not None:
        for name, m in want["method"]["mask"].items():
            assert torch.equal(got["method"]["mask"][name], m), name
    drop_time = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in want["history"]]
    assert [{k: v for k, v in r.items() if k != "elapsed_s"} for r in got["history"]] == drop_time


def test_kill_nine_at_ten_random_points_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "whole"), str(tmp_path / "killed"), "7"],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    kills = [line.split() for line in lines if line.startswith("killed")]
    assert len(kills) == 10 and all(int(target) <= int(seen) < TOTAL_STEPS for _, target, seen in kills)
    assert f"whole {TOTAL_STEPS}" in lines and any(line.startswith("resumed ") for line in lines)
    _assert_same_run(_final(tmp_path / "killed"), _final(tmp_path / "whole"))


def _cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sparseflow.cli", "train", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, path: Path, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared: {proc.communicate()[1]}"
        assert time.monotonic() - t0 < timeout
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_cli_killed_in_sparse_run_and_in_dense_baseline_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    # `sparseflow train` killed in the sparse run, resumed with `--resume OUT`, killed again in the dense
    # baseline (OUT/dense), resumed again: both runs equal an uninterrupted `sparseflow train`.
    args = ["--quick", "--no-progress", "--method", "set", "--epochs", "2", "--checkpoint-every", "3"]
    whole = _cli([*args, "--out", str(tmp_path / "whole")])
    assert whole.wait(timeout=120) == 0, whole.communicate()[1]
    out = tmp_path / "killed"
    first = _cli([*args, "--out", str(out)])
    _kill_when(first, out / "checkpoint.safetensors")
    assert first.returncode == -signal.SIGKILL and not (out / "dense").exists()
    assert _final(out)["step"] < TOTAL_STEPS
    second = _cli(["--no-progress", "--resume", str(out)])
    _kill_when(second, out / "dense" / "checkpoint.safetensors")
    assert second.returncode == -signal.SIGKILL and not (out / "result.json").exists()
    assert _final(out / "dense")["step"] < TOTAL_STEPS
    last = _cli(["--no-progress", "--resume", str(out), "--json"])
    stdout, stderr = last.communicate(timeout=120)
    assert last.returncode == 0, stderr
    for sub in ("", "dense"):
        _assert_same_run(_final(out / sub), _final(tmp_path / "whole" / sub))
    assert json.loads(stdout.strip().splitlines()[-1])["steps"] == TOTAL_STEPS
