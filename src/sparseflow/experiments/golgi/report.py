"""Report of the Golgi experiment (:mod:`sparseflow.experiments.golgi.run`): results.json, report.md and the
figures, every one of which puts a trained mask next to its random control of the same per-layer counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparseflow.analysis import stain_plots
from sparseflow.analysis.stain import degree_stats
from sparseflow.experiments.golgi.plots import plot_fanout, plot_trees
from sparseflow.experiments.golgi.run import LOW, GolgiResult
from sparseflow.experiments.protocol import TableData
from sparseflow.training.report import md_table
from sparseflow.training.rundir import write_run

FIELDS = 3  # first-layer units whose receptive fields are drawn


def write_outputs(result: GolgiResult, out: Path) -> dict[str, Any]:
    """The PNGs, results.json and report.md into ``out`` (created if missing); returns the JSON object."""
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for t, r in result.pairs():
        panels = [(f"{t.name} ({t.stain.graph.density:.1%} kept)", t.stain), (r.name, r.stain)]
        for kind, draw in (("stain", stain_plots.plot_graphs), ("masks", stain_plots.plot_masks),
                           ("degrees", stain_plots.plot_degrees)):
            figures.append(f"{kind}_{t.method}.png")
            draw(panels, out / figures[-1])
        figures.append(f"pixels_{t.method}.png")
        stain_plots.plot_pixels(panels, out / figures[-1], FIELDS)
    plot_fanout(result, out / "fanout.png")
    plot_trees(result, out / "trees.png")
    figures += ["fanout.png", "trees.png"]
    data = result.to_json() | {"figures": figures}
    write_run(out, "golgi", data, report_markdown(result, figures))
    return data


def summary_rows(result: GolgiResult) -> list[list[object]]:
    rows = []
    for a in result.arms:
        d0 = degree_stats(a.stain.degrees[0].fan_out)
        last_hidden = list(a.in_pixels)[-1]
        rows.append([a.name, "-" if a.accuracy is None else f"{a.accuracy:.4f}", f"{a.stain.pixels.covered:.3f}",
                     f"{a.input_fraction:.3f}", f"{a.pixel_rho:.3f}", f"{a.low_share:.3f}", f"{d0['gini']:.3f}",
                     f"{d0['var']:.1f}", f"{float(a.in_pixels[last_hidden].double().mean()):.1f}",
                     int((a.out_reached[last_hidden] == 0).sum())])
    return rows


def report_markdown(result: GolgiResult, figures: list[str]) -> str:
    cfg = result.config
    arm = result.arms[0]
    st = arm.stain
    layers = list(arm.in_pixels)
    header = ["mask", "test acc", "pixels covered", "pixels reaching an output", "Spearman ρ(fan-out, pixel std)",
              f"share on least-varying {LOW:.0%} pixels", "pixel fan-out Gini", "pixel fan-out var",
              f"mean input-tree pixels ({layers[-1]})", f"{layers[-1]} units with no output"]
    deg_rows = [[a.name, d.layer, *(f"{degree_stats(getattr(d, k))[s]:.3f}" for k in ("fan_in", "fan_out")
                                    for s in ("mean", "var", "gini")),
                 int((d.fan_in == 0).sum()), int((d.fan_out == 0).sum())] for a in result.arms for d in a.stain.degrees]
    crit = [[k, f"{v['value']:.4f}", v["target"], "pass" if v["pass"] else "FAIL"] for k, v in result.criteria().items()]
    figs = "\n".join(f"![{f}]({f})" for f in figures)
    passed = sum(row[-1] == "pass" for row in crit)
    stained = "; ".join(f"{a.name} {list(a.stain.trees.units)} (of {a.stain.alive} on a path)" for a in result.arms)
    data = "MNIST" if result.data_dir is not None else "the embedded 8x8 digits (scikit-learn)"
    return f"""# Golgi stain: trained masks against random masks of the same per-layer counts

LeNet-300-100 on {data}{f' ({cfg.subset} training examples)' if cfg.subset else ''}, {cfg.epochs} epochs,
sparsity {cfg.sparsity:g}, seed {cfg.seed}. Each trained mask ({', '.join(cfg.methods)}) is compared with a random
mask keeping the same number of weights in every layer{', trained on the same budget' if cfg.train_random else ''}.
Stained: {len(st.trees.units)} units of `{st.graph.labels[st.trees.space]}` in each mask, drawn at random (seed
{cfg.seed}) among its units on an input-output path: {stained}. Hidden units are interchangeable, so the
stains of two masks are compared as samples, not unit by unit. Training and staining{' (quick run)' if cfg.quick else ''}
took {result.wall_s:.1f} s (figures not included); {passed} of {len(crit)} criteria pass.

Command: `{result.command}`

## Masks

{md_table(header, summary_rows(result))}

Pixels covered: fraction of input pixels with at least one kept first-layer connection. Spearman ρ: rank
correlation over pixels between kept first-layer connections and the pixel's standard deviation over the
training set. Input tree pixels: input pixels with a path of kept connections to the unit.

## Degrees per layer (unit level: kept inputs per output unit, kept outputs per input unit)

{md_table(["mask", "layer", "fan-in mean", "fan-in var", "fan-in Gini", "fan-out mean", "fan-out var",
           "fan-out Gini", "units without input", "inputs without output"], deg_rows)}

## Criteria

{md_table(["criterion", "value", "target", "result"], crit)}

## Figures

{figs}
"""


def tables(result: GolgiResult) -> list[TableData]:
    columns = ("mask", "test acc", "pixels covered", "reach output", "ρ(fan-out, std)", "low-var share",
               "fan-out Gini", "fan-out var", "input-tree pixels", "no output")
    title = f"golgi ({'quick' if result.config.quick else 'full'} run, {result.dataset}, {result.wall_s:.1f} s)"
    return [TableData(title, columns, summary_rows(result), min_width=120)]
