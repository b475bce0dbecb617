"""``convert(model)``: run a sparse model's Linear and Conv2d layers on sparse CPU kernels.

For every supported layer and every batch size in ``batch_sizes`` the candidates are timed on a
random input of that size in the current thread setting (interleaved repeats, minimum): dense
``F.linear``, and the CSR kernels (compiled extension: the instruction sets this CPU runs, at batch 1
the gathered row kernel, above it register tiles of 16 and 32 batch columns; or torch's CSR when the
extension is missing or ``backend=Backend.TORCH``). A sparse kernel is chosen only where it beat
dense in that measurement, so a converted layer is as fast as dense up to timing noise. With
``measure=False`` a cost model decides instead: CSR below ``COST_MODEL_DENSITY``, dense above
(``sparseflow bench inference`` measures where the crossover lies).

Unsupported layers (grouped or string-padded convolutions, Conv1d/Conv3d, non-fp32 or non-CPU
weights) stay as they are; ``convert`` warns and ``inference_report`` lists them with the reason.
Converted models store as their dense-with-zeros form: ``sf.save(path, deconvert(fast))``.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from sparseflow.errors import SparseflowError
from sparseflow.inference.kernels import Backend, CsrWeight, Isa, available_backend, best_isa, csr_from_dense
from sparseflow.inference.kernels.modules import Choice, Kernel, SparseConv2d, SparseLinear

__all__ = ["COST_MODEL_DENSITY", "LayerReport", "convert", "deconvert", "inference_report", "unsupported_reason"]

COST_MODEL_DENSITY = 0.3
DEFAULT_BATCHES = (1, 16, 256)


@dataclass(frozen=True)
class LayerReport:
    name: str
    kind: str            # "Linear", "Conv2d", ...
    density: float | None
    plan: tuple[Choice, ...]  # empty: left as it was
    reason: str          # why it was left dense, or "" when converted


def unsupported_reason(module: nn.Module) -> str | None:
    """Why a layer cannot be converted, or None when it can (Linear and groups=1 Conv2d, fp32, CPU)."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"grouped convolution (groups={module.groups})"
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return f"padding {module.padding!r} / mode {module.padding_mode!r} (only numeric zero padding)"
    elif not isinstance(module, nn.Linear):
        return f"{type(module).__name__} has no sparse kernel"
    w = module.weight
    if w.dtype != torch.float32 or w.device.type != "cpu":
        return f"weight is {w.dtype} on {w.device} (kernels run fp32 on CPU)"
    return None


def _time(fns: list, repeats: int) -> list[float]:
    """Minimum ms of each function over interleaved repeats (one warm-up call each)."""
    for f in fns:
        f()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            best[i] = min(best[i], (time.perf_counter() - t0) * 1e3)
    return best


def _candidates(batch: int, backend: Backend) -> list[tuple[Kernel, Isa | None, int]]:
    if backend is Backend.TORCH:
        return [(Kernel.TORCH_CSR, None, 0)]
    top = best_isa()
    isas = [i for i in (Isa.AVX512, Isa.AVX2, Isa.BASELINE) if i <= top]
    if batch < 2:
        return [(Kernel.CSR, i, 0) for i in isas]
    out = []
    for i in isas[:2]:  # register tiles of 16 and 32 batch columns
        out += [(Kernel.CSR, i, k) for k in (1, 2, 4, 8) if 16 <= k * i.width <= 32]
    return out


