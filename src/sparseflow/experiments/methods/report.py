"""Report of the methods experiment: conclusions computed from the records, report.md, results.json, the figure
and the console tables (measurement and criteria: :mod:`.result`; figures: :mod:`.plots`)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from sparseflow.experiments.methods.grid import FAMILY, IMP
from sparseflow.experiments.methods.plots import plot_accuracy, plot_budget
from sparseflow.experiments.methods.result import (REFERENCE, REFERENCE_SPARSITY, TAU_GOAL, ComparisonResult, ci95,
                                                   imp_definition)
from sparseflow.experiments.methods.train import JOURNAL
from sparseflow.experiments.protocol import TableData
from sparseflow.training.report import md_table
from sparseflow.training.rundir import write_run

def paired_pp(result: ComparisonResult, dataset: str, a: str, b: str, sparsity: float) -> tuple[float, float | None]:
    """Accuracy of ``a`` minus ``b`` in percentage points over the seeds both have (same seed = same
    initialisation and data): the mean and the 95 % t-interval's half-width (None with one seed)."""
    x, y = result.accuracies(dataset, a, sparsity), result.accuracies(dataset, b, sparsity)
    d = [100 * (x[k] - y[k]) for k in sorted(set(x) & set(y))]
    if not d:
        return math.nan, None
    return statistics.fmean(d), ci95(d)


def conclusions(result: ComparisonResult) -> list[str]:
    """Sentences computed from the records: the best method per sparsity and, at the reference's sparsity,
    each adjacent pair of the reference order measured with its paired interval."""
    cfg, lines = result.config, []
    order = list(REFERENCE)
    for s in cfg.settings:
        means = {c["sparsity"]: c["means"] for c in result.orderings() if c["dataset"] == s.dataset}
        best = [f"{100 * sp:g} % {max(m, key=m.get)}" for sp, m in means.items() if m]
        lines.append(f"- {s.dataset}: best mean accuracy at " + ", ".join(best) + ".")
        sp = REFERENCE_SPARSITY if any(abs(x - REFERENCE_SPARSITY) < 1e-9 for x in cfg.sparsities) else None
        if sp is None:
            continue
        d_dense = {m: paired_pp(result, s.dataset, m, "dense", sp)[0] for m in (*cfg.labels(), "dense 2x")}
        dense = statistics.fmean(result.accuracies(s.dataset, "dense", sp).values())
        lines.append(f"- {s.dataset} at {100 * sp:g} %: dense reaches {100 * dense:.2f} % in {s.steps()} steps; " + ", ".join(f"{m} {d:+.2f}" for m, d in d_dense.items() if not math.isnan(d))
                     + " pp against it" + (" (2x and 5x: with that many budgets)." if cfg.long else
                                           " (IMP with its extra budgets)."))
        pairs = []
        for lo, hi in zip(order, order[1:]):
            d, h = paired_pp(result, s.dataset, hi, lo, sp)
            if math.isnan(d):
                continue
            verdict = ("as in the reference" if h is not None and d - h > 0 else
                       "reversed" if h is not None and d + h < 0 else "not resolved")
            pairs.append(f"{hi} - {lo} {d:+.2f}" + ("" if h is None else f" ± {h:.2f}") + f" pp ({verdict})")
        if pairs:
            lines.append(f"- {s.dataset} at {100 * sp:g} %, the reference's adjacent pairs (paired over seeds): "
                         + "; ".join(pairs) + ".")
    return lines


def _interval(v: Any) -> str:
    return "[{:+.2f}, {:+.2f}]".format(*v) if isinstance(v, (list, tuple)) else f"± {v:.2f}"


def _tau(tau: float | None) -> str:
    return "nan" if tau is None or math.isnan(tau) else f"{tau:+.2f}"


def _pct(mean: float, half: float | None) -> str:
    return f"{100 * mean:.2f}" + ("" if half is None else f" ± {100 * half:.2f}")


def accuracy_rows(result: ComparisonResult, dataset: str) -> list[list[str]]:
    """Rows [method, family, cell per sparsity]: mean test accuracy % ± 95 % half-width over seeds."""
    by = {(r["method"], r["sparsity"]): r for r in result.summary() if r["dataset"] == dataset}
    rows = []
    for d, _ in result.config.dense():
        dense = by.get((d, 0.0))
        if dense:
            rows.append([d, "-", *([_pct(dense["mean"], dense["ci95"])] * len(result.config.sparsities))])
    for m in result.config.labels():
        cells = [by.get((m, sp)) for sp in result.config.sparsities]
        budget = f" ({cells[-1]['budgets']}x budget at {result.config.sparsities[-1]:g})" if m == IMP and cells[-1] else ""
        rows.append([m + budget, FAMILY[m], *("-" if c is None else _pct(c["mean"], c["ci95"]) for c in cells)])
    return rows


