"""``sparseflow experiment NAME``: one command per experiment of the registry, generated from its config."""

from __future__ import annotations

from sparseflow.cli._app import experiment_app
from sparseflow.cli.generate import Call, command, default_out
from sparseflow.errors import SparseflowError
from sparseflow.experiments.protocol import Experiment
from sparseflow.experiments.registry import PROTOCOL
from sparseflow.training.options import RunOptions


def check_out(out, what: str = "report.md, results.json and the figures") -> None:  # noqa: ANN001
    if out.exists() and not out.is_dir():
        raise SparseflowError(f"--out {out} is a file; pass a directory for {what}")


def _handler(exp: Experiment):
    def handler(call: Call) -> None:
        out = default_out(call.options.out, exp.name, call.quick)
        check_out(out)
        notes = exp.check(call.config, call.options) if exp.check is not None else None
        for line in [notes] if isinstance(notes, str) else notes or []:
            call.run.note(line)
        kwargs = {"options": call.options} if exp.options is not None else {}
        with call.run.progress(f"experiment {exp.name}") as tick:
            result = exp.run(call.config, out, tick, **kwargs)
        obj = exp.write_outputs(result, out)
        for t in exp.tables(result) if exp.tables is not None else []:
            call.run.table(t.title, t.columns, t.rows, left=t.left, min_width=t.min_width)
            if t.note:
                call.run.print(t.note)
        call.run.print(f"run directory: {out}")
        call.run.finish({**obj, "out": str(out)})

    return handler


for _exp in PROTOCOL:
    command(experiment_app, _exp.name, _handler(_exp), config=_exp.config, options=_exp.options or RunOptions,
            help=_exp.doc or _exp.summary)
