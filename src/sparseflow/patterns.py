"""Sparsity patterns: which groups of weights are kept or pruned together.

Every pattern is a frozen value with the same three methods:

- ``units(shape)``: how many selectable units a weight of that shape has (a unit is one weight for
  :class:`Unstructured` and :class:`NM`, an ``r x c`` tile for :class:`Block`);
- ``unit_scores(scores)``: one score per unit, flat, for ranking units (within or across layers);
- ``topk(scores, k)``: the boolean mask keeping the ``k`` best units of a score tensor (higher = keep).

Two selection helpers underlie them and the dynamic methods: :func:`topk_mask` (the ``k`` largest of a
flat tensor) and :func:`largest_among` (the ``k`` largest among allowed positions, as indices).

Weights are viewed as matrices ``(out, in)``: a Linear weight as it is, a convolution weight
``(out, in, *kernel)`` as ``(out, kernel..., in)`` so that groups run along input channels, the reduction
dimension that 2:4 sparse tensor cores (and NVIDIA's ASP) group along.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
import torch
from torch import Tensor

from sparseflow.errors import MaskError


def _as_matrix(t: Tensor) -> Tensor:
    """(out, in, *kernel) -> (out, prod(kernel) * in) with input channels innermost; a view when 2-D."""
    if t.dim() == 2:
        return t
    return t.movedim(1, -1).reshape(t.shape[0], -1)


def _from_matrix(m: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of :func:`_as_matrix` for a tensor of the original ``shape``."""
    if len(shape) == 2:
        return m
    out, inp, *kernel = shape
    return m.reshape(out, *kernel, inp).movedim(-1, 1).contiguous()


