"""Figures of a stained network (:mod:`sparseflow.analysis.stain`): the layered graph with the stained units'
trees, per-layer mask images, in/out degree histograms and the first layer's pixel map.

Every function takes a list of ``(title, Stain)`` pairs and draws them side by side (one for ``sparseflow
stain``, a trained mask next to its random control for ``sparseflow experiment golgi``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparseflow.analysis.stain import Stain, choose_units, gini
from sparseflow.training.report import save_figure

Panels = Sequence[tuple[str, Stain]]
MAX_DOTS = 60  # non-tree units drawn per column; tree units are always all drawn
CONTEXT_EDGES = 600  # faint kept connections drawn for context (the tangle the stain cuts through)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(k: int) -> list[Any]:
    cmap = _plt().get_cmap("tab10")
    return [cmap(i % 10) for i in range(k)]


def _y(units: np.ndarray, n: int) -> np.ndarray:
    return 1.0 - (units + 0.5) / n  # unit 0 at the top


def draw_graph(ax: Any, st: Stain, title: str, seed: int = 0) -> None:
    """Layers as columns of dots, the stained units' input and output trees as coloured edges."""
    from matplotlib.collections import LineCollection

    g, t = st.graph, st.trees
    rng = np.random.default_rng(seed)
    colours = _colours(len(t.units))
    # Context: a seeded sample of all kept connections, very faint.
    segs = []
    total = sum(int(l.adj.sum()) for l in g.weight_links)
    for l in g.weight_links:
        dst, src = (v.numpy() for v in torch.nonzero(l.adj, as_tuple=True))
        take = rng.random(len(dst)) < CONTEXT_EDGES / max(total, 1)
        segs += [((l.src, a), (l.dst, b)) for a, b in zip(_y(src[take], g.sizes[l.src]), _y(dst[take], g.sizes[l.dst]))]
    ax.add_collection(LineCollection(segs, colors="0.6", linewidths=0.3, alpha=0.35, zorder=1))
    # Trees: every kept connection on a path into (input tree) or out of (output tree) a stained unit.
    for j, u in enumerate(t.units):
        segs = []
        for l in g.links:
            edges = t.input_edges(l, j) | t.output_edges(l, j)
            dst, src = (v.numpy() for v in torch.nonzero(edges, as_tuple=True))
            segs += list(zip(zip(np.full(len(src), l.src), _y(src, g.sizes[l.src])),
                             zip(np.full(len(dst), l.dst), _y(dst, g.sizes[l.dst]))))
        alpha = float(np.clip(5 / np.sqrt(max(len(segs), 1)), 0.04, 0.85))  # dense trees fade, sparse ones stay
        ax.add_collection(LineCollection(segs, colors=[colours[j]], linewidths=0.5, alpha=alpha, zorder=2))
        n_in, n_out = t.sizes(j)
        ax.plot([], [], color=colours[j], lw=2, label=f"unit {u}: input tree {n_in} units, output tree {n_out}")
    # Dots: every tree unit, and a seeded sample of the others.
    ticks = []
    for s, n in enumerate(g.sizes):
        tree = (torch.stack([t.up[s], t.down[s]]).any(0).any(0)).numpy()  # (n,)
        others = np.flatnonzero(~tree)
        shown = others if len(others) <= MAX_DOTS else np.sort(rng.choice(others, MAX_DOTS, replace=False))
        ax.scatter(np.full(len(shown), s), _y(shown, n), s=5, color="0.75", zorder=3, linewidths=0)
        on = np.flatnonzero(tree)
        ax.scatter(np.full(len(on), s), _y(on, n), s=min(8.0, 1500 / n), color="0.15", zorder=4, linewidths=0)
        drawn = len(shown) + len(on)
        ticks.append(f"{g.labels[s]}\n{n} unit{'s' if n > 1 else ''}" + (f"\n({drawn} drawn)" if drawn < n else ""))
    ys = _y(np.array(t.units), g.sizes[t.space])
    ax.scatter(np.full(len(ys), t.space), ys, s=120, marker="*", c=colours, edgecolors="k", linewidths=0.6, zorder=5)
    ax.set_xticks(range(len(g.sizes)), ticks, fontsize=8)
    ax.set(xlim=(-0.4, len(g.sizes) - 0.6), ylim=(-0.03, 1.03), yticks=[], ylabel="unit index (top: 0)")
    ax.set_title(title, fontsize=10)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)


