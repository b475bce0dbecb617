"""Figures of the methods experiment (:mod:`sparseflow.experiments.methods.result`): test accuracy against
sparsity, one panel per dataset, one line per method, 95 % t-intervals over seeds, the dense baseline as a
band; and the same as the gap to dense, where the small differences between methods are visible."""

from __future__ import annotations

import math
from pathlib import Path

from sparseflow.experiments.methods.grid import FAMILY
from sparseflow.experiments.methods.result import ComparisonResult
from sparseflow.training.report import save_figure

STYLE = {"dense-to-sparse": "-", "from scratch": "--", "dynamic": "-."}
MARKERS = "osDv^<>pP*"


def _x(sparsity: float) -> float:
    return -math.log10(1.0 - sparsity)  # 80, 90, 95, 98 % -> 0.70, 1.00, 1.30, 1.70: about evenly spaced


def plot_accuracy(result: ComparisonResult, out: Path) -> list[str]:
    """accuracy.png: top row accuracy (%), bottom row accuracy minus dense (pp); returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    rows = result.summary()
    n = len(cfg.settings)
    fig, axes = plt.subplots(2, n, figsize=(6.2 * n, 8.4), squeeze=False)
    colors = plt.cm.tab10.colors
    xs = [_x(s) for s in cfg.sparsities]
    span = (max(xs) - min(xs)) or 0.3
    for col, setting in enumerate(cfg.settings):
        ax, gap = axes[0][col], axes[1][col]
        mine = [r for r in rows if r["dataset"] == setting.dataset]
        dense = next((r for r in mine if r["method"] == "dense"), None)
        mine = [r for r in mine if cfg.multiple(r["method"]) == 1]
        lo, hi = min(xs) - 0.06 * span, max(xs) + 0.06 * span
        if dense is not None:
            d, h = 100 * dense["mean"], 100 * (dense["ci95"] or 0.0)
            ax.axhline(d, color="black", lw=1.2, label="dense" + ("" if dense["ci95"] is None else " (95 % band)"))
            ax.fill_between([lo, hi], d - h, d + h, color="black", alpha=0.12, lw=0)
            gap.axhline(0, color="black", lw=1.2)
            gap.fill_between([lo, hi], -h, h, color="black", alpha=0.12, lw=0)
        labels = [m for m in cfg.labels() if cfg.multiple(m) == 1]
        for i, method in enumerate(labels):
            pts = sorted((r for r in mine if r["method"] == method), key=lambda r: r["sparsity"])
            if not pts:
                continue
            jitter = (i - (len(labels) - 1) / 2) * 0.012 * span  # spread the error bars apart
            x = [_x(r["sparsity"]) + jitter for r in pts]
            y = [100 * r["mean"] for r in pts]
            err = [100 * (r["ci95"] or 0.0) for r in pts]
            kw = dict(color=colors[i % 10], ls=STYLE[FAMILY[method]], marker=MARKERS[i], ms=4.5, capsize=2.5, lw=1.3)
            ax.errorbar(x, y, yerr=err, label=f"{method} ({FAMILY[method]})", **kw)
            if dense is not None:
                gap.errorbar(x, [v - 100 * dense["mean"] for v in y], yerr=err, **kw)
        # An interval of 3 seeds with one collapsed run spans tens of points: keep the axis on the means
        # (accuracy lies in [0, 100]); the bottom row shows every interval on a symlog axis.
        means = [100 * r["mean"] for r in mine]
        tops = [100 * (r["mean"] + (r["ci95"] or 0.0)) for r in mine]
        ax.set_ylim(max(0.0, min(means) - 3), min(100.5, max(tops) + 1))
        seeds = len(cfg.seeds)
        ax.set(title=f"{setting.model} on {setting.dataset} ({setting.steps()} steps per run, {seeds} seed(s))",
               ylabel="test accuracy (%)", xlim=(lo, hi))
        gap.set(ylabel="accuracy - dense (percentage points)", xlim=(lo, hi),
                xlabel="sparsity of the pruned layers (axis: log10 of 1 / density)")
        gap.set_yscale("symlog", linthresh=1.0)  # sub-point differences near 0, collapses far below
        gap.margins(y=0.06)  # keep the lowest and highest markers off the frame
        gap.autoscale_view()
        ymin, ymax = gap.get_ylim()
        ticks = [t for t in (-50, -20, -10, -5, -2, -1, -0.5, 0, 0.5, 1, 2, 5, 10, 20, 50) if ymin <= t <= ymax]
        gap.set_yticks(ticks, [f"{t:g}" for t in ticks])
        for a in (ax, gap):
            a.set_xticks(xs, [f"{100 * s:g} %" for s in cfg.sparsities])
            a.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(f"error bars: 95 % t-interval over {len(cfg.seeds)} seed(s)" if len(cfg.seeds) > 1
                 else "one seed: no error bars", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below
    save_figure(fig, out / "accuracy.png")
    return ["accuracy.png"]


def plot_budget(result: ComparisonResult, out: Path) -> list[str]:
    """budget.png (``--budget long``): test accuracy against training budget (1x, 2x, 5x the dataset's epochs)
    at each sparsity's first level of 90 % (else the first), one panel per dataset: RigL and SET as lines,
    dense at 1x and 2x, the methods trained once at 1x as points; 95 % t-intervals over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    sp = next((s for s in cfg.sparsities if abs(s - 0.9) < 1e-9), cfg.sparsities[0])
    rows = result.summary()
    n = len(cfg.settings)
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 4.8), squeeze=False)
    colors = plt.cm.tab10.colors
    for col, setting in enumerate(cfg.settings):
        ax = axes[0][col]
        mine = {r["method"]: r for r in rows if r["dataset"] == setting.dataset
                and (r["family"] == "dense" or abs(r["sparsity"] - sp) < 1e-9)}
        lines = {"dense": ["dense", "dense 2x"], "SET": ["SET", "SET 2x", "SET 5x"], "RigL": ["RigL", "RigL 2x", "RigL 5x"]}
        for i, (name, labels) in enumerate(lines.items()):
            pts = [mine[m] for m in labels if m in mine]
            if not pts:
                continue
            x = [cfg.multiple(r["method"]) for r in pts]
            ax.errorbar(x, [100 * r["mean"] for r in pts], yerr=[100 * (r["ci95"] or 0.0) for r in pts],
                        color="black" if name == "dense" else colors[i], marker="os^"[i], ms=5, capsize=3, lw=1.4,
                        label=name if name == "dense" else f"{name} ({100 * sp:g} %)")
        for j, m in enumerate(m for m in cfg.labels() if cfg.multiple(m) == 1 and m not in lines):
            if m in mine:
                r = mine[m]
                ax.errorbar([1 + 0.06 * (j + 1)], [100 * r["mean"]], yerr=[100 * (r["ci95"] or 0.0)], ls="none",
                            color=colors[3 + j], marker="Dvp<>"[j % 5], ms=5, capsize=3, label=f"{m} (1x only)")
        ax.set_xscale("log")
        ax.set_xticks([1, 2, 5], ["1x", "2x", "5x"])
        ax.set_xticks([], minor=True)  # no "3 x 10^0" labels between them
        ax.set(title=f"{setting.model} on {setting.dataset}, 1x = {setting.epochs} epochs = {setting.steps()} steps",
               xlabel="training budget", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"accuracy against budget at {100 * sp:g} % sparsity; error bars: 95 % t-interval over "
                 f"{len(cfg.seeds)} seed(s)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out / "budget.png")
    return ["budget.png"]
