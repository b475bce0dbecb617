"""``sparseflow bench fuzz``: decode many mutated ``.sfz`` files and count what the reader does with them.

See :mod:`sparseflow.storage.fuzz` for the generator, the mutations and the outcome of each case. Pass
criteria: no crash (an exception other than ``StorageError``), no silently different model, no case over the
time limit, no allocation beyond what the file's header shapes justify.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, bench_app
from sparseflow.errors import SparseflowError
from sparseflow.experiments.rundir import write_results

_QUICK_N = 5000


@bench_app.command("fuzz")
def bench_fuzz(
    n: Annotated[int, typer.Option(help="Mutated files to decode.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed: every case is reproducible from (seed, index).")] = 0,
    max_numel: Annotated[int, typer.Option(help="Per-tensor element cap passed to the reader.")] = 2**20,
    time_limit: Annotated[float, typer.Option(help="Seconds one decode may take.")] = 1.0,
    out: Annotated[Optional[Path], typer.Option(help="Write result.json here (a folder).")] = None,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fuzz the .sfz reader with seeded valid files and structure-aware mutations."""
    from sparseflow.storage.fuzz import FAILURES, OUTCOMES, fuzz

    if n < 1 or max_numel < 1 or time_limit <= 0:
        raise SparseflowError(f"--n and --max-numel must be >= 1 and --time-limit > 0, got {n}, {max_numel}, "
                              f"{time_limit}")
    if out is not None and out.exists() and not out.is_dir():
        raise SparseflowError(f"--out {str(out)!r} is a file; pass a folder for result.json")
    total = min(n, _QUICK_N) if quick else n
    bar = Progress(TextColumn("fuzz"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True))
    with bar:
        task = bar.add_task("fuzz", total=total)
        step = max(1, total // 200)  # redraw ~200 times, not once per case
        result = fuzz(total, seed, max_numel=max_numel, time_limit=time_limit,
                      progress=lambda i: bar.update(task, completed=i) if i % step == 0 or i == total else None)

    console = _console(as_json)
    t = Table(title=f"outcomes of {total} mutated files (seed {seed}, max_numel {max_numel}, {result.wall_s:.1f} s)")
    for col in ("outcome", "count", "share"):
        t.add_column(col, justify="left" if col == "outcome" else "right")
    for o in OUTCOMES:
        t.add_row(o if o not in FAILURES else f"{o} (failure)", str(result.counts[o]),
                  f"{result.counts[o] / total:.2%}")
    console.print(t)
    m = Table(title="outcomes by mutation (a case counts once per distinct mutation it applied)")
    m.add_column("mutation")
    for o in OUTCOMES:
        m.add_column(o, justify="right")
    for name, c in result.by_mutation.items():
        m.add_row(name, *(str(c.get(o, 0)) for o in OUTCOMES))
    console.print(m)
    c = Table(title="criteria")
    for col in ("criterion", "value", "target", "result"):
        c.add_column(col)
    for name, v in result.criteria().items():
        c.add_row(name, str(v["value"]), v["target"], "pass" if v["pass"] else "FAIL")
    console.print(c)
    for f in result.failures[:10]:
        console.print(f"case {f.index} {f.outcome} after {'+'.join(f.mutations)}: {f.detail}", highlight=False,
                      markup=False)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_results(out, "bench-fuzz", result.to_json(), "result.json")
    if as_json:
        _emit_json({"command": "bench fuzz", **result.to_json()})
