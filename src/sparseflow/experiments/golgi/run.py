"""The Golgi experiment: stain a trained sparse mask and a random mask of the same per-layer counts.

Golgi's stain makes single cells visible in a tangle (:mod:`sparseflow.analysis.stain`). Here it is applied
to two masks of one LeNet-300-100 (LeCun et al. 1998) at the same sparsity and the same count of kept
weights in every layer:

- a *trained* mask: RigL (Evci et al. 2020, ERK densities) or GMP (Zhu & Gupta 2017, gradual magnitude
  pruning, uniform densities), trained on MNIST (or the embedded 8x8 digits);
- its *random control*: in every layer the same number of kept weights at uniformly random positions (the
  control of Liu et al. 2022, "The Unreasonable Effectiveness of Random Pruning"), trained on the same
  budget from the same initialisation (rescaled to the kept fan-in, as RigL's is).

A random mask spreads its connections evenly: every pixel keeps some, degrees are binomial, and a unit's
input tree covers most of the image. Training concentrates them: pixels that never vary (the border of a
digit) lose every connection, fan-out follows how much a pixel varies, degrees spread out. The report
measures exactly that: the fraction of input pixels with any kept connection, the Spearman correlation of
each pixel's kept fan-out with its standard deviation over the training set, the share of kept weights on
the tenth of the pixels that vary least, the Gini coefficient and
variance of the degrees in every layer, and the size of every hidden unit's input and output tree.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparseflow.analysis.connectivity import connectivity
from sparseflow.analysis.stain import Stain, degree_stats, stain, trees
from sparseflow.experiments.golgi.config import GolgiConfig
from sparseflow.experiments.options import DataOptions
from sparseflow.experiments.protocol import Tick, no_progress
from sparseflow.init import rescale_
from sparseflow.mask import Mask
from sparseflow.methods import FixedMask
from sparseflow.training.build import build_method
from sparseflow.training.data import Dataset, load_dataset, loaders
from sparseflow.training.loop import TrainConfig, fit
from sparseflow.training.models import build_model
from sparseflow.training.options import command_line

RHO_MIN, RHO_RANDOM_MAX = 0.5, 0.2
LOW = 0.1  # the least-varying tenth of the pixels (the border of a digit)


def matched_random(mask: Mask, seed: int) -> Mask:
    """The same number of kept entries as ``mask`` in every tensor, at uniformly random positions."""
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, m in sorted(mask.items()):
        keep = torch.zeros(m.numel(), dtype=torch.bool)
        keep[torch.randperm(m.numel(), generator=g)[: int(m.sum())]] = True
        out[name] = keep.reshape(m.shape)
    return Mask(out)


@dataclass(frozen=True, eq=False)
class Arm:
    """One stained mask: how it was made, its test accuracy and the measurements of the module docstring."""

    name: str
    method: str
    accuracy: float | None
    stain: Stain
    input_fraction: float  # input pixels with a path to some output
    pixel_rho: float  # Spearman(kept fan-out of a pixel, its std over the training set)
    low_share: float  # share of first-layer kept weights on the LOW least-varying pixels
    in_pixels: dict[str, Tensor]  # hidden layer -> (units,) pixels in each unit's input tree
    out_reached: dict[str, Tensor]  # hidden layer -> (units,) outputs each unit reaches

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "accuracy": self.accuracy,
                "pixels_covered": self.stain.pixels.covered if self.stain.pixels else None,
                "input_fraction": self.input_fraction, "pixel_rho": self.pixel_rho, "low_variance_share": self.low_share,
                "trees_all_units": {k: {"input_pixels_mean": float(v.double().mean()),
                                        "input_pixels_median": float(v.double().median()),
                                        "outputs_reached_mean": float(self.out_reached[k].double().mean()),
                                        "no_output": int((self.out_reached[k] == 0).sum())}
                                    for k, v in self.in_pixels.items()},
                "stain": self.stain.to_json()}


@dataclass(frozen=True, eq=False)
class GolgiResult:
    config: GolgiConfig  # with the epochs and the subset the run used
    arms: tuple[Arm, ...]  # per method: trained, then its random control
    pixel_std: Tensor  # (H, W) std of each input pixel over the training set
    wall_s: float
    data_dir: Path | None = None  # MNIST; None: the embedded 8x8 digits
    command: str = "sparseflow experiment golgi"  # the command line that repeats the run

    @property
    def dataset(self) -> str:
        return "digits" if self.data_dir is None else "mnist"

    def pairs(self) -> list[tuple[Arm, Arm]]:
        return [(self.arms[i], self.arms[i + 1]) for i in range(0, len(self.arms), 2)]

    def criteria(self) -> dict[str, dict[str, Any]]:
        out = {}
        for t, r in self.pairs():
            out[f"{t.method}: fewer connections on the least-varying pixels"] = {
                "value": t.low_share, "random": r.low_share, "pass": t.low_share < r.low_share,
                "target": f"share of first-layer kept weights on the {LOW:.0%} least-varying pixels below the "
                          f"random control's ({r.low_share:.3f})"}
            gt, gr = (degree_stats(a.stain.degrees[0].fan_out)["gini"] for a in (t, r))
            out[f"{t.method}: pixel fan-out more unequal than random"] = {
                "value": gt - gr, "pass": gt > gr,
                "target": f"Gini(trained) - Gini(random) > 0 on {t.stain.degrees[0].layer} ({gt:.3f} vs {gr:.3f})"}
            out[f"{t.method}: kept pixels follow pixel variance"] = {
                "value": t.pixel_rho, "random": r.pixel_rho,
                "pass": t.pixel_rho >= RHO_MIN and abs(r.pixel_rho) <= RHO_RANDOM_MAX,
                "target": f"Spearman ρ(fan-out, pixel std) >= {RHO_MIN} trained, abs(ρ) <= {RHO_RANDOM_MAX} random"}
        return out

    def to_json(self) -> dict[str, Any]:
        cfg = {**dataclasses.asdict(self.config), "data_dir": None if self.data_dir is None else str(self.data_dir)}
        return {"command": "experiment golgi", "quick": self.config.quick, "wall_s": self.wall_s,
                "dataset": self.dataset, "config": cfg, "arms": [a.to_json() for a in self.arms],
                "criteria": self.criteria()}


def _spearman(a: Tensor, b: Tensor) -> float:
    from scipy.stats import spearmanr

    rho = spearmanr(a.double().numpy().ravel(), b.double().numpy().ravel()).statistic
    return 0.0 if not np.isfinite(rho) else float(rho)


def _arm(name: str, method: str, model: torch.nn.Module, mask: Mask, acc: float | None, cfg: GolgiConfig,
         shape: tuple[int, ...], pixel_std: Tensor) -> Arm:
    st = stain(model, mask, layer=cfg.layer, units=cfg.units, seed=cfg.seed, input_shape=shape)
    g = st.graph
    in_pixels, out_reached = {}, {}
    for link in g.weight_links[:-1]:  # every hidden layer: the trees of all its units at once
        t = trees(g, link.dst, range(g.sizes[link.dst]))
        in_pixels[g.labels[link.dst]] = t.up[g.input].sum(1)
        out_reached[g.labels[link.dst]] = t.down[g.output].sum(1)
    fan_out = st.degrees[0].fan_out.reshape(-1, pixel_std.numel()).sum(0).double()  # per pixel, channels summed
    low = torch.argsort(pixel_std.flatten(), stable=True)[: max(1, round(LOW * pixel_std.numel()))]
    share = float(fan_out[low].sum() / fan_out.sum())
    return Arm(name, method, acc, st, connectivity(model, mask).input_fraction, _spearman(fan_out, pixel_std), share,
               in_pixels, out_reached)


def _pair(cfg: GolgiConfig, method: str, ds: Dataset, pixel_std: Tensor, progress: Tick) -> list[Arm]:
    """Train ``method`` and its random control from the same initialisation; stain both."""
    job = cfg.job(method, ds.name)
    tc = TrainConfig(**job.train_config_kwargs())
    model = build_model(job.model, ds.input_shape, ds.num_classes, seed=cfg.seed)
    train, test = loaders(ds, job.batch_size, seed=cfg.seed)
    m = build_method(job, tc.epochs * len(train))
    acc = fit(model, train, test, tc, method=m, progress=False).test_acc
    mask = Mask({k: v.cpu() for k, v in m.mask.items()})
    progress(f"trained {method}")
    control = matched_random(mask, cfg.seed + 1)
    rmodel = build_model(job.model, ds.input_shape, ds.num_classes, seed=cfg.seed)
    racc = None
    if cfg.train_random:
        with torch.no_grad():
            # sparse from scratch, by kept fan-in: for a random mask what RigL's norm rule gives in expectation
            rescale_(rmodel, control)
        racc = fit(rmodel, train, test, tc, method=FixedMask(keep=control), progress=False).test_acc
        progress(f"trained the random control of {method}")
    arms = [_arm(method, method, model, mask, acc, cfg, ds.input_shape, pixel_std),
            _arm(f"{method} random control", method, rmodel, control, racc, cfg, ds.input_shape, pixel_std)]
    progress(f"stained {method} and its control")
    return arms


def run(config: GolgiConfig, out: Path | None = None, progress: Tick = no_progress, *,
        options: DataOptions | None = None) -> GolgiResult:
    """Train each method and its random control on MNIST from ``options.data_dir`` (else the embedded digits),
    stain both. ``out`` is not used: the run keeps no partial results."""
    start = time.perf_counter()
    data_dir = None if options is None else options.data_dir
    dataset = "digits" if data_dir is None else "mnist"
    cfg = replace(config, epochs=config.train_epochs(dataset), subset=config.train_subset(dataset))
    progress("", advance=0, total=cfg.work_units())
    ds = load_dataset(dataset, data_dir, subset=cfg.subset, seed=cfg.seed)
    pixel_std = ds.x_train.flatten(1).std(0).reshape(ds.input_shape[-2:])
    arms: list[Arm] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # layers of 300 units: threads cost more than they save, and far more on a busy machine
    try:
        for method in cfg.methods:
            arms += _pair(cfg, method, ds, pixel_std, progress)
    finally:
        torch.set_num_threads(threads)
    command = command_line("sparseflow experiment golgi", config, *(() if options is None else (options,)))
    return GolgiResult(cfg, tuple(arms), pixel_std, time.perf_counter() - start, data_dir, command)
