"""``sparseflow bench storage``: file bytes of sparse models, ours against common formats and the bound."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, bench_app
from sparseflow.errors import SparseflowError


@bench_app.command("storage")
def bench_storage_cmd(
    seed: Annotated[int, typer.Option(help="Seed of the random masks and values.")] = 0,
    threads: Annotated[int, typer.Option(help="torch.set_num_threads while timing (the mask codec is serial).")] = 1,
    out: Annotated[Optional[Path], typer.Option(help="Write report.md, storage.png and result.json here.")] = None,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Bytes of a 4096x4096 fp32 layer at 50-99 % sparsity in every format, mask coding against
    log2 C(N, nnz), codec throughput, and ResNet-50 against RigL's size table (1-bit-mask accounting)."""
    import dataclasses

    import torch

    from sparseflow.bench.storage.run import LAYER_FORMATS, MB, QUICK, Config, run
    from sparseflow.bench.storage.report import criteria, to_json, write_report

    if threads < 1:
        raise SparseflowError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    cfg = dataclasses.replace(QUICK if quick else Config(), seed=seed)
    with Console(stderr=True).status("measuring") as status:
        b = run(cfg, progress=lambda msg: status.update(msg))
    console = _console(as_json)
    table = Table(title=f"{cfg.side}x{cfg.side} fp32 layer, random mask: file size (MB = 1e6 bytes)")
    table.add_column("format")
    for r in b.layer:
        table.add_column(f"s={r.sparsity:g}", justify="right")
    for f in LAYER_FORMATS:
        table.add_row(f, *(f"{r.bytes[f] / MB:.3f}" for r in b.layer))
    console.print(table)
    rn = Table(title="ResNet-50 (parameters, random weights): MB")
    for col in ("distribution", "sparsity", "1-bit mask", "RigL", "ours fp32", "ours fp16", "bound fp32"):
        rn.add_column(col, justify="left" if col == "distribution" else "right")
    for r in b.resnet:
        rn.add_row(r.distribution, f"{r.sparsity:g}", f"{r.onebit_bytes / MB:.3f}",
                   "-" if r.rigl_bytes is None else f"{r.rigl_bytes / MB:.3f}", f"{r.file_fp32 / MB:.3f}",
                   f"{r.file_fp16 / MB:.3f}", f"{r.bound_bytes / MB:.3f}")
    console.print(rn)
    console.print("codec throughput (M positions/s, median): " + ", ".join(
        f"p={s.density:g}: encode {s.encode_mps:.0f}, decode {s.decode_mps:.0f}" for s in b.speed)
        + f"; {b.threads} torch thread(s)", highlight=False)
    crit_table = Table(title="criteria")
    for col in ("criterion", "value", "target", "pass"):
        crit_table.add_column(col)
    crit = criteria(b)
    for name, c in crit.items():
        crit_table.add_row(name, f"{c['value']:.6g}", str(c["target"]), "yes" if c["pass"] else "NO")
    console.print(crit_table)
    if out is not None:
        command = f"sparseflow bench storage --seed {seed} --threads {threads}" + (" --quick" if quick else "")
        write_report(b, out, command=command)
    if as_json:
        _emit_json({"command": "bench storage", "quick": quick, "torch": torch.__version__, **to_json(b)})
