"""Golgi staining of a sparse network: a few units, and everything joined to them by kept connections.

Golgi's silver stain (Golgi 1873) blackens about 1 % of the neurons in a slice, each one completely, and so
makes single cells visible in a tangle that is otherwise too dense to see (Ramón y Cajal's drawings were
made this way). Here the tangle is a sparse network's unit graph (:mod:`sparseflow.analysis.trace`: units
of Linear layers, channels of convolutions, a channel pair joined when any kernel weight of it is kept),
and staining a unit colours its

- *input tree*: every unit, in every earlier layer, with a path of kept connections to it (its dendrites);
- *output tree*: every unit, in every later layer, that it reaches (its axon).

(On a layered graph these are cones rather than trees; the name is the anatomist's.) The graph and its
reachability are in :mod:`sparseflow.analysis.stain_graph`. Units are chosen at random among those on some
input-output path, so that a stain shows a living cell rather than a pruned-away one.

Next to the trees: per layer the kept fan-in of every output unit and kept fan-out of every input unit
(in/out degrees, with their Gini coefficient: 0 when every unit keeps as many connections, towards 1 when
a few units keep them all), and, for a fully connected first layer, the fraction of first-layer units that
keep each input pixel (which pixels survive pruning).

A dense model is refused (:class:`SparseflowError`): every unit's trees would be the whole network, so
there is nothing to single out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparseflow.analysis.stain_graph import LayerGraph, Link, Trees, layer_graph, on_path, trees
from sparseflow.errors import SparseflowError
from sparseflow.mask import Mask


def choose_units(size: int, k: int, seed: int, among: Tensor | None = None) -> tuple[int, ...]:
    """``k`` distinct units of a layer of ``size``, uniformly at random from ``seed`` (sorted): from the units
    where ``among`` (bool, ``(size,)``) is True first, then, if those are fewer than ``k``, from the rest."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SparseflowError(f"the number of units to stain must be an integer >= 1, got {k!r}")
    if k > size:
        raise SparseflowError(f"cannot stain {k} units of a layer of {size}; pass --units {size} or fewer")
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(int(seed)))
    if among is not None:  # stable: preferred units first, each group in the seeded random order
        perm = perm[torch.argsort((~among[perm]).to(torch.uint8), stable=True)]
    return tuple(sorted(int(u) for u in perm[:k]))


def gini(x: Tensor) -> float:
    """Gini coefficient of non-negative values: mean |x_i - x_j| / (2 mean x); 0 for all-equal or all-zero."""
    v = x.double().flatten().sort().values
    n, s = v.numel(), float(v.sum())
    if n == 0 or s == 0:
        return 0.0
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(2 * (i * v).sum() / (n * s) - (n + 1) / n)


def degree_stats(x: Tensor) -> dict[str, object]:
    """Mean, variance (population), Gini, units with degree 0, maximum and histogram (count per degree)."""
    x = x.long()
    return {"mean": float(x.double().mean()), "var": float(x.double().var(unbiased=False)), "gini": gini(x),
            "zero": int((x == 0).sum()), "max": int(x.max()), "histogram": torch.bincount(x).tolist()}


@dataclass(frozen=True, eq=False)
class Degrees:
    """One weight layer: kept fan-in of each output unit ``(out,)``, kept fan-out of each input unit ``(in,)``
    (unit level: for a convolution, channel pairs with any kept kernel weight)."""

    layer: str
    fan_in: Tensor
    fan_out: Tensor


def degrees(g: LayerGraph) -> tuple[Degrees, ...]:
    return tuple(Degrees(g.labels[l.dst], l.adj.sum(1), l.adj.sum(0)) for l in g.weight_links)


@dataclass(frozen=True, eq=False)
class PixelMap:
    """Which input pixels survive pruning in a fully connected first layer.

    ``kept_fraction``: ``(H, W)``, the fraction of first-layer units keeping a connection to the pixel
    (averaged over input channels); ``fields``: ``(out, H, W)`` kept fraction per unit (its receptive field).
    """

    layer: str
    kept_fraction: Tensor
    fields: Tensor

    @property
    def covered(self) -> float:
        """Fraction of pixels with at least one kept first-layer connection."""
        return float((self.kept_fraction > 0).double().mean())


