"""How a method's targets are multiplied during training: masked dense tensors, or the kept weights only.

``method.prepare(model, optimizer, execution=...)`` chooses:

- ``"dense"`` (default): the targets stay dense tensors and the mask multiplies the weights and gradients;
  every other setting below is then irrelevant.
- ``"sparse"``: every ``nn.Linear`` target whose mask is not dense becomes a
  :class:`~sparseflow.methods.sparse_linear.SparseTrainLinear` (a 1x1 ``nn.Conv2d``, one group and no
  padding, a :class:`~sparseflow.methods.sparse_linear.SparseTrainConv1x1`; Hugging Face's ``Conv1D`` a
  :class:`~sparseflow.methods.sparse_linear.SparseTrainConv1D`), whose parameter ``values`` holds
  the kept weights only (the optimizer's parameter is swapped in place, with its state). Forward, input gradient and
  weight gradient skip the zeros; the optimizer state shrinks with the density.
- ``"auto"``: as ``"sparse"``, but each layer is timed (forward + backward + step, dense against sparse, at the
  rows it multiplies in the first training forward) and stays dense where dense is faster. The choice is made
  at the first ``method.step()``, or at :meth:`Execution.decide` with a sample batch.

What the method sees does not change: masks, schedules, scores and ``state_dict`` are the same as in dense
execution, and the results equal masked-dense training up to the order of floating-point sums. A mask change
(SET/RigL updates, pruning schedules, ``set_mask``) materialises the dense weights of the sparse layers for the
duration of the update (:meth:`Execution.dense_view`), lets the method do exactly what it does in dense
execution, and rebuilds each changed layer: kept positions keep their values and optimizer state, new ones
start at zero. RigL's dense gradient is computed only in the backward pass before an update
(:attr:`SparseTrainLinear.collect_dense_grad`).

Other targets (weights tied to another module, such as a language model's output layer sharing the
embedding's matrix; k x k and grouped convolutions; the projections inside ``nn.MultiheadAttention``) stay in
dense execution, masked as before; :attr:`Execution.layers` names the sparse ones.
``method.set_execution("dense")`` turns the layers back into the modules they stand for (``fit`` does so when
training ends, so the model it returns is the model dense execution returns).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from sparseflow.errors import SparseflowError

if TYPE_CHECKING:
    from sparseflow.methods.base import Method
    from sparseflow.methods.sparse_linear import SparseTrainLinear

EXECUTIONS = ("dense", "sparse", "auto")


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_mean(t: Tensor) -> Tensor:
    """``t`` averaged over the ranks in place (as DDP averages gradients); ``t`` itself in one process."""
    if _distributed():
        torch.distributed.all_reduce(t)
        t.div_(torch.distributed.get_world_size())
    return t


def check_execution(value: object) -> str:
    if value not in EXECUTIONS:
        raise SparseflowError(f"execution must be one of {', '.join(EXECUTIONS)}, got {value!r}: 'dense' multiplies "
                              "masked dense weights, 'sparse' only the kept ones, 'auto' times each layer and picks")
    return str(value)


class Execution:
    """The sparse layers of one prepared method, and how their structure follows the method's mask."""

    def __init__(self, method: Method, mode: str) -> None:
        self.method = method
        self.mode = check_execution(mode)
        self.layers: dict[str, SparseTrainLinear] = {}  # target name ("fc.weight") -> its sparse layer
        self.choices: dict[str, dict[str, Any]] = {}  # auto: {name: {"execution", "dense_s", "sparse_s", "rows"}}
        self._rows: dict[str, int] = {}  # auto: rows each candidate multiplied in the first forward
        self._maps: dict[str, tuple[int, int, int]] = {}  # auto, 1x1 convs: (images, height, width) of those rows
        self._probes: list[Any] = []
        self._hooks: dict[str, Any] = {}  # target name -> the gradient hook on its layer's values
        self._decided = mode == "sparse"

    # --- which targets ------------------------------------------------------------------------
    def candidates(self) -> list[str]:
        """Targets that sparse execution can take now: the weights of plain nn.Linear and 1x1 nn.Conv2d layers
        (one group, no padding), trainable, with a sparse mask."""
        from sparseflow.methods.sparse_linear import conv1d_eligible, conv1x1_eligible

        m = self.method
        seen: dict[int, int] = {}
        for _, q in m.model.named_parameters(remove_duplicate=False):
            seen[id(q)] = seen.get(id(q), 0) + 1
        out = []
        for name, p in m._params.items():
            if name in self.layers or name in self.choices or not name.endswith(".weight") or not p.requires_grad:
                continue
            if seen.get(id(p), 0) > 1:  # tied (a language model's head and its embedding): one tensor, two users
                continue
            module = m.model.get_submodule(name.removesuffix(".weight"))
            eligible = ((type(module) is nn.Linear or conv1d_eligible(module)) and p.dim() == 2) or (
                conv1x1_eligible(module) and p.dim() == 4)
            if eligible and not bool(m._mask[name].all()):
                out.append(name)
        return out

    def start(self) -> None:
        """At prepare: convert (``sparse``) or watch the first forward's rows (``auto``)."""
        if self.mode == "sparse":
            self._convert(self.candidates())
        else:
            self._watch()

    def _watch(self) -> None:
        for name in self.candidates():
            module = self.method.model.get_submodule(name.removesuffix(".weight"))

            def probe(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                if args and isinstance(args[0], Tensor) and mod.training and name not in self._rows:
                    x = args[0]
                    if isinstance(mod, nn.Conv2d) and x.dim() == 4:  # rows: the output positions of the batch
                        (sh, sw), (h, w) = mod.stride, x.shape[2:]
                        fmap = (max(1, x.shape[0]), max(1, -(-h // sh)), max(1, -(-w // sw)))
                        self._maps[name] = fmap
                        self._rows[name] = fmap[0] * fmap[1] * fmap[2]
                    else:
                        self._rows[name] = max(1, x.numel() // max(1, x.shape[-1]))

            self._probes.append(module.register_forward_pre_hook(probe))

    def decide(self, rows: int | None = None) -> None:
        """``auto``: time each candidate layer at ``rows`` (default: the rows of the first training forward)
        and convert those where sparse execution was faster. Called by the first ``step()`` if not before."""
        if self._decided:
            return
        from sparseflow.methods import autotune

        for h in self._probes:
            h.remove()
        self._probes = []
        self._decided = True
        chosen = []
        optimizer = "adamw" if isinstance(self.method._optimizer, torch.optim.Adam | torch.optim.AdamW) else "sgd"
        for name in self.candidates():
            n = rows if rows is not None else self._rows.get(name)
            if n is None:  # the layer took no part in the forward: nothing to gain
                self.choices[name] = {"execution": "dense", "rows": None, "why": "not used in the first forward"}
                continue
            p = self.method._params[name]
            bias = getattr(self.method.model.get_submodule(name.removesuffix(".weight")), "bias", None) is not None
            if p.device.type != "cpu":  # the compiled kernels are CPU kernels; torch's CSR ones are slow elsewhere
                self.choices[name] = {"execution": "dense", "rows": n, "why": f"on {p.device.type}"}
                continue
            mask = self.method._mask[name].cpu()
            fmap = self._maps.get(name) if rows is None and mask.dim() == 4 else None
            times = autotune.decide(mask, n, optimizer=optimizer, bias=bias, feature_map=fmap)
            pick = times["choice"]
            self.choices[name] = {"execution": pick, "rows": n, "dense_s": times["dense"], "sparse_s": times["sparse"]}
            if fmap is not None:
                self.choices[name]["feature_map"] = fmap
            if pick == "sparse":
                chosen.append(name)
        self._convert(chosen)

    @property
    def decided(self) -> bool:
        return self._decided

    def restore_choice(self, names: list[str]) -> None:
        """``auto`` resumed: the layers the first run chose (the optimizer state saved with it has their sizes)."""
        if self.mode != "auto":
            return
        for h in self._probes:
            h.remove()
        self._probes, self._decided = [], True
        unknown = [n for n in names if n not in self.method._params]
        if unknown:
            raise SparseflowError(f"the saved state puts {unknown} in sparse execution, but they are not targets of "
                                  "this method; resume with the same model and targets")
        self.choices.update({n: {"execution": "sparse", "why": "restored"} for n in names})
        self._convert([n for n in names if n not in self.layers])

    # --- conversion ---------------------------------------------------------------------------
    @torch.no_grad()
    def _convert(self, names: list[str]) -> None:
        from sparseflow.methods.sparse_linear import replace_module, sparse_module

        if not names:
            return
        m = self.method
        if m._step > 0 and _distributed():
            raise SparseflowError(
                f"sparse execution cannot convert {names[0]!r} at step {m._step} under torch.distributed: "
                "DistributedDataParallel holds the parameters it was built with. Use execution='sparse' with a "
                "mask that is sparse from prepare (static masks, SET, RigL), or execution='dense'")
        for name in names:
            module = m.model.get_submodule(name.removesuffix(".weight"))
            old = module.weight
            layer = sparse_module(module, m._mask[name])
            self._swap_param(old, layer.values, layer.gather)
            if module.bias is not None:  # keep the bias object itself: the optimizer and its state hold it
                layer.bias = module.bias
            replace_module(m.model, name.removesuffix(".weight"), layer)
            self.layers[name] = layer
            m._params[name] = layer.values
            m._fmask.pop(name, None)
            self._hook(name)
        self.arm()

    def _hook(self, name: str) -> None:
        old = self._hooks.pop(name, None)
        if old is not None:
            old.remove()
        if self.method._hooks_on:
            self._hooks[name] = self.layers[name].values.register_post_accumulate_grad_hook(self._grad_hook(name))

    def _swap_param(self, old: Tensor, new: nn.Parameter, convert: Any) -> None:
        """Put ``new`` where the optimizer had ``old``, its state tensors shaped like ``old`` converted."""
        opt = self.method._optimizer
        if opt is None:
            return
        for group in opt.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        state = opt.state.pop(old, None)
        if state:
            opt.state[new] = {k: convert(v) if isinstance(v, Tensor) and v.shape == old.shape else v
                              for k, v in state.items()}

    def to_dense(self) -> None:
        """Turn every sparse layer back into the ``nn.Linear`` or ``nn.Conv2d`` it stands for (weights and
        optimizer state with zeros outside the mask) and forget them; the method is in dense execution from then
        on."""
        m = self.method
        for h in [*self._hooks.values(), *self._probes]:
            h.remove()
        self._hooks, self._probes = {}, []
        from sparseflow.methods.sparse_linear import replace_module

        for name, layer in self.layers.items():
            lin = layer.to_module()
            if layer.bias is not None:
                lin.bias = layer.bias
            self._swap_param(layer.values, lin.weight, layer.scatter)
            replace_module(m.model, name.removesuffix(".weight"), lin)
            m._params[name] = lin.weight
            if m._hooks_on:
                m._hooks.append(lin.weight.register_post_accumulate_grad_hook(m._make_hook(name)))
        self.layers = {}
        m._refresh_fmask()

    # --- gradients ----------------------------------------------------------------------------
    def _grad_hook(self, name: str) -> Any:
        def hook(_p: Tensor) -> None:
            self.hand_grad(name, reduce=False)
        return hook

    @torch.no_grad()
    def hand_grad(self, name: str, *, reduce: bool) -> None:
        """Give the method what a dense target's gradient hook gives it: the dense gradient when one was
        collected (its kept positions are the accumulated gradient of ``values``), else a notice."""
        layer = self.layers[name]
        dense = layer.take_dense_grad()
        if dense is None:
            self.method._on_sparse_grad(name)
            return
        if reduce:
                dense = _all_reduce_mean(dense)
        if layer.values.grad is not None:  # (out, in), the order of the values
            dense.view(-1).index_copy_(0, layer._structure.flat, layer.values.grad)
        # in the weight's layout ((in, out) for a Conv1D, (out, in, 1, 1) for a 1x1 convolution)
        self.method._on_grad(name, layer._weight_view(dense))

    def arm(self) -> None:
        """Collect the dense gradient in the backward passes before the next step iff the method wants it."""
        want = self.method._wants_dense_grad(self.method._step + 1)
        for layer in self.layers.values():
            layer.collect_dense_grad = want
            if not want:
                layer._dense_grad = None

    def remove_hooks(self) -> None:
        for h in self._hooks.values():
            h.remove()
        self._hooks = {}

    # --- mask changes -------------------------------------------------------------------------
    @contextlib.contextmanager
    def dense_view(self) -> Iterator[None]:
        """Within: the sparse targets are dense Parameters (zeros outside the mask) in ``method._params``. After:
        every layer whose mask changed is rebuilt; kept positions keep value and optimizer state."""
        m = self.method
        if not self.layers:
            yield
            self._after_change()
            return
        before = {n: m._mask[n].clone() for n in self.layers}
        dense = {n: nn.Parameter(layer.dense_weight(), requires_grad=layer.values.requires_grad)
                 for n, layer in self.layers.items()}
        m._params.update(dense)
        try:
            yield
        finally:
            for name, layer in self.layers.items():
                m._params[name] = layer.values
                m._fmask.pop(name, None)
        with torch.no_grad():
            for name, layer in self.layers.items():
                if not torch.equal(m._mask[name], before[name]):
                    self._rebuild(name, layer, m._mask[name], dense[name].detach())
        self._after_change()

    def _rebuild(self, name: str, layer: SparseTrainLinear, mask: Tensor, weight: Tensor) -> None:
        """Layer ``name`` on its new ``mask``: values and optimizer state kept where the mask kept them, zero
        where it grew; a new ``values`` parameter (given to the optimizer) when the count changed."""

        opt, old = self.method._optimizer, layer.values
        state = opt.state.get(old, {}) if opt is not None else {}
        dense_state = {k: layer.scatter(v) for k, v in state.items() if isinstance(v, Tensor) and v.shape == old.shape}
        fmask = mask.to(weight.device, weight.dtype)
        if mask.sum() != old.numel() and _distributed():
            raise SparseflowError(
                f"the mask of {name!r} changed its count of kept weights at step {self.method._step}; sparse execution "
                "under torch.distributed needs fixed per-layer counts (static masks, SET, RigL): use execution='dense'")
        layer.set_mask_(mask.cpu(), weight * fmask)
        new = {k: layer.gather(d * mask.to(d.device, d.dtype)) for k, d in dense_state.items()}
        if layer.values is old:
            for k, v in new.items():
                state[k].copy_(v)
            return
        self._swap_param(old, layer.values, lambda t: t)
        if opt is not None and layer.values in opt.state:
            opt.state[layer.values].update(new)
        self.method._params[name] = layer.values
        self._hook(name)

    def _after_change(self) -> None:
        if self.mode == "sparse":
            self._convert(self.candidates())  # targets whose masks turned sparse (pruning schedules)
        elif self._decided and self.candidates():
            self._decided = False  # auto: time the targets that turned sparse, at the rows seen first
            self.decide()
        self.arm()
