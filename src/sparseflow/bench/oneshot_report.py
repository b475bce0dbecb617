"""Criteria, console tables, plot and report of ``sparseflow bench oneshot`` (:mod:`sparseflow.bench.oneshot`)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sparseflow.bench.oneshot import LABELS, METHODS, ROUTES, OneshotResult
from sparseflow.experiments.protocol import TableData
from sparseflow.training.rundir import write_results

NOT_RUN = "the level was not in this run's --levels"


def _levels(result: OneshotResult) -> list[str]:
    seen: list[str] = []
    for r in result.grid:
        if r["level"] not in seen:
            seen.append(r["level"])
    return seen


def _below(result: OneshotResult, method: str, level: str) -> dict[str, Any]:
    """``method``'s perplexity below magnitude's at ``level`` for every calibration seed."""
    mine, mag = result.perplexities(method, level), result.perplexities("magnitude", level)
    if not mine or not mag:
        return {"value": None, "target": "< magnitude's, every seed", "pass": None, "note": NOT_RUN}
    return {"value": round(max(mine), 4), "target": f"< {mag[0]:.4f} (magnitude), every seed (worst shown)",
            "pass": max(mine) < mag[0]}


def criteria(result: OneshotResult) -> dict[str, dict[str, Any]]:
    """The papers' orderings on the measured perplexities (module docstring of :mod:`sparseflow.bench.oneshot`)."""
    out: dict[str, dict[str, Any]] = {}
    for level in ("0.5", "0.7", "2:4"):
        out[f"SparseGPT below magnitude at {level}"] = _below(result, "sparsegpt", level)
    for level in ("0.5", "2:4"):
        out[f"Wanda below magnitude at {level}"] = _below(result, "wanda", level)
    dense = result.dense["perplexity"]
    sgpt, mag = result.perplexities("sparsegpt", "0.5"), result.perplexities("magnitude", "0.5")
    if sgpt and mag and mag[0] > dense:
        ratio = (max(sgpt) - dense) / (mag[0] - dense)
        out["SparseGPT's increase over dense at 0.5 vs magnitude's"] = {
            "value": round(ratio, 4), "target": "<= 0.5 (worst seed)", "pass": ratio <= 0.5}
    else:
        out["SparseGPT's increase over dense at 0.5 vs magnitude's"] = {
            "value": None, "target": "<= 0.5 (worst seed)", "pass": None,
            "note": NOT_RUN if not (sgpt and mag) else "magnitude did not raise the perplexity: no increase to halve"}
    rows = [r for r in result.recovery if r["level"] == "0.7"]
    if rows:
        out["fine-tuning recovers at 0.7"] = {
            "value": {LABELS[r["method"]]: {"one-shot": round(r["oneshot"], 3), "fine-tuned": round(r["finetuned"], 3)}
                      for r in rows},
            "target": "fine-tuned < one-shot for every method",
            "pass": all(r["finetuned"] < r["oneshot"] for r in rows)}
    else:
        out["fine-tuning recovers at 0.7"] = {"value": None, "target": "fine-tuned < one-shot for every method",
                                              "pass": None, "note": "0.7 was not among this run's --recovery levels"}
    return out


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def grid_rows(result: OneshotResult) -> list[tuple[str, ...]]:
    levels = _levels(result)
    rows = [("dense", *(f"{result.dense['perplexity']:.3f}" for _ in levels))]
    for m in METHODS:
        rows.append((LABELS[m], *(_mean_std(result.perplexities(m, lv)) for lv in levels)))
    return rows


def _pivot(records: list[dict[str, Any]], row_key: str, rows: Sequence[Any], col_key: str, cols: Sequence[Any],
           cell: Callable[[dict[str, Any]], str]) -> list[list[str]]:
    """The cells of a table: one row per value of ``row_key``, one column per value of ``col_key``; "-" where
    no record has that pair."""
    found = {(r[row_key], r[col_key]): r for r in records}
    return [["-" if (r := found.get((row, col))) is None else cell(r) for col in cols] for row in rows]


def recovery_rows(result: OneshotResult) -> tuple[list[str], list[tuple[str, ...]]]:
    levels = [lv for lv in _levels(result) if any(r["level"] == lv for r in result.recovery)]
    cells = _pivot(result.recovery, "method", METHODS, "level", levels,
                   lambda r: f"{r['oneshot']:.3f} → {r['finetuned']:.3f}")
    return levels, [(LABELS[m], *c) for m, c in zip(METHODS, cells)]


def route_rows(result: OneshotResult) -> tuple[list[float], list[tuple[str, ...]]]:
    sparsities = sorted({r["sparsity"] for r in result.routes})
    cells = _pivot(result.routes, "route", ROUTES, "sparsity", sparsities, lambda r: f"{r['perplexity']:.3f}")
    return sparsities, [(kind, *c) for kind, c in zip(ROUTES, cells)]


def route_order(result: OneshotResult) -> dict[str, list[str]]:
    """Per sparsity, the routes from lowest to highest perplexity."""
    order = {}
    for s in sorted({r["sparsity"] for r in result.routes}):
        rows = sorted((r for r in result.routes if r["sparsity"] == s), key=lambda r: r["perplexity"])
        order[f"{s:g}"] = [r["route"] for r in rows]
    return order


