"""Report of the normalisation experiment: the conclusion, report.md, results.json, the figures and the console
table (statistics and criteria: :mod:`.result`; figures: :mod:`.plots`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sparseflow.experiments.normalisation.plots import plot_accuracy, plot_bn_minus, plot_curves
from sparseflow.experiments.normalisation.result import LABEL, NormResult, bn_minus, ranges, summary
from sparseflow.experiments.protocol import TableData
from sparseflow.training.report import md_table, verdict
from sparseflow.training.rundir import write_run


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
            text.append("Against GroupNorm at the same batch size (the same steps and learning rate, so what the "
                        "batch size does to optimisation cancels), "
                        f"BatchNorm is {gh['diff_pp']:+.1f} ± {gh['half_pp']:.1f} pp at "
                        f"batch {hi} and {gl['diff_pp']:+.1f} ± {gl['half_pp']:.1f} pp at batch {lo}: a swing of "
                        f"{gh['diff_pp'] - gl['diff_pp']:.1f} pp against BatchNorm as the batch shrinks (Wu & He: "
                        "-10.6 pp at batch 2 on ImageNet).")
        shown = [n for n in ("group", "layer", "none") if n in cfg.norms]
        if shown:
            text.append("Ranges of the mean accuracy over batch sizes: "
                        + ", ".join(f"{LABEL[n]} {rng[f'{v}/{n}']['range_pp']:.1f} pp" for n in shown) + ".")
        halves = [100 * rows[(v, n, b)]["half"] for n in cfg.norms for b in cfg.batch_sizes]
        noise = float(np.median(halves))
        if cfg.seeds > 1:
            text.append(f"The median 95 % half-width of one cell is {np.median(halves):.1f} pp: differences of "
                        "that size between cells are within seed noise.")
        failed = [n for n in ("group", "layer")
                  if crit.get(f"{v}: {LABEL[n]} range over batch sizes", {"pass": True})["pass"] is False]
        if failed:
            names, one = " and ".join(LABEL[n] for n in failed), len(failed) == 1
            text.append(f"{names} {'computes' if one else 'compute'} nothing across the batch, so "
                        f"{'its' if one else 'their'} spread comes from optimisation (the gradient noise of the "
                        "batch size at its scaled learning rate, or training not yet converged) and seed noise, not "
                        "from batch statistics.")
            if "none" in cfg.norms:
                ctrl = rng[f"{v}/none"]["range_pp"]
                above = [n for n in failed if rng[f"{v}/{n}"]["range_pp"] > ctrl + noise]
                verb = "spreads" if len(above) == 1 else "spread"
                text.append(f"The no-norm control spreads {ctrl:.1f} pp" + (
                    f"; {' and '.join(LABEL[n] for n in above)} {verb} more, so the batch size changes how far "
                    "training gets with that normalisation more than without any." if above else
                    ", about as much (within the seed noise) or more: the batch size acts through optimisation, "
                    "with or without a norm."))
        parts.append(" ".join(text))
    return "\n\n".join(parts)


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


def report_markdown(result: NormResult) -> str:
    cfg, crit, rows, command = result.config, result.criteria(), summary(result), result.command
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
    steps = ", ".join(f"{at[(cfg.variants[0], cfg.norms[0], b)]['steps']} at batch {b}" for b in cfg.batch_sizes)
    lrs = ", ".join(f"{at[(cfg.variants[0], cfg.norms[0], b)]['lr']:.3g}" for b in cfg.batch_sizes)
    crows = [[k, f"{c['value']:+.3g}", c["target"], verdict(c)] for k, c in crit.items()]
    failed = [k for k, c in crit.items() if c["pass"] is False]
    summary_line = ("some criteria FAIL: " + ", ".join(failed) if failed else
                    "all criteria pass" if all(c["pass"] for c in crit.values()) else
                    "not testable at the quick scale (see the criteria)")
    side = 28 // cfg.pool
    test = "all 10000" if cfg.test_size is None else f"a fixed subset of {cfg.test_size}"
    per_run = np.mean([c.seconds for c in result.cells])
    return f"""# Normalisation under small batches{' (quick run)' if cfg.quick else ''}

