"""Experiment: capacity of a sparse Hopfield memory vs coding level and size (Amit, Gutfreund & Sompolinsky
1985; Tsodyks & Feigel'man 1988)."""

from sparseflow.experiments.hopfield import report, run  # the modules (run is not shadowed by run.run)
from sparseflow.experiments.hopfield.config import HopConfig
from sparseflow.experiments.hopfield.result import HopResult
from sparseflow.experiments.protocol import Experiment
from sparseflow.training.options import BudgetOptions

EXPERIMENT = Experiment(
    name="hopfield",
    summary="sparse Hopfield memory capacity",
    doc="Capacity P_max/N of a sparse Hopfield memory vs coding level a and size N (covariance rule, threshold).",
    config=HopConfig,
    run=run.run,
    write_outputs=report.write_outputs,
    options=BudgetOptions,
    tables=report.tables,
    check=run.check,
    full_s=2000,
)

__all__ = ["EXPERIMENT", "HopConfig", "HopResult"]
