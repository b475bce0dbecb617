"""``sparseflow export`` (a run or checkpoint to an ``.sfz`` file) and ``sparseflow inspect`` (what a file holds)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, app
from sparseflow.errors import SparseflowError


def _report_table(report, title: str) -> Table:  # noqa: ANN001  (a FileReport)
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for i, col in enumerate(report.HEADERS):
        table.add_column(col, justify="left" if i in (0, 1, 2, 4) else "right", no_wrap=i == 0)
    for row in report.rows():
        table.add_row(*row)
    return table


def _summary(report) -> str:  # noqa: ANN001
    bound = report.mask_bound_bytes
    ratio = f"{report.mask_bytes / bound:.3f}x the i.i.d. bound {bound:,.0f} B" if bound else "no sparse tensors"
    return (f"{report.path}: {report.file_bytes:,} bytes ({report.file_bytes / report.dense_fp32_bytes:.3f} of dense "
            f"fp32 {report.dense_fp32_bytes:,}); masks {report.mask_bytes:,} B = {ratio}; "
            f"values {report.values_bytes:,} B")


@app.command()
def inspect(
    file: Annotated[Path, typer.Argument(help="A .sfz file written by `sparseflow export` or sparseflow.save.")],
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Per tensor: shape, stored dtype, density, codec, coded mask bits per position beside the i.i.d. bound
    H(p), their ratio and bytes. Decodes the file, so every checksum is verified. --quick is accepted; it is fast."""
    from sparseflow.storage.report import inspect as inspect_file

    report = inspect_file(file)
    console = _console(as_json, min_width=110)
    console.print(_report_table(report, f"{file}"))
    console.print(_summary(report), highlight=False)
    if as_json:
        _emit_json({"command": "inspect", **report.to_json()})


@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="Run directory of `sparseflow train`, a checkpoint .safetensors, "
                                                "or a .sfz file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .sfz file to write.")],
    dtype: Annotated[str, typer.Option(help="Stored value dtype: fp32, fp16 or bf16.")] = "fp32",
    compress_values: Annotated[bool, typer.Option(
        "--compress-values", help="Also entropy-code the values by byte planes (lossless; ~17 % smaller fp32).")] = False,
    dense: Annotated[bool, typer.Option(
        "--dense", help="Write a plain dense safetensors state dict instead (for tools without sparseflow).")] = False,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a trained model as an .sfz file: entropy-coded masks, kept values in --dtype, no pickle.
    The masks are the run's (a kept weight that is 0 stays kept). --quick is accepted; export is fast."""
    import torch
    from safetensors.torch import save as st_save

    from sparseflow.analysis.loader import load_for_analysis
    from sparseflow.io import atomic_write_bytes
    from sparseflow.storage.container import DTYPES, save
    from sparseflow.storage.report import inspect as inspect_file

    if dtype not in DTYPES:
        raise SparseflowError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not dense and out.suffix != ".sfz":
        raise SparseflowError(f"--out should end in .sfz (got {str(out)!r}); pass --dense for a plain .safetensors")
    if out.resolve() == source.resolve():
        raise SparseflowError(f"--out {str(out)!r} is the source itself; choose another file")
    loaded = load_for_analysis(source)
    rename = lambda n: loaded.names.get(n, n)  # noqa: E731  (keep the checkpoint's names for an inferred MLP)
    state = {rename(k): v for k, v in loaded.model.state_dict().items()}
    mask = {rename(k): v for k, v in loaded.mask.items()} if loaded.mask is not None else None
    console = _console(as_json, min_width=110)
    if dense:
        target = DTYPES[dtype]
        atomic_write_bytes(out, st_save({k: (v.to(target) if v.is_floating_point() else v).contiguous()
                                         for k, v in state.items()}))
        console.print(f"wrote {out} (dense {dtype}, {out.stat().st_size:,} bytes)", highlight=False)
        if as_json:
            _emit_json({"command": "export", "source": str(source), "out": str(out), "dense": True,
                        "dtype": dtype, "file_bytes": out.stat().st_size})
        return
    meta = {"source": str(source)}
    if loaded.config is not None:
        meta["config"] = loaded.config
    save(out, state, mask=mask, dtype=DTYPES[dtype], compress_values=compress_values, meta=meta)
    report = inspect_file(out)
    console.print(_report_table(report, f"{out} (from {loaded.source})"))
    console.print(_summary(report), highlight=False)
    if as_json:
        _emit_json({"command": "export", "source": str(source), "dense": False, "dtype": dtype,
                    "torch": torch.__version__, **report.to_json(), "out": str(out)})
