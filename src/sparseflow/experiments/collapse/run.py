"""Layer collapse of pruning at initialisation (Tanaka et al. 2020, "Pruning neural networks without any
data by iteratively conserving synaptic flow", Fig. 1).

A mask *collapses* the network when no input-output path survives: every path crosses a pruned weight, so
the output no longer depends on the input and the network cannot be trained. Tanaka et al. show that
single-shot saliency methods (magnitude, SNIP, GraSP) prune whole layers long before the largest
compression at which some path could remain, while iterative SynFlow reaches it.

Setting (a stand-in for their VGG-16 on CIFAR, which we do not have): a deep ReLU MLP (10 hidden layers of
100, PyTorch's default initialisation, untrained) on 8x8 scikit-learn digits, whose real data batch
(10 examples per class) feeds SNIP and GraSP. Sparsities form a geometric grid of compression ratios
10^0.5 ... 10^4 (kept fraction = 1 / compression). For every method and seed the grid is scanned upwards:
the *collapse sparsity* is the first at which no path is left, and the *largest non-empty sparsity* the
last before some layer keeps no weight at all (the library refuses such masks with a MaskError; beyond
the first one the scan stops, assuming that higher sparsities are no better).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from sparseflow.distributions import GLOBAL, uniform
from sparseflow.errors import MaskError, SparseflowError
from sparseflow.experiments.collapse.config import CollapseConfig
from sparseflow.experiments.protocol import Tick, no_progress
from sparseflow.methods import SNIP, GraSP, MagnitudePruning, Method, RandomSparse, SynFlow
from sparseflow.targets import prunable
from sparseflow.training.data import load_dataset
from sparseflow.training.models import build_model


def has_path(masks: Sequence[Tensor]) -> bool:
    """Whether some input reaches some output through the kept weights of consecutive layers.

    ``masks`` are boolean masks in forward order, Linear ``(out, in)`` or convolution ``(out, in, *kernel)``.
    A unit (or channel) is reached when a kept weight joins it to a reached unit of the layer before (a
    convolution channel when any kept kernel weight does: positions are not tracked, so for convnets this
    is an upper bound). When a layer reads a flattened feature map (its ``in`` is a multiple of the previous
    ``out``), channel c feeds inputs ``c*k ... c*k + k - 1``, as ``torch.flatten`` orders them.
    For an MLP this is "the boolean product of the masks is not all zero".
    """
    reached: Tensor | None = None
    for i, m in enumerate(masks):
        adj = m.reshape(m.shape[0], m.shape[1], -1).any(-1) if m.dim() > 2 else m.bool()  # (out, in)
        if reached is None:
            reached = torch.ones(adj.shape[1], dtype=torch.bool, device=adj.device)
        elif adj.shape[1] != reached.numel():
            if adj.shape[1] % reached.numel():
                raise SparseflowError(
                    f"mask {i} reads {adj.shape[1]} inputs, which do not chain to the {reached.numel()} "
                    "outputs of the mask before it; pass the masks of a sequential model in forward order"
                )
            reached = reached.repeat_interleave(adj.shape[1] // reached.numel())
        reached = adj[:, reached].any(1)
    return reached is not None and bool(reached.any())


@dataclass(frozen=True)
class Probe:
    """One method at one sparsity: does every layer keep a weight, and does an input-output path survive."""

    sparsity: float
    nonempty: bool
    connected: bool


def probe(method_factory: Callable[[float], Method], model_factory: Callable[[], nn.Module], sparsity: float) -> Probe:
    """Prune a fresh model with ``method_factory(sparsity)`` in ``prepare`` and check its connectivity."""
    model = model_factory()
    method = method_factory(sparsity)
    try:
        method.prepare(model)
    except MaskError as e:
        if "would keep no weights" not in str(e):
            raise
        return Probe(sparsity, nonempty=False, connected=False)
    # Every Linear/Conv weight in forward order; layers the method does not target count as dense.
    masks = [method.mask[n] if n in method.mask else torch.ones_like(p, dtype=torch.bool) for n, p in prunable(model).items()]
    nonempty = all(bool(m.any()) for m in masks)
    return Probe(sparsity, nonempty=nonempty, connected=nonempty and has_path(masks))


def collapse_sparsity(
    method_factory: Callable[[float], Method], model_factory: Callable[[], nn.Module], *, sparsities: Sequence[float]
) -> float | None:
    """The smallest of ``sparsities`` at which the method's mask leaves no input-output path (None: never)."""
    for s in sorted(set(sparsities)):
        if not probe(method_factory, model_factory, s).connected:
            return s
    return None


def compression_grid(step: float = 0.25, top: float = 4.0) -> tuple[float, ...]:
    """Sparsities 1 - 10^-c for log10 compression c = step, 2 step, ... up to ``top`` (from 10^0.5)."""
    n = round(top / step)
    return tuple(1 - 10 ** (-k * step) for k in range(1, n + 1) if k * step >= 0.5 - 1e-9)


@dataclass(frozen=True)
class CollapseRow:
    method: str
    seed: int
    collapse: float | None  # first grid sparsity with no input-output path
    largest_nonempty: float | None  # last grid sparsity before a layer is emptied


