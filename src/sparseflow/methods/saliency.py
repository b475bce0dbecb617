"""Pruning at initialisation: SNIP, GraSP and SynFlow.

Each prunes once, in ``prepare`` (``target_sparsity(0) = sparsity``), keeping the weights with the highest
saliency, and ranks all layers together (``distribution=GLOBAL``) by default, as their papers do; any
distribution or pattern of :class:`~sparseflow.Method` works too. The saliencies are computed from the model
in ``_setup`` and served through the one score override point, :meth:`~sparseflow.Method.scores`.

Scoring follows Tanaka et al.'s reference code (``ganguli-lab/Synaptic-Flow``), which runs all three with the
model in eval mode: BatchNorm uses its running statistics and dropout is off. Each module's mode is restored
afterwards. The forward passes go through ``torch.func.functional_call`` on detached leaves, so scoring
never writes ``.grad``, weights or buffers, and works inside ``torch.no_grad()``.

Data and losses. A batch is what a user's loader yields: an ``(x, y)`` pair or a dict of model inputs (a
Hugging Face batch with ``input_ids``, ``attention_mask``, ``labels``). The loss receives what the model
returned and the targets (``y``, or the dict's ``labels``); by default it is the model's own loss when it
computes one (a Hugging Face model given ``labels``), else cross-entropy on the prediction
(:func:`default_loss`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from sparseflow.distributions import GLOBAL, Distribution, Global
from sparseflow.errors import SparseflowError
from sparseflow.init import calibrate_, variance_ratios
from sparseflow.layouts import default_loss, output_loss, output_tensor, split_batch, to_device
from sparseflow.methods.base import Method

Batch = tuple[Any, Any]  # (model inputs: a tensor or a dict of them, targets or None)


def _forward(model: nn.Module, state: dict[str, Tensor], inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return functional_call(model, state, (), inputs)
    return functional_call(model, state, (inputs,))


def _scaled(output: Any, scale: float, own_loss: bool) -> Any:
    """``output`` with its prediction divided by ``scale`` (a tensor, or a copy of a dict-like output)."""
    if scale == 1.0:
        return output
    if isinstance(output, Tensor):
        return output / scale
    if own_loss and output_loss(output) is not None:
        raise SparseflowError(
            f"GraSP divides the logits by temperature={scale:g} before the loss, but the model computes its own "
            "loss (a Hugging Face model given labels): pass loss=(output, labels) -> scalar computed from "
            "output.logits, or temperature=1")
    if isinstance(output, dict):  # a ModelOutput is a dict: rebuild it with the scaled logits
        key = next((k for k in ("logits", "prediction_logits") if isinstance(output.get(k), Tensor)), None)
        if key is not None:
            return type(output)(**{**output, key: output[key] / scale})
    raise SparseflowError(f"GraSP cannot find the logits to divide by the temperature in a {type(output).__name__}")


@contextlib.contextmanager
def _scoring(model: nn.Module) -> Iterator[None]:
    """Eval mode and autograd on for the duration; every module's own mode restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def _leaves(
    model: nn.Module,
    targets: dict[str, nn.Parameter],
    transform: Callable[[str, Tensor], Tensor] = lambda name, t: t,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(everything functional_call needs, the target leaves requiring grad) with ``transform`` applied to
    every floating-point parameter and buffer. ``detach()`` shares storage: without a transform nothing is copied.
    """
    state: dict[str, Tensor] = {}
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        state[name] = transform(name, t.detach()) if t.is_floating_point() else t
    leaves = {name: state[name].requires_grad_() for name in targets}
    return state, leaves


def _grads(value: Tensor, leaves: dict[str, Tensor], who: str, *, create_graph: bool = False) -> dict[str, Tensor]:
    """d value / d leaf for every target; a target the value does not depend on is a user error."""
    if value.dim() != 0:
        raise SparseflowError(f"{who}: the loss must be a scalar, got a tensor of shape {tuple(value.shape)}")
    grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True, create_graph=create_graph)
    missing = [name for name, g in zip(leaves, grads) if g is None]
    if missing:
        raise SparseflowError(
            f"{who}: the loss gives no gradient to target(s) {missing}: they are not used in the forward pass; "
            "exclude them via Targets(exclude=...)"
        )
    return dict(zip(leaves, grads))


def _check_loss_data(who: str, data: Any, loss: Any, batches: Any) -> None:
    if data is None:
        raise SparseflowError(f"{who} needs a data batch: {who}(sparsity, data=(x, y)), a dict of model inputs, or "
                              "an iterable of batches (a DataLoader)")
    if isinstance(data, Tensor):
        raise SparseflowError(f"{who}: data must be an (x, y) pair, a dict of model inputs or an iterable of them, "
                              "got a single tensor")
    if not hasattr(data, "__iter__"):
        raise SparseflowError(f"{who}: data must be an (x, y) pair, a dict of model inputs or an iterable of them, "
                              f"got {type(data).__name__}")
    if not callable(loss):
        raise SparseflowError(f"{who} needs a loss: a callable (output, y) -> scalar, got {loss!r}")
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise SparseflowError(f"{who}: batches must be an integer >= 1, got {batches!r}")


def _is_batch(item: Any) -> bool:
    if isinstance(item, dict):
        return bool(item) and all(isinstance(k, str) for k in item)
    return isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, Tensor) for t in item)


def _batches(who: str, data: Any, n: int, device: torch.device) -> list[Batch]:
    """The first ``n`` batches of ``data`` (one batch, or an iterable of them such as a DataLoader), each as
    (inputs, targets) on ``device``."""
    items = [data] if _is_batch(data) else list(itertools.islice(iter(data), n))
    if not items:
        raise SparseflowError(f"{who}: data yielded no batches (an exhausted iterator?); pass data=(x, y)")
    for i, item in enumerate(items):
        if not _is_batch(item):
            raise SparseflowError(f"{who}: batch {i} of data is neither an (x, y) pair of tensors nor a dict of "
                                  f"model inputs: {type(item).__name__}")
    return [tuple(to_device(v, device) for v in split_batch(item)) for item in items]  # type: ignore[misc]


@dataclass(eq=False)
class _AtInit(Method):
    """Prune once in ``prepare`` by saliencies computed in one pass over the model (``_saliency``).

    Pruning at initialisation is sparse from scratch, so ``sparse_init`` defaults to True: after pruning
    every unit's kept weights get the unit's dense norm back (SynFlow), or each layer is calibrated on the data
    batch to the dense network's variance ratio (SNIP, GraSP); see :class:`~sparseflow.Method`.
    """

    distribution: Distribution | Global = GLOBAL
    sparse_init: bool = field(default=True, kw_only=True)
    _cache: dict[str, Tensor] = field(init=False, repr=False, default_factory=dict)

    def _saliency(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def _setup(self) -> None:
        if self.sparsity > 0:
            self._cache = self._saliency()

    def scores(self, name: str, weight: Tensor) -> Tensor:
        return self._cache[name]

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                execution: str = "dense") -> None:
        try:
            super().prepare(model, optimizer, execution=execution)
        finally:
            self._cache = {}  # only the pruning in prepare reads the scores: do not hold a copy of the weights

    def _device(self) -> torch.device:
        return next(iter(self._params.values())).device


@dataclass(eq=False)
class _WithData(_AtInit):
    """Saliencies from a loss on data: the fields and the summed gradient shared by SNIP and GraSP."""

    data: Any = field(default=None, repr=False)
    loss: Callable[[Any, Any], Tensor] = default_loss
    batches: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_loss_data(type(self).__name__, self.data, self.loss, self.batches)

    _drawn: list[Batch] | None = field(default=None, init=False, repr=False, compare=False)

    def _batches(self) -> list[Batch]:
        # Drawn once per prepare: a second pass over a shuffling DataLoader would see other examples, and a
        # one-shot iterator none.
        if self._drawn is None:
            self._drawn = _batches(type(self).__name__, self.data, self.batches, self._device())
        return self._drawn

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                execution: str = "dense") -> None:
        self._drawn = None
        try:
            super().prepare(model, optimizer, execution=execution)
        finally:
            self._drawn = None

    def _dense_signal(self) -> dict[str, Any]:
        """Also the dense network's variance ratio q_l / q_(l-1) of every target layer on the first data batch
        (:func:`sparseflow.init.variance_ratios`), when the model allows that measurement."""
        dense = super()._dense_signal()
        x = self._batches()[0][0]
        if isinstance(x, Tensor):
            try:
                r = variance_ratios(self.model, x, targets=self.targets)
            except SparseflowError:  # inputs not one tensor, or a layer called twice per forward: no calibration
                return dense
            # every weight target must be some layer's `weight` (not e.g. an attention's in_proj_weight)
            covered = {f"{layer}.weight" if layer else "weight" for layer in r.layers}
            if all(math.isfinite(v) and v > 0 for v in r.ratios) and set(dense["norms"]) <= covered:
                dense |= {"x": x, "ratios": dict(zip(r.layers, r.ratios))}
        return dense

    def _restore_signal(self, dense: dict[str, Any]) -> str:
        """Calibrate every layer on the data batch back to its dense variance ratio (the mask is chosen from the
        data, so its kept weights are correlated with the signal and neither count nor norm predicts the variance);
        where that measurement cannot run (inputs that are not one tensor, a layer not called exactly once per
        forward pass, a target that is no module's ``weight``, a layer the mask cut off), norm matching as the
        other methods."""
        if "ratios" in dense:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # a bias-bound layer keeps its closest ratio
                    calibrate_(self.model, dense["x"], target=dense["ratios"], targets=self.targets)
            except SparseflowError:  # a layer the mask cut off carries no signal: fall back below
                return super()._restore_signal(dense)
            return "calibrated"
        return super()._restore_signal(dense)

    def _loss(self, state: dict[str, Tensor], x: Any, y: Any, scale: float = 1.0) -> Tensor:
        """The loss on one batch through ``state``; the prediction divided by ``scale`` (GraSP's temperature)."""
        try:
            out = _forward(self.model, state, x)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            shape = tuple(x.shape) if isinstance(x, Tensor) else {k: tuple(getattr(v, "shape", ())) for k, v in x.items()}
            raise SparseflowError(f"{type(self).__name__}: the model fails on the data batch (inputs {shape}): pass "
                                  f"batches shaped like the training data. PyTorch said: {e}") from None
        try:
            value = self.loss(_scaled(out, scale, self.loss is default_loss), y)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            what = f"labels {tuple(y.shape)}" if isinstance(y, Tensor) else "labels"
            if isinstance(y, Tensor) and y.numel() and not y.is_floating_point():
                what += f" in [{int(y.min())}, {int(y.max())}]"
            outs = f" for outputs {tuple(out.shape)}" if isinstance(out, Tensor) else ""
            raise SparseflowError(f"{type(self).__name__}: the loss fails on the data batch ({what}{outs}): pass "
                                  f"labels that fit the model's outputs, or loss=. PyTorch said: {e}") from None
        if not isinstance(value, Tensor):
            raise SparseflowError(f"{type(self).__name__}: the loss returned {type(value).__name__}, not a scalar tensor")
        return value

    def _gradient(self, batches: list[Batch], scale: float = 1.0) -> dict[str, Tensor]:
        """∇L summed over ``batches``, detached; logits divided by ``scale`` (GraSP's temperature)."""
        total: dict[str, Tensor] = {}
        for x, y in batches:
            state, leaves = _leaves(self.model, self._params)
            g = _grads(self._loss(state, x, y, scale), leaves, type(self).__name__)
            total = {n: total[n] + g[n] for n in g} if total else g
        return total


@dataclass(eq=False)
class SNIP(_WithData):
    """SNIP (Lee, Ajanthan & Torr 2019, "SNIP: Single-shot Network Pruning based on Connection Sensitivity").

    Connection sensitivity |w · ∂L/∂w| on a data batch (the gradient summed over up to ``batches`` batches),
    computed once at initialisation; the highest are kept.

    Args:
        data: an ``(x, y)`` batch or a dict of model inputs, or an iterable of such batches (a DataLoader);
            required.
        loss: ``(output, y) -> scalar``, ``output`` being what the model returned; default
            :func:`default_loss` (the model's own loss, else cross-entropy).
        batches: how many batches of an iterable ``data`` to use.
    """

    def _saliency(self) -> dict[str, Tensor]:
        batches = self._batches()
        with _scoring(self.model):
            g = self._gradient(batches)
        return {n: (g[n] * p.detach()).abs() for n, p in self._params.items()}


@dataclass(eq=False)
class GraSP(_WithData):
    """GraSP (Wang, Zhang & Grosse 2020, "Picking Winning Tickets Before Training by Preserving Gradient Flow").

    With g = ∇L (summed over the batches, no graph) and the Hessian-gradient product Hg = ∇(g · ∇L) by
    double backprop, the paper scores S = -θ ⊙ Hg and removes the weights with the *highest* S, whose
    removal reduces the gradient flow least (official code ``alecwangcq/GraSP``, ``pruner/GraSP.py``: scores
    ``-layer.weight.data * layer.weight.grad``, keep where score <= the cut-off of the top ``ratio``; Tanaka
    et al.'s re-implementation keeps the highest θ ⊙ Hg, the same set). Our score is therefore
    **+θ ⊙ Hg, higher = keep**, i.e. the kept set is where -θ ⊙ Hg is lowest.
    Logits are divided by ``temperature`` (T = 200 in the official code) before the loss.

    Args:
        data: as for :class:`SNIP`.
        loss: as for :class:`SNIP`.
        batches: as for :class:`SNIP`.
        temperature: T.
    """

    temperature: float = 200.0

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 or t == float("inf"):
            raise SparseflowError(f"GraSP: temperature must be a positive number (the paper uses 200), got {t!r}")

    def _saliency(self) -> dict[str, Tensor]:
        who, model, t = type(self).__name__, self.model, float(self.temperature)
        batches = self._batches()
        # The fused attention kernels have no double backward on the CPU: the math one computes the same.
        with _scoring(model), sdpa_kernel([SDPBackend.MATH]):
            g = self._gradient(batches, t)
            hg: dict[str, Tensor] = {n: torch.zeros_like(v) for n, v in g.items()}
            for x, y in batches:
                state, leaves = _leaves(model, self._params)
                grad = _grads(self._loss(state, x, y, t), leaves, who, create_graph=True)
                z = sum((g[n] * grad[n]).sum() for n in grad)  # g · ∇L, differentiated once more: Hg
                hvp = torch.autograd.grad(z, list(leaves.values()), allow_unused=True)
                for n, h in zip(leaves, hvp):
                    if h is not None:  # None: that gradient does not depend on the targets, Hg = 0
                        hg[n] += h
        return {n: p.detach() * hg[n] for n, p in self._params.items()}


@dataclass(eq=False)
class SynFlow(_AtInit):
    """SynFlow (Tanaka, Kunin, Yamins & Ganguli 2020, "Pruning neural networks without any data by
    iteratively conserving synaptic flow"). Data-free.

    Every parameter and buffer is replaced by its absolute value, an all-ones input of ``input_shape`` is
    fed through, R = sum(model(1)) (float64 when the model runs in it), and S = |θ ⊙ ∂R/∂θ|. Pruning is
    iterative: in round k = 1..n the density is (1 - s)^(k/n) and the scores are recomputed with the weights
    pruned so far set to zero, which avoids layer collapse. The model's own signed weights are never
    modified except for the zeroing of pruned ones.

    Biases. The paper's conservation law (every layer carries the same total score) holds when no flow
    enters through biases, and its models start with zero biases (``Models/lottery_vgg.py``: conv, linear
    and BatchNorm shifts initialised to 0). PyTorch's default Linear/Conv biases are not zero, and as the
    weights thin out their flow dominates deep layers, so early layers look unimportant: with them,
    SynFlow itself empties an early layer of a 10 x 100 MLP at 99 % sparsity (seeds 0, 1, 2). So by default every
    parameter named ``bias`` and every ``running_mean`` buffer counts as zero while scoring (the model is not
    changed); ``bias_flow=True`` keeps them, as the reference code's scoring does literally.

    Args:
        rounds: n, the number of prune-and-rescore rounds (100 in the paper).
        input_shape: one example's shape without the batch axis, e.g. ``(3, 32, 32)``; inferred as
            ``(in_features,)`` when the first Linear/Conv layer is a Linear, otherwise required (or ``example``).
        bias_flow: let flow enter through biases while scoring (see above).
        example: instead of ``input_shape``, a batch as the loader yields it (a tensor, an ``(x, y)`` pair or a
            dict of model inputs): its first example's floating-point inputs become ones, integer inputs (token
            ids, attention masks, labels) are kept. For models whose input is not one float tensor.
    """

    rounds: int = 100
    input_shape: tuple[int, ...] | None = None
    bias_flow: bool = False
    example: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.rounds
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise SparseflowError(f"SynFlow: rounds must be an integer >= 1 (the paper uses 100), got {r!r}")
        if not isinstance(self.bias_flow, bool):
            raise SparseflowError(f"SynFlow: bias_flow must be True or False, got {self.bias_flow!r}")
        shape = self.input_shape
        if shape is not None:
            if not isinstance(shape, (tuple, list)) or not shape or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
            ):
                raise SparseflowError(
                    f"SynFlow: input_shape must be a tuple of positive sizes without the batch axis, e.g. (3, 32, 32), got {shape!r}"
                )
            self.input_shape = tuple(shape)

    def _setup(self) -> None:
        if self.sparsity == 0:
            return
        for k in range(1, self.rounds):
            self._cache = self._saliency()
            self._prune_to(1 - (1 - self.sparsity) ** (k / self.rounds))
        self._cache = self._saliency()  # round n is prepare's own pruning to `sparsity`

    def _example(self, dtype: torch.dtype) -> Any:
        """The all-ones input: from ``example`` (floats -> ones, integers kept, one example) or the shape."""
        if self.example is None:
            return torch.ones((1, *self._example_shape()), dtype=dtype, device=self._device())
        inputs, _ = split_batch(self.example)  # a dict keeps its labels: an encoder-decoder reads them

        def ones(t: Any) -> Any:
            if not isinstance(t, Tensor):
                return t
            t = t[:1] if t.dim() else t
            return torch.ones_like(t, dtype=dtype) if t.is_floating_point() else t

        inputs = {k: ones(v) for k, v in inputs.items()} if isinstance(inputs, dict) else ones(inputs)
        return to_device(inputs, self._device())

    def _example_shape(self) -> tuple[int, ...]:
        if self.input_shape is not None:
            return self.input_shape
        for m in self.model.modules():
            if isinstance(m, nn.Linear):
                return (m.in_features,)
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                break
        raise SparseflowError(
            "SynFlow cannot infer the model's input shape (its first layer is not a Linear): pass "
            "input_shape=, one example's shape without the batch axis, e.g. SynFlow(0.9, input_shape=(3, 32, 32)), "
            "or example= a batch from your loader (for token ids or a dict of inputs)"
        )

    def _saliency(self) -> dict[str, Tensor]:
        try:
            return self._synflow(torch.float64)
        except (RuntimeError, ValueError, TypeError, IndexError):  # a model that cannot run in float64
            pass
        try:
            return self._synflow(next(iter(self._params.values())).dtype)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            what = "the example batch" if self.example is not None else f"an all-ones input of shape {(1, *self._example_shape())}"
            raise SparseflowError(
                f"SynFlow: the model fails on {what}; pass the right input_shape= (one example, no batch axis) "
                f"or example= a batch from your loader. PyTorch said: {e}"
            ) from e

    def _synflow(self, dtype: torch.dtype) -> dict[str, Tensor]:
        model = self.model

        def linearise(name: str, t: Tensor) -> Tensor:
            shift = name.rsplit(".", 1)[-1] in ("bias", "running_mean") and name not in self._params
            return torch.zeros_like(t, dtype=dtype) if shift and not self.bias_flow else t.abs().to(dtype)

        with _scoring(model):
            state, leaves = _leaves(model, self._params, linearise)
            out = output_tensor(_forward(model, state, self._example(dtype)))
            grads = _grads(out.sum(), leaves, "SynFlow")
        scores = {n: (grads[n] * leaves[n]).detach().abs() for n in leaves}
        # One positive factor for all layers keeps the global ranking and keeps float32 (used for ranking)
        # away from overflow and underflow: R grows like a product of per-layer norms.
        top = max(float(s.max()) for s in scores.values())
        scale = 1.0 / top if 0 < top < float("inf") else 1.0
        return {n: s * scale for n, s in scores.items()}
