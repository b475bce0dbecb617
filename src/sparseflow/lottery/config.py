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
from typing import Any

from sparseflow.training.data import DATASETS
from sparseflow.errors import SparseflowError
from sparseflow.training.models import MODELS
from sparseflow.training.loop import LR_SCHEDULES, OPTIMIZERS

REWINDS = ("weights", "lr")  # rewind the kept weights to step k (Frankle et al.), or only the LR (Renda et al.)
MAX_LEVELS = 100  # a target density needs more levels than this only by mistake


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
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
    """

    dataset: str = "mnist1d"
    model: str = "mlp"
    hidden: tuple[int, ...] | None = (500, 500)
    subset: int | None = None
    test_subset: int | None = None
    val_size: int = 0  # held out of the training set for early stopping; 0: measured on the test set
    iterations: int = 1000
    batch_size: int = 100
    optimizer: str = "adam"
    lr: float = 3e-3
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    eval_every: int = 100
    prune_fraction: float = 0.2
    output_fraction: float | None = None  # None: prune_fraction / 2 (Frankle & Carbin 2019)
    scope: str = "layerwise"  # "layerwise" | "global"
    target_density: float | None = 0.02
    levels: int | None = None
    rewind: str = "weights"
    rewind_step: int = 0
    reinit: bool = True
    random_mask: bool = True
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> SparseflowError:
            return SparseflowError(f"lottery {name} must be {want}, got {getattr(self, name)!r}")

        def one_of(name: str, choices: tuple[str, ...]) -> None:
            if getattr(self, name) not in choices:
                raise bad(name, f"one of {', '.join(choices)}")

        one_of("dataset", DATASETS)
        one_of("model", MODELS)
        one_of("optimizer", OPTIMIZERS)
        one_of("lr_schedule", LR_SCHEDULES)
        one_of("scope", ("layerwise", "global"))
        one_of("rewind", REWINDS)
        if self.hidden is not None:
            if self.model != "mlp":
                object.__setattr__(self, "hidden", None)  # only the plain MLP has widths to set
            else:
                object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.seeds or not all(_is_int(s) for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise bad("seeds", "a non-empty tuple of distinct integers")
        for name in ("iterations", "batch_size", "eval_every"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= 1):
                raise bad(name, "an integer >= 1")
        for name in ("subset", "test_subset"):
            v = getattr(self, name)
            if v is not None and not (_is_int(v) and v >= 1):
                raise bad(name, "a positive number of examples or None")
        if not (_is_int(self.val_size) and self.val_size >= 0):
            raise bad("val_size", "an integer >= 0")
        if not (_is_num(self.lr) and self.lr > 0):
            raise bad("lr", "a finite number > 0")
        if not (_is_num(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "a finite number >= 0")
        for name in ("prune_fraction", "output_fraction"):
            v = getattr(self, name)
            if v is None and name == "output_fraction":
                continue
            if not (_is_num(v) and 0 < v < 1):
                raise SparseflowError(
                    f"lottery {name} must be in (0, 1) (0.2 prunes 20 % of the remaining weights per level), got {v!r}"
                )
        if not (_is_int(self.rewind_step) and 0 <= self.rewind_step < self.iterations):
            raise SparseflowError(
                f"rewind_step {self.rewind_step!r} is beyond the training length: it must be an integer in "
                f"[0, iterations={self.iterations}); pass a smaller rewind step or more iterations"
            )
        if self.target_density is None and self.levels is None:
            raise SparseflowError("lottery needs a stopping rule: pass target_density (e.g. 0.036), levels, or both")
        if self.target_density is not None and not (_is_num(self.target_density) and 0 < self.target_density < 1):
            raise bad("target_density", "in (0, 1) (0.036 keeps 3.6 % of the weights)")
        if self.levels is not None and not (_is_int(self.levels) and 1 <= self.levels <= MAX_LEVELS):
            raise bad("levels", f"an integer in [1, {MAX_LEVELS}]")

    # --- derived values ------------------------------------------------------------------------
    @property
    def out_fraction(self) -> float:
        return self.prune_fraction / 2 if self.output_fraction is None else self.output_fraction

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = None if self.hidden is None else list(self.hidden)
        d["seeds"] = list(self.seeds)
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
