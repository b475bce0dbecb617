"""Repair a mask so that every hidden unit has a kept input and a kept output, keeping each layer's count.

Pruning at high sparsity leaves units with no incoming weight (their output is a constant) or no outgoing
weight (their work is wasted); Vysogorets & Kempe (2023) count the weights around them as ineffective. The
repair moves kept weights, never adds any: for every hidden unit with no kept input it turns on the
largest-magnitude incoming weight of that unit (ties broken by a seeded random order; pruned weights
stored as zero all tie, so the choice is then random), and turns off the smallest-magnitude kept weight of
the same layer whose removal leaves its own row and column with another kept weight (so no input feature
or output unit is cut off either); likewise for units with no kept output, in the next layer's columns. Layers are repaired from the input to the output, so a
later fix never undoes an earlier one. When every hidden unit has an input and an output, an input-output
path exists whenever every layer keeps a weight, so the repaired network is not collapsed.

A unit is left unfixed when its layer has no weight to spare (fewer kept weights than units to serve).
Sequential models only (MLPs, ConvNets: Linear/Conv layers, or HF Conv1D, joined by channel-preserving ops and
flatten); models with residual connections are refused. Rows and columns are read through each weight's layout
(:mod:`sparseflow.layouts`), so a Conv1D's ``(in, out)`` weight is repaired by output unit like a Linear's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sparseflow.analysis.connectivity import connectivity, structures
from sparseflow.analysis.trace import ExpandEdge, WeightEdge, trace
from sparseflow.errors import SparseflowError
from sparseflow.mask import Mask, as_mask, check_module


@dataclass(frozen=True)
class LayerRepair:
    """What the repair changed in one layer: units of this layer given an input, units of the layer before given
    an output (through this layer's weights), weights moved, and units it could not fix."""

    name: str
    kept: int
    given_input: int
    given_output: int
    moved: int
    unfixed: int


@dataclass(frozen=True)
class RepairReport:
    layers: tuple[LayerRepair, ...]
    collapsed_before: bool
    collapsed_after: bool

    @property
    def moved(self) -> int:
        return sum(r.moved for r in self.layers)

    @property
    def unfixed(self) -> int:
        return sum(r.unfixed for r in self.layers)

    def to_json(self) -> dict[str, Any]:
        return {"layers": [asdict(r) for r in self.layers], "moved": self.moved, "unfixed": self.unfixed,
                "collapsed_before": self.collapsed_before, "collapsed_after": self.collapsed_after}

    def markdown(self) -> str:
        from sparseflow.training.report import md_table

        body = [[r.name, r.kept, r.given_input, r.given_output, r.moved, r.unfixed] for r in self.layers]
        return md_table(["layer", "kept", "units given an input", "units before given an output", "weights moved",
                         "unfixed"], body) + "\n"


def _chain(model: nn.Module) -> tuple[list[WeightEdge], list[int]]:
    """The weight layers of a sequential model and, per layer, how many input columns one unit before feeds."""
    g = trace(model)
    layers: list[WeightEdge] = []
    group: list[int] = []
    space, k = g.input, 1
    for e in g.edges:
        if isinstance(e, ExpandEdge) and e.src == space:
            space, k = e.dst, e.k
        elif isinstance(e, WeightEdge) and e.src == space:
            if e.layout.groups != 1:
                raise SparseflowError(f"repair does not support grouped convolutions ({e.name!r} has groups={e.layout.groups})")
            layers.append(e)
            group.append(k)
            space, k = e.dst, 1
        else:
            raise SparseflowError(
                f"repair supports sequential models only; {type(model).__name__} has a residual connection or a "
                "branch (a layer reads a tensor other than the previous layer's output)"
            )
    if space != g.output:
        raise SparseflowError(f"repair supports sequential models only; the output of {type(model).__name__} is not its last layer's")
    return layers, group


class _Layer:
    """One layer's kept structure, flattened to (out, in, K) with per-row and per-input-unit counts."""

    def __init__(self, struct: Tensor, weight: Tensor, group: int, gen: torch.Generator) -> None:
        self.shape = struct.shape
        self.out, self.inp = struct.shape[0], struct.shape[1]
        self.K = struct[0, 0].numel()
        self.kept = struct.reshape(-1).clone()
        self.score = weight.detach().abs().reshape(-1).float().cpu()
        self.group = group
        self.row_n = self.kept.view(self.out, -1).sum(1)
        self.col_n = self.kept.view(self.out, self.inp, self.K).sum((0, 2)).view(-1, group).sum(1)  # per unit before
        # Kept weights from the smallest magnitude up (random order among equals): removal candidates.
        perm = torch.randperm(self.kept.numel(), generator=gen)
        idx = perm[self.kept[perm]]
        self.order = idx[torch.argsort(self.score[idx], stable=True)].tolist()
        self.pos = 0
        self.gen = gen
        self.added: set[int] = set()

    def unit_of(self, f: int) -> tuple[int, int]:
        return f // (self.inp * self.K), (f // self.K) % self.inp // self.group

    def turn_on(self, candidates: Tensor) -> bool:
        """Turn on the best of ``candidates`` (flat indices) and off the weakest removable kept weight."""
        s = self.score[candidates]
        best = candidates[s == s.max()]
        on = int(best[torch.randint(len(best), (1,), generator=self.gen)])
        r, c = self.unit_of(on)
        self.kept[on] = True
        self.row_n[r] += 1
        self.col_n[c] += 1
        off = self._weakest_removable(on)
        if off is not None:
            r2, c2 = self.unit_of(off)
            self.kept[off] = False
            self.row_n[r2] -= 1
            self.col_n[c2] -= 1
            self.added.add(on)
            return True
        self.kept[on] = False  # nothing to spare: undo, the count must stay
        self.row_n[r] -= 1
        self.col_n[c] -= 1
        return False

    def _weakest_removable(self, on: int) -> int | None:
        # Walk the ascending order once (cheap, amortised over all fixes); an entry passed over because its row
        # or column had a single weight may have become removable since, so when the walk is exhausted fall
        # back to a full scan. This finds a removable weight whenever one exists.
        while self.pos < len(self.order):
            f = self.order[self.pos]
            self.pos += 1
            r, c = self.unit_of(f)
            if self.kept[f] and self.row_n[r] >= 2 and self.col_n[c] >= 2:
                return f
        shape = (self.out, self.inp // self.group, self.group, self.K)
        ok = self.kept.view(shape) & (self.row_n >= 2)[:, None, None, None] & (self.col_n >= 2)[None, :, None, None]
        ok = ok.reshape(-1).clone()
        ok[on] = False
        ok[list(self.added)] = False
        idx = torch.nonzero(ok).flatten()
        if not len(idx):
            return None
        return int(idx[torch.argmin(self.score[idx])])

    def row(self, r: int) -> Tensor:
        n = self.inp * self.K
        return torch.arange(r * n, (r + 1) * n)

    def column_group(self, unit: int) -> Tensor:
        cols = torch.arange(unit * self.group, (unit + 1) * self.group)  # input columns fed by the unit before
        base = (torch.arange(self.out)[:, None] * self.inp + cols[None, :]) * self.K  # (out, group)
        return (base[..., None] + torch.arange(self.K)).reshape(-1)


@torch.no_grad()
def repair_mask(model: nn.Module, mask: Mask | None = None, *, seed: int = 0) -> tuple[Mask, RepairReport]:
    """A repaired copy of the mask of ``model`` (``mask``, or its nonzero weights) and what was changed.

    The returned Mask has an entry for every Linear/Conv weight of the model, each with the same number of kept
    weights as before. Neither ``model`` nor ``mask`` is modified; see :func:`apply_repair_`.
    """
    check_module(model, "repair_mask()")
    mask = as_mask(mask, "repair_mask()")
    layers, group = _chain(model)
    struct = structures(model, trace(model), mask)
    before = connectivity(model, mask)
    gen = torch.Generator().manual_seed(seed)
    # Each layer is repaired in its (out, in, *k) view (HF Conv1D stores (in, out)) and mapped back after.
    state = [_Layer(e.layout.canonical(struct[e.name]), e.layout.canonical(e.module.weight), k, gen)
             for e, k in zip(layers, group)]
    fixed_in = [0] * len(state)
    fixed_out = [0] * len(state)
    unfixed = [0] * len(state)
    for i in range(len(state) - 1):  # hidden layers: the outputs of every layer but the last
        cur, nxt = state[i], state[i + 1]
        for r in torch.nonzero(cur.row_n == 0).flatten().tolist():
            ok = cur.turn_on(cur.row(r))
            fixed_in[i] += ok
            unfixed[i] += not ok
        for u in torch.nonzero(nxt.col_n == 0).flatten().tolist():
            ok = nxt.turn_on(nxt.column_group(u))
            fixed_out[i + 1] += ok
            unfixed[i] += not ok
    new = Mask({e.name: e.layout.restore(st.kept.view(st.shape).clone()) for e, st in zip(layers, state)})
    after = connectivity(model, new)
    rows = tuple(LayerRepair(e.name, int(st.kept.sum()), fixed_in[i], fixed_out[i], len(st.added), unfixed[i])
                 for i, (e, st) in enumerate(zip(layers, state)))
    return new, RepairReport(rows, before.collapsed, after.collapsed)


@torch.no_grad()
def apply_repair_(model: nn.Module, mask: Mask, *, seed: int = 0) -> None:
    """Make ``model``'s weights follow ``mask`` in place: zero weights outside it, and give weights newly inside it
    (zero until now) the median magnitude of the layer's nonzero weights with a seeded random sign."""
    mask.check(model)
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    for name, m in mask.items():
        p = params[name]
        m = m.to(p.device)
        nonzero = p[p != 0]
        scale = nonzero.abs().median() if nonzero.numel() else torch.tensor(p.numel() ** -0.5)
        new = m & (p == 0)
        signs = torch.randint(0, 2, (int(new.sum()),), generator=gen).to(p.device, p.dtype) * 2 - 1
        p.mul_(m.to(p.dtype))
        p[new] = signs * scale.to(p.dtype)
