"""Fuzz the ``.sfz`` reader: decode many mutated files and count what the reader does with them.

Usage (from the repository root)::

    python benchmarks/fuzz/run_fuzz.py --n 100000 --seed 0 [--out DIR] [--json] [--quick]

See ``sfz_fuzz.py`` for the generator, the mutations and the outcome of each case. Pass criteria: no crash
(an exception other than ``StorageError``), no silently different model, no case over the time limit, no
allocation beyond what the file's header shapes justify. Exit status 1 when a criterion fails, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from sparseflow.io import json_safe  # noqa: E402
from sparseflow.training.rundir import write_results  # noqa: E402

QUICK_N = 5000


def main(argv: list[str] | None = None) -> int:
    from sfz_fuzz import FAILURES, OUTCOMES, fuzz

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="mutated files to decode")
    p.add_argument("--seed", type=int, default=0, help="every case is reproducible from (seed, index)")
    p.add_argument("--max-numel", type=int, default=2**20, help="per-tensor element cap passed to the reader")
    p.add_argument("--time-limit", type=float, default=1.0, help="seconds one decode may take")
    p.add_argument("--out", type=Path, default=None, help="write result.json into this folder")
    p.add_argument("--quick", action="store_true", help=f"at most {QUICK_N} cases")
    p.add_argument("--json", dest="as_json", action="store_true", help="print one JSON object as the last line")
    a = p.parse_args(argv)
    if a.n < 1 or a.max_numel < 1 or a.time_limit <= 0:
        p.error(f"--n and --max-numel must be >= 1 and --time-limit > 0, got {a.n}, {a.max_numel}, {a.time_limit}")
    if a.out is not None and a.out.exists() and not a.out.is_dir():
        p.error(f"--out {str(a.out)!r} is a file; pass a folder for result.json")
    total = min(a.n, QUICK_N) if a.quick else a.n
    err = Console(stderr=True)
    bar = Progress(TextColumn("fuzz"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err)
    with bar:
        task = bar.add_task("fuzz", total=total)
        step = max(1, total // 200)  # redraw ~200 times, not once per case
        result = fuzz(total, a.seed, max_numel=a.max_numel, time_limit=a.time_limit,
                      progress=lambda i: bar.update(task, completed=i) if i % step == 0 or i == total else None)

    console = Console(stderr=a.as_json, soft_wrap=False)
    t = Table(title=f"outcomes of {total} mutated files (seed {a.seed}, max_numel {a.max_numel}, {result.wall_s:.1f} s)")
    for col in ("outcome", "count", "share"):
        t.add_column(col, justify="left" if col == "outcome" else "right")
    for o in OUTCOMES:
        t.add_row(o if o not in FAILURES else f"{o} (failure)", str(result.counts[o]), f"{result.counts[o] / total:.2%}")
    console.print(t)
    m = Table(title="outcomes by mutation (a case counts once per distinct mutation it applied)")
    m.add_column("mutation")
    for o in OUTCOMES:
        m.add_column(o, justify="right")
    for name, c in result.by_mutation.items():
        m.add_row(name, *(str(c.get(o, 0)) for o in OUTCOMES))
    console.print(m)
    criteria = result.criteria()
    c = Table(title="criteria")
    for col in ("criterion", "value", "target", "result"):
        c.add_column(col)
    for name, v in criteria.items():
        c.add_row(name, str(v["value"]), v["target"], "pass" if v["pass"] else "FAIL")
    console.print(c)
    for f in result.failures[:10]:
        console.print(f"case {f.index} {f.outcome} after {'+'.join(f.mutations)}: {f.detail}", highlight=False, markup=False)
    if a.out is not None:
        write_results(a.out, "bench-fuzz", result.to_json(), "result.json")
    if a.as_json:
        sys.stdout.write(json.dumps(json_safe({"command": "fuzz", **result.to_json()}), separators=(",", ":")) + "\n")
    return 0 if all(v["pass"] for v in criteria.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
