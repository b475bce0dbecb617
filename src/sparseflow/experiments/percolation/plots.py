"""Figures and the Markdown report of the percolation experiment (see
:mod:`sparseflow.experiments.percolation.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sparseflow.experiments.percolation.run import mean_field_fractions, surviving_fraction
from sparseflow.training.report import md_table, save_figure

if TYPE_CHECKING:
    from sparseflow.experiments.percolation.report import PercolationResult


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
           title=f"layered random masks ({len(cfg.seeds)} seeds, mean ± std)")
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
    plt.close(fig)


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
    plt.close(fig)


def plot_training(result: PercolationResult, path: Path) -> None:
    """Test accuracy vs c with chance and c = 1 marked; connectivity of the same masks vs c."""
    from sparseflow.experiments.percolation.report import train_summary

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
    plt.close(fig)


def report_markdown(result: PercolationResult) -> str:
    from sparseflow.experiments.percolation.report import CRITERION_C, train_summary

    cfg, crit = result.config, result.criteria()
    mask_rows = [[f"{r.c:g}", r.width, r.depth, f"{r.mean:.4f} ± {r.std:.4f}", f"{r.mean_field:.4f}", f"{r.theory:.4f}",
                  f"{abs(r.mean - r.theory):.4f}" if r.c >= CRITERION_C else "-", f"{r.on_path:.4f}", f"{r.on_path_theory:.4f}"]
                 for r in result.rows]
    pc_rows = []
    for s in result.scans:
        seeds = np.array([p for p in s.per_seed if p is not None])
        pc_rows.append([s.b, f"{s.theory:.4f}", "none" if s.estimate is None else f"{s.estimate:.4f}",
                        f"{seeds.mean():.4f} ± {seeds.std():.4f} ({len(seeds)}/{len(s.per_seed)})" if len(seeds) else "none",
                        "-" if s.estimate is None else f"{abs(s.estimate - s.theory):.4f}", s.width, f"{s.depth // 2}, {s.depth}", len(s.ps)])
    crit_rows = [[k, "none" if v["value"] is None else f"{v['value']:.4f}", v["target"], "pass" if v["pass"] else "FAIL"] for k, v in crit.items()]
    verdict = "all criteria pass" if all(v["pass"] for v in crit.values()) else "some criteria FAIL: " + ", ".join(k for k, v in crit.items() if not v["pass"])
    text = f"""# Percolation in sparse layered networks{' (quick run)' if cfg.quick else ''}

**Verdict: {verdict}.** Wall time {result.wall_s:.1f} s.

## What is measured
- *Layered random mask of mean fan-in c*: each of the width² links between consecutive layers kept with
  probability c/width. The **forward surviving fraction** at depth L is the fraction of layer-L units reachable
  from a fully active layer 0 through kept links; it is compared with the fixed point ρ(c) of ρ = 1 - exp(-cρ)
  (ρ = 1 + W₀(-c e^(-c))/c, 0 for c <= 1) and with the finite-depth mean-field iterate ρ_L. Depths 10 and 30 are
  the first layers of the deepest network of the same seed (forward reach does not depend on later layers).
  Also measured, not a criterion: the fraction of the middle layer on a full input-to-output path, against ρ_(L/2)².
- *Fixed fan-out b, pruned fraction p*: every unit sends b links to uniform random units of the next layer,
  each kept with probability 1 - p; a branching process with mean b(1-p), critical at p_c = 1 - 1/b. p_c is
  estimated from finite depth as the crossing of L·ρ_L(p) for L = {cfg.pc_depth // 2} and {cfg.pc_depth} (both
  tend to 2 at p_c, grow with L below it and vanish above), first on a 0.05 grid of p, then on a 0.005 grid
  around the bracket, using the seed-mean curves; the per-seed crossings give the spread.
- Seeds {list(cfg.seeds)}; mean ± std over seeds.

## Layered random masks: surviving fraction vs theory

{md_table(["c", "width", "depth L", "simulated ρ_L", "mean field ρ_L", "fixed point ρ(c)", "abs error (c >= 1.5)", "on path (layer L/2)", "ρ_(L/2)²"], mask_rows)}

![surviving fraction](surviving.png)

## Fan-out b: percolation threshold

{md_table(["b", "1 - 1/b", "estimated p_c", "per-seed p_c (found)", "abs error", "width", "depths", "grid points"], pc_rows)}

![threshold](threshold.png)
"""
    if result.train is not None:
        t = result.train
        rows = [[f"{r['c']:g}", f"{r['acc_mean']:.4f} ± {r['acc_std']:.4f}", f"{t.chance:.4f}", f"{r['connected']:.2f}",
                 f"{r['reached']:.4f}", f"{r['reached_theory']:.4f}"] for r in train_summary(t)]
        text += f"""
## Training across the threshold

MLP with {t.depth} hidden layers of {t.width} ReLU units on {t.dataset}, {t.epochs} epochs (Adam, lr 3e-3,
cosine). The first Linear (input -> first hidden layer) and the classifier stay dense; each of the
{t.depth - 1} hidden -> hidden Linear layers is a uniform random mask (RandomSparse) of density c/{t.width},
mean fan-in c. Weights: He init per unit's kept fan-in (sparseflow.init.sparse_init_). Chance = accuracy
of the most frequent test class. "reached" = fraction of the last hidden layer reachable from the input.

{md_table(["c", "test accuracy", "chance", "seeds with a path", "reached (measured)", "reached (mean field)"], rows)}

![training](training.png)
"""
    text += f"\n## Criteria\n\n{md_table(['criterion', 'value', 'target', 'result'], crit_rows)}\n"
    return text
