"""Experiment run directories: one stamped ``results.json``, ``report.md`` and PNG figures per run.

Every experiment writes through :func:`write_run`, which stamps ``results.json`` with the experiment's name,
the run-directory format and the sparseflow version, and :func:`read_run` refuses a directory written by
another format or version (its figures could mean something else), naming both. :func:`check_budget`
refuses a grid whose estimated run time exceeds an hour unless the user says ``--yes``.

Layout::

    OUT/results.json   {"experiment": NAME, "format": RUN_FORMAT, "sparseflow_version": ..., "criteria": ..., ...}
    OUT/report.md      the Markdown table(s), figures linked by relative path
    OUT/*.png          figures
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparseflow.errors import SparseflowError
from sparseflow.io import atomic_write_text, json_safe, make_folder

RUN_FORMAT = 1
RESULTS, REPORT = "results.json", "report.md"
BUDGET_S = 3600.0  # grids estimated to run longer than this need --yes


def _version() -> str:
    from sparseflow import __version__

    return __version__


def stamp(results: dict[str, Any], experiment: str) -> dict[str, Any]:
    """``results`` with the experiment's name, the run format and the sparseflow version in front."""
    return {"experiment": experiment, "format": RUN_FORMAT, "sparseflow_version": _version(), **results}


def write_results(out: Path, experiment: str, results: dict[str, Any], name: str = RESULTS) -> Path:
    """Write the stamped ``results`` as JSON to ``out/name`` atomically (``out`` is created if missing)."""
    make_folder(out)
    atomic_write_text(out / name, json.dumps(json_safe(stamp(results, experiment)), indent=2) + "\n")
    return out / name


def write_run(out: Path, experiment: str, results: dict[str, Any], report_md: str) -> Path:
    """Write ``results.json`` (stamped) and ``report.md`` into ``out`` atomically; figures are written by the caller."""
    write_results(out, experiment, results)
    atomic_write_text(out / REPORT, report_md)
    return out


def results_path(out: Path) -> Path | None:
    """The results file of a run directory (``results.json``, or ``result.json`` for benchmarks and training)."""
    for name in (RESULTS, "result.json"):
        if (Path(out) / name).is_file():
            return Path(out) / name
    return None


def read_run(out: Path, experiment: str | None = None) -> dict[str, Any]:
    """The stamped results of a run directory; refuses another format, version or experiment, naming it."""
    path = results_path(out)
    if path is None:
        raise SparseflowError(f"{str(out)!r} is not a run directory: it has no {RESULTS}; "
                              "pass the --out folder of a 'sparseflow experiment', 'bench' or 'train' run")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SparseflowError(f"{str(path)!r} is not valid JSON ({e}); rerun the experiment into a new folder") from None
    if not isinstance(obj, dict):
        raise SparseflowError(f"{str(path)!r} does not hold a JSON object; rerun the experiment into a new folder")
    fmt, ver = obj.get("format"), obj.get("sparseflow_version")
    if fmt != RUN_FORMAT or ver != _version():
        raise SparseflowError(
            f"{str(out)!r} was written by sparseflow {ver!r} (run format {fmt!r}); this is sparseflow {_version()} "
            f"(run format {RUN_FORMAT}), whose figures may differ: rerun the experiment into a new folder")
    if experiment is not None and obj.get("experiment") != experiment:
        raise SparseflowError(f"{str(out)!r} holds experiment {obj.get('experiment')!r}, not {experiment!r}; "
                              "pass another --out folder")
    return obj


def check_budget(estimate_s: float, yes: bool, what: str, limit_s: float = BUDGET_S) -> None:
    """Refuse a run estimated to take longer than ``limit_s`` on this machine unless ``yes`` is given."""
    if estimate_s > limit_s and not yes:
        raise SparseflowError(
            f"{what} would run for about {_human(estimate_s)} on this machine (estimated from its grid); "
            "pass --yes to run it anyway, or shrink the grid (--quick for a reduced run)")


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