def plot_graphs(panels: Panels, path: Path) -> None:
    plt = _plt()
    cols = max(len(p[1].graph.sizes) for p in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 2.0 * cols) * len(panels), 6.4), squeeze=False)
    for ax, (title, st) in zip(axes[0], panels):
        draw_graph(ax, st, title, seed=st.seed)
    save_figure(fig, path)


def _pooled(x: torch.Tensor, cells: int = 320) -> tuple[np.ndarray, int]:
    # Mean-pool a big (out, in) image to at most `cells` per axis (a panel is ~400 pixels wide, so a finer
    # image would alias): a pixel then shows the kept fraction of its block. Returns (image, block size).
    h, w = x.shape
    if h <= cells and w <= cells:
        return x.numpy(), 1
    b = int(np.ceil(max(h, w) / cells))
    return torch.nn.functional.avg_pool2d(x[None, None], b, ceil_mode=True)[0, 0].numpy(), b


def plot_masks(panels: Panels, path: Path) -> None:
    """One image per weight layer (rows: output units, columns: input units; black = kept)."""
    plt = _plt()
    n = max(len(st.graph.weight_links) for _, st in panels)
    fig, axes = plt.subplots(len(panels), n, figsize=(3.4 * n, 3.3 * len(panels)), squeeze=False, layout="constrained")
    for row, (title, st) in zip(axes, panels):
        g = st.graph
        for ax, l in zip(row, g.weight_links):
            s = l.structure
            # Linear: the mask itself; convolution: the kept fraction of each channel pair's kernel.
            img = s.float() if s.dim() == 2 else s.reshape(s.shape[0], s.shape[1], -1).float().mean(-1)
            shown, b = _pooled(img)
            binary = b == 1 and s.dim() == 2
            vmax = 1.0 if binary else max(float(shown.max()), 1e-9)  # fractions: stretch, or 5 % reads as white
            ax.imshow(shown, cmap="Greys", vmin=0, vmax=vmax, aspect="auto", interpolation="nearest",
                      extent=(0, img.shape[1], img.shape[0], 0))
            what = "black: kept" if binary else f"shade: kept fraction of the {'kernel' if b == 1 else f'{b}×{b} block'}"
            if not binary:
                what += f" (black: {vmax:.2f})"
            ax.set_title(f"{title}: {g.labels[l.dst]}\n{img.shape[0]}×{img.shape[1]}, density "
                         f"{float(s.float().mean()):.3f}\n{what}", fontsize=8)
            ax.set_xlabel(f"input unit ({g.labels[l.src]})", fontsize=8)
            ax.set_ylabel("output unit", fontsize=8)
            if l.dst == st.trees.space:  # mark the stained units' rows
                for c, u in zip(_colours(len(st.trees.units)), st.trees.units):
                    ax.plot(-0.015 * img.shape[1], u + 0.5, ">", color=c, ms=6, clip_on=False)
        for ax in row[len(g.weight_links):]:
            ax.axis("off")
    save_figure(fig, path)


