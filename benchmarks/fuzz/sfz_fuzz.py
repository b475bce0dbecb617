"""Fuzzing the ``.sfz`` reader: seeded valid files, structure-aware mutations, and an outcome per case.

Coverage-guided fuzzers (AFL, libFuzzer) find crashes fastest when the input already has the right structure;
for a container whose header is JSON and whose payloads are length-framed, random bytes die at the first
length check. So, as in grammar-based fuzzing, each case starts from a valid file written by
:func:`~sparseflow.storage.container.save` (a small random state dict with random / N:M / block / trained-like
masks, fp32/fp16/bf16, meta) and applies one to three mutations: byte-level ones (bit flips, truncation,
insertion, deletion, splices, a lying length field) and header-level ones that keep the file parseable so the
deeper checks run (shapes, nnz, crc, codec, dtypes, offsets, kinds, duplicate keys, huge and negative numbers,
wrong types, and consistent multi-field edits a checksum over the values alone cannot see).

Each mutated file goes through :func:`~sparseflow.storage.container.read_bytes` and gets one outcome:
``identical`` (decodes to the original tensors and masks: the mutation did not change the model, e.g. JSON
whitespace, ``density`` or ``meta``), ``rejected`` (a :class:`~sparseflow.errors.StorageError`: the good case),
and the failures ``crash`` (any other exception), ``silent`` (decodes without error to different tensors),
``slow`` (over the time limit) and ``over-allocation`` (peak traced memory beyond what the file's own header
shapes justify, or a decoded tensor over ``max_numel``). Every case is reproducible from ``(seed, index)``
through :func:`case_bytes`.
"""

from __future__ import annotations

import signal
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sparseflow.errors import StorageError
from sparseflow.storage.container import Stored, read_bytes
from sfz_mutate import MUTATORS, claimed_numel, make_pool, mutate

__all__ = ["FuzzResult", "Failure", "fuzz", "case_bytes", "same_model", "OUTCOMES", "FAILURES"]

OUTCOMES = ("identical", "rejected", "crash", "silent", "slow", "over-allocation")
FAILURES = ("crash", "silent", "slow", "over-allocation")
_POOL = 48  # valid base files per run; mutations, not bases, supply the variety
_KEEP = 20  # failures recorded per outcome


@dataclass(frozen=True)
class Failure:
    """One failing case: rerun it with ``case_bytes(seed, index)``."""

    index: int
    outcome: str
    mutations: tuple[str, ...]
    detail: str
    seconds: float
    peak_bytes: int


@dataclass(frozen=True)
class FuzzResult:
    n: int
    seed: int
    max_numel: int
    time_limit: float
    counts: dict[str, int]
    by_mutation: dict[str, dict[str, int]]
    failures: tuple[Failure, ...]
    max_seconds: float
    max_peak_ratio: float  # peak traced bytes / budget, worst case (<= 1 passes)
    wall_s: float

    def criteria(self) -> dict[str, dict[str, Any]]:
        c = self.counts
        return {
            "crashes": {"value": c["crash"], "target": "== 0", "pass": c["crash"] == 0},
            "silently different": {"value": c["silent"], "target": "== 0", "pass": c["silent"] == 0},
            "max decode time (s)": {"value": round(self.max_seconds, 4), "target": f"< {self.time_limit:g}",
                                    "pass": self.max_seconds < self.time_limit},
            "over-allocations": {"value": c["over-allocation"], "target": "== 0", "pass": c["over-allocation"] == 0},
        }

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed, "max_numel": self.max_numel, "time_limit": self.time_limit,
                "counts": self.counts, "by_mutation": self.by_mutation, "max_seconds": self.max_seconds,
                "max_peak_ratio": self.max_peak_ratio, "wall_s": self.wall_s,
                "failures": [f.__dict__ for f in self.failures], "criteria": self.criteria()}


def same_model(a: Stored, b: Stored) -> bool:
    """Same tensor names, dtypes, shapes and bytes, and the same masks (meta, info and order may differ)."""
    if sorted(a.tensors) != sorted(b.tensors) or sorted(a.mask) != sorted(b.mask):
        return False
    for name, t in a.tensors.items():
        u = b.tensors[name]
        if t.dtype != u.dtype or t.shape != u.shape or not _bytes(t) == _bytes(u):
            return False
    return all(torch.equal(a.mask[n], b.mask[n]) for n in a.mask)


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def case_bytes(seed: int, index: int, pool: list[bytes] | None = None) -> tuple[bytes, tuple[str, ...]]:
    """The mutated file of case ``index`` of a run with ``seed``, and the mutations applied."""
    pool = make_pool(seed, _POOL) if pool is None else pool
    rng = np.random.default_rng([seed, index])
    base = pool[int(rng.integers(len(pool)))]
    return mutate(base, rng, pool)


class _Hang(BaseException):
    """Raised by the alarm; a BaseException so the reader's own ``except Exception`` cannot swallow it."""


