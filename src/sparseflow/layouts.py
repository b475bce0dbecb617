"""Layouts: how sparseflow reads modules it did not write.

**Weight layouts.** Every rule that depends on axes (N:M groups along the input axis, ERK fan-in and
fan-out, sparsity-aware init per output unit, connectivity, the inference kernels) asks the
:class:`Layout` of a weight instead of assuming ``(out, in, *kernel)``:

=====================================  ==========================  =======================================
module, parameter                      stored shape                layout
=====================================  ==========================  =======================================
``nn.Linear.weight``                   (out, in)                   out 0, in 1
``nn.Conv1d/2d/3d.weight``             (out, in / groups, *k)      out 0, in 1, ``groups``
``nn.ConvTranspose1d/2d/3d.weight``    (in, out / groups, *k)      out 1, in 0, ``groups``
HF ``Conv1D.weight`` (GPT-2 family)    (in, out)                   out 1, in 0
``nn.MultiheadAttention.in_proj_weight``  (3E, E)                  out 0, in 1, chunks q, k, v
``nn.MultiheadAttention.{q,k,v}_proj_weight``  (E, kdim/vdim)      out 0, in 1
``nn.LSTM/GRU/RNN.weight_{ih,hh}_l*``  (gates * H, in)             out 0, in 1, chunks per gate
``nn.Embedding.weight``                (tokens, dim)               out 1, in 0 (opt-in target)
=====================================  ==========================  =======================================

:func:`register_layout` adds a rule for a user's own module type. :meth:`Layout.canonical` views a tensor as
``(out, in, *rest)`` and :meth:`Layout.restore` maps such a tensor back, so patterns written for that view
(``NM``, ``Block``) work on every layout.

**Batches and outputs.** A batch may be a tensor, an ``(inputs, targets)`` pair, or a dict of model inputs
(Hugging Face style: ``input_ids``, ``attention_mask``, ``labels``, ...); a model may return a tensor, a
tuple, or a ``ModelOutput``/dict with ``logits`` and ``loss``. :func:`split_batch`, :func:`call`,
:func:`output_tensor` and :func:`output_loss` are the one place that reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseflow.errors import SparseflowError


@dataclass(frozen=True)
class Layout:
    """Which axis of a weight indexes the layer's outputs and which its inputs.

    ``chunks`` names equal blocks stacked along the output axis (``in_proj_weight``: q, k, v; an LSTM's gates);
    ``groups`` is a grouped convolution's group count (input ``j`` of group ``g`` feeds only its outputs).
    """

    out_axis: int = 0
    in_axis: int = 1
    groups: int = 1
    chunks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for axis in ("out_axis", "in_axis", "groups"):
            value = getattr(self, axis)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SparseflowError(f"Layout({axis}=...) needs an integer, got {value!r}")
        if self.out_axis == self.in_axis:
            raise SparseflowError(f"Layout needs two different axes, got out_axis={self.out_axis} and "
                                  f"in_axis={self.in_axis}: pass e.g. out_axis=0, in_axis=1 (nn.Linear's layout)")
        if self.groups < 1:
            raise SparseflowError(f"Layout(groups=...) needs a positive count, got {self.groups}")
        if not isinstance(self.chunks, tuple) or not all(isinstance(c, str) for c in self.chunks):
            raise SparseflowError(f"Layout(chunks=...) needs a tuple of names such as ('q', 'k', 'v'), got {self.chunks!r}")

    def canonical(self, t: Tensor) -> Tensor:
        """``t`` viewed as ``(out, in, *rest)`` (the tensor itself for the usual layout)."""
        if (self.out_axis, self.in_axis) == (0, 1):
            return t
        return t.movedim((self.out_axis, self.in_axis), (0, 1))

    def restore(self, c: Tensor) -> Tensor:
        """Inverse of :meth:`canonical`: a ``(out, in, *rest)`` tensor back in the stored layout."""
        if (self.out_axis, self.in_axis) == (0, 1):
            return c
        return c.movedim((0, 1), (self.out_axis, self.in_axis)).contiguous()

    def canonical_shape(self, shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        """The stored ``shape`` in ``(out, in, *rest)`` order."""
        shape = tuple(shape)
        if len(shape) < 2:
            raise SparseflowError(f"a weight layout needs a tensor of >= 2 dims, got shape {shape}")
        axes = (self.out_axis % len(shape), self.in_axis % len(shape))
        if axes[0] == axes[1] or not all(-len(shape) <= a < len(shape) for a in (self.out_axis, self.in_axis)):
            raise SparseflowError(f"{self!r} does not fit a weight of shape {shape}: its axes must be two different "
                                  "axes of the weight")
        rest = tuple(d for i, d in enumerate(shape) if i not in axes)
        return (shape[self.out_axis], shape[self.in_axis], *rest)

    def fan_in(self, shape: tuple[int, ...] | torch.Size) -> int:
        """Inputs that feed one output unit: in (per group) × kernel size. (A grouped transposed convolution
        stores every input channel along its input axis, but an output reads only its group's.)"""
        c = self.canonical_shape(shape)
        n = c[1] // self.groups if self.out_axis != 0 else c[1]
        for d in c[2:]:
            n *= d
        return n

    def fan_out(self, shape: tuple[int, ...] | torch.Size) -> int:
        """Output units × kernel size (the convention of He et al. 2015 for a convolution's fan-out)."""
        c = self.canonical_shape(shape)
        n = c[0]
        for d in c[2:]:
            n *= d
        return n


DEFAULT = Layout()
_TRANSPOSED = Layout(out_axis=1, in_axis=0)
# (module type or "module.Qualname" of a type not imported here, parameter name or prefix*, layout or rule)
LayoutRule = Callable[[nn.Module, str], "Layout | None"]
_RULES: list[tuple[type | str, str, Layout | LayoutRule]] = []


def register_layout(module_type: type[nn.Module] | str, param: str, layout: Layout | LayoutRule) -> None:
    """Declare the layout of ``module_type``'s parameter ``param`` (``"weight_ih_l*"``: a prefix). ``layout`` is a
    :class:`Layout` or a function ``(module, param_name) -> Layout | None``. ``module_type`` may be a string
    ``"package.module.ClassName"`` for a type whose package is not imported. Later rules win."""
    if not (isinstance(module_type, str) or (isinstance(module_type, type) and issubclass(module_type, nn.Module))):
        raise SparseflowError(f"register_layout needs an nn.Module subclass or its qualified name, got {module_type!r}")
    if isinstance(module_type, str) and "." not in module_type.strip("."):
        raise SparseflowError(f"register_layout needs the qualified name 'package.module.{module_type}', got "
                              f"{module_type!r}")
    if not isinstance(param, str) or not param or param == "*":
        raise SparseflowError(f"register_layout needs a parameter name such as 'weight' (or a prefix 'weight_*'), "
                              f"got {param!r}")
    if not isinstance(layout, Layout) and not callable(layout):
        raise SparseflowError(f"register_layout needs a Layout or a function returning one, got {layout!r}")
    _RULES.insert(0, (module_type, param, layout))


def matches_type(module: nn.Module, kind: type | str) -> bool:
    """Whether ``module`` is an instance of ``kind`` (a class, or ``"package.module.Name"``)."""
    if isinstance(kind, type):
        return isinstance(module, kind)
    # "package.module.Name": any class of the module's MRO called Name from the same top-level package (a
    # library may move the class between its modules across versions).
    package, name = kind.split(".")[0], kind.rsplit(".", 1)[-1]
    return any(c.__qualname__ == name and c.__module__.split(".")[0] == package for c in type(module).__mro__)


def layout_of(module: nn.Module, param: str) -> Layout | None:
    """The layout of ``module``'s own parameter ``param`` (its leaf name), or None when no rule knows it."""
    for kind, name, layout in _RULES:
        hit = param.startswith(name[:-1]) if name.endswith("*") else param == name
        if hit and matches_type(module, kind):
            return layout(module, param) if callable(layout) and not isinstance(layout, Layout) else layout
    return None


def parameter_layouts(model: nn.Module) -> dict[str, Layout]:
    """Every parameter name of ``model`` (each name of a tied parameter) whose module has a layout rule."""
    out: dict[str, Layout] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for leaf, p in module.named_parameters(recurse=False):
            layout = layout_of(module, leaf) if p.dim() >= 2 else None
            if layout is not None:
                out[f"{mod_name}.{leaf}" if mod_name else leaf] = layout
    return out


def _conv(module: nn.Module, param: str) -> Layout:
    return Layout(groups=int(getattr(module, "groups", 1)))


def _conv_transposed(module: nn.Module, param: str) -> Layout:
    return Layout(out_axis=1, in_axis=0, groups=int(getattr(module, "groups", 1)))


def _rnn(module: nn.Module, param: str) -> Layout:
    gates = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n")}.get(getattr(module, "mode", ""), ())
    return Layout(chunks=gates)


for _kind, _param, _layout in (
    (nn.Embedding, "weight", _TRANSPOSED),
    (nn.RNNBase, "weight_ih_l*", _rnn),
    (nn.RNNBase, "weight_hh_l*", _rnn),
    (nn.MultiheadAttention, "q_proj_weight", DEFAULT),
    (nn.MultiheadAttention, "k_proj_weight", DEFAULT),
    (nn.MultiheadAttention, "v_proj_weight", DEFAULT),
    (nn.MultiheadAttention, "in_proj_weight", Layout(chunks=("q", "k", "v"))),
    ("transformers.pytorch_utils.Conv1D", "weight", _TRANSPOSED),
    (nn.modules.conv._ConvTransposeNd, "weight", _conv_transposed),
    (nn.Conv1d, "weight", _conv),
    (nn.Conv2d, "weight", _conv),
    (nn.Conv3d, "weight", _conv),
    (nn.Linear, "weight", DEFAULT),
):
    register_layout(_kind, _param, _layout)


# --- batches and outputs --------------------------------------------------------------------------------
LABEL_KEYS = ("labels", "label", "targets")


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch: a tensor (no targets), an ``(x, y)`` pair, or a dict of model inputs
    (its ``labels`` are the targets and stay among the inputs, so a Hugging Face model computes its own loss)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        labels = next((batch[k] for k in LABEL_KEYS if k in batch), None)
        return dict(batch), labels
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise SparseflowError(
        f"a batch must be a tensor, an (inputs, targets) pair or a dict of model inputs, got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))


def call(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a dict of inputs, ``model(*inputs)`` for a tuple, else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def output_tensor(output: Any) -> Tensor:
    """The prediction in what a model returned: the tensor itself, ``.logits`` (or ``last_hidden_state``,
    ``prediction``) of a ``ModelOutput``/dict, or the first tensor of a tuple."""
    if isinstance(output, Tensor):
        return output
    for key in ("logits", "last_hidden_state", "prediction_logits", "prediction"):
        value = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(output, (tuple, list)):
        for value in output:
            if isinstance(value, Tensor):
                return value
    raise SparseflowError(f"cannot find the prediction in the model's output ({type(output).__name__}): return a "
                          "tensor, a tuple starting with one, or an object with .logits")


def output_loss(output: Any) -> Tensor | None:
    """The loss a model computed itself (a Hugging Face model given ``labels``), or None."""
    value = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    return value if isinstance(value, Tensor) and value.dim() == 0 else None


def sequence_output(output: Tensor, y: Any) -> bool:
    """Whether a tensor ``output`` holds one distribution per position, classes on the last axis: a 3-D output
    ``(batch, sequence, classes)`` against 2-D targets ``(batch, sequence)`` (a language model's logits).

    Any other tensor follows torch's convention, classes on axis 1 (``(N, C)``, ``(N, C, L)`` against
    ``(N, L)``). A ``(B, T, T)`` output against ``(B, T)`` targets matches both readings; it is read as a
    sequence output.
    """
    return isinstance(y, Tensor) and output.dim() == 3 and y.dim() == 2 and y.shape == output.shape[:2]


def default_loss(output: Any, y: Any) -> Tensor:
    """The model's own loss when it computed one (``output.loss``), else the mean cross-entropy of the
    prediction against ``y``: for ``output`` a tensor, classes on axis 1 (torch's convention) except for a
    sequence output (:func:`sequence_output`: ``(B, T, V)`` against ``(B, T)``), which is flattened to its
    ``B * T`` positions; for a model output (its ``.logits``, ``(batch, [sequence,] classes)``), classes on the
    last axis. The mean is over positions, so ``exp`` of a language model's loss is its perplexity."""
    own = output_loss(output)
    if own is not None:
        return own
    if y is None:
        raise SparseflowError("the batch has no targets and the model computes no loss: pass (x, y) batches, "
                              "labels in a dict batch, or loss=(output, y) -> scalar")
    if isinstance(output, Tensor) and not sequence_output(output, y):
        return F.cross_entropy(output, y)  # torch's convention: classes on axis 1
    logits = output_tensor(output)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def predictions(output: Any, y: Any) -> Tensor | None:
    """Predicted classes comparable with ``y`` (``argmax`` over the classes), or None when the output is not a
    classifier's. A sequence output (:func:`sequence_output`) predicts one class per position, shaped like
    ``y``, unless the model computed its own loss: a Hugging Face language model given ``labels`` shifts them
    inside its loss, so they do not line up with its logits."""
    logits = output if isinstance(output, Tensor) else output_tensor(output)
    if sequence_output(logits, y) and output_loss(output) is None:
        return logits.argmax(dim=-1)
    if not isinstance(y, Tensor) or logits.dim() != 2 or y.shape != logits.shape[:1]:
        return None
    return logits.argmax(dim=1)


def batch_size(inputs: Any) -> int:
    """Examples in a batch of inputs (the first dimension of its first tensor)."""
    if isinstance(inputs, Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 1
    values = inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (tuple, list)) else ()
    for v in values:
        if isinstance(v, Tensor) and v.dim():
            return int(v.shape[0])
    raise SparseflowError(f"cannot tell the batch size of inputs of type {type(inputs).__name__}")


def attention_before_out_proj(m: nn.MultiheadAttention, args: tuple, kwargs: dict) -> Tensor:
    """What ``m`` computes before its ``out_proj`` on this call (``out_proj``'s input, which MHA never passes to the
    module itself): ``m`` run with the projection set to the identity (``functional_call``: ``m`` is unchanged).
    Its forward hooks fire again for this call; a hook calling this must ignore that inner call."""
    from torch.func import functional_call

    e = m.out_proj.weight
    identity = {"out_proj.weight": torch.eye(e.shape[1], dtype=e.dtype, device=e.device)}
    if m.out_proj.bias is not None:
        identity["out_proj.bias"] = torch.zeros_like(m.out_proj.bias)
    return functional_call(m, identity, args, kwargs)[0]


def to_device(inputs: Any, device: torch.device | str) -> Any:
    """Inputs (a tensor, tuple or dict of tensors) moved to ``device``."""
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {k: to_device(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(to_device(v, device) for v in inputs)
    return inputs
