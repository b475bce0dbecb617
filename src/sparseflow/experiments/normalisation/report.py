"""Result, statistics, pass criteria, figure and report of the normalisation experiment (:mod:`.normalisation`).

Intervals are 95 % Student-t intervals over seeds: mean ± t(0.975, n - 1) · sd / sqrt(n), sd with n - 1 (a
single seed has no interval: half-width 0). Cells with the same seed share the training subset, the init, the
mask and the batch order, so differences between two batch sizes are paired.

Criteria, per variant (dense, sparse), on the mean test accuracy over seeds:
- BatchNorm at the smallest batch is at least 3 pp below BatchNorm at the largest batch;
- GroupNorm and LayerNorm each vary by at most 1 pp across batch sizes (max - min of the means).
A quick run checks the same statements on its reduced grid. The no-norm row is the control: its range over
batch sizes is what the batch size does through optimisation alone (number of steps, gradient noise), and it
is reported next to the GroupNorm and LayerNorm ranges, so that a failed range can be told apart from an
effect of normalisation.

Besides the criteria, :func:`bn_minus` gives Wu & He's own comparison: acc(BatchNorm) - acc(GroupNorm or
LayerNorm) at the same batch size, paired over seeds. At equal steps much of what the batch size does to
optimisation cancels there, which the criteria (BatchNorm at batch 2 against batch 128, where the larger batch
has 64x fewer steps) cannot do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparseflow.experiments.normalisation.run import Cell, NormConfig
from sparseflow.training.report import md_table, save_figure
from sparseflow.analysis.stats import t_interval as _t_interval

BN_DROP_PP, RANGE_PP = 3.0, 1.0
LABEL = {"batch": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm", "none": "no norm"}


def t_interval(values: Any) -> tuple[float, float]:
    """(mean, half-width of the 95 % Student-t interval) of ``values``; half-width 0 for a single value."""
    return _t_interval(values, single=True)


@dataclass(frozen=True)
class NormResult:
    config: NormConfig
    cells: tuple[Cell, ...]
    wall_s: float

    def accuracies(self, variant: str, norm: str, batch: int, key: str = "accuracy") -> list[float]:
        """Test accuracies of one grid point in seed order (``key``: ``accuracy`` or ``batch_stats_accuracy``)."""
        found = {c.seed: getattr(c, key) for c in self.cells if (c.variant, c.norm, c.batch) == (variant, norm, batch)}
        return [found[s] for s in self.config.seeds if s in found]

    def mean(self, variant: str, norm: str, batch: int) -> float:
        return float(np.mean(self.accuracies(variant, norm, batch)))

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> NormResult:
        """The result back from its ``results.json`` (as :meth:`to_json` wrote it), e.g. to redraw the report."""
        cfg = dict(obj["config"])
        for k in ("seeds", "norms", "batch_sizes", "variants"):
            cfg[k] = tuple(cfg[k])
        cfg["data_dir"] = Path(cfg["data_dir"])
        return cls(NormConfig(**cfg), tuple(Cell(**c) for c in obj["cells"]), float(obj["wall_s"]))

    def summary(self) -> list[dict[str, Any]]:
        return summary(self)

    def criteria(self) -> dict[str, dict[str, Any]]:
        return criteria(self)

    def to_json(self) -> dict[str, Any]:
        cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()}
        return {"command": "experiment normalisation", "quick": self.config.quick, "wall_s": self.wall_s,
                "config": cfg, "summary": self.summary(), "ranges": ranges(self), "bn_minus": bn_minus(self),
                "cells": [asdict(c) for c in self.cells], "criteria": self.criteria()}


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


def criteria(result: NormResult) -> dict[str, dict[str, Any]]:
    cfg, out = result.config, {}
    lo, hi = min(cfg.batch_sizes), max(cfg.batch_sizes)
    rng = ranges(result)
    for v in cfg.variants:
        if "batch" in cfg.norms:
            diff = 100 * (np.array(result.accuracies(v, "batch", hi)) - np.array(result.accuracies(v, "batch", lo)))
            drop, half = t_interval(diff)  # paired over seeds
            out[f"{v}: BN drop, batch {lo} vs {hi}"] = {
                "value": drop, "pass": bool(drop >= BN_DROP_PP), "interval_pp": [drop - half, drop + half],
                "target": f"mean acc(BN, batch {hi}) - mean acc(BN, batch {lo}) >= {BN_DROP_PP:g} pp"}
        for n in ("group", "layer"):
            if n in cfg.norms:
                r = rng[f"{v}/{n}"]
                out[f"{v}: {LABEL[n]} range over batch sizes"] = {
                    "value": r["range_pp"], "pass": bool(r["range_pp"] <= RANGE_PP),
                    "best_batch": r["best_batch"], "worst_batch": r["worst_batch"],
                    "control_range_pp": rng[f"{v}/none"]["range_pp"] if "none" in cfg.norms else None,
                    "target": f"max - min of mean acc over batch sizes {list(cfg.batch_sizes)} <= {RANGE_PP:g} pp"}
    return out


def plot_accuracy(result: NormResult, path: Path) -> None:
    """Test accuracy vs batch size (log2 axis), one line per norm, one panel per variant; 95 % t-interval bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    fig, axes = plt.subplots(1, len(cfg.variants), figsize=(5.8 * len(cfg.variants), 4.4), squeeze=False, sharey=True)
    for ax, v in zip(axes[0], cfg.variants):
        for k, n in enumerate(cfg.norms):
            stats = [t_interval([100 * a for a in result.accuracies(v, n, b)]) for b in cfg.batch_sizes]
            x = np.array(cfg.batch_sizes) * 2 ** (0.05 * (k - (len(cfg.norms) - 1) / 2))  # spread overlapping bars
            ax.errorbar(x, [m for m, _ in stats], yerr=[h for _, h in stats], marker="o", ms=4, capsize=3,
                        color=f"C{k}", label=LABEL[n])
            if n == "batch":
                bs = [100 * np.mean(result.accuracies(v, n, b, "batch_stats_accuracy")) for b in cfg.batch_sizes]
                ax.plot(x, bs, ls=":", marker="x", color=f"C{k}", label="BatchNorm, test batches use own statistics")
        ax.set_xscale("log", base=2)
        ax.set_xticks(cfg.batch_sizes, [str(b) for b in cfg.batch_sizes])
        ax.minorticks_off()
        title = "dense" if v == "dense" else f"{100 * cfg.sparsity:g} % sparse (static ERK)"
        ax.set(xlabel="training batch size (log2 scale)", title=f"{title}, {cfg.epochs} epoch(s) each")
        ax.grid(alpha=0.3)
    lo, hi = axes[0, 0].get_ylim()  # shared: intervals of 2 seeds can reach past the possible 0-100 %
    axes[0, 0].set_ylim(max(lo, 0.0), min(hi, 100.0))
    bars = f"bars 95 % t-interval over {len(cfg.seeds)} seeds" if len(cfg.seeds) > 1 else "1 seed, no bars"
    axes[0, 0].set_ylabel(f"test accuracy (%), mean; {bars}")
    axes[0, 0].legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def plot_bn_minus(result: NormResult, path: Path) -> None:
    """acc(BatchNorm) - acc(GroupNorm / LayerNorm) vs batch size, per variant; Wu & He's ImageNet point at batch 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, rows = result.config, bn_minus(result)
    fig, axes = plt.subplots(1, len(cfg.variants), figsize=(5.8 * len(cfg.variants), 4.2), squeeze=False, sharey=True)
    for ax, v in zip(axes[0], cfg.variants):
        for k, n in enumerate(("group", "layer")):
            r = [x for x in rows if (x["variant"], x["norm"]) == (v, n)]
            if r:
                xs = np.array([x["batch"] for x in r]) * 2 ** (0.04 * (2 * k - 1))
                ax.errorbar(xs, [x["diff_pp"] for x in r], yerr=[x["half_pp"] for x in r], marker="o", ms=4,
                            capsize=3, color=f"C{2 if n == 'group' else 1}", label=f"BatchNorm - {LABEL[n]}")
        if min(cfg.batch_sizes) <= 2:
            ax.plot([2], [-10.6], "k*", ms=12, label="Wu & He 2018, ResNet-50 ImageNet, batch 2: -10.6 pp")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(cfg.batch_sizes, [str(b) for b in cfg.batch_sizes])
        ax.minorticks_off()
        title = "dense" if v == "dense" else f"{100 * cfg.sparsity:g} % sparse (static ERK)"
        ax.set(xlabel="training batch size (log2 scale)", title=title)
        ax.grid(alpha=0.3)
    bars = "paired 95 % t-interval" if len(cfg.seeds) > 1 else "1 seed, no bars"
    axes[0, 0].set_ylabel(f"test accuracy difference (pp), {bars}")
    axes[0, 0].legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def conclusion(result: NormResult) -> str:
    """What the measurement says, per variant: the BN drop (and whether running statistics cause it), the
    GN / LN ranges next to the no-norm control and the seed noise."""
    cfg, crit, rng = result.config, result.criteria(), ranges(result)
    lo, hi = min(cfg.batch_sizes), max(cfg.batch_sizes)
    rows = {(r["variant"], r["norm"], r["batch"]): r for r in summary(result)}
    parts = []
    for v in cfg.variants:
        text = [f"**{v}**:"]
        key = f"{v}: BN drop, batch {lo} vs {hi}"
        if key in crit:
            c = crit[key]
            text.append(f"BatchNorm's accuracy at batch {hi} minus at batch {lo}: {c['value']:+.1f} pp (paired 95 % "
                        f"interval [{c['interval_pp'][0]:.1f}, {c['interval_pp'][1]:.1f}]).")
            own, run = rows[(v, "batch", lo)]["batch_stats_mean"], rows[(v, "batch", lo)]["mean"]
            if own is not None:
                text.append(f"At batch {lo}, normalising each test batch by its own statistics gives {100 * own:.1f} % "
                            f"against {100 * run:.1f} % with the running averages"
                            + (": the running estimate costs accuracy." if own > run + 0.01 else
                               ": the running averages are not what costs accuracy there; per-batch statistics of "
                               f"{lo} examples are the noisier normalisation, at test time as in training."))
        if "batch" in cfg.norms and "group" in cfg.norms:
            g = {x["batch"]: x for x in bn_minus(result) if (x["variant"], x["norm"]) == (v, "group")}
            gh, gl = g[hi], g[lo]
            text.append("Against GroupNorm at the same batch size (the same steps, so much of what the batch size "
                        "does to optimisation cancels; BatchNorm also converges faster in few steps, which adds to "
                        f"its lead at large batches), BatchNorm is {gh['diff_pp']:+.1f} ± {gh['half_pp']:.1f} pp at "
                        f"batch {hi} and {gl['diff_pp']:+.1f} ± {gl['half_pp']:.1f} pp at batch {lo}: a swing of "
                        f"{gh['diff_pp'] - gl['diff_pp']:.1f} pp against BatchNorm as the batch shrinks (Wu & He: "
                        "-10.6 pp at batch 2 on ImageNet).")
        shown = [n for n in ("group", "layer", "none") if n in cfg.norms]
        if shown:
            text.append("Ranges of the mean accuracy over batch sizes: "
                        + ", ".join(f"{LABEL[n]} {rng[f'{v}/{n}']['range_pp']:.1f} pp" for n in shown) + "; without "
                        f"batch {hi}, the one with the fewest steps: "
                        + ", ".join(f"{LABEL[n]} {_span(result, v, n, cfg.batch_sizes[:-1]):.1f} pp" for n in shown)
                        + ".")
        halves = [100 * rows[(v, n, b)]["half"] for n in cfg.norms for b in cfg.batch_sizes]
        noise = float(np.median(halves))
        if len(cfg.seeds) > 1:
            text.append(f"The median 95 % half-width of one cell is {np.median(halves):.1f} pp: differences of "
                        "that size between cells are within seed noise.")
        failed = [n for n in ("group", "layer")
                  if not crit.get(f"{v}: {LABEL[n]} range over batch sizes", {"pass": True})["pass"]]
        if failed:
            names, one = " and ".join(LABEL[n] for n in failed), len(failed) == 1
            text.append(f"{names} {'computes' if one else 'compute'} nothing across the batch, so "
                        f"{'its' if one else 'their'} spread comes from optimisation (steps, learning rate, gradient "
                        "noise) and seed noise, not from batch statistics.")
            if "none" in cfg.norms:
                ctrl = rng[f"{v}/none"]["range_pp"]
                above = [n for n in failed if rng[f"{v}/{n}"]["range_pp"] > ctrl + noise]
                verb = "spreads" if len(above) == 1 else "spread"
                text.append(f"The no-norm control spreads {ctrl:.1f} pp" + (
                    f"; {' and '.join(LABEL[n] for n in above)} {verb} more, so the batch size changes how far "
                    "training gets with that normalisation more than without any." if above else
                    ", about as much (within the seed noise) or more: the batch size acts through optimisation at "
                    "this budget."))
        parts.append(" ".join(text))
    return "\n\n".join(parts)


def _span(result: NormResult, variant: str, norm: str, batches: tuple[int, ...]) -> float:
    """max - min over ``batches`` of the mean accuracy, in pp."""
    means = [100 * result.mean(variant, norm, b) for b in batches]
    return max(means) - min(means)


def _bn_minus_md(result: NormResult) -> str:
    cfg, rows = result.config, bn_minus(result)
    if not rows:
        return ""
    at = {(x["variant"], x["norm"], x["batch"]): x for x in rows}
    def cell(v: str, n: str, b: int) -> str:
        return f"{at[(v, n, b)]['diff_pp']:+.1f} ± {at[(v, n, b)]['half_pp']:.1f}"

    body = [[v, f"BatchNorm - {LABEL[n]}"] + [cell(v, n, b) for b in cfg.batch_sizes]
            for v in cfg.variants for n in ("group", "layer") if (v, n, cfg.batch_sizes[0]) in at]
    return ("**BatchNorm against the batch-independent norms at the same batch size** (pp, paired over seeds, "
            "± 95 % t half-width; Wu & He 2018 compare this way: -10.6 pp for BatchNorm at batch 2 on "
            "ImageNet):\n\n"
            + md_table(["variant", "difference"] + [f"batch {b}" for b in cfg.batch_sizes], body)
            + "\n\n![BatchNorm minus GroupNorm / LayerNorm vs batch size](bn_minus.png)\n")


def report_markdown(result: NormResult, command: str) -> str:
    cfg, crit, rows = result.config, result.criteria(), summary(result)
    at = {(r["variant"], r["norm"], r["batch"]): r for r in rows}
    tables = []
    for v in cfg.variants:
        body = []
        for n in cfg.norms:
            means = [100 * at[(v, n, b)]["mean"] for b in cfg.batch_sizes]
            body.append([LABEL[n]] + [f"{m:.1f} ± {100 * at[(v, n, b)]['half']:.1f}"
                                      for m, b in zip(means, cfg.batch_sizes)]
                        + [f"{max(means) - min(means):.1f}"])
        if "batch" in cfg.norms:
            body.append(["BatchNorm, own batch statistics"]
                        + [f"{100 * at[(v, 'batch', b)]['batch_stats_mean']:.1f}" for b in cfg.batch_sizes] + ["-"])
        head = ["norm"] + [f"batch {b}" for b in cfg.batch_sizes] + ["range (pp)"]
        tables.append(f"**{v}**\n\n" + md_table(head, body))
    steps = ", ".join(f"{at[(cfg.variants[0], cfg.norms[0], b)]['steps']} steps at batch {b}" for b in cfg.batch_sizes)
    lrs = ", ".join(f"{at[(cfg.variants[0], cfg.norms[0], b)]['lr']:.2g}" for b in cfg.batch_sizes)
    crows = [[k, f"{c['value']:+.2f}", c["target"], "pass" if c["pass"] else "FAIL"] for k, c in crit.items()]
    verdict = "all criteria pass" if all(c["pass"] for c in crit.values()) else \
        "some criteria FAIL: " + ", ".join(k for k, c in crit.items() if not c["pass"])
    side = 28 // cfg.pool
    test = "all 10000" if cfg.test_size is None else f"a fixed subset of {cfg.test_size}"
    per_run = np.mean([c.seconds for c in result.cells])
    return f"""# Normalisation under small batches{' (quick run)' if cfg.quick else ''}

