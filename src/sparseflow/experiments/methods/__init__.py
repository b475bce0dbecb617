"""Experiment: dense-to-sparse vs sparse-from-scratch vs dynamic sparse training on one budget, against the
ordering of Evci et al. 2020."""

from sparseflow.experiments.methods import report, run  # the modules (run is not shadowed by run.run)
from sparseflow.experiments.methods.config import MethodsConfig, MethodsOptions
from sparseflow.experiments.methods.result import ComparisonResult
from sparseflow.experiments.protocol import Data, Experiment

EXPERIMENT = Experiment(
    name="methods",
    summary="dense-to-sparse vs from-scratch vs dynamic",
    doc="Dense-to-sparse vs sparse-from-scratch vs dynamic at equal budget: orderings vs the RigL paper's.",
    config=MethodsConfig,
    run=run.run,
    write_outputs=report.write_outputs,
    options=MethodsOptions,
    tables=report.tables,
    check=run.check,
    full_s=2460,
    data=Data(("mnist", "fashion-mnist"), ("--mnist-dir", "--fashion-dir"), any=True),
)

__all__ = ["EXPERIMENT", "ComparisonResult", "MethodsConfig", "MethodsOptions"]
