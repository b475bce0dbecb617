"""``sparseflow export`` (a run or checkpoint to an ``.sfz`` file) and ``sparseflow inspect`` (what a file holds)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path

from rich import box
from rich.table import Table

from sparseflow.cli._app import app
from sparseflow.cli.generate import Call, command
from sparseflow.errors import SparseflowError
from sparseflow.storage.container import DTYPES
from sparseflow.training.options import check, option


def _report_table(report, title: str) -> Table:  # noqa: ANN001  (a FileReport)
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for i, col in enumerate(report.HEADERS):
        table.add_column(col, justify="left" if i in (0, 1, 2, 4) else "right", no_wrap=i == 0)
    for row in report.rows():
        table.add_row(*row)
    return table


def _show(call: Call, report, title: str) -> None:  # noqa: ANN001  (a FileReport)
    call.run.wide(110).print(_report_table(report, title))
    call.run.print(_summary(report))


def _summary(report) -> str:  # noqa: ANN001
    bound = report.mask_bound_bytes
    ratio = f"{report.mask_bytes / bound:.3f}x the i.i.d. bound {bound:,.0f} B" if bound else "no sparse tensors"
    return (f"{report.path}: {report.file_bytes:,} bytes ({report.file_bytes / report.dense_fp32_bytes:.3f} of dense "
            f"fp32 {report.dense_fp32_bytes:,}); masks {report.mask_bytes:,} B = {ratio}; "
            f"values {report.values_bytes:,} B")


@dataclass(frozen=True)
class InspectConfig:
    file: Path = option(MISSING, "A .sfz file written by `sparseflow export` or sparseflow.save.", positional=True)

    def __post_init__(self) -> None:
        check(self)


def inspect(call: Call) -> None:
    """Per tensor: shape, stored dtype, density, codec, coded mask bits per position beside the i.i.d. bound
    H(p), their ratio and bytes. Decodes the file, so every checksum is verified. --quick is accepted; it is fast."""
    from sparseflow.storage.report import inspect as inspect_file

    file = call.config.file
    report = inspect_file(file)
    _show(call, report, f"{file}")
    call.run.finish({"command": "inspect", **report.to_json()})


@dataclass(frozen=True)
class ExportConfig:
    """What ``sparseflow export`` reads and writes."""

    source: Path = option(MISSING, "Run directory of `sparseflow train`, a checkpoint .safetensors, or a .sfz file.",
                          positional=True)
    out: Path = option(MISSING, "The .sfz file to write.", short="-o")
    dtype: str = option("fp32", "Stored value dtype: fp32, fp16 or bf16.", choices=tuple(DTYPES))
    compress_values: bool = option(
        False, "Also entropy-code the values by byte planes (lossless; ~17 % smaller fp32).")
    dense: bool = option(
        False, "Write a plain dense safetensors state dict instead (for tools without sparseflow).")

    def __post_init__(self) -> None:
        check(self)
        if not self.dense and self.out.suffix != ".sfz":
            raise SparseflowError(
                f"--out should end in .sfz (got {str(self.out)!r}); pass --dense for a plain .safetensors")
        if self.dense and self.out.suffix != ".safetensors":
            raise SparseflowError(
                f"--dense writes a plain safetensors state dict, which sparseflow.load and inspect do not read as "
                f".sfz: --out should end in .safetensors (got {str(self.out)!r}); leave out --dense for an .sfz")
        if self.out.resolve() == self.source.resolve():
            raise SparseflowError(f"--out {str(self.out)!r} is the source itself; choose another file")


def export(call: Call) -> None:
    """Write a trained model as an .sfz file: entropy-coded masks, kept values in --dtype, no pickle.
    The masks are the run's (a kept weight that is 0 stays kept). --quick is accepted; export is fast."""
    import torch
    from safetensors.torch import save as st_save

    from sparseflow.analysis.loader import load_for_analysis
    from sparseflow.io import atomic_write_bytes, check_file_target
    from sparseflow.storage.container import save
    from sparseflow.storage.report import inspect as inspect_file

    source, out, dtype = call.config.source, call.config.out, call.config.dtype
    check_file_target(out, "--out")  # before the source is read
    loaded = load_for_analysis(source)
    rename = lambda n: loaded.names.get(n, n)  # noqa: E731  (keep the checkpoint's names for an inferred MLP)
    state = {rename(k): v for k, v in loaded.model.state_dict().items()}
    mask = {rename(k): v for k, v in loaded.mask.items()} if loaded.mask is not None else None
    if call.config.dense:
        target = DTYPES[dtype]
        atomic_write_bytes(out, st_save({k: (v.to(target) if v.is_floating_point() else v).contiguous()
                                         for k, v in state.items()}))
        call.run.print(f"wrote {out} (dense {dtype}, {out.stat().st_size:,} bytes)")
        call.run.finish({"command": "export", "source": str(source), "out": str(out), "dense": True,
                         "dtype": dtype, "file_bytes": out.stat().st_size})
        return
    meta = {"source": str(source)}
    if loaded.config is not None:
        meta["config"] = loaded.config
    save(out, state, mask=mask, dtype=DTYPES[dtype], compress_values=call.config.compress_values, meta=meta)
    report = inspect_file(out)
    _show(call, report, f"{out} (from {loaded.source})")
    call.run.finish({"command": "export", "source": str(source), "dense": False, "dtype": dtype,
                     "torch": torch.__version__, **report.to_json(), "out": str(out)})


command(app, "inspect", inspect, config=InspectConfig)
command(app, "export", export, config=ExportConfig)
