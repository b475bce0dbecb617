"""``sparseflow bench NAME``: one command per benchmark of the registry, generated from its config.

A benchmark writes its files only when ``--out`` is given, and prints its JSON object as it is (no ``out``
key): the same contract as before the commands were generated.
"""

from __future__ import annotations

from sparseflow.bench import BenchOptions
from sparseflow.bench.registry import BENCHMARKS
from sparseflow.cli._app import bench_app
from sparseflow.cli.generate import Call, command
from sparseflow.cli.protocol import check_out, run_protocol
from sparseflow.experiments.protocol import Experiment


def _handler(bench: Experiment):
    def handler(call: Call) -> None:
        out = call.options.out
        if out is not None:
            check_out(out, "the result files")
        call.run.finish(run_protocol(call, bench, out, f"bench {bench.name}"))

    return handler


for _bench in BENCHMARKS:
    command(bench_app, _bench.name, _handler(_bench), config=_bench.config, options=_bench.options or BenchOptions,
            help=_bench.doc or _bench.summary)
