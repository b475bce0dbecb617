"""``sparseflow experiment normalisation``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, experiment_app
from sparseflow.errors import SparseflowError


@experiment_app.command("normalisation")
def experiment_normalisation(
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Folder holding Fashion-MNIST's four IDX files.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write results.json, report.md, accuracy.png and bn_minus.png here.")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Seeds per cell (default 3; quick 2).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs, the same for every cell (default 4; quick 1).")] = None,
    train_size: Annotated[Optional[int], typer.Option("--train-size", help="Training images, a seeded subset (default 2048; quick 128).")] = None,
    test_size: Annotated[Optional[int], typer.Option("--test-size", help="Test images, a fixed subset (default all 10000; quick 256).")] = None,
    batch_sizes: Annotated[Optional[str], typer.Option("--batch-sizes", help="Batch sizes, e.g. 2,4,8,32,128.")] = None,
    norms: Annotated[Optional[str], typer.Option(help="Norms out of batch,group,layer,none (default all).")] = None,
    variants: Annotated[Optional[str], typer.Option(help="dense,sparse (default both).")] = None,
    sparsity: Annotated[Optional[float], typer.Option(help="Sparsity of the sparse variant (default 0.9).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate at batch 128; scaled by sqrt(batch/128) (default 6e-3).")] = None,
    pool: Annotated[Optional[int], typer.Option(help="Average-pool images pool x pool (default 2: 14 x 14; 1 = full 28 x 28).")] = None,
    width: Annotated[Optional[int], typer.Option(help="ResNet-8 width: channels of the first stage (default 16).")] = None,
    threads: Annotated[int, typer.Option(help="torch.set_num_threads while training (small convs: 1 is fastest).")] = 1,
    yes: Annotated[bool, typer.Option("--yes", help="Run even when the estimate exceeds an hour.")] = False,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """BatchNorm vs GroupNorm / LayerNorm / none at batch sizes 2 to 128, dense and 90 % sparse (Wu & He 2018)."""
    import dataclasses

    from sparseflow.experiments.normalisation.run import NormConfig, check_data, run_normalisation
    from sparseflow.experiments.normalisation.report import LABEL, summary, write_outputs
    from sparseflow.training.rundir import _human, check_budget

    if data_dir is None:
        raise SparseflowError("experiment normalisation trains on Fashion-MNIST: pass --data-dir, the folder "
                              "holding its four IDX files (train-images-idx3-ubyte.gz, ...)")
    check_data(data_dir)
    cfg = NormConfig.default(quick=quick, data_dir=data_dir, seeds=seeds)
    changes: dict[str, object] = {}
    if batch_sizes is not None:
        changes["batch_sizes"] = _split("--batch-sizes", batch_sizes, int)
    if norms is not None:
        changes["norms"] = _split("--norms", norms, str)
    if variants is not None:
        changes["variants"] = _split("--variants", variants, str)
    for name, value in (("epochs", epochs), ("train_size", train_size), ("test_size", test_size),
                        ("sparsity", sparsity), ("lr_ref", lr), ("pool", pool), ("width", width)):
        if value is not None:
            changes[name] = value
    cfg = dataclasses.replace(cfg, **changes)
    cfg.check()
    check_budget(cfg.estimate_s(), yes, "experiment normalisation")
    if isinstance(threads, bool) or threads < 1:
        raise SparseflowError(f"--threads must be an integer >= 1, got {threads!r}")
    import torch

    err = Console(stderr=True)
    err.print(f"about {_human(cfg.estimate_s())} for {cfg.cells()} training runs", highlight=False)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # restored after: the command can run in-process (tests, experiment all)
    try:
        with bar:
            task = bar.add_task("loading Fashion-MNIST", total=cfg.cells())
            result = run_normalisation(cfg, lambda c: bar.update(task, advance=1, description=(
                f"{c.variant} {c.norm} batch {c.batch} seed {c.seed}: {100 * c.accuracy:.1f} %")))
    finally:
        torch.set_num_threads(before)
    if out is not None:
        flags = [("--data-dir", data_dir), ("--seeds", seeds), ("--epochs", epochs), ("--train-size", train_size),
                 ("--test-size", test_size), ("--batch-sizes", batch_sizes), ("--norms", norms),
                 ("--variants", variants), ("--sparsity", sparsity), ("--lr", lr), ("--pool", pool), ("--width", width),
                 ("--out", out)]
        command = " ".join(["sparseflow experiment normalisation", *(f"{k} {v}" for k, v in flags if v is not None),
                            *(["--quick"] if quick else [])])
        write_outputs(result, out, command)

    console = _console(as_json, min_width=100)
    t = Table(title=f"test accuracy (%), mean ± 95 % t-interval over {len(cfg.seeds)} seed(s); BatchNorm in eval mode")
    for col in ("variant", "norm", *(f"batch {b}" for b in cfg.batch_sizes), "range (pp)"):
        t.add_column(col, justify="right")
    rows = {(r["variant"], r["norm"], r["batch"]): r for r in summary(result)}
    for v in cfg.variants:
        for n in cfg.norms:
            cells = [rows[(v, n, b)] for b in cfg.batch_sizes]
            means = [100 * r["mean"] for r in cells]
            t.add_row(v, LABEL[n], *(f"{m:.1f} ± {100 * r['half']:.1f}" for m, r in zip(means, cells)),
                      f"{max(means) - min(means):.1f}")
    console.print(t)
    t = Table(title=f"normalisation criteria ({'quick' if quick else 'full'} run, {result.wall_s:.0f} s)")
    for col in ("criterion", "value (pp)", "target", "result"):
        t.add_column(col)
    criteria = result.criteria()
    for name, c in criteria.items():
        t.add_row(name, f"{c['value']:+.2f}", c["target"], "pass" if c["pass"] else "FAIL")
    console.print(t)
    if out is not None:
        console.print(f"wrote {out}/report.md, results.json, accuracy.png and bn_minus.png", highlight=False)
    if as_json:
        obj = {k: v for k, v in result.to_json().items() if k != "cells"}
        if out is not None:
            obj["out"] = str(out)
        _emit_json(obj)


def _split(flag: str, text: str, kind: type) -> tuple:
    try:
        values = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise SparseflowError(f"{flag} takes comma-separated integers such as 2,8,128, got {text!r}") from None
    if not values:
        raise SparseflowError(f"{flag} needs at least one value, got {text!r}")
    return values
