"""No process is left behind: children started through sparseflow.training.processes end when their parent ends.

Each test starts a parent process in its own session (so that a SIGINT to its process group is a Ctrl-C that
does not reach pytest), waits until the children are set up, records every descendant of the parent (workers,
multiprocessing's resource tracker, torchrun and its ranks), ends the parent and checks that every one of them
is gone (a zombie counts as gone: it no longer runs). The children sleep far longer than the test waits, so
a child that is still there was not ended. Linux only: descendants are read from /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import procs_child

ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(procs_child.__file__).resolve()

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, or None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
    return fields[0], int(fields[1])


def running(pid: int) -> bool:
    s = _stat(pid)
    return s is not None and s[0] not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (s := _stat(int(entry.name))) is not None:
            children.setdefault(s[1], []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(HELPER.parent), e.get("PYTHONPATH", "")])
    e["OMP_NUM_THREADS"] = "1"
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        e.pop(v, None)
    return e


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_until(condition, timeout: float, what: str, parent: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if parent.poll() is not None:
            pytest.fail(f"the parent ended (status {parent.returncode}) before {what}: {parent.stderr.read().decode()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.1)


def end_and_check(parent: subprocess.Popen, sig: int, timeout: float = 30.0) -> dict[int, str]:
    """Send ``sig`` to the parent (SIGINT: to its whole process group, as Ctrl-C does); every process below it
    must be gone within ``timeout`` seconds. Returns the processes that were there: {pid: command line}."""
    procs = {p: cmdline(p) for p in descendants(parent.pid)}
    try:
        if sig == signal.SIGINT:
            os.killpg(parent.pid, sig)
        else:
            parent.send_signal(sig)
        try:
            parent.wait(timeout)
        except subprocess.TimeoutExpired:  # show where the parent is stuck (procs_child registers SIGUSR1)
            parent.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            parent.kill()
            parent.wait()
            pytest.fail(f"the parent did not end within {timeout:g} s of {signal.Signals(sig).name}; its stacks:\n"
                        + parent.stderr.read().decode(errors="replace")[-6000:])
        deadline = time.monotonic() + timeout
        while (left := {p for p in procs if running(p)}) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, "left behind: " + "; ".join(f"{p}: {procs[p][:200]}" for p in sorted(left))
    finally:
        for p in [*procs, parent.pid]:  # never leave them running, even when the test fails
            if running(p):
                os.kill(p, signal.SIGKILL)
        if parent.poll() is None:
            parent.wait()
    return procs


def _children_ready(directory: Path, n: int):
    return lambda: len(list(directory.glob("child-*"))) >= n


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["SIGKILL", "SIGTERM", "Ctrl-C"])
def test_pool_workers_end_with_their_parent(tmp_path: Path, sig: int) -> None:
    parent = start([sys.executable, str(HELPER), "pool", str(tmp_path)], tmp_path)
    wait_until(_children_ready(tmp_path, 2), 120, "both workers run a task", parent)
    workers = {int(p.name.split("-")[1]) for p in tmp_path.glob("child-*")}
    procs = end_and_check(parent, sig)
    assert workers <= set(procs)  # the workers were among the processes checked
    assert len(list(tmp_path.glob("child-*"))) == 2  # the two queued tasks never started


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_a_child_command_ends_with_its_parent(tmp_path: Path, sig: int) -> None:
    parent = start([sys.executable, str(HELPER), "child", str(tmp_path)], tmp_path)
    wait_until(_children_ready(tmp_path, 1), 60, "the child runs", parent)
    child = int(next(tmp_path.glob("child-*")).name.split("-")[1])
    assert child in end_and_check(parent, sig)


def _spawned_workers(pid: int) -> list[int]:
    return [p for p in descendants(pid) if "multiprocessing.spawn" in cmdline(p) and running(p)]


@pytest.mark.slow
def test_killing_bench_methods_leaves_no_worker(tmp_path: Path) -> None:
    # The case found in the field: `sparseflow bench methods` killed while its two workers train.
    parent = start([sys.executable, "-m", "sparseflow", "bench", "methods", "--quick", "--workers", "2"], tmp_path)
    wait_until(lambda: len(_spawned_workers(parent.pid)) >= 2, 120, "bench methods runs 2 workers", parent)
    time.sleep(3.0)  # into their first tasks (imports done, training started)
    end_and_check(parent, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["parent", "torchrun"])
def test_killing_train_nproc_leaves_no_rank(tmp_path: Path, victim: str) -> None:
    # sparseflow train --nproc 2 -> torchrun -> 2 ranks, killed while the ranks train (a run of hours). Killing
    # the parent ends torchrun, which ends its ranks; killing torchrun itself ends its ranks too.
    out = tmp_path / "run"
    parent = start([sys.executable, "-m", "sparseflow", "train", "--nproc", "2", "--epochs", "100000", "--no-baseline",
                    "--no-progress", "--out", str(out)], tmp_path)
    wait_until(lambda: (out / "config.json").is_file(), 180, "the ranks train", parent)
    procs = {p: cmdline(p) for p in descendants(parent.pid)}
    launcher = [p for p, cmd in procs.items() if "torch.distributed.run" in cmd]
    ranks = [p for p, cmd in procs.items() if "sparseflow train" in cmd and p not in launcher]
    assert len(launcher) == 1 and len(ranks) == 2, procs
    if victim == "torchrun":
        os.kill(launcher[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while any(running(p) for p in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in ranks if running(p)]
        for p in [*left, parent.pid]:
            os.kill(p, signal.SIGKILL)
        parent.wait()
        assert not left, "ranks left behind by a killed torchrun"
    else:
        end_and_check(parent, signal.SIGKILL, timeout=20)
