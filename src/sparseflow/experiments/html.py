"""One self-contained HTML page for a run directory: its report, its criteria and its figures.

A run directory is any folder a ``sparseflow experiment``, ``bench``, ``lottery`` or ``train`` command wrote
(a stamped ``results.json``/``result.json`` beside ``report.md`` and PNGs); a folder of such folders (what
``sparseflow experiment all`` writes) becomes one page with a summary table and a section per run. Figures
are embedded as base64 ``data:`` URIs, so the page can be mailed or archived alone. Every run is read
through :func:`sparseflow.training.rundir.read_run`, which refuses files from another sparseflow version.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparseflow.errors import SparseflowError
from sparseflow.training.options import check, option
from sparseflow.training.report import verdict
from sparseflow.training.rundir import REPORT, read_run, results_path

_IMG = re.compile(r'(<img\b[^>]*\bsrc=")([^":]+?\.png)(")')
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1b1b;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;height:auto}
.pass{color:#11763a;font-weight:600}.fail{color:#b3261e;font-weight:600}.na{color:#666}
section{border-top:2px solid #ddd;margin-top:2.5em;padding-top:.5em}code,pre{background:#f6f6f6}
pre{padding:.6em;overflow-x:auto}nav a{margin-right:1em}
"""


@dataclass(frozen=True)
class ReportOptions:
    """Settings of ``sparseflow report RUN_DIR``."""

    run_dir: Path = option(dataclasses.MISSING, "A run directory (experiment, bench, lottery, train or "
                                                "'experiment all').", positional=True)
    out: Path | None = option(None, "HTML file to write (default RUN_DIR/report.html).")

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class Run:
    """One run directory: its stamped results, its report text and its figures."""

    path: Path
    results: dict[str, Any]
    report_md: str
    figures: tuple[Path, ...]

    @property
    def name(self) -> str:
        return str(self.results.get("experiment") or self.path.name)

    def criteria(self) -> dict[str, dict[str, Any]]:
        crit = self.results.get("criteria")
        return crit if isinstance(crit, dict) else {}


def discover(run_dir: Path) -> list[Run]:
    """The runs in ``run_dir``: itself if it holds results, else its immediate sub-folders that do (sorted)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SparseflowError(f"run directory {str(run_dir)!r} does not exist or is not a folder; "
                              "pass the --out folder of a sparseflow run")
    subs = sorted(p for p in run_dir.iterdir() if p.is_dir() and results_path(p) is not None)
    own = results_path(run_dir)
    if own is not None and (not subs or read_run(run_dir).get("experiment") != "all"):
        return [_load(run_dir)]
    if not subs:
        raise SparseflowError(f"{str(run_dir)!r} holds no results.json, nor do its sub-folders; pass the --out "
                              "folder of a 'sparseflow experiment', 'bench', 'lottery' or 'train' run")
    return [_load(p) for p in subs]


def _load(path: Path) -> Run:
    results = read_run(path)
    report = (path / REPORT).read_text(encoding="utf-8", errors="replace") if (path / REPORT).is_file() else ""
    return Run(path, results, report, tuple(sorted(path.glob("*.png"))))


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _criteria_table(crit: dict[str, dict[str, Any]]) -> str:
    if not crit:
        return "<p><em>No pass/fail criteria for this run.</em></p>"
    rows = []
    for name, c in crit.items():
        value = c.get("value")
        shown = f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
        cls = "na" if c.get("pass") is None else "pass" if c["pass"] else "fail"
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{shown}</td><td>{html.escape(str(c.get('target', '')))}</td>"
                    f"<td class=\"{cls}\">{html.escape(verdict(c))}</td></tr>")
    return ("<table><tr><th>criterion</th><th>value</th><th>target</th><th>result</th></tr>"
            + "".join(rows) + "</table>")


def _section(run: Run, anchor: str) -> str:
    import markdown

    body = markdown.markdown(run.report_md, extensions=["tables", "fenced_code"]) if run.report_md else ""
    used: set[str] = set()

    def embed(m: re.Match[str]) -> str:
        png = run.path / m.group(2)
        if not png.is_file() or png.resolve().parent != run.path.resolve():
            return m.group(0)  # a figure outside the run directory stays a link
        used.add(png.name)
        return m.group(1) + _data_uri(png) + m.group(3)

    body = _IMG.sub(embed, body)
    extra = "".join(f'<figure><img src="{_data_uri(p)}" alt="{html.escape(p.stem)}"><figcaption>{html.escape(p.name)}'
                    "</figcaption></figure>" for p in run.figures if p.name not in used)
    head = (f'<section id="{anchor}"><h2>{html.escape(run.name)}</h2><p><code>{html.escape(str(run.path))}</code> · '
            f"sparseflow {html.escape(str(run.results.get('sparseflow_version')))}</p>")
    return head + "<h3>Criteria</h3>" + _criteria_table(run.criteria()) + body + extra + "</section>"


def render(runs: list[Run], title: str, walls: dict[str, float] | None = None) -> str:
    """The HTML page for ``runs`` (a summary table first when there are several).

    ``walls`` gives wall times by run-directory name where a run's results do not carry ``wall_s``.
    """
    parts = [f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if len(runs) > 1:
        rows = []
        for i, run in enumerate(runs):
            crit = run.criteria()
            tested = [c for c in crit.values() if c.get("pass") is not None]
            passed = sum(bool(c["pass"]) for c in tested)
            cls = "pass" if passed == len(tested) else "fail"
            untested = f" ({len(crit) - len(tested)} n/a)" if len(tested) < len(crit) else ""
            wall = run.results.get("wall_s", (walls or {}).get(run.path.name))
            rows.append(f'<tr><td><a href="#run{i}">{html.escape(run.name)}</a></td>'
                        f'<td class="{cls}">{passed} / {len(tested)}{untested}</td>'
                        f"<td>{'' if not isinstance(wall, (int, float)) else f'{wall:.1f}'}</td></tr>")
        parts.append("<table><tr><th>run</th><th>criteria passed</th><th>wall time (s)</th></tr>"
                     + "".join(rows) + "</table>")
    parts += [_section(run, f"run{i}") for i, run in enumerate(runs)]
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html(run_dir: Path, out: Path | None = None) -> tuple[Path, list[Run]]:
    """Render ``run_dir`` to ``out`` (default ``run_dir/report.html``) atomically; returns the path and the runs."""
    from sparseflow.io import atomic_write_text, check_file_target

    runs = discover(run_dir)
    target = Path(out) if out is not None else Path(run_dir) / "report.html"
    if target.suffix.lower() not in (".html", ".htm"):
        raise SparseflowError(f"--out is an HTML page, but {str(target)!r} does not end in .html (it could overwrite "
                              "a run's own file): pass a name such as report.html")
    check_file_target(target, "--out")
    walls: dict[str, float] = {}
    top = results_path(Path(run_dir))
    if top is not None and len(runs) > 1:  # 'experiment all' timed each run from outside
        walls = {r["name"]: r["wall_s"] for r in read_run(Path(run_dir)).get("runs", []) if "name" in r}
    atomic_write_text(target, render(runs, f"sparseflow report: {Path(run_dir).resolve().name}", walls))
    return target, runs