def _plan(csr: CsrWeight, w: torch.Tensor, bias: torch.Tensor | None, batches: tuple[int, ...], backend: Backend, measure: bool,
          repeats: int) -> tuple[Choice, ...]:
    density = csr.nnz / max(1, w.numel())
    if not measure or density > 0.7:  # above 70 % density no CSR kernel can win (bytes moved)
        sparse = density <= COST_MODEL_DENSITY
        kern = (Kernel.CSR if backend is Backend.COMPILED else Kernel.TORCH_CSR) if sparse else Kernel.DENSE
        isa = best_isa() if kern is Kernel.CSR else None
        return tuple(Choice(b, kern, isa, 0 if b < 2 or isa is None else max(1, 16 // isa.width)) for b in batches)
    gen = torch.Generator().manual_seed(0)
    plan = []
    for b in batches:
        x = torch.randn(b, w.shape[1], generator=gen)
        cands = _candidates(b, backend)
        # time whole modules, so the per-call overhead of the sparse module counts against it
        fns = [lambda: F.linear(x, w, bias)]
        for kern, isa, tile in cands:
            mod = SparseLinear(csr, bias, (Choice(b, kern, isa, tile),))
            fns.append(lambda mod=mod: mod(x))
        ms = _time(fns, repeats)
        i = min(range(1, len(ms)), key=lambda j: ms[j])
        if ms[i] < ms[0]:
            kern, isa, tile = cands[i - 1]
            plan.append(Choice(b, kern, isa, tile, round(ms[0], 4), round(ms[i], 4)))
        else:
            plan.append(Choice(b, Kernel.DENSE, None, 0, round(ms[0], 4), round(ms[i], 4)))
    return tuple(plan)


def convert(model: nn.Module, *, batch_sizes: Iterable[int] = DEFAULT_BATCHES, backend: Backend | None = None,
            measure: bool = True, repeats: int = 5) -> nn.Module:
    """A copy of ``model`` (in eval mode) whose supported layers run sparse kernels where they win.

    ``batch_sizes``: the batch sizes (rows: batch x pixels for convolutions) to decide at; ``backend``:
    ``Backend.TORCH`` forces torch's CSR even when the compiled kernels exist.
    """
    batches = tuple(sorted({int(b) for b in batch_sizes}))
    if not batches or batches[0] < 1:
        raise SparseflowError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    if repeats < 1:
        raise SparseflowError(f"repeats must be >= 1, got {repeats}")
    if backend is not None and not isinstance(backend, Backend):
        raise SparseflowError(f"backend must be Backend.TORCH, Backend.COMPILED or None, got {backend!r}")
    have = available_backend()
    use = have if backend is None else backend
    if use is Backend.COMPILED and have is not Backend.COMPILED:
        raise SparseflowError("backend=Backend.COMPILED but the compiled kernels are not available here; "
                              "reinstall with a C++ compiler or pass backend=Backend.TORCH")
    out = copy.deepcopy(model).eval()
    skipped = []
    for name, mod in list(out.named_modules()):
        if not isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        reason = unsupported_reason(mod)
        if reason is not None:
            skipped.append(f"{name} ({reason})")
            continue
        w = mod.weight.detach().reshape(mod.weight.shape[0], -1).contiguous()
        csr = csr_from_dense(w)
        with torch.no_grad():
            plan = _plan(csr, w, mod.bias, batches, use, measure, repeats)
        if all(c.kernel is Kernel.DENSE for c in plan):
            continue  # dense wins everywhere: keep the original module
        dense = w if any(c.kernel is Kernel.DENSE for c in plan) else None
        new = SparseLinear(csr, mod.bias, plan, dense)
        if isinstance(mod, nn.Conv2d):
            new = SparseConv2d(mod, new)
        out = _set(out, name, new)
    if skipped:
        warnings.warn("left dense (no sparse kernel): " + "; ".join(skipped), stacklevel=2)
    return out


def _set(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in ``root``; returns the new root (``new`` itself when name is "")."""
    if not name:
        return new
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)
    return root


def _sparse_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, SparseLinear | SparseConv2d), without the SparseLinear inside each SparseConv2d."""
    convs = {n for n, m in model.named_modules() if isinstance(m, SparseConv2d)}
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))
            and not (n.endswith("linear") and n.rpartition(".")[0] in convs)]


def inference_report(model: nn.Module) -> list[LayerReport]:
    """One row per weight layer of a (converted) model: its plan, or why it runs dense."""
    rows = []
    for name, mod in _sparse_layers(model):
        lin = mod.linear if isinstance(mod, SparseConv2d) else mod
        kind = "Conv2d" if isinstance(mod, SparseConv2d) else "Linear"
        rows.append(LayerReport(name, kind, lin.csr.nnz / (lin.in_features * lin.out_features), lin.plan, ""))
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dens = float((mod.weight != 0).float().mean())
            reason = unsupported_reason(mod) or "dense was faster at every measured batch size"
            rows.append(LayerReport(name, type(mod).__name__, dens, (), reason))
    return rows


def deconvert(model: nn.Module) -> nn.Module:
    """A copy with every sparse layer back as nn.Linear / nn.Conv2d (zeros included), e.g. to ``sf.save`` it."""
    out = copy.deepcopy(model)
    for name, mod in _sparse_layers(out):
        lin = mod.linear if isinstance(mod, SparseConv2d) else mod
        if isinstance(mod, SparseConv2d):
            new = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                            mod.dilation, bias=lin.bias is not None)
        else:
            new = nn.Linear(mod.in_features, mod.out_features, bias=lin.bias is not None)
        with torch.no_grad():
            new.weight.copy_(lin.csr.to_dense().reshape(new.weight.shape))
            if lin.bias is not None:
                new.bias.copy_(lin.bias)
        out = _set(out, name, new)
    return out