def pixel_map(g: LayerGraph, input_shape: tuple[int, ...] | None = None) -> PixelMap | None:
    """The :class:`PixelMap` of the first Linear layer, None when the first layer is a convolution or the
    features have no image shape (``input_shape`` ``(C, H, W)`` / ``(C, L)``, else a square is assumed)."""
    first = next((l for l in g.weight_links if l.src == g.input), None)
    if first is None or first.structure.dim() != 2:
        return None
    n = first.structure.shape[1]
    if input_shape is not None and math.prod(input_shape) == n and len(input_shape) in (2, 3):
        c, h, w = (input_shape[0], 1, input_shape[1]) if len(input_shape) == 2 else input_shape
    elif math.isqrt(n) ** 2 == n:
        c, h, w = 1, math.isqrt(n), math.isqrt(n)
    else:
        return None
    fields = first.structure.float().reshape(-1, c, h, w).mean(1)  # (out, H, W); torch.flatten's order
    return PixelMap(g.labels[first.dst], fields.mean(0), fields)


@dataclass(frozen=True, eq=False)
class Stain:
    """A stained network: its graph, the stained units' trees, degrees per layer and the pixel map.

    ``alive``: units of the stained layer on some input-output path (the units were drawn among them first).
    """

    graph: LayerGraph
    trees: Trees
    degrees: tuple[Degrees, ...]
    pixels: PixelMap | None
    seed: int
    alive: int

    def tree_json(self, j: int) -> dict[str, object]:
        """Sizes of the trees of ``trees.units[j]``: units per layer, kept connections, inputs and outputs."""
        g, t = self.graph, self.trees
        n_in, n_out = t.sizes(j)
        per = lambda r: {g.labels[s]: int(r[s][j].sum()) for s in range(len(g.sizes)) if s != t.space and r[s][j].any()}  # noqa: E731
        return {"unit": t.units[j], "input_tree_units": n_in, "output_tree_units": n_out,
                "input_tree": per(t.up), "output_tree": per(t.down),
                "input_tree_edges": sum(int(t.input_edges(l, j).sum()) for l in g.weight_links),
                "output_tree_edges": sum(int(t.output_edges(l, j).sum()) for l in g.weight_links),
                "inputs_reaching": int(t.up[g.input][j].sum()), "outputs_reached": int(t.down[g.output][j].sum())}

    def to_json(self) -> dict[str, object]:
        g, t, px = self.graph, self.trees, self.pixels
        return {
            "layer": g.labels[t.space], "layer_units": g.sizes[t.space], "layer_units_on_path": self.alive,
            "units": list(t.units), "seed": self.seed, "density": g.density,
            "spaces": [{"label": lab, "units": n} for lab, n in zip(g.labels, g.sizes)],
            "trees": [self.tree_json(j) for j in range(len(t.units))],
            "pixels": None if px is None else {"layer": px.layer, "shape": list(px.kept_fraction.shape),
                                               "covered": px.covered, "kept_fraction_mean": float(px.kept_fraction.mean())},
            "degrees": [{"layer": d.layer, "fan_in": degree_stats(d.fan_in), "fan_out": degree_stats(d.fan_out)}
                        for d in self.degrees],
        }


def default_space(g: LayerGraph) -> int:
    """The middle hidden layer (the output layer when there is none): its units have trees both ways."""
    hidden = [l.dst for l in g.weight_links if l.dst != g.output]
    return hidden[len(hidden) // 2] if hidden else g.output


def stain(model: nn.Module, mask: Mask | None = None, *, layer: str | None = None, units: int = 3, seed: int = 0,
          input_shape: tuple[int, ...] | None = None, names: Mapping[str, str] | None = None,
          any_unit: bool = False) -> Stain:
    """Stain ``units`` units of ``layer`` (a weight layer's name, 'input' or 'output'; default: the middle
    hidden layer), chosen at random from ``seed`` among the units on some input-output path (``any_unit``:
    among all units, dead ones included). Raises SparseflowError for a dense model."""
    g = layer_graph(model, mask, names=names)
    if g.dense:
        raise SparseflowError(
            f"{type(model).__name__} is dense (every weight of its {len(g.weight_links)} Linear/Conv layers is "
            "kept): every unit's trees are the whole network, so there is nothing to stain; pass a pruned model")
    space = default_space(g) if layer is None else g.space(layer)
    alive = on_path(g)[space]
    chosen = choose_units(g.sizes[space], units, seed, None if any_unit else alive)
    return Stain(g, trees(g, space, chosen), degrees(g), pixel_map(g, input_shape), seed, int(alive.sum()))


__all__ = ["Degrees", "LayerGraph", "Link", "PixelMap", "Stain", "Trees", "choose_units", "default_space",
           "degree_stats", "degrees", "gini", "layer_graph", "on_path", "pixel_map", "stain", "trees"]
