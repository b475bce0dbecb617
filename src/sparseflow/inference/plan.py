"""Which kernel runs a sparse weight at each batch size: measured, or a cost model.

For every batch size in ``batch_sizes`` the candidates are timed on a random input of that size in the
current thread setting (interleaved repeats, minimum): dense ``F.linear``, and the CSR kernels (compiled
extension: the instruction sets this CPU runs, at batch 1 the gathered row kernel and the SELL-8 kernel with
x fetched by the gather instruction or by scalar loads, above it register tiles of 16 and 32 batch columns; or
torch's CSR when the extension is missing or ``Backend.TORCH`` is asked for).
A sparse kernel is chosen only where it beat dense in that measurement. With ``measure=False`` (and above
70 % density, where no CSR kernel can win on bytes moved) a cost model decides instead: CSR at density
<= ``COST_MODEL_DENSITY``, dense above (``sparseflow bench inference`` measures where the crossover lies).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparseflow.inference.kernels import Backend, CsrWeight, Isa, best_isa, sell_from_csr
from sparseflow.inference.kernels.modules import Choice, Kernel, SparseLinear

__all__ = ["COST_MODEL_DENSITY", "DEFAULT_BATCHES", "Planner"]

COST_MODEL_DENSITY = 0.3
MEASURE_MAX_DENSITY = 0.7
DEFAULT_BATCHES = (1, 16, 256)


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
        sell = [(Kernel.SELL, Isa.AVX2, 1), (Kernel.SELL, Isa.AVX2, 0)] if top >= Isa.AVX2 else [(Kernel.SELL, top, 1)]
        return [(Kernel.CSR, i, 0) for i in isas] + sell
    out = []
    for i in isas[:2]:  # register tiles of 16 and 32 batch columns (the baseline's widest: 8)
        out += [(Kernel.CSR, i, k) for k in (1, 2, 4, 8) if 16 <= k * i.width <= 32] or [(Kernel.CSR, i, 8)]
    return out


@dataclass(frozen=True)
class Planner:
    """``convert``'s settings: the batch sizes to decide at, the backend, measured or cost-model plans."""

    batches: tuple[int, ...]
    backend: Backend
    measure: bool = True
    repeats: int = 5

    def plan(self, csr: CsrWeight, w: torch.Tensor, bias: torch.Tensor | None) -> tuple[Choice, ...]:
        """One Choice per batch size for ``x @ w.T + bias`` (w [out, in] dense, ``csr`` the same matrix)."""
        density = csr.nnz / max(1, w.numel())
        if not self.measure or density > MEASURE_MAX_DENSITY:
            sparse = density <= COST_MODEL_DENSITY
            kern = (Kernel.CSR if self.backend is Backend.COMPILED else Kernel.TORCH_CSR) if sparse else Kernel.DENSE
            isa = best_isa() if kern is Kernel.CSR else None
            return tuple(Choice(b, kern, isa, 0 if b < 2 or isa is None else max(1, 16 // isa.width))
                         for b in self.batches)
        gen = torch.Generator().manual_seed(0)
        plan = []
        sell = None
        for b in self.batches:
            x = torch.randn(b, w.shape[1], generator=gen)
            cands = _candidates(b, self.backend)
            # time whole modules, so the per-call overhead of the sparse module counts against it
            fns = [lambda: F.linear(x, w, bias)]
            for kern, isa, tile in cands:
                if kern is Kernel.SELL and sell is None:
                    sell = sell_from_csr(csr)
                mod = SparseLinear(csr, bias, (Choice(b, kern, isa, tile),), sell=sell)
                fns.append(lambda mod=mod: mod(x))
            ms = _time(fns, self.repeats)
            i = min(range(1, len(ms)), key=lambda j: ms[j])
            if ms[i] < ms[0]:
                kern, isa, tile = cands[i - 1]
                plan.append(Choice(b, kern, isa, tile, round(ms[0], 4), round(ms[i], 4)))
            else:
                plan.append(Choice(b, Kernel.DENSE, None, 0, round(ms[0], 4), round(ms[i], 4)))
        return tuple(plan)

    @staticmethod
    def dense_reason(plan: tuple[Choice, ...], density: float) -> str:
        """Why a weight whose plan is dense at every batch size stays dense."""
        if all(c.dense_ms is None for c in plan):
            return f"density {density:.2f} above the threshold {COST_MODEL_DENSITY} (cost model, not measured)"
        times = ", ".join(f"B={c.batch}: {c.dense_ms} vs {c.sparse_ms} ms" for c in plan)
        return f"density {density:.2f}: dense was faster at every measured batch size ({times})"
