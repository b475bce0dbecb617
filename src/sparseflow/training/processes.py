"""Child processes that end with the command that started them.

Every process sparseflow starts goes through this module: the worker pools of ``sweep`` (local executor),
``bench methods`` and ``experiment methods`` (:func:`worker_pool`), the torchrun of ``train --nproc`` and the
experiments ``experiment all`` runs one by one (:func:`run_child`). None of them outlives its parent, however
the parent ends:

* **Ctrl-C** (SIGINT to the terminal's whole process group): pool workers ignore SIGINT; the parent's
  ``KeyboardInterrupt`` leaves :func:`worker_pool`, which cancels the queued tasks and ends the workers, and
  :func:`run_child` passes the interrupt on (SIGTERM, then SIGKILL after a grace period).
* **SIGTERM or SIGKILL of the parent**: none of the parent's code runs, so each child has asked the kernel to
  signal it when its parent dies (Linux: ``prctl(PR_SET_PDEATHSIG)``, which also survives ``exec``). Where
  that is not available (macOS, Windows) a watchdog thread in a Python child polls ``os.getppid()`` once a
  second and ends the process when the parent is gone.

The kernel sends the signal when the *thread* that started the child ends, so a pool is created and used in
one thread (every caller here does: the pool lives inside one ``with`` block). Torchrun passes SIGTERM on to
its ranks; ranks started by torchrun also end with it (:func:`end_with_launcher`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

__all__ = ["end_with_parent", "end_with_launcher", "worker_pool", "run_child"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCHDOG_S = 1.0  # how often the fallback watchdog looks for the parent
_GRACE_S = 10.0  # how long a child may take to end after SIGTERM before it is killed


def _load_prctl() -> Callable[..., int] | None:
    # Resolved once, in the parent: a preexec_fn (between fork and exec) must not import or load libraries.
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _set_pdeathsig(sig: int) -> bool:
    return _prctl is not None and _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def end_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Make this process end when the process ``parent_pid`` (its parent) ends, by signal ``sig``.

    Call it first thing in a child. If the parent has already gone (the child is now some other process's),
    the child ends at once.
    """
    if not _set_pdeathsig(sig):
        threading.Thread(target=_watch, args=(parent_pid, sig), name="sparseflow-parent-watchdog", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the request above was in place
        os.kill(os.getpid(), sig)


def _watch(parent_pid: int, sig: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_WATCHDOG_S)
    os.kill(os.getpid(), sig)


def end_with_launcher() -> None:
    """Under torchrun (``TORCHELASTIC_RUN_ID`` set): end this rank when the torchrun agent that started it
    ends. A no-op in a process that torchrun did not start."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        end_with_parent(os.getppid(), signal.SIGTERM)


# --- pools ------------------------------------------------------------------------------------------


def _pool_worker_init(parent_pid: int, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends the pool
    end_with_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


@contextmanager
def worker_pool(workers: int, initializer: Callable[..., Any] | None = None,
                initargs: tuple[Any, ...] = ()) -> Iterator[ProcessPoolExecutor]:
    """A ``ProcessPoolExecutor`` of ``workers`` fresh interpreters ('spawn': a forked child of a process whose
    torch thread pool has run can deadlock) that end with this process.

    Leaving the block normally waits for the pool's tasks; leaving it by an exception (``KeyboardInterrupt``
    included) cancels the queued tasks and ends the workers before the exception goes on.
    """
    import multiprocessing

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_pool_worker_init, initargs=(os.getpid(), initializer, tuple(initargs)))
    try:
        yield pool
    except BaseException:
        terminate_pool(pool)
        raise
    pool.shutdown(wait=True)


def terminate_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel ``pool``'s queued tasks and end its worker processes now (SIGTERM, then SIGKILL)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # CPython's executor: {pid: Process}
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + _GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


# --- subprocesses -------------------------------------------------------------------------------------


def run_child(cmd: Sequence[str], *, sig: int = signal.SIGTERM, **popen: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, **popen)`` for a child that ends with this process (by ``sig``, default SIGTERM:
    a launcher such as torchrun passes it on to its own children). If this process is interrupted while it
    waits, the child gets ``sig`` and, after a grace period, SIGKILL."""
    parent = os.getpid()

    def preexec() -> None:  # in the child, between fork and exec: nothing but the system call itself
        _set_pdeathsig(sig)
        if os.getppid() != parent:
            os._exit(1)

    with subprocess.Popen(list(cmd), preexec_fn=preexec if _prctl is not None else None, **popen) as proc:
        try:
            stdout, stderr = proc.communicate()
        except BaseException:
            _end(proc, sig)
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _end(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
