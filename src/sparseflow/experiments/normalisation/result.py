"""What the normalisation experiment measured: the trained cells, their statistics and the pass criteria.

Intervals are 95 % Student-t intervals over seeds: mean ± t(0.975, n - 1) · sd / sqrt(n), sd with n - 1 (a
single seed has no interval: half-width 0). Cells with the same seed share the training subset, the init, the
mask and the batch order, so differences between two batch sizes are paired.

Criteria, per variant (dense, sparse), on the mean test accuracy over seeds:
- BatchNorm at the smallest batch is at least 3 pp below BatchNorm at the largest batch;
- GroupNorm and LayerNorm each vary by at most 1 pp across batch sizes (max - min of the means);
and two about the protocol itself: every cell converged (its validation loss, the mean over seeds, moves by at
most ``flat_tol`` of its final value over the last 10 % of the epochs, :func:`flatness`), and every mean is known to 0.5 pp (the
95 % half-width over seeds). A quick run (128 training images, two epochs, 256 test images) cannot resolve
effects of 1-3 pp, and one test image is 0.4 pp. It measures and reports the same quantities but marks these
criteria ``"pass": None`` with that reason; the full run tests them. The no-norm row is the control: its range
over batch sizes is what the batch size does through optimisation alone (gradient noise at the scaled learning
rate), and it is reported next to the GroupNorm and LayerNorm ranges, so that a failed range can be told apart
from an effect of normalisation.

Besides the criteria, :func:`bn_minus` gives Wu & He's own comparison: acc(BatchNorm) - acc(GroupNorm or
LayerNorm) at the same batch size, paired over seeds, where what the batch size does to optimisation cancels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparseflow.analysis.stats import t_interval as _t_interval
from sparseflow.experiments.normalisation.config import NormConfig

BN_DROP_PP, RANGE_PP, HALF_PP = 3.0, 1.0, 0.5
TAIL = 0.1  # the convergence check reads the last 10 % of the epochs
LABEL = {"batch": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm", "none": "no norm"}


def t_interval(values: Any) -> tuple[float, float]:
    """(mean, half-width of the 95 % Student-t interval) of ``values``; half-width 0 for a single value."""
    return _t_interval(values, single=True)


@dataclass(frozen=True)
class Cell:
    """One trained network: its place in the grid and what it measured."""

    variant: str
    norm: str
    batch: int
    seed: int
    accuracy: float  # eval mode (BN: running statistics)
    batch_stats_accuracy: float | None  # BN only: test batches of `batch` normalised by their own statistics
    train_loss: float
    lr: float
    steps: int
    density: float
    seconds: float
    val_loss: tuple[float, ...] = ()  # after every epoch, eval mode
    val_acc: tuple[float, ...] = ()
    train_losses: tuple[float, ...] = ()  # mean training loss of every epoch
    flatness: float | None = None  # see flatness(): how far the validation loss still moves at the end


@dataclass(frozen=True)
class NormResult:
    config: NormConfig
    cells: tuple[Cell, ...]
    wall_s: float
    data_dir: Path | None = None  # the Fashion-MNIST folder it read
    command: str = "sparseflow experiment normalisation"  # the command line that reproduces the run

    def accuracies(self, variant: str, norm: str, batch: int, key: str = "accuracy") -> list[float]:
        """Test accuracies of one grid point in seed order (``key``: ``accuracy`` or ``batch_stats_accuracy``)."""
        found = {c.seed: getattr(c, key) for c in self.cells if (c.variant, c.norm, c.batch) == (variant, norm, batch)}
        return [found[s] for s in self.config.seed_values if s in found]

    def mean(self, variant: str, norm: str, batch: int) -> float:
        return float(np.mean(self.accuracies(variant, norm, batch)))

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> NormResult:
        """The result back from its ``results.json`` (as :meth:`to_json` wrote it), e.g. to redraw the report."""
        cfg = dict(obj["config"])
        for k in ("norms", "batch_sizes", "variants"):
            cfg[k] = tuple(cfg[k])
        cfg["seeds"] = len(cfg["seeds"])  # recorded as the list 0 .. seeds - 1
        data_dir = cfg.pop("data_dir", None)
        cells = tuple(Cell(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()}) for c in obj["cells"])
        return cls(NormConfig(**cfg), cells, float(obj["wall_s"]),
                   None if data_dir is None else Path(data_dir), obj.get("command_line", cls.command))

    def summary(self) -> list[dict[str, Any]]:
        return summary(self)

    def criteria(self) -> dict[str, dict[str, Any]]:
        return criteria(self)

    def to_json(self) -> dict[str, Any]:
        cfg = {**asdict(self.config), "seeds": list(self.config.seed_values),
               "data_dir": None if self.data_dir is None else str(self.data_dir)}
        return {"command": "experiment normalisation", "quick": self.config.quick, "wall_s": self.wall_s,
                "config": cfg, "summary": self.summary(), "ranges": ranges(self), "bn_minus": bn_minus(self),
                "cells": [asdict(c) for c in self.cells], "criteria": self.criteria()}


def flatness(val_loss: tuple[float, ...] | list[float]) -> float | None:
    """How far the validation loss still moves at the end of training: the largest ``|L_i - L_end| / L_end`` over
    the evaluations of the last 10 % of the epochs and the one just before them (at least two points); None for
    fewer than two evaluations. Converged means at most ``flat_tol``."""
    n = len(val_loss)
    if n < 2:
        return None
    window = max(1, math.ceil(round(TAIL * n, 9)))  # round: 0.1 * 30 is 3.0000000000000004
    end = val_loss[-1]
    return float(max(abs(v - end) for v in val_loss[-1 - window:]) / abs(end)) if end else float("inf")


def mean_curves(result: NormResult) -> dict[tuple[str, str, int], list[float]]:
    """Per cell (variant, norm, batch): the validation loss after every epoch, mean over seeds (cells whose
    networks recorded no curve are left out). The convergence criterion reads these: one network's curve also
    carries its own noise (BatchNorm's running averages at batch 2 move its loss by a few per cent from epoch to
    epoch), which averages out over seeds while a trend still left at the end of training does not."""
    curves: dict[tuple[str, str, int], list[tuple[float, ...]]] = {}
    for c in result.cells:
        if c.val_loss:
            curves.setdefault((c.variant, c.norm, c.batch), []).append(c.val_loss)
    return {k: [float(v) for v in np.mean(np.array(v), axis=0)] for k, v in curves.items()
            if len({len(x) for x in v}) == 1}


def summary(result: NormResult) -> list[dict[str, Any]]:
    """One row per (variant, norm, batch): mean, 95 % t half-width, min, max of the accuracy over seeds, in [0, 1]."""
    cfg, rows = result.config, []
    for v in cfg.variants:
        for n in cfg.norms:
            for b in cfg.batch_sizes:
                acc = result.accuracies(v, n, b)
                bs = [a for a in result.accuracies(v, n, b, "batch_stats_accuracy") if a is not None]
                cells = [c for c in result.cells if (c.variant, c.norm, c.batch) == (v, n, b)]
                mean, half = t_interval(acc)
                rows.append({"variant": v, "norm": n, "batch": b, "mean": mean, "half": half,
                             "min": float(min(acc)), "max": float(max(acc)), "seeds": len(acc),
                             "batch_stats_mean": float(np.mean(bs)) if bs else None,
                             "train_loss": float(np.mean([c.train_loss for c in cells])),
                             "flatness": max((c.flatness for c in cells if c.flatness is not None), default=None),
                             "lr": cells[0].lr, "steps": cells[0].steps,
                             "seconds": float(np.mean([c.seconds for c in cells]))})
    return rows


def bn_minus(result: NormResult) -> list[dict[str, Any]]:
    """Wu & He's comparison: per variant, batch-independent norm (GroupNorm, LayerNorm) and batch size, the paired
    difference acc(BatchNorm) - acc(that norm) over seeds, in pp (mean and 95 % t half-width). Both norms see
    the same steps at each batch size, so what the batch size does to optimisation cancels to first order."""
    cfg, rows = result.config, []
    if "batch" not in cfg.norms:
        return rows
    for v in cfg.variants:
        for n in ("group", "layer"):
            if n in cfg.norms:
                for b in cfg.batch_sizes:
                    diff = 100 * (np.array(result.accuracies(v, "batch", b)) - np.array(result.accuracies(v, n, b)))
                    mean, half = t_interval(diff)
                    rows.append({"variant": v, "norm": n, "batch": b, "diff_pp": mean, "half_pp": half})
    return rows


def ranges(result: NormResult) -> dict[str, dict[str, Any]]:
    """Per variant and norm: max - min over batch sizes of the mean accuracy (pp), and where max and min lie."""
    cfg, out = result.config, {}
    for v in cfg.variants:
        for n in cfg.norms:
            means = [100 * result.mean(v, n, b) for b in cfg.batch_sizes]
            hi, lo = int(np.argmax(means)), int(np.argmin(means))
            out[f"{v}/{n}"] = {"range_pp": max(means) - min(means), "best_batch": cfg.batch_sizes[hi],
                               "worst_batch": cfg.batch_sizes[lo]}
    return out


def untestable(cfg: NormConfig) -> str | None:
    """Why ``cfg`` (the quick scale) cannot test the criteria; None when it can."""
    if not cfg.quick:
        return None
    steps = -(-cfg.train_size // max(cfg.batch_sizes)) * cfg.epochs
    return (f"the quick run trains on {cfg.train_size} images for {cfg.epochs} epoch(s) ({steps} step(s) at batch "
            f"{max(cfg.batch_sizes)}) and tests on {cfg.test_size or 10000}: effects of {RANGE_PP:g}-{BN_DROP_PP:g} pp "
            "are below what it resolves; the full run tests this")


def criteria(result: NormResult) -> dict[str, dict[str, Any]]:
    cfg, out = result.config, {}
    lo, hi = min(cfg.batch_sizes), max(cfg.batch_sizes)
    rng = ranges(result)
    why = untestable(cfg)

    def verdict(ok: bool, note: str | None = why) -> dict[str, Any]:
        return {"pass": None, "note": note} if why else {"pass": ok}

    for v in cfg.variants:
        if "batch" in cfg.norms:
            diff = 100 * (np.array(result.accuracies(v, "batch", hi)) - np.array(result.accuracies(v, "batch", lo)))
            drop, half = t_interval(diff)  # paired over seeds
            out[f"{v}: BN drop, batch {lo} vs {hi}"] = {
                "value": drop, **verdict(bool(drop >= BN_DROP_PP)), "interval_pp": [drop - half, drop + half],
                "target": f"mean acc(BN, batch {hi}) - mean acc(BN, batch {lo}) >= {BN_DROP_PP:g} pp"}
        for n in ("group", "layer"):
            if n in cfg.norms:
                r = rng[f"{v}/{n}"]
                out[f"{v}: {LABEL[n]} range over batch sizes"] = {
                    "value": r["range_pp"], **verdict(bool(r["range_pp"] <= RANGE_PP)),
                    "best_batch": r["best_batch"], "worst_batch": r["worst_batch"],
                    "control_range_pp": rng[f"{v}/none"]["range_pp"] if "none" in cfg.norms else None,
                    "target": f"max - min of mean acc over batch sizes {list(cfg.batch_sizes)} <= {RANGE_PP:g} pp"}
    rows = summary(result)
    flat = {k: flatness(curve) for k, curve in mean_curves(result).items()}
    flat = {k: v for k, v in flat.items() if v is not None}
    if flat:
        worst = max(flat, key=lambda k: flat[k])
        per_net = max((c for c in result.cells if c.flatness is not None), key=lambda c: c.flatness)
        out["converged: validation loss flat over the last 10 % of training"] = {
            "value": flat[worst], **verdict(bool(flat[worst] <= cfg.flat_tol), f"the quick run trains {cfg.epochs} "
                                            "epoch(s), not to convergence; the full run tests this"),
            "worst": f"{worst[0]} {worst[1]} batch {worst[2]}",
            "worst_network": {"network": f"{per_net.variant} {per_net.norm} batch {per_net.batch} seed {per_net.seed}",
                              "flatness": per_net.flatness},
            "target": f"max over cells of |val loss - final| / final over the last 10 % of epochs, val loss the mean "
                      f"over seeds, <= {cfg.flat_tol:g}"}
    if cfg.seeds > 1:
        widest = max(rows, key=lambda r: r["half"])
        out["seeds: every mean's 95 % half-width"] = {
            "value": 100 * widest["half"], **verdict(bool(100 * widest["half"] <= HALF_PP), f"the quick run has "
                                                     f"{cfg.seeds} seeds and {cfg.test_size or 10000} test images; "
                                                     "the full run tests this"),
            "widest": f"{widest['variant']} {widest['norm']} batch {widest['batch']}",
            "target": f"max over cells of the 95 % t half-width <= {HALF_PP:g} pp"}
    return out
