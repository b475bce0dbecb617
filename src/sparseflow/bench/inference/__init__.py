"""``sparseflow bench inference``: sparse kernels against dense and the stock sparse libraries."""

from sparseflow.bench.inference.measure import METHODS, Cell, erk_mlp, layer_cell, mlp_rows
from sparseflow.bench.inference.report import tables, write_outputs
from sparseflow.bench.inference.run import InferenceConfig, InferenceResult, criteria, run
from sparseflow.experiments.protocol import Experiment

BENCHMARK = Experiment(
    "inference", "sparse kernels against dense and the stock sparse libraries", InferenceConfig, run, write_outputs,
    tables=tables,
    doc="Sparse x dense products per layer shape, density, batch and threads, side by side; MLP end to end.")

__all__ = ["BENCHMARK", "METHODS", "Cell", "InferenceConfig", "InferenceResult", "criteria", "erk_mlp",
           "layer_cell", "mlp_rows", "run", "tables", "write_outputs"]
