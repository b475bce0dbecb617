"""Experiment: BatchNorm vs GroupNorm / LayerNorm / none under small batches, dense and sparse (Wu & He 2018)."""

from sparseflow.experiments.normalisation import report, run  # the modules (run is not shadowed by run.run)
from sparseflow.experiments.normalisation.config import NormConfig, NormOptions
from sparseflow.experiments.normalisation.result import NormResult
from sparseflow.experiments.protocol import Data, Experiment

EXPERIMENT = Experiment(
    name="normalisation",
    summary="BatchNorm vs Group/LayerNorm with small batches",
    doc="BatchNorm vs GroupNorm / LayerNorm / none at batch sizes 2 to 128, dense and 90 % sparse (Wu & He 2018).",
    config=NormConfig,
    run=run.run,
    write_outputs=report.write_outputs,
    options=NormOptions,
    tables=report.tables,
    check=run.check,
    full_s=2300,
    data=Data(("fashion-mnist",), ("--data-dir",)),
)

__all__ = ["EXPERIMENT", "NormConfig", "NormOptions", "NormResult"]
