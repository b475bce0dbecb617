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

Two analyses, and the result says which was done (``Connectivity.analysis``):

- ``"graph"``: the unit graph above, for models ``torch.fx`` can trace into Linear/Conv layers joined by
  channel-preserving ops, flatten and residual adds (MLPs, ConvNets, ResNets).
- ``"layer-local"``: every weight with a known layout (:mod:`sparseflow.layouts`), on its own, per chunk where
  the layout has chunks (``in_proj_weight``: q, k, v; an LSTM's gates): output units with no kept incoming
  weight (``no_incoming``) and input units with no kept outgoing weight (``unused_inputs``). It needs no trace,
  so it covers attention, recurrent and Hugging Face models; the path quantities (``no_outgoing``,
  ``unreachable``, ``dead_end``, ``constant``, ``effective``, the whole-network counts, ``collapsed``) need the
  graph and are None. ``analysis="auto"`` (the default) uses the graph when the model can be traced and falls
  back to layer-local otherwise, with ``reason`` naming the construct that stopped the trace.

Cost: one pass over each weight tensor to read its nonzero structure, then boolean vector operations on the
``(out, in)`` unit adjacency: linear in the number of weights, with no per-path work.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sparseflow.analysis.trace import ExpandEdge, Graph, JoinEdge, WeightEdge, adjacency, trace
from sparseflow.analysis.units import WeightParam, chunk_pairs, unit_pairs, weight_params
from sparseflow.errors import MaskError, SparseflowError
from sparseflow.mask import Mask, as_mask, check_module
from sparseflow.methods.sparse_linear import dense_equivalent


@dataclass(frozen=True)
class LayerConnectivity:
    """One weight layer (one chunk of it in a layer-local analysis: ``chunk`` names it, e.g. "q").
    Unit counts are about the layer's *output* units (channels for a convolution) unless named otherwise.

    no_incoming: units with no nonzero incoming weight in this layer (``no_incoming_units``: their indices).
    unused_inputs: input units no nonzero weight of this layer reads (``unused_input_units``: their indices).
    no_outgoing: units whose value no later nonzero weight reads (0 for the output layer).
    unreachable: units no input reaches; dead_end: units that reach no output.
    constant: unreachable units with a nonzero bias (they emit a constant).
    effective: nonzero weights on some input-output path.
    The last five need the unit graph: None in a layer-local analysis.
    """

    name: str
    in_units: int
    out_units: int
    weights: int
    nonzeros: int
    no_incoming: int
    no_outgoing: int | None
    unreachable: int | None
    dead_end: int | None
    constant: int | None
    effective: int | None
    unused_inputs: int = 0
    chunk: str = ""
    no_incoming_units: tuple[int, ...] = ()
    unused_input_units: tuple[int, ...] = ()


@dataclass(frozen=True)
class Connectivity:
    """Connectivity of a whole network; ``layers`` in forward order (module order when layer-local).

    ``analysis`` is "graph" or "layer-local" (see the module docstring); ``reason`` says why the graph could not
    be used. In a layer-local analysis the whole-network path counts are None.
    """

    layers: tuple[LayerConnectivity, ...]
    input_units: int | None
    inputs_reaching_output: int | None
    output_units: int | None
    outputs_reached: int | None
    weights: int
    nonzeros: int
    effective: int | None
    analysis: str = "graph"
    reason: str = ""

    @property
    def input_fraction(self) -> float | None:
        """Fraction of input features (or channels) that reach some output."""
        if self.inputs_reaching_output is None or not self.input_units:
            return None
        return self.inputs_reaching_output / self.input_units

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.weights

    @property
    def effective_sparsity(self) -> float | None:
        """Fraction of weights on no input-output path (Vysogorets & Kempe 2023)."""
        return None if self.effective is None else 1.0 - self.effective / self.weights

    @property
    def collapsed(self) -> bool | None:
        """No input reaches any output (layer collapse, Tanaka et al. 2020); None when layer-local."""
        return None if self.outputs_reached is None else self.outputs_reached == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": [{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(r).items()} for r in self.layers],
            "input_units": self.input_units, "inputs_reaching_output": self.inputs_reaching_output,
            "input_fraction": self.input_fraction, "output_units": self.output_units,
            "outputs_reached": self.outputs_reached, "weights": self.weights, "nonzeros": self.nonzeros,
            "effective": self.effective, "sparsity": self.sparsity, "effective_sparsity": self.effective_sparsity,
            "collapsed": self.collapsed, "analysis": self.analysis, "reason": self.reason,
        }

    def markdown(self) -> str:
        from sparseflow.training.report import md_table

        header = ["layer", "in", "out", "nonzeros", "no incoming", "unused inputs", "no outgoing", "unreachable",
                  "dead end", "constant", "effective"]
        na = lambda v: "n/a" if v is None else v  # noqa: E731
        body = [[r.name + (f" [{r.chunk}]" if r.chunk else ""), r.in_units, r.out_units, r.nonzeros, r.no_incoming,
                 r.unused_inputs, *(na(v) for v in (r.no_outgoing, r.unreachable, r.dead_end, r.constant, r.effective))]
                for r in self.layers]
        return md_table(header, body) + "\n\n" + self.summary() + "\n"  # (a blank line ends the table)

    def summary(self) -> str:
        if self.analysis != "graph":
            dead = sum(r.no_incoming for r in self.layers)
            unused = sum(r.unused_inputs for r in self.layers)
            return (f"layer-local analysis: {dead} units with no kept incoming weight, {unused} input "
                    f"units with no kept outgoing weight; sparsity {self.sparsity:.4f}; paths, effective sparsity and "
                    f"collapse not analysed. Why not the unit graph: {self.reason}")
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