def tables(result: OneshotResult) -> list[TableData]:
    cfg = result.config
    out = [TableData(f"validation perplexity after one-shot pruning (mean ± std over {cfg['seeds']} calibration "
                     f"seeds of {cfg['calibration']} windows; magnitude reads no data)",
                     ("method", *_levels(result)), grid_rows(result))]
    levels, rows = recovery_rows(result)
    if levels:
        out.append(TableData(f"masked fine-tuning, seed 0 ({cfg['finetune_steps']} AdamW steps, lr 3e-4 cosine to 0, "
                             f"{cfg['finetune_batch']} windows a step): one-shot → fine-tuned", ("method", *levels), rows))
    sparsities, rows = route_rows(result)
    if sparsities:
        out.append(TableData(f"three routes, {cfg['route_epochs']} epochs of {cfg['batch_size']} windows a step each",
                             ("route", *(f"s={s:g}" for s in sparsities)), rows))
    return out


def plot(result: OneshotResult, path: Path) -> None:
    """Perplexity against sparsity (unstructured, log scale; fine-tuned dashed) and the N:M patterns as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparseflow.training.report import save_figure

    levels = _levels(result)
    unstructured = [lv for lv in levels if ":" not in lv]
    patterns = [lv for lv in levels if ":" in lv]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    colors = {"magnitude": "tab:gray", "wanda": "tab:orange", "wanda-layer": "tab:green", "sparsegpt": "tab:blue"}
    for m in METHODS if unstructured else ():
        xs = [float(lv) for lv in unstructured]
        ys = [statistics.fmean(result.perplexities(m, lv)) for lv in unstructured]
        es = [statistics.stdev(p) if len(p := result.perplexities(m, lv)) > 1 else 0.0 for lv in unstructured]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=colors[m], label=f"{LABELS[m]} (one-shot)",
                    zorder=3)
        rec = [(float(r["level"]), r["finetuned"]) for r in result.recovery if r["method"] == m and ":" not in r["level"]]
        if rec:
            rec.sort()
            ax.plot(*zip(*rec), linestyle="--", marker="s", color=colors[m], alpha=0.7, label=f"{LABELS[m]} fine-tuned")
    ax.axhline(result.dense["perplexity"], color="black", linestyle=":", label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (unstructured)")
    ax.set_ylabel("validation perplexity (log)")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("one-shot pruning of the char GPT")
    ax = axes[1]
    if patterns:
        shown = [m for m in METHODS if all(result.perplexities(m, lv) for lv in patterns)]
        width = 0.8 / len(shown)
        for i, m in enumerate(shown):
            ys = [statistics.fmean(result.perplexities(m, lv)) for lv in patterns]
            ax.bar([j + i * width for j in range(len(patterns))], ys, width, color=colors[m], label=LABELS[m])
        ax.axhline(result.dense["perplexity"], color="black", linestyle=":", label="dense")
        ax.set_xticks([j + width * (len(shown) - 1) / 2 for j in range(len(patterns))], patterns)
        ax.set_ylabel("validation perplexity")
        ax.set_title("N:M patterns (50 % sparsity)")
        ax.legend(fontsize=7)
    else:
        ax.set_axis_off()
    fig.tight_layout()
    save_figure(fig, path)


def _md_table(columns: list[str] | tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report_md(result: OneshotResult, command: str | None = None) -> str:
    dense, mach = result.dense, result.machine
    parts = ["# sparseflow bench oneshot", ""]
    if command:
        parts += [f"Reproduce with: `{command}`", ""]
    parts += [f"Machine: {mach.get('cores')} cores ({mach.get('isa')}), torch {mach.get('torch')}; "
              f"{result.wall_s:.0f} s in all.", "",
              f"Dense model: {dense['source']} (GPT, {dense['job']['epochs']} epochs, batch {dense['job']['batch_size']}), "
              f"validation perplexity {dense['perplexity']:.4f}.", ""]
    for t in tables(result):
        parts += [f"## {t.title[0].upper()}{t.title[1:]}", "", _md_table(t.columns, list(t.rows)), ""]
    parts += ["![perplexity](perplexity.png)", ""]
    order = route_order(result)
    if order:
        parts += ["Routes from lowest to highest perplexity: "
                  + "; ".join(f"{s}: " + " < ".join(v) for s, v in order.items()) + ".", ""]
    parts += ["## Criteria", "", "| criterion | value | target | pass |", "|---|---|---|---|"]
    for name, c in result.criteria().items():
        verdict = "n/a" if c["pass"] is None else "yes" if c["pass"] else "**no**"
        note = f" ({c['note']})" if c.get("note") else ""
        parts.append(f"| {name} | {c['value']} | {c['target']} | {verdict}{note} |")
    return "\n".join(parts) + "\n"


def write_report(result: OneshotResult, out: Path) -> dict[str, Any]:
    """OUT/result.json, OUT/report.md and OUT/perplexity.png; returns the JSON object."""
    from sparseflow.io import atomic_write_text

    out = Path(out)
    data = result.to_json()
    write_results(out, "bench-oneshot", data, "result.json")
    plot(result, out / "perplexity.png")
    atomic_write_text(out / "report.md", report_md(result, result.command_line))
    return data