def topk_mask(flat: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` largest entries of a 1-D tensor; ties at the threshold go to lower indices.

    On the CPU the threshold comes from a linear-time selection (numpy's introselect), about 3x faster
    than ``torch.topk`` for the k ~ n/10 of pruning, which dominates the cost of a mask update.
    """
    n = flat.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        arr = flat.detach().numpy()
        # Excluded positions (-inf) are many equal values, on which introselect degrades: select among
        # the rest. (The boolean index also gives partition a private copy to reorder.)
        cand = arr[arr != -np.inf]
        if k > cand.size:
            threshold = -math.inf
        else:
            threshold = float(np.partition(cand, cand.size - k)[cand.size - k])  # the k-th largest value
        mask = flat >= threshold
        if int(torch.count_nonzero(mask)) == k:  # the usual case: no tie at the threshold
            return mask
        mask = flat > threshold
        missing = k - int(torch.count_nonzero(mask))
        if missing > 0:
            mask[torch.nonzero(flat == threshold).squeeze(1)[:missing]] = True
        return mask
    mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
    mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask


def largest_among(scores: Tensor, allowed: Tensor, k: int) -> Tensor:
    """Increasing flat indices (int64) of the ``k`` largest ``scores`` among the ``allowed`` positions; ties
    go to lower indices.

    ``scores``: 1-D, finite; ``allowed``: 1-D bool of the same length, with at least ``k`` True. The result
    is exactly ``topk_mask(scores.masked_fill(~allowed, -inf), k).nonzero()``. On the CPU only the allowed
    scores are ranked, and when k is a small part of them (growth in dynamic sparse training) a threshold t
    is read off a strided sample of the allowed scores, deep enough that usually at least k allowed scores
    are >= t, and only those are ranked: if at least k are, the k-th largest allowed score is >= t, so every
    score that ranks (ties included) is among them, and ranking them in index order gives the same set.
    Otherwise all allowed scores are ranked.
    """
    n_allowed = int(torch.count_nonzero(allowed))
    if not 0 <= k <= n_allowed:
        raise MaskError(f"cannot select {k} of {n_allowed} allowed positions")
    if scores.device.type != "cpu" or scores.dtype not in (torch.float32, torch.float64):
        return topk_mask(scores.masked_fill(~allowed, -math.inf), k).nonzero().squeeze(1)
    s, ok = scores.detach().contiguous().numpy(), allowed.contiguous().numpy()
    sel = None
    if s.size >= 16384 and 8 * k <= n_allowed:
        stride = s.size // 4096
        sample = s[::stride][ok[::stride]]
        if sample.size:
            r = min(sample.size - 1, int(2 * k * sample.size / n_allowed) + 32)  # twice the expected rank
            t = np.partition(sample, sample.size - 1 - r)[sample.size - 1 - r]  # the r-th largest (0-based)
            sel = np.flatnonzero((s >= t) & ok)
            if sel.size < k:
                sel = None
    if sel is None:
        sel = np.flatnonzero(ok)
    return torch.from_numpy(sel[topk_mask(torch.from_numpy(s[sel]), k).numpy()]).to(torch.int64)


def _check_k(k: int, units: int, what: str) -> None:
    if not 0 <= k <= units:
        raise MaskError(f"cannot keep {k} units of {what}: it has {units}")


@dataclass(frozen=True)
class Unstructured:
    """Any subset of individual weights."""

    def units(self, shape: tuple[int, ...] | torch.Size) -> int:
        n = 1
        for d in shape:
            n *= d
        return n

    def check(self, name: str, shape: tuple[int, ...] | torch.Size) -> None:
        """Unstructured masks fit every shape."""

    def unit_scores(self, scores: Tensor) -> Tensor:
        return scores.reshape(-1)

    def topk(self, scores: Tensor, k: int) -> Tensor:
        flat = scores.reshape(-1)
        _check_k(k, flat.numel(), "an unstructured tensor")
        return topk_mask(flat, k).reshape(scores.shape)


@dataclass(frozen=True)
class NM:
    """N:M semi-structured sparsity: at most ``n`` kept in every ``m`` consecutive input weights.

    2:4 is what NVIDIA Ampere and later tensor cores accelerate (Mishra et al. 2021). The density of every
    layer is fixed at ``n / m``; the input dimension (``in_features``, or ``in_channels`` of a convolution)
    must be divisible by ``m``.
    """

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n <= self.m):
            raise MaskError(f"NM(n, m) needs integers 0 < n <= m, got NM({self.n!r}, {self.m!r})")

    @property
    def density(self) -> float:
        return self.n / self.m

    def units(self, shape: tuple[int, ...] | torch.Size) -> int:
        return Unstructured().units(shape)

    def check(self, name: str, shape: tuple[int, ...] | torch.Size) -> None:
        if len(shape) < 2 or shape[1] % self.m:
            raise MaskError(
                f"NM({self.n}, {self.m}) groups input dimension of {name!r} in blocks of {self.m}, but its "
                f"shape is {tuple(shape)} (input dimension {shape[1] if len(shape) > 1 else None}); exclude "
                "this layer from the targets or choose m dividing it"
            )

    def unit_scores(self, scores: Tensor) -> Tensor:
        return scores.reshape(-1)

    def topk(self, scores: Tensor, k: int) -> Tensor:
        self.check("scores", scores.shape)
        want = scores.numel() * self.n // self.m
        if k != want:
            raise MaskError(f"NM({self.n}, {self.m}) keeps exactly {want} of {scores.numel()} weights, not {k}")
        groups = _as_matrix(scores).reshape(-1, self.m)  # (out * in/m, m)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, torch.topk(groups, self.n, dim=1).indices, True)
        return _from_matrix(keep.reshape(scores.shape[0], -1), scores.shape)


@dataclass(frozen=True)
class Block:
    """Block sparsity: weights kept or pruned in ``r x c`` tiles of the ``(out, in)`` matrix view.

    A tile's score is the sum of its weights' scores. Both matrix dimensions must be divisible by the
    tile's.
    """

    r: int
    c: int

    def __post_init__(self) -> None:
        if not (isinstance(self.r, int) and isinstance(self.c, int) and self.r >= 1 and self.c >= 1):
            raise MaskError(f"Block(r, c) needs positive integers, got Block({self.r!r}, {self.c!r})")

    def _matrix_shape(self, shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
        rows = shape[0]
        cols = Unstructured().units(shape) // rows
        return rows, cols

    def units(self, shape: tuple[int, ...] | torch.Size) -> int:
        rows, cols = self._matrix_shape(shape)
        return (rows // self.r) * (cols // self.c)

    def check(self, name: str, shape: tuple[int, ...] | torch.Size) -> None:
        rows, cols = self._matrix_shape(shape) if len(shape) >= 2 else (0, 0)
        if len(shape) < 2 or rows % self.r or cols % self.c:
            raise MaskError(
                f"Block({self.r}, {self.c}) tiles {name!r} viewed as a {rows}x{cols} matrix (shape "
                f"{tuple(shape)}), which is not divisible into {self.r}x{self.c} tiles; exclude this layer "
                "or choose a tile size dividing both dimensions"
            )

    def unit_scores(self, scores: Tensor) -> Tensor:
        self.check("scores", scores.shape)
        mat = _as_matrix(scores)
        rows, cols = mat.shape
        tiles = mat.reshape(rows // self.r, self.r, cols // self.c, self.c)
        return tiles.sum(dim=(1, 3)).reshape(-1)

    def topk(self, scores: Tensor, k: int) -> Tensor:
        tile_scores = self.unit_scores(scores)
        keep = Unstructured().topk(tile_scores, k)
        rows, cols = _as_matrix(scores).shape
        tiles = keep.reshape(rows // self.r, 1, cols // self.c, 1).expand(-1, self.r, -1, self.c)
        return _from_matrix(tiles.reshape(rows, cols), scores.shape)


Pattern = Unstructured | NM | Block
