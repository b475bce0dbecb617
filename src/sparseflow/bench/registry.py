"""Every benchmark of ``sparseflow bench``, in the order the tool lists them (one command is generated per entry)."""

from __future__ import annotations

from sparseflow.bench import connectivity, inference, masks, methods, oneshot, overhead, sparse_init, storage, training
from sparseflow.experiments.protocol import Experiment

BENCHMARKS: tuple[Experiment, ...] = (
    overhead.BENCHMARK,
    methods.BENCHMARK,
    sparse_init.BENCHMARK,
    connectivity.BENCHMARK,
    inference.BENCHMARK,
    masks.BENCHMARK,
    storage.BENCHMARK,
    oneshot.BENCHMARK,
    training.BENCHMARK,
)
NAMES = tuple(b.name for b in BENCHMARKS)