Analysis = Literal["auto", "graph", "layer-local"]


@torch.no_grad()
def connectivity(model: nn.Module, mask: Mask | None = None, *, input_shape: tuple[int, ...] | None = None,
                 analysis: Analysis = "auto") -> Connectivity:
    """Dead units, reachable inputs, effective sparsity and collapse of ``model`` (see the module docstring).

    The nonzero structure comes from the weights (stored as zeros outside the mask) or, for the parameters it
    names, from ``mask``. ``input_shape`` (one example, no batch axis) is optional and only sharpens the graph
    checks. ``analysis``: "graph" raises SparseflowError for a model it cannot trace (naming the module, the
    operation and its source line); "layer-local" skips the graph; "auto" tries the graph and falls back to
    layer-local, recording why in ``reason``.
    """
    check_module(model, "connectivity()")
    model = dense_equivalent(model)  # layers in sparse execution are read as the nn.Linear they stand for
    mask = as_mask(mask, "connectivity()")
    if mask is not None and len(mask) == 0:
        raise MaskError("the mask is empty (no tensors); pass mask=None to read the structure from the weights")
    if analysis not in ("auto", "graph", "layer-local"):
        raise SparseflowError(f"analysis must be 'auto', 'graph' or 'layer-local', got {analysis!r}")
    if analysis == "layer-local":
        return local_connectivity(model, mask, reason="layer-local analysis requested")
    try:
        graph = trace(model, input_rank=None if input_shape is None else len(input_shape) + 1)
    except SparseflowError as e:
        if analysis == "graph":
            raise
        return local_connectivity(model, mask, reason=str(e))
    return _graph_connectivity(model, graph, mask)


