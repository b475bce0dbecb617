"""The methods experiment's measurement: per-cell means with 95 % intervals, the measured ordering of the
methods at every dataset x sparsity, its agreement with the literature (Kendall's τ_b), the criteria and the
JSON. Training: :mod:`sparseflow.experiments.methods.train`; report: :mod:`.report`; figures: :mod:`.plots`.

Reference (:data:`REFERENCE`): Evci et al. 2020 ("Rigging the Lottery"), ResNet-50 on ImageNet at 90 %
sparsity, top-1 %: static 65.8 < SNIP 67.2 < SET 69.6 < RigL 72.0 (ERK 73.0) < GMP 73.9. Their static and
SET use uniform densities and ours ERK; our RigL is ERK, so it takes the ERK figure. The five methods'
order is the same under either mapping. τ_b is computed at every sparsity against this one ordering.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from dataclasses import dataclass
from typing import Any

from sparseflow.experiments.methods.grid import FAMILY, ComparisonConfig, RunRecord, config_from_json, config_json

REFERENCE = {"static ERK": 65.8, "SNIP": 67.2, "SET": 69.6, "RigL": 73.0, "GMP": 73.9}
REFERENCE_SPARSITY = 0.9
TAU_GOAL = 0.6  # --budget long: Kendall τ_b of the means against REFERENCE at 90 %, on every dataset
CONVERGED_PP = 0.2  # --budget long: dense at twice the budget gains at most this much (mean over seeds)
BOOTSTRAP = 2000  # resamples of the seeds for τ_b's interval
# t quantile 0.975 for 1..30 degrees of freedom (two-sided 95 % interval of a mean).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """Student's t 0.975 quantile; beyond the table, the Cornish-Fisher expansion around z = 1.95996."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def ci95(values: list[float]) -> float | None:
    """Half-width of the 95 % t-interval of the mean of ``values`` (None for fewer than two)."""
    if len(values) < 2:
        return None
    return t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's τ_b = (P - Q) / sqrt((P + Q + T_x)(P + Q + T_y)): P, Q concordant and discordant pairs,
    T_x, T_y pairs tied only in x or only in y (pairs tied in both count nowhere). NaN when undefined."""
    p = q = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = (x[i] > x[j]) - (x[i] < x[j]), (y[i] > y[j]) - (y[i] < y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif dx == dy:
                p += 1
            else:
                q += 1
    denom = math.sqrt((p + q + tx) * (p + q + ty))
    return (p - q) / denom if denom else math.nan


def bootstrap_tau(cells: dict[str, dict[int, float]], reference: dict[str, float], n: int = BOOTSTRAP,
                  seed: int = 0) -> tuple[float, float] | None:
    """95 % percentile interval of τ_b (the means over seeds against ``reference``) when the seeds are
    resampled with replacement ``n`` times, each resample drawing whole seeds (a seed is one paired replicate
    of every method). ``cells``: method -> seed -> accuracy. None with fewer than two shared seeds."""
    methods = [m for m in reference if m in cells]
    seeds = sorted(set.intersection(*(set(cells[m]) for m in methods))) if methods else []
    if len(seeds) < 2 or len(methods) < 2:
        return None
    rng = random.Random(seed)
    ref = [reference[m] for m in methods]
    taus = []
    for _ in range(n):
        pick = [rng.choice(seeds) for _ in seeds]
        tau = kendall_tau_b([statistics.fmean(cells[m][k] for k in pick) for m in methods], ref)
        taus.append(0.0 if math.isnan(tau) else tau)  # all means tied: no order either way
    taus.sort()
    return taus[int(0.025 * (n - 1))], taus[math.ceil(0.975 * (n - 1))]


@dataclass(frozen=True)
class ComparisonResult:
    config: ComparisonConfig
    runs: tuple[RunRecord, ...]
    wall_s: float
    skipped: tuple[str, ...] = ()  # datasets left out for want of their folder
    command: str = "sparseflow experiment methods"  # the command line that reproduces the run

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ComparisonResult:
        """Rebuild a result from its :meth:`to_json` (e.g. ``rundir.read_run(out, "methods")``)."""
        return cls(config_from_json(obj["config"]), tuple(RunRecord(**r) for r in obj["runs"]), float(obj["wall_s"]),
                   command=obj.get("command_line", cls.command))

    def accuracies(self, dataset: str, method: str, sparsity: float) -> dict[int, float]:
        """seed -> test accuracy of one cell (dense: any sparsity)."""
        return {r.seed: r.accuracy for r in self.runs if r.dataset == dataset and r.method == method
                and (FAMILY.get(method) == "dense" or abs(r.sparsity - sparsity) < 1e-9)}

    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for s in self.config.settings:
            for method, sp in [(d, 0.0) for d, _ in self.config.dense()] + [
                    (m, x) for m in self.config.labels() for x in self.config.sparsities]:
                runs = [r for r in self.runs if r.dataset == s.dataset and r.method == method and abs(r.sparsity - sp) < 1e-9]
                if not runs:
                    continue
                acc = [r.accuracy for r in runs]
                rows.append({"dataset": s.dataset, "method": method, "family": FAMILY.get(method, "dense"),
                             "sparsity": sp, "n": len(acc), "mean": statistics.fmean(acc), "ci95": ci95(acc),
                             "std": statistics.stdev(acc) if len(acc) > 1 else None, "accuracies": acc,
                             "measured_sparsity": statistics.fmean(r.measured_sparsity for r in runs),
                             "budgets": runs[0].budgets, "steps": runs[0].steps})
        return rows

    def orderings(self) -> list[dict[str, Any]]:
        """Per dataset x sparsity: methods from worst to best mean accuracy, τ_b of the mean accuracies against
        REFERENCE, τ_b of each seed alone (every method of a seed shares its initialisation, data order and
        subset, so a seed is one paired replicate of the whole ordering) with the 95 % t-interval of their
        mean, the 95 % bootstrap interval of τ_b of the means over resampled seeds (:func:`bootstrap_tau`),
        and the reference pairs measured the other way round with their paired 95 % interval."""
        out = []
        labels = self.config.labels()
        for s in self.config.settings:
            for sp in self.config.sparsities:
                cells = {m: self.accuracies(s.dataset, m, sp) for m in labels}
                means = {m: statistics.fmean(a.values()) for m, a in cells.items() if a}
                ref = [m for m in REFERENCE if m in means]
                tau = kendall_tau_b([means[m] for m in ref], [REFERENCE[m] for m in ref])
                shared = sorted(set.intersection(*(set(cells[m]) for m in ref))) if ref else []
                per_seed = {k: kendall_tau_b([cells[m][k] for m in ref], [REFERENCE[m] for m in ref]) for k in shared}
                seed_taus = [t for t in per_seed.values() if not math.isnan(t)]
                flipped = []
                for i, lo in enumerate(ref):
                    for hi in ref[i + 1:]:  # the reference has lo < hi
                        if means[lo] > means[hi]:
                            seeds = sorted(set(cells[lo]) & set(cells[hi]))
                            d = [100 * (cells[lo][k] - cells[hi][k]) for k in seeds]
                            half = ci95(d)
                            flipped.append({"measured": f"{lo} > {hi}", "reference": f"{lo} < {hi}",
                                            "diff_pp": statistics.fmean(d), "ci95_pp": half,
                                            "resolved": half is not None and statistics.fmean(d) - half > 0})
                boot = bootstrap_tau({m: cells[m] for m in ref}, REFERENCE)
                out.append({"dataset": s.dataset, "sparsity": sp,
                            "ascending": sorted(means, key=lambda m: (means[m], labels.index(m))),
                            "means": means, "reference_order": ref, "tau_b": tau,
                            "tau_b_bootstrap95": None if boot is None else list(boot),
                            "tau_b_seeds": per_seed, "tau_b_seed_mean": statistics.fmean(seed_taus) if seed_taus else math.nan,
                            "tau_b_ci95": ci95(seed_taus), "flipped": flipped})
        return out

    def criteria(self) -> dict[str, dict[str, Any]]:
        cfg = self.config
        have = {(r.dataset, r.method, round(r.sparsity, 9), r.seed) for r in self.runs}
        want = {(s.dataset, m, round(sp, 9), seed) for s in cfg.settings for seed in cfg.seeds
                for m, sp in [(d, 0.0) for d, _ in cfg.dense()] + [(m, x) for m in cfg.labels() for x in cfg.sparsities]}
        finite = all(math.isfinite(r.accuracy) for r in self.runs)
        sparse = [r for r in self.runs if FAMILY.get(r.method) != "dense"]
        worst = min((r.measured_sparsity - r.sparsity) * r.pruned_weights for r in sparse) if sparse else 0.0
        steps = {s.dataset: sorted({r.steps for r in self.runs if r.dataset == s.dataset}) for s in cfg.settings}
        planned = {s.dataset: s.steps() for s in cfg.settings}
        equal = all(r.steps == planned.get(r.dataset, -1) * cfg.multiple(r.method) for r in self.runs)
        out = {
            "table complete": {
                "value": len(have & want) / len(want), "pass": have >= want and finite,
                "target": f"1 ({len(want)} runs: every dataset x method x sparsity x seed, dense per seed; finite accuracy)"},
            "sparsity reached": {
                "value": round(worst, 6), "pass": worst >= -1.0 - 1e-6,
                "target": "every sparse run: zeros among the pruned weights >= target - 1 weight "
                          "(value: min over runs of (measured - target) x N, in weights)"},
            "equal budget": {
                "value": steps, "pass": equal,
                "target": f"every run takes the planned {planned} optimizer steps (IMP: per level)"
                          + ("; the 2x and 5x runs twice and five times that" if cfg.long else "")},
        }
        if cfg.long:
            out.update(self.long_criteria())
        return out

    def long_criteria(self) -> dict[str, dict[str, Any]]:
        """--budget long: per dataset, τ_b of the means at 90 % against the reference (>= TAU_GOAL, with the
        bootstrap interval) and whether dense has converged (its 2x run gains <= CONVERGED_PP)."""
        cfg, out = self.config, {}
        quick = ("the quick run trains 1,000 examples for 3 epochs with one seed: neither converged nor with "
                 "seeds to resample; the full run tests it") if cfg.quick else None
        cells = {c["dataset"]: c for c in self.orderings() if abs(c["sparsity"] - REFERENCE_SPARSITY) < 1e-9}
        for s in cfg.settings:
            c = cells.get(s.dataset)
            if c is not None:
                tau = c["tau_b"]
                out[f"ordering vs the RigL paper, {s.dataset}"] = {
                    "value": None if math.isnan(tau) else round(tau, 3), "interval": c["tau_b_bootstrap95"],
                    "target": f"Kendall τ_b of the means at 90 % >= {TAU_GOAL} (interval: 95 % bootstrap over seeds)",
                    **({"pass": None, "note": quick} if quick else {"pass": not math.isnan(tau) and tau >= TAU_GOAL})}
            one, two = self.accuracies(s.dataset, "dense", 0.0), self.accuracies(s.dataset, "dense 2x", 0.0)
            d = [100 * (two[k] - one[k]) for k in sorted(set(one) & set(two))]
            if d:
                gain = statistics.fmean(d)
                out[f"dense converged, {s.dataset}"] = {
                    "value": round(gain, 3), "interval": ci95(d),
                    "target": f"dense at 2x the budget gains <= {CONVERGED_PP} pp (mean over seeds, paired)",
                    **({"pass": None, "note": quick} if quick else {"pass": gain <= CONVERGED_PP})}
        return out

    def agreement(self) -> dict[str, Any]:
        cells = self.orderings()
        taus = [c["tau_b"] for c in cells if not math.isnan(c["tau_b"])]
        return {"reference": REFERENCE, "source": "Evci et al. 2020, ResNet-50 / ImageNet, 90 % sparsity (top-1 %)",
                "tau_b": {f"{c['dataset']} {c['sparsity']:g}": c["tau_b"] for c in cells},
                "mean_tau_b": statistics.fmean(taus) if taus else None,
                "at_90": {c["dataset"]: {"measured": " < ".join(m for m in c["ascending"] if m in REFERENCE),
                                         "reference": " < ".join(REFERENCE), "tau_b": c["tau_b"],
                                         "tau_b_seed_mean": c["tau_b_seed_mean"], "tau_b_ci95": c["tau_b_ci95"],
                                         "tau_b_bootstrap95": c["tau_b_bootstrap95"],
                                         "flipped": [f["measured"] for f in c["flipped"]]}
                          for c in cells if abs(c["sparsity"] - REFERENCE_SPARSITY) < 1e-9},
                "note": "1 = the reference order, -1 = reversed, 0 = unrelated; a pass condition with --budget long "
                        f"(>= {TAU_GOAL} at 90 % on every dataset), reported only on the short budget"}

    def to_json(self) -> dict[str, Any]:
        return {"command": "experiment methods", "quick": self.config.quick, "wall_s": self.wall_s,
                "config": config_json(self.config), "settings": {s.dataset: s.describe() for s in self.config.settings},
                "imp": imp_definition(self.config), "summary": self.summary(), "orderings": self.orderings(),
                "agreement": self.agreement(), "criteria": self.criteria(),
                "runs": [dataclasses.asdict(r) for r in self.runs]}


def imp_definition(cfg: ComparisonConfig) -> str:
    levels = " -> ".join(f"{s:g}" for s in (0.0, *cfg.imp_levels()))
    return (f"IMP with learning-rate rewinding (Renda et al. 2020), sparsity {levels}: each level prunes the "
            "previous level's trained weights layer-wise by magnitude (uniform density) and retrains the kept "
            "weights for the same budget as every other run, with the full LR schedule. IMP at the i-th level "
            "has spent i + 1 budgets (the dense level included); the table's 'budgets' column says how many.")
