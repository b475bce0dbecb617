"""Statistics, pass criteria, figures and report of the regularisation experiment (:mod:`.regularisation`).

Intervals are 95 % Student-t intervals over seeds: mean ± t(0.975, n - 1) · sd / sqrt(n), sd with n - 1.
Differences between two sparsities are paired (same seed: same training subset, init and batch order).

Criterion (a), "the best sparsity does not increase as data grows". The best sparsity s*(N) is the argmax of
the mean test accuracy over seeds (the lower sparsity on a tie). A raw increase of s* can be a coin flip
between two levels whose means differ by less than the noise, so an increase counts against the criterion
only when it is significant: at size N with s*(N) above m = min over smaller N of s*, the paired 95 %
interval of acc(N, s*(N)) - acc(N, m) lies above 0. Comparing with the smallest earlier best also catches
a best that creeps up in small steps. Criterion (b): at N = 4000, the mean over seeds of
acc(best sparse level) - acc(dense) is at least 1.5 pp, the best sparse level again by mean accuracy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from sparseflow.experiments.regularisation.run import RegResult
from sparseflow.training.report import md_table, save_figure
from sparseflow.analysis.stats import t_interval

GAP_TARGET_PP = 1.5




def best_index(acc: np.ndarray) -> np.ndarray:
    """Per size, the index of the sparsity with the highest mean accuracy; ``acc`` is (sizes, sparsities, seeds).
    np.argmax takes the first maximum, i.e. the lower sparsity on a tie (sparsities are increasing)."""
    return np.argmax(acc.mean(axis=2), axis=1)


def trend(acc: np.ndarray, sizes: tuple[int, ...], sparsities: tuple[float, ...]) -> dict[str, Any]:
    """Best sparsity per size, its raw increases and the significant ones (see the module docstring)."""
    best = best_index(acc)
    raw, significant = [], []
    for i in range(1, len(sizes)):
        if best[i] > best[i - 1]:
            raw.append(sizes[i])
        m = int(best[:i].min())
        if best[i] > m:
            mean, half = t_interval(acc[i, best[i]] - acc[i, m])
            if mean - half > 0:
                significant.append({"size": sizes[i], "from": sparsities[m], "to": sparsities[best[i]],
                                    "diff_pp": 100 * mean, "half_pp": 100 * half})
    return {"best_sparsity": [sparsities[b] for b in best], "raw_increases": raw, "significant_increases": significant}


def tied(acc_n: np.ndarray) -> list[int]:
    """Indices of the levels not significantly below the best at one size (paired interval of best - s holds 0)."""
    b = int(np.argmax(acc_n.mean(axis=1)))
    out = []
    for j in range(acc_n.shape[0]):
        mean, half = t_interval(acc_n[b] - acc_n[j]) if j != b else (0.0, 0.0)
        if mean - half <= 0:
            out.append(j)
    return out


def gap(acc_n: np.ndarray) -> tuple[int, float, float]:
    """(index of the best sparse level, mean and half-width of its paired gain over dense); index 0 is dense."""
    b = 1 + int(np.argmax(acc_n[1:].mean(axis=1)))
    mean, half = t_interval(acc_n[b] - acc_n[0])
    return b, mean, half


def criteria(result: RegResult) -> dict[str, dict[str, Any]]:
    cfg, acc = result.config, result.acc()
    tr = trend(acc, cfg.sizes, cfg.sparsities)
    n = cfg.compare_size()
    b, mean, half = gap(acc[cfg.sizes.index(n)])
    return {
        "best sparsity does not increase with data size": {
            "value": len(tr["significant_increases"]), "pass": not tr["significant_increases"],
            "best_sparsity": dict(zip(map(str, cfg.sizes), tr["best_sparsity"])),
            "raw_increases_at": tr["raw_increases"], "significant_increases": tr["significant_increases"],
            "target": "0 significant increases of s*(N), the argmax of mean test accuracy (paired 95 % t)"},
        f"best sparse beats dense by >= {GAP_TARGET_PP:g} pp at N={n}": {
            "value": 100 * mean, "pass": bool(100 * mean >= GAP_TARGET_PP), "best_sparsity": cfg.sparsities[b],
            "interval_pp": [100 * (mean - half), 100 * (mean + half)],
            "target": f"mean of acc(best sparse) - acc(dense) >= {GAP_TARGET_PP:g} pp"},
    }


def summary(result: RegResult) -> dict[str, Any]:
    """The tables of results.json: per (size, sparsity) means and interval half-widths, per size the best."""
    cfg, acc, train = result.config, result.acc(), result.acc("train")
    rows = []
    for i, n in enumerate(cfg.sizes):
        for j, s in enumerate(cfg.sparsities):
            (m, h), (tm, th) = t_interval(acc[i, j]), t_interval(train[i, j])
            rows.append({"size": n, "sparsity": s, "test_mean": m, "test_half": h, "train_mean": tm, "train_half": th})
    best = []
    for i, n in enumerate(cfg.sizes):
        b, mean, half = gap(acc[i])
        best.append({"size": n, "best_sparsity": cfg.sparsities[int(best_index(acc)[i])],
                     "tied": [cfg.sparsities[j] for j in tied(acc[i])], "best_sparse": cfg.sparsities[b],
                     "gap_pp": 100 * mean, "gap_half_pp": 100 * half})
    return {"table": rows, "best": best, "steps_per_run": cfg.steps,
            "mean_run_s": sum(c.wall_s for c in result.cells) / len(result.cells)}


def _position(s: float) -> float:
    return -math.log10(1 - s)  # spreads 0.9 / 0.95 / 0.98 apart: 1, 1.3, 1.7 (dense at 0)


def plot_accuracy(result: RegResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    xs = [_position(s) for s in cfg.sparsities]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(cfg.sizes)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, split in zip(axes, ("test", "train")):
        acc = result.acc(split)
        for i, n in enumerate(cfg.sizes):
            stats = [t_interval(acc[i, j]) for j in range(len(cfg.sparsities))]
            ax.errorbar(xs, [100 * m for m, _ in stats], yerr=[100 * h for _, h in stats], color=colors[i],
                        marker="o", ms=3, capsize=3, label=f"N = {n}")
            if split == "test":
                b = int(best_index(acc)[i])
                ax.plot(xs[b], 100 * stats[b][0], marker="*", ms=15, color=colors[i], mec="black", zorder=5)
        ax.set_xticks(xs, [f"{s:g}" for s in cfg.sparsities])
        ax.set(xlabel="sparsity (random static mask, every layer)", ylabel=f"{split} accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].plot([], [], "*", color="gray", mec="black", ms=12, label="best (highest mean)")
    handles, labels = axes[0].get_legend_handles_labels()  # below both panels: the curves fill each panel
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels), fontsize=8)
    axes[0].set_title("test accuracy, mean ± 95 % t-interval over seeds", fontsize=10)
    axes[1].set_title(f"training-set accuracy after {cfg.steps} steps", fontsize=10)
    save_figure(fig, path)
    plt.close(fig)


def plot_gap(result: RegResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, acc = result.config, result.acc()
    gaps = [gap(acc[i]) for i in range(len(cfg.sizes))]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax.errorbar(cfg.sizes, [100 * m for _, m, _ in gaps], yerr=[100 * h for _, _, h in gaps], marker="o",
                capsize=3, label="best sparse level - dense (paired, 95 % t-interval)")
    for n, (b, m, _) in zip(cfg.sizes, gaps):
        ax.annotate(f"s={cfg.sparsities[b]:g}", (n, 100 * m), textcoords="offset points", xytext=(5, 6), fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.plot([cfg.compare_size()], [GAP_TARGET_PP], "r_", ms=20, mew=2, label=f"criterion: >= {GAP_TARGET_PP:g} pp")
    ax.set(xscale="log", xlabel="training examples N", ylabel="test accuracy gain over dense (pp)",
           title="best sparse minus dense")
    ax.legend(fontsize=8)
    best = best_index(acc)
    for i, n in enumerate(cfg.sizes):
        t = [_position(cfg.sparsities[j]) for j in tied(acc[i])]
        ax2.plot([n, n], [min(t), max(t)], color="tab:blue", lw=6, alpha=0.3, solid_capstyle="butt")
    ax2.plot(cfg.sizes, [_position(cfg.sparsities[b]) for b in best], "o-", color="tab:blue", label="s*(N), highest mean")
    ax2.plot([], [], color="tab:blue", lw=6, alpha=0.3, label="levels not significantly below s*")
    ax2.set_yticks([_position(s) for s in cfg.sparsities], [f"{s:g}" for s in cfg.sparsities])
    ax2.set(xscale="log", xlabel="training examples N", ylabel="sparsity", title="best sparsity vs data size")
    ax2.legend(fontsize=8)
    for a in (ax, ax2):
        a.set_xticks(cfg.sizes, [str(n) for n in cfg.sizes])
        a.minorticks_off()
        a.grid(alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)


def verdict(result: RegResult) -> str:
    """Best sparsity and gain at the smallest and largest N, and whether the gain comes with a better fit of
    the training set (then it is at least partly an optimisation effect of this budget, not regularisation)."""
    cfg, acc, train = result.config, result.acc(), result.acc("train")
    best = best_index(acc)
    parts = []
    for i in (0, len(cfg.sizes) - 1):
        b, mean, half = gap(acc[i])
        parts.append(f"at N={cfg.sizes[i]} the best level is s={cfg.sparsities[best[i]]:g} and the best sparse level "
                     f"(s={cfg.sparsities[b]:g}) is {100 * mean:+.1f} ± {100 * half:.1f} pp against dense")
    text = "A" + "; ".join(parts)[1:] + "."
    i = len(cfg.sizes) - 1
    b = gap(acc[i])[0]
    fit_sparse, fit_dense = 100 * train[i, b].mean(), 100 * train[i, 0].mean()
    if fit_sparse > fit_dense + 1:
        text += (f" At N={cfg.sizes[i]} that sparse level also fits its training set better than dense "
                 f"({fit_sparse:.1f} % vs {fit_dense:.1f} %): there the gain comes with better optimisation under "
                 "this budget, so it is not (only) regularisation.")
    return text


def report_markdown(result: RegResult, command: str) -> str:
    cfg, obj, crit = result.config, summary(result), result.criteria()
    rows, best = obj["table"], {r["size"]: r for r in obj["best"]}
    cell = {(r["size"], r["sparsity"]): r for r in rows}
    head = ["N"] + [f"s={s:g}" for s in cfg.sparsities]
    test = [[n] + [("**{:.1f} ± {:.1f}**" if s == best[n]["best_sparsity"] else "{:.1f} ± {:.1f}").format(
        100 * cell[(n, s)]["test_mean"], 100 * cell[(n, s)]["test_half"]) for s in cfg.sparsities] for n in cfg.sizes]
    train = [[n] + [f"{100 * cell[(n, s)]['train_mean']:.1f}" for s in cfg.sparsities] for n in cfg.sizes]
    gaps = [[n, f"{b['best_sparsity']:g}", ", ".join(f"{s:g}" for s in b["tied"]), f"{b['best_sparse']:g}",
             f"{b['gap_pp']:+.1f} ± {b['gap_half_pp']:.1f}"] for n, b in best.items()]
    crows = [[name, f"{c['value']:.2f}" if isinstance(c["value"], float) else c["value"], c["target"],
              "pass" if c["pass"] else "FAIL"] for name, c in crit.items()]
    return f"""# Sparsity as a regulariser: test accuracy vs sparsity and training-set size (MNIST-1D)

