"""One training step of a single Linear layer, side by side: forward, backward (into the weights and the input)
and an SGD step (momentum 0.9), per layer shape, density, batch and thread count.

Methods, all on random inputs and output gradients of the same cell:

- ``dense``: a plain ``nn.Linear`` (dense training, the baseline of every ratio);
- ``masked``: the same layer under :class:`~sparseflow.FixedMask` (what the sparsity methods cost today);
- ``sparse``: :class:`~sparseflow.methods.sparse_linear.SparseTrainLinear` on the cell's mask;
- ``sparselab``: SparseLab's ``SparseLinear`` at the same density (its own random mask: the public constructor
  draws one), when the package is installed;
- ``auto``: the path :func:`sparseflow.methods.autotune.choose` picks for the cell (its own measurement, timed
  as ``choose_s``), reported at the time this cell measured for that path (``masked`` or ``sparse``).

Times are medians over interleaved rounds (every method once per round, after a warm-up round); a slow cell
runs fewer rounds (:func:`~sparseflow.methods.autotune.interleaved`'s budget). Speedups are dense time / method
time in the same cell. Optimizer state is measured as the bytes of every state tensor after one step.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from sparseflow.methods import autotune
from sparseflow.methods.autotune import Execution

METHODS = ("dense", "masked", "sparse", "sparselab")
SHOWN = ("masked", "sparse", "sparselab", "auto")  # the ratios over dense a cell reports
CELL_BUDGET_S = 10.0  # timed seconds per cell before the rounds are cut (never under 3)
AUTO_PATH = {"dense": "masked", "sparse": "sparse"}  # choose()'s answer -> the method that runs it


@dataclass(frozen=True)
class Cell:
    out: int
    inp: int
    density: float  # asked for
    nnz: int  # kept weights of the drawn mask
    batch: int
    threads: int
    repeats: int  # timed rounds
    ms: dict[str, float | None]  # method -> median ms of one step (None: not available)
    auto: str  # choose()'s answer: "sparse" or "dense" (masked dense)
    choose_s: float  # wall seconds choose() took
    load: float | None = None  # the machine's 1-minute load average after the cell (other work skews it)
    kind: str = "linear"  # "linear", or "conv1x1": a 1x1 convolution over batch images of size x size
    size: int = 0  # conv1x1: the feature map's side

    @property
    def label(self) -> str:
        return f"{self.out}x{self.inp}" + (f" 1x1 conv {self.size}x{self.size}" if self.kind == "conv1x1" else "")

    @property
    def auto_ms(self) -> float:
        return self.ms[AUTO_PATH[self.auto]]  # type: ignore[return-value]

    def speedup(self, method: str) -> float | None:
        t = self.auto_ms if method == "auto" else self.ms.get(method)
        return None if t is None else self.ms["dense"] / t  # type: ignore[operator]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "auto_ms": self.auto_ms, "speedup": {m: self.speedup(m) for m in SHOWN}}


def sparselab_version() -> str | None:
    try:
        import sparselab
    except ImportError:
        return None
    return str(getattr(sparselab, "__version__", "unknown"))


def sparselab_layer(out: int, inp: int, density: float, seed: int) -> nn.Module | None:
    """SparseLab's ``SparseLinear`` at ``density`` (None when the package is not installed); seeded without
    touching the global generator."""
    try:
        import sparselab
    except ImportError:
        return None
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta", from its constructor
        torch.manual_seed(seed)
        return sparselab.SparseLinear(inp, out, bias=True, sparsity=1.0 - density)


def release_sparselab() -> None:
    """Drop SparseLab's cache of transposed matrices (keyed by object id: an id reused by the next cell's
    matrix must not find the previous one's transpose, and the old ones would stay in memory)."""
    try:
        from sparselab import ops
    except ImportError:
        return
    clear = getattr(ops, "_clear_transpose_cache", None)
    if clear is not None:
        clear()


def mask_of(out: int, inp: int, density: float, seed: int) -> torch.Tensor:
    return torch.rand(out, inp, generator=torch.Generator().manual_seed(seed)) < density