`{command}`: wall time {result.wall_s / 60:.1f} min for {len(result.cells)} trained networks ({per_run:.1f} s of one
process each on average). **Verdict: {summary_line}.**

ResNet-8 (width {cfg.width}; one BasicBlock per stage) on Fashion-MNIST average-pooled to {side} x {side}:
a fixed subset of {cfg.train_size} training images, {cfg.val_size} held-out training images for validation,
{test} test images. Every cell trains {cfg.epochs} epochs ({steps} steps). SGD with momentum {cfg.momentum:g} and
weight decay {cfg.weight_decay:g}; learning rate {cfg.lr_ref:g} x batch / {cfg.batch_ref} (linear scaling rule: {lrs}),
linear warm-up from a tenth over {cfg.warmup_epochs:g} epochs, then cosine decay to zero. Sparse: static random
ERK mask at {100 * cfg.sparsity:g} % sparsity (`RandomSparse`), kept weights rescaled to each unit's dense norm. Test
accuracy in eval mode (BatchNorm with running statistics); the extra BatchNorm row normalises each test batch
of the training batch size by its own statistics instead. Seeds {list(cfg.seed_values)} (init, mask, batch order),
paired across cells. Entries: mean test accuracy (%) ± half-width of the 95 % t-interval over seeds; range: max -
min of the means over batch sizes. The no-norm row is the control: nothing in it depends on the batch through
normalisation, so its range is what the batch size does through optimisation alone.

Reference: Wu & He 2018, fig. 1: at batch 2 per GPU BatchNorm has 10.6 % higher ImageNet error than GroupNorm.

{chr(10).join(t + chr(10) for t in tables)}
![test accuracy vs batch size](accuracy.png)

**Learning curves** (validation loss after every epoch, mean over seeds; convergence is checked in the shaded
last 10 % of the epochs):

![validation loss vs epoch](curves.png)

{_bn_minus_md(result)}
## Criteria

{md_table(["criterion", "measured (pp)", "target", "result"], crows)}

## Conclusion

{conclusion(result)}
"""


def tables(result: NormResult) -> list[TableData]:
    """Test accuracy per variant, norm and batch size (mean ± 95 % half-width) with its range over batch sizes."""
    cfg = result.config
    rows = {(r["variant"], r["norm"], r["batch"]): r for r in summary(result)}
    body = []
    for v in cfg.variants:
        for n in cfg.norms:
            cells = [rows[(v, n, b)] for b in cfg.batch_sizes]
            means = [100 * r["mean"] for r in cells]
            body.append([v, LABEL[n], *(f"{m:.1f} ± {100 * r['half']:.1f}" for m, r in zip(means, cells)),
                         f"{max(means) - min(means):.1f}"])
    return [TableData(f"test accuracy (%), mean ± 95 % t-interval over {cfg.seeds} seed(s); BatchNorm in eval mode",
                      ["variant", "norm", *(f"batch {b}" for b in cfg.batch_sizes), "range (pp)"], body, left=(),
                      min_width=100)]


def write_outputs(result: NormResult, out: Path) -> dict[str, Any]:
    """accuracy.png, bn_minus.png, curves.png, then the stamped results.json and report.md into ``out`` (created if missing);
    returns the JSON object the command prints (without the per-cell records)."""
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(result, out / "accuracy.png")
    plot_bn_minus(result, out / "bn_minus.png")
    plot_curves(result, out / "curves.png")
    data = result.to_json()
    write_run(out, "normalisation", {**data, "command_line": result.command}, report_markdown(result))
    return {k: v for k, v in data.items() if k != "cells"}
