"""Report of the Hopfield capacity experiment: the verdict, report.md, results.json, the figures and the
console table (statistics and criteria: :mod:`.result`; figures: :mod:`.plots`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparseflow.experiments.hopfield.plots import plot_capacity, plot_dilution, plot_transition
from sparseflow.experiments.hopfield.result import (AGS, SPARSE_CODINGS, SPREAD_TARGET, THEORY_TARGET, HopResult, product,
                                                    summary)
from sparseflow.experiments.protocol import TableData
from sparseflow.training.report import md_table
from sparseflow.training.rundir import write_run


def verdict(result: HopResult) -> str:
    cfg, rows = result.config, summary(result)["table"]
    n, small = max(cfg.sizes), [a for a in SPARSE_CODINGS if a in cfg.codings]
    parts = []
    if 0.5 in cfg.codings:
        d = next(x for x in rows if x["a"] == 0.5 and x["n"] == n)
        parts.append(f"At a = 0.5 and N = {n} the measured capacity is {d['alpha_mean']:.3f} ± {d['alpha_half']:.3f} "
                     f"(AGS: {AGS}).")
    if small and len(cfg.sizes) > 1:
        first, last = min(cfg.sizes), n
        ends = {a: (next(x for x in rows if x["a"] == a and x["n"] == first)["product_mean"],
                    next(x for x in rows if x["a"] == a and x["n"] == last)["product_mean"]) for a in small}
        grow = "; ".join(f"a = {a:g}: {p0:.3f} -> {p1:.3f}" for a, (p0, p1) in ends.items())
        below = all(p1 < 0.4 for _, p1 in ends.values())
        rising = all(p1 > p0 for p0, p1 in ends.values())
        parts.append(f"The scaled capacity alpha a|ln a| from N = {first} to {last} ({grow}) "
                     + ("stays well below its a -> 0 limit 1/2" if below else "reaches the region of its limit 1/2")
                     + (" and still grows with N" if rising else " and does not grow with N for every a") + ".")
        if below and rising:
            gain = {a: p1 / p0 for a, (p0, p1) in ends.items()}
            fastest = max(gain, key=gain.get)
            parts.append(f"It grows fastest at a = {fastest:g} (x{gain[fastest]:.2f}): the 1 / (2 a |ln a|) law is an "
                         "asymptote in both a and N, and at these sizes (a N active units per pattern, down to "
                         f"{round(min(small) * n)}) the measured constant is a finite-size value.")
    if len(small) >= 2:
        last = {a: next(x for x in rows if x["a"] == a and x["n"] == n)["product_mean"] for a in small}
        spread = max(last.values()) / min(last.values()) - 1
        parts.append(f"At N = {n} the products over a = {', '.join(f'{a:g}' for a in small)} differ by "
                     f"{spread:.0%} (criterion: <= {SPREAD_TARGET:.0%}), so the a-independence of the sparse "
                     f"law is {'seen' if spread <= SPREAD_TARGET else 'not reached'} at this size.")
        limit = {a: next(x for x in rows if x["a"] == a)["theory_large_n"] for a in small}
        if all(v is not None for v in limit.values()):
            prods = {a: product(v, a) for a, v in limit.items()}
            lspread = max(prods.values()) / min(prods.values()) - 1
            parts.append("Mean-field theory puts the products at N -> inf at "
                         + ", ".join(f"{p:.3f} (a = {a:g})" for a, p in prods.items())
                         + f", {lspread:.0%} apart: at these coding levels the product depends on a at any N, and "
                         "1/2 is a limit in a -> 0 (with corrections in 1/|ln a|), not a value these a reach.")
    theory = next((c for name, c in result.criteria().items() if "finite-N theory" in name), None)
    if theory is not None and theory["value"] is not None:
        ratios = ", ".join(f"{a}: {r['ratio']:.2f}" + ("" if r["judged"] else " (not judged)")
                           for a, r in theory["per_a"].items())
        parts.append(f"Against the finite-N mean-field prediction (sparseflow.capacity_theory) the measured/predicted "
                     f"ratios at N = {n} are {ratios}: at most {theory['value']:.0%} apart "
                     f"(criterion: <= {THEORY_TARGET:.0%}).")
    return " ".join(parts)


def _md(text: str) -> str:
    return text.replace("|", "\\|")  # a bare | would end a Markdown table cell


def report_markdown(result: HopResult) -> str:
    cfg, obj, crit, command = result.config, summary(result), result.criteria(), result.command
    cell = {(r["a"], r["n"]): r for r in obj["table"]}
    head = ["a", *(f"N={n}" for n in cfg.sizes), "reference"]
    alpha = [[f"{a:g}", *(f"{cell[(a, n)]['alpha_mean']:.3f} ± {cell[(a, n)]['alpha_half']:.3f}" for n in cfg.sizes),
              f"{cell[(a, cfg.sizes[0])]['reference']:.3f}" + (" (AGS)" if a == 0.5 else _md(" (1/(2a|ln a|))"))]
             for a in cfg.codings]
    prod = [[f"{a:g}", *(f"{cell[(a, n)]['product_mean']:.3f} ± {cell[(a, n)]['product_half']:.3f}"
                         for n in cfg.sizes),
             f"{product(AGS, 0.5):.3f}" if a == 0.5 else "0.5 (a -> 0)"] for a in cfg.codings]
    crows = [[_md(name), "—" if c["value"] is None else f"{c['value']:.3f}", _md(c["target"]),
              "n/a" if c["pass"] is None else "pass" if c["pass"] else "FAIL"] for name, c in crit.items()]
    theory_rows = [[f"{a:g}", *("—" if cell[(a, n)]["theory"] is None else f"{cell[(a, n)]['theory']:.3f}"
                                for n in cfg.sizes),
                    "—" if cell[(a, cfg.sizes[0])]["theory_large_n"] is None
                    else f"{cell[(a, cfg.sizes[0])]['theory_large_n']:.3f}"] for a in cfg.codings]
    dynamics = "asynchronous recall" if cfg.mode == "async" else "synchronous recall"
    if cfg.connectivity < 1:
        dynamics += f", connectivity c = {cfg.connectivity:g}"
    text = f"""# Capacity of a sparse Hopfield memory vs coding level and size

