"""The ``sparseflow`` command-line tool.

Every subcommand takes ``--json`` (one JSON object, the last line of stdout; human output then goes to
stderr) and ``--quick`` (a reduced run that finishes within a minute on a 2-core machine). User mistakes
print one line starting with ``error:`` and exit with status 2.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from sparseflow.errors import SparseflowError
from sparseflow.io import json_safe

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sparse neural networks: create, analyse, store and run them.",
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: ratios against a dense baseline in the same run.")
app.add_typer(bench_app, name="bench")
experiment_app = typer.Typer(no_args_is_help=True, help="Experiments: one principle each, with a report.")
app.add_typer(experiment_app, name="experiment")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]
QuickOpt = Annotated[bool, typer.Option("--quick", help="A reduced run that finishes within 60 s.")]


def _console(as_json: bool) -> Console:
    # With --json, stdout carries only the JSON object; tables go to stderr.
    return Console(stderr=as_json, soft_wrap=False)


def _emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(json_safe(obj), separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _parse_hidden(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise SparseflowError(f"--hidden takes comma-separated widths such as 300,100, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise SparseflowError(f"--hidden needs positive widths such as 300,100, got {text!r}")
    return widths


@app.command()
def train(
    method: Annotated[str, typer.Option(help="dense | magnitude | gmp | random | snip | grasp | synflow | set | rigl")] = "gmp",
    sparsity: Annotated[float, typer.Option(help="Fraction of target weights that are zero, in [0, 1).")] = 0.9,
    distribution: Annotated[Optional[str], typer.Option(help="uniform | er | erk | global (default: the method's paper)")] = None,
    pattern: Annotated[str, typer.Option(help="unstructured | N:M (e.g. 2:4) | RxC blocks (e.g. 4x4)")] = "unstructured",
    model: Annotated[str, typer.Option(help="mlp | lenet300-100 | conv2 | conv4 | conv6 | resnet")] = "mlp",
    hidden: Annotated[Optional[str], typer.Option(help="MLP widths, e.g. 300,100 (model mlp only).")] = None,
    norm: Annotated[str, typer.Option(help="batch | layer | group | none")] = "none",
    dataset: Annotated[str, typer.Option(help="digits | mnist1d | mnist | fashion-mnist")] = "digits",
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with the IDX .gz files (mnist, fashion-mnist).")] = None,
    download: Annotated[bool, typer.Option(help="Fetch missing dataset files (checksums verified).")] = False,
    subset: Annotated[Optional[int], typer.Option(help="Use this many training examples.")] = None,
    test_subset: Annotated[Optional[int], typer.Option(help="Evaluate on the first N test examples.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs (each run).")] = 30,
    batch_size: Annotated[int, typer.Option(help="Minibatch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine decay).")] = 0.05,
    optimizer: Annotated[str, typer.Option(help="sgd | adam | adamw")] = "sgd",
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 5e-4,
    seed: Annotated[int, typer.Option(help="Seed for weights, mask and data order.")] = 0,
    baseline: Annotated[bool, typer.Option(help="Also train the dense baseline on the same budget.")] = True,
    prune_first: Annotated[bool, typer.Option(help="Prune the first (input) layer; --no-prune-first keeps it dense.")] = True,
    prune_last: Annotated[bool, typer.Option(help="Prune the last (output) layer; --no-prune-last keeps it dense.")] = True,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/<name>-<config hash>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars (on stderr).")] = True,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a sparse network and its dense baseline; print per-layer density and both accuracies.

    With no options: an MLP on scikit-learn's embedded digits at 90 % sparsity (gradual magnitude pruning).
    """
    from sparseflow.job import TrainJob, run_train_job

    if quick:  # sized to finish within 60 s on 2 cores for every model and dataset
        convolutional = model.startswith("conv") or model == "resnet"
        epochs = min(epochs, 10)
        if dataset in ("mnist", "fashion-mnist", "mnist1d"):
            epochs = min(epochs, 3 if convolutional else 5)
        if dataset in ("mnist", "fashion-mnist") and subset is None:
            subset = 1000 if convolutional else 4000
            test_subset = 1000 if convolutional else 2000
    job = TrainJob(
        method=method, sparsity=sparsity, distribution=distribution, pattern=pattern, model=model,
        hidden=_parse_hidden(hidden), norm=norm, dataset=dataset, subset=subset, test_subset=test_subset, epochs=epochs,
        batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay, seed=seed,
        baseline=baseline, prune_first=prune_first, prune_last=prune_last,
    )
    if out is None:
        # The default directory is named by the config hash, so an existing one holds this very run:
        # continue it (a finished run is reused as it is, an interrupted one resumes).
        out = Path("runs") / job.run_name()
        resume = True
    command = "sparseflow " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = run_train_job(job, out, data_dir=data_dir, download=download, progress=progress,
                           command=command, resume=resume)

    console = _console(as_json)
    table = Table(title=f"{job.model} on {job.dataset}: {job.method}, per-layer (measured from the checkpoint)")
    for col in ("parameter", "shape", "weights", "nonzeros", "density", "pruned"):
        table.add_column(col, justify="left" if col in ("parameter", "shape") else "right")
    for layer in result.layers:
        table.add_row(layer.name, "x".join(map(str, layer.shape)), f"{layer.numel:,}", f"{layer.nonzeros:,}",
                      f"{layer.density:.4f}", "yes" if layer.target else "no (dense)")
    console.print(table)
    acc = Table(title="test accuracy (same training budget)")
    for col in ("run", "sparsity", "accuracy"):
        acc.add_column(col, justify="left" if col == "run" else "right")
    acc.add_row(job.method, f"{result.sparsity:.4f}", f"{result.accuracy:.4f}")
    if result.dense is not None:
        acc.add_row("dense", "0.0000", f"{result.dense_accuracy:.4f}")
    console.print(acc)
    console.print(f"run directory: {out}  (report.md, metrics.jsonl, checkpoint.safetensors)  {result.wall_s:.1f} s")
    if as_json:
        _emit_json(result.to_json())


