"""Experiments: one module per principle; each returns a result with a table."""

from sparseflow.experiments.collapse import (
    CollapseRow,
    CollapseTable,
    Probe,
    collapse_sparsity,
    collapse_table,
    has_path,
    probe,
)

__all__ = ["CollapseRow", "CollapseTable", "Probe", "collapse_sparsity", "collapse_table", "has_path", "probe"]
