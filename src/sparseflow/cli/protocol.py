"""The one handler body of every generated experiment and benchmark command: check, run, write, show.

:func:`run_protocol` runs an :class:`~sparseflow.experiments.protocol.Experiment` (after its ``check``) under
the command's progress bar, writes its outputs when there is a directory to write to, prints its tables, and
returns the JSON object the command prints; the callers add what differs (the default run directory, the
``out`` key).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from sparseflow.cli.generate import Call
from sparseflow.errors import PathError
from sparseflow.experiments.protocol import Experiment
from sparseflow.io import check_folder_target, removed_on_failure


def check_out(out: Path, what: str = "report.md, results.json and the figures") -> None:
    """Refuse an ``--out`` folder for ``what`` that cannot be created or written, before the run starts."""
    try:
        check_folder_target(out, "--out")
    except PathError as e:
        raise PathError(f"{e} (it is the folder for {what})") from None


def run_protocol(call: Call, exp: Experiment, out: Path | None, label: str) -> dict[str, Any]:
    """Check and run ``exp`` with the call's config (and options), write into ``out`` unless it is None, show
    its tables; returns the JSON object."""
    notes = exp.check(call.config, call.options) if exp.check is not None else None
    for line in [notes] if isinstance(notes, str) else notes or []:
        call.run.note(line)
    kwargs = {"options": call.options} if exp.options is not None else {}
    with removed_on_failure(out) if out is not None else nullcontext():  # a failed run leaves no empty folder
        with call.run.progress(label) as tick:
            result = exp.run(call.config, out, tick, **kwargs)
        obj = exp.write_outputs(result, out) if out is not None else result.to_json()
    for t in exp.tables(result) if exp.tables is not None else []:
        (call.run.wide(t.min_width) if t.min_width else call.run.out).print(t.rich())
        if t.note:
            call.run.print(t.note)
    return obj
