"""Which execution trains a masked Linear layer faster on this machine: masked dense or sparse, by measurement.

Two paths train the same layer under the same mask to the same weights:

- **dense**: an ``nn.Linear`` under :class:`~sparseflow.FixedMask`, the way every sparsity method trains today:
  dense forward and backward, the gradient multiplied by the float mask as backward accumulates it, the
  optimizer step over the whole matrix (and, for optimizers that would move pruned weights, the mask re-applied
  to the weights and the optimizer state);
- **sparse**: :class:`~sparseflow.methods.sparse_linear.SparseTrainLinear`, which multiplies, differentiates and
  updates only the kept weights.

:func:`time_linear` times one training step of each (forward, backward into the weights and the input, optimizer
step), interleaved (dense, sparse, dense, sparse, ...) after one warm-up step each, on random inputs and output
gradients, and returns the medians; :func:`decide` (and :func:`choose`, its answer alone) is the form the
``auto`` execution calls per layer: cheap where one path is plainly faster, longer on a close call, and "sparse"
only when the sparse step measured faster by a few percent. What is timed is whatever kernels the two layers
use, so the choice follows them without knowing which.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sparseflow.errors import SparseflowError
from sparseflow.methods.fixed import FixedMask
from sparseflow.methods.sparse_linear import SparseTrainConv1x1, SparseTrainLinear

OPTIMIZERS = ("sgd", "adamw")
CHOOSE_REPEATS = 3  # timed rounds at most, for choose()
CHOOSE_MARGIN = 2.0  # choose() stops once one path is this many times faster in every sample (of two rounds or more)
CLOSE = 1.25  # medians within this factor of each other: a close call, timed again over more rounds
CLOSE_REPEATS = 7  # the rounds a close call adds
SPARSE_EDGE = 1.05  # sparse is chosen only when masked dense took at least this many times longer

Step = Callable[[], None]


# --- validation -----------------------------------------------------------------------------------
def check_mask(mask: Any, what: str = "mask") -> Tensor:
    """``mask`` as a CPU bool tensor (out, in), or (out, in, 1, 1) for a 1x1 convolution, with at least one
    kept weight, or one clear error."""
    conv = isinstance(mask, Tensor) and mask.dim() == 4 and tuple(mask.shape[2:]) == (1, 1)
    if not isinstance(mask, Tensor) or (mask.dim() != 2 and not conv) or mask.dtype != torch.bool:
        got = (f"a {mask.dtype} tensor of shape {tuple(mask.shape)}" if isinstance(mask, Tensor)
               else f"{type(mask).__name__} {mask!r:.60}")
        raise SparseflowError(f"{what} must be a 2-D bool tensor (out_features, in_features), or (out, in, 1, 1) for "
                              f"a 1x1 convolution, got {got}; pass the layer's weight mask, e.g. weight != 0 or "
                              "mask.bool()")
    if int(torch.count_nonzero(mask)) == 0:
        raise SparseflowError(f"{what} of shape {tuple(mask.shape)} keeps no weight: a layer needs at least one "
                              "kept weight to be timed")
    return mask.detach().cpu()


def _check_int(value: Any, name: str, remedy: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SparseflowError(f"{name} must be an integer >= 1, got {value!r}; {remedy}")
    return value


def _check_optimizer(name: Any) -> str:
    if name not in OPTIMIZERS:
        raise SparseflowError(f"optimizer {name!r} is not timed here; choose one of {', '.join(OPTIMIZERS)}")
    return name


# --- the two paths --------------------------------------------------------------------------------
def make_optimizer(params: Any, name: str) -> torch.optim.Optimizer:
    """SGD with momentum 0.9, or AdamW (its defaults): the optimizers whose state the sparse layer shrinks."""
    if _check_optimizer(name) == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    return torch.optim.AdamW(params, lr=1e-3)


def dense_linear(out_features: int, in_features: int, bias: bool = True) -> nn.Linear:
    """An ``nn.Linear`` with constant weights: the timing does not depend on the values, and a constant fill
    costs a fraction of the random initialisation of a large matrix."""
    lin = nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias)
    with torch.no_grad():
        lin.weight.fill_(in_features ** -0.5)
        if lin.bias is not None:
            lin.bias.zero_()
    return lin


@dataclass
class Execution:
    """A layer being trained: the module, its optimizer, what runs after each optimizer step (a method's) and what
    releases it (:meth:`close`)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    after: Step | None = None
    release: Step | None = None

    def close(self) -> None:
        """Detach what holds the layer beyond its last reference: a method's gradient hooks live in autograd's
        C++ side, out of reach of Python's cycle collector, and would keep the method, the model and its
        tensors alive."""
        if self.release is not None:
            self.release()
            self.release = None

    def step(self, x: Tensor, grad_y: Tensor) -> Step:
        """One training step on ``x``: forward, backward of ``grad_y`` (into the weights and, when ``x`` requires
        it, the input), ``optimizer.step()``, then ``after``."""
        model, optimizer, after = self.model, self.optimizer, self.after

        def step() -> None:
            model(x).backward(grad_y)
            optimizer.step()
            if after is not None:
                after()
            optimizer.zero_grad(set_to_none=True)
            x.grad = None

        return step


def dense_conv1x1(out_channels: int, in_channels: int, bias: bool = True) -> nn.Conv2d:
    """A 1x1 ``nn.Conv2d`` with constant weights (as :func:`dense_linear`)."""
    conv = nn.utils.skip_init(nn.Conv2d, in_channels, out_channels, 1, bias=bias)
    with torch.no_grad():
        conv.weight.fill_(in_channels ** -0.5)
        if conv.bias is not None:
            conv.bias.zero_()
    return conv


def masked_execution(mask: Tensor, *, bias: bool = True, optimizer: str = "sgd") -> Execution:
    """An ``nn.Linear`` (a 1x1 ``nn.Conv2d`` for a 4-D mask) trained under :class:`~sparseflow.FixedMask`
    (``mask``)."""
    layer = dense_conv1x1(*mask.shape[:2], bias) if mask.dim() == 4 else dense_linear(*mask.shape, bias)
    model = nn.Sequential(layer)
    opt = make_optimizer(model.parameters(), optimizer)
    method = FixedMask(keep={"0.weight": mask})
    method.prepare(model, opt)
    return Execution(model, opt, method.step, method.remove)


def sparse_execution(mask: Tensor, *, bias: bool = True, optimizer: str = "sgd") -> Execution:
    """A :class:`SparseTrainLinear` on ``mask`` (a :class:`SparseTrainConv1x1` for a 4-D mask; constant kept
    weights, as :func:`dense_linear`)."""
    nnz = int(torch.count_nonzero(mask))
    cls = SparseTrainConv1x1 if mask.dim() == 4 else SparseTrainLinear
    layer = cls(mask, torch.full((nnz,), mask.shape[1] ** -0.5), torch.zeros(mask.shape[0]) if bias else None)
    return Execution(layer, make_optimizer(layer.parameters(), optimizer))


def interleaved(steps: Mapping[str, Step], repeats: int, *, margin: float | None = None,
                budget_s: float | None = None, min_repeats: int = 3) -> dict[str, list[float]]:
    """Seconds of each step in ``steps``, over up to ``repeats`` rounds that run every step once in the given order,
    after one warm-up round (lazy optimizer state, allocator, thread pool).

    ``margin``: stop after the second round or a later one once one step's slowest sample is ``margin`` times
    below every other step's fastest (two rounds, so that one slow sample, a page fault or another process taking
    the core, cannot decide alone). ``budget_s``: fewer rounds (never under ``min_repeats``) when the warm-up round
    says ``repeats`` rounds would take longer than this.
    """
    warm = 0.0
    for fn in steps.values():
        t = time.perf_counter()
        fn()
        warm += time.perf_counter() - t
    if budget_s is not None and warm > 0:
        repeats = max(min(repeats, min_repeats), min(repeats, int(budget_s / warm)))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeats):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t)
        if margin is not None and r >= 1 and _settled(samples, margin):
            break
    return samples


