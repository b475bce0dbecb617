"""Experiment: layer collapse at initialisation (Tanaka et al. 2020)."""

from sparseflow.experiments.collapse.config import CollapseConfig
from sparseflow.experiments.collapse.report import tables, write_outputs
from sparseflow.experiments.collapse.run import (
    CollapseRow,
    CollapseTable,
    Probe,
    collapse_sparsity,
    has_path,
    probe,
    run,
)
from sparseflow.experiments.protocol import Experiment

EXPERIMENT = Experiment(
    name="collapse",
    summary="layer collapse at initialisation",
    doc="Layer collapse at initialisation (Tanaka et al. 2020 Fig. 1): magnitude, random, SNIP, GraSP, SynFlow.",
    config=CollapseConfig,
    run=run,
    write_outputs=write_outputs,
    tables=tables,
    full_s=120,
)

__all__ = ["EXPERIMENT", "CollapseConfig", "CollapseRow", "CollapseTable", "Probe", "collapse_sparsity", "has_path",
           "probe", "run", "write_outputs"]
