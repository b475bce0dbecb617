"""Experiment: the Golgi stain of trained sparse masks against random masks of the same per-layer counts."""

from sparseflow.experiments.golgi.config import GolgiConfig
from sparseflow.experiments.golgi.report import tables, write_outputs
from sparseflow.experiments.golgi.run import GolgiResult, matched_random, run
from sparseflow.experiments.options import DataBudgetOptions
from sparseflow.experiments.protocol import Data, Experiment


def _check(config: GolgiConfig, options: DataBudgetOptions) -> None:
    """Refuse a run estimated past an hour without --yes."""
    options.check_budget(config.estimate_s(options.dataset), "experiment golgi")


EXPERIMENT = Experiment(
    name="golgi",
    summary="Golgi stain: trained vs random masks",
    doc="Stain a trained RigL / GMP mask of LeNet-300-100 next to a random mask with the same per-layer counts.",
    config=GolgiConfig,
    run=run,
    write_outputs=write_outputs,
    options=DataBudgetOptions,
    tables=tables,
    check=_check,
    full_s=420,
    data=Data(("mnist",), ("--data-dir",), optional=True),
)

__all__ = ["EXPERIMENT", "GolgiConfig", "GolgiResult", "matched_random", "run", "write_outputs"]
