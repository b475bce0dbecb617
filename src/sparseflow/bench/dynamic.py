"""Overhead of dynamic sparse training (SET, RigL) against dense training, measured in the same run.

Same protocol as :func:`sparseflow.bench.overhead.overhead`: the same model initialisation, interleaved rotating
repeats, medians, ratios only. A dynamic method costs a masked step on ordinary steps (RigL also checks,
per layer, whether the coming step is an update) and, every ``every`` steps, a step that also copies the
dense gradients (RigL), drops and regrows; the ratio amortises it: (step · (every − 1) + update) / every.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import partial

from sparseflow.bench.overhead import CASES, OverheadCase, OverheadRow, _time, _trainer
from sparseflow.methods import SET, Method, RandomSparse, RigL

LENET = CASES[0]  # LeNet-300-100, batch 128


def rigl_overhead(cases: tuple[OverheadCase, ...] = (LENET,), *, repeats: int = 10, sparsity: float = 0.9,
                  every: int = 100, progress: Callable[[str], None] | None = None) -> list[OverheadRow]:
    """Amortised training-step time of RigL and SET (ERK, ΔT = ``every``) vs dense; rows as in ``bench``.

    Variants: dense, a static ERK mask (what every masked step costs), SET and RigL. The dynamic methods'
    rows carry ``update_ms`` (median step that includes a mask update) and the amortised ``ratio``.
    """
    rows: list[OverheadRow] = []
    big = 10**9
    for case in cases:
        # Steady state: the next update lies beyond the timed window.
        variants: dict[str, Method | None] = {
            "dense": None,
            "static": RandomSparse(sparsity),
            "set": SET(sparsity, update_every=big // 2, until=big),
            "rigl": RigL(sparsity, update_every=big // 2, until=big),
        }
        # And the same methods with updates every `every` steps, until far away (the drop fraction stays
        # near alpha: the most swaps), each timed for one step that updates the mask.
        updaters = {name: cls(sparsity, update_every=every, until=big) for name, cls in (("set", SET), ("rigl", RigL))}
        steps = {name: _trainer(case, m)[0] for name, m in variants.items()}
        upd_steps = {name: _trainer(case, m)[0] for name, m in updaters.items()}

        def update_step(name: str) -> None:
            updaters[name]._step = every - 1  # the coming backward keeps the gradient; step() updates
            upd_steps[name]()

        for fn in steps.values():  # warm-up: allocator, thread pool, lazy optimizer state
            _time(fn, 3)
        for name in updaters:
            _time(partial(update_step, name), 2)
        times: dict[str, list[float]] = {name: [] for name in variants}
        upd_times: dict[str, list[float]] = {name: [] for name in updaters}
        names = list(steps)
        n_rep = max(3, repeats)
        for r in range(n_rep):  # interleaved: slow drift of a shared machine hits every variant alike
            if progress:
                progress(f"{case.name}: repeat {r + 1}/{n_rep}")
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate: no variant always first
                times[name].append(_time(steps[name], case.steps))
                if name in updaters:
                    upd_times[name].append(_time(partial(update_step, name), 1))
        dense = statistics.median(times["dense"])
        for name in variants:
            med = statistics.median(times[name])
            row = OverheadRow(case.name, name, med * 1e3, None, None)
            if name in updaters:
                upd = statistics.median(upd_times[name])
                row.update_ms, row.every = upd * 1e3, every
                med = (med * (every - 1) + upd) / every
            row.ratio = med / dense
            rows.append(row)
    return rows
