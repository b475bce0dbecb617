"""Experiment: the mean-field critical line of sparse ReLU MLPs (Poole et al. 2016; Evci et al. 2022)."""

from sparseflow.experiments.meanfield.config import MeanfieldConfig
from sparseflow.experiments.meanfield.report import write_outputs
from sparseflow.experiments.meanfield.run import MeanfieldResult, run
from sparseflow.experiments.protocol import Experiment

EXPERIMENT = Experiment(
    name="meanfield",
    summary="mean-field variance through depth",
    doc="Mean-field critical line of sparse ReLU MLPs: ln q_l slope = ln s under He init, flat q_l under "
        "sparsity-aware init (Poole et al. 2016; Evci et al. 2022).",
    config=MeanfieldConfig,
    run=run,
    write_outputs=write_outputs,
    full_s=300,
)

__all__ = ["EXPERIMENT", "MeanfieldConfig", "MeanfieldResult", "run", "write_outputs"]
