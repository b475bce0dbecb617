"""Every experiment the project has, and ``sparseflow experiment all``: run them one after another.

Each entry is a command line of the ``sparseflow`` tool (an experiment, the lottery ticket run or the
storage benchmark) that writes a run directory; :func:`run_all` runs each in its own process (so one that
fails does not take the others down, and each starts from a clean interpreter: same seeds, same results as
running it alone), collects the JSON object it prints, and writes ``OUT/results.json`` (stamped, with a
row per experiment) and ``OUT/report.html`` (:mod:`sparseflow.experiments.html`).

An experiment that follows the protocol (:mod:`sparseflow.experiments.protocol`) is listed by its
``EXPERIMENT``, which gives its name, summary, data needs and ``full_s``, the wall time of its full run
measured on a 2-core x86-64 (README) that sizes the ``--yes`` check of a full ``experiment all``; other
commands are listed by their command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparseflow.errors import SparseflowError
from sparseflow.experiments import (collapse, golgi, hopfield, meanfield, methods, normalisation, percolation,
                                    regularisation, sparse_init)
from sparseflow.experiments.protocol import Experiment
from sparseflow.io import write_error
from sparseflow.training.processes import run_child
from sparseflow.training.options import BudgetOptions, check, option


@dataclass(frozen=True)
class Entry:
    """One experiment: its name, its command line (without --quick/--out/--json) and its data needs."""

    name: str
    argv: tuple[str, ...]
    summary: str
    full_s: float
    data: tuple[str, ...] = ()  # sub-folders of --data-dir it needs ("mnist", "fashion-mnist"), each as a flag
    data_flags: tuple[str, ...] = ()  # the flag passing each of them
    data_optional: bool = False  # runs without the data too (on a built-in dataset) when it is not given
    data_any: bool = False  # runs on whichever of its datasets are given; skipped only when none is

    @classmethod
    def of(cls, exp: Experiment) -> Entry:
        """The entry of an experiment that follows the protocol: ``sparseflow experiment NAME``."""
        d = exp.data
        if d is None:
            return cls(exp.name, ("experiment", exp.name), exp.summary, exp.full_s)
        return cls(exp.name, ("experiment", exp.name), exp.summary, exp.full_s, d.folders, d.flags, d.optional, d.any)

    def command(self, quick: bool, out: Path, data_root: Path | None) -> list[str] | str:
        """The argument list, or a reason to skip (data it needs but was not given)."""
        argv = list(self.argv)
        given = 0
        for sub, flag in zip(self.data, self.data_flags):
            if data_root is None or not (data_root / sub).is_dir():
                if self.data_optional or self.data_any:
                    continue
                return f"needs {sub} data: pass --data-dir with a {sub}/ folder"
            argv += [flag, str(data_root / sub)]
            given += 1
        if self.data_any and given == 0:
            return f"needs {' or '.join(self.data)} data: pass --data-dir with a {self.data[0]}/ folder"
        return argv + (["--quick"] if quick else []) + ["--out", str(out), "--json"]


# In the order ``experiment all`` runs them: the experiments that follow the protocol, by their EXPERIMENT, and
# the other commands (and experiments whose commands are still written by hand) by their command line.
_ALL: tuple[Experiment | Entry, ...] = (
    collapse.EXPERIMENT,
    percolation.EXPERIMENT,
    meanfield.EXPERIMENT,
    sparse_init.EXPERIMENT,
    regularisation.EXPERIMENT,
    hopfield.EXPERIMENT,
    normalisation.EXPERIMENT,
    methods.EXPERIMENT,
    golgi.EXPERIMENT,
    Entry("lottery", ("lottery",), "lottery tickets with reinit and random-mask controls", 1600),
    Entry("storage", ("bench", "storage"), "mask storage at the entropy bound", 120),
)
EXPERIMENTS: tuple[Entry, ...] = tuple(e if isinstance(e, Entry) else Entry.of(e) for e in _ALL)
NAMES = tuple(e.name for e in EXPERIMENTS)
# The experiments that follow the protocol (sparseflow.experiments.protocol): their commands are generated.
PROTOCOL: tuple[Experiment, ...] = tuple(e for e in _ALL if isinstance(e, Experiment))


def experiment_names() -> tuple[str, ...]:
    """The names ``sparseflow experiment NAME`` takes: every entry run as ``experiment NAME``, and ``all``."""
    return tuple(sorted({e.argv[1] for e in EXPERIMENTS if e.argv[0] == "experiment"} | {"all"}))


def select(only: tuple[str, ...] | None) -> list[Entry]:
    """The entries named in ``only`` (in registry order), or all of them."""
    if only is None:
        return list(EXPERIMENTS)
    unknown = [n for n in only if n not in NAMES]
    if unknown or not only:
        raise SparseflowError(f"unknown experiment {', '.join(map(repr, unknown)) or repr(only)}; "
                              f"known experiments: {', '.join(NAMES)}")
    return [e for e in EXPERIMENTS if e.name in only]


@dataclass(frozen=True)
class AllOptions(BudgetOptions):
    """Settings of ``sparseflow experiment all``."""

    out: Path = option(Path("runs/all"), "Run directory: one sub-folder per experiment, results.json, report.html.")
    only: tuple[str, ...] | None = option(None, "Comma-separated experiment names (default: all of them).")
    data_dir: Path | None = option(None, "Folder holding mnist/ and fashion-mnist/ (the experiments that need them "
                                         "are skipped without it).")

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class Outcome:
    """What one experiment did: status ok / failed / skipped, its JSON object, criteria and time."""

    name: str
    status: str
    wall_s: float
    criteria: dict[str, Any]
    detail: str

    def to_json(self) -> dict[str, Any]:
        tested = [c for c in self.criteria.values() if c.get("pass") is not None]  # None: not testable here
        return {"name": self.name, "status": self.status, "wall_s": self.wall_s, "criteria": self.criteria,
                "criteria_passed": sum(bool(c["pass"]) for c in tested), "criteria_total": len(tested),
                "criteria_untested": len(self.criteria) - len(tested), "detail": self.detail}


def run_one(entry: Entry, quick: bool, out: Path, data_root: Path | None) -> Outcome:
    """Run one entry in a fresh interpreter; its stderr goes to ``out/log.txt``."""
    cmd = entry.command(quick, out, data_root)
    if isinstance(cmd, str):
        return Outcome(entry.name, "skipped", 0.0, {}, cmd)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        log = open(out / "log.txt", "wb")
    except OSError as e:
        raise write_error(out / "log.txt", e, kept=(out / "log.txt").is_file()) from e
    with log:  # the child ends with this process (Ctrl-C, kill)
        proc = run_child([sys.executable, "-m", "sparseflow.cli", *cmd], stdout=subprocess.PIPE, stderr=log)
    wall = time.perf_counter() - t0
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    obj: dict[str, Any] = {}
    if lines:
        try:
            obj = json.loads(lines[-1])
        except json.JSONDecodeError:
            obj = {}
    crit = obj.get("criteria") if isinstance(obj, dict) and isinstance(obj.get("criteria"), dict) else {}
    # Exit status 1 with a JSON object whose criteria failed: the experiment ran; its criteria say how it went.
    ran = proc.returncode == 0 or proc.returncode == 1 and any(c.get("pass") is False for c in crit.values())
    if not ran or not isinstance(obj, dict) or not obj:
        tail = (out / "log.txt").read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        return Outcome(entry.name, "failed", wall, {}, f"exit status {proc.returncode}: {tail[0][:300]}")
    return Outcome(entry.name, "ok", wall, crit, "sparseflow " + " ".join(cmd))


def run_all(entries: list[Entry], quick: bool, out: Path, data_root: Path | None,
            progress: Callable[[str], None] = lambda _: None) -> list[Outcome]:
    """Run ``entries`` one by one into ``out/NAME``; then write the stamped summary and the HTML page."""
    from sparseflow.experiments.html import write_html
    from sparseflow.training.rundir import write_results

    out.mkdir(parents=True, exist_ok=True)
    outcomes = []
    t0 = time.perf_counter()
    for entry in entries:
        progress(entry.name)
        outcomes.append(run_one(entry, quick, out / entry.name, data_root))
    crit = {f"{o.name}.{k}": v for o in outcomes for k, v in o.criteria.items()}
    write_results(out, "all", {"quick": quick, "runs": [o.to_json() for o in outcomes], "criteria": crit,
                               "wall_s": time.perf_counter() - t0})
    if any(o.status == "ok" for o in outcomes):
        write_html(out)
    return outcomes
