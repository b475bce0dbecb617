"""``sparseflow bench connectivity``: wall time of :func:`sparseflow.analysis.connectivity.connectivity` on a
large random MLP mask.

The full size is 100M weights (5 layers of 4472 x 4472 at 10 % density, 10M nonzeros); quick is 10M weights
(5 layers of 1414 x 1414). The weights are filled directly from a seeded random mask (no initialisation, no
training), and the analysis reads the structure from the weights, as it does for a trained model.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseflow.analysis.connectivity import connectivity
from sparseflow.bench import result_writer
from sparseflow.experiments.protocol import Experiment, TableData, Tick, no_progress
from sparseflow.training.options import check, option

TARGET_S = 30.0
TARGET_WEIGHTS = 100_000_000


@dataclass(frozen=True)
class ConnectivityConfig:
    """A random MLP mask of ``weights`` weights in ``layers`` square layers at ``density``."""

    threads: int | None = option(None, "torch.set_num_threads (default: all cores).", min=1)
    weights: int = option(TARGET_WEIGHTS, "Weights of the MLP.", cli=False, min=1, quick=TARGET_WEIGHTS // 10)
    density: float = option(0.1, "Density of the random mask.", cli=False, min=0, min_open=True, max=1)
    layers: int = option(5, "Square Linear layers.", cli=False, min=1)
    seed: int = option(0, "Seed of the random mask.", cli=False)

    def __post_init__(self) -> None:
        check(self)


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

    def criteria(self) -> dict[str, dict[str, object]]:
        """Pass when the run scaled to 100M weights (linear cost) takes at most 30 s."""
        scaled = self.seconds * TARGET_WEIGHTS / self.weights
        return {"connectivity of a 100M-weight MLP": {
            "value": round(scaled, 3), "target": f"<= {TARGET_S:g} s for 100M weights"
            + ("" if self.weights >= 0.99 * TARGET_WEIGHTS
               else f" (measured on {self.weights:,} weights, scaled linearly)"),
            "pass": scaled <= TARGET_S}}

    def to_json(self) -> dict[str, Any]:
        return {"command": "bench connectivity", **asdict(self), "nonzeros_per_s": self.nonzeros_per_s,
                "torch": torch.__version__, "criteria": self.criteria()}


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


def run(config: ConnectivityConfig, out: Path | None = None, progress: Tick = no_progress) -> ConnectivityBench:
    """Time one :func:`connectivity` call (the model is built before the clock starts). ``out`` is not used."""
    torch.set_num_threads(config.threads if config.threads is not None else (os.cpu_count() or 1))
    progress("building the random mask", advance=0)
    width = round((config.weights / config.layers) ** 0.5)
    model = _random_mlp(width, config.layers, config.density, config.seed)
    progress("analysing it", advance=0)
    t0 = time.perf_counter()
    c = connectivity(model)
    seconds = time.perf_counter() - t0
    return ConnectivityBench(c.weights, c.nonzeros, config.layers, width, config.density, seconds,
                             torch.get_num_threads(), c.effective_sparsity)


def tables(b: ConnectivityBench) -> list[TableData]:
    return [TableData(f"connectivity of a {b.layers} x {b.width}x{b.width} MLP, torch {torch.__version__}",
                      ("weights", "nonzeros", "density", "seconds", "nonzeros/s", "threads"),
                      [(f"{b.weights:,}", f"{b.nonzeros:,}", f"{b.density:g}", f"{b.seconds:.2f}",
                        f"{b.nonzeros_per_s:,.0f}", b.threads)])]


BENCHMARK = Experiment(
    "connectivity", "connectivity analysis of a 100M-weight mask", ConnectivityConfig, run,
    result_writer("bench-connectivity"), tables=tables,
    doc="Time the connectivity analysis of a random MLP mask of 100M weights (quick: 10M) at 10 % density.")
