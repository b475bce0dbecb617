"""Units of one weight tensor, read through its layout: which output unit each kept weight feeds and which
input unit it reads.

A weight's :class:`~sparseflow.layouts.Layout` says which axis indexes the layer's outputs and which its inputs
(``nn.Linear`` ``(out, in)``, HF ``Conv1D`` ``(in, out)``, a convolution ``(out, in / groups, *k)``, a
transposed one ``(in, out / groups, *k)``, ``in_proj_weight`` ``(3E, E)`` in q, k, v chunks, an LSTM's
``(4H, in)`` in gate chunks). :func:`unit_pairs` turns a weight-shaped structure into the ``(out, in)`` count
of kept weights per unit pair (kernel taps summed, groups expanded to block-diagonal), the one view that the
unit graph (:mod:`sparseflow.analysis.trace`) and the layer-local analysis
(:func:`sparseflow.analysis.connectivity.local_connectivity`) share.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparseflow.layouts import Layout, layout_of

# Weights whose layout is known but which are lookup tables, not maps between units of the signal path.
_TABLES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


def unit_counts(layout: Layout, shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """(output units, input units) of a weight of stored ``shape`` (channels for a convolution)."""
    c = layout.canonical_shape(shape)
    if layout.groups == 1:
        return c[0], c[1]
    if layout.out_axis == 0:  # (out, in / groups, *k)
        return c[0], c[1] * layout.groups
    return c[0] * layout.groups, c[1]  # transposed: canonical (out / groups, in, *k)


def unit_pairs(layout: Layout, structure: Tensor) -> Tensor:
    """``(out, in)`` number of kept weights per unit pair (int64) from a weight-shaped boolean ``structure``.

    Kernel taps of a convolution are summed; a grouped convolution's pairs across groups are 0.
    """
    c = layout.canonical(structure)
    pairs = c.reshape(c.shape[0], c.shape[1], -1).sum(-1, dtype=torch.int64)  # (a, b): stored per group
    g = layout.groups
    if g == 1:
        return pairs
    out_u, in_u = unit_counts(layout, structure.shape)
    full = torch.zeros(out_u, in_u, dtype=torch.int64)
    po, pi = out_u // g, in_u // g  # units per group
    for k in range(g):
        rows = slice(k * po, (k + 1) * po)
        cols = slice(k * pi, (k + 1) * pi)
        # Normal: output o of group k reads inputs of group k at local column j. Transposed: input i of group k
        # feeds outputs of group k at local row j.
        full[rows, cols] = pairs[rows] if layout.out_axis == 0 else pairs[:, cols]
    return full


def chunk_pairs(layout: Layout, pairs: Tensor) -> list[tuple[str, Tensor]]:
    """``[(chunk name, its (out / chunks, in) rows)]``; one unnamed chunk for a layout without chunks."""
    if not layout.chunks:
        return [("", pairs)]
    n = len(layout.chunks)
    return list(zip(layout.chunks, pairs.split(pairs.shape[0] // n)))


@dataclass(frozen=True)
class WeightParam:
    """A weight with a known layout: its parameter name (the first name ``named_parameters`` gives it), the
    name of this use (another module's name for a tied weight), the module, the leaf name and the layout."""

    name: str
    use: str
    module: nn.Module
    leaf: str
    layout: Layout

    @property
    def tensor(self) -> Tensor:
        return getattr(self.module, self.leaf)


def weight_params(model: nn.Module, *, tables: bool = False) -> Iterator[WeightParam]:
    """Every weight of ``model`` whose layout is known, in module order. A weight tied into several modules is
    listed once per module that uses it as a map (an embedding matrix reused as the output layer is listed as
    that layer); embeddings themselves only with ``tables=True``."""
    first = {id(p): n for n, p in model.named_parameters()}
    seen: set[tuple[int, str]] = set()
    for mod_name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, _TABLES) and not tables:
            continue
        for leaf, p in module.named_parameters(recurse=False):
            layout = layout_of(module, leaf) if p.dim() >= 2 else None
            key = (id(p), type(module).__name__)
            if layout is None or key in seen:
                continue
            seen.add(key)
            use = f"{mod_name}.{leaf}" if mod_name else leaf
            yield WeightParam(first.get(id(p), use), use, module, leaf, layout)