def plot_degrees(panels: Panels, path: Path) -> None:
    """Per weight layer: histogram of kept fan-in (output units) and kept fan-out (input units).

    Each panel's colour is named once, in a legend above the figure (titles may be long: run directories,
    file names); the legend of every axes holds only the statistics, so it stays within its axes' width.
    """
    from matplotlib.lines import Line2D

    plt = _plt()
    layers = [d.layer for d in panels[0][1].degrees]
    colours = ("tab:blue", "tab:orange", "tab:green")
    fig, axes = plt.subplots(len(layers), 2, figsize=(10, (2.2 + 0.2 * len(panels)) * len(layers) + 0.4),
                             squeeze=False, layout="constrained")
    for i, layer in enumerate(layers):
        for k, (what, unit) in enumerate((("fan_in", "kept inputs per output unit"), ("fan_out", "kept outputs per input unit"))):
            ax = axes[i][k]
            xs = [getattr(st.degrees[i], what).numpy() for _, st in panels]
            lo, hi = min(int(x.min()) for x in xs), max(int(x.max()) for x in xs)
            bins = np.arange(lo - 0.5, hi + 1.5, max(1, int(np.ceil((hi - lo + 1) / 40))))  # shared, whole degrees
            for c, x in zip(colours, xs):
                ax.hist(x, bins=bins, histtype="step", lw=1.4, color=c,
                        label=f"mean {x.mean():.1f}, var {x.var():.1f}, Gini {gini(torch.from_numpy(x)):.2f}, "
                              f"zero {int((x == 0).sum())}")
            ax.set_xlabel(f"{layer}: {unit}", fontsize=8)
            ax.set_ylabel("units", fontsize=8)
            ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False, borderaxespad=0.2)
    names = [textwrap.fill(title, 110) for title, _ in panels]
    fig.legend([Line2D([], [], color=c, lw=1.4) for c in colours[: len(panels)]], names, loc="outside upper left",
               fontsize=8, frameon=False)
    save_figure(fig, path)


def plot_pixels(panels: Panels, path: Path, fields: int = 3) -> None:
    """Per panel: the per-pixel kept fraction of the first layer (one colour scale for all panels), the
    pixels in each stained unit's input tree, and the receptive fields of ``fields`` first-layer units
    (seeded, among those keeping any input; none when the stained layer is the first layer itself)."""
    plt = _plt()
    k = max(len(st.trees.units) for _, st in panels)
    first_stained = any(st.trees.space == st.graph.weight_links[0].dst for _, st in panels)
    n_fields = 0 if first_stained else fields
    cols = 1 + k + n_fields
    vmax = max(float(st.pixels.kept_fraction.max()) for _, st in panels if st.pixels is not None) or 1.0
    fig, axes = plt.subplots(len(panels), cols, figsize=(2.3 * cols + 0.6, 2.7 * len(panels)), squeeze=False,
                             layout="constrained")
    for row, (title, st) in zip(axes, panels):
        px, g, t = st.pixels, st.graph, st.trees
        assert px is not None, "plot_pixels needs a fully connected first layer"
        shape = tuple(px.kept_fraction.shape)
        im = row[0].imshow(px.kept_fraction.numpy(), cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        fig.colorbar(im, ax=row[0], fraction=0.046, pad=0.03)
        row[0].set_title(f"{title}\nkept fraction per pixel\n(covered {px.covered:.0%} of {px.kept_fraction.numel()})",
                         fontsize=8)
        for ax, j in zip(row[1:], range(len(t.units))):
            reach = t.up[g.input][j].float().reshape(-1, *shape).mean(0)  # pixels with a path to the unit
            ax.imshow(reach.numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{g.labels[t.space]} unit {t.units[j]}\ninput tree: {int((reach > 0).sum())} pixels",
                         fontsize=8)
        if n_fields:
            units = choose_units(len(px.fields), min(n_fields, len(px.fields)), st.seed + 2,
                                 px.fields.flatten(1).any(1))
            for ax, u in zip(row[1 + k:], units):
                ax.imshow(px.fields[u].numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(f"{px.layer} unit {u}\nreceptive field: {int((px.fields[u] > 0).sum())} pixels",
                             fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[1 + len(t.units):1 + k]:
            ax.axis("off")
    save_figure(fig, path)
