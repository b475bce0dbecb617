"""Trace a model into a channel-level graph for connectivity analysis.

The model is traced with ``torch.fx`` symbolic tracing (no forward pass, no data, the model is not touched).
The graph's nodes are *units*: the input features (or input channels, when a convolution reads the input),
the output units of every Linear layer and the output channels of every convolution. Values flowing between
weight layers are described by the *space* of units they live in:

- a module whose ``weight`` has a known layout (:mod:`sparseflow.layouts`: ``Linear``, HF ``Conv1D``,
  ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``): a new space; output unit ``o`` is linked to input unit ``i`` when
  a weight between them (for a convolution: any kernel tap) is nonzero, read through the layout
  (:func:`sparseflow.analysis.units.unit_pairs`). Grouped convolutions link only within a group. A 2-D weight
  acts on the last axis (like ``Linear``), a convolution's on axis 1.
- activations, normalisation, dropout, pooling, ``Identity``, reductions over spatial axes, ``flatten`` from
  axis 2: same space (channel ``c`` stays channel ``c``). GroupNorm, LayerNorm and BatchNorm mix channels in
  their *statistics* but not in the signal path, so they are treated as channel-preserving; a BatchNorm whose
  affine weight is 0 does cut its channel, which this structural trace does not see.
- ``flatten`` from axis 1 of a feature map ``(N, C, *S)``: channel ``c`` becomes features ``c*k ... c*k+k-1``
  (``k = prod(S)``, the order ``torch.flatten`` uses); ``k`` is read off the Linear layer that consumes it.
- ``a + b`` (a residual connection): a new space joining both operands unit by unit.

Whatever else the trace meets (attention, concatenation, products of two tensors, data-dependent control flow,
a module called twice) raises :class:`SparseflowError` naming the module path, the operation and its source
line (:mod:`sparseflow.analysis.fxtrace`); :func:`sparseflow.connectivity` then falls back to its layer-local
analysis and says so.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from sparseflow.analysis.fxtrace import LayoutTracer, failure, source_line
from sparseflow.analysis.units import unit_counts, unit_pairs
from sparseflow.errors import SparseflowError
from sparseflow.layouts import Layout, layout_of

# Modules and functions that map channel c to channel c (the signal of a channel depends only on that channel).
_KEEP_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_KEEP_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish,
    torch.tanh, torch.sigmoid, F.sigmoid, F.tanh, F.hardtanh, F.softplus, F.dropout, F.dropout1d, F.dropout2d,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}
_KEEP_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "double", "half"}
_ADD = {operator.add, operator.iadd, torch.add}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_TABLES = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class WeightEdge:
    """A weight layer from space ``src`` to space ``dst``; ``name`` is its weight parameter."""

    name: str
    module: nn.Module
    src: int
    dst: int
    layout: Layout = Layout()


@dataclass(frozen=True)
class ExpandEdge:
    """``flatten``: unit ``j`` of ``dst`` (size ``C * k``) is channel ``j // k`` of ``src`` (size ``C``)."""

    src: int
    dst: int
    k: int


@dataclass(frozen=True)
class JoinEdge:
    """A residual add: unit ``c`` of ``dst`` is reached when unit ``c`` of any of ``srcs`` is."""

    srcs: tuple[int, ...]
    dst: int


Edge = WeightEdge | ExpandEdge | JoinEdge


@dataclass
class Graph:
    """Spaces (sizes, index = id, in topological order) and the edges that create them, in creation order.

    Space ``input`` holds the input units; ``output`` the units of the model's output.
    """

    sizes: list[int] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    input: int = -1
    output: int = -1

    def new_space(self, size: int) -> int:
        self.sizes.append(size)
        return len(self.sizes) - 1

    @property
    def weight_edges(self) -> list[WeightEdge]:
        return [e for e in self.edges if isinstance(e, WeightEdge)]


@dataclass(frozen=True)
class _Val:
    """What the tracer knows about an fx value.

    kind: "raw" (the input, before any weight layer: its granularity is fixed by the first layer that reads
    it), "chan" (units of ``space`` on axis 1), "flat" (``space``'s channels flattened with unknown ``k``),
    "const" (a parameter or buffer read directly: no units).
    """

    kind: str
    space: int = -1
    rank: int | None = None


def adjacency(module: nn.Module, structure: Tensor) -> Tensor:
    """Boolean ``(out, in)`` unit adjacency of a weight layer from its nonzero ``structure`` (weight-shaped).

    Convolutions collapse the kernel: channels ``(o, i)`` are linked when any kernel weight is nonzero.
    """
    return unit_pairs(layout_of(module, "weight") or Layout(), structure) > 0


