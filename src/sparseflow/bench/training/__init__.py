"""``sparseflow bench training``: a training step of single Linear layers, dense, masked, sparse and SparseLab."""

from sparseflow.bench import DataBenchOptions
from sparseflow.bench.training.measure import METHODS, SHOWN, Cell, layer_cell, state_bytes
from sparseflow.bench.training.report import tables, write_outputs
from sparseflow.bench.training.run import TrainingConfig, TrainingResult, criteria, parse_shape, run
from sparseflow.experiments.protocol import Experiment

BENCHMARK = Experiment(
    "training", "a training step of single Linear layers: dense, masked, sparse, SparseLab, auto", TrainingConfig,
    run, write_outputs, options=DataBenchOptions, tables=tables,
    doc="Forward + backward + SGD step of single Linear layers per shape, density, batch and threads: dense "
        "nn.Linear, masked dense (FixedMask), SparseTrainLinear, SparseLab's SparseLinear and the path "
        "autotune.choose picks, side by side; optimizer state memory against dense.")

__all__ = ["BENCHMARK", "METHODS", "SHOWN", "Cell", "TrainingConfig", "TrainingResult", "criteria", "layer_cell",
           "parse_shape", "run", "state_bytes", "tables", "write_outputs"]
