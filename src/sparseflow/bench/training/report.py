"""Console tables, ``result.json``, ``report.md`` and ``speedup.png`` of ``sparseflow bench training``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparseflow.bench.training.measure import SHOWN
from sparseflow.bench.training.run import TrainingResult
from sparseflow.experiments.protocol import TableData
from sparseflow.io import atomic_write_text
from sparseflow.training.rundir import write_results

LABELS = {"dense": "dense nn.Linear", "masked": "masked dense", "sparse": "sparse (SparseTrainLinear)",
          "sparselab": "SparseLab SparseLinear", "auto": "auto"}


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def speedup_table(result: TrainingResult) -> TableData:
    """Per cell: dense ms and every method's speedup over dense (auto: the path choose() picked)."""
    rows = [(f"{c.out}x{c.inp}", f"{c.density:g}", str(c.batch), str(c.threads), f"{c.ms['dense']:.2f}",
             *[_x(c.speedup(m)) for m in SHOWN], "sparse" if c.auto == "sparse" else "masked", f"{c.choose_s:.2f}",
             str(c.repeats))
            for c in result.cells if c.kind == "linear"]
    m = result.machine
    title = (f"training step (forward + backward + SGD momentum step), speedup over dense nn.Linear; "
             f"ISA {m.get('isa')}, torch {m.get('torch')}")
    note = "" if m.get("sparselab") else "sparselab is not installed: its column is empty (pip install sparselab)"
    return TableData(title, ("layer (out x in)", "density", "batch", "thr", "dense ms", *SHOWN, "auto picks",
                             "choose s", "rounds"), rows, min_width=140, note=note)


def conv_table(result: TrainingResult) -> TableData | None:
    """The 1x1 convolution cells: dense nn.Conv2d ms and the speedups over it."""
    cells = [c for c in result.cells if c.kind == "conv1x1"]
    if not cells:
        return None
    shown = ("masked", "sparse", "auto")
    rows = [(f"{c.out}x{c.inp}", f"{c.size}x{c.size}", f"{c.density:g}", str(c.batch), str(c.threads),
             f"{c.ms['dense']:.2f}", *[_x(c.speedup(m)) for m in shown], "sparse" if c.auto == "sparse" else "masked",
             str(c.repeats)) for c in cells]
    return TableData("1x1 convolutions (training step), speedup over dense nn.Conv2d",
                     ("channels (out x in)", "map", "density", "images", "thr", "dense ms", *shown, "auto picks",
                      "rounds"), rows)


def memory_table(result: TrainingResult) -> TableData:
    rows = [(f"{r['out']}x{r['inp']}", f"{r['density']:g}", r["optimizer"], _mib(r["dense_bytes"]),
             _mib(r["sparse_bytes"]), f"{r['sparse_ratio']:.3f}", _mib(r["sparselab_bytes"]),
             _x(r["sparselab_ratio"]) if r["sparselab_ratio"] is None else f"{r['sparselab_ratio']:.3f}")
            for r in result.memory]
    return TableData("optimizer state after one step (SGD: momentum; AdamW: two moments and the step), MiB",
                     ("layer (out x in)", "density", "optimizer", "dense", "sparse", "sparse / dense", "SparseLab",
                      "SparseLab / dense"), rows, left=("layer (out x in)", "optimizer"))


def end_to_end_table(result: TrainingResult) -> TableData | None:
    """One row per run kind: median epoch seconds, speed over dense training, accuracy over seeds, memory."""
    rows = result.end_to_end_summary
    if not rows:
        return None
    c = result.config
    body = [(r["label"], str(r["seeds"]), f"{r['epoch_s']:.2f}", _x(r["speedup"]),
             f"{r['acc_mean']:.2f} ± {r['acc_std']:.2f}", f"{r['density']:.3f}", _mib(r["param_bytes"]),
             _mib(r["optimizer_bytes"]), _mib(r["train_peak_bytes"]), _mib(r["peak_rss_bytes"]))
            for r in rows]
    title = (f"end to end: MLP {'-'.join(map(str, c.e2e_hidden))} on {result.dataset}, RigL at sparsity "
             f"{c.e2e_sparsity:g}, {c.e2e_epochs} epoch(s), batch {c.e2e_batch}, {c.e2e_threads} thread(s)")
    note = ("epoch s: median training time of an epoch (evaluation excluded); speed: dense training's epoch / this "
            "one's; accuracy: test %, mean ± std over seeds; params and optimizer state after the first epoch; "
            "training peak: the process's peak resident memory during fit above what it held before (data and "
            "libraries), process peak: the whole process's")
    return TableData(title, ("run", "seeds", "epoch s", "speed", "accuracy %", "density", "params MiB",
                             "optimizer MiB", "training peak MiB", "process peak MiB"), body, left=("run",),
                     note=note)


