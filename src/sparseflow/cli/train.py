"""``sparseflow train``: one sparse run and its dense baseline.

``--resume RUN_DIR`` continues the run in RUN_DIR with the settings of its ``config.json``; options given
on the command line must agree with them (a difference is refused, naming the setting). ``--out DIR
--resume`` (no value) is the older spelling of ``--resume DIR``; :func:`legacy_resume_args` rewrites it.

Data-parallel over N processes: ``torchrun --nproc-per-node N -m sparseflow train ...``, or
``sparseflow train --nproc N ...``, which starts that torchrun command (without ``--nproc``) and relays its
output and exit status. ``--batch-size`` is per process; see :mod:`sparseflow.training.distributed`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, _parse_hidden, app
from sparseflow.errors import SparseflowError


@app.command()
def train(
    ctx: typer.Context,
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
    resume: Annotated[Optional[Path], typer.Option(
        metavar="RUN_DIR", help="Continue the run in RUN_DIR (killed, or finished: then only reported) with the "
        "settings of its config.json; options given must agree. `--out DIR --resume` also works.")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(
        metavar="K", help="Also checkpoint every K steps (always at every epoch's end).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars (on stderr).")] = True,
    nproc: Annotated[Optional[int], typer.Option(help="Train data-parallel on N processes (starts torchrun).")] = None,
    dist_timeout: Annotated[float, typer.Option(help="Seconds a collective may wait for another process before the run stops.")] = 300.0,
    backend: Annotated[str, typer.Option(help="Distributed backend: auto (nccl with CUDA, else gloo) | gloo | nccl")] = "auto",
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a sparse network and its dense baseline; print per-layer density and both accuracies.

    With no options: an MLP on scikit-learn's embedded digits at 90 % sparsity (gradual magnitude pruning).
    Under torchrun (or with --nproc N) it trains data-parallel; --batch-size is then per process.
    """
    from sparseflow.training import distributed
    from sparseflow.training.job import TrainJob, job_differences, read_job, run_train_job

    if checkpoint_every is not None and checkpoint_every < 1:
        raise SparseflowError(f"--checkpoint-every must be a number of steps >= 1, got {checkpoint_every}")
    # The options given on the command line (the source's name, not the enum: typer vendors its own click).
    given = {p for p in ctx.params if getattr(ctx.get_parameter_source(p), "name", "") in ("COMMANDLINE", "ENVIRONMENT")}
    before_quick = {"epochs": epochs, "subset": subset, "test_subset": test_subset}
    distributed.check_timeout(dist_timeout)
    distributed.resolve_backend(backend)  # refuses nccl without CUDA before anything starts
    if nproc is not None:
        if isinstance(nproc, bool) or nproc < 1:
            raise SparseflowError(f"--nproc must be an integer >= 1, got {nproc!r}")
        if distributed.launched():
            raise SparseflowError("--nproc starts torchrun itself; under torchrun, leave --nproc out")
    world = nproc if nproc is not None else (int(os.environ["WORLD_SIZE"]) if distributed.launched() else 1)

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
        baseline=baseline, prune_first=prune_first, prune_last=prune_last, world_size=world,
    )
    if nproc is not None:  # validated above; the processes build the same job
        _launch(ctx, nproc, resume if resume is not None else out if out is not None else Path("runs") / job.run_name())
        return
    if resume is not None:
        if out is not None and out != resume:
            raise SparseflowError(f"--out {out} and --resume {resume} name different run directories; pass one")
        out, saved = resume, read_job(resume)
        # Only the settings given on this command line are compared (with --quick: those it reduces too).
        given |= {k for k, v in before_quick.items() if getattr(job, k) != v}
        names = tuple(k for k in saved.to_dict() if k in given)
        differ = job_differences(saved, job, names)
        if differ:
            raise SparseflowError(f"--resume {resume}: the run there has other settings (" + "; ".join(differ)
                                  + "); leave those options out to continue it, or start a new run with --out")
        job = saved
    elif out is None:
        # The default directory is named by the config hash, so an existing one holds this very run:
        # continue it (a finished run is reused as it is, an interrupted one resumes).
        out = Path("runs") / job.run_name()
        resume = out
    command = "sparseflow " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if distributed.launched():
        with distributed.session(backend=backend, timeout_s=dist_timeout):
            result = run_train_job(job, out, data_dir=data_dir, download=download, progress=progress,
                                   command=command, resume=resume is not None, checkpoint_every=checkpoint_every)
        if result is None:  # not rank 0: rank 0 prints
            return
    else:
        result = run_train_job(job, out, data_dir=data_dir, download=download, progress=progress,
                               command=command, resume=resume is not None, checkpoint_every=checkpoint_every)

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
    for w in result.warnings:
        console.print(f"[bold yellow]warning:[/] {w}", highlight=False)
    st = result.storage
    if st:
        ratio = f", masks {st['mask_ratio']:.3f}x their entropy bound" if st["mask_ratio"] else ""
        console.print(f"stored: {out / st['file']}  {st['file_bytes']:,} bytes = {st['file_bytes'] / st['dense_fp32_bytes']:.3f}"
                      f" of dense fp32{ratio}", highlight=False)
    console.print(f"run directory: {out}  (report.md, metrics.jsonl, checkpoint.safetensors, model.sfz)  "
                  f"{result.wall_s:.1f} s")
    if as_json:
        _emit_json(result.to_json())


def legacy_resume_args(args: list[str]) -> list[str]:
    """``train ... --out DIR --resume`` (a bare flag, as before --resume took a path) -> ``--resume DIR``."""
    if not args or args[0] != "train" or "--resume" not in args:
        return args
    i = args.index("--resume")
    if i + 1 < len(args) and not args[i + 1].startswith("-"):
        return args  # --resume RUN_DIR
    out = next((a.split("=", 1)[1] for a in args if a.startswith("--out=")), None)
    if out is None and "--out" in args and args.index("--out") + 1 < len(args):
        out = args[args.index("--out") + 1]
    if out is None:
        raise SparseflowError("--resume takes the run directory to continue: sparseflow train --resume RUN_DIR")
    return [*args[: i + 1], out, *args[i + 1 :]]


def _launch(ctx: typer.Context, nproc: int, out: Path) -> None:
    """Run this command under ``torchrun --nproc-per-node nproc`` (without --nproc); relay stdout and status.

    The arguments are rebuilt from the options the user gave (defaults stay defaults), so every process
    parses exactly what this one did.
    """
    args = ["train"]
    for param in ctx.command.params:
        name = param.name
        if name is None or name == "nproc" or not param.opts[0].startswith("--"):
            continue
        source = ctx.get_parameter_source(name)
        if source is None or source.name == "DEFAULT":  # only what the user gave
            continue
        value = ctx.params[name]
        if getattr(param, "is_flag", False):
            if value:
                args.append(param.opts[0])
            elif param.secondary_opts:
                args.append(param.secondary_opts[0])
        elif value is not None:
            args += [param.opts[0], str(value)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "sparseflow", *args]
    # stderr (progress, errors of every rank) passes straight through; stdout (rank 0's tables or JSON) is
    # relayed through this process's sys.stdout.
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout)
    sys.stdout.flush()
    if proc.returncode != 0:
        _console(True).print(
            f"[bold red]error:[/] distributed training on {nproc} processes failed (torchrun exit status "
            f"{proc.returncode}; the processes' errors are above). The last checkpoint in {out} stays valid: "
            "rerun the same command with --resume to continue", highlight=False)
        raise typer.Exit(proc.returncode)
