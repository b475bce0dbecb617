"""Mean-field maps of activations, and finding the activation between two weight layers by tracing.

Mean-field signal propagation (Poole et al. 2016, "Exponential expressivity in deep neural networks through
transient chaos"; Schoenholz et al. 2017, "Deep Information Propagation"): a weight layer l maps the second
moment q of the previous pre-activations h ~ N(0, q) to

    q_l = R_l · E_{z~N(0, q)}[φ(z)²] + σ_b²,      R_l = mean over output units of Σ_j W_ij²,

where R_l = s·σ_w² for i.i.d. weights of variance σ_w²/fan_in kept with density s. The per-layer gain
χ_l = q_l / q is R_l · g_φ(q) (+ σ_b²/q) with g_φ(q) = E[φ(z)²]/q: 1/2 for ReLU (He et al. 2015), 1 for
the identity, (1 + a²)/2 for LeakyReLU(a); for tanh, GELU, SiLU, sigmoid, ELU, softplus it depends on q and
is computed by Gauss–Hermite quadrature (``numpy.polynomial.hermite_e.hermegauss``).

:func:`trace_inputs` uses ``torch.fx`` to find, for every weight layer (a module whose ``weight`` has a known
layout, :mod:`sparseflow.layouts`: Linear, HF Conv1D, convolutions), the weight layer whose output it
reads and the one elementwise activation in between. Anything else on that path (normalisation, pooling, a
residual add, an unknown function) makes the prediction unavailable, with a note naming it: no guessing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseflow.analysis.fxtrace import LayoutTracer, failure
from sparseflow.layouts import layout_of

INPUT = "input"  # the predecessor name of a layer that reads the network input directly

# Elementwise activations with a mean-field map; evaluated through torch itself on quadrature nodes, so
# their arguments (negative_slope, approximate=...) are honoured.
_ACT_FUNCTIONS: dict[Callable[..., Tensor], str] = {
    F.relu: "relu", torch.relu: "relu", F.leaky_relu: "leaky_relu", torch.tanh: "tanh", F.tanh: "tanh",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.gelu: "gelu", F.silu: "silu", F.elu: "elu",
    F.softplus: "softplus",
}
_ACT_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
_ACT_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus,
)
# Operations that leave the values of a tensor unchanged (Dropout too: signal runs in eval mode).
_PASS_FUNCTIONS = {torch.flatten, torch.reshape}
_PASS_METHODS = {"flatten", "view", "reshape", "contiguous"}
_PASS_MODULES: tuple[type[nn.Module], ...] = (nn.Identity, nn.Flatten, nn.Dropout)
_TABLES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
# The mean-field map q_l = R_l·E[φ²] + σ_b² holds when every output unit sums over all its fan-in on every
# input: Linear-like weights (2-D: Linear, HF Conv1D) and convolutions. A transposed convolution with stride > 1
# feeds each output position from a subset of its taps, so it gets measurements only.
_PREDICTABLE: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_weight_module(m: nn.Module) -> bool:
    """A module whose ``weight`` is a map between units with a known layout (not an embedding table)."""
    return layout_of(m, "weight") is not None and not isinstance(m, _TABLES)


def predictable(m: nn.Module) -> bool:
    """Whether the mean-field map applies to weight module ``m`` (see ``_PREDICTABLE``)."""
    return is_weight_module(m) and (m.weight.dim() == 2 or isinstance(m, _PREDICTABLE))


@lru_cache(maxsize=8)
def _hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.hermite_e.hermegauss(n)  # ∫ f(x) exp(-x²/2) dx ≈ Σ w_i f(x_i); Σ w_i = sqrt(2π)
    return x, w / math.sqrt(2 * math.pi)


def gaussian_second_moment(phi: Callable[[Tensor], Tensor], q: float, n: int = 301) -> float:
    """E_{z~N(0, q)}[φ(z)²] by n-point Gauss–Hermite quadrature (probabilists' weights).

    With odd n the nodes are symmetric and include 0, so for ReLU the result is exactly q/2. Smooth
    saturating maps converge more slowly as q grows (tanh: relative error 2e-9 at q = 4, 1e-3 at q = 25 with
    301 nodes), since at large q they approach a step.
    """
    x, w = _hermite(n)
    z = torch.from_numpy(x * math.sqrt(q))  # float64 nodes, (n,)
    with torch.no_grad():
        v = phi(z).double().numpy()
    return float(np.sum(w * v * v))


def gain(phi: Callable[[Tensor], Tensor], q: float, n: int = 301) -> float:
    """g_φ(q) = E_{z~N(0, q)}[φ(z)²] / q, the factor an activation contributes to χ (1/2 for ReLU)."""
    if not q > 0:
        raise ValueError(f"q must be positive, got {q}")
    return gaussian_second_moment(phi, q, n) / q


@dataclass(frozen=True)
class Activation:
    """An elementwise activation found by tracing: its name and a float64-safe callable."""

    name: str
    fn: Callable[[Tensor], Tensor]

    def gain(self, q: float) -> float:
        if self.name == "relu":
            return 0.5  # closed form: half the Gaussian mass is kept
        if self.name == "identity":
            return 1.0
        return gain(self.fn, q)


IDENTITY = Activation("identity", lambda t: t)


@dataclass(frozen=True)
class Route:
    """How one weight layer gets its input: from weight layer ``source`` (or :data:`INPUT`, or None when
    unknown) through ``activation`` (None when unavailable); ``note`` says why a prediction is impossible."""

    source: str | None
    activation: Activation | None
    note: str = ""


def _activation(node: torch.fx.Node, gm: torch.fx.GraphModule) -> Activation | None:
    """The activation ``node`` applies, or None when it is not one with a known mean-field map."""
    extra = list(node.args[1:]) + list(node.kwargs.values())
    if any(isinstance(a, torch.fx.Node) for a in extra):
        return None  # a parameter computed in the graph: not a fixed elementwise map
    if node.op == "call_function" and node.target in _ACT_FUNCTIONS:
        args, kwargs, fn = node.args[1:], dict(node.kwargs), node.target
        kwargs.pop("inplace", None)
        return Activation(_ACT_FUNCTIONS[fn], lambda t: fn(t, *args, **kwargs))
    if node.op == "call_method" and node.target in _ACT_METHODS and not extra:
        name = str(node.target)
        return Activation(_ACT_METHODS[name], lambda t: getattr(t, name)())
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, _ACT_MODULES):
            return Activation(type(mod).__name__.lower().replace("leakyrelu", "leaky_relu"), mod)
    return None


def _passes(node: torch.fx.Node, gm: torch.fx.GraphModule) -> bool:
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    if node.op == "call_method":
        return node.target in _PASS_METHODS
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), _PASS_MODULES)
    return False


def _describe(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"{type(gm.get_submodule(str(node.target))).__name__} {str(node.target)!r}"
    name = getattr(node.target, "__name__", str(node.target))
    if name in ("add", "iadd", "cat"):
        return f"{name!r} (a merge of branches, e.g. a residual connection)"
    return f"{name!r}"


def trace_inputs(model: nn.Module) -> tuple[dict[str, Route], str]:
    """Route of every weight layer (module name -> :class:`Route`) and a note ('' when tracing worked).

    Walks back from each weight layer's input through value-preserving ops (flatten, view, Identity,
    Dropout) and at most one known activation to the previous weight layer or the network input.
    """
    tracer = LayoutTracer()
    try:
        gm = torch.fx.GraphModule(model, tracer.trace(model))
    except Exception as e:  # any failure of tracing (data-dependent control flow, ...): measured values only
        return {}, f"torch.fx could not trace {failure(model, tracer, e)}: no predictions, measured values only"
    routes: dict[str, Route] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not is_weight_module(gm.get_submodule(str(node.target))):
            continue
        routes.setdefault(str(node.target), _walk(node, gm))  # a module called twice keeps its first route
    return routes, ""


def _walk(layer: torch.fx.Node, gm: torch.fx.GraphModule) -> Route:
    act: Activation | None = None
    node = layer.args[0] if layer.args else None
    while isinstance(node, torch.fx.Node):
        if node.op == "placeholder":
            return Route(INPUT, act or IDENTITY)
        if node.op == "call_module" and is_weight_module(gm.get_submodule(str(node.target))):
            return Route(str(node.target), act or IDENTITY)
        if _passes(node, gm):
            node = node.args[0] if node.args else None
            continue
        found = _activation(node, gm)
        if found is not None and act is None:
            act, node = found, node.args[0] if node.args else None
            continue
        what = "a second activation " + found.name if found is not None else _describe(node, gm)
        return Route(None, None, f"input passes through {what}: no mean-field map, measured values only")
    return Route(None, None, "input could not be followed back to a layer: measured values only")