@bench_app.command("overhead")
def bench_overhead(
    repeats: Annotated[int, typer.Option(help="Interleaved repeats; medians are reported.")] = 10,
    threads: Annotated[Optional[int], typer.Option(help="torch.set_num_threads (default: all cores).")] = None,
    sparsity: Annotated[float, typer.Option(help="Sparsity of the masks.")] = 0.9,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Training-step time of masked training (static mask, GMP) vs dense, same model, same run."""
    import os

    import torch

    from sparseflow.bench import CASES, QUICK_CASES, overhead
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

    from sparseflow.bench_dynamic import rigl_overhead
    from sparseflow.bench_methods import VARIANTS, MethodsConfig, criteria, find_row, methods_benchmark
    from sparseflow.distributions import check_sparsity
    from sparseflow.io import atomic_write_text

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
        from sparseflow.data import load_dataset
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
        atomic_write_text(out / "result.json", json.dumps(json_safe(result), indent=2) + "\n")
    if as_json:
        _emit_json({"command": "bench methods", **result})


@experiment_app.command("collapse")
def experiment_collapse(
    seeds: Annotated[Optional[int], typer.Option(help="Seeds (default 5, quick 2).")] = None,
    depth: Annotated[int, typer.Option(help="Hidden layers of the MLP.")] = 10,
    width: Annotated[int, typer.Option(help="Units per hidden layer.")] = 100,
    out: Annotated[Optional[Path], typer.Option(help="Write report.md and result.json here.")] = None,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Layer collapse at initialisation (Tanaka et al. 2020 Fig. 1): magnitude, random, SNIP, GraSP, SynFlow."""
    from sparseflow.experiments.collapse import collapse_table
    from sparseflow.io import atomic_write_text

    if depth < 1 or width < 1 or (seeds is not None and seeds < 1):
        raise SparseflowError(f"--depth, --width and --seeds must be >= 1, got {depth}, {width}, {seeds}")
    with Console(stderr=True).status("pruning at many sparsities"):
        table = collapse_table(quick=quick, seeds=None if seeds is None else range(seeds), depth=depth, width=width)
    console = _console(as_json)
    t = Table(title="sparsity at which the mask cuts every input-output path (median over seeds)")
    for col in ("method", "collapse sparsity", "largest sparsity with no empty layer"):
        t.add_column(col, justify="left" if col == "method" else "right")
    summary = table.summary()
    for name, (c, e) in summary.items():
        t.add_row(name, "none on grid" if c is None else f"{c:.5f}", "none" if e is None else f"{e:.5f}")
    console.print(t)
    console.print(table.setting, highlight=False)
    result = {
        "command": "experiment collapse", "setting": table.setting, "grid": list(table.grid),
        "summary": {k: {"collapse": c, "largest_nonempty": e} for k, (c, e) in summary.items()},
        "rows": [r.__dict__ for r in table.rows],
    }
    if "synflow" in summary and "magnitude" in summary:
        syn, mag = summary["synflow"][0], summary["magnitude"][0]
        later = mag is not None and (syn is None or syn > mag)
        result["criteria"] = {"SynFlow collapses later than magnitude": {
            "value": {"SynFlow": syn, "magnitude": mag}, "target": "SynFlow > magnitude (Tanaka et al. 2020)",
            "pass": later}}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "report.md", "# Layer collapse at initialisation\n\n" + table.markdown())
        atomic_write_text(out / "result.json", json.dumps(json_safe(result), indent=2) + "\n")
    if as_json:
        _emit_json(result)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app, turning user mistakes into one 'error:' line and exit status 2."""
    try:
        app(args=argv)
    except SparseflowError as e:
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {e}", markup=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