@dataclass(frozen=True)
class CollapseTable:
    rows: tuple[CollapseRow, ...]
    grid: tuple[float, ...]
    setting: str
    quick: bool = False

    def summary(self) -> dict[str, tuple[float | None, float | None]]:
        """Per method: (median collapse sparsity, median largest non-empty sparsity) over seeds."""
        out: dict[str, tuple[float | None, float | None]] = {}
        for name in dict.fromkeys(r.method for r in self.rows):
            rows = [r for r in self.rows if r.method == name]
            out[name] = (_median([r.collapse for r in rows]), _median([r.largest_nonempty for r in rows]))
        return out

    def criteria(self) -> dict[str, dict]:
        """SynFlow's median collapse sparsity above global magnitude's (Tanaka et al. 2020, Fig. 1)."""
        summary = self.summary()
        if "synflow" not in summary or "magnitude" not in summary:
            return {}
        syn, mag = summary["synflow"][0], summary["magnitude"][0]
        later = mag is not None and (syn is None or syn > mag)
        return {"SynFlow collapses later than magnitude": {
            "value": {"SynFlow": syn, "magnitude": mag}, "target": "SynFlow > magnitude (Tanaka et al. 2020)",
            "pass": later}}

    def to_json(self) -> dict:
        out = {"command": "experiment collapse", "setting": self.setting, "quick": self.quick, "grid": list(self.grid),
               "summary": {k: {"collapse": c, "largest_nonempty": e} for k, (c, e) in self.summary().items()},
               "rows": [r.__dict__ for r in self.rows]}
        crit = self.criteria()
        return {**out, "criteria": crit} if crit else out

    def markdown(self) -> str:
        from sparseflow.training.report import md_table

        def fmt(s: float | None) -> str:
            return "none on grid" if s is None else f"{s:.5f} (10^{-math.log10(1 - s):.2f})"

        body = [[name, fmt(c), fmt(e)] for name, (c, e) in self.summary().items()]
        header = ["method", "collapse sparsity (compression)", "largest non-empty sparsity (compression)"]
        return f"{self.setting}\n\n{md_table(header, body)}\n"


def _median(values: list[float | None]) -> float | None:
    # None (never collapsed on the grid) ranks above every sparsity.
    ranked = sorted(values, key=lambda v: math.inf if v is None else v)
    return ranked[(len(ranked) - 1) // 2]  # lower median: a grid value, never an average


def _scan(
    method_factory: Callable[[float], Method], model_factory: Callable[[], nn.Module], grid: Sequence[float]
) -> tuple[float | None, float | None]:
    """(first sparsity without a path, last sparsity before a layer is emptied), scanning ``grid`` upwards."""
    collapse = nonempty = None
    for s in grid:
        p = probe(method_factory, model_factory, s)
        if not p.connected and collapse is None:
            collapse = s
        if not p.nonempty:
            break
        nonempty = s
    return collapse, nonempty


def run(config: CollapseConfig, out: Path | None = None, progress: Tick = no_progress) -> CollapseTable:
    """Collapse and largest non-empty sparsity of magnitude (global, at init), random, SNIP, GraSP and SynFlow.

    The quick run uses a coarser grid (steps of 10^0.5) and two seeds (seconds on a CPU); the full setting
    steps by 10^0.25 with five seeds. Runs with one torch thread (restored afterwards): on 100 x 100 weights
    thread synchronisation costs more than it saves (quick, one seed, loaded 2-core machine: 4.4 s with one
    thread, 11.2 s with two). ``out`` is not used: the run keeps no partial results.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _collapse_table(config, progress)
    finally:
        torch.set_num_threads(threads)


def _collapse_table(config: CollapseConfig, progress: Tick) -> CollapseTable:
    seeds, depth, width = tuple(range(config.seeds)), config.depth, config.width
    grid = compression_grid(config.grid_step)
    ds = load_dataset("digits")
    per_class = [torch.nonzero(ds.y_train == c).squeeze(1)[:10] for c in range(ds.num_classes)]
    idx = torch.cat(per_class)
    batch = (ds.x_train[idx], ds.y_train[idx])
    methods: dict[str, Callable[[float, int], Method]] = {
        "magnitude": lambda s, seed: MagnitudePruning(s, distribution=GLOBAL),
        "random": lambda s, seed: RandomSparse(s, distribution=uniform, seed=seed),
        "snip": lambda s, seed: SNIP(s, data=batch),
        "grasp": lambda s, seed: GraSP(s, data=batch),
        "synflow": lambda s, seed: SynFlow(s),
    }
    progress("", advance=0, total=len(methods) * len(seeds))
    rows = []
    for name, make in methods.items():
        for seed in seeds:
            model = lambda seed=seed: build_model("mlp", ds.input_shape, ds.num_classes, hidden=(width,) * depth, seed=seed)
            collapse, nonempty = _scan(lambda s, make=make, seed=seed: make(s, seed), model, grid)
            rows.append(CollapseRow(name, seed, collapse, nonempty))
            progress(f"{name}, seed {seed}")
    n_weights = sum(p.numel() for p in prunable(build_model("mlp", ds.input_shape, ds.num_classes, hidden=(width,) * depth)).values())
    setting = (
        f"Layer collapse at initialisation: MLP {depth} x {width} (ReLU, PyTorch default init) on 8x8 digits, "
        f"SNIP/GraSP on 100 digits (10 per class), seeds {list(seeds)}, grid of {len(grid)} compressions "
        f"10^{-math.log10(1 - grid[0]):.2f} ... 10^{-math.log10(1 - grid[-1]):.2f}; medians over seeds. "
        f"A path needs one weight per layer: {depth + 1} of {n_weights}, so no mask can be connected beyond "
        f"compression 10^{math.log10(n_weights / (depth + 1)):.2f}."
    )
    return CollapseTable(tuple(rows), tuple(grid), setting, config.quick)
