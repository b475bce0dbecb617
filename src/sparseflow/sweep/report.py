"""The outputs of a sweep (:mod:`sparseflow.sweep.grid`)::

    OUT/results.json   stamped ("experiment": "sweep"): the grid, one row per cell, the table, the counts
    OUT/table.md       per dataset x method x sparsity: mean test accuracy over seeds ± the half-width of
                       the 95 % Student-t interval, t(0.975, n - 1) · sd / sqrt(n) with sd over n - 1
                       (no interval from a single seed); failed cells are counted and listed with their error
    OUT/report.md      that table, the criteria and the figure: what ``sparseflow report OUT`` renders
    OUT/accuracy.png   accuracy vs sparsity, one line per method, error bars the same intervals, one panel per
                       dataset; a 'dense' method is a horizontal line with its interval as a band

Rows of failed cells carry no accuracy and are left out of the statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparseflow.analysis.stats import t_interval
from sparseflow.training.rundir import write_results
from sparseflow.io import atomic_write_text
from sparseflow.training.report import criteria_md, md_table, save_figure

if TYPE_CHECKING:
    from sparseflow.sweep.grid import SweepResult


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (dataset, method, sparsity) in grid order: seeds that finished, accuracy mean and
    interval half-width (None with one seed), mean dense accuracy (baseline runs), mean measured sparsity."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"], r["sparsity"]), []).append(r)
    out = []
    for (dataset, method, sparsity), group in groups.items():
        ok = [r for r in group if r["status"] != "failed"]
        acc = [r["accuracy"] for r in ok]
        mean, half = t_interval(acc) if len(acc) >= 2 else (_mean(acc), None)
        dense = [r["dense_accuracy"] for r in ok if r["dense_accuracy"] is not None]
        out.append({"dataset": dataset, "method": method, "sparsity": sparsity, "seeds": [r["seed"] for r in ok],
                    "n": len(ok), "failed": len(group) - len(ok), "accuracy_mean": mean, "accuracy_half": half,
                    "dense_accuracy_mean": _mean(dense),
                    "measured_sparsity_mean": _mean([r["measured_sparsity"] for r in ok])})
    return out


def _pct(mean: float | None, half: float | None = None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" + ("" if half is None else f" ± {100 * half:.2f}")


def table_md(result: SweepResult, command: str | None = None) -> str:
    rows = table(result.rows)
    lines = [f"# Sweep: {len(result.rows)} cells", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += [f"Test accuracy (%), mean ± half-width of the 95 % t-interval over seeds. "
              f"{result.count('ran')} cells trained in this run, {result.count('skipped')} finished before, "
              f"{result.count('failed')} failed; {result.wall_s:.1f} s; executor: {result.executor}.", ""]
    header = ["dataset", "method", "sparsity", "seeds", "accuracy (%)", "dense accuracy (%)", "measured sparsity",
              "failed"]
    body = [[t["dataset"], t["method"], f"{t['sparsity']:g}", t["n"], _pct(t["accuracy_mean"], t["accuracy_half"]),
             _pct(t["dense_accuracy_mean"]),
             "-" if t["measured_sparsity_mean"] is None else f"{t['measured_sparsity_mean']:.4f}",
             f"**{t['failed']}**" if t["failed"] else "0"] for t in rows]
    lines += [md_table(header, body), ""]
    failed = result.failed()
    if failed:
        lines += ["## Failed cells", ""]
        lines += [f"- `{r['cell']}` (seed {r['seed']}): {r['error']}" for r in failed] + [""]
    lines += ["![accuracy vs sparsity](accuracy.png)", ""]
    return "\n".join(lines)


def accuracy_figure(result: SweepResult) -> Any:
    """The matplotlib figure of accuracy.png (one panel per dataset, one line per method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table(result.rows)
    datasets = list(dict.fromkeys(t["dataset"] for t in rows))
    methods = list(dict.fromkeys(t["method"] for t in rows))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for method in methods:
            pts = [t for t in rows if t["dataset"] == dataset and t["method"] == method and t["n"]]
            if not pts:
                continue
            ys = [100 * t["accuracy_mean"] for t in pts]
            err = [100 * (t["accuracy_half"] or 0.0) for t in pts]
            if method == "dense":
                ax.axhline(ys[0], color=colors[method], ls="--", label="dense")
                ax.axhspan(ys[0] - err[0], ys[0] + err[0], color=colors[method], alpha=0.15)
                continue
            ax.errorbar([t["sparsity"] for t in pts], ys, yerr=err, color=colors[method], marker="o", ms=4,
                        capsize=3, label=method)
        ax.set(xlabel="target sparsity", ylabel="test accuracy (%)", title=dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("test accuracy vs sparsity, mean ± 95 % t-interval over seeds", fontsize=10)
    fig.tight_layout()
    return fig


def plot_accuracy(result: SweepResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = accuracy_figure(result)
    save_figure(fig, path)


def write_outputs(result: SweepResult, command: str | None = None) -> None:
    """results.json (stamped), table.md, report.md and accuracy.png in ``result.out``."""
    out = result.out
    obj = result.to_json()
    write_results(out, "sweep", {k: v for k, v in obj.items() if k != "command"} | {"command_line": command})
    table = table_md(result, command)
    atomic_write_text(out / "table.md", table)
    atomic_write_text(out / "report.md", table + "\n" + criteria_md(obj["criteria"]))
    plot_accuracy(result, out / "accuracy.png")
