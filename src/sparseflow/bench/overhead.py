"""Benchmarks run by ``sparseflow bench``: measured ratios against a dense baseline in the same run.

Timings are medians over interleaved repeats (dense, then each variant, repeated), so slow drift of a
shared machine hits every variant alike; only ratios are reported as results.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparseflow.distributions import uniform
from sparseflow.methods import GMP, Method, RandomSparse
from sparseflow.training.models import MLP


@dataclass(frozen=True)
class OverheadCase:
    name: str
    input_size: int
    hidden: tuple[int, ...]
    batch: int
    steps: int  # timed steps per repeat


CASES = (
    OverheadCase("lenet300-100 b128", 784, (300, 100), 128, 50),
    OverheadCase("mlp 4096-4096-4096-10 b64", 4096, (4096, 4096, 4096), 64, 2),
)
QUICK_CASES = (
    OverheadCase("lenet300-100 b128", 784, (300, 100), 128, 30),
    OverheadCase("mlp 1024-1024-1024-10 b64", 1024, (1024, 1024, 1024), 64, 10),
)


@dataclass
class OverheadRow:
    case: str
    variant: str
    step_ms: float  # median steady-state step (no mask update)
    update_ms: float | None  # median step that includes a mask update (GMP), else None
    every: int | None
    ratio: float = 0.0  # amortised step time / dense step time
    extra: dict[str, Any] = field(default_factory=dict)


def _model(case: OverheadCase, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(case.input_size, 10, case.hidden)


def _trainer(case: OverheadCase, method: Method | None) -> tuple[Callable[[], None], Method | None]:
    model = _model(case)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if method is not None:
        method.prepare(model, opt)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(case.batch, case.input_size, generator=g)  # timing only: data values do not matter
    y = torch.randint(0, 10, (case.batch,), generator=g)

    def step() -> None:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if method is not None:
            method.step()
        opt.zero_grad(set_to_none=True)

    return step, method


def _time(fn: Callable[[], None], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def overhead(cases: tuple[OverheadCase, ...] = CASES, *, repeats: int = 10, sparsity: float = 0.9,
             every: int = 100, progress: Callable[[str], None] | None = None) -> list[OverheadRow]:
    """Training-step time of masked training vs dense on the same model, in the same run.

    Variants: a static random mask (``RandomSparse``, uniform) and GMP between and at pruning updates;
    GMP's ratio is amortised over ``every`` steps: (step · (every − 1) + update) / every.
    """
    rows: list[OverheadRow] = []
    for case in cases:
        # GMP pruned to the final sparsity in prepare, whose next update lies beyond the timed window:
        # its steady-state step between updates.
        big = 10**9
        variants: dict[str, Method | None] = {
            "dense": None,
            "static": RandomSparse(sparsity, distribution=uniform),
            "gmp": GMP(sparsity, initial_sparsity=sparsity, start=0, end=big, every=big // 2),
        }
        steps = {name: _trainer(case, m)[0] for name, m in variants.items()}
        for fn in steps.values():  # warm-up: allocator, thread pool, lazy optimizer state
            _time(fn, 3)
        times: dict[str, list[float]] = {name: [] for name in variants}
        names = list(steps)
        for r in range(repeats):
            if progress:
                progress(f"{case.name}: repeat {r + 1}/{repeats}")
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate: no variant always first
                times[name].append(_time(steps[name], case.steps))
        # Cost of a GMP pruning update on this model (magnitude top-k over every layer + zeroing).
        gmp = GMP(sparsity, start=0, end=2 * every, every=every)
        upd_step, _ = _trainer(case, gmp)
        upd_times = []
        for _ in range(max(3, repeats)):
            gmp._step = every - 1  # the next step() is a scheduled pruning update
            upd_times.append(_time(upd_step, 1))
        dense = statistics.median(times["dense"])
        for name in variants:
            med = statistics.median(times[name])
            row = OverheadRow(case.name, name, med * 1e3, None, None)
            if name == "gmp":
                upd = statistics.median(upd_times)
                row.update_ms, row.every = upd * 1e3, every
                med = (med * (every - 1) + upd) / every
            row.ratio = med / dense
            rows.append(row)
    return rows
