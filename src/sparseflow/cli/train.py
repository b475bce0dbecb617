"""``sparseflow train``: one sparse run and its dense baseline, generated from TrainJob and TrainOptions.

``--resume RUN_DIR`` continues the run in RUN_DIR with the settings of its ``config.json``; options given
on the command line must agree with them (a difference is refused, naming the setting). ``--out DIR
--resume`` (no value) is the older spelling of ``--resume DIR``; :func:`legacy_resume_args` rewrites it.

Data-parallel over N processes: ``torchrun --nproc-per-node N -m sparseflow train ...``, or
``sparseflow train --nproc N ...``, which starts that torchrun command (without ``--nproc``) and relays its
output and exit status. ``--batch-size`` is per process; see :mod:`sparseflow.training.distributed`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch
import typer
from rich.markup import escape

from sparseflow.cli._app import app
from sparseflow.cli.generate import Call, command
from sparseflow.cli.runner import failed_criteria
from sparseflow.errors import SparseflowError
from sparseflow.io import check_folder_target
from sparseflow.training.processes import end_with_launcher, run_child
from sparseflow.training import distributed
from sparseflow.training.checkpoints import has_checkpoint
from sparseflow.training.job import TrainJob, job_differences, read_job
from sparseflow.training.options import fields
from sparseflow.training.result import JobResult
from sparseflow.training.run import TrainOptions, run_train_job, train_threads


def train(call: Call) -> None:
    """Train a sparse network and its dense baseline; print per-layer density and both accuracies.

    With no options: an MLP on scikit-learn's embedded digits at 90 % sparsity (gradual magnitude pruning).
    Under torchrun (or with --nproc N) it trains data-parallel; --batch-size is then per process.
    """
    o: TrainOptions = call.options
    distributed.resolve_backend(o.backend)  # refuses nccl without CUDA before anything starts
    if o.nproc is not None and distributed.launched():
        raise SparseflowError("--nproc starts torchrun itself; under torchrun, leave --nproc out")
    world = o.nproc if o.nproc is not None else (int(os.environ["WORLD_SIZE"]) if distributed.launched() else 1)
    job = dataclasses.replace(call.config, world_size=world)
    out, resume = o.out, o.resume
    if resume is not None:
        if out is not None and out != resume:
            raise SparseflowError(f"--out {out} and --resume {resume} name different run directories; pass one")
        out, job = resume, _resumed(call, job, resume)
    elif out is None:
        # The default directory is named by the config hash, so an existing one holds this very run:
        # continue it (a finished run is reused as it is, an interrupted one resumes).
        out = resume = Path("runs") / job.run_name()
    check_folder_target(out, "--resume" if o.resume is not None else "--out")
    if resume is None and has_checkpoint(out):
        raise SparseflowError(f"--out {str(out)!r} already holds a checkpoint of a run: pass --resume {out} to "
                              "continue that run (or to show it, when it is finished), or choose a new --out")
    if o.nproc is not None:  # checked here, once; the processes build the same job from the same options
        _launch(call, o.nproc, out)
        return
    finished = resume is not None and (out / "result.json").is_file()  # written last: the run there is finished
    if finished and os.environ.get("RANK", "0") == "0":  # (under torchrun, rank 0 speaks)
        call.run.note(f"{out}: this run was finished before with these settings; shown as it is, nothing trained "
                      "(pass another --out to train again)")
    if o.progress and os.environ.get("RANK", "0") == "0":  # the first line of the run, before the data loads
        call.run.note(f"sparseflow train: {job.model} on {job.dataset}, {job.method}"
                      + (f" at sparsity {job.sparsity:g}" if job.method != "dense" else "")
                      + (", then the dense baseline" if job.baseline and job.method != "dense" else "")
                      + f"; run directory {out}")
    kwargs = dict(data_dir=o.data_dir, download=o.download, progress=o.progress, resume=resume is not None,
                  command="sparseflow " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                  checkpoint_every=o.checkpoint_every, save_pretrained=o.save_pretrained)
    before = torch.get_num_threads()
    torch.set_num_threads(train_threads(job.model, o.threads))
    try:
        if distributed.launched():
            end_with_launcher()  # a rank whose torchrun is gone (killed) has nothing left to do
            with distributed.session(backend=o.backend, timeout_s=o.dist_timeout):
                result = run_train_job(job, out, **kwargs)
            if result is None:  # not rank 0: rank 0 prints
                return
        else:
            result = run_train_job(job, out, **kwargs)
    finally:
        torch.set_num_threads(before)
    _show(call, result, out)


def _resumed(call: Call, job: TrainJob, run_dir: Path) -> TrainJob:
    """The job saved in ``run_dir``; refused when a setting given on this command line (or reduced by --quick)
    differs from it."""
    saved = read_job(run_dir)
    default = TrainJob()
    reduced = {f.name for f, opt, _ in fields(TrainJob)
               if call.quick and opt.has_quick and getattr(job, f.name) != getattr(default, f.name)}
    names = tuple(k for k in saved.to_dict() if k in call.given | reduced)
    differ = job_differences(saved, job, names)
    if differ:
        raise SparseflowError(f"--resume {run_dir}: the run there has other settings (" + "; ".join(differ)
                              + "); leave those options out to continue it, or start a new run with --out")
    return saved


def _show(call: Call, result: JobResult, out: Path) -> None:
    job, run = result.job, call.run
    run.table(f"{job.model} on {job.dataset}: {job.method}, per-layer (measured from the checkpoint)",
              ("parameter", "shape", "weights", "nonzeros", "density", "pruned"),
              [(layer.name, "x".join(map(str, layer.shape)), f"{layer.numel:,}", f"{layer.nonzeros:,}",
                f"{layer.density:.4f}", "yes" if layer.target else "no (dense)") for layer in result.layers],
              left=("parameter", "shape"))
    if result.language_model:
        runs = [(job.method, result.sparsity, result.sparse, result.perplexity)]
        if result.dense is not None:
            runs.append(("dense", 0.0, result.dense, result.dense_perplexity))
        run.table("validation (same training budget; loss per character, perplexity = exp(loss))",
                  ("run", "sparsity", "loss", "perplexity", "next-char accuracy"),
                  [(name, f"{s:.4f}", f"{r.test_loss:.4f}", f"{ppl:.3f}", f"{r.test_acc:.4f}")
                   for name, s, r, ppl in runs])
        run.print(f"sample ({job.method} model):\n{escape(result.sample)}")
    else:
        rows = [(job.method, f"{result.sparsity:.4f}", f"{result.accuracy:.4f}")]
        if result.dense is not None:
            rows.append(("dense", "0.0000", f"{result.dense_accuracy:.4f}"))
        run.table("test accuracy (same training budget)", ("run", "sparsity", "accuracy"), rows)
    for w in result.warnings:
        run.warn(w)
    st = result.storage
    if st:
        ratio = f", masks {st['mask_ratio']:.3f}x their entropy bound" if st["mask_ratio"] else ""
        run.print(f"stored: {out / st['file']}  {st['file_bytes']:,} bytes = "
                  f"{st['file_bytes'] / st['dense_fp32_bytes']:.3f} of dense fp32{ratio}")
    run.print(f"run directory: {out}  (report.md, metrics.jsonl, checkpoint.safetensors, model.sfz)  "
              f"{result.wall_s:.1f} s")
    run.finish(result.to_json())


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


def _launch(call: Call, nproc: int, out: Path) -> None:
    """Run this command under ``torchrun --nproc-per-node nproc`` (without --nproc); relay stdout and status.

    The arguments are rebuilt from the options the user gave (defaults stay defaults), so every process
    parses exactly what this one did.
    """
    ctx, args = call.ctx, ["train"]
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
    proc = run_child(cmd, stdout=subprocess.PIPE, text=True)  # torchrun (and its ranks) end with this process
    sys.stdout.write(proc.stdout)
    sys.stdout.flush()
    if proc.returncode == 1 and failed_criteria(_last_json(proc.stdout)):
        raise typer.Exit(1)  # the run finished and a criterion failed (rank 0 has said which)
    if proc.returncode != 0:
        call.run.err.print(
            f"[bold red]error:[/] distributed training on {nproc} processes failed (torchrun exit status "
            f"{proc.returncode}; the processes' errors are above). The last checkpoint in {out} stays valid: "
            "rerun the same command with --resume to continue", highlight=False)
        raise typer.Exit(proc.returncode)


def _last_json(stdout: str) -> dict | None:
    """The JSON object on the last line of ``stdout`` (--json), if there is one."""
    lines = stdout.strip().splitlines()
    try:
        obj = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


command(app, "train", train, config=TrainJob, options=TrainOptions)
