"""Experiment: sparsity as a regulariser vs training-set size on MNIST-1D (Greydanus & Kobak 2024)."""

from sparseflow.training.options import BudgetOptions
from sparseflow.experiments.protocol import Experiment
from sparseflow.experiments.regularisation.config import RegConfig
from sparseflow.experiments.regularisation.report import tables, write_outputs
from sparseflow.experiments.regularisation.run import RegResult, run
from sparseflow.training.rundir import _human


def _check(config: RegConfig, options: BudgetOptions) -> str:
    """Refuse a grid estimated past an hour without --yes; say how long it will take."""
    options.check_budget(config.estimate_s(), "experiment regularisation")
    return f"about {_human(config.estimate_s())} for {config.runs()} training runs"


EXPERIMENT = Experiment(
    name="regularisation",
    summary="sparsity as a regulariser vs data size",
    doc="Sparsity as a regulariser: MNIST-1D test accuracy vs sparsity for training sets of 500 to 16000.",
    config=RegConfig,
    run=run,
    write_outputs=write_outputs,
    options=BudgetOptions,
    tables=tables,
    check=_check,
    full_s=1500,
)

__all__ = ["EXPERIMENT", "RegConfig", "RegResult", "run", "write_outputs"]
