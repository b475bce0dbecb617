"""The lottery-ticket job: one frozen config feeds the CLI, the run-directory name and the report.

The run directory is named by a stable hash of the settings that differ from their defaults (open_lth's
``hparams`` convention), so adding a new setting with a default never renames existing runs; a test pins
the hash. The level schedule (how many weights each level keeps) is a pure function of the config and
the layer shapes, so a target density that no allowed number of levels reaches is refused before any
training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparseflow.errors import SparseflowError
from sparseflow.training.data import DATASETS as ALL_DATASETS
from sparseflow.training.hparams import LR_SCHEDULES, OPTIMIZERS
from sparseflow.training.models import LANGUAGE_MODELS
from sparseflow.training.models import MODELS as ALL_MODELS
from sparseflow.training.options import RunOptions, check, option
from sparseflow.training.text import TEXT_DATASETS

# The lottery trains classifiers (its loop reads one label per example): no language models or text.
DATASETS = tuple(d for d in ALL_DATASETS if d not in TEXT_DATASETS)
MODELS = tuple(m for m in ALL_MODELS if m not in LANGUAGE_MODELS)

SCOPES = ("layerwise", "global")
REWINDS = ("weights", "lr")  # rewind the kept weights to step k (Frankle et al.), or only the LR (Renda et al.)
INITS = ("default", "glorot")
MAX_LEVELS = 100  # a target density needs more levels than this only by mistake


def _is_fraction(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class LotteryJob:
    """Everything that determines a lottery run's results (paths and display flags excluded).

    Pruning: each level removes ``prune_fraction`` of the remaining weights of every hidden layer
    (``layerwise``) or of all hidden layers ranked together (``global``), and ``output_fraction``
    (default half of it) of the output layer's. Levels run until ``target_density`` (fraction of prunable
    weights kept) is reached, at most ``levels`` pruning levels (level 0 trains the dense network).

    Rewinding: ``rewind="weights"`` resets the kept weights to their values at step ``rewind_step``
    (0 = the original initialisation) and trains from there to ``iterations``; ``rewind="lr"`` keeps the
    trained weights and replays the learning-rate schedule from ``rewind_step``.

    ``--quick``: MNIST-1D, a 100-100 MLP, 5 levels of 300 steps pruning 40 % each: well under a minute on 2 cores.
    """

    dataset: str = option("mnist1d", " | ".join(DATASETS), choices=DATASETS)
    model: str = option("mlp", " | ".join(MODELS), choices=MODELS)
    hidden: tuple[int, ...] | None = option((500, 500), "MLP widths (model mlp only).", min=1, metavar="WIDTHS",
                                            quick=(100, 100))
    subset: int | None = option(None, "Use this many training examples.", min=1)
    test_subset: int | None = option(None, "Evaluate on the first N test examples.", min=1)
    val_size: int = option(0, "Training examples held out for early stopping (0: use the test set).", min=0)
    iterations: int = option(1000, "Training steps per level.", min=1, quick=300)
    batch_size: int = option(100, "Minibatch size.", min=1)
    optimizer: str = option("adam", " | ".join(OPTIMIZERS), choices=OPTIMIZERS)
    lr: float = option(3e-3, "Learning rate.", min=0, min_open=True)
    lr_schedule: str = option("constant", " | ".join(LR_SCHEDULES), choices=LR_SCHEDULES)
    weight_decay: float = option(0.0, "Weight decay.", min=0)
    eval_every: int = option(100, "Evaluate (and checkpoint) every N steps.", min=1, quick=50)
    prune_fraction: float = option(0.2, "Fraction of the remaining weights pruned per level, in (0, 1).", quick=0.4)
    output_fraction: float | None = option(None, "Output layer's fraction (default: half of --prune-fraction).")
    scope: str = option("layerwise", "layerwise | global (hidden layers ranked together)", choices=SCOPES)
    target_density: float | None = option(
        0.02, "Stop at this fraction of weights left, e.g. 0.036 (default 0.02 unless --levels).", min=0, max=1,
        min_open=True, max_open=True, quick=None)
    levels: int | None = option(None, "At most this many pruning levels.", min=1, max=MAX_LEVELS, quick=5)
    rewind: str = option("weights", "weights (Frankle & Carbin) | lr (learning-rate rewinding)", choices=REWINDS)
    rewind_step: int = option(0, "Rewind to this step k (0: the initialisation).", min=0)
    reinit: bool = option(True, "Control: the same mask from a fresh random initialisation.",
                          flag="--reinit/--no-reinit")
    random_mask: bool = option(True, "Control: a random mask with the same per-layer densities.",
                               flag="--random-mask/--no-random-mask")
    controls_at: tuple[float, ...] | None = option(
        None, "Train the controls only at the levels nearest these densities, e.g. 0.036 (default: every level).",
        min=0, max=1, min_open=True, distinct=True, metavar="DENSITIES")
    init: str = option("default", "Initial weights: default (the model's own: PyTorch's uniform for Linear) | glorot "
                       "(Gaussian Glorot weights, zero biases, as Frankle & Carbin).", choices=INITS)
    seeds: tuple[int, ...] = option((0,), "Replicate seeds, comma-separated.", distinct=True)

    def __post_init__(self) -> None:
        for name in ("prune_fraction", "output_fraction"):  # (before check: its message would not say why)
            v = getattr(self, name)
            if not (v is None and name == "output_fraction") and not (_is_fraction(v) and 0 < v < 1):
                raise SparseflowError(
                    f"lottery {name} must be in (0, 1) (0.2 prunes 20 % of the remaining weights per level), got {v!r}"
                )
        check(self, lambda name: f"lottery {name}")
        if self.hidden is not None and self.model != "mlp":
            object.__setattr__(self, "hidden", None)  # only the plain MLP has widths to set
        if not self.rewind_step < self.iterations:
            raise SparseflowError(
                f"rewind_step {self.rewind_step!r} is beyond the training length: it must be an integer in "
                f"[0, iterations={self.iterations}); pass a smaller rewind step or more iterations"
            )
        if self.target_density is None and self.levels is None:
            raise SparseflowError("lottery needs a stopping rule: pass target_density (e.g. 0.036), levels, or both")

    # --- derived values ------------------------------------------------------------------------
    def control_levels(self, densities: list[float]) -> set[int]:
        """Levels (>= 1) whose controls are trained, given every level's density: all of them, or with
        ``controls_at`` the level nearest each density there."""
        levels = range(1, len(densities))
        if self.controls_at is None:
            return set(levels)
        return {min(levels, key=lambda lv: abs(densities[lv] - d)) for d in self.controls_at} if levels else set()

    @property
    def out_fraction(self) -> float:
        return self.prune_fraction / 2 if self.output_fraction is None else self.output_fraction

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = None if self.hidden is None else list(self.hidden)
        d["seeds"] = list(self.seeds)
        d["controls_at"] = None if self.controls_at is None else list(self.controls_at)
        return d

    def non_default(self) -> dict[str, Any]:
        """The settings that differ from a default ``LotteryJob()``: what names the run."""
        base = LotteryJob().to_dict()
        return {k: v for k, v in self.to_dict().items() if v != base[k]}

    def digest(self) -> str:
        """Stable 10-hex-digit hash of the non-default settings (seeds excluded: replicates share a run)."""
        d = {k: v for k, v in self.non_default().items() if k != "seeds"}
        text = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def run_name(self) -> str:
        return f"lottery-{self.dataset}-{self.model}-{self.digest()}"


@dataclass(frozen=True)
class LotteryOptions(RunOptions):
    """How ``sparseflow lottery`` runs a job: where, which criteria density, what it recomputes and shows."""

    out: Path | None = option(None, "Run directory (default runs/lottery-<dataset>-<model>-<hash>).")
    data_dir: Path | None = option(None, "Folder with the IDX .gz files (mnist, fashion-mnist).")
    criteria_at: float | None = option(
        None, "Density at which the criteria are checked (default: 0.05 on MNIST-1D, the reference's 95 % "
        "sparsity; else the last level).", min=0, max=1)
    recompute_level: int | None = option(None, "Delete level K and later ones and run them again.", min=0,
                                         metavar="K")
    progress: bool = option(True, "Show a progress bar (on stderr).", flag="--progress/--no-progress")
    workers: int = option(1, "Train the seeds in this many processes at once (e.g. one per core).", min=1)

    def __post_init__(self) -> None:
        check(self)


def level_counts(job: LotteryJob, sizes: dict[str, int]) -> list[dict[str, int]]:
    """Kept weights per level: level 0 keeps all; the schedule ends at the first level at or below
    ``target_density``, or after ``levels`` levels.

    ``sizes`` are the prunable layers' sizes in forward order (the last is the output layer). Layer-wise,
    each entry is {layer: kept}; with ``scope="global"`` the hidden layers' split is decided by the
    weights, so each entry is {"hidden": kept over the hidden layers, output layer: kept}. Raises when
    the target is not reachable in ``levels`` levels or a layer would lose all its weights.
    """
    names = list(sizes)
    out_name = names[-1]
    total = sum(sizes.values())

    def prune(n: int, fraction: float) -> int:
        return n - math.floor(fraction * n + 0.5)  # remove round_half_up(fraction * n) weights

    if job.scope == "global" and len(names) > 1:
        cur: dict[str, int] = {"hidden": total - sizes[out_name], out_name: sizes[out_name]}
    else:
        cur = dict(sizes)
    schedule: list[dict[str, int]] = [dict(cur)]
    cap = job.levels if job.levels is not None else MAX_LEVELS
    for level in range(1, cap + 1):
        if job.target_density is not None and sum(cur.values()) / total <= job.target_density + 1e-12:
            break
        nxt = {n: prune(c, job.out_fraction if n == out_name else job.prune_fraction) for n, c in cur.items()}
        if min(nxt.values()) < 1:
            raise SparseflowError(
                f"level {level} would leave no weights in {min(nxt, key=nxt.get)!r}; "
                f"target_density {job.target_density} is not reachable: raise it or lower prune_fraction"
            )
        cur = nxt
        schedule.append(dict(cur))
    final = sum(cur.values()) / total
    if job.target_density is not None and final > job.target_density + 1e-12:
        raise SparseflowError(
            f"target density {job.target_density:g} is not reachable in {cap} levels: pruning "
            f"{job.prune_fraction:g} per level (output layer {job.out_fraction:g}) reaches {final:.4g} after "
            f"{cap} levels; pass more levels, a larger prune fraction, or a higher target density"
        )
    return schedule