def trace(model: nn.Module, *, input_rank: int | None = None) -> Graph:
    """The channel-level :class:`Graph` of ``model`` (see the module docstring for the rules).

    ``input_rank``: number of axes of an input batch, if known (lets Linear-on-feature-map misuse be caught).
    """
    tracer = LayoutTracer()
    try:
        fx_graph = tracer.trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, ValueError, ... for code it cannot follow
        raise SparseflowError(
            f"cannot trace {type(model).__name__} for connectivity analysis: {failure(model, tracer, e)}. "
            "The unit graph needs a model torch.fx can trace symbolically"
        ) from None
    return _Builder(model, input_rank, tracer).build(fx_graph)


class _Builder:
    def __init__(self, model: nn.Module, input_rank: int | None, tracer: LayoutTracer) -> None:
        self.model = model
        self.tracer = tracer
        self.g = Graph()
        self.vals: dict[fx.Node, _Val] = {}
        self.called: set[str] = set()
        self.input_rank = input_rank
        self.expanded: dict[tuple[int, int], int] = {}

    def build(self, fx_graph: fx.Graph) -> Graph:
        inputs = [n for n in fx_graph.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise SparseflowError(
                f"connectivity analysis supports models with one input tensor; {type(self.model).__name__}.forward "
                f"takes {len(inputs)}: {[n.target for n in inputs]}"
            )
        for node in fx_graph.nodes:
            if node.op == "placeholder":
                self.vals[node] = _Val("raw", rank=self.input_rank)
            elif node.op == "get_attr":
                self.vals[node] = _Val("const")
            elif node.op == "call_module":
                self.vals[node] = self._module(node)
            elif node.op in ("call_function", "call_method"):
                self.vals[node] = self._function(node)
            elif node.op == "output":
                self._output(node)
        if not self.g.weight_edges:
            raise SparseflowError(f"{type(self.model).__name__} has no Linear or Conv layer on its forward path")
        return self.g

    # --- helpers ------------------------------------------------------------------------------------------
    def _refuse(self, node: fx.Node, why: str) -> SparseflowError:
        if node.op == "call_module":
            what = f"module {node.target!r} ({type(self.model.get_submodule(node.target)).__name__})"
        else:
            where = self.tracer.where(node)
            what = f"operation {getattr(node.target, '__name__', node.target)!r}" + (
                f" in module {where!r} ({type(self.model.get_submodule(where)).__name__})" if where else "")
        line = source_line(node)
        return SparseflowError(f"connectivity analysis cannot follow {what} in {type(self.model).__name__}"
                               + (f" at {line}" if line else "") + f": {why}")

    def _tensor_args(self, node: fx.Node) -> list[_Val]:
        return [self.vals[a] for a in node.all_input_nodes if self.vals[a].kind != "const"]

    def _resolve_raw(self, node: fx.Node, size: int) -> int:
        """The input space, created with ``size`` units by the first layer that reads the input."""
        if self.g.input == -1:
            self.g.input = self.g.new_space(size)
        elif self.g.sizes[self.g.input] != size:
            raise self._refuse(node, f"it reads the input as {size} units, another layer as {self.g.sizes[self.g.input]}")
        return self.g.input

    def _space_for(self, node: fx.Node, v: _Val, size: int) -> int:
        """The space of ``size`` units that value ``v`` feeds into a layer expecting ``size`` inputs."""
        if v.kind == "raw":
            return self._resolve_raw(node, size)
        if v.kind == "flat":
            c = self.g.sizes[v.space]
            if size % c:
                raise self._refuse(node, f"it reads {size} features from a flattened map of {c} channels ({size} is not a multiple of {c})")
            key = (v.space, size // c)
            if key not in self.expanded:
                self.expanded[key] = self.g.new_space(size)
                self.g.edges.append(ExpandEdge(v.space, self.expanded[key], size // c))
            return self.expanded[key]
        if self.g.sizes[v.space] != size:
            raise self._refuse(node, f"it expects {size} input units but receives {self.g.sizes[v.space]}")
        return v.space

    # --- node kinds -----------------------------------------------------------------------------------------
    def _module(self, node: fx.Node) -> _Val:
        m = self.model.get_submodule(node.target)
        args = self._tensor_args(node)
        layout = layout_of(m, "weight")
        if layout is not None and not isinstance(m, _TABLES):
            if node.target in self.called:
                raise self._refuse(node, "it is called more than once (shared weights are not supported)")
            self.called.add(node.target)
            if len(args) != 1:
                raise self._refuse(node, f"it reads {len(args)} tensors")
            (v,) = args
            out, inp = unit_counts(layout, m.weight.shape)
            if m.weight.dim() == 2:  # Linear, HF Conv1D: the last axis holds the units
                if v.rank is not None and v.rank != 2:
                    raise self._refuse(node, f"a {type(m).__name__} applied to a tensor with {v.rank} axes mixes its last axis, not its units; flatten first")
                src, rank = self._space_for(node, v, inp), 2
            else:
                if v.kind == "flat":
                    raise self._refuse(node, "a convolution reads a flattened tensor")
                src, rank = self._space_for(node, v, inp), m.weight.dim()
            dst = self.g.new_space(out)
            self.g.edges.append(WeightEdge(f"{node.target}.weight", m, src, dst, layout))
            return _Val("chan", dst, rank)
        if isinstance(m, _KEEP_MODULES):
            return args[0]
        if isinstance(m, nn.Flatten):
            return self._flatten(node, args[0], m.start_dim, m.end_dim)
        if isinstance(m, _TABLES):
            why = "an embedding looks up rows by token id: the input has no units to follow"
        elif any(True for _ in m.parameters(recurse=False)) or isinstance(m, nn.MultiheadAttention):
            why = "it has its own weights that mix units in a way the analysis does not know (e.g. attention, recurrence)"
        else:
            why = "its effect on channels is unknown; supported: Linear, HF Conv1D, (transposed) convolutions, activations, norms, pools, dropout, Flatten, Identity"
        raise self._refuse(node, why)

    def _function(self, node: fx.Node) -> _Val:
        t = node.target
        args = self._tensor_args(node)
        if not args:
            return _Val("const")
        if t in _ADD or (node.op == "call_method" and t in ("add", "add_")):
            if len(args) == 1:
                return args[0]  # tensor + scalar or + parameter: same units
            return self._join(node, args)
        if t in _KEEP_FUNCTIONS or (node.op == "call_method" and t in _KEEP_METHODS):
            if len(args) > 1:
                raise self._refuse(node, "it combines several tensors")
            return args[0]
        if t in (torch.flatten,) or (node.op == "call_method" and t == "flatten"):
            start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
            end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
            return self._flatten(node, args[0], start, end)
        if t in _REDUCE_FUNCTIONS or (node.op == "call_method" and t in _REDUCE_METHODS):
            return self._reduce(node, args[0])
        raise self._refuse(node, "its effect on channels is unknown (supported: +, activations, dropout, pools, "
                                 "flatten, mean/sum over spatial axes); write the model with these, or analyse a mask "
                                 "of a sequential model with sparseflow.experiments.collapse.run.has_path")

    def _join(self, node: fx.Node, args: list[_Val]) -> _Val:
        if any(a.kind == "flat" for a in args):
            raise self._refuse(node, "it adds flattened feature maps")
        known = [a for a in args if a.kind == "chan"]
        if not known:
            return args[0]  # input + input: still the raw input
        size = self.g.sizes[known[0].space]
        srcs = tuple(dict.fromkeys(a.space if a.kind == "chan" else self._resolve_raw(node, size) for a in args))
        for s in srcs:
            if self.g.sizes[s] != size:
                raise self._refuse(node, f"it adds tensors of {size} and {self.g.sizes[s]} channels (broadcasting over channels)")
        dst = self.g.new_space(size)
        self.g.edges.append(JoinEdge(srcs, dst))
        ranks = {a.rank for a in known}
        return _Val("chan", dst, ranks.pop() if len(ranks) == 1 else None)

    def _flatten(self, node: fx.Node, v: _Val, start: int, end: int) -> _Val:
        rank = v.rank
        if rank is None:
            if v.kind == "raw" and start == 1 and end == -1:
                return _Val("raw", rank=2)  # the input flattened to features: the first layer sets their number
            if v.kind != "raw":
                raise self._refuse(node, "the number of axes of its input is unknown")
            return _Val("raw")
        start, end = start % rank, end % rank
        if start == 0:
            raise self._refuse(node, "it flattens the batch axis")
        if v.kind == "raw":
            return _Val("raw", rank=rank - (end - start))
        if start >= 2:
            return _Val(v.kind, v.space, rank - (end - start))
        if end != rank - 1:
            raise self._refuse(node, f"it flattens axes {start}..{end} of {rank}, leaving axes after the features")
        if rank == 2:
            return v
        return _Val("flat", v.space, 2)

    def _reduce(self, node: fx.Node, v: _Val) -> _Val:
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if dims is None:
            raise self._refuse(node, "it reduces over all axes, channels included")
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        if v.rank is None:
            if v.kind == "raw":
                return v
            raise self._refuse(node, "the number of axes of its input is unknown")
        dims = tuple(d % v.rank for d in dims)
        if 0 in dims or 1 in dims:
            raise self._refuse(node, f"it reduces over axis {min(dims)}, which mixes {'examples' if 0 in dims else 'channels'}")
        return _Val(v.kind, v.space, v.rank if keep else v.rank - len(set(dims)))

    def _output(self, node: fx.Node) -> None:
        out = node.args[0]
        if not isinstance(out, fx.Node):
            raise SparseflowError(
                f"connectivity analysis supports models returning one tensor; {type(self.model).__name__} returns "
                f"{type(out).__name__}"
            )
        v = self.vals[out]
        if v.kind in ("raw", "const"):
            raise SparseflowError(f"the output of {type(self.model).__name__} does not pass through any weight layer")
        self.g.output = v.space
        if self.g.input == -1:
            raise SparseflowError(f"no weight layer of {type(self.model).__name__} reads its input")
