"""Figures and the report of the Golgi experiment (:mod:`sparseflow.experiments.golgi.run`): every figure puts a
trained mask next to its random control of the same per-layer counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparseflow.analysis import stain_plots
from sparseflow.analysis.stain import degree_stats
from sparseflow.experiments.golgi.run import LOW, GolgiResult
from sparseflow.training.rundir import write_run
from sparseflow.training.report import md_table, save_figure

FIELDS = 3  # first-layer units whose receptive fields are drawn


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
    plt.close(fig)


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
    plt.close(fig)


def write_outputs(result: GolgiResult, out: Path, command: str | None = None) -> list[str]:
    """The PNGs, results.json and report.md into ``out`` (created if missing); returns the figure names."""
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for t, r in result.pairs():
        panels = [(f"{t.name} ({t.stain.graph.density:.1%} kept)", t.stain), (r.name, r.stain)]
        for kind, draw in (("stain", stain_plots.plot_graphs), ("masks", stain_plots.plot_masks),
                           ("degrees", stain_plots.plot_degrees)):
            figures.append(f"{kind}_{t.method}.png")
            draw(panels, out / figures[-1])
        figures.append(f"pixels_{t.method}.png")
        stain_plots.plot_pixels(panels, out / figures[-1], FIELDS)
    plot_fanout(result, out / "fanout.png")
    plot_trees(result, out / "trees.png")
    figures += ["fanout.png", "trees.png"]
    write_run(out, "golgi", result.to_json() | {"figures": figures}, report_markdown(result, figures, command))
    return figures


def summary_rows(result: GolgiResult) -> list[list[object]]:
    rows = []
    for a in result.arms:
        d0 = degree_stats(a.stain.degrees[0].fan_out)
        last_hidden = list(a.in_pixels)[-1]
        rows.append([a.name, "-" if a.accuracy is None else f"{a.accuracy:.4f}", f"{a.stain.pixels.covered:.3f}",
                     f"{a.input_fraction:.3f}", f"{a.pixel_rho:.3f}", f"{a.low_share:.3f}", f"{d0['gini']:.3f}",
                     f"{d0['var']:.1f}", f"{float(a.in_pixels[last_hidden].double().mean()):.1f}",
                     int((a.out_reached[last_hidden] == 0).sum())])
    return rows


def report_markdown(result: GolgiResult, figures: list[str], command: str | None = None) -> str:
    cfg = result.config
    arm = result.arms[0]
    st = arm.stain
    layers = list(arm.in_pixels)
    header = ["mask", "test acc", "pixels covered", "pixels reaching an output", "Spearman ρ(fan-out, pixel std)",
              f"share on least-varying {LOW:.0%} pixels", "pixel fan-out Gini", "pixel fan-out var",
              f"mean input-tree pixels ({layers[-1]})", f"{layers[-1]} units with no output"]
    deg_rows = [[a.name, d.layer, *(f"{degree_stats(getattr(d, k))[s]:.3f}" for k in ("fan_in", "fan_out")
                                    for s in ("mean", "var", "gini")),
                 int((d.fan_in == 0).sum()), int((d.fan_out == 0).sum())] for a in result.arms for d in a.stain.degrees]
    crit = [[k, f"{v['value']:.4f}", v["target"], "pass" if v["pass"] else "FAIL"] for k, v in result.criteria().items()]
    figs = "\n".join(f"![{f}]({f})" for f in figures)
    passed = sum(row[-1] == "pass" for row in crit)
    stained = "; ".join(f"{a.name} {list(a.stain.trees.units)} (of {a.stain.alive} on a path)" for a in result.arms)
    data = "MNIST" if cfg.data_dir is not None else "the embedded 8x8 digits (scikit-learn)"
    return f"""# Golgi stain: trained masks against random masks of the same per-layer counts

LeNet-300-100 on {data}{f' ({cfg.subset} training examples)' if cfg.subset else ''}, {cfg.epochs} epochs,
sparsity {cfg.sparsity:g}, seed {cfg.seed}. Each trained mask ({', '.join(cfg.methods)}) is compared with a random
mask keeping the same number of weights in every layer{', trained on the same budget' if cfg.train_random else ''}.
Stained: {len(st.trees.units)} units of `{st.graph.labels[st.trees.space]}` in each mask, drawn at random (seed
{cfg.seed}) among its units on an input-output path: {stained}. Hidden units are interchangeable, so the
stains of two masks are compared as samples, not unit by unit. Training and staining{' (quick run)' if cfg.quick else ''}
took {result.wall_s:.1f} s (figures not included); {passed} of {len(crit)} criteria pass.

Command: `{command or 'sparseflow experiment golgi' + (' --quick' if cfg.quick else '')}`

## Masks

{md_table(header, summary_rows(result))}

Pixels covered: fraction of input pixels with at least one kept first-layer connection. Spearman ρ: rank
correlation over pixels between kept first-layer connections and the pixel's standard deviation over the
training set. Input tree pixels: input pixels with a path of kept connections to the unit.

## Degrees per layer (unit level: kept inputs per output unit, kept outputs per input unit)

{md_table(["mask", "layer", "fan-in mean", "fan-in var", "fan-in Gini", "fan-out mean", "fan-out var",
           "fan-out Gini", "units without input", "inputs without output"], deg_rows)}

## Criteria

{md_table(["criterion", "value", "target", "result"], crit)}

## Figures

{figs}
"""