def report_markdown(result: ComparisonResult, figures: list[str]) -> str:
    cfg, command = result.config, result.command
    title = "the long budget, and RigL and SET at 2x and 5x" if cfg.long else "one budget"
    parts = [f"# Sparse training methods on {title}{' (quick run)' if cfg.quick else ''}\n",
             f"Command: `{command}`. Seeds {list(cfg.seeds)}; cells are mean test accuracy (%) ± the half-width "
             "of the 95 % t-interval over seeds (none with one seed). Sparsity is over the pruned layers and "
             "was measured after training (criterion 'sparsity reached').\n",
             "Settings (every method at a dataset gets exactly this budget):\n"]
    parts += [f"- **{s.dataset}**: {s.describe()}" for s in cfg.settings]
    if cfg.long:
        parts += ["", "Long budget: the RigL paper's five methods at the budget above; RigL and SET also at 2x and "
                  "5x it (epochs x2, x5, the method's schedule stretched to fit: updates every 100 steps until 75 % "
                  "of training), and dense at 2x, which tells whether the budget has converged.", ""]
    else:
        parts += ["", f"IMP: {imp_definition(cfg)}", ""]
    if any(s.model.startswith("lenet") or s.model == "mlp" for s in cfg.settings):
        parts += ["For a network of Linear layers only (LeNet-300-100) the ER and ERK densities coincide "
                  "((n_in + n_out) / (n_in n_out) either way), so 'static ER' and 'static ERK' draw the same masks "
                  "and give the same numbers there; they differ on Conv-4.", ""]
    header = ["method", "family", *(f"{100 * s:g} %" for s in cfg.sparsities)]
    for s in cfg.settings:
        parts += [f"## {s.dataset}\n", md_table(header, accuracy_rows(result, s.dataset)), ""]
    parts += ["## Measured orderings vs the reference\n",
              f"Reference ({result.agreement()['source']}): " + " < ".join(f"{m} {v}" for m, v in REFERENCE.items())
              + ". Our static and SET use ERK densities, the reference's uniform. τ_b over those five methods, of "
              "the seed means and of each seed alone (mean ± 95 % t-interval over seeds); 'flipped' lists "
              "reference pairs measured the other way round, with the paired 95 % interval of the difference "
              "(resolved = the interval excludes 0).\n"]
    at = result.agreement()["at_90"]
    if at:
        parts += [f"**At {100 * REFERENCE_SPARSITY:g} % (the reference's sparsity)**, the five reference methods, worst to best "
                  f"(reference: {' < '.join(REFERENCE)}):\n"]
        for ds, a in at.items():
            ci = "" if a["tau_b_ci95"] is None else (f"; per seed τ_b {a['tau_b_seed_mean']:+.2f} ± {a['tau_b_ci95']:.2f} "
                                                     "(95 % t-interval over seeds)")
            if a["tau_b_bootstrap95"] is not None:
                ci += f"; τ_b of the means, 95 % bootstrap over seeds {_interval(a['tau_b_bootstrap95'])}"
            parts.append(f"- {ds}: {a['measured']}: τ_b of the means {_tau(a['tau_b'])}{ci}; "
                         f"differs from the reference in {', '.join(a['flipped']) or 'nothing'}.")
        parts.append("")
    rows = []
    for c in result.orderings():
        flips = "; ".join(f"{f['measured']} by {f['diff_pp']:.2f}" + ("" if f["ci95_pp"] is None else f" ± {f['ci95_pp']:.2f}")
                          + (" pp (resolved)" if f["resolved"] else " pp") for f in c["flipped"]) or "none"
        seeds = "-" if c["tau_b_ci95"] is None else f"{c['tau_b_seed_mean']:+.2f} ± {c['tau_b_ci95']:.2f}"
        boot = "-" if c["tau_b_bootstrap95"] is None else _interval(c["tau_b_bootstrap95"])
        rows.append([c["dataset"], f"{100 * c['sparsity']:g} %", " < ".join(c["ascending"]), _tau(c["tau_b"]), boot,
                     seeds, flips])
    parts += [md_table(["dataset", "sparsity", "measured, worst to best", "τ_b (means)", "bootstrap 95 %",
                        "τ_b per seed (95 %)", "flipped vs reference"], rows), ""]
    for s in cfg.settings:
        taus = [c["tau_b"] for c in result.orderings() if c["dataset"] == s.dataset and not math.isnan(c["tau_b"])]
        if taus:
            parts.append(f"- {s.dataset}: mean τ_b {statistics.fmean(taus):+.2f} over {len(taus)} sparsities.")
    parts += ["", (f"With the long budget τ_b >= {TAU_GOAL} at 90 % is a criterion on every dataset. " if cfg.long else
                   "On this short budget τ_b is reported, not a pass condition. ")
              + "The reference is ResNet-50 on ImageNet, a different network, data set and budget.", ""]
    pairs = [(f["resolved"]) for c in result.orderings() for f in c["flipped"]]
    parts += ["## Conclusion\n", *conclusions(result), "",
              "A pair is resolved when the 95 % interval of its paired difference excludes 0; an unresolved pair's "
              f"measured order is not evidence for or against the reference's ({sum(pairs)} of the {len(pairs)} "
              "flipped pairs above are resolved). The reference trains ResNet-50 for about 100 epochs"
              + ("; the 'dense converged' criterion says whether the budget here is long enough, and the budget "
                 "figure shows what RigL and SET gain from 2x and 5x." if cfg.long else
                 "; here every run has the short budget above, which can favour masks fixed before training (SNIP, "
                 "SynFlow) over methods that prune during training and must recover within the same steps "
                 "(one-shot, GMP): compare the dense accuracy with its converged value before reading the ordering "
                 "as the paper's."), ""]
    crit = [[k, str(v["value"]) + ("" if v.get("interval") is None else f" (interval {_interval(v['interval'])})"),
             v["target"], "n/a: " + v["note"] if v["pass"] is None else "pass" if v["pass"] else "FAIL"]
            for k, v in result.criteria().items()]
    parts += ["## Criteria\n", md_table(["criterion", "value", "target", "result"], crit), ""]
    parts += [f"![{f}]({f})" for f in figures]
    parts += ["", f"Wall time {result.wall_s:.0f} s ({len(result.runs)} trained networks, {cfg.workers} worker(s)).\n"]
    return "\n".join(parts)


