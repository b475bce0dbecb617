"""``sparseflow experiment NAME``: one command per experiment of the registry, generated from its config."""

from __future__ import annotations

from sparseflow.cli._app import experiment_app
from sparseflow.cli.generate import Call, command, default_out
from sparseflow.cli.protocol import check_out, run_protocol
from sparseflow.experiments.protocol import Experiment
from sparseflow.experiments.registry import PROTOCOL
from sparseflow.training.options import RunOptions


def _handler(exp: Experiment):
    def handler(call: Call) -> None:
        out = default_out(call.options.out, exp.name, call.quick)
        check_out(out)
        obj = run_protocol(call, exp, out, f"experiment {exp.name}")
        call.run.print(f"run directory: {out}")
        call.run.finish({**obj, "out": str(out)})

    return handler


for _exp in PROTOCOL:
    command(experiment_app, _exp.name, _handler(_exp), config=_exp.config, options=_exp.options or RunOptions,
            help=_exp.doc or _exp.summary)
