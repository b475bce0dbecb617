"""Report of :mod:`sparseflow.experiments.collapse.run`: report.md and result.json, and the console table."""

from __future__ import annotations

from pathlib import Path

from sparseflow.experiments.collapse.run import CollapseTable
from sparseflow.experiments.protocol import TableData
from sparseflow.io import atomic_write_text
from sparseflow.training.rundir import write_results


def write_outputs(result: CollapseTable, out: Path) -> dict:
    """Write OUT/report.md and OUT/result.json (stamped); return the JSON object."""
    data = result.to_json()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", "# Layer collapse at initialisation\n\n" + result.markdown())
    write_results(out, "collapse", data, "result.json")
    return data


def tables(result: CollapseTable) -> list[TableData]:
    rows = [(name, "none on grid" if c is None else f"{c:.5f}", "none" if e is None else f"{e:.5f}")
            for name, (c, e) in result.summary().items()]
    return [TableData("sparsity at which the mask cuts every input-output path (median over seeds)",
                      ("method", "collapse sparsity", "largest sparsity with no empty layer"), rows, note=result.setting)]
