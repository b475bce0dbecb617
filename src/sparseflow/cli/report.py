"""``sparseflow report RUN_DIR`` (one HTML page) and ``sparseflow experiment all``."""

from __future__ import annotations

from sparseflow.cli._app import app, experiment_app
from sparseflow.cli.generate import Call, command
from sparseflow.errors import SparseflowError
from sparseflow.experiments.html import ReportOptions, write_html
from sparseflow.experiments.registry import AllOptions, run_all, select
from sparseflow.io import check_folder_target
from sparseflow.training.report import criteria_counts
from sparseflow.training.rundir import check_budget


def report(call: Call) -> None:
    """Render a run directory as one self-contained HTML page: report, criteria and figures."""
    # rendering is always quick; --quick is accepted like every command's
    path, runs = write_html(call.options.run_dir, call.options.out)
    crit = {f"{r.name}.{k}": c for r in runs for k, c in r.criteria().items()}
    tested = [c for c in crit.values() if c.get("pass") is not None]
    call.run.print(f"wrote {path}: {len(runs)} run(s), {criteria_counts(crit)}, "
                   f"{sum(len(r.figures) for r in runs)} figures")
    # (rendering a report does not fail for the criteria it shows: exit status 0)
    call.run.finish({"html": str(path), "runs": [{"name": r.name, "path": str(r.path)} for r in runs],
                     "criteria_passed": sum(bool(c["pass"]) for c in tested), "criteria_total": len(tested),
                     "criteria_untested": len(crit) - len(tested)})


def experiment_all(call: Call) -> None:
    """Run every experiment (or --only some) one after another and write one report."""
    o, quick = call.options, call.quick
    entries = select(o.only)
    if o.data_dir is not None and not o.data_dir.is_dir():
        raise SparseflowError(f"--data-dir {str(o.data_dir)!r} is not a folder; pass the folder holding mnist/ "
                              "and fashion-mnist/")
    check_folder_target(o.out, "--out")
    if not quick:
        check_budget(sum(e.full_s for e in entries), o.yes, "experiment all (full runs)")
    with call.run.progress("experiments", total=len(entries)) as tick:
        started: list[str] = []

        def start(name: str) -> None:  # the previous experiment is done when the next one starts
            tick(f"experiment {name}", advance=1 if started else 0)
            started.append(name)

        outcomes = run_all(entries, quick, o.out, o.data_dir, start)
        tick(advance=1)
    rows = []
    for out in outcomes:
        j = out.to_json()
        untested = f" ({j['criteria_untested']} n/a)" if j["criteria_untested"] else ""
        rows.append((out.name, out.status, f"{j['criteria_passed']} / {j['criteria_total']}{untested}", f"{out.wall_s:.1f}",
                     out.detail if out.status != "ok" else ""))
    call.run.table(f"experiment all ({'quick' if quick else 'full'}) -> {o.out}",
                   ("experiment", "status", "criteria passed", "wall s", "detail"), rows,
                   left=("experiment", "status", "detail"))
    if (o.out / "report.html").is_file():
        call.run.print(f"report: {o.out / 'report.html'}")
    failed = [out.name for out in outcomes if out.status == "failed"]
    crit = {f"{out.name}.{k}": v for out in outcomes for k, v in out.criteria.items()}
    call.run.finish({"out": str(o.out), "quick": quick, "runs": [out.to_json() for out in outcomes], "criteria": crit,
                     "failed": failed}, criteria=False, exit_code=1 if failed else 0)


command(app, "report", report, options=ReportOptions)
command(experiment_app, "all", experiment_all, options=AllOptions)
