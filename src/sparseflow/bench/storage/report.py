"""Criteria, Markdown report and plot of ``sparseflow bench storage`` (the measurements: bench_storage.py)."""

from __future__ import annotations

import math
from pathlib import Path

from sparseflow.bench.storage.run import LAYER_FORMATS, MB, TARGET_90_MB, StorageBench

__all__ = ["criteria", "to_json", "markdown", "plot", "write_report"]

FULL_NUMEL = 4096 * 4096


def _crit(value: float, target: str, ok: bool) -> dict[str, object]:
    return {"value": round(value, 6), "target": target, "pass": bool(ok)}


def criteria(b: StorageBench) -> dict[str, dict[str, object]]:
    """Each goal, computed from the rows of ``b`` (targets scale with the tensor size where they depend on it)."""
    out: dict[str, dict[str, object]] = {}
    for r in b.layer:
        if abs(r.sparsity - 0.9) < 1e-9:
            target = TARGET_90_MB * r.numel / FULL_NUMEL
            out[f"file, {b.config.side}^2 fp32 at 90 % (MB)"] = _crit(
                r.bytes["ours (.sfz)"] / MB, f"<= {target:.4g} MB (bound {r.bytes['bound'] / MB:.4f} MB)",
                r.bytes["ours (.sfz)"] / MB <= target)
    for label, rows in (("0.005-0.5", [c for c in b.coding if c.density <= 0.5]),
                        ("above 0.5", [c for c in b.coding if c.density > 0.5])):
        if rows:
            worst = max(rows, key=lambda c: c.payload_bytes - (1.002 * c.bound_bytes + 64))
            out[f"mask bytes / log2 C(N,nnz), densities {label} (worst)"] = _crit(
                worst.payload_bytes / worst.bound_bytes,
                f"payload <= 1.002 x bound + 64 B (worst at p={worst.density:g})",
                all(c.payload_bytes <= 1.002 * c.bound_bytes + 64 for c in rows))
    if b.speed:
        enc, dec = min(s.encode_mps for s in b.speed), min(s.decode_mps for s in b.speed)
        ps = f"p <= {max(s.density for s in b.speed):g}, {b.threads} thread(s)"
        out["mask encode (M positions/s, slowest)"] = _crit(enc, f">= 200 ({ps})", enc >= 200)
        out["mask decode (M positions/s, slowest)"] = _crit(dec, f">= 100 ({ps})", dec >= 100)
    bits = 8 * b.nm.payload_bytes / b.nm.numel
    out["2:4 mask (bits per position)"] = _crit(bits, f"<= 1.002 x {math.log2(6) / 4:.4f}",
                                                bits <= 1.002 * math.log2(6) / 4)
    for r in b.resnet:
        if r.rigl_bytes is not None:
            rel = r.onebit_bytes / r.rigl_bytes - 1
            out[f"ResNet-50 {r.distribution} {r.sparsity:g}, 1-bit-mask accounting vs RigL"] = _crit(
                rel, f"|rel. diff| <= 0.04 (RigL {r.rigl_bytes / MB:.3f} MB)", abs(rel) <= 0.04)
    return out


def to_json(b: StorageBench) -> dict[str, object]:
    from dataclasses import asdict

    return {**asdict(b), "criteria": criteria(b)}


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
                    [[k, v["value"], v["target"], "yes" if v["pass"] else "NO"] for k, v in criteria(b).items()])
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
    plt.close(fig)


def write_report(b: StorageBench, out: Path, *, command: str | None = None) -> None:
    """OUT/report.md, OUT/storage.png and OUT/result.json."""
    from sparseflow.training.rundir import write_results
    from sparseflow.io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    plot(b, out / "storage.png")
    atomic_write_text(out / "report.md", markdown(b, command=command))
    write_results(out, "bench-storage", to_json(b), "result.json")
