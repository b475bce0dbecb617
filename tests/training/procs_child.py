"""A parent process for test_processes.py: it starts children through sparseflow.training.processes and waits.

``python tests/training/procs_child.py KIND DIR``:
  pool   a worker_pool of 2 workers, each holding a task that sleeps (4 tasks queued for 2 workers)
  child  run_child of a Python process that sleeps
Each child writes its pid to DIR/child-<pid> once it is set up; the parent writes DIR/parent-<pid>. The test
then ends the parent (SIGKILL, SIGTERM or SIGINT) and checks that no child is left.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import time
from pathlib import Path

from sparseflow.training.processes import run_child, worker_pool

SLEEP_S = 120.0  # far longer than the test waits: a child still alive after the parent ended was not ended


def hold(directory: str) -> int:
    (Path(directory) / f"child-{os.getpid()}").touch()
    time.sleep(SLEEP_S)
    return os.getpid()


def main(kind: str, directory: str) -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test dumps the stacks of a parent that hangs
    # A program started from a terminal turns Ctrl-C into KeyboardInterrupt. A test runner started in the
    # background of a non-interactive shell passes SIGINT on as ignored, and Python keeps an ignored SIGINT
    # ignored: restore the terminal's behaviour that the test is about.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    (Path(directory) / f"parent-{os.getpid()}").touch()
    if kind == "pool":
        with worker_pool(2) as pool:
            futures = [pool.submit(hold, directory) for _ in range(4)]
            for f in futures:
                f.result()
    elif kind == "child":
        code = (f"import os, pathlib, time; pathlib.Path({directory!r}, f'child-{{os.getpid()}}').touch(); "
                f"time.sleep({SLEEP_S})")
        run_child([sys.executable, "-c", code])
    else:
        raise SystemExit(f"unknown kind {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
