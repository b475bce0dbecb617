"""Experiment: the mean-field critical line of sparse ReLU MLPs (Poole et al. 2016; Evci et al. 2022)."""

from sparseflow.experiments.meanfield.config import MeanfieldConfig
from sparseflow.experiments.meanfield.report import write_outputs
from sparseflow.experiments.meanfield.run import MeanfieldResult, run
from sparseflow.experiments.protocol import Experiment

EXPERIMENT = Experiment(
    "meanfield", "mean-field variance through depth", MeanfieldConfig, run, write_outputs,
    full_s=300,
    doc=("Mean-field critical line of sparse ReLU MLPs: ln q_l slope = ln s under He init, flat q_l under "
         "sparsity-aware init (Poole et al. 2016; Evci et al. 2022)."))

__all__ = ["EXPERIMENT", "MeanfieldConfig", "MeanfieldResult", "run", "write_outputs"]
