"""Executors of a sweep (:mod:`sparseflow.sweep.grid`): each takes the unfinished cells and reports every cell's
row through ``done`` as it finishes (in any order); a cell that fails is a 'failed' row, never an exception.

* :class:`LocalExecutor`: ``workers`` processes started with 'spawn' (a fresh interpreter, no forked torch
  state), each with ``max(1, cores // workers)`` torch threads so that together they do not oversubscribe the
  machine; they end with the sweep (:func:`sparseflow.training.processes.worker_pool`).
* :class:`RayExecutor`: one Ray task per cell on a running cluster, reserving ``cpus_per_cell`` CPUs and using
  as many torch threads. Ray is imported only here, lazily; every node needs this sparseflow installed and
  the sweep folder on a shared filesystem (the cells write their run directories there).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Callable
from typing import Any

from sparseflow.errors import SparseflowError
from sparseflow.sweep.grid import Cell, row, run_cell


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


Done = Callable[[dict[str, Any]], None]


class LocalExecutor:
    """Cells in ``workers`` processes ('spawn': a fresh interpreter, no forked torch state), each with
    ``threads`` torch threads (default ``max(1, cores // workers)``)."""

    def __init__(self, workers: int | None = None, threads: int | None = None) -> None:
        for name, v in (("workers", workers), ("threads", threads)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise SparseflowError(f"{name} must be a positive integer (--{name}), got {v!r}")
        self.workers, self.threads = workers, threads

    def parallel(self, n_cells: int) -> int:
        return max(1, min(self.workers or cores(), n_cells))

    def describe(self, n_cells: int) -> str:
        w = self.parallel(n_cells)
        return f"{w} local process{'es' if w > 1 else ''}, {self.threads or max(1, cores() // w)} torch thread(s) each"

    def run(self, cells: list[Cell], done: Done) -> None:
        from concurrent.futures import as_completed

        from sparseflow.training.processes import worker_pool

        workers = self.parallel(len(cells))
        threads = self.threads or max(1, cores() // workers)
        with worker_pool(workers) as pool:  # the workers end with this process (Ctrl-C, kill)
            futures = {pool.submit(run_cell, dataclasses.replace(c, threads=threads)): c for c in cells}
            for f in as_completed(futures):
                try:
                    r = f.result()
                except Exception as e:  # the worker process died (killed, out of memory): no row came back
                    r = row(futures[f].job, "failed", error=f"worker process died: {type(e).__name__}: {e}")
                done(r)


_ADDRESS = re.compile(r"(?:ray://)?(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SparseflowError("--ray needs Ray, which is not installed: pip install 'sparseflow[ray]'") from None
    return ray


class RayExecutor:
    """One Ray task per cell on the cluster at ``address`` ('HOST:PORT', 'ray://HOST:PORT' or 'auto'),
    each reserving ``cpus_per_cell`` CPUs and using as many torch threads."""

    def __init__(self, address: str, cpus_per_cell: int = 1) -> None:
        m = _ADDRESS.fullmatch(address.strip())
        if address.strip() != "auto" and (m is None or not 0 < int(m["port"]) < 65536):
            raise SparseflowError(f"bad Ray address {address!r}: use HOST:PORT (the address 'ray start --head' "
                                  "prints, e.g. 127.0.0.1:6379), ray://HOST:PORT or auto")
        if isinstance(cpus_per_cell, bool) or not isinstance(cpus_per_cell, int) or cpus_per_cell < 1:
            raise SparseflowError(f"cpus per cell must be a positive integer, got {cpus_per_cell!r}")
        self.address, self.cpus_per_cell = address.strip(), cpus_per_cell
        self._where = None if m is None else (m["host"].strip("[]"), int(m["port"]))
        self._connected = False  # by us: close() disconnects only then

    def connect(self) -> Any:
        """Import Ray, check that the address answers and connect (unless already connected)."""
        ray = import_ray()
        if self._where is not None:
            try:
                socket.create_connection(self._where, timeout=5).close()
            except OSError as e:
                raise SparseflowError(f"no Ray cluster answers at {self.address!r} ({e.strerror or e}); start one "
                                      "with 'ray start --head' and pass the address it prints") from None
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, log_to_driver=False)
                self._connected = True
            except Exception as e:  # version mismatch, no cluster for 'auto', ...
                raise SparseflowError(f"could not connect to the Ray cluster at {self.address!r}: {e}") from None
        return ray

    def parallel(self, n_cells: int) -> int:
        cpus = int(self.connect().cluster_resources().get("CPU", 1))
        return max(1, min(n_cells, cpus // self.cpus_per_cell))

    def describe(self, n_cells: int) -> str:
        return f"Ray cluster at {self.address}, {self.cpus_per_cell} CPU(s) per cell"

    def run(self, cells: list[Cell], done: Done) -> None:
        ray = self.connect()
        remote = ray.remote(num_cpus=self.cpus_per_cell, max_retries=1)(run_cell)
        pending = {remote.remote(dataclasses.replace(c, threads=self.cpus_per_cell)): c for c in cells}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    r = ray.get(ref)
                except Exception as e:  # the task could not run (worker died, sparseflow missing on the node)
                    r = row(cell.job, "failed", error=f"Ray task failed: {type(e).__name__}: {e}".splitlines()[0])
                done(r)

    def close(self) -> None:
        if self._connected:
            import ray

            ray.shutdown()
            self._connected = False
