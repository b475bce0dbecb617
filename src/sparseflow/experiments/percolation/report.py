"""Report of the percolation experiment (:mod:`sparseflow.experiments.percolation.run`): results.json, report.md
and the figures of :mod:`sparseflow.experiments.percolation.plots`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sparseflow.experiments.percolation.plots import plot_surviving, plot_threshold, plot_training
from sparseflow.experiments.percolation.run import CRITERION_C, PercolationResult, train_summary
from sparseflow.io import atomic_write_text
from sparseflow.training.report import md_table
from sparseflow.training.rundir import write_results


def write_outputs(result: PercolationResult, out: Path) -> dict[str, Any]:
    """results.json, report.md and the PNGs into ``out`` (created if missing); returns the JSON object."""
    out.mkdir(parents=True, exist_ok=True)
    plot_surviving(result, out / "surviving.png")
    plot_threshold(result, out / "threshold.png")
    if result.train is not None:
        plot_training(result, out / "training.png")
    data = result.to_json()
    write_results(out, "percolation", data)
    atomic_write_text(out / "report.md", report_markdown(result))
    return data


def report_markdown(result: PercolationResult) -> str:
    cfg, crit = result.config, result.criteria()
    mask_rows = [[f"{r.c:g}", r.width, r.depth, f"{r.mean:.4f} ± {r.std:.4f}", f"{r.mean_field:.4f}", f"{r.theory:.4f}",
                  f"{abs(r.mean - r.theory):.4f}" if r.c >= CRITERION_C else "-", f"{r.on_path:.4f}", f"{r.on_path_theory:.4f}"]
                 for r in result.rows]
    pc_rows = []
    for s in result.scans:
        seeds = np.array([p for p in s.per_seed if p is not None])
        pc_rows.append([s.b, f"{s.theory:.4f}", "none" if s.estimate is None else f"{s.estimate:.4f}",
                        f"{seeds.mean():.4f} ± {seeds.std():.4f} ({len(seeds)}/{len(s.per_seed)})" if len(seeds) else "none",
                        "-" if s.estimate is None else f"{abs(s.estimate - s.theory):.4f}", s.width, f"{s.depth // 2}, {s.depth}", len(s.ps)])
    crit_rows = [[k, "none" if v["value"] is None else f"{v['value']:.4f}", v["target"], "pass" if v["pass"] else "FAIL"] for k, v in crit.items()]
    verdict = "all criteria pass" if all(v["pass"] for v in crit.values()) else "some criteria FAIL: " + ", ".join(k for k, v in crit.items() if not v["pass"])
    text = f"""# Percolation in sparse layered networks{' (quick run)' if cfg.quick else ''}

**Verdict: {verdict}.** Wall time {result.wall_s:.1f} s.

## What is measured
- *Layered random mask of mean fan-in c*: each of the width² links between consecutive layers kept with
  probability c/width. The **forward surviving fraction** at depth L is the fraction of layer-L units reachable
  from a fully active layer 0 through kept links; it is compared with the fixed point ρ(c) of ρ = 1 - exp(-cρ)
  (ρ = 1 + W₀(-c e^(-c))/c, 0 for c <= 1) and with the finite-depth mean-field iterate ρ_L. Depths 10 and 30 are
  the first layers of the deepest network of the same seed (forward reach does not depend on later layers).
  Also measured, not a criterion: the fraction of the middle layer on a full input-to-output path, against ρ_(L/2)².
- *Fixed fan-out b, pruned fraction p*: every unit sends b links to uniform random units of the next layer,
  each kept with probability 1 - p; a branching process with mean b(1-p), critical at p_c = 1 - 1/b. p_c is
  estimated from finite depth as the crossing of L·ρ_L(p) for L = {cfg.pc_depth // 2} and {cfg.pc_depth} (both
  tend to 2 at p_c, grow with L below it and vanish above), first on a 0.05 grid of p, then on a 0.005 grid
  around the bracket, using the seed-mean curves; the per-seed crossings give the spread.
- Seeds {list(result.seeds)}; mean ± std over seeds.

## Layered random masks: surviving fraction vs theory

{md_table(["c", "width", "depth L", "simulated ρ_L", "mean field ρ_L", "fixed point ρ(c)", "abs error (c >= 1.5)", "on path (layer L/2)", "ρ_(L/2)²"], mask_rows)}

![surviving fraction](surviving.png)

## Fan-out b: percolation threshold

{md_table(["b", "1 - 1/b", "estimated p_c", "per-seed p_c (found)", "abs error", "width", "depths", "grid points"], pc_rows)}

![threshold](threshold.png)
"""
    if result.train is not None:
        t = result.train
        rows = [[f"{r['c']:g}", f"{r['acc_mean']:.4f} ± {r['acc_std']:.4f}", f"{t.chance:.4f}", f"{r['connected']:.2f}",
                 f"{r['reached']:.4f}", f"{r['reached_theory']:.4f}"] for r in train_summary(t)]
        text += f"""
## Training across the threshold

MLP with {t.depth} hidden layers of {t.width} ReLU units on {t.dataset}, {t.epochs} epochs (Adam, lr 3e-3,
cosine). The first Linear (input -> first hidden layer) and the classifier stay dense; each of the
{t.depth - 1} hidden -> hidden Linear layers is a uniform random mask (RandomSparse) of density c/{t.width},
mean fan-in c. Weights: He init per unit's kept fan-in (sparseflow.init.sparse_init_). Chance = accuracy
of the most frequent test class. "reached" = fraction of the last hidden layer reachable from the input.

{md_table(["c", "test accuracy", "chance", "seeds with a path", "reached (measured)", "reached (mean field)"], rows)}

![training](training.png)
"""
    text += f"\n## Criteria\n\n{md_table(['criterion', 'value', 'target', 'result'], crit_rows)}\n"
    return text
