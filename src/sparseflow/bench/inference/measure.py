"""Sparse inference side by side: dense torch.mm / F.linear, torch CSR (int32), scipy CSR, sparselab,
and ``convert``'s layers (compiled kernels, or the torch fallback), per layer shape, density, batch
size and thread count, with the bytes-moved bound; plus an end-to-end MLP 784-4096-4096-10 at 90 % ERK.

Speedups are dense F.linear time / method time in the same run (interleaved repeats, median).
Warm cache: repeated calls on the same data. Cold cache: a 256 MB buffer is written before each call,
so the weights come from DRAM. The bytes-moved bound is (dense weight + x + y bytes) / (CSR bytes + x
+ y bytes) for the index width used: the speedup a bandwidth-bound batch-1 product can reach.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparseflow.distributions import erk
from sparseflow.inference.convert import convert
from sparseflow.inference.kernels import available_backend, csr_from_dense

METHODS = ("dense_mm", "dense_linear", "torch_csr32", "scipy_csr", "sparselab", "ours")


@dataclass(frozen=True)
class Cell:
    out: int
    inp: int
    density: float
    batch: int
    threads: int
    ms: dict[str, float | None]   # method -> median ms (None: not available)
    bound: float                  # bytes-moved bound of our format
    plan: str                     # what convert chose for this cell

    def speedup(self, method: str) -> float | None:
        t = self.ms.get(method)
        return None if t is None else self.ms["dense_linear"] / t


def _timed(fns: dict[str, Callable[[], object]], repeats: int, cold: bool) -> dict[str, float]:
    """Median ms per method. Warm: each method's calls back to back (its data stays in cache);
    cold: a 256 MB buffer is written before every call, so every call reads its data from DRAM."""
    flush = torch.empty(64 * 2**20) if cold else None
    out = {}
    for k, f in fns.items():
        f()
        times = []
        for _ in range(repeats):
            if flush is not None:
                flush.fill_(1.0)
            t0 = time.perf_counter()
            f()
            times.append((time.perf_counter() - t0) * 1e3)
        out[k] = statistics.median(times)
    return out


def _weight(out: int, inp: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    w[torch.rand(out, inp, generator=g) >= density] = 0
    return w


def layer_cell(out: int, inp: int, density: float, batch: int, threads: int, *, repeats: int, cold: bool = False,
               seed: int = 0) -> Cell:
    torch.set_num_threads(threads)
    w = _weight(out, inp, density, seed)
    x = torch.randn(batch, inp, generator=torch.Generator().manual_seed(seed + 1))
    lin = nn.Linear(inp, out, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    ours = convert(lin, batch_sizes=(batch,), repeats=3)
    csr32 = csr_from_dense(w, index_bits=32).torch_csr()
    xt = x.t().contiguous()
    fns: dict[str, Callable[[], object]] = {
        "dense_mm": lambda: torch.mm(x, w.t()),
        "dense_linear": lambda: F.linear(x, w),
        "torch_csr32": lambda: torch.mm(csr32, xt),
    }
    try:
        import scipy.sparse as sp
        s, xn = sp.csr_matrix(w.numpy()), xt.numpy()
        s.indices = s.indices.astype("int32")
        fns["scipy_csr"] = lambda: s @ xn
    except ImportError:
        pass
    try:
        import sparselab
        from sparselab.layout import from_dense
        pl = from_dense(w)
        fns["sparselab"] = lambda: sparselab.spmm(pl, xt)
    except Exception:  # noqa: BLE001 - optional comparison: absent or unusable here
        pass
    with torch.inference_mode():
        fns["ours"] = lambda: ours(x)
        ms = _timed(fns, repeats, cold)
    nnz = int((w != 0).sum())
    idx = 2 if inp <= 2**16 else 4
    io = (batch * inp + batch * out) * 4
    bound = (out * inp * 4 + io) / (nnz * (4 + idx) + (out + 1) * 4 + io)
    lin_mod = getattr(ours, "plan", None)
    plan = "dense" if lin_mod is None else " ".join(c.label for c in lin_mod)
    return Cell(out, inp, density, batch, threads, {m: ms.get(m) for m in METHODS}, round(bound, 3), plan)


def erk_mlp(seed: int = 0) -> nn.Sequential:
    """784-4096-4096-10 at 90 % sparsity with ERK densities, random masks."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10))
    shapes = {f"{i}.weight": tuple(model[i].weight.shape) for i in (0, 2, 4)}
    dens = erk(shapes, 0.9)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, d in dens.items():
            wt = model.get_parameter(name)
            wt[torch.rand(wt.shape, generator=g) >= d] = 0
    return model.eval()


def mlp_rows(batches: tuple[int, ...], threads: int, repeats: int) -> list[dict]:
    torch.set_num_threads(threads)
    model = erk_mlp()
    fast = convert(model, batch_sizes=batches, repeats=3)
    rows = []
    for b in batches:
        x = torch.randn(b, 784)
        with torch.inference_mode():
            err = float((fast(x) - model(x)).abs().max() / model(x).abs().max().clamp_min(1e-12))
            ms = _timed({"dense": lambda: model(x), "ours": lambda: fast(x)}, repeats, cold=False)
        rows.append({"batch": b, "threads": threads, "dense_ms": ms["dense"], "ours_ms": ms["ours"],
                     "speedup": ms["dense"] / ms["ours"], "max_rel_err": err})
    return rows


def backend_name() -> str:
    from sparseflow.inference.kernels import best_isa
    be = available_backend()
    return be.value + ("" if best_isa() is None or be.value == "torch" else f" (ISA {best_isa().name})")
