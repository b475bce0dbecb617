"""Report of the regularisation experiment (:mod:`sparseflow.experiments.regularisation.run`): results.json,
report.md, the figures of :mod:`~sparseflow.experiments.regularisation.plots` and the console table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparseflow.experiments.protocol import TableData
from sparseflow.experiments.regularisation.plots import plot_accuracy, plot_gap
from sparseflow.experiments.regularisation.run import RegResult, summary
from sparseflow.experiments.regularisation.stats import best_index, gap
from sparseflow.training.report import md_table
from sparseflow.training.rundir import write_run


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


def report_markdown(result: RegResult) -> str:
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

`{result.command}` ({'quick run, ' if cfg.quick else ''}wall time {result.wall_s / 60:.1f} min,
{result.data_s:.0f} s of it generating data; {cfg.runs()} training runs of {obj['mean_run_s']:.1f} s on average).

Residual MLP 40 -> {cfg.hidden} -> (+{cfg.hidden}) -> 10 as in the MNIST-1D lottery-ticket notebook, Adam lr
{cfg.lr:g}, batch {cfg.batch_size}, {cfg.steps} steps for every cell; random static masks (`RandomSparse`,
uniform: every Linear weight at sparsity s, biases dense, {'kept weights rescaled' if cfg.sparse_init else 'no rescaling'}).
Training subsets nested per seed; one fixed test set of {cfg.test_size} signals generated with its own seed.
{cfg.seeds} seeds; paired across sparsities. Entries: mean ± half-width of the 95 % t-interval, in %.

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


def write_outputs(result: RegResult, out: Path) -> dict[str, Any]:
    """accuracy.png, gap.png, then the stamped results.json and report.md into ``out`` (created if missing);
    returns the JSON object without the cells."""
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(result, out / "accuracy.png")
    plot_gap(result, out / "gap.png")
    data = result.to_json()
    write_run(out, "regularisation", data, report_markdown(result))
    return {k: v for k, v in data.items() if k not in ("cells", "command_line")}


def tables(result: RegResult) -> list[TableData]:
    """Test accuracy per size and sparsity, mean ± half-width of the 95 % t-interval; * marks the best."""
    cfg, obj = result.config, summary(result)
    cell = {(r["size"], r["sparsity"]): r for r in obj["table"]}
    best = {b["size"]: b["best_sparsity"] for b in obj["best"]}
    rows = [(str(n), *(f"{100 * cell[(n, s)]['test_mean']:.1f} ± {100 * cell[(n, s)]['test_half']:.1f}"
                       + ("*" if s == best[n] else " ") for s in cfg.sparsities)) for n in cfg.sizes]
    return [TableData(f"test accuracy (%), mean ± 95 % t-interval over {cfg.seeds} seeds; * = best",
                      ("N", *(f"s={s:g}" for s in cfg.sparsities)), rows, left=(), min_width=100)]
