"""Benchmark: wall time of :func:`sparseflow.analysis.connectivity.connectivity` on a large random MLP mask.

The full size is 100M weights (5 layers of 4472 x 4472 at 10 % density, 10M nonzeros); quick is 10M weights
(5 layers of 1414 x 1414). The weights are filled directly from a seeded random mask (no initialisation, no
training), and the analysis reads the structure from the weights, as it does for a trained model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from sparseflow.analysis.connectivity import connectivity

TARGET_S = 30.0
TARGET_WEIGHTS = 100_000_000


@dataclass(frozen=True)
class ConnectivityBench:
    weights: int
    nonzeros: int
    layers: int
    width: int
    density: float
    seconds: float
    threads: int
    effective_sparsity: float

    @property
    def nonzeros_per_s(self) -> float:
        return self.nonzeros / self.seconds


def _random_mlp(width: int, layers: int, density: float, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = []
    for i in range(layers):
        lin = nn.Linear(width, width, device="meta").to_empty(device="cpu")  # skip the default init
        with torch.no_grad():
            lin.weight.copy_(torch.rand(width, width, generator=g) < density)  # 1.0 where kept, else 0.0
            lin.bias.zero_()
        mods += [lin, nn.ReLU()] if i < layers - 1 else [lin]
    return nn.Sequential(*mods)


def bench_connectivity(*, quick: bool = False, density: float = 0.1, layers: int = 5, seed: int = 0) -> ConnectivityBench:
    """Time one :func:`connectivity` call (the model is built before the clock starts)."""
    total = TARGET_WEIGHTS // 10 if quick else TARGET_WEIGHTS
    width = round((total / layers) ** 0.5)
    model = _random_mlp(width, layers, density, seed)
    t0 = time.perf_counter()
    c = connectivity(model)
    seconds = time.perf_counter() - t0
    return ConnectivityBench(c.weights, c.nonzeros, layers, width, density, seconds, torch.get_num_threads(),
                             c.effective_sparsity)


def criteria(b: ConnectivityBench) -> dict[str, dict[str, object]]:
    """Pass when the run scaled to 100M weights (linear cost) takes at most 30 s."""
    scaled = b.seconds * TARGET_WEIGHTS / b.weights
    return {"connectivity of a 100M-weight MLP": {
        "value": round(scaled, 3), "target": f"<= {TARGET_S:g} s for 100M weights"
        + ("" if b.weights >= 0.99 * TARGET_WEIGHTS else f" (measured on {b.weights:,} weights, scaled linearly)"),
        "pass": scaled <= TARGET_S}}
