"""``sparseflow experiment methods``: dense-to-sparse vs sparse-from-scratch vs dynamic sparse training on one
training budget per dataset, and how their ordering compares with the literature's.

Methods (labels as in ``sparseflow bench methods``; each with the layer densities of its paper):

* dense-to-sparse: one-shot magnitude pruning at mid-training, then fine-tuning (Han et al. 2015), gradual
  magnitude pruning (GMP, Zhu & Gupta 2017), both uniform; iterative magnitude pruning (IMP, Frankle &
  Carbin 2019) with learning-rate rewinding (Renda et al. 2020), uniform;
* sparse from scratch: static random masks with ER or ERK densities (Mocanu et al. 2018; Evci et al. 2020),
  SNIP (Lee et al. 2019) and SynFlow (Tanaka et al. 2020), global;
* dynamic: SET (Mocanu et al. 2018) and RigL (Evci et al. 2020), ERK.

Equal budget: at one dataset every run takes the same number of optimizer steps with the same optimizer,
cosine learning-rate schedule, batch size, and per seed the same initialisation, data order and training
subset; each method derives its schedule from that number (:func:`sparseflow.training.build.build_method`).
IMP, per seed: level 0 is the dense run; level i prunes level i-1's trained weights layer-wise to the next
sparsity of ``IMP_FIRST`` + the grid (a subset of the previous mask) and retrains the surviving weights for
the full budget with the full LR schedule. Every level costs one budget, so IMP at the i-th level has
used i + 1 budgets in total (reported as ``budgets``); the others use one.

This module: the configuration, the records and IMP's mask. Training: :mod:`.methods_train`
(:func:`~sparseflow.experiments.methods.train.run_methods`); the measurement (orderings, Kendall's τ_b
against the reference, criteria) and the report: :mod:`.methods_report`; figures: :mod:`.methods_plots`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparseflow.bench.methods import VARIANTS
from sparseflow.distributions import allocate, check_sparsity, kept_total, uniform
from sparseflow.errors import SparseflowError
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
          "SynFlow": "from scratch", "SET": "dynamic", "RigL": "dynamic"}
TRAIN_SIZE = {"mnist": 60_000, "fashion-mnist": 60_000}
# Wall seconds per example for one of two workers on this project's 2-core x86-64 with other jobs running
# (measured from a 1-seed run of the full settings): (train step, evaluation), for the model at 28x28
# input; Conv-4's cost scales with the pixels.
_SECONDS_PER_EXAMPLE = {"lenet300-100": (6e-5, 2e-5), "conv4": (2e-2, 6e-3)}
_RUN_OVERHEAD_S = 2.0  # process start, model build, data preparation, SNIP/SynFlow scoring


@dataclass(frozen=True)
class Setting:
    """One dataset's training setting: the budget every method gets there."""

    dataset: str
    model: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    weight_decay: float = 1e-4
    train_size: int | None = None  # a seeded random subset of the training split per seed (None: all)
    test_size: int | None = None  # the first examples of the test split, the same for every seed (None: all)
    downsample: int = 1  # average-pool the 28x28 images by this factor (2: 14x14)
    prune_first: bool = True  # False keeps the first layer dense (Evci et al. 2020 do so for convnets)

    def check(self) -> None:
        if self.dataset not in TRAIN_SIZE:
            raise SparseflowError(f"dataset must be one of {', '.join(TRAIN_SIZE)}, got {self.dataset!r}")
        if self.downsample not in (1, 2, 4):
            raise SparseflowError(f"downsample must be 1, 2 or 4 (28x28 images), got {self.downsample!r}")
        job = self.job("dense", 0.0, None, 0)  # validates the rest (epochs, sizes, names, lr, ...)
        if self.steps() < 10:
            raise SparseflowError(
                f"{self.dataset}: {self.steps()} optimizer steps are too few for GMP's and RigL's schedules "
                f"(need >= 10); raise the epochs ({job.epochs}) or the training size ({self.train_size})")

    def job(self, method: str, sparsity: float, distribution: str | None, seed: int) -> Any:
        from sparseflow.training.job import TrainJob

        return TrainJob(method=method, sparsity=sparsity, distribution=distribution, model=self.model,
                        dataset=self.dataset, subset=self.train_size, test_subset=self.test_size, epochs=self.epochs,
                        batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
                        weight_decay=self.weight_decay, seed=seed, baseline=False, prune_first=self.prune_first)

    def steps(self) -> int:
        n = min(self.train_size or TRAIN_SIZE[self.dataset], TRAIN_SIZE[self.dataset])
        return self.epochs * -(-n // self.batch_size)  # the last partial batch is a step too

    def seconds_per_run(self) -> float:
        train, test = _SECONDS_PER_EXAMPLE[self.model]
        scale = 1.0 if self.model == "lenet300-100" else 1.0 / self.downsample**2  # conv cost ~ pixels
        n_test = self.test_size or 10_000
        return scale * (train * self.steps() * self.batch_size + test * n_test) + _RUN_OVERHEAD_S

    def describe(self) -> str:
        size = 28 // self.downsample
        train = "all" if self.train_size is None else f"{self.train_size}"
        return (f"{self.model} on {self.dataset} {size}x{size}, {train} training / {self.test_size or 10000} test "
                f"examples, {self.epochs} epoch{'s' if self.epochs > 1 else ''} of batch {self.batch_size} = {self.steps()} steps, "
                f"{self.optimizer} lr {self.lr:g} (cosine), weight decay {self.weight_decay:g}"
                + ("" if self.prune_first else ", first layer dense"))


# MNIST: the SGD setting of ``sparseflow bench methods``. Fashion-MNIST: Adam at 1e-3 (Frankle & Carbin 2019
# train Conv-4 with Adam); with plain SGD this normalisation-free Conv-4 often stays at chance for the first
# hundreds of steps, which at this budget would measure start-up speed rather than the mask. Sizes: what fits
# the full grid in about 40 min on 2 shared cores (see ``estimate_s``).
FULL = (
    Setting("mnist", "lenet300-100", epochs=2, batch_size=128, lr=0.1),
    Setting("fashion-mnist", "conv4", epochs=1, batch_size=32, lr=1e-3, optimizer="adam", weight_decay=0.0,
            train_size=5120, test_size=2000, downsample=2, prune_first=False),
)
QUICK = (
    Setting("mnist", "lenet300-100", epochs=2, batch_size=64, lr=0.1, train_size=2000, test_size=1000),
    Setting("fashion-mnist", "conv4", epochs=1, batch_size=32, lr=1e-3, optimizer="adam", weight_decay=0.0,
            train_size=320, test_size=300, downsample=2, prune_first=False),
)


@dataclass(frozen=True)
class ComparisonConfig:
    """Everything one run does; :meth:`default` gives the full and the quick scale."""

    quick: bool
    settings: tuple[Setting, ...]
    sparsities: tuple[float, ...]
    seeds: tuple[int, ...]
    data_dirs: tuple[tuple[str, str], ...] = ()  # (dataset, folder holding its four IDX files)
    workers: int = 2

    @classmethod
    def default(cls, *, quick: bool, seeds: int | None = None) -> ComparisonConfig:
        n = seeds if seeds is not None else (1 if quick else 3)
        return cls(quick=quick, settings=QUICK if quick else FULL, sparsities=(0.9,) if quick else (0.8, 0.9, 0.95, 0.98),
                   seeds=tuple(range(n)))

    def check(self) -> None:
        if not self.settings:
            raise SparseflowError("no dataset to run: pass at least one of mnist, fashion-mnist")
        if not self.sparsities or any(check_sparsity(s) <= 0 for s in self.sparsities):
            raise SparseflowError(f"sparsities must be in (0, 1), e.g. 0.8,0.9,0.95,0.98; got {self.sparsities!r}")
        if len(set(self.sparsities)) != len(self.sparsities):
            raise SparseflowError(f"sparsities must be distinct, got {self.sparsities!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise SparseflowError(f"seeds must be distinct and at least one, got {self.seeds!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise SparseflowError(f"workers must be an integer >= 1, got {self.workers!r}")
        for s in self.settings:
            s.check()
            if s.dataset not in dict(self.data_dirs):
                raise SparseflowError(f"{s.dataset} is read from files: pass the folder holding its four IDX .gz "
                                      f"files (--data-dir with a {s.dataset}/ subfolder, or --{s.dataset.split('-')[0]}-dir)")

    def imp_levels(self) -> tuple[float, ...]:
        return tuple(sorted({*(s for s in IMP_FIRST if s < min(self.sparsities)), *self.sparsities}))

    def units(self) -> int:
        """Training runs of one budget each (a progress bar's total)."""
        per_seed = len(GRID) * len(self.sparsities) + 1 + len(self.imp_levels())
        return len(self.settings) * len(self.seeds) * per_seed

    def estimate_s(self) -> float:
        per_seed = len(GRID) * len(self.sparsities) + 1 + len(self.imp_levels())
        work = sum(s.seconds_per_run() * per_seed * len(self.seeds) for s in self.settings)
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
                            data_dirs=tuple(d["data_dirs"].items()), workers=int(d["workers"]))