def _graph_connectivity(model: nn.Module, graph: Graph, mask: Mask | None) -> Connectivity:
    struct = structures(model, graph, mask)
    adj = {e.name: adjacency(e.module, struct[e.name]) for e in graph.weight_edges}  # (out, in) bool
    fwd, has_out, bwd = _propagate(graph, adj)
    rows = []
    for e in graph.weight_edges:
        a = adj[e.name]
        s = struct[e.name]
        per_pair = unit_pairs(e.layout, s)  # kept weights per unit pair (a convolution: kernel taps), (out, in)
        # Effective: kept weights from a reached input unit (row sums) into a unit that reaches an output.
        effective = int((per_pair * fwd[e.src]).sum(1)[bwd[e.dst]].sum())
        bias = getattr(e.module, "bias", None)
        constant = 0 if bias is None else int((~fwd[e.dst] & (bias.detach().cpu() != 0)).sum())
        rows.append(LayerConnectivity(
            name=e.name, in_units=a.shape[1], out_units=a.shape[0], weights=s.numel(), nonzeros=int(s.sum()),
            no_incoming=int((~a.any(1)).sum()), no_outgoing=int((~has_out[e.dst]).sum()),
            unreachable=int((~fwd[e.dst]).sum()), dead_end=int((~bwd[e.dst]).sum()), constant=constant,
            effective=effective, unused_inputs=int((~a.any(0)).sum()),
            no_incoming_units=_where(~a.any(1)), unused_input_units=_where(~a.any(0)),
        ))
    return Connectivity(
        layers=tuple(rows), input_units=graph.sizes[graph.input],
        inputs_reaching_output=int(bwd[graph.input].sum()), output_units=graph.sizes[graph.output],
        outputs_reached=int(fwd[graph.output].sum()), weights=sum(r.weights for r in rows),
        nonzeros=sum(r.nonzeros for r in rows), effective=sum(r.effective for r in rows),
    )


def _where(flags: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(flags).flatten())


def local_connectivity(model: nn.Module, mask: Mask | None = None, *, reason: str = "") -> Connectivity:
    """The layer-local analysis (module docstring): one row per weight with a known layout (per chunk), from the
    mask where it names the weight, else from its nonzero entries. Embeddings are analysed when the mask names them."""
    if mask is not None:
        mask.check(model)
    named = set(mask) if mask is not None else set()
    params = [w for w in weight_params(model, tables=True)
              if w.name in named or not isinstance(w.module, (nn.Embedding, nn.EmbeddingBag))]
    stray = sorted(named - {w.name for w in params})
    if stray:
        raise MaskError(f"mask entries {stray} are not weights with a known layout (sparseflow.layouts); register "
                        "the layout of their module with sparseflow.register_layout")
    if not params:
        raise SparseflowError(f"{type(model).__name__} has no weight with a known layout (Linear, Conv, HF Conv1D, "
                              "attention, recurrent): nothing to analyse")
    rows = [row for w in params for row in _local_rows(w, mask)]
    return Connectivity(layers=tuple(rows), input_units=None, inputs_reaching_output=None, output_units=None,
                        outputs_reached=None, weights=sum(r.weights for r in rows),
                        nonzeros=sum(r.nonzeros for r in rows), effective=None, analysis="layer-local",
                        reason=reason)


def _local_rows(w: WeightParam, mask: Mask | None) -> list[LayerConnectivity]:
    s = mask[w.name].cpu() if mask is not None and w.name in mask else w.tensor.detach().cpu() != 0
    pairs = unit_pairs(w.layout, s)  # (out, in) kept weights per unit pair
    per_chunk = s.numel() // max(1, len(w.layout.chunks))
    rows = []
    for chunk, p in chunk_pairs(w.layout, pairs):
        dead, unused = p.sum(1) == 0, p.sum(0) == 0
        rows.append(LayerConnectivity(
            name=w.use, in_units=p.shape[1], out_units=p.shape[0], weights=per_chunk, nonzeros=int(p.sum()),
            no_incoming=int(dead.sum()), no_outgoing=None, unreachable=None, dead_end=None, constant=None,
            effective=None, unused_inputs=int(unused.sum()), chunk=chunk, no_incoming_units=_where(dead),
            unused_input_units=_where(unused),
        ))
    return rows


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
