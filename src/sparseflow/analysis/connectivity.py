"""Connectivity of a sparse network: dead units, reachable inputs, effective sparsity, layer collapse.

A weight is *effective* when it lies on some path from an input to an output through nonzero weights;
the *effective sparsity* is the fraction of weights that are not (Vysogorets & Kempe 2023, "Connectivity
Matters: Neural Network Pruning Through the Lens of Effective Sparsity", JMLR 24). A network is *collapsed*
when no path is left at all (Tanaka et al. 2020). Both are computed on the unit graph of
:mod:`sparseflow.analysis.trace`: units of Linear layers, channels of convolutions (a kernel weight is
effective when its channel pair is on a path; spatial positions are not tracked, so for convolutions the
effective count is an upper bound, as in Vysogorets & Kempe's channel-level treatment).

Biases do not create paths: a unit that no input reaches but whose bias is nonzero emits a constant, which
carries no information about the input; it counts as unreachable and is reported in ``constant``.

Cost: one pass over each weight tensor to read its nonzero structure, then boolean vector operations on the
``(out, in)`` unit adjacency: linear in the number of weights, with no per-path work.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sparseflow.analysis.trace import ExpandEdge, Graph, JoinEdge, WeightEdge, adjacency, trace
from sparseflow.errors import MaskError
from sparseflow.mask import Mask


@dataclass(frozen=True)
class LayerConnectivity:
    """One weight layer. Unit counts are about the layer's *output* units (channels for a convolution).

    no_incoming: units with no nonzero incoming weight in this layer.
    no_outgoing: units whose value no later nonzero weight reads (0 for the output layer).
    unreachable: units no input reaches; dead_end: units that reach no output.
    constant: unreachable units with a nonzero bias (they emit a constant).
    effective: nonzero weights on some input-output path.
    """

    name: str
    in_units: int
    out_units: int
    weights: int
    nonzeros: int
    no_incoming: int
    no_outgoing: int
    unreachable: int
    dead_end: int
    constant: int
    effective: int


@dataclass(frozen=True)
class Connectivity:
    """Connectivity of a whole network; ``layers`` in forward order."""

    layers: tuple[LayerConnectivity, ...]
    input_units: int
    inputs_reaching_output: int
    output_units: int
    outputs_reached: int
    weights: int
    nonzeros: int
    effective: int

    @property
    def input_fraction(self) -> float:
        """Fraction of input features (or channels) that reach some output."""
        return self.inputs_reaching_output / self.input_units

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.weights

    @property
    def effective_sparsity(self) -> float:
        """Fraction of weights on no input-output path (Vysogorets & Kempe 2023)."""
        return 1.0 - self.effective / self.weights

    @property
    def collapsed(self) -> bool:
        """No input reaches any output (layer collapse, Tanaka et al. 2020)."""
        return self.outputs_reached == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": [asdict(r) for r in self.layers],
            "input_units": self.input_units, "inputs_reaching_output": self.inputs_reaching_output,
            "input_fraction": self.input_fraction, "output_units": self.output_units,
            "outputs_reached": self.outputs_reached, "weights": self.weights, "nonzeros": self.nonzeros,
            "effective": self.effective, "sparsity": self.sparsity, "effective_sparsity": self.effective_sparsity,
            "collapsed": self.collapsed,
        }

    def markdown(self) -> str:
        from sparseflow.training.report import md_table

        header = ["layer", "in", "out", "nonzeros", "no incoming", "no outgoing", "unreachable", "dead end",
                  "constant", "effective"]
        body = [[r.name, r.in_units, r.out_units, r.nonzeros, r.no_incoming, r.no_outgoing, r.unreachable,
                 r.dead_end, r.constant, r.effective] for r in self.layers]
        return md_table(header, body) + "\n" + self.summary() + "\n"

    def summary(self) -> str:
        return (
            f"inputs reaching an output: {self.inputs_reaching_output} of {self.input_units} "
            f"({self.input_fraction:.1%}); sparsity {self.sparsity:.4f}, effective sparsity "
            f"{self.effective_sparsity:.4f}; " + ("COLLAPSED: no input-output path" if self.collapsed else "not collapsed")
        )

    def __str__(self) -> str:
        return json.dumps(self.to_json(), indent=1)


def structures(model: nn.Module, graph: Graph, mask: Mask | None) -> dict[str, Tensor]:
    """Weight name -> boolean nonzero structure: the mask where it has an entry, else ``weight != 0``."""
    if mask is not None:
        mask.check(model)
        traced = {e.name for e in graph.weight_edges}
        stray = [n for n in mask if n not in traced]
        if stray:
            raise MaskError(f"mask entries {stray} are not weights of Linear/Conv layers on the forward path; "
                            f"traced layers: {sorted(traced)}")
    out = {}
    for e in graph.weight_edges:
        out[e.name] = mask[e.name].cpu() if mask is not None and e.name in mask else e.module.weight.detach().cpu() != 0
    return out


@torch.no_grad()
def connectivity(model: nn.Module, mask: Mask | None = None, *, input_shape: tuple[int, ...] | None = None) -> Connectivity:
    """Dead units, reachable inputs, effective sparsity and collapse of ``model`` (see the module docstring).

    The nonzero structure comes from the weights (stored as zeros outside the mask) or, for the parameters it
    names, from ``mask``. ``input_shape`` (one example, no batch axis) is optional and only sharpens the checks.
    Raises SparseflowError for a model it cannot trace, naming the module and why.
    """
    if mask is not None and len(mask) == 0:
        raise MaskError("the mask is empty (no tensors); pass mask=None to read the structure from the weights")
    graph = trace(model, input_rank=None if input_shape is None else len(input_shape) + 1)
    struct = structures(model, graph, mask)
    adj = {e.name: adjacency(e.module, struct[e.name]) for e in graph.weight_edges}  # (out, in) bool
    fwd, has_out, bwd = _propagate(graph, adj)
    rows = []
    for e in graph.weight_edges:
        a = adj[e.name]
        s = struct[e.name]
        # Kept weights per unit pair (a convolution: kernel weights per channel pair), (out, in).
        per_pair = s if s.dim() == 2 else s.reshape(s.shape[0], s.shape[1], -1).sum(-1)
        if s.dim() > 2 and e.module.groups > 1:
            per_pair = _grouped(per_pair, e.module.groups)
        # Effective: kept weights from a reached input unit (row sums) into a unit that reaches an output.
        from_reached = (per_pair & fwd[e.src]) if per_pair.dtype == torch.bool else per_pair * fwd[e.src]
        effective = int(from_reached.sum(1)[bwd[e.dst]].sum())
        bias = getattr(e.module, "bias", None)
        constant = 0 if bias is None else int((~fwd[e.dst] & (bias.detach().cpu() != 0)).sum())
        rows.append(LayerConnectivity(
            name=e.name, in_units=a.shape[1], out_units=a.shape[0], weights=s.numel(), nonzeros=int(s.sum()),
            no_incoming=int((~a.any(1)).sum()), no_outgoing=int((~has_out[e.dst]).sum()),
            unreachable=int((~fwd[e.dst]).sum()), dead_end=int((~bwd[e.dst]).sum()), constant=constant,
            effective=effective,
        ))
    return Connectivity(
        layers=tuple(rows), input_units=graph.sizes[graph.input],
        inputs_reaching_output=int(bwd[graph.input].sum()), output_units=graph.sizes[graph.output],
        outputs_reached=int(fwd[graph.output].sum()), weights=sum(r.weights for r in rows),
        nonzeros=sum(r.nonzeros for r in rows), effective=sum(r.effective for r in rows),
    )


def _grouped(pairs: Tensor, groups: int) -> Tensor:
    # (out, in / groups) counts -> (out, in) block-diagonal counts, as trace.adjacency does for booleans.
    out_c, in_g = pairs.shape
    full = torch.zeros(out_c, in_g * groups, dtype=pairs.dtype)
    per = out_c // groups
    for g in range(groups):
        full[g * per:(g + 1) * per, g * in_g:(g + 1) * in_g] = pairs[g * per:(g + 1) * per]
    return full


def _propagate(graph: Graph, adj: dict[str, Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per space: reached from the inputs, read by a later weight (or output), reaching an output."""
    fwd = [torch.zeros(s, dtype=torch.bool) for s in graph.sizes]
    fwd[graph.input][:] = True
    for e in graph.edges:  # creation order is topological
        if isinstance(e, WeightEdge):
            fwd[e.dst] = (adj[e.name] & fwd[e.src]).any(1)  # (out, in) & (in,) -> (out,)
        elif isinstance(e, ExpandEdge):
            fwd[e.dst] = fwd[e.src].repeat_interleave(e.k)
        elif isinstance(e, JoinEdge):
            fwd[e.dst] = torch.stack([fwd[s] for s in e.srcs]).any(0)
    has_out = [torch.zeros(s, dtype=torch.bool) for s in graph.sizes]
    bwd = [torch.zeros(s, dtype=torch.bool) for s in graph.sizes]
    has_out[graph.output][:] = True
    bwd[graph.output][:] = True
    # Reverse creation order: every edge leaving a space was created after the edge that created it.
    for e in reversed(graph.edges):
        if isinstance(e, WeightEdge):
            a = adj[e.name]
            has_out[e.src] |= a.any(0)
            bwd[e.src] |= (a & bwd[e.dst][:, None]).any(0)
        elif isinstance(e, ExpandEdge):
            has_out[e.src] |= has_out[e.dst].reshape(-1, e.k).any(1)
            bwd[e.src] |= bwd[e.dst].reshape(-1, e.k).any(1)
        elif isinstance(e, JoinEdge):
            for s in e.srcs:
                has_out[s] |= has_out[e.dst]
                bwd[s] |= bwd[e.dst]
    return fwd, has_out, bwd