`{command}` ({'quick run, ' if cfg.quick else ''}wall time {result.wall_s / 60:.1f} min,
{result.data_s:.0f} s of it generating data; {cfg.runs()} training runs of {obj['mean_run_s']:.1f} s on average).

Residual MLP 40 -> {cfg.hidden} -> (+{cfg.hidden}) -> 10 as in the MNIST-1D lottery-ticket notebook, Adam lr
{cfg.lr:g}, batch {cfg.batch_size}, {cfg.steps} steps for every cell; random static masks (`RandomSparse`,
uniform: every Linear weight at sparsity s, biases dense, {'kept weights rescaled' if cfg.sparse_init else 'no rescaling'}).
Training subsets nested per seed; one fixed test set of {cfg.test_size} signals generated with its own seed.
{len(cfg.seeds)} seeds; paired across sparsities. Entries: mean ± half-width of the 95 % t-interval, in %.

**Test accuracy (%)**, best level per size in bold:

{md_table(head, test)}

**Training-set accuracy (%)** after the last step (mean over seeds):

{md_table(head, train)}

**Best sparsity and gain over dense** (pp, paired 95 % t-interval; "tied": levels not significantly below the best):

{md_table(["N", "best s", "tied", "best sparse s", "best sparse - dense (pp)"], gaps)}

**Verdict.** {verdict(result)}

**Criteria.** (a) counts only increases of the best sparsity that are significant (see
`sparseflow.experiments.regularisation.report`); raw increases of the argmax at N =
{crit[next(iter(crit))]['raw_increases_at'] or 'none'}.

{md_table(["criterion", "measured", "target", "result"], crows)}

![test and training accuracy vs sparsity](accuracy.png)

![gain of the best sparse level over dense, and the best sparsity, vs N](gap.png)
"""


def write_outputs(result: RegResult, out: Path, command: str = "sparseflow experiment regularisation") -> None:
    """accuracy.png, gap.png, then the stamped results.json and report.md into ``out`` (created if missing)."""
    from sparseflow.training.rundir import write_run

    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(result, out / "accuracy.png")
    plot_gap(result, out / "gap.png")
    write_run(out, "regularisation", {**result.to_json(), "command_line": command}, report_markdown(result, command))
