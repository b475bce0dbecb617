"""``sparseflow lottery``: iterative magnitude pruning with rewinding, its controls and the report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, _parse_hidden, app
from sparseflow.errors import SparseflowError


def _parse_seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise SparseflowError(f"--seeds takes comma-separated integers such as 0,1,2, got {text!r}") from None


@app.command()
def lottery(
    dataset: Annotated[str, typer.Option(help="mnist1d | digits | mnist | fashion-mnist")] = "mnist1d",
    model: Annotated[str, typer.Option(help="mlp | lenet300-100 | conv2 | conv4 | conv6 | resnet")] = "mlp",
    hidden: Annotated[str, typer.Option(help="MLP widths (model mlp only).")] = "500,500",
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with the IDX .gz files (mnist, fashion-mnist).")] = None,
    subset: Annotated[Optional[int], typer.Option(help="Use this many training examples.")] = None,
    test_subset: Annotated[Optional[int], typer.Option(help="Evaluate on the first N test examples.")] = None,
    val_size: Annotated[int, typer.Option(help="Training examples held out for early stopping (0: use the test set).")] = 0,
    iterations: Annotated[int, typer.Option(help="Training steps per level.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Minibatch size.")] = 100,
    optimizer: Annotated[str, typer.Option(help="adam | sgd | adamw")] = "adam",
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 3e-3,
    lr_schedule: Annotated[str, typer.Option(help="constant | cosine")] = "constant",
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 0.0,
    eval_every: Annotated[int, typer.Option(help="Evaluate (and checkpoint) every N steps.")] = 100,
    prune_fraction: Annotated[float, typer.Option(help="Fraction of the remaining weights pruned per level, in (0, 1).")] = 0.2,
    output_fraction: Annotated[Optional[float], typer.Option(help="Output layer's fraction (default: half of it).")] = None,
    scope: Annotated[str, typer.Option(help="layerwise | global (hidden layers ranked together)")] = "layerwise",
    target_density: Annotated[Optional[float], typer.Option(help="Stop at this fraction of weights left, e.g. 0.036 (default 0.02 unless --levels).")] = None,
    levels: Annotated[Optional[int], typer.Option(help="At most this many pruning levels.")] = None,
    rewind: Annotated[str, typer.Option(help="weights (Frankle & Carbin) | lr (learning-rate rewinding)")] = "weights",
    rewind_step: Annotated[int, typer.Option(help="Rewind to this step k (0: the initialisation).")] = 0,
    reinit: Annotated[bool, typer.Option(help="Control: the same mask from a fresh random initialisation.")] = True,
    random_mask: Annotated[bool, typer.Option(help="Control: a random mask with the same per-layer densities.")] = True,
    seeds: Annotated[str, typer.Option(help="Replicate seeds, comma-separated.")] = "0",
    criteria_at: Annotated[Optional[float], typer.Option(help="Density at which the criteria are checked (default: 0.05 on MNIST-1D, the reference's 95 %% sparsity; else the last level).")] = None,
    recompute_level: Annotated[Optional[int], typer.Option(help="Delete level K and later ones and run them again.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/lottery-<dataset>-<model>-<hash>).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (on stderr).")] = True,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Lottery tickets (Frankle & Carbin 2019): prune, rewind, retrain; tickets vs random reinit vs random mask.

    Rerunning the same command resumes: finished levels are skipped, an interrupted one continues from its
    last checkpoint. With no options: a 500-500 MLP on MNIST-1D down to 2 % of its weights.
    """
    from sparseflow.lottery import LotteryJob, criteria, run_lottery, write_report

    if quick:  # MNIST-1D, a 100-100 MLP, 5 levels of 300 steps: well under a minute on 2 cores
        hidden, iterations, eval_every, target_density, levels = "100,100", min(iterations, 300), 50, None, 5
        prune_fraction = max(prune_fraction, 0.4)
    if target_density is None and levels is None:
        target_density = 0.02  # LotteryJob's default stopping rule
    job = LotteryJob(
        dataset=dataset, model=model, hidden=_parse_hidden(hidden), subset=subset, test_subset=test_subset,
        val_size=val_size, iterations=iterations, batch_size=batch_size, optimizer=optimizer, lr=lr,
        lr_schedule=lr_schedule, weight_decay=weight_decay, eval_every=eval_every, prune_fraction=prune_fraction,
        output_fraction=output_fraction, scope=scope, target_density=target_density, levels=levels, rewind=rewind,
        rewind_step=rewind_step, reinit=reinit, random_mask=random_mask, seeds=_parse_seeds(seeds),
    )
    out = out if out is not None else Path("runs") / job.run_name()
    command = "sparseflow " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=_console(True), disable=not progress)
    with bar:
        task = bar.add_task("lottery", total=None)

        def tick(label: str, steps: int) -> None:
            bar.update(task, description=label, advance=steps)

        result = run_lottery(job, out, data_dir=data_dir, recompute_level=recompute_level, command=command,
                             progress=tick)
    if criteria_at is None and job.dataset == "mnist1d" and not quick:
        criteria_at = 0.05  # the MNIST-1D reference compares ticket and random mask at 95 % sparsity
    crit = criteria(result, criteria_at)
    obj = write_report(result, crit, command=command)

    console = _console(as_json)
    table = Table(title=f"lottery: {job.model} on {job.dataset}, test accuracy % (mean over seeds {list(job.seeds)})")
    for col in ("level", "weights %", "ticket", "reinit", "random", "ticket early stop"):
        table.add_column(col, justify="right")
    for row in obj["levels"]:
        arms = row["arms"]
        acc = [f"{100 * arms[a]['final_acc']['mean']:.2f}" if a in arms else "-" for a in ("ticket", "reinit", "random")]
        table.add_row(str(row["level"]), f"{100 * row['density']:.2f}", *acc,
                      f"{arms['ticket']['early_stop_step']['mean']:.0f}")
    console.print(table)
    for name, c in crit.items():
        console.print(f"{'pass' if c['pass'] else 'FAIL'}: {name} = {c['value']:+.4f} (target {c['target']})",
                      highlight=False)
    console.print(f"run directory: {out}  (report.md, accuracy.png, early_stop.png, results.json, seed*/masks.sfm)  "
                  f"{result.wall_s:.1f} s", highlight=False)
    if as_json:
        _emit_json(obj)