def _settled(samples: dict[str, list[float]], margin: float) -> bool:
    for name, mine in samples.items():
        if all(max(mine) * margin < min(other) for n, other in samples.items() if n != name):
            return True
    return False


# --- the measurement and the choice ---------------------------------------------------------------
def time_linear(mask: Tensor, batch: int, *, bias: bool = True, optimizer: str = "sgd", threads: int | None = None,
                repeats: int = 5, margin: float | None = None,
                feature_map: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """Median seconds of one training step of the layer ``mask`` describes, at ``batch`` rows, masked dense
    (``"dense"``) and sparse (``"sparse"``), under ``threads`` torch threads (default: the current count, which is
    restored afterwards). A 4-D mask ``(out, in, 1, 1)`` times a 1x1 convolution over ``batch`` output positions,
    laid out as ``feature_map`` ``(images, height, width)`` when given (the layout changes both convolutions'
    speed: one image of ``batch x 1`` positions can favour the other path than 16 images of 14 x 14), else as one
    image of ``batch x 1``.

    Returns ``{"dense", "sparse"}`` (median seconds), ``"choice"`` ("sparse" when its median is lower, else
    "dense"), the samples (``"dense_samples"``, ``"sparse_samples"``), the rounds timed (``"repeats"``: fewer than
    asked when ``margin`` stopped early, see :func:`interleaved`), ``"threads"``, ``"batch"``, ``"density"`` and
    ``"optimizer"``.
    """
    mask = check_mask(mask)
    _check_int(batch, "batch", "pass the number of rows (samples x positions) the layer sees per step")
    _check_optimizer(optimizer)
    _check_int(repeats, "repeats", "pass the number of timed rounds, e.g. 5")
    if threads is not None:
        _check_int(threads, "threads", "pass a torch thread count, or None for the current one")
    if margin is not None and not (isinstance(margin, (int, float)) and not isinstance(margin, bool) and margin > 1):
        raise SparseflowError(f"margin must be a number > 1 (or None to time every round), got {margin!r}")
    if feature_map is not None:
        if (not isinstance(feature_map, tuple) or len(feature_map) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in feature_map)):
            raise SparseflowError(f"feature_map must be (images, height, width), three integers >= 1, got {feature_map!r}")
        if mask.dim() != 4:
            raise SparseflowError(f"feature_map is for 1x1 convolutions (a 4-D mask), got a mask of shape "
                                  f"{tuple(mask.shape)}; drop it for a Linear layer")
        if feature_map[0] * feature_map[1] * feature_map[2] != batch:
            raise SparseflowError(f"feature_map {feature_map} holds {feature_map[0] * feature_map[1] * feature_map[2]} "
                                  f"positions but batch is {batch}; pass batch = images x height x width")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        if mask.dim() == 4:  # a 1x1 convolution: the rows are output positions, laid out as a feature map
            n, h, w = feature_map if feature_map is not None else (1, batch, 1)
            x = torch.randn(n, mask.shape[1], h, w, generator=g).requires_grad_()
            grad_y = torch.randn(n, mask.shape[0], h, w, generator=g)
        else:
            x = torch.randn(batch, mask.shape[1], generator=g).requires_grad_()  # a hidden layer: dx is needed too
            grad_y = torch.randn(batch, mask.shape[0], generator=g)
        paths = {"dense": masked_execution(mask, bias=bias, optimizer=optimizer),
                 "sparse": sparse_execution(mask, bias=bias, optimizer=optimizer)}
        try:
            samples = interleaved({k: e.step(x, grad_y) for k, e in paths.items()}, repeats, margin=margin)
        finally:
            for e in paths.values():
                e.close()
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    dense, sparse = statistics.median(samples["dense"]), statistics.median(samples["sparse"])
    return {"dense": dense, "sparse": sparse, "choice": "sparse" if sparse < dense else "dense",
            "dense_samples": samples["dense"], "sparse_samples": samples["sparse"], "repeats": len(samples["dense"]),
            "threads": used, "batch": batch, "density": int(torch.count_nonzero(mask)) / mask.numel(),
            "optimizer": optimizer}


