"""Lottery report: accuracy and early-stopping step against weights remaining (Frankle & Carbin 2019, Fig. 1).

Per level and arm, the mean over replicate seeds with min-max error bars (as in the paper), a Markdown
table, two PNG figures and the pass/fail criteria of the benchmarks at a chosen level: on MNIST-1D the
ticket at least 8 pp above a random mask; elsewhere within 0.3 pp of the dense network and at least 2 pp
above random reinitialisation, read at early stopping when a validation set is held out. Every figure is
computed from the level records, never typed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparseflow.analysis.stats import t_interval
from sparseflow.training.rundir import write_results
from sparseflow.io import atomic_write_text
from sparseflow.lottery.run import ARMS, LotteryResult
from sparseflow.training.report import md_table, save_figure, verdict

LABEL = {"ticket": "winning ticket (rewound)", "reinit": "random reinit (same mask)",
         "random": "random mask (same densities)"}


def early_stop_set(job: Any) -> str:
    """Where the early-stopping step's loss is measured: "validation" (``val_size`` held-out training examples)
    or "test" (``val_size=0``)."""
    return "validation" if job.val_size else "test"


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(result: LotteryResult) -> list[dict[str, Any]]:
    """Per level: density, and per arm the final accuracy, accuracy at early stop and early-stop step."""
    seeds = list(result.levels)
    n_levels = min(len(v) for v in result.levels.values())
    rows = []
    for lv in range(n_levels):
        recs = [result.levels[s][lv] for s in seeds]
        row: dict[str, Any] = {"level": lv, "density": recs[0]["density"], "arms": {}}
        for arm in ARMS:
            got = [r["arms"][arm] for r in recs if arm in r["arms"]]
            if len(got) == len(recs):
                row["arms"][arm] = {k: _stats([float(g[k]) for g in got])
                                    for k in ("final_acc", "early_stop_acc", "early_stop_step")}
        rows.append(row)
    return rows


def measure(job: Any) -> str:
    """The accuracy the criteria read: at the early-stopping point when a validation set is held out
    (``val_size`` > 0; Frankle & Carbin report test accuracy at the iteration of minimum validation loss), else at
    the end of training (with no validation set, early stopping would select on the test set)."""
    return "early_stop_acc" if job.val_size else "final_acc"


def reading(key: str) -> str:
    """How the table, the figure and the criteria name the accuracy :func:`measure` picked."""
    return "at early stopping" if key == "early_stop_acc" else "at the end of training"


def criteria(result: LotteryResult, at_density: float | None = None) -> dict[str, dict[str, Any]]:
    """Benchmark checks at the level whose density is nearest ``at_density`` (default: the last level), among
    the levels whose controls were trained.

    The goals follow the two reference settings: on MNIST-1D the ticket must beat a random mask of the same
    per-layer densities by 8 pp (the MNIST-1D paper's 72.8 vs 54.2 % at 95 % sparsity); elsewhere (MNIST
    LeNet-300-100, Frankle & Carbin 2019) it must match the dense network within 0.3 pp and beat random
    reinitialisation of the same mask by 2 pp. Accuracies are read as :func:`measure` says; differences are
    paired over seeds (same seed, same level), with a 95 % t-interval when there are two seeds or more. With a
    validation set, one more check: every arm's validation loss reached its minimum before the last
    evaluation (trained to convergence within the budget, not stopped while still improving).
    """
    job, key = result.job, measure(result.job)
    rows = summarize(result)
    seeds = list(result.levels)
    dense = rows[0]["arms"]["ticket"][key]["mean"]
    goals = (("random", 0.08, "ticket_beats_random_mask"),) if job.dataset == "mnist1d" else (
        ("reinit", 0.02, "ticket_beats_reinit"),)
    with_controls = [r for r in rows[1:] if all(a in r["arms"] for a, _, _ in goals)]
    pool = with_controls or rows[1:] or rows
    row = pool[-1] if at_density is None else min(pool, key=lambda r: abs(r["density"] - at_density))
    lv = row["level"]
    where = f"level {lv}, {100 * row['density']:.2f} % of weights"
    read = reading(key)

    def paired(arm: str, level: int) -> dict[str, Any]:
        diff = [result.levels[s][lv]["arms"]["ticket"][key] - result.levels[s][level]["arms"][arm][key] for s in seeds]
        mean, half = t_interval(diff, single=True)
        return {"value": mean, "interval": [mean - half, mean + half] if len(diff) > 1 else None,
                "per_seed": diff}

    ticket = row["arms"]["ticket"][key]["mean"]
    out: dict[str, dict[str, Any]] = {}
    if job.dataset != "mnist1d":
        d = paired("ticket", 0)
        out["ticket_matches_dense"] = {**d, "target": f">= -0.003 (ticket - dense at {where}, test accuracy {read})",
                                       "pass": ticket - dense >= -0.003}
    for arm, gap, name in goals:
        if arm in row["arms"]:
            d = paired(arm, lv)
            out[name] = {**d, "target": f">= {gap} (ticket - {arm} at {where}, test accuracy {read})",
                         "pass": d["value"] >= gap}
    if job.val_size:
        late = [f"seed {s} {arm}" for s in seeds for arm, rec in result.levels[s][lv]["arms"].items()
                if rec["evals"] and rec["early_stop_step"] >= rec["evals"][-1]["step"]]
        out["converged"] = {"value": len(late), "still_improving": late,
                            "target": f"0 arms at {where} whose validation loss is lowest at the last evaluation",
                            "pass": not late}
    return out


def _plot(rows: list[dict[str, Any]], key: str, ylabel: str, path: Path, dense: float | None) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, arm in enumerate(ARMS):
        pts = [(100 * r["density"], r["arms"][arm][key]) for r in rows if arm in r["arms"]]  # controls: level >= 1
        if not pts:
            continue
        xs = [p[0] for p in pts]
        mean = [p[1]["mean"] for p in pts]
        err = [[p[1]["mean"] - p[1]["min"] for p in pts], [p[1]["max"] - p[1]["mean"] for p in pts]]
        ax.errorbar(xs, mean, yerr=err, marker="os^"[i], capsize=3, label=LABEL[arm])
    if dense is not None:
        ax.axhline(dense, color="gray", ls=":", label="dense")
    ax.set_xscale("log")
    lo = min(100 * r["density"] for r in rows)
    ax.set_xticks([t for t in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1) if t >= lo * 0.9])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.invert_xaxis()  # weights remaining fall from left to right, as in Frankle & Carbin's figures
    ax.set(xlabel="weights remaining (%)", ylabel=ylabel)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _mask_storage(result: LotteryResult) -> list[list[Any]]:
    from sparseflow.storage.sequence import load_masks, mask_sequence_bits

    rows = []
    for seed in result.levels:
        path = result.run_dir / f"seed{seed}" / "masks.sfm"
        masks = load_masks(path)
        bound = sum(mask_sequence_bits(masks)) / 8
        rows.append([seed, len(masks), path.stat().st_size, f"{bound:,.0f}", f"{len(masks) * masks[0].numel() / 8:,.0f}"])
    return rows


def write_report(result: LotteryResult, crit: dict[str, dict[str, Any]], *, command: str | None = None) -> dict[str, Any]:
    """OUT/report.md, accuracy.png, early_stop.png and results.json; returns the results object."""
    out, job = result.run_dir, result.job
    rows, key = summarize(result), measure(job)
    read = reading(key)
    dense = rows[0]["arms"]["ticket"][key]["mean"]
    _plot(rows, key, f"test accuracy ({read[3:]})", out / "accuracy.png", dense)
    _plot(rows, "early_stop_step", f"early-stopping step (lowest {early_stop_set(job)} loss)", out / "early_stop.png",
          None)

    def cell(r: dict[str, Any], arm: str, key: str, scale: float, fmt: str) -> str:
        if arm not in r["arms"]:
            return "-"
        s = r["arms"][arm][key]
        spread = f" [{fmt.format(scale * s['min'])}, {fmt.format(scale * s['max'])}]" if s["n"] > 1 else ""
        return fmt.format(scale * s["mean"]) + spread

    header = ["level", "weights %"] + [f"{a} acc %" for a in ARMS] + [f"{a} early stop" for a in ARMS]
    table = [[r["level"], f"{100 * r['density']:.2f}"] + [cell(r, a, key, 100, "{:.2f}") for a in ARMS]
             + [cell(r, a, "early_stop_step", 1, "{:.0f}") for a in ARMS] for r in rows]
    storage = _mask_storage(result)
    def shown(v: dict[str, Any]) -> str:
        text = f"{v['value']:+.4f}" if isinstance(v["value"], float) else str(v["value"])
        return text + (f" [{v['interval'][0]:+.4f}, {v['interval'][1]:+.4f}]" if v.get("interval") else "")

    crit_rows = [[k, shown(v), v["target"], verdict(v)] for k, v in crit.items()]
    val = f"{job.val_size} held-out training examples (the validation set)" if job.val_size else "the test set"
    text = f"""# Lottery tickets: {job.model} on {job.dataset}

