"""Grids of training runs (method x sparsity x seed x dataset) on local processes or a Ray cluster."""

from sparseflow.sweep.executors import LocalExecutor, RayExecutor
from sparseflow.sweep.grid import Sweep, SweepResult, run_sweep

__all__ = ["LocalExecutor", "RayExecutor", "Sweep", "SweepResult", "run_sweep"]
