"""The grid of the methods experiment: the methods, the plan one run trains (:class:`ComparisonConfig`), the
record of each trained network and IMP's mask (the experiment: :mod:`sparseflow.experiments.methods.run`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparseflow.bench.methods import VARIANTS
from sparseflow.distributions import allocate, kept_total, uniform
from sparseflow.errors import SparseflowError
from sparseflow.experiments.methods.config import DATASETS, MethodsConfig, Setting
from sparseflow.lottery.prune import next_mask
from sparseflow.mask import Mask

IMP = "IMP"
IMP_FIRST = (0.5,)  # IMP's levels below the grid: 1 -> 0.5 -> 0.8 -> ... halves the density or more per level
# (label, sparseflow.training.job method name, distribution or None for the method's default), display order.
GRID: tuple[tuple[str, str, str | None], ...] = (
    *(v for v in VARIANTS if v[0] in ("magnitude + fine-tune", "GMP")),
    ("static ER", "random", "er"),
    *(v for v in VARIANTS if v[0] in ("static ERK", "SNIP", "SynFlow", "SET", "RigL")),
)
LABELS = ("magnitude + fine-tune", "GMP", IMP, "static ER", "static ERK", "SNIP", "SynFlow", "SET", "RigL")
FAMILY = {"magnitude + fine-tune": "dense-to-sparse", "GMP": "dense-to-sparse", IMP: "dense-to-sparse",
          "static ER": "from scratch", "static ERK": "from scratch", "SNIP": "from scratch",
          "SynFlow": "from scratch", "SET": "dynamic", "RigL": "dynamic",
          "SET 2x": "dynamic", "SET 5x": "dynamic", "RigL 2x": "dynamic", "RigL 5x": "dynamic",
          "dense": "dense", "dense 2x": "dense"}
# --budget long (label, method, distribution, budget multiple), display order: the RigL paper's five methods at
# the dataset's budget, and RigL and SET at 2x and 5x it (its extended-training table).
LONG_GRID: tuple[tuple[str, str, str | None, int], ...] = (
    ("GMP", "gmp", None, 1), ("static ERK", "random", "erk", 1), ("SNIP", "snip", None, 1),
    ("SET", "set", None, 1), ("SET 2x", "set", None, 2), ("SET 5x", "set", None, 5),
    ("RigL", "rigl", None, 1), ("RigL 2x", "rigl", None, 2), ("RigL 5x", "rigl", None, 5),
)
# Dense runs (label, budget multiple) per seed; dense at 2x tells whether the budget has converged.
DENSE = {"short": (("dense", 1),), "long": (("dense", 1), ("dense 2x", 2))}


@dataclass(frozen=True)
class ComparisonConfig:
    """The plan of one run: each dataset's setting and folder, the sparsities, the seeds and the worker count
    (built from a :class:`~sparseflow.experiments.methods.config.MethodsConfig` by :meth:`of`)."""

    quick: bool
    settings: tuple[Setting, ...]
    sparsities: tuple[float, ...]
    seeds: tuple[int, ...]
    data_dirs: tuple[tuple[str, str], ...] = ()  # (dataset, folder holding its four IDX files)
    workers: int = 2
    budget: str = "short"  # "long": LONG_GRID and dense at 1x and 2x, no IMP

    @classmethod
    def of(cls, config: MethodsConfig, names: tuple[str, ...] = DATASETS, data_dirs: tuple[tuple[str, str], ...] = (),
           workers: int = 2) -> ComparisonConfig:
        """The plan of ``config`` on the datasets ``names`` read from ``data_dirs``."""
        return cls(quick=config.quick, settings=config.settings(names), sparsities=config.levels(),
                   seeds=tuple(range(config.seeds)), data_dirs=data_dirs, workers=workers, budget=config.budget)

    @property
    def long(self) -> bool:
        return self.budget == "long"

    def grid(self) -> tuple[tuple[str, str, str | None, int], ...]:
        """(label, method, distribution, budget multiple) of every sparse run per sparsity and seed (IMP apart)."""
        return LONG_GRID if self.long else tuple((*g, 1) for g in GRID)

    def labels(self) -> tuple[str, ...]:
        """The sparse methods in display order (IMP included in the short budget)."""
        return tuple(g[0] for g in LONG_GRID) if self.long else LABELS

    def dense(self) -> tuple[tuple[str, int], ...]:
        """(label, budget multiple) of each dense run per seed."""
        return DENSE[self.budget]

    def multiple(self, label: str) -> int:
        """Budget multiple of a label's runs (IMP: 1 per level)."""
        return {**{g[0]: g[3] for g in self.grid()}, **dict(self.dense())}.get(label, 1)

    def check(self) -> None:
        """What the options cannot check alone: a dataset to run, each setting's budget, each dataset's folder."""
        if not self.settings:
            raise SparseflowError("no dataset to run: pass at least one of mnist, fashion-mnist")
        for s in self.settings:
            s.check()
            if s.dataset not in dict(self.data_dirs):
                raise SparseflowError(f"{s.dataset} is read from files: pass the folder holding its four IDX .gz "
                                      f"files (--data-dir with a {s.dataset}/ subfolder, or --{s.dataset.split('-')[0]}-dir)")

    def imp_levels(self) -> tuple[float, ...]:
        if self.long:
            return ()
        return tuple(sorted({*(s for s in IMP_FIRST if s < min(self.sparsities)), *self.sparsities}))

    def units(self) -> int:
        """Training runs (a progress bar's total)."""
        per_seed = len(self.grid()) * len(self.sparsities) + len(self.dense()) + len(self.imp_levels())
        return len(self.settings) * len(self.seeds) * per_seed

    def estimate_s(self) -> float:
        budgets = (sum(g[3] for g in self.grid()) * len(self.sparsities) + sum(m for _, m in self.dense())
                   + len(self.imp_levels()))
        work = sum(s.seconds_per_run() * budgets * len(self.seeds) for s in self.settings)
        return work / min(self.workers, os.cpu_count() or 1)