`{command}` ({'quick run, ' if cfg.quick else ''}wall time {result.wall_s / 60:.1f} min; {len(result.cells)} capacity
searches of {obj['mean_search_s']:.1f} s on average).

Covariance rule with a threshold (Tsodyks & Feigel'man 1988), 0/1 units, patterns with exactly a N active units,
{dynamics}.
A load P succeeds when at least {cfg.min_fraction:.0%} of {cfg.cues} stored patterns, cued with corrupted copies of
overlap {cfg.m0:g} (same activity; 10 % of bits flipped at a = 0.5), end at a fixed point with normalised overlap
>= {cfg.min_overlap:g}; P_max is found by growth then bisection to {cfg.tol:.0%}. Threshold: 0 of the ±1 network at
a = 0.5; for sparse patterns the best fixed threshold per load, by a bisection on the final activity (see
`sparseflow.experiments.hopfield.run`). {cfg.seeds} seeds; entries are mean ± half-width of the 95 % t-interval.

**Capacity alpha = P_max / N:**

{md_table(head, alpha)}

**Mean-field prediction** (`sparseflow.capacity_theory`: the replica-symmetric retrieval state at the best
threshold, with binomial errors over a pattern's a N active units and this run's criterion; see the docs for the
derivation):

{md_table(["a", *(f"N={n}" for n in cfg.sizes), "N -> inf"], theory_rows)}

**Scaled capacity alpha · a |ln a|** (Tsodyks & Feigel'man: -> 1/2 as a -> 0):

{md_table(head, prod)}

**Verdict.** {verdict(result)}

**Criteria.**

{md_table(["criterion", "measured", "target", "result"], crows)}

![capacity vs coding level, and the scaled capacity vs N](capacity.png)

![fraction recalled at every load the search tried](transition.png)
"""
    if obj["dilution"]:
        drows = [[f"{r['c']:g}", f"{r['alpha_mean']:.3f} ± {r['alpha_half']:.3f}", f"{r['alpha_per_c']:.3f}"]
                 for r in obj["dilution"]]
        text += f"""
**Diluted connectivity** (a = {cfg.dilution_coding:g}, N = {cfg.dilution_size}; symmetric random mask of density c,
weights scaled by 1 / c):

{md_table(["c", "alpha = P_max / N", "alpha / c"], drows)}

![capacity vs connectivity](dilution.png)
"""
    return text


def tables(result: HopResult) -> list[TableData]:
    """The capacity table: P_max / N per coding level and size, with the reference value."""
    cfg, obj = result.config, summary(result)
    cell = {(r["a"], r["n"]): r for r in obj["table"]}
    rows = [[f"{a:g}", *(f"{cell[(a, n)]['alpha_mean']:.3f} ± {cell[(a, n)]['alpha_half']:.3f}" for n in cfg.sizes),
             f"{cell[(a, cfg.sizes[0])]['reference']:.3f}"] for a in cfg.codings]
    return [TableData(f"capacity P_max/N, mean ± 95 % t-interval over {cfg.seeds} seeds",
                      ["a", *(f"N={n}" for n in cfg.sizes), "reference"], rows, left=(), min_width=100)]


def write_outputs(result: HopResult, out: Path) -> dict[str, Any]:
    """capacity.png, transition.png (and dilution.png), then the stamped results.json and report.md into ``out``;
    returns the JSON object the command prints (without the per-search records)."""
    out.mkdir(parents=True, exist_ok=True)
    plot_capacity(result, out / "capacity.png")
    plot_transition(result, out / "transition.png")
    if result.dilution:
        plot_dilution(result, out / "dilution.png")
    data = result.to_json()
    write_run(out, "hopfield", {**data, "command_line": result.command}, report_markdown(result))
    return {k: v for k, v in data.items() if k not in ("cells", "dilution_cells")}