Iterative magnitude pruning ({job.scope}, {100 * job.prune_fraction:g} % per level, output layer
{100 * job.out_fraction:g} %), rewinding {job.rewind} to step {job.rewind_step}; {job.iterations} steps per level,
{job.optimizer} lr {job.lr:g} ({job.lr_schedule}), batch {job.batch_size}; seeds {list(result.levels)}.
Accuracy is the test accuracy {read} (mean over seeds, [min, max] across them); the early-stopping
step is the evaluation where the loss on {val} is lowest (evaluated every {job.eval_every} steps). Every arm
trains the same {job.iterations - job.rewind_step} steps. Level 0 is the dense network; "-": control not trained
at that level.
{f"Command: `{command}`" if command else ""}

{md_table(header, table)}

## Criteria

{md_table(["criterion", "value [paired 95 % interval over seeds]", "target", "result"], crit_rows)}

![accuracy](accuracy.png)

![early stopping](early_stop.png)

Run `{job.run_name()}`, {result.wall_s:.0f} s this session. Masks per seed: `seed*/masks.sfm`
(`sparseflow.storage.sequence.load_masks`), every level a delta against the one before:

{md_table(["seed", "levels", "file bytes", "bound bytes (sum of log2 C(n1, kept))", "dense bitmaps bytes"], storage)}
"""
    atomic_write_text(out / "report.md", text)
    obj = {"command": "lottery", "run_dir": str(out), "run": job.run_name(), "job": job.to_dict(), "dense_acc": dense,
           "accuracy": key,
           "levels": rows, "criteria": crit, "wall_s": result.wall_s, "figures": ["accuracy.png", "early_stop.png"]}
    write_results(out, "lottery", obj)
    return obj