@dataclass(frozen=True)
class RunRecord:
    """One trained network."""

    dataset: str
    method: str  # a label of LABELS, or "dense"
    sparsity: float  # target, over the pruned layers
    seed: int
    accuracy: float  # test accuracy after the last step
    measured_sparsity: float  # zeros among the pruned layers' weights, counted after training
    pruned_weights: int  # N: weights of the pruned layers
    steps: int  # optimizer steps of this run (of this level, for IMP)
    budgets: int  # training budgets spent to get this network (IMP: levels so far + 1)
    wall_s: float


def imp_mask(mask: Mask, weights: Mapping[str, torch.Tensor], sparsity: float) -> Mask:
    """IMP's next mask: keep the largest |w| of each layer at uniform density ``1 - sparsity`` (exact total,
    :func:`sparseflow.distributions.allocate`), among the weights ``mask`` keeps."""
    shapes = {n: tuple(mask[n].shape) for n in mask}
    units = {n: mask[n].numel() for n in mask}
    total = kept_total(sum(units.values()), sparsity)
    counts = allocate(units, uniform(shapes, sparsity), total, limit=mask.counts())
    return next_mask(mask, dict(weights), counts)


def config_json(cfg: ComparisonConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["data_dirs"] = {k: str(Path(v)) for k, v in cfg.data_dirs}
    d["imp_levels"] = list(cfg.imp_levels())
    d["steps"] = {s.dataset: s.steps() for s in cfg.settings}
    return d


def config_from_json(d: Mapping[str, Any]) -> ComparisonConfig:
    """The inverse of :func:`config_json` (to rebuild a report from a run's results.json)."""
    return ComparisonConfig(quick=bool(d["quick"]), settings=tuple(Setting(**x) for x in d["settings"]),
                            sparsities=tuple(d["sparsities"]), seeds=tuple(d["seeds"]),
                            data_dirs=tuple(d["data_dirs"].items()), workers=int(d["workers"]),
                            budget=d.get("budget", "short"))
