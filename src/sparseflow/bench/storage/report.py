"""Console tables, Markdown report, plot and ``result.json`` of ``sparseflow bench storage``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparseflow.bench.storage.result import LAYER_FORMATS, MB, StorageBench
from sparseflow.experiments.protocol import TableData

__all__ = ["markdown", "plot", "tables", "write_outputs"]


def markdown(b: StorageBench, *, command: str | None = None) -> str:
    from sparseflow.training.report import md_table

    c = b.config
    mb = lambda v: f"{v / MB:.4f}"  # noqa: E731
    layer = md_table(["sparsity", "nnz", *LAYER_FORMATS, "zstd s"],
                     [[f"{r.sparsity:g}", r.nnz, *(mb(r.bytes[f]) for f in LAYER_FORMATS), f"{r.zstd_s:.2f}"]
                      for r in b.layer])
    coding = md_table(["density", "N", "nnz", "codec", "mask bytes", "log2 C(N,nnz) / 8", "ratio", "excess bytes"],
                      [[f"{r.density:g}", r.numel, r.nnz, r.codec, r.payload_bytes, f"{r.bound_bytes:.1f}",
                        f"{r.payload_bytes / r.bound_bytes:.6f}", f"{r.payload_bytes - r.bound_bytes:.1f}"]
                       for r in (*b.coding, b.nm)])
    speed = md_table(["density", "N", "encode M/s", "decode M/s"],
                     [[f"{s.density:g}", s.numel, f"{s.encode_mps:.1f}", f"{s.decode_mps:.1f}"] for s in b.speed])
    resnet = md_table(["distribution", "sparsity", "kept", "1-bit-mask MB", "RigL MB", "diff", "ours fp32 MB",
                       "ours fp16 MB", "bound fp32 MB"],
                      [[r.distribution, f"{r.sparsity:g}", r.nnz, mb(r.onebit_bytes),
                        "-" if r.rigl_bytes is None else mb(r.rigl_bytes),
                        "-" if r.rigl_bytes is None else f"{100 * (r.onebit_bytes / r.rigl_bytes - 1):+.2f} %",
                        mb(r.file_fp32), mb(r.file_fp16), mb(r.bound_bytes)] for r in b.resnet])
    crit = md_table(["criterion", "value", "target", "pass"],
                    [[k, v["value"], v["target"], "yes" if v["pass"] else "NO"] for k, v in b.criteria().items()])
    return f"""# sparseflow bench storage

{f"Reproduce with: `{command}`" if command else ""}
MB = 1e6 bytes. Random i.i.d. (Bernoulli) masks and standard-normal fp32 values, seed {c.seed};
{b.threads} torch thread(s); zstd level {c.zstd_level}.

## One {c.side}x{c.side} fp32 layer (MB)

{layer}

![bytes vs sparsity](storage.png)

## Mask coding against log2 C(N, nnz) (last row: a random 2:4 mask against log2 C(4,2)/4 per position)

{coding}

## Mask codec throughput (median of {c.repeats})

{speed}

## ResNet-50 (torchvision shapes, parameters only, random weights)

RigL's accounting: 32 bits per kept weight plus a 1-bit mask for each pruned layer, a 32-bit bias per
output channel; ours counts the parameters of the state dict (batch-norm weight and bias: 2 per channel,
fc bias). Uniform keeps conv1 dense; ERK prunes every conv/fc layer except conv1 at 99 %.

{resnet}

## Criteria

{crit}
"""


def plot(b: StorageBench, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparseflow.training.report import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [100 * r.sparsity for r in b.layer]
    for f in LAYER_FORMATS:
        style: dict[str, object] = {}
        if f == "ours (.sfz)":
            style = {"lw": 2.5, "color": "k", "zorder": 5}
        elif f == "bound":
            style = {"ls": "--", "color": "0.5", "zorder": 6}
        ax.plot(xs, [r.bytes[f] / MB for r in b.layer], marker="o", ms=3, label=f, **style)
    ax.set(xlabel="sparsity (%)", ylabel="file size (MB)", yscale="log",
           title=f"{b.config.side}x{b.config.side} fp32 layer, random mask")
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def tables(b: StorageBench) -> list[TableData]:
    """The layer's bytes per format, and ResNet-50 against RigL's table (the codec throughput under it)."""
    c = b.config
    layer = TableData(f"{c.side}x{c.side} fp32 layer, random mask: file size (MB = 1e6 bytes)",
                      ("format", *(f"s={r.sparsity:g}" for r in b.layer)),
                      [(f, *(f"{r.bytes[f] / MB:.3f}" for r in b.layer)) for f in LAYER_FORMATS])
    resnet = TableData("ResNet-50 (parameters, random weights): MB",
                       ("distribution", "sparsity", "1-bit mask", "RigL", "ours fp32", "ours fp16", "bound fp32"),
                       [(r.distribution, f"{r.sparsity:g}", f"{r.onebit_bytes / MB:.3f}",
                         "-" if r.rigl_bytes is None else f"{r.rigl_bytes / MB:.3f}", f"{r.file_fp32 / MB:.3f}",
                         f"{r.file_fp16 / MB:.3f}", f"{r.bound_bytes / MB:.3f}") for r in b.resnet],
                       note="codec throughput (M positions/s, median): " + ", ".join(
                           f"p={s.density:g}: encode {s.encode_mps:.0f}, decode {s.decode_mps:.0f}" for s in b.speed)
                       + f"; {b.threads} torch thread(s)")
    return [layer, resnet]


def write_outputs(b: StorageBench, out: Path) -> dict[str, Any]:
    """OUT/report.md, OUT/storage.png and OUT/result.json; returns the JSON object."""
    from sparseflow.io import atomic_write_text
    from sparseflow.training.rundir import write_results

    out.mkdir(parents=True, exist_ok=True)
    plot(b, out / "storage.png")
    atomic_write_text(out / "report.md", markdown(b, command=b.config.command()))
    write_results(out, "bench-storage", b.record(), "result.json")
    return b.to_json()
