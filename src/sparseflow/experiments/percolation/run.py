"""The percolation experiment end to end: Monte Carlo against theory, p_c from finite depth, the training
sweep, and the pass criteria.

Theory, models and the p_c estimator: :mod:`sparseflow.experiments.percolation.theory`; the training setting:
:mod:`sparseflow.experiments.percolation.train`; figures and report: :mod:`.plots`, :mod:`.report`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparseflow.experiments.options import DataOptions
from sparseflow.experiments.percolation.config import PercolationConfig
from sparseflow.experiments.percolation.theory import (
    CriticalScan,
    critical_scan,
    mean_field_fractions,
    simulate_random_mask_paths,
    surviving_fraction,
)
from sparseflow.experiments.percolation.train import TrainSweep, train_sweep
from sparseflow.experiments.protocol import Tick, no_progress

CRITERION_C = 1.5  # the surviving-fraction criterion covers c in [1.5, 10]
RHO_TOL, PC_TOL, CHANCE_TOL = 0.03, 0.02, 0.05


@dataclass(frozen=True)
class MaskRow:
    """Layered random mask of mean fan-in c at one width and depth, over seeds."""

    c: float
    width: int
    depth: int
    mean: float  # forward surviving fraction of layer `depth`
    std: float
    theory: float  # fixed point ρ(c)
    mean_field: float  # ρ_depth from iterating ρ' = 1 - exp(-cρ) from 1
    on_path: float  # fraction of layer depth//2 on an input-output path (mean over seeds)
    on_path_theory: float  # ρ_{depth//2}²


@dataclass(frozen=True)
class PercolationResult:
    config: PercolationConfig
    seeds: tuple[int, ...]  # of the Monte Carlo and the p_c scans
    rows: tuple[MaskRow, ...]
    decay: dict[float, np.ndarray] = field(repr=False)  # c -> mean ρ_l, l = 0..max depth, at the widest width
    scans: tuple[CriticalScan, ...] = ()
    train: TrainSweep | None = None
    data_dir: Path | None = None  # MNIST for the training sweep; None: the digits
    wall_s: float = 0.0

    def criteria(self) -> dict[str, dict[str, Any]]:
        cfg, out = self.config, {}
        for c in (c for c in cfg.cs if c >= CRITERION_C):
            err = float(max(abs(r.mean - r.theory) for r in self.rows if r.c == c))
            out[f"surviving fraction c={c:g}"] = {
                "value": err, "pass": err <= RHO_TOL,
                "target": f"max |simulated - ρ(c)| <= {RHO_TOL} over widths {list(cfg.widths)} x depths {list(cfg.depths)}",
            }
        for s in self.scans:
            err = None if s.estimate is None else float(abs(s.estimate - s.theory))
            out[f"p_c b={s.b}"] = {
                "value": err, "estimate": s.estimate, "theory": s.theory, "pass": err is not None and err <= PC_TOL,
                "target": f"|estimated - (1 - 1/b)| <= {PC_TOL} (crossing of L·ρ_L, L = {s.depth} and {s.depth // 2}, width {s.width})",
            }
        if self.train is not None and any(c < 1 for c in self.train.cs()):
            worst = float(max(np.mean([p.accuracy for p in self.train.at(c)]) for c in self.train.cs() if c < 1))
            out["accuracy at chance for c < 1"] = {
                "value": float(worst), "chance": self.train.chance, "pass": bool(worst <= self.train.chance + CHANCE_TOL),
                "target": f"max mean test accuracy over c < 1 <= chance + {CHANCE_TOL} = {self.train.chance + CHANCE_TOL:.4f}",
            }
        return out

    def setting(self) -> dict[str, Any]:
        """Every value the run used, the resolved seeds, epochs and MNIST subset included."""
        cfg = self.config
        dataset = "digits" if self.data_dir is None else "mnist"
        return {"quick": cfg.quick, "seeds": self.seeds, "widths": cfg.widths, "depths": cfg.depths, "cs": cfg.cs,
                "bs": cfg.bs, "pc_width": cfg.pc_width, "pc_depth": cfg.pc_depth, "train": cfg.train,
                "train_cs": cfg.train_cs, "train_seeds": cfg.train_seeds(), "train_depth": cfg.train_depth,
                "train_width": cfg.train_width, "train_epochs": cfg.train_epochs(dataset),
                "data_dir": None if self.data_dir is None else str(self.data_dir), "subset": cfg.subset(dataset)}

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        train = None
        if self.train is not None:
            t = self.train
            train = {"dataset": t.dataset, "depth": t.depth, "width": t.width, "epochs": t.epochs, "chance": t.chance,
                     "points": [p.__dict__ for p in t.points], "summary": train_summary(t)}
        return {
            "command": "experiment percolation", "quick": cfg.quick, "wall_s": self.wall_s, "config": self.setting(),
            "random_mask": [r.__dict__ for r in self.rows],
            "decay": {"width": max(cfg.widths), "curves": {f"{c:g}": v.tolist() for c, v in self.decay.items()}},
            "fan_out": [{
                "b": s.b, "theory": s.theory, "estimate": s.estimate, "per_seed": list(s.per_seed),
                "width": s.width, "depth": s.depth, "ps": list(s.ps),
                "rho_half_mean": s.rho_half.mean(0).tolist(), "rho_full_mean": s.rho_full.mean(0).tolist(),
            } for s in self.scans],
            "training": train, "criteria": self.criteria(),
        }


def train_summary(t: TrainSweep) -> list[dict[str, float]]:
    """Per c: mean and std test accuracy, fraction of seeds with a path, mean reached fraction, its theory."""
    rows = []
    for c in t.cs():
        pts = t.at(c)
        acc = [p.accuracy for p in pts]
        rows.append({"c": c, "acc_mean": float(np.mean(acc)), "acc_std": float(np.std(acc)),
                     "connected": float(np.mean([p.connected for p in pts])),
                     "reached": float(np.mean([p.reached for p in pts])),
                     "reached_theory": float(mean_field_fractions(c, t.depth - 1)[-1])})
    return rows


def work_units(cfg: PercolationConfig) -> int:
    """How many times :func:`run` calls ``progress`` after a unit of work."""
    return len(cfg.cs) * len(cfg.widths) + len(cfg.bs) + (len(cfg.train_cs) * len(cfg.train_seeds()) if cfg.train else 0)


def run(config: PercolationConfig, out: Path | None = None, progress: Tick = no_progress, *,
        options: DataOptions | None = None) -> PercolationResult:
    """Run every part of ``config``; the training sweep reads MNIST from ``options.data_dir`` when given (else
    the digits). ``out`` is not used: the run keeps no partial results."""
    cfg, data_dir = config, None if options is None else options.data_dir
    dataset = "digits" if data_dir is None else "mnist"
    start = time.perf_counter()
    progress("", advance=0, total=work_units(cfg))
    seeds = cfg.mc_seeds()
    rows, decay = [], {}
    for c in cfg.cs:
        for width in cfg.widths:
            runs = [simulate_random_mask_paths(c, width, cfg.depths, s) for s in seeds]
            frac = np.array([r[0] for r in runs])  # (seeds, max depth + 1)
            paths = np.array([r[1] for r in runs])  # (seeds, len(depths))
            mf = mean_field_fractions(c, max(cfg.depths))
            for j, d in enumerate(cfg.depths):
                rows.append(MaskRow(c, width, d, float(frac[:, d].mean()), float(frac[:, d].std()), surviving_fraction(c),
                                    float(mf[d]), float(paths[:, j].mean()), float(mf[d // 2] ** 2)))
            if width == max(cfg.widths):
                decay[c] = frac.mean(axis=0)
            progress(f"random mask c={c:g} width={width}")
    scans = []
    for b in cfg.bs:
        scans.append(critical_scan(b, width=cfg.pc_width, depth=cfg.pc_depth, seeds=seeds))
        progress(f"fan-out b={b}")
    train = None
    if cfg.train:
        train = train_sweep(cfg.train_cs, cfg.train_seeds(), depth=cfg.train_depth, width=cfg.train_width,
                            epochs=cfg.train_epochs(dataset), data_dir=data_dir, subset=cfg.subset(dataset),
                            on_point=lambda p: progress(f"trained c={p.c:g} seed={p.seed}"))
    return PercolationResult(cfg, seeds, tuple(rows), decay, tuple(scans), train, data_dir, time.perf_counter() - start)
