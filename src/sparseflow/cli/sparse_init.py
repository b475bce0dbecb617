"""``sparseflow experiment init``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, experiment_app


@experiment_app.command("init")
def experiment_init(
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with the MNIST IDX files (default: 8x8 digits).")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Seeds (default 3, quick 1).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per run (default 3; quick 2 on MNIST, 12 on digits).")] = None,
    width: Annotated[int, typer.Option(help="Units per hidden layer.")] = 256,
    depth: Annotated[int, typer.Option(help="Weight layers (depth - 1 hidden layers + classifier).")] = 20,
    train_size: Annotated[Optional[int], typer.Option(help="Training examples (default all, quick 8192).")] = None,
    out: Annotated[Path, typer.Option(help="Write results.json, report.md and PNGs here.")] = Path("runs/init"),
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Dense He vs sparsity-aware init, 20-layer ReLU MLP at 90/95/98 % sparsity (Evci et al. 2022)."""
    from sparseflow.experiments.sparse_init.run import InitConfig, criteria, run_experiment
    from sparseflow.experiments.sparse_init.report import LABEL, write_outputs

    base = InitConfig.quick() if quick else InitConfig()
    changes: dict[str, object] = {"width": width, "depth": depth, "data_dir": None if data_dir is None else str(data_dir)}
    if quick and data_dir is None and epochs is None:
        # digits has 1,437 training examples: 2 epochs are 24 steps, too few to train any 20-layer net;
        # 12 epochs (144 steps) still finish in about 20 s.
        epochs = 12
    for name, value in (("seeds", seeds), ("epochs", epochs), ("train_size", train_size)):
        if value is not None:
            changes[name] = value
    cfg = InitConfig(**{**base.__dict__, **changes})
    cfg.check()
    err = Console(stderr=True)
    if data_dir is None:
        err.print("no --data-dir: using the embedded 8x8 digits instead of MNIST", highlight=False)
    with err.status("training") as status:
        result = run_experiment(cfg, progress=lambda msg: status.update(msg))
    crit = criteria(result)
    obj = write_outputs(result, crit, out)
    console = _console(as_json)
    t = Table(title=f"test accuracy, {result.dataset}, chance {result.chance:.3f}")
    for col in ("sparsity", "init", "accuracy"):
        t.add_column(col, justify="right")
    for row in obj["summary"]:
        t.add_row(f"{row['sparsity']:g}", LABEL[row["init"]], f"{row['mean_acc']:.4f} ± {row['std_acc']:.4f}")
    console.print(t)
    for name, c in crit.items():
        console.print(f"{'pass' if c['pass'] else 'FAIL'}: {name}", highlight=False)
    console.print(f"wrote {out}/results.json, report.md, {', '.join(obj['figures'])}", highlight=False)
    if as_json:
        _emit_json({k: v for k, v in obj.items() if k != "runs"} | {"out": str(out)})
