"""Experiment: layer collapse at initialisation (Tanaka et al. 2020)."""

from sparseflow.experiments.collapse.run import (
    CollapseRow,
    CollapseTable,
    Probe,
    collapse_sparsity,
    collapse_table,
    has_path,
    probe,
)

__all__ = ["CollapseRow", "CollapseTable", "Probe", "collapse_sparsity", "collapse_table", "has_path", "probe"]
