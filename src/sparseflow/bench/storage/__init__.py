"""``sparseflow bench storage``: bytes of sparse layers in every format against the entropy bound."""

from sparseflow.bench.storage.config import StorageConfig
from sparseflow.bench.storage.report import tables, write_outputs
from sparseflow.bench.storage.result import StorageBench
from sparseflow.bench.storage.run import run
from sparseflow.experiments.protocol import Experiment

BENCHMARK = Experiment(
    "storage", "mask storage at the entropy bound", StorageConfig, run, write_outputs,
    tables=tables,
    doc=("Bytes of a 4096x4096 fp32 layer at 50-99 % sparsity in every format, mask coding against log2 C(N, "
         "nnz), codec throughput, and ResNet-50 against RigL's size table (1-bit-mask accounting)."))

__all__ = ["BENCHMARK", "StorageBench", "StorageConfig", "run", "tables", "write_outputs"]
