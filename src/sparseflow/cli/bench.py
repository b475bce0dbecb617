"""``sparseflow bench ...``: timings and accuracy tables against a dense baseline in the same run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, bench_app
from sparseflow.errors import SparseflowError
from sparseflow.training.rundir import write_results


@bench_app.command("overhead")
def bench_overhead(
    repeats: Annotated[int, typer.Option(help="Interleaved repeats; medians are reported.")] = 10,
    threads: Annotated[Optional[int], typer.Option(help="torch.set_num_threads (default: all cores).")] = None,
    sparsity: Annotated[float, typer.Option(help="Sparsity of the masks.")] = 0.9,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Training-step time of masked training (static mask, GMP) vs dense, same model, same run."""
    import torch

    from sparseflow.bench.overhead import CASES, QUICK_CASES, overhead
    from sparseflow.distributions import check_sparsity

    check_sparsity(sparsity)
    if repeats < 1:
        raise SparseflowError(f"--repeats must be >= 1, got {repeats}")
    n_threads = threads if threads is not None else (os.cpu_count() or 1)
    if n_threads < 1:
        raise SparseflowError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(n_threads)
    console = _console(as_json)
    err = Console(stderr=True)
    with err.status("timing") as status:
        rows = overhead(QUICK_CASES if quick else CASES, repeats=min(repeats, 5) if quick else repeats,
                        sparsity=sparsity, progress=lambda msg: status.update(msg))
    table = Table(title=f"training-step time vs dense (sparsity {sparsity:g}, {n_threads} threads, torch {torch.__version__})")
    for col in ("case", "variant", "step ms", "update ms", "ratio"):
        table.add_column(col, justify="left" if col in ("case", "variant") else "right")
    for r in rows:
        table.add_row(r.case, r.variant, f"{r.step_ms:.2f}", "-" if r.update_ms is None else f"{r.update_ms:.1f}",
                      f"{r.ratio:.3f}")
    console.print(table)
    console.print("gmp ratio is amortised over its update period: (step * 99 + update) / 100")
    criteria = {
        f"{r.variant} overhead, {r.case}": {"value": round(r.ratio, 4), "target": "<= 1.05x dense", "pass": r.ratio <= 1.05}
        for r in rows if r.variant != "dense"
    }
    if as_json:
        _emit_json({
            "command": "bench overhead", "threads": n_threads, "sparsity": sparsity, "torch": torch.__version__,
            "rows": [r.__dict__ for r in rows], "criteria": criteria,
        })


@bench_app.command("methods")
def bench_methods(
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with the MNIST IDX .gz files.")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per (method, sparsity); mean ± std over them.")] = 3,
    epochs: Annotated[int, typer.Option(help="Training epochs, the same budget for every method.")] = 10,
    sparsities: Annotated[str, typer.Option(help="Comma-separated sparsities.")] = "0.8,0.9,0.95,0.98",
    workers: Annotated[int, typer.Option(help="Parallel training processes (threads are split among them).")] = 2,
    out: Annotated[Optional[Path], typer.Option(help="Write result.json and report.md here.")] = None,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Every method on LeNet-300-100 / MNIST at equal budget, mean ± std over seeds, plus RigL's overhead."""
    import torch

    from sparseflow.bench.dynamic import rigl_overhead
    from sparseflow.bench.methods import VARIANTS, MethodsConfig, criteria, find_row, methods_benchmark
    from sparseflow.distributions import check_sparsity

    try:
        values = [float(x) for x in sparsities.split(",")]
    except ValueError:
        raise SparseflowError(f"--sparsities takes comma-separated numbers in [0, 1), got {sparsities!r}") from None
    levels = tuple(check_sparsity(v) for v in values)
    if seeds < 1 or epochs < 1 or workers < 1:
        raise SparseflowError(f"--seeds, --epochs and --workers must be >= 1, got {seeds}, {epochs}, {workers}")
    if quick:
        cfg = MethodsConfig(dataset="mnist1d", sparsities=(0.9, 0.98), seeds=tuple(range(min(seeds, 2))), epochs=min(epochs, 10),
                            batch_size=128, lr=0.1)
    else:
        if data_dir is None:
            raise SparseflowError("bench methods trains on MNIST: pass --data-dir, the folder holding its four IDX .gz files "
                                  "(or --quick for MNIST-1D, generated locally)")
        from sparseflow.training.data import load_dataset
        load_dataset("mnist", data_dir)  # verify the files before starting workers
        cfg = MethodsConfig(sparsities=levels, seeds=tuple(range(seeds)), epochs=epochs)
    err = Console(stderr=True)
    total = len(cfg.seeds) * (1 + len(cfg.sparsities) * len(VARIANTS))
    done = [0]

    def tick(spec: Any, acc: float) -> None:
        done[0] += 1
        err.print(f"[{done[0]}/{total}] {spec.label} s={spec.sparsity:g} seed={spec.seed}: {acc:.4f}", highlight=False)

    result = methods_benchmark(cfg, data_dir=data_dir, workers=workers, on_result=tick)
    with err.status("timing RigL's training step against dense"):
        torch.set_num_threads(os.cpu_count() or 1)
        ov = rigl_overhead(repeats=5 if quick else 10)
    rigl_row = next(r for r in ov if r.variant == "rigl")
    result["overhead"] = [r.__dict__ for r in ov]
    result["criteria"] = criteria(result, rigl_row.ratio)

    console = _console(as_json)
    table = Table(title=f"test accuracy (%), {cfg.model} on {cfg.dataset}, {cfg.epochs} epochs, mean ± std over {len(cfg.seeds)} seeds")
    table.add_column("method")
    for s in cfg.sparsities:
        table.add_column(f"s={s:g}", justify="right")
    labels = ["dense"] + [label for label, _, _ in VARIANTS]
    for label in labels:
        cells = []
        for s in cfg.sparsities:
            row = find_row(result, label, 0.0 if label == "dense" else s)
            cells.append("-" if row is None else f"{100 * row['mean']:.2f} ± {100 * row['std']:.2f}")
        table.add_row(label, *cells)
    console.print(table)
    crit = Table(title="expectations from the literature")
    for col in ("criterion", "value", "target", "pass"):
        crit.add_column(col)
    for name, c in result["criteria"].items():
        crit.add_row(name, str(c["value"]), c["target"], "yes" if c["pass"] else "NO")
    console.print(crit)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_results(out, "bench-methods", result, "result.json")
    if as_json:
        _emit_json({"command": "bench methods", **result})
