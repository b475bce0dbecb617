"""The percolation experiment end to end: Monte Carlo against theory, p_c from finite depth, the training
sweep, pass criteria, and the report (results.json, report.md, three PNGs).

Theory, models and the p_c estimator: :mod:`sparseflow.experiments.percolation.run`; the training setting:
:mod:`sparseflow.experiments.percolation.train`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparseflow.errors import SparseflowError
from sparseflow.experiments.percolation.run import (
    CriticalScan,
    critical_scan,
    mean_field_fractions,
    simulate_random_mask_paths,
    surviving_fraction,
)
from sparseflow.experiments.percolation.train import TrainSweep, train_sweep
from sparseflow.training.rundir import write_results

CRITERION_C = 1.5  # the surviving-fraction criterion covers c in [1.5, 10]
RHO_TOL, PC_TOL, CHANCE_TOL = 0.03, 0.02, 0.05


@dataclass(frozen=True)
class PercolationConfig:
    """Everything one run does; :meth:`default` gives the full and the quick scale."""

    quick: bool
    seeds: tuple[int, ...]
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    cs: tuple[float, ...]
    bs: tuple[int, ...]
    pc_width: int
    pc_depth: int
    train: bool
    train_cs: tuple[float, ...]
    train_seeds: tuple[int, ...]
    train_depth: int = 12
    train_width: int = 64
    train_epochs: int = 30
    data_dir: Path | None = None
    subset: int | None = None

    @classmethod
    def default(cls, *, quick: bool, seeds: int | None = None, train: bool = True, data_dir: Path | None = None) -> PercolationConfig:
        if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
            raise SparseflowError(f"seeds must be an integer >= 1, got {seeds!r}")
        n = seeds if seeds is not None else (4 if quick else 10)
        cs = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0) if quick else (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0)
        return cls(
            quick=quick, seeds=tuple(range(n)),
            widths=(256, 1024) if quick else (256, 1024, 4096), depths=(10, 30) if quick else (10, 30, 100),
            cs=cs, bs=(2, 4, 10), pc_width=1024 if quick else 4096, pc_depth=40 if quick else 100,
            train=train, train_cs=(0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
            train_seeds=tuple(range(seeds if seeds is not None else (1 if quick else 3))),
            train_epochs=(20 if quick else 30) if data_dir is None else (3 if quick else 10),
            data_dir=data_dir, subset=None if data_dir is None else (5000 if quick else 20000),
        )


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
    rows: tuple[MaskRow, ...]
    decay: dict[float, np.ndarray] = field(repr=False)  # c -> mean ρ_l, l = 0..max depth, at the widest width
    scans: tuple[CriticalScan, ...] = ()
    train: TrainSweep | None = None
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

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        train = None
        if self.train is not None:
            t = self.train
            train = {"dataset": t.dataset, "depth": t.depth, "width": t.width, "epochs": t.epochs, "chance": t.chance,
                     "points": [p.__dict__ for p in t.points], "summary": train_summary(t)}
        return {
            "command": "experiment percolation", "quick": cfg.quick, "wall_s": self.wall_s,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
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


def run_percolation(cfg: PercolationConfig, tick: Callable[[str], None] = lambda _: None) -> PercolationResult:
    """Run every part of ``cfg``; ``tick(what)`` is called after each unit of work (for a progress bar)."""
    import time

    start = time.perf_counter()
    rows, decay = [], {}
    for c in cfg.cs:
        for width in cfg.widths:
            runs = [simulate_random_mask_paths(c, width, cfg.depths, s) for s in cfg.seeds]
            frac = np.array([r[0] for r in runs])  # (seeds, max depth + 1)
            paths = np.array([r[1] for r in runs])  # (seeds, len(depths))
            mf = mean_field_fractions(c, max(cfg.depths))
            for j, d in enumerate(cfg.depths):
                rows.append(MaskRow(c, width, d, float(frac[:, d].mean()), float(frac[:, d].std()), surviving_fraction(c),
                                    float(mf[d]), float(paths[:, j].mean()), float(mf[d // 2] ** 2)))
            if width == max(cfg.widths):
                decay[c] = frac.mean(axis=0)
            tick(f"random mask c={c:g} width={width}")
    scans = []
    for b in cfg.bs:
        scans.append(critical_scan(b, width=cfg.pc_width, depth=cfg.pc_depth, seeds=cfg.seeds))
        tick(f"fan-out b={b}")
    train = None
    if cfg.train:
        train = train_sweep(cfg.train_cs, cfg.train_seeds, depth=cfg.train_depth, width=cfg.train_width,
                            epochs=cfg.train_epochs, data_dir=cfg.data_dir, subset=cfg.subset,
                            on_point=lambda p: tick(f"trained c={p.c:g} seed={p.seed}"))
    return PercolationResult(cfg, tuple(rows), decay, tuple(scans), train, time.perf_counter() - start)


def work_units(cfg: PercolationConfig) -> int:
    """How many times :func:`run_percolation` calls ``tick``."""
    return len(cfg.cs) * len(cfg.widths) + len(cfg.bs) + (len(cfg.train_cs) * len(cfg.train_seeds) if cfg.train else 0)


def write_outputs(result: PercolationResult, out: Path) -> None:
    """results.json, report.md and the PNGs into ``out`` (created if missing)."""
    from sparseflow.experiments.percolation.plots import plot_surviving, plot_threshold, plot_training, report_markdown
    from sparseflow.io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    plot_surviving(result, out / "surviving.png")
    plot_threshold(result, out / "threshold.png")
    if result.train is not None:
        plot_training(result, out / "training.png")
    write_results(out, "percolation", result.to_json())
    atomic_write_text(out / "report.md", report_markdown(result))