def executions(mask: torch.Tensor, dense: Execution, seed: int) -> dict[str, Execution]:
    """Every method's layer and SGD optimizer for ``mask`` (``dense``, shared by the densities of a shape)."""
    out, inp = mask.shape
    ex = {"dense": dense, "masked": autotune.masked_execution(mask), "sparse": autotune.sparse_execution(mask)}
    lab = sparselab_layer(out, inp, int(torch.count_nonzero(mask)) / mask.numel(), seed)
    if lab is not None:
        ex["sparselab"] = Execution(lab, autotune.make_optimizer(lab.parameters(), "sgd"))
    return ex


def dense_execution(out: int, inp: int) -> Execution:
    lin = autotune.dense_linear(out, inp)
    return Execution(lin, autotune.make_optimizer(lin.parameters(), "sgd"))


def layer_cell(ex: dict[str, Execution], mask: torch.Tensor, density: float, batch: int, threads: int, *,
               repeats: int, seed: int = 0, size: int = 0) -> Cell:
    """Time every method of ``ex`` at ``batch`` rows on ``threads`` threads, then run choose() on the mask.

    A 4-D mask ``(out, in, 1, 1)`` is a 1x1 convolution: ``batch`` images of ``size x size``, and choose() is
    asked at that feature map (``batch * size * size`` rows)."""
    torch.set_num_threads(threads)
    out, inp = mask.shape[:2]
    g = torch.Generator().manual_seed(seed + batch)
    conv = mask.dim() == 4
    lead = (batch, size, size) if conv else (batch,)
    x = torch.randn(*lead, inp, generator=g)
    grad_y = torch.randn(*lead, out, generator=g)
    if conv:
        x, grad_y = x.permute(0, 3, 1, 2).contiguous(), grad_y.permute(0, 3, 1, 2).contiguous()
    x.requires_grad_()
    samples = autotune.interleaved({m: e.step(x, grad_y) for m, e in ex.items()}, repeats, budget_s=CELL_BUDGET_S)
    t = time.perf_counter()
    path = (autotune.choose(mask, batch * size * size, threads=threads, feature_map=(batch, size, size)) if conv
            else autotune.choose(mask, batch, threads=threads))
    choose_s = time.perf_counter() - t
    ms = {m: statistics.median(samples[m]) * 1e3 if m in samples else None for m in METHODS}
    nnz = int(torch.count_nonzero(mask))
    return Cell(out, inp, density, nnz, batch, threads, len(samples["dense"]), ms, path, choose_s, os.getloadavg()[0],
                "conv1x1" if conv else "linear", size)


def conv_executions(mask: torch.Tensor) -> dict[str, Execution]:
    """Dense ``nn.Conv2d``, masked and sparse 1x1 convolutions for the 4-D ``mask`` (SparseLab has none)."""
    conv = autotune.dense_conv1x1(*mask.shape[:2])
    return {"dense": Execution(conv, autotune.make_optimizer(conv.parameters(), "sgd")),
            "masked": autotune.masked_execution(mask), "sparse": autotune.sparse_execution(mask)}


# --- optimizer state ------------------------------------------------------------------------------
def state_bytes(model: nn.Module, optimizer: str, in_features: int) -> int:
    """Bytes of every tensor in ``optimizer``'s state for ``model`` after one step (momentum, Adam moments)."""
    opt = autotune.make_optimizer(model.parameters(), optimizer)
    model(torch.randn(1, in_features)).sum().backward()
    opt.step()
    n = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    opt.zero_grad(set_to_none=True)
    return int(n)


def memory_rows(ex: dict[str, Execution], mask: torch.Tensor, density: float,
                dense_bytes: dict[str, int]) -> list[dict[str, Any]]:
    """Optimizer state of the sparse (and SparseLab's) layer against dense, for SGD momentum and AdamW."""
    out, inp = mask.shape
    rows = []
    for name in autotune.OPTIMIZERS:
        sparse = state_bytes(ex["sparse"].model, name, inp)
        lab = state_bytes(ex["sparselab"].model, name, inp) if "sparselab" in ex else None
        d = dense_bytes[name]
        rows.append({"out": out, "inp": inp, "density": density, "optimizer": name, "dense_bytes": d,
                     "sparse_bytes": sparse, "sparselab_bytes": lab, "sparse_ratio": sparse / d,
                     "sparselab_ratio": None if lab is None else lab / d})
    return rows