def fuzz(
    n: int,
    seed: int = 0,
    *,
    max_numel: int = 2**20,
    time_limit: float = 1.0,
    progress: Callable[[int], None] | None = None,
) -> FuzzResult:
    """Decode ``n`` mutated files and count outcomes; each is compared with its unmutated base as decoded.

    A case is stopped after ``10 * time_limit`` (SIGALRM, main thread only) and counted ``slow``. Peak memory is
    measured with :mod:`tracemalloc`, which sees numpy and Python allocations but not torch's; torch's are
    bounded by checking that every decoded tensor fits ``max_numel``.
    """
    if n < 0 or max_numel < 1 or time_limit <= 0:
        raise StorageError(f"fuzz needs n >= 0, max_numel >= 1 and time_limit > 0, got {n}, {max_numel}, {time_limit}")
    start = time.perf_counter()
    pool = make_pool(seed, _POOL)
    refs = [read_bytes(b, max_numel=max_numel) for b in pool]
    counts = dict.fromkeys(OUTCOMES, 0)
    by_mut: dict[str, dict[str, int]] = {m: dict.fromkeys(OUTCOMES, 0) for m in MUTATORS}
    failures: list[Failure] = []
    max_s, max_ratio = 0.0, 0.0
    alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    armed = [False]  # a late SIGALRM (delivered after the case ended) must not hit the next statement

    def on_alarm(signum: int, frame: object) -> None:
        if armed[0]:
            raise _Hang

    old = signal.signal(signal.SIGALRM, on_alarm) if alarm else None
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        for i in range(n):
            rng = np.random.default_rng([seed, i])
            b = int(rng.integers(len(pool)))
            data, muts = mutate(pool[b], rng, pool)
            # Budget: the file itself a few times over, plus 24 bytes per element the header claims
            # (bool mask + int64 positions + values), plus fixed slack for the decoder's tables.
            budget = 4 * len(data) + 24 * claimed_numel(data, max_numel) + 2**21
            outcome, detail, secs, peak = _run_case(data, refs[b], max_numel, time_limit, armed if alarm else None)
            if outcome not in FAILURES and peak > budget:
                outcome, detail = "over-allocation", f"peak {peak} bytes > budget {budget}"
            max_s, max_ratio = max(max_s, secs), max(max_ratio, peak / budget)
            counts[outcome] += 1
            for m in set(muts):
                by_mut[m][outcome] += 1
            if outcome in FAILURES and sum(f.outcome == outcome for f in failures) < _KEEP:
                failures.append(Failure(i, outcome, muts, detail, secs, peak))
            if progress is not None:
                progress(i + 1)
    finally:
        if not tracing:
            tracemalloc.stop()
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    by_mut = {m: {k: v for k, v in c.items() if v} for m, c in by_mut.items()}
    return FuzzResult(n, seed, max_numel, time_limit, counts, by_mut, tuple(failures), max_s, max_ratio,
                      time.perf_counter() - start)


def _run_case(data: bytes, ref: Stored, max_numel: int, time_limit: float, armed: list[bool] | None
              ) -> tuple[str, str, float, int]:
    """(outcome, detail, seconds, peak traced bytes) of decoding one file."""
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    try:
        try:
            if armed is not None:
                armed[0] = True
                signal.setitimer(signal.ITIMER_REAL, 10 * time_limit)
            got = read_bytes(data, max_numel=max_numel)
        finally:
            if armed is not None:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        outcome, detail = "decoded", ""
    except StorageError as e:
        outcome, detail = "rejected", str(e)[:300]
    except _Hang:
        outcome, detail = "slow", f"stopped after {10 * time_limit:g} s"
    except Exception as e:  # noqa: BLE001  (the point: anything but StorageError is a crash)
        outcome, detail = "crash", f"{type(e).__name__}: {str(e)[:300]}"
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    if outcome == "decoded":
        too_big = [k for k, t in got.tensors.items() if t.numel() > max_numel]
        if too_big:
            outcome, detail = "over-allocation", f"decoded {too_big[0]!r} has over max_numel={max_numel} elements"
        elif same_model(got, ref):
            outcome = "identical"
        else:
            outcome, detail = "silent", _diff(ref, got)
    if outcome in ("identical", "rejected") and secs > time_limit:
        outcome, detail = "slow", f"{secs:.3f} s ({outcome})"
    return outcome, detail, secs, peak


def _diff(a: Stored, b: Stored) -> str:
    if sorted(a.tensors) != sorted(b.tensors):
        return f"tensor names {sorted(a.tensors)[:4]} became {sorted(b.tensors)[:4]}"
    for name, t in a.tensors.items():
        u = b.tensors[name]
        if t.dtype != u.dtype or t.shape != u.shape:
            return f"{name!r}: {t.dtype} {tuple(t.shape)} became {u.dtype} {tuple(u.shape)}"
        if _bytes(t) != _bytes(u):
            return f"{name!r}: values differ"
    return "masks differ"
