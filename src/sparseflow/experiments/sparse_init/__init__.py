"""Experiment: dense He vs sparsity-aware initialisation of a deep sparse ReLU MLP (Evci et al. 2022)."""

from sparseflow.experiments.options import DataOptions
from sparseflow.experiments.protocol import Experiment
from sparseflow.experiments.sparse_init.config import InitConfig
from sparseflow.experiments.sparse_init.report import tables, write_outputs
from sparseflow.experiments.sparse_init.run import InitResult, criteria, run


def _check(config: InitConfig, options: DataOptions) -> str | None:
    return "no --data-dir: using the embedded 8x8 digits instead of MNIST" if options.data_dir is None else None


EXPERIMENT = Experiment(
    name="init",
    summary="dense vs sparsity-aware initialisation",
    doc="Dense He vs sparsity-aware init, 20-layer ReLU MLP at 90/95/98 % sparsity (Evci et al. 2022).",
    config=InitConfig,
    run=run,
    write_outputs=write_outputs,
    options=DataOptions,
    tables=tables,
    check=_check,
    full_s=600,
)

__all__ = ["EXPERIMENT", "InitConfig", "InitResult", "criteria", "run", "write_outputs"]