`{command}`: wall time {result.wall_s / 60:.1f} min for {len(result.cells)} training runs ({per_run:.1f} s each on
average). **Verdict: {verdict}.**

ResNet-8 (width {cfg.width}; one BasicBlock per stage) on Fashion-MNIST average-pooled to {side} x {side};
{cfg.train_size} training images (a seeded subset per seed), {test} test images. Every cell trains {cfg.epochs}
epoch(s) ({steps}). Adam, lr = {cfg.lr_ref:g} x sqrt(batch / {cfg.batch_ref}) (square-root scaling rule: {lrs}),
cosine decay, no weight decay. Sparse: static random ERK mask at {100 * cfg.sparsity:g} % sparsity
(`RandomSparse`), kept weights rescaled to their fan-in. Test accuracy in eval mode (BatchNorm with running
statistics); the extra BatchNorm row normalises each test batch of the training batch size by its own
statistics instead. Seeds {list(cfg.seeds)}, paired across cells. Entries: mean test accuracy (%) ± half-width
of the 95 % t-interval over seeds; range: max - min of the means over batch sizes. The no-norm row is the
control: nothing in it depends on the batch through normalisation, so its range is what batch size does through
optimisation alone (steps, gradient noise) at this budget.

Reference: Wu & He 2018, fig. 1: at batch 2 per GPU BatchNorm has 10.6 % higher ImageNet error than GroupNorm.

{chr(10).join(t + chr(10) for t in tables)}
![test accuracy vs batch size](accuracy.png)

{_bn_minus_md(result)}
## Criteria

{md_table(["criterion", "measured (pp)", "target", "result"], crows)}

## Conclusion

{conclusion(result)}
"""


def write_outputs(result: NormResult, out: Path, command: str = "sparseflow experiment normalisation") -> None:
    """accuracy.png, bn_minus.png, then the stamped results.json and report.md into ``out`` (created if missing)."""
    from sparseflow.training.rundir import write_run

    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(result, out / "accuracy.png")
    plot_bn_minus(result, out / "bn_minus.png")
    write_run(out, "normalisation", {**result.to_json(), "command_line": command}, report_markdown(result, command))
