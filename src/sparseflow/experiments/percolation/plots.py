"""Figures of the percolation experiment (:mod:`sparseflow.experiments.percolation.run`): surviving.png,
threshold.png and training.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparseflow.experiments.percolation.run import PercolationResult, train_summary
from sparseflow.experiments.percolation.theory import mean_field_fractions, surviving_fraction
from sparseflow.training.report import save_figure


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_surviving(result: PercolationResult, path: Path) -> None:
    """Left: surviving fraction vs c, Monte Carlo per width/depth over the fixed point. Right: ρ_l vs depth."""
    plt = _plt()
    cfg = result.config
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    grid = np.geomspace(min(cfg.cs) * 0.8, max(cfg.cs) * 1.1, 400)
    ax.plot(grid, [surviving_fraction(c) for c in grid], "k-", lw=1.5, label="theory ρ = 1 - exp(-cρ)", zorder=3)
    markers, colors = "os^D", plt.cm.viridis(np.linspace(0, 0.85, len(cfg.depths)))
    for j, d in enumerate(cfg.depths):  # finite depth: why points near c = 1 sit above the L → ∞ curve
        ax.plot(grid, [mean_field_fractions(c, d)[-1] for c in grid], "--", lw=0.8, color=colors[j], label=f"mean field at depth {d}")
    for i, w in enumerate(cfg.widths):
        for j, d in enumerate(cfg.depths):
            rows = [r for r in result.rows if r.width == w and r.depth == d]
            x = np.array([r.c for r in rows]) * (1 + 0.012 * (i - (len(cfg.widths) - 1) / 2))  # spread overlapping points
            ax.errorbar(x, [r.mean for r in rows], yerr=[r.std for r in rows], fmt=markers[i % 4], ms=4, capsize=2,
                        color=colors[j], mfc="none" if i % 2 else colors[j], label=f"width {w}, depth {d}")
    ax.axvline(1.0, color="grey", ls=":", lw=1)
    ax.set(xlabel="mean fan-in c", ylabel="surviving fraction at depth L", xscale="log",
           title=f"layered random masks ({len(result.seeds)} seeds, mean ± std)")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(0.0, -0.14))  # below: keeps the curve clear
    width = max(cfg.widths)
    for c, curve in sorted(result.decay.items()):
        if c > 1.5:
            continue
        line = ax2.plot(np.arange(len(curve)), curve, "o", ms=2.5, label=f"c = {c:g} (width {width})")[0]
        ax2.plot(np.arange(len(curve)), mean_field_fractions(c, len(curve) - 1), "-", lw=1, color=line.get_color())
    ax2.set(xlabel="depth l", ylabel="surviving fraction ρ_l", yscale="log", ylim=(1e-4, 1.5),
            title="decay with depth: points simulated, lines ρ' = 1 - exp(-cρ)")
    ax2.legend(fontsize=7)
    save_figure(fig, path)


def plot_threshold(result: PercolationResult, path: Path) -> None:
    """Per b: surviving fraction vs p (top) and the crossing of L·ρ_L used for p_c (bottom)."""
    plt = _plt()
    scans = result.scans
    fig, axes = plt.subplots(2, len(scans), figsize=(4.2 * len(scans), 7), squeeze=False)
    for k, s in enumerate(scans):
        ax, bx = axes[0, k], axes[1, k]
        ps, L = np.array(s.ps), s.depth
        grid = np.linspace(0, 1, 500)
        ax.plot(grid, [surviving_fraction(s.b * (1 - p)) for p in grid], "k-", lw=1.2, label="theory ρ(b(1-p)), L → ∞")
        ax.plot(grid, [mean_field_fractions(s.b * (1 - p), L)[-1] for p in grid], "k--", lw=0.8, label=f"mean field at L = {L}")
        ax.errorbar(ps, s.rho_full.mean(0), yerr=s.rho_full.std(0), fmt="o", ms=3, capsize=1.5, color="C0", label=f"simulated, L = {L}")
        ax.errorbar(ps, s.rho_half.mean(0), yerr=s.rho_half.std(0), fmt="s", ms=2.5, capsize=1.5, color="C1", mfc="none", label=f"simulated, L = {L // 2}")
        for a in (ax, bx):
            a.axvline(s.theory, color="k", ls="--", lw=1, label="1 - 1/b")
            if s.estimate is not None:
                a.axvline(s.estimate, color="r", ls=":", lw=1.5, label=f"estimated p_c = {s.estimate:.4f}")
        ax.set(xlabel="pruned fraction p", ylabel="surviving fraction", title=f"fan-out b = {s.b}, width {s.width}")
        ax.legend(fontsize=7)
        near = np.abs(ps - s.theory) <= 0.12 * (1 - s.theory) + 0.03
        bx.plot(ps[near], L * s.rho_full.mean(0)[near], "o-", ms=3, color="C0", label=f"L·ρ_L, L = {L}")
        bx.plot(ps[near], (L // 2) * s.rho_half.mean(0)[near], "s-", ms=3, color="C1", label=f"L·ρ_L, L = {L // 2}")
        bx.set(xlabel="pruned fraction p", ylabel="L · surviving fraction", title="finite-depth crossing → p_c")
        bx.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_training(result: PercolationResult, path: Path) -> None:
    """Test accuracy vs c with chance and c = 1 marked; connectivity of the same masks vs c."""
    plt = _plt()
    t = result.train
    assert t is not None
    summ = train_summary(t)
    cs = np.array([r["c"] for r in summ])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax.plot([p.c for p in t.points], [p.accuracy for p in t.points], "o", color="C0", alpha=0.4, ms=4, label="one seed")
    ax.plot(cs, [r["acc_mean"] for r in summ], "-", color="C0", label=f"mean over seeds ({len(t.points) // len(cs)})")
    ax.axhline(t.chance, color="r", ls="--", label=f"chance (most frequent class) = {t.chance:.3f}")
    ax.set(ylim=(0, 1))
    for a in (ax, ax2):
        a.axvline(1.0, color="k", ls=":", label="c = 1")
        a.set_xscale("log")
    ax.set(xlabel="mean fan-in c of the hidden masks", ylabel="test accuracy",
           title=f"MLP {t.depth} x {t.width} on {t.dataset}, {t.epochs} epochs")
    ax.legend(fontsize=8)
    fine = np.geomspace(cs.min(), cs.max(), 200)
    ax2.plot(fine, [mean_field_fractions(c, t.depth - 1)[-1] for c in fine], "k-", lw=1, label=f"mean field ρ_{t.depth - 1}(c)")
    ax2.plot(cs, [r["reached"] for r in summ], "o", color="C2", label="reached fraction, last hidden layer")
    ax2.plot(cs, [r["connected"] for r in summ], "x", color="C3", ms=8, label="fraction of seeds with an input-output path")
    ax2.set(xlabel="mean fan-in c of the hidden masks", ylabel="fraction", ylim=(-0.03, 1.03), title="connectivity of the trained masks")
    ax2.legend(fontsize=8)
    save_figure(fig, path)
