"""``sparseflow bench inference``: the grid of layer products and the end-to-end MLP, and their criteria.

The measurements are :mod:`sparseflow.bench.inference.measure`'s; the criteria compare our kernels with dense
F.linear, scipy and themselves on two threads at the cells the goals name (4096 x 4096, one thread, warm).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sparseflow.bench.inference.measure import Cell, backend_name, layer_cell, mlp_rows
from sparseflow.bench.inference.models import CAUSAL, MODELS, ModelRow, model_rows
from sparseflow.errors import SparseflowError
from sparseflow.inference.kernels import ENV_MAX_ISA, Isa, best_isa, hardware_isa
from sparseflow.experiments.protocol import Tick, no_progress
from sparseflow.training.options import check, option


#: The weight shapes (out, in) of a 768-wide transformer's MLP and of a 1024-wide one's: medium layers whose dense
#: weight fits in the L3 cache, so dense is not bound by memory bandwidth there.
TRANSFORMER_SHAPES = ((3072, 768), (768, 3072), (1024, 4096), (4096, 1024))


@dataclass(frozen=True)
class InferenceConfig:
    """Every (threads, layer shape, density, batch) cell, two cold-cache cells and the MLP at batch 1 and 64."""

    repeats: int = option(7, "Timed calls per method and cell; medians are reported.", min=1, quick=5)
    shapes: tuple[tuple[int, int], ...] = option(((4096, 4096), (1024, 4096), (300, 784)), "Layer shapes (out, in).",
                                                 cli=False, quick=((4096, 4096),))
    densities: tuple[float, ...] = option((0.5, 0.2, 0.1, 0.05, 0.02), "Weight densities.", cli=False,
                                          min=0, min_open=True, max=1, quick=(0.1, 0.05))
    batches: tuple[int, ...] = option((1, 16, 256), "Batch sizes.", cli=False, min=1)
    threads: tuple[int, ...] = option((1, 2), "torch thread counts.", cli=False, min=1)
    transformer_layers: bool = option(True, "Time the transformer-sized layers (3072x768, 768x3072, 1024x4096, "
                                      "4096x1024) at 90 % sparsity, batch 1, one thread.", cli=False, quick=False)
    models: tuple[str, ...] = option((), "Also time whole transformers end to end, dense against convert: "
                                     "comma-separated gpt2, bert, llama (GPT-2 small, BERT base and a Llama of the "
                                     "same size, from their configs; needs transformers).", choices=MODELS,
                                     distinct=True, nonempty=False)
    layers: bool = option(True, "Time the layer grid and the MLP (--no-layers: the models only).",
                          flag="--layers/--no-layers")
    tokens: int = option(128, "Prompt length of the model runs (the decode step caches all but the last).", min=2,
                         quick=16)
    model_sparsity: float = option(0.9, "Sparsity of the models' attention and MLP weights.", min=0, max=1,
                                   max_open=True)
    isa: str = option("best", "Widest instruction set our kernels may use: best (this CPU's), avx512, avx2 or "
                      "baseline; e.g. avx2 measures the AVX2 path on an AVX-512 CPU.",
                      choices=("best", "avx512", "avx2", "baseline"))
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)
        hw = hardware_isa()
        if self.isa != "best" and hw is not None and Isa[self.isa.upper()] > hw:
            raise SparseflowError(f"--isa {self.isa}: this CPU runs at most {hw.name.lower()}; pass --isa "
                                  f"{hw.name.lower()} or lower (or best)")
        if not self.layers and not self.models:
            raise SparseflowError("nothing to time: --no-layers leaves only the models, and no --models were named; "
                                  "pass e.g. --models gpt2")


def criteria(cells: list[Cell], cold: list[Cell], mlp: list[dict], models: list[ModelRow] = (),
             quick: bool = False, layers: list[Cell] = ()) -> dict[str, dict[str, Any]]:
    """The goals, each computed from the measured cells (a goal whose cell was not measured is left out)."""
    def find(d: float, b: int, t: int) -> Cell | None:
        return next((c for c in cells if (c.out, c.inp, c.density, c.batch, c.threads) == (4096, 4096, d, b, t)), None)

    out: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float | None, target: str, ok: Callable[[float], bool]) -> None:
        if value is not None:
            out[name] = {"value": float(f"{value:.4g}"), "target": target, "pass": bool(ok(value))}

    for d, b, goal in ((0.1, 1, 4.5), (0.1, 16, 5.0), (0.1, 256, 3.0), (0.05, 1, 9.0)):
        c = find(d, b, 1)
        add(f"4096x4096 {1 - d:.0%} sparse batch {b} 1 thread warm: ours vs dense", c and c.speedup("ours"),
            f">= {goal}x", lambda v, g=goal: v >= g)
    c = find(0.1, 1, 1)
    if c and c.ms.get("scipy_csr"):
        add("4096x4096 90% sparse batch 1 1 thread warm: ours vs scipy", c.ms["scipy_csr"] / c.ms["ours"], ">= 1.7x",
            lambda v: v >= 1.7)
    for b in (16, 256):
        c1, c2 = find(0.1, b, 1), find(0.1, b, 2)
        if c1 and c2:
            add(f"4096x4096 90% sparse batch {b}: 2 threads vs 1 thread (ours)", c1.ms["ours"] / c2.ms["ours"],
                ">= 1.7x", lambda v: v >= 1.7)
    if cells or layers:
        every = list(cells) + list(layers)
        worst = min(every, key=lambda c: min(c.ms["dense_mm"], c.ms["dense_linear"]) / c.ms["ours"])
        add("every cell: ours vs the faster dense (worst cell)",
            min(worst.ms["dense_mm"], worst.ms["dense_linear"]) / worst.ms["ours"], ">= 0.95x", lambda v: v >= 0.95)
    for cell in layers:
        add(f"{cell.out}x{cell.inp} 90% sparse batch 1 1 thread warm: ours vs dense", cell.speedup("ours"), ">= 3x",
            lambda v: v >= 3)
    if mlp:
        add("MLP 784-4096-4096-10 90% ERK: max relative error vs dense", max(r["max_rel_err"] for r in mlp),
            "<= 1e-5", lambda v: v <= 1e-5)
    for r in models:
        if r.model == "gpt2" and r.threads == 1:
            name = f"GPT-2 small 90%: end to end vs dense, 1 x {r.tokens} token{'s' if r.tokens > 1 else ''}, 1 thread"
            add(name, r.speedup, ">= 2x", lambda v: v >= 2)
            if quick:  # the shape the goal names is GPT-2 small; the quick model is 2 layers 128 wide
                out[name] |= {"pass": None, "note": "quick: a 2-layer 128-wide GPT-2, not GPT-2 small; the full "
                                                    "run (--models gpt2) tests it"}
    if models:
        add("whole models: max relative error vs dense", max(r.max_rel_err for r in models), "<= 1e-5",
            lambda v: v <= 1e-5)
    return out


@dataclass(frozen=True)
class InferenceResult:
    config: InferenceConfig
    cells: tuple[Cell, ...]
    cold: tuple[Cell, ...]  # 4096 x 4096, batch 1, one thread, weights read from DRAM
    mlp: tuple[dict[str, Any], ...]
    backend: str
    load_average: tuple[float, float, float]
    models: tuple[ModelRow, ...] = ()
    model_info: tuple[dict[str, Any], ...] = ()
    transformer: tuple[Cell, ...] = ()  # the transformer-sized layers, 90 %, batch 1, one thread
    isa: str | None = None   # the instruction set our kernels used (None: the torch fallback)
    cpu: str = ""            # the CPU's model name

    def criteria(self) -> dict[str, dict[str, Any]]:
        return criteria(list(self.cells), list(self.cold), list(self.mlp), list(self.models), self.config.quick,
                        list(self.transformer))

    def to_json(self) -> dict[str, Any]:
        return {"command": "bench inference", "quick": self.config.quick, "repeats": self.config.repeats,
                "torch": torch.__version__, "backend": self.backend,
                "machine": platform.processor() or platform.machine(), "cpu": self.cpu, "isa": self.isa,
                "hardware_isa": None if hardware_isa() is None else hardware_isa().name,
                "load_average": self.load_average,
                "cells": [vars(c) for c in self.cells], "cold_cells": [vars(c) for c in self.cold],
                "transformer_cells": [vars(c) for c in self.transformer],
                "mlp": list(self.mlp),
                "models": [vars(r) | {"speedup": r.speedup, "bound": r.bound} for r in self.models],
                "model_info": list(self.model_info), "criteria": self.criteria()}


def run(config: InferenceConfig, out: Path | None = None, progress: Tick = no_progress) -> InferenceResult:
    """Time the grid (threads outermost), the cold-cache cells and the MLP, then the whole models; ``out`` is not
    used."""
    c = config
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # scipy's product is single-threaded anyway
    before = os.environ.get(ENV_MAX_ISA)
    if c.isa != "best":
        os.environ[ENV_MAX_ISA] = c.isa
    try:
        return _run(c, progress)
    finally:
        if before is None:
            os.environ.pop(ENV_MAX_ISA, None)
        else:
            os.environ[ENV_MAX_ISA] = before


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run(c: InferenceConfig, progress: Tick) -> InferenceResult:
    grid = len(c.threads) * len(c.shapes) * len(c.densities) * len(c.batches) + 3 if c.layers else 0
    grid += len(TRANSFORMER_SHAPES) if c.layers and c.transformer_layers else 0
    progress("", advance=0, total=grid + sum(len(c.threads) * (2 if CAUSAL[m] else 1) for m in c.models))
    cells, cold, mlp = [], [], []
    if c.layers:
        for t in c.threads:
            for (o, i) in c.shapes:
                for d in c.densities:
                    for b in c.batches:
                        cells.append(layer_cell(o, i, d, b, t, repeats=c.repeats))
                        progress(f"{o}x{i} density {d} batch {b} threads {t}")
        for d in (0.1, 0.05):
            cold.append(layer_cell(4096, 4096, d, 1, 1, repeats=c.repeats, cold=True))
            progress(f"cold cache, density {d}")
        mlp = mlp_rows((1, 64), 1, c.repeats)
        progress("MLP 784-4096-4096-10")
    transformer = []
    if c.layers and c.transformer_layers:
        for (o, i) in TRANSFORMER_SHAPES:
            transformer.append(layer_cell(o, i, 0.1, 1, 1, repeats=c.repeats))
            progress(f"{o}x{i} density 0.1 batch 1 threads 1")
    rows, info = [], []
    for name in c.models:
        r, i = model_rows(name, sparsity=c.model_sparsity, tokens=c.tokens, threads=c.threads, repeats=c.repeats,
                          quick=c.quick, progress=progress)
        rows += r
        info.append(i)
    torch.set_num_threads(os.cpu_count() or 1)
    isa = best_isa()
    return InferenceResult(c, tuple(cells), tuple(cold), tuple(mlp), backend_name(), os.getloadavg(), tuple(rows),
                           tuple(info), tuple(transformer), None if isa is None else isa.name, cpu_model())
