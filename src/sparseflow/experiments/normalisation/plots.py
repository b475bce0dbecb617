"""Figures of the normalisation experiment: accuracy vs batch size per norm, and BatchNorm minus the
batch-independent norms at the same batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparseflow.experiments.normalisation.result import LABEL, NormResult, bn_minus, mean_curves, t_interval
from sparseflow.training.report import save_figure


def plot_accuracy(result: NormResult, path: Path) -> None:
    """Test accuracy vs batch size (log2 axis), one line per norm, one panel per variant; 95 % t-interval bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    fig, axes = plt.subplots(1, len(cfg.variants), figsize=(5.8 * len(cfg.variants), 4.4), squeeze=False, sharey=True)
    for ax, v in zip(axes[0], cfg.variants):
        for k, n in enumerate(cfg.norms):
            stats = [t_interval([100 * a for a in result.accuracies(v, n, b)]) for b in cfg.batch_sizes]
            x = np.array(cfg.batch_sizes) * 2 ** (0.05 * (k - (len(cfg.norms) - 1) / 2))  # spread overlapping bars
            ax.errorbar(x, [m for m, _ in stats], yerr=[h for _, h in stats], marker="o", ms=4, capsize=3,
                        color=f"C{k}", label=LABEL[n])
            if n == "batch":
                bs = [100 * np.mean(result.accuracies(v, n, b, "batch_stats_accuracy")) for b in cfg.batch_sizes]
                ax.plot(x, bs, ls=":", marker="x", color=f"C{k}", label="BatchNorm, test batches use own statistics")
        ax.set_xscale("log", base=2)
        ax.set_xticks(cfg.batch_sizes, [str(b) for b in cfg.batch_sizes])
        ax.minorticks_off()
        title = "dense" if v == "dense" else f"{100 * cfg.sparsity:g} % sparse (static ERK)"
        ax.set(xlabel="training batch size (log2 scale)", title=f"{title}, {cfg.epochs} epoch(s) each")
        ax.grid(alpha=0.3)
    lo, hi = axes[0, 0].get_ylim()  # shared: intervals of 2 seeds can reach past the possible 0-100 %
    axes[0, 0].set_ylim(max(lo, 0.0), min(hi, 100.0))
    bars = f"bars 95 % t-interval over {cfg.seeds} seeds" if cfg.seeds > 1 else "1 seed, no bars"
    axes[0, 0].set_ylabel(f"test accuracy (%), mean; {bars}")
    axes[0, 0].legend(fontsize=8)
    save_figure(fig, path)


def plot_bn_minus(result: NormResult, path: Path) -> None:
    """acc(BatchNorm) - acc(GroupNorm / LayerNorm) vs batch size, per variant; Wu & He's ImageNet point at batch 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, rows = result.config, bn_minus(result)
    fig, axes = plt.subplots(1, len(cfg.variants), figsize=(5.8 * len(cfg.variants), 4.2), squeeze=False, sharey=True)
    for ax, v in zip(axes[0], cfg.variants):
        for k, n in enumerate(("group", "layer")):
            r = [x for x in rows if (x["variant"], x["norm"]) == (v, n)]
            if r:
                xs = np.array([x["batch"] for x in r]) * 2 ** (0.04 * (2 * k - 1))
                ax.errorbar(xs, [x["diff_pp"] for x in r], yerr=[x["half_pp"] for x in r], marker="o", ms=4,
                            capsize=3, color=f"C{2 if n == 'group' else 1}", label=f"BatchNorm - {LABEL[n]}")
        if min(cfg.batch_sizes) <= 2:
            ax.plot([2], [-10.6], "k*", ms=12, label="Wu & He 2018, ResNet-50 ImageNet, batch 2: -10.6 pp")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(cfg.batch_sizes, [str(b) for b in cfg.batch_sizes])
        ax.minorticks_off()
        title = "dense" if v == "dense" else f"{100 * cfg.sparsity:g} % sparse (static ERK)"
        ax.set(xlabel="training batch size (log2 scale)", title=title)
        ax.grid(alpha=0.3)
    bars = "paired 95 % t-interval" if cfg.seeds > 1 else "1 seed, no bars"
    axes[0, 0].set_ylabel(f"test accuracy difference (pp), {bars}")
    axes[0, 0].legend(fontsize=8)
    save_figure(fig, path)


def plot_curves(result: NormResult, path: Path) -> None:
    """Learning curves: validation loss after every epoch (mean over seeds), one line per batch size, one panel
    per norm (columns) and variant (rows); the last 10 % of the epochs, where convergence is checked, shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    fig, axes = plt.subplots(len(cfg.variants), len(cfg.norms), figsize=(3.6 * len(cfg.norms), 3.0 * len(cfg.variants)),
                             squeeze=False, sharex=True, sharey="row")
    epochs = np.arange(1, cfg.epochs + 1)
    means = mean_curves(result)
    for row, v in zip(axes, cfg.variants):
        for ax, n in zip(row, cfg.norms):
            for k, b in enumerate(cfg.batch_sizes):
                if (v, n, b) in means:
                    curve = means[(v, n, b)]
                    ax.plot(epochs[: len(curve)], curve, color=plt.cm.viridis(k / max(1, len(cfg.batch_sizes) - 1)),
                            label=f"batch {b}")
            ax.axvspan(cfg.epochs * 0.9, cfg.epochs, color="gray", alpha=0.15)
            ax.set_title(f"{'dense' if v == 'dense' else f'{100 * cfg.sparsity:g} % sparse'}, {LABEL[n]}", fontsize=9)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        row[0].set_ylabel("validation loss (mean over seeds)")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    axes[0, 0].legend(fontsize=7)
    save_figure(fig, path)
