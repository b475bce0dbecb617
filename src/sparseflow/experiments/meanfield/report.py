"""Report of :mod:`sparseflow.experiments.meanfield.run`: results.json, report.md, variance.png and chi.png."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from sparseflow.experiments.meanfield.run import SPREAD_MAX, MeanfieldResult, slope_target
from sparseflow.training.rundir import write_results
from sparseflow.io import atomic_write_text
from sparseflow.training.report import md_table, save_figure


def plot_variance(result: MeanfieldResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    layers = list(range(1, result.depth + 1))
    for c, s in zip(colors, result.densities()):
        for i, run in enumerate(result.of("he", s)):
            ax1.plot(layers, run.q, "o", color=c, ms=3.5, alpha=0.7, label=f"measured, s={s:g}" if i == 0 else None)
        q0 = statistics.fmean(r.input_q for r in result.of("he", s)) if result.of("he", s) else 1.0
        # Theory: the first layer reads the Gaussian input (χ = 2s), then every ReLU layer multiplies by s.
        theory = [q0 * 2 * s * s ** (ell - 1) for ell in layers]
        ax1.plot(layers, theory, "-", color=c, lw=1.2, label=f"mean field: slope ln s = {math.log(s):.2f}")
        for i, run in enumerate(result.of("sparse", s)):
            ax2.plot(layers, [q / run.input_q for q in run.q], "o", color=c, ms=3.5, alpha=0.7,
                     label=f"measured, s={s:g}" if i == 0 else None)
    ax1.set(yscale="log", xlabel="layer l", ylabel="q_l = mean square of pre-activations",
            title="(a) dense He init, then masked: q_l ∝ s^l")
    ax1.legend(fontsize=7, ncol=2, loc="lower left")
    # Theory for (b): the first layer reads the Gaussian input (χ = 2), every ReLU layer after it has χ = 1.
    ax2.plot(layers, [2.0] * len(layers), "k-", lw=1.5, label="mean field: q_l = 2 q_0 (χ = 1)")
    ax2.axhspan(2 / math.sqrt(SPREAD_MAX), 2 * math.sqrt(SPREAD_MAX), color="0.88", zorder=0,
                label=f"factor-{SPREAD_MAX:g} band around the theory")
    rel = [q / r.input_q for r in result.runs if r.init == "sparse" for q in r.q] or [2.0]
    ticks = [1, 2 / math.sqrt(2), 2, 2 * math.sqrt(2), 4]
    ax2.set(yscale="log", ylim=(min(1.0, 0.9 * min(rel)), max(4.0, 1.1 * max(rel))), xlabel="layer l",
            ylabel="q_l / q_0 (q_0: input mean square)",
            title=f"(b) sparsity-aware init N(0, 2/k_j): criterion max/min q_l <= {SPREAD_MAX:g}")
    ax2.set_yticks(ticks, [f"{t:.3g}" for t in ticks])
    ax2.minorticks_off()
    ax2.legend(fontsize=7, ncol=2, loc="upper left")
    fig.suptitle(result.setting(), fontsize=9)
    save_figure(fig, path)


def plot_chi(result: MeanfieldResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, s in zip(colors, result.densities()):
        for init, marker in (("he", "o"), ("sparse", "^")):
            pts = [(p, m) for r in result.of(init, s) for p, m in zip(r.predicted, r.measured)
                   if p is not None and m is not None]
            if pts:
                ax.plot([p for p, _ in pts], [m for _, m in pts], marker, color=c, ms=3.5, alpha=0.6,
                        label=f"{init} init, s={s:g}")
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="measured = predicted")
    ax.set(xscale="log", yscale="log", xlabel="mean-field χ_l predicted from the weights",
           ylabel="measured q_l / q_(l-1)", title="per-layer gain: theory vs measurement")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def write_outputs(result: MeanfieldResult, out: Path) -> dict:
    """Write OUT/results.json, OUT/report.md, OUT/variance.png, OUT/chi.png; return the JSON object."""
    out.mkdir(parents=True, exist_ok=True)
    plot_variance(result, out / "variance.png")
    plot_chi(result, out / "chi.png")
    data = result.to_json()
    crit = data["criteria"]
    rows = []
    for s in result.densities():
        he, sp = result.of("he", s), result.of("sparse", s)
        target, tol = slope_target(s)
        slopes = [r.slope for r in he]
        c1, c2 = crit.get(f"he_slope_s{s:g}"), crit.get(f"sparse_spread_s{s:g}")
        rows.append([
            f"{s:g}",
            f"{statistics.fmean(slopes):.4f}" + (f" ± {statistics.stdev(slopes):.4f}" if len(slopes) > 1 else ""),
            f"{target:.4f} ± {tol:.4f}", "pass" if c1 and c1["pass"] else "FAIL",
            f"{max(r.spread for r in sp):.3f}" if sp else "n/a", "pass" if c2 and c2["pass"] else "FAIL",
        ])
    passed = sum(c["pass"] for c in crit.values())
    text = f"""# Mean-field signal propagation in sparse ReLU networks

{result.setting()}.

Measured: q_l, the mean square of each layer's pre-activations over the batch and units, from
`sparseflow.signal`. (a) Dense He init (w ~ N(0, 2/fan_in)) then masked to density s: mean field predicts
q_l / q_(l-1) = s·σ_w²/2 = s, a slope ln s of ln q_l against l (least squares over the {result.depth} layers,
mean over seeds; tolerance 5 % of |ln s|, and for s = 1, where the target is 0, the absolute 5 % of |ln 0.5|).
(b) Sparsity-aware init (Evci et al. 2022; N(0, 2/k_j) with k_j the kept fan-in of unit j): χ = 1, and the
criterion is max_l q_l / min_l q_l <= {SPREAD_MAX:g} for the worst seed.

{md_table(["density s", "He: slope of ln q_l", "target ln s", "(a)", "sparse init: max/min q_l", "(b)"], rows)}

**{passed} of {len(crit)} criteria pass.** Finite width turns ln q_l into a random walk around the mean-field
line; the slope averages it out, the max/min spread does not, so (b) has the smaller margin.

![variance](variance.png)

![chi](chi.png)
"""
    atomic_write_text(out / "report.md", text)
    write_results(out, "meanfield", data)
    return data
