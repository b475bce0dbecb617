"""results.json, report.md and figures of the sparse-initialisation experiment (:mod:`.sparse_init`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sparseflow.experiments.protocol import TableData
from sparseflow.experiments.sparse_init.run import INITS, InitResult, theory_moments
from sparseflow.io import atomic_write_text
from sparseflow.training.report import md_table, save_figure
from sparseflow.training.rundir import write_results

LABEL = {"he": "dense He, masked", "sparse": "sparsity-aware (per-unit fan-in)", "dense": "dense He (s = 0)"}


def _plots(result: InitResult, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    ss = list(cfg.sparsities)
    colors = dict(zip(ss, ("tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:brown")))

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for init, marker in (("sparse", "o"), ("he", "s")):
        ax.errorbar(ss, [result.mean_acc(s, init) for s in ss], yerr=[result.std_acc(s, init) for s in ss],
                    marker=marker, capsize=3, label=LABEL[init])
    ax.axhline(result.mean_acc(0.0, "dense"), color="gray", ls="-.", label=LABEL["dense"])
    ax.axhline(result.chance, color="black", ls=":", label="chance (most frequent class)")
    ax.set(xlabel="sparsity (uniform random mask)", ylabel="test accuracy", ylim=(0, 1),
           title=f"{cfg.depth}-layer ReLU MLP, width {cfg.width}, mean ± std over {cfg.seeds} seed(s)")
    ax.legend(fontsize=8)
    save_figure(fig, out / "accuracy.png")

    fig, ax = plt.subplots(figsize=(6, 3.8))
    xs = [(i + 0.5) / len(result.runs[0].loss_curve) * cfg.epochs for i in range(len(result.runs[0].loss_curve))]
    for s in [0.0, *ss]:
        for init in ("dense",) if s == 0.0 else INITS:
            curves = [r.loss_curve for r in result.runs if r.sparsity == s and r.init == init]
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(len(xs))]
            ax.plot(xs, mean, color=colors.get(s, "gray"), ls="-" if init != "he" else "--",
                    label=f"s={s:g}, {LABEL[init]}")
    ax.axhline(math.log(10), color="black", ls=":", label="log 10 (uniform prediction)")
    ax.set(xlabel="epoch", ylabel="training loss (mean over a stretch)", yscale="log", title="training loss")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    save_figure(fig, out / "loss.png")

    fig, ax = plt.subplots(figsize=(6, 3.8))
    layers = list(range(1, cfg.depth + 1))
    for s in ss:
        for init in INITS:
            runs = [r for r in result.runs if r.sparsity == s and r.init == init]
            geo = [math.exp(sum(math.log(max(r.moments[i], 1e-300)) for r in runs) / len(runs)) for i in range(cfg.depth)]
            ax.plot(layers, geo, color=colors[s], ls="-" if init == "sparse" else "--",
                    marker="o" if init == "sparse" else "s", ms=3, label=f"s={s:g}, {LABEL[init]}")
            q0 = sum(r.input_moment for r in runs) / len(runs)
            ax.plot(layers, theory_moments(q0, 1 - s, cfg.depth, init), color=colors[s], ls=":", lw=1)
    ax.plot([], [], color="black", ls=":", lw=1, label="mean field: 2 q0 d^l (He), 2 q0 (sparse)")
    ax.set(xlabel="layer l", ylabel="pre-activation second moment q_l at init", yscale="log",
           title="signal at initialisation (measured vs theory)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    save_figure(fig, out / "variance.png")
    return ["accuracy.png", "loss.png", "variance.png"]


def write_outputs(result: InitResult, out: Path) -> dict[str, Any]:
    """Write OUT/results.json, OUT/report.md and the three PNGs; return the JSON object without the runs."""
    out.mkdir(parents=True, exist_ok=True)
    obj = result.to_json()
    figures = _plots(result, out)
    obj["figures"] = figures
    write_results(out, "init", obj)
    atomic_write_text(out / "report.md", markdown(result, obj["criteria"], figures))
    return {k: v for k, v in obj.items() if k != "runs"}


def tables(result: InitResult) -> list[TableData]:
    rows = [(f"{r['sparsity']:g}", LABEL[r["init"]], f"{r['mean_acc']:.4f} ± {r['std_acc']:.4f}") for r in result.summary()]
    return [TableData(f"test accuracy, {result.dataset}, chance {result.chance:.3f}", ("sparsity", "init", "accuracy"),
                      rows, left=())]


def markdown(result: InitResult, crit: dict[str, Any], figures: list[str]) -> str:
    cfg = result.config
    rows = [[f"{s:g}", LABEL[i], f"{result.mean_acc(s, i):.4f} ± {result.std_acc(s, i):.4f}"]
            for s in (0.0, *cfg.sparsities) for i in (("dense",) if s == 0.0 else INITS)]
    crows = [[name, json.dumps(c["value"]) if len(json.dumps(c["value"])) < 120 else "see results.json",
              c["target"], "pass" if c["pass"] else "FAIL"] for name, c in crit.items()]
    s = max(cfg.sparsities)
    verdict = (
        f"At sparsity {s:g} the sparsity-aware init reaches {result.mean_acc(s, 'sparse'):.3f} test accuracy "
        f"and masked dense He {result.mean_acc(s, 'he'):.3f} (chance {result.chance:.3f})."
    )
    return f"""# Sparsity-aware initialisation vs dense He in a deep sparse ReLU MLP

Measured: test accuracy after the same training budget, the training loss, and the second moment q_l of
every layer's pre-activations at initialisation on 512 training inputs, for a {cfg.depth}-layer plain ReLU
MLP (width {cfg.width}, no normalisation, zero biases) on {result.dataset}, static uniform random masks
(every layer at density d = 1 - s). "Dense He, masked" draws N(0, 2/fan_in) and masks it (mean-field
χ = d per layer, so q_l = 2 q0 d^l); "sparsity-aware" is the same draw rescaled to N(0, 2/k_j) with k_j
the kept fan-in of unit j (Evci et al. 2022; `RandomSparse`'s default `sparse_init=True`), χ = 1.
Same mask, data order and SGD (lr {cfg.lr}, momentum {cfg.momentum}, batch {cfg.batch_size},
{cfg.epochs} epochs, {result.steps} steps) per seed; {cfg.seeds} seed(s); chance = most frequent test class.
{"Training examples: " + str(cfg.train_size) + ", test examples: " + str(cfg.test_size) + "." if cfg.train_size or cfg.test_size else ""}

{md_table(["sparsity", "init", "test accuracy (mean ± std)"], rows)}

**Verdict.** {verdict}

{md_table(["criterion", "measured", "target", "result"], crows)}

{chr(10).join(f"![{f}]({f})" for f in figures)}

Wall time {result.wall_s:.0f} s.
"""
