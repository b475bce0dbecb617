"""Experiment: the percolation threshold of sparse layered networks (Harris 1963; Erdős & Rényi 1960)."""

from sparseflow.experiments.options import DataOptions
from sparseflow.experiments.percolation.config import PercolationConfig
from sparseflow.experiments.percolation.report import write_outputs
from sparseflow.experiments.percolation.run import PercolationResult, run
from sparseflow.experiments.protocol import Experiment

EXPERIMENT = Experiment(
    name="percolation",
    summary="percolation threshold p_c = 1 - 1/b",
    doc="Percolation threshold of sparse layered networks: p_c = 1 - 1/b, ρ = 1 - exp(-cρ), and accuracy vs fan-in.",
    config=PercolationConfig,
    run=run,
    write_outputs=write_outputs,
    options=DataOptions,
    full_s=900,
)

__all__ = ["EXPERIMENT", "PercolationConfig", "PercolationResult", "run", "write_outputs"]
