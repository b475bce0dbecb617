"""The unit graph a Golgi stain is drawn on (:mod:`sparseflow.analysis.stain`), and reachability in it.

Spaces of units come from :func:`sparseflow.analysis.trace.trace` (input features or channels, the output
units of every Linear layer, the output channels of every convolution, flattened maps and residual sums);
kept connections from :func:`sparseflow.analysis.connectivity.structures` (the mask, else the nonzero
weights), a channel pair being joined when any kernel weight of it is kept. Reachability is boolean
products along the links, batched over seed units: ``(k, in) @ (in, out)`` per link, so the trees of every
unit of a layer cost one pass, and "on some input-output path" costs two passes of one row each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparseflow.analysis.connectivity import structures
from sparseflow.analysis.trace import ExpandEdge, JoinEdge, WeightEdge, adjacency, trace
from sparseflow.errors import SparseflowError
from sparseflow.mask import Mask


@dataclass(frozen=True, eq=False)
class Link:
    """Connections from space ``src`` to space ``dst``: ``adj`` is ``(dst units, src units)`` bool.

    ``name`` (the weight's display name) and ``structure`` (its kept entries in the ``(out, in, *k)`` view of the
    weight's layout: an HF Conv1D's ``(in, out)`` weight transposed) are set for a weight layer and None for a
    flatten or a residual add, which join units one to one (or one to k).
    """

    src: int
    dst: int
    adj: Tensor
    name: str | None = None
    structure: Tensor | None = None


@dataclass(frozen=True, eq=False)
class LayerGraph:
    """Spaces of units (columns of the drawing, in topological order) and the links between them."""

    sizes: tuple[int, ...]
    labels: tuple[str, ...]
    links: tuple[Link, ...]
    input: int
    output: int

    @property
    def weight_links(self) -> tuple[Link, ...]:
        return tuple(l for l in self.links if l.structure is not None)

    @property
    def dense(self) -> bool:
        return all(bool(l.structure.all()) for l in self.weight_links)

    @property
    def density(self) -> float:
        kept = sum(int(l.structure.sum()) for l in self.weight_links)
        return kept / sum(l.structure.numel() for l in self.weight_links)

    def space(self, layer: str) -> int:
        """The space of ``layer``: 'input', 'output', or a weight layer's name (its output units)."""
        wanted = layer.removesuffix(".weight")
        if wanted in ("input", "output"):
            return self.input if wanted == "input" else self.output
        for l in self.weight_links:
            if l.name is not None and l.name.removesuffix(".weight") == wanted:
                return l.dst
        names = ["input"] + [l.name.removesuffix(".weight") for l in self.weight_links if l.name]
        raise SparseflowError(f"no layer {layer!r} in this model; choose one of {', '.join(names)}")


def layer_graph(model: nn.Module, mask: Mask | None = None, *, names: Mapping[str, str] | None = None) -> LayerGraph:
    """The unit graph of ``model`` with kept connections from ``mask`` (default: the nonzero weights).

    ``names`` maps parameter names to the names shown (e.g. a checkpoint's own names); reuses the tracer and
    the structure rules of :mod:`sparseflow.analysis.connectivity`.
    """
    graph = trace(model)
    struct = structures(model, graph, mask)
    show = lambda n: (names or {}).get(n, n)  # noqa: E731
    labels = [""] * len(graph.sizes)
    labels[graph.input] = "input"
    links: list[Link] = []
    for e in graph.edges:  # creation order is topological
        if isinstance(e, WeightEdge):
            s = struct[e.name]
            links.append(Link(e.src, e.dst, adjacency(e.module, s), show(e.name), e.layout.canonical(s)))
            labels[e.dst] = show(e.name).removesuffix(".weight")
        elif isinstance(e, ExpandEdge):  # unit j of the flattened map is channel j // k
            n = graph.sizes[e.dst]
            adj = (torch.arange(n)[:, None] // e.k) == torch.arange(graph.sizes[e.src])[None, :]
            links.append(Link(e.src, e.dst, adj))
            labels[e.dst] = f"{labels[e.src]} flat"
        elif isinstance(e, JoinEdge):
            links += [Link(s, e.dst, torch.eye(graph.sizes[e.dst], dtype=torch.bool)) for s in e.srcs]
            labels[e.dst] = "+".join(labels[s] for s in e.srcs)
    return LayerGraph(tuple(graph.sizes), tuple(labels), tuple(links), graph.input, graph.output)


@dataclass(frozen=True, eq=False)
class Trees:
    """The trees of ``units`` of space ``space``: per space, ``(k, size)`` bool, row j for ``units[j]``.

    ``up[s][j, i]``: unit i of space s has a path to ``units[j]`` (its input tree; the unit itself included);
    ``down[s][j, i]``: ``units[j]`` has a path to unit i (its output tree).
    """

    space: int
    units: tuple[int, ...]
    up: tuple[Tensor, ...]
    down: tuple[Tensor, ...]

    def input_edges(self, link: Link, j: int) -> Tensor:
        """``(dst, src)`` bool: the link's kept connections on a path into ``units[j]``."""
        return link.adj & self.up[link.dst][j][:, None]

    def output_edges(self, link: Link, j: int) -> Tensor:
        """``(dst, src)`` bool: the link's kept connections on a path out of ``units[j]``."""
        return link.adj & self.down[link.src][j][None, :]

    def sizes(self, j: int) -> tuple[int, int]:
        """(units in the input tree, units in the output tree) of ``units[j]``, the unit itself excluded."""
        return sum(int(u[j].sum()) for u in self.up) - 1, sum(int(d[j].sum()) for d in self.down) - 1


def _spread(g: LayerGraph, space: int, seeds: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """(up, down): per space ``(k, size)`` bool, what reaches / is reached from row j of ``seeds`` ``(k, size)``."""
    down = [torch.zeros(len(seeds), n, dtype=torch.bool) for n in g.sizes]
    up = [d.clone() for d in down]
    down[space], up[space] = seeds.clone(), seeds.clone()
    # Forward in creation order: a space is final before any link leaves it (a link into `space` comes from
    # an ancestor, whose rows are still empty, so the seeds are never overwritten).
    for l in g.links:
        if down[l.src].any():
            down[l.dst] |= (down[l.src].float() @ l.adj.T.float()) > 0  # (k, src) @ (src, dst)
    for l in reversed(g.links):
        if up[l.dst].any():
            up[l.src] |= (up[l.dst].float() @ l.adj.float()) > 0  # (k, dst) @ (dst, src)
    return up, down


def trees(g: LayerGraph, space: int, units: Sequence[int]) -> Trees:
    """Input and output trees of ``units`` of ``space`` (see :class:`Trees`)."""
    idx = torch.as_tensor(list(units), dtype=torch.long)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= g.sizes[space]):
        raise SparseflowError(f"units {list(units)} out of range for {g.labels[space]!r} ({g.sizes[space]} units)")
    seeds = torch.zeros(len(idx), g.sizes[space], dtype=torch.bool)
    seeds[torch.arange(len(idx)), idx] = True
    up, down = _spread(g, space, seeds)
    return Trees(space, tuple(int(u) for u in idx), tuple(up), tuple(down))


def on_path(g: LayerGraph) -> tuple[Tensor, ...]:
    """Per space ``(size,)`` bool: the unit lies on some input-output path of kept connections."""
    down = _spread(g, g.input, torch.ones(1, g.sizes[g.input], dtype=torch.bool))[1]
    up = _spread(g, g.output, torch.ones(1, g.sizes[g.output], dtype=torch.bool))[0]
    return tuple(d[0] & u[0] for d, u in zip(down, up))
