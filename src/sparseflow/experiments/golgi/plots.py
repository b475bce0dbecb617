"""Figures of the Golgi experiment (:mod:`sparseflow.experiments.golgi.run`) besides the stains of
:mod:`sparseflow.analysis.stain_plots`: each pixel's fan-out against its variance, and input-tree sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparseflow.analysis import stain_plots
from sparseflow.experiments.golgi.run import GolgiResult
from sparseflow.training.report import save_figure


def plot_fanout(result: GolgiResult, path: Path) -> None:
    """Per method: each pixel's kept fan-out against its standard deviation over the training set."""
    plt = stain_plots._plt()
    pairs = result.pairs()
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4), squeeze=False, layout="constrained")
    std = result.pixel_std.flatten().numpy()
    for ax, pair in zip(axes[0], pairs):
        for arm, colour in zip(pair, ("tab:blue", "tab:orange")):
            fan = arm.stain.degrees[0].fan_out.reshape(-1, std.size).sum(0).numpy()
            ax.scatter(std, fan, s=8, alpha=0.6, color=colour, linewidths=0,
                       label=f"{arm.name}: Spearman ρ = {arm.pixel_rho:.2f}")
        ax.set(xlabel="pixel std over the training set (input units)",
               ylabel="kept first-layer connections of the pixel", title=f"{pair[0].method} vs random, per pixel")
        ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_trees(result: GolgiResult, path: Path) -> None:
    """Per method and hidden layer: how many input pixels reach each unit (its input tree at the input)."""
    plt = stain_plots._plt()
    pairs = result.pairs()
    layers = list(pairs[0][0].in_pixels)
    fig, axes = plt.subplots(len(pairs), len(layers), figsize=(4.6 * len(layers), 3.3 * len(pairs)), squeeze=False,
                             layout="constrained")
    n_pixels = result.pixel_std.numel()
    for row, pair in zip(axes, pairs):
        for ax, layer in zip(row, layers):
            bins = np.arange(-0.5, n_pixels + 1.5, max(1, int(np.ceil((n_pixels + 1) / 50))))  # whole pixels
            for arm, colour in zip(pair, ("tab:blue", "tab:orange")):
                v = arm.in_pixels[layer].numpy()
                ax.hist(v, bins=bins, histtype="step", lw=1.4, color=colour,
                        label=f"{arm.name}: mean {v.mean():.1f}, median {np.median(v):.0f}")
            ax.set(xlabel=f"pixels in the input tree of a {layer} unit (of {n_pixels})", ylabel="units")
            ax.legend(fontsize=7)
    save_figure(fig, path)