def tables(result: ComparisonResult) -> list[TableData]:
    """Accuracy per method and sparsity for each dataset, then the measured orderings with Kendall's τ_b."""
    cfg, out = result.config, []
    for s in cfg.settings:
        out.append(TableData(f"test accuracy (%), {s.model} on {s.dataset}, {s.steps()} steps, 95 % interval over "
                             f"{len(cfg.seeds)} seed(s)", ["method", "family", *(f"{100 * x:g} %" for x in cfg.sparsities)],
                             accuracy_rows(result, s.dataset), left=("method", "family"), min_width=120))
    rows = []
    for c in result.orderings():
        seeds = "-" if c["tau_b_ci95"] is None else f"{c['tau_b_seed_mean']:+.2f} ± {c['tau_b_ci95']:.2f}"
        boot = "-" if c["tau_b_bootstrap95"] is None else _interval(c["tau_b_bootstrap95"])
        rows.append([c["dataset"], f"{100 * c['sparsity']:g} %", " < ".join(c["ascending"]), f"{c['tau_b']:+.2f}",
                     boot, seeds])
    columns = ["dataset", "sparsity", "ordering", "τ_b (means)", "bootstrap 95 %", "τ_b per seed (95 %)"]
    out.append(TableData("measured ordering (worst to best) and Kendall τ_b against the RigL paper's", columns, rows,
                         left=columns, min_width=120))
    return out


def write_outputs(result: ComparisonResult, out: Path) -> dict[str, Any]:
    """Figures, then the stamped results.json and report.md (:func:`sparseflow.training.rundir.write_run`); the
    resume journal goes, every record being in results.json now. Returns the JSON object the command prints."""
    out.mkdir(parents=True, exist_ok=True)
    figures = plot_accuracy(result, out) + (plot_budget(result, out) if result.config.long else [])
    data = result.to_json()
    write_run(out, "methods", data | {"figures": figures, "command_line": result.command},
              report_markdown(result, figures))
    (out / JOURNAL).unlink(missing_ok=True)
    return {**{k: v for k, v in data.items() if k != "runs"}, "skipped": list(result.skipped)}
