"""Run directories (stamp, version refusal, budget), the HTML report and `sparseflow experiment all`."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

import sparseflow
from sparseflow.errors import SparseflowError
from sparseflow.experiments import registry
from sparseflow.experiments.html import discover, write_html
from sparseflow.training.rundir import RUN_FORMAT, check_budget, read_run, write_results, write_run


def _png(path: Path, value: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, value])
    fig.savefig(path)
    plt.close(fig)
    return path.read_bytes()


def _run(out: Path, name: str, passes: list[bool]) -> dict[str, bytes]:
    crit = {f"c{i}": {"value": float(i), "target": ">= 0", "pass": p} for i, p in enumerate(passes)}
    write_run(out, name, {"criteria": crit, "wall_s": 1.5}, f"# {name}\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![fig](fig.png)\n")
    return {"fig.png": _png(out / "fig.png", 1.0), "extra.png": _png(out / "extra.png", 2.0)}


def test_results_are_stamped_and_read_back(tmp_path: Path) -> None:
    write_run(tmp_path, "demo", {"x": 1.0, "nan": float("nan")}, "# demo\n")
    obj = read_run(tmp_path, "demo")
    assert obj["experiment"] == "demo" and obj["format"] == RUN_FORMAT
    assert obj["sparseflow_version"] == sparseflow.__version__
    assert obj["x"] == 1.0 and obj["nan"] is None  # strict JSON on disk
    with pytest.raises(SparseflowError, match="holds experiment 'demo', not 'other'"):
        read_run(tmp_path, "other")


def test_another_version_or_format_is_refused(tmp_path: Path) -> None:
    path = write_results(tmp_path, "demo", {"criteria": {}})
    obj = json.loads(path.read_text())
    for key, value in (("sparseflow_version", "0.0.1"), ("format", RUN_FORMAT + 1)):
        path.write_text(json.dumps({**obj, key: value}))
        with pytest.raises(SparseflowError, match="was written by sparseflow .*rerun the experiment"):
            read_run(tmp_path)
    path.write_text(json.dumps({k: v for k, v in obj.items() if k != "sparseflow_version"}))  # unstamped: older
    with pytest.raises(SparseflowError, match="written by sparseflow None"):
        read_run(tmp_path)
    path.write_text("{not json")
    with pytest.raises(SparseflowError, match="not valid JSON"):
        read_run(tmp_path)
    with pytest.raises(SparseflowError, match="has no results.json"):
        read_run(tmp_path / "missing")


def test_budget_check_names_the_estimate() -> None:
    check_budget(3599, False, "grid")
    check_budget(10 * 3600, True, "grid")
    with pytest.raises(SparseflowError, match=r"grid would run for about 10.0 h .*--yes"):
        check_budget(10 * 3600, False, "grid")
    with pytest.raises(SparseflowError, match=r"about 3.0 days"):
        check_budget(3 * 86400, False, "grid")


def test_html_embeds_every_figure_and_the_criteria(tmp_path: Path) -> None:
    pngs = _run(tmp_path, "demo", [True, False])
    path, runs = write_html(tmp_path)
    page = path.read_text()
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(u) for u in uris) == sorted(pngs.values())  # referenced and unreferenced
    assert "<td>1</td>" in page and "<th>a</th>" in page  # the Markdown table became HTML
    assert page.count('class="pass">pass<') == 1 and page.count('class="fail">FAIL<') == 1
    assert [r.name for r in runs] == ["demo"]


def test_html_of_a_folder_of_runs_has_a_summary(tmp_path: Path) -> None:
    _run(tmp_path / "a", "alpha", [True, True])
    _run(tmp_path / "b", "beta", [True, False, False])
    write_results(tmp_path, "all", {"runs": [{"name": "a", "wall_s": 3.0}, {"name": "b", "wall_s": 4.0}]})
    assert [r.name for r in discover(tmp_path)] == ["alpha", "beta"]
    page = write_html(tmp_path, tmp_path / "page.html")[0].read_text()
    assert '<a href="#run0">alpha</a></td><td class="pass">2 / 2</td>' in page
    assert '<a href="#run1">beta</a></td><td class="fail">1 / 3</td>' in page
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparseflowError, match="holds no results.json"):
        discover(tmp_path / "empty")


def test_untestable_criteria_read_n_a_not_fail(tmp_path: Path) -> None:
    write_run(tmp_path / "a", "alpha", {"criteria": {
        "measured": {"value": 1.0, "target": ">= 0", "pass": True},
        "scale": {"value": 2.0, "target": "<= 1", "pass": None, "note": "not resolved at the quick scale"}}}, "# a\n")
    write_results(tmp_path, "all", {"runs": [{"name": "a", "wall_s": 1.0}]})
    (tmp_path / "b").mkdir()
    _run(tmp_path / "b", "beta", [True])
    page = write_html(tmp_path)[0].read_text()
    assert '<td class="na">n/a (not resolved at the quick scale)</td>' in page and "FAIL" not in page
    assert '<a href="#run0">alpha</a></td><td class="pass">1 / 1 (1 n/a)</td>' in page


def test_train_report_page_keeps_the_connectivity_summary_out_of_its_table(tmp_path: Path) -> None:
    import html as htmllib

    from sparseflow.training.job import TrainJob
    from sparseflow.training.run import run_train_job

    result = run_train_job(TrainJob(method="random", epochs=1, hidden=(32,), baseline=False), tmp_path, progress=False)
    page = write_html(tmp_path)[0].read_text()
    summary = htmllib.escape(result.connectivity.summary(), quote=False)
    assert f"<p>{summary}</p>" in page  # a paragraph after the table, not one more row of it
    assert f"<td>{summary}" not in page
    assert '<td class="pass">pass</td>' in page and "<h2>Criteria</h2>" in page  # report.md's criteria section


@pytest.mark.slow
def test_sweep_page_has_the_accuracy_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sparseflow.sweep.config import Sweep
    from sparseflow.sweep.grid import run_sweep

    grid = Sweep(methods=("random",), sparsities=(0.5,), seeds=(0,), datasets=("digits",), epochs=1, hidden=(16,))
    run_sweep(grid, tmp_path)
    page = write_html(tmp_path)[0].read_text()
    assert "<th>accuracy (%)</th>" in page and "<td>random</td>" in page  # report.md carries table.md's table
    assert "all_cells_finished" in page


def test_report_cli(run_cli, tmp_path: Path) -> None:
    _run(tmp_path, "demo", [True])
    code, out, _ = run_cli(["report", str(tmp_path), "--json"])
    assert code == 0
    obj = json.loads(out.strip().splitlines()[-1])
    assert obj["criteria_passed"] == 1 and obj["criteria_total"] == 1 and Path(obj["html"]).is_file()
    code, _, err = run_cli(["report", str(tmp_path / "nope")])
    assert code == 2 and "does not exist" in err
    (tmp_path / "results.json").write_text(json.dumps({"experiment": "demo", "format": 0}))
    code, _, err = run_cli(["report", str(tmp_path)])
    assert code == 2 and "was written by sparseflow" in err


def test_unknown_experiments_are_named(run_cli) -> None:
    code, _, err = run_cli(["experiment", "nosuch"])
    assert code == 2 and "unknown experiment 'nosuch'" in err and "collapse" in err
    code, _, err = run_cli(["experiment", "all", "--only", "collapse,nosuch"])
    assert code == 2 and "'nosuch'" in err and all(n in err for n in registry.NAMES)


def test_full_run_of_everything_needs_yes(run_cli, tmp_path: Path) -> None:
    code, _, err = run_cli(["experiment", "all", "--out", str(tmp_path)])
    assert code == 2 and "--yes" in err and " h " in err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_run_all_runs_each_in_its_own_process_and_reports(tmp_path: Path, monkeypatch) -> None:
    tiny = registry.Entry("collapse", ("experiment", "collapse", "--seeds", "1", "--width", "20", "--depth", "3"),
                          "layer collapse", 60)
    needs = registry.Entry("methods", ("experiment", "methods"), "needs data", 60, ("mnist",), ("--data-dir",))
    broken = registry.Entry("broken", ("experiment", "collapse", "--seeds", "0"), "fails", 60)
    outcomes = registry.run_all([tiny, needs, broken], True, tmp_path, None)
    status = {o.name: o.status for o in outcomes}
    assert status == {"collapse": "ok", "methods": "skipped", "broken": "failed"}
    summary = read_run(tmp_path, "all")
    sub = read_run(tmp_path / "collapse", "collapse")
    assert summary["criteria"] == {f"collapse.{k}": v for k, v in sub["criteria"].items()}
    assert "exit status 2" in outcomes[2].detail and "needs mnist" in outcomes[1].detail
    assert (tmp_path / "report.html").is_file()


def test_an_experiment_whose_criterion_failed_ran_all_the_same(tmp_path: Path, monkeypatch) -> None:
    """Exit status 1 with its JSON object: the experiment ran and a criterion failed (status ok, the criterion
    in the summary); exit status 1 without one is a crash (status failed)."""
    import subprocess

    crit = {"bound": {"value": 2.0, "target": "<= 1", "pass": False}}

    def fake(cmd, stdout, stderr):  # noqa: ANN001, ANN202 (run_child's signature as run_one calls it)
        out = Path(cmd[cmd.index("--out") + 1])
        write_run(out, "collapse", {"criteria": crit}, "# collapse\n")
        printed = json.dumps({"criteria": crit}).encode() + b"\n" if "crash" not in str(out) else b""
        stderr.write(b"Traceback ...\n" if not printed else b"1 criterion failed: bound (exit status 1)\n")
        return subprocess.CompletedProcess(cmd, 1, printed)

    monkeypatch.setattr(registry, "run_child", fake)
    entry = registry.Entry("collapse", ("experiment", "collapse"), "layer collapse", 60)
    ran = registry.run_one(entry, True, tmp_path / "ok", None)
    assert ran.status == "ok" and ran.criteria == crit
    assert ran.to_json()["criteria_passed"] == 0 and ran.to_json()["criteria_total"] == 1
    crashed = registry.run_one(entry, True, tmp_path / "crash", None)
    assert crashed.status == "failed" and "exit status 1: Traceback" in crashed.detail


def test_optional_data_is_passed_when_present_and_left_out_when_not(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    entry = registry.Entry("golgi", ("experiment", "golgi"), "stain", 60, ("mnist",), ("--data-dir",),
                           data_optional=True)
    out = tmp_path / "out"
    assert entry.command(True, out, tmp_path) == ["experiment", "golgi", "--data-dir", str(tmp_path / "mnist"),
                                                  "--quick", "--out", str(out), "--json"]
    assert entry.command(False, out, None) == ["experiment", "golgi", "--out", str(out), "--json"]
    required = registry.Entry("n", ("experiment", "n"), "n", 60, ("fashion-mnist",), ("--data-dir",))
    assert "needs fashion-mnist" in required.command(True, out, tmp_path)


def test_any_of_several_datasets_runs_on_those_present_and_skips_with_none(tmp_path: Path) -> None:
    entry = registry.Entry("methods", ("experiment", "methods"), "m", 60, ("mnist", "fashion-mnist"),
                           ("--mnist-dir", "--fashion-dir"), data_any=True)
    out = tmp_path / "out"
    (tmp_path / "fashion-mnist").mkdir()
    assert entry.command(False, out, tmp_path) == ["experiment", "methods", "--fashion-dir",
                                                   str(tmp_path / "fashion-mnist"), "--out", str(out), "--json"]
    (tmp_path / "mnist").mkdir()
    assert entry.command(False, out, tmp_path)[2:6] == ["--mnist-dir", str(tmp_path / "mnist"), "--fashion-dir",
                                                        str(tmp_path / "fashion-mnist")]
    reason = entry.command(False, out, None)
    assert isinstance(reason, str) and "mnist or fashion-mnist" in reason
    assert registry.EXPERIMENTS[registry.NAMES.index("methods")].data_any