def tables(result: TrainingResult) -> list[TableData]:
    return [t for t in (speedup_table(result), conv_table(result), memory_table(result), end_to_end_table(result))
            if t is not None]


def plot(result: TrainingResult, path: Path) -> None:
    """Speedup over dense against density, one panel per (threads, batch); a colour per layer shape, the sparse
    layer solid, SparseLab dashed, auto dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from sparseflow.training.report import save_figure

    cells = [c for c in result.cells if c.kind == "linear"]
    threads = sorted({c.threads for c in cells})
    batches = sorted({c.batch for c in cells})
    shapes = list(dict.fromkeys((c.out, c.inp) for c in cells))
    fig, axes = plt.subplots(len(threads), len(batches), figsize=(4.2 * len(batches), 3.4 * len(threads)),
                             squeeze=False, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r, t in enumerate(threads):
        for k, b in enumerate(batches):
            ax = axes[r][k]
            for n, shape in enumerate(shapes):
                mine = sorted((c for c in cells if (c.out, c.inp) == shape and c.batch == b and c.threads == t),
                              key=lambda c: c.density)
                xs = [c.density for c in mine]
                for method, style, marker in (("sparse", "-", "o"), ("sparselab", "--", "s"), ("auto", ":", "x")):
                    ys = [c.speedup(method) for c in mine]
                    if xs and all(y is not None for y in ys):
                        ax.plot(xs, ys, style, marker=marker, markersize=4, color=colors[n % len(colors)],
                                label=f"{shape[0]}x{shape[1]} {method}")
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_xscale("log")
            densities = sorted({c.density for c in cells})
            ax.set_xticks(densities, [f"{d:g}" for d in densities])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"batch {b}, {t} thread{'s' if t > 1 else ''}")
            ax.set_xlabel("density")
            if k == 0:
                ax.set_ylabel("speedup over dense")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"training step of one Linear layer vs dense (ISA {result.machine.get('isa')})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _md_table(t: TableData) -> str:
    lines = ["| " + " | ".join(t.columns) + " |", "|" + "|".join("---" for _ in t.columns) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def report_md(result: TrainingResult) -> str:
    m, cfg = result.machine, result.config
    parts = ["# sparseflow bench training", ""]
    if result.command_line:
        parts += [f"Reproduce with: `{result.command_line}`", ""]
    parts += [f"Machine: {m.get('processor')}, {m.get('cores')} cores, ISA {m.get('isa')}; torch {m.get('torch')}; "
              f"SparseLab {m.get('sparselab') or 'not installed'}; threads {', '.join(map(str, cfg.threads))}; "
              f"{result.wall_s:.0f} s in all.", "",
              "Each cell times one training step of a single Linear layer (forward, backward into the weights and "
              "the input, SGD step with momentum 0.9) on random data; the median over interleaved rounds. Columns "
              "are dense time / method time in the same cell: masked = nn.Linear under FixedMask, sparse = "
              "SparseTrainLinear, auto = the path autotune.choose picked (its own measurement, which took "
              "'choose s' seconds).", ""]
    for t in tables(result):
        parts += [f"## {t.title[0].upper()}{t.title[1:]}", "", _md_table(t), ""]
        if t.note:
            parts += [t.note, ""]
    parts += ["![speedup](speedup.png)", "", "## Criteria", "", "| criterion | value | target | pass |",
              "|---|---|---|---|"]
    for name, c in result.criteria().items():
        verdict = "n/a" if c["pass"] is None else "yes" if c["pass"] else "**no**"
        note = f" ({c['note']})" if c.get("note") and c["pass"] is None else ""
        parts.append(f"| {name} | {c['value']} | {c['target']} | {verdict}{note} |")
    return "\n".join(parts) + "\n"


def write_outputs(result: TrainingResult, out: Path) -> dict[str, Any]:
    """OUT/result.json, OUT/report.md and OUT/speedup.png; returns the JSON object."""
    out = Path(out)
    data = result.to_json()
    write_results(out, "bench-training", data, "result.json")
    if any(c.kind == "linear" for c in result.cells):
        plot(result, out / "speedup.png")
    atomic_write_text(out / "report.md", report_md(result))
    return data