def decide(mask: Tensor, batch: int, **kw: Any) -> dict[str, Any]:
    """:func:`time_linear`'s measurement, cheap where the answer is plain and longer where it is close, with the
    choice this module's ``auto`` execution makes: ``"choice"`` is ``"sparse"`` only when the masked dense step's
    median is at least ``SPARSE_EDGE`` times the sparse one's (within a few percent, dense: the execution every
    method runs by default, whose cost a noisy sample cannot make worse than measured).

    At most ``CHOOSE_REPEATS`` rounds, ending after the second round if one path is ``CHOOSE_MARGIN`` times
    faster in every sample; when the two medians are within ``CLOSE`` of each other, ``CLOSE_REPEATS`` more
    rounds join the samples before the medians decide (a wrong pick there costs most of the margin a later cell
    would show). ``kw`` (``bias``, ``optimizer``, ``threads``, ``repeats``, ``margin``, ``feature_map``) as for
    :func:`time_linear`.
    """
    t = time_linear(mask, batch, **{"repeats": CHOOSE_REPEATS, "margin": CHOOSE_MARGIN, **kw})
    if max(t["dense"], t["sparse"]) < CLOSE * min(t["dense"], t["sparse"]):
        more = time_linear(mask, batch, **{**kw, "repeats": CLOSE_REPEATS, "margin": None})
        for k in ("dense", "sparse"):
            t[f"{k}_samples"] = t[f"{k}_samples"] + more[f"{k}_samples"]
            t[k] = statistics.median(t[f"{k}_samples"])
        t["repeats"] = len(t["dense_samples"])
    t["choice"] = "sparse" if t["dense"] >= SPARSE_EDGE * t["sparse"] else "dense"
    return t


def choose(mask: Tensor, batch: int, **kw: Any) -> str:
    """``"sparse"`` or ``"dense"``: the execution of the layer ``mask`` describes that trains faster here at
    ``batch`` rows per step, as :func:`decide` measures and decides it; ``kw`` as for :func:`time_linear`."""
    return decide(mask, batch, **kw)["choice"]
