"""Figures of the regularisation experiment (:mod:`sparseflow.experiments.regularisation.run`): accuracy.png
and gap.png."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sparseflow.analysis.stats import t_interval
from sparseflow.experiments.regularisation.run import GAP_TARGET_PP, RegResult
from sparseflow.experiments.regularisation.stats import best_index, gap, tied
from sparseflow.training.report import save_figure


def _position(s: float) -> float:
    return -math.log10(1 - s)  # spreads 0.9 / 0.95 / 0.98 apart: 1, 1.3, 1.7 (dense at 0)


def plot_accuracy(result: RegResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    xs = [_position(s) for s in cfg.sparsities]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(cfg.sizes)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, split in zip(axes, ("test", "train")):
        acc = result.acc(split)
        for i, n in enumerate(cfg.sizes):
            stats = [t_interval(acc[i, j]) for j in range(len(cfg.sparsities))]
            ax.errorbar(xs, [100 * m for m, _ in stats], yerr=[100 * h for _, h in stats], color=colors[i],
                        marker="o", ms=3, capsize=3, label=f"N = {n}")
            if split == "test":
                b = int(best_index(acc)[i])
                ax.plot(xs[b], 100 * stats[b][0], marker="*", ms=15, color=colors[i], mec="black", zorder=5)
        ax.set_xticks(xs, [f"{s:g}" for s in cfg.sparsities])
        ax.set(xlabel="sparsity (random static mask, every layer)", ylabel=f"{split} accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].plot([], [], "*", color="gray", mec="black", ms=12, label="best (highest mean)")
    handles, labels = axes[0].get_legend_handles_labels()  # below both panels: the curves fill each panel
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels), fontsize=8)
    axes[0].set_title("test accuracy, mean ± 95 % t-interval over seeds", fontsize=10)
    axes[1].set_title(f"training-set accuracy after {cfg.steps} steps", fontsize=10)
    save_figure(fig, path)


def plot_gap(result: RegResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, acc = result.config, result.acc()
    gaps = [gap(acc[i]) for i in range(len(cfg.sizes))]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax.errorbar(cfg.sizes, [100 * m for _, m, _ in gaps], yerr=[100 * h for _, _, h in gaps], marker="o",
                capsize=3, label="best sparse level - dense (paired, 95 % t-interval)")
    for n, (b, m, _) in zip(cfg.sizes, gaps):
        ax.annotate(f"s={cfg.sparsities[b]:g}", (n, 100 * m), textcoords="offset points", xytext=(5, 6), fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.plot([cfg.compare_size()], [GAP_TARGET_PP], "r_", ms=20, mew=2, label=f"criterion: >= {GAP_TARGET_PP:g} pp")
    ax.set(xscale="log", xlabel="training examples N", ylabel="test accuracy gain over dense (pp)",
           title="best sparse minus dense")
    ax.legend(fontsize=8)
    best = best_index(acc)
    for i, n in enumerate(cfg.sizes):
        t = [_position(cfg.sparsities[j]) for j in tied(acc[i])]
        ax2.plot([n, n], [min(t), max(t)], color="tab:blue", lw=6, alpha=0.3, solid_capstyle="butt")
    ax2.plot(cfg.sizes, [_position(cfg.sparsities[b]) for b in best], "o-", color="tab:blue", label="s*(N), highest mean")
    ax2.plot([], [], color="tab:blue", lw=6, alpha=0.3, label="levels not significantly below s*")
    ax2.set_yticks([_position(s) for s in cfg.sparsities], [f"{s:g}" for s in cfg.sparsities])
    ax2.set(xscale="log", xlabel="training examples N", ylabel="sparsity", title="best sparsity vs data size")
    ax2.legend(fontsize=8)
    for a in (ax, ax2):
        a.set_xticks(cfg.sizes, [str(n) for n in cfg.sizes])
        a.minorticks_off()
        a.grid(alpha=0.3)
    save_figure(fig, path)
