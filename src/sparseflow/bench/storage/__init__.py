"""``sparseflow bench storage``: bytes of sparse layers in every format against the entropy bound."""

from sparseflow.bench.storage.config import StorageConfig
from sparseflow.bench.storage.report import tables, write_outputs
from sparseflow.bench.storage.result import StorageBench
from sparseflow.bench.storage.run import run
from sparseflow.experiments.protocol import Experiment

BENCHMARK = Experiment(
    name="storage",
    summary="mask storage at the entropy bound",
    doc="Bytes of a 4096x4096 fp32 layer at 50-99 % sparsity in every format, mask coding against "
        "log2 C(N, nnz), codec throughput, and ResNet-50 against RigL's size table (1-bit-mask accounting).",
    config=StorageConfig, run=run, write_outputs=write_outputs, tables=tables,
)

__all__ = ["BENCHMARK", "StorageBench", "StorageConfig", "run", "tables", "write_outputs"]
