"""``sparseflow lottery``: iterative magnitude pruning with rewinding, its controls and the report; generated
from LotteryJob and LotteryOptions."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from sparseflow.cli._app import app
from sparseflow.cli.generate import Call, command
from sparseflow.io import check_folder_target
from sparseflow.lottery import LotteryJob, LotteryOptions


def lottery(call: Call) -> None:
    """Lottery tickets (Frankle & Carbin 2019): prune, rewind, retrain; tickets vs random reinit vs random mask.

    Rerunning the same command resumes: finished levels are skipped, an interrupted one continues from its
    last checkpoint. With no options: a 500-500 MLP on MNIST-1D down to 2 % of its weights.
    """
    from sparseflow.lottery import criteria, run_lottery, write_report
    from sparseflow.lottery.report import reading

    job, o = call.config, call.options
    if "levels" in call.given and "target_density" not in call.given:
        job = dataclasses.replace(job, target_density=None)  # --levels alone is the stopping rule
    out = o.out if o.out is not None else Path("runs") / job.run_name()
    check_folder_target(out, "--out")
    command_line = "sparseflow " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with call.run.progress("lottery", enabled=o.progress) as tick:
        result = run_lottery(job, out, data_dir=o.data_dir, recompute_level=o.recompute_level,
                             command=command_line, progress=_phases(call, tick, o.progress), workers=o.workers)
    criteria_at = o.criteria_at
    if criteria_at is None and job.dataset == "mnist1d" and not call.quick:
        criteria_at = 0.05  # the MNIST-1D reference compares ticket and random mask at 95 % sparsity
    if result.levels_trained == 0:
        call.run.note(f"{out}: every level was finished before with these settings; shown as it is, nothing "
                      "trained (pass another --out, or --recompute-level L, to train again)")
    obj = write_report(result, criteria(result, criteria_at), command=command_line)

    rows = []
    for row in obj["levels"]:
        arms = row["arms"]
        acc = [f"{100 * arms[a][obj['accuracy']]['mean']:.2f}" if a in arms else "-"
               for a in ("ticket", "reinit", "random")]
        rows.append((row["level"], f"{100 * row['density']:.2f}", *acc,
                     f"{arms['ticket']['early_stop_step']['mean']:.0f}"))
    call.run.table(f"lottery: {job.model} on {job.dataset}, test accuracy % {reading(obj['accuracy'])} (mean over seeds "
                   f"{list(job.seeds)})",
                   ("level", "weights %", "ticket", "reinit", "random", "ticket early stop"), rows, left=())
    call.run.print(f"run directory: {out}  (report.md, accuracy.png, early_stop.png, results.json, seed*/masks.sfm)  "
                   f"{result.wall_s:.1f} s")
    call.run.finish(obj)


def _phases(call: Call, tick: Callable[..., None], enabled: bool) -> Callable[[str, int], None]:
    """The progress callback: moves the bar, and prints one line as each level starts (``seed S level L/N``)
    or is found finished, so the phases stay readable above the bar."""
    seen: set[str] = set()

    def progress(label: str, steps: int) -> None:
        phase = label.rsplit(" ", 1)[0] if steps else label  # "seed 0 level 2/5" (without the arm)
        if enabled and phase not in seen:
            seen.add(phase)
            call.run.note(f"lottery {phase}")
        tick(label, steps)

    return progress


command(app, "lottery", lottery, config=LotteryJob, options=LotteryOptions)
