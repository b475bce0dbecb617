"""Figures of the Hopfield capacity experiment: capacity vs coding level and size, the loads each search tried,
and the dilution curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparseflow.experiments.hopfield.result import AGS, HopResult, product, summary, tf_capacity
from sparseflow.hopfield import capacity_theory
from sparseflow.training.report import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_capacity(result: HopResult, path: Path) -> None:
    plt = _plt()
    cfg, rows = result.config, summary(result)["table"]
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(cfg.sizes)))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    codings = sorted(cfg.codings)
    has_theory = bool(rows) and rows[0]["theory"] is not None  # fully connected runs
    for i, n in enumerate(cfg.sizes):
        r = [next(x for x in rows if x["a"] == a and x["n"] == n) for a in codings]
        ax.errorbar(codings, [x["alpha_mean"] for x in r], yerr=[x["alpha_half"] for x in r], marker="o", ms=4,
                    capsize=3, color=colors[i], label=f"N = {n}")
    if has_theory:
        for i, n in enumerate(cfg.sizes):
            r = [next(x for x in rows if x["a"] == a and x["n"] == n) for a in codings]
            ax.plot(codings, [x["theory"] for x in r], ":", color=colors[i], lw=1.2,
                    label="mean-field theory at each N (dotted)" if i == len(cfg.sizes) - 1 else None)
    a_th = np.geomspace(min(codings) * 0.8, 0.3, 100)
    ax.plot(a_th, [tf_capacity(a) for a in a_th], "k--", label="1 / (2 a |ln a|), a -> 0 limit")
    ax.plot([0.5], [AGS], "r*", ms=14, mec="black", label=f"AGS alpha_c = {AGS} (a = 1/2)")
    ax.set(xscale="log", yscale="log", xlabel="coding level a", ylabel="capacity alpha = P_max / N",
           title="capacity vs coding level (mean ± 95 % t-interval over seeds)")
    ax.set_xticks(codings, [f"{a:g}" for a in codings])
    ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10) if t <= 1.5 * tf_capacity(min(codings))]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ccol = plt.cm.plasma(np.linspace(0, 0.85, len(codings)))
    for j, a in enumerate(codings):
        r = [next(x for x in rows if x["a"] == a and x["n"] == n) for n in cfg.sizes]
        ax2.errorbar(cfg.sizes, [x["product_mean"] for x in r], yerr=[x["product_half"] for x in r], marker="o",
                     ms=4, capsize=3, color=ccol[j], label=f"a = {a:g}")
    if has_theory:
        big = max(cfg.sizes)
        n_th = np.unique(np.geomspace(min(cfg.sizes), 4 * big, 7).round().astype(int))
        for j, a in enumerate(codings):
            ns = [int(n) for n in n_th if round(a * n) >= 1]
            ax2.plot(ns, [product(capacity_theory(a, n, m_min=cfg.min_overlap, success=cfg.min_fraction), a)
                          for n in ns], ":", color=ccol[j], lw=1.2)
            limit = next(x["theory_large_n"] for x in rows if x["a"] == a)
            ax2.plot([8 * big], [product(limit, a)], ">", color=ccol[j], ms=7)
        ax2.plot([], [], "k:", label=f"mean-field theory to N = {4 * big}; > at inf: N -> inf")
    ax2.axhline(0.5, color="black", ls="--", label="Tsodyks-Feigel'man limit 1/2 (a -> 0, N -> inf)")
    ax2.axhline(product(AGS, 0.5), color="red", ls=":", label="AGS at a = 1/2")
    ax2.set(xscale="log", xlabel="N (units)", ylabel="alpha · a |ln a|",
            title="scaled capacity vs N: the sparse limit is approached slowly")
    if has_theory:
        ticks = [*cfg.sizes, 4 * max(cfg.sizes), 8 * max(cfg.sizes)]
        ax2.set_xticks(ticks, [*(str(n) for n in ticks[:-1]), "inf"])
    else:
        ax2.set_xticks(cfg.sizes, [str(n) for n in cfg.sizes])
    ax2.minorticks_off()
    ax2.set_ylim(0, 0.55)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    save_figure(fig, path)


def plot_transition(result: HopResult, path: Path) -> None:
    """Every load tried at the largest N: fraction of cues recalled vs P / P_max of its search."""
    plt = _plt()
    cfg = result.config
    n = max(cfg.sizes)
    codings = sorted(cfg.codings)
    ccol = plt.cm.plasma(np.linspace(0, 0.85, len(codings)))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for j, a in enumerate(codings):
        pts = [(t.p / c.p_max, t.fraction) for c in result.cells if c.a == a and c.n == n and c.p_max for t in c.trials]
        ax.plot(*zip(*pts), "o", ms=4, alpha=0.7, color=ccol[j], label=f"a = {a:g}")
    ax.axhline(cfg.min_fraction, color="black", ls="--", lw=0.8, label=f"success: >= {cfg.min_fraction:.0%} recalled")
    ax.axvline(1, color="gray", lw=0.8)
    ax.set(xlabel="load P / P_max of the same search", ylabel=f"fraction of cues with overlap >= {cfg.min_overlap:g}",
           title=f"loads tried by the search, N = {n} (best threshold per load)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_dilution(result: HopResult, path: Path) -> None:
    plt = _plt()
    cfg, rows = result.config, summary(result)["dilution"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    cs = [r["c"] for r in rows]
    ax.errorbar(cs, [r["alpha_mean"] for r in rows], yerr=[r["alpha_half"] for r in rows], marker="o", capsize=3,
                label="P_max / N (mean ± 95 % t)")
    ax.plot(cs, [r["alpha_per_c"] for r in rows], "s--", label="P_max / (c N): per connection of a unit")
    ax.set(xscale="log", xlabel="connectivity c (symmetric random dilution)", ylabel="capacity",
           title=f"diluted connectivity, a = {cfg.dilution_coding:g}, N = {cfg.dilution_size}")
    ax.set_xticks(cs, [f"{c:g}" for c in cs])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
