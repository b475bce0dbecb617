"""The main job: train a sparse network and, on the same budget, its dense baseline.

:func:`run_train_job` runs a :class:`~sparseflow.training.job.TrainJob` into a run directory::

    OUT/config.json            the TrainJob, the derived method schedule and the command
    OUT/metrics.jsonl          one line per epoch of the sparse run
    OUT/checkpoint.safetensors model, optimizer, method (mask, step), RNG and data position of the sparse
                               run; no pickle (OUT/checkpoint.prev.safetensors: the one before; see
                               sparseflow.training.checkpoints)
    OUT/dense/...              the same for the dense baseline
    OUT/model.sfz              the sparse model alone: entropy-coded masks and kept values (sparseflow.save)
    OUT/report.md, curves.png  tables and learning curves (for a language model also validation perplexity
                               and a text sample)
    OUT/result.json            the figures the CLI prints with --json

A language model (``gpt``, ``hf-gpt2`` on ``tinyshakespeare``) reports its validation loss (mean cross-entropy
per character), perplexity (its exp) and next-character accuracy, and a 200-character sample of the trained
sparse model (seeded by the job's seed, temperature 0.8, from a newline). ``save_pretrained`` also writes the
trained sparse model as a Hugging Face folder (:func:`sparseflow.training.hf.save_pretrained`).

The reported sparsity and per-layer counts are measured from the saved checkpoint, not taken from the
target.

``resume=True`` continues an interrupted job wherever it stopped: in the sparse run (from its newest
checkpoint), between the two runs, or in the dense baseline; a finished job is reported again without
training. The TrainJob must be the one in ``OUT/config.json`` (:func:`~sparseflow.training.job.read_job`
reads it back); a different one is refused, naming each differing setting.

:class:`TrainOptions` holds the settings of a run that do not change its result (paths, checkpoints,
processes, display); ``sparseflow train`` is generated from it and the TrainJob.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseflow.analysis.connectivity import Connectivity, connectivity
from sparseflow.analysis.signal import SignalReport, signal
from sparseflow.errors import SparseflowError
from sparseflow.init import sparse_init_
from sparseflow.io import removed_on_failure
from sparseflow.methods import Method
from sparseflow.targets import Targets
from sparseflow.training import distributed
from sparseflow.training.build import build_method, first_batch
from sparseflow.training.checkpoints import load_checkpoint
from sparseflow.training.data import Dataset, load_dataset, loaders
from sparseflow.training.gpt import generate
from sparseflow.training.job import TrainJob, job_differences, read_job
from sparseflow.training.hparams import TrainConfig
from sparseflow.training.loop import fit
from sparseflow.training.state import Callback, TrainResult, TrainState
from sparseflow.training.models import LANGUAGE_MODELS, build_model
from sparseflow.training.options import RunOptions, check, known, option
from sparseflow.training.result import JobResult, layer_stats
from sparseflow.training.rundir import write_results
from sparseflow.training.text import TextDataset

SAMPLE_CHARS = 200  # length of a language model's text sample in the report


@dataclass(frozen=True)
class TrainOptions(RunOptions):
    """How ``sparseflow train`` runs a job: where, resumed or not, on how many processes, what it shows."""

    out: Path | None = option(None, "Run directory (default runs/<name>-<config hash>).")
    resume: Path | None = option(
        None, "Continue the run in RUN_DIR (killed, or finished: then only reported) with the settings of its "
        "config.json; options given must agree. `--out DIR --resume` also works.", metavar="RUN_DIR")
    checkpoint_every: int | None = option(None, "Also checkpoint every K steps (always at every epoch's end).",
                                          min=1, metavar="K")
    data_dir: Path | None = option(None, "Folder with the IDX .gz files (mnist, fashion-mnist) or input.txt "
                                   "(tinyshakespeare).")
    download: bool = option(False, "Fetch missing dataset files (checksums verified).",
                            flag="--download/--no-download")
    progress: bool = option(True, "Show progress bars (on stderr).", flag="--progress/--no-progress")
    nproc: int | None = option(None, "Train data-parallel on N processes (starts torchrun).", min=1)
    threads: int | None = option(
        None, "Torch threads while training (default: 1 for the small models mlp, lenet300-100 and gpt, whose "
        "small matrices only make threads wait for each other; PyTorch's default otherwise).", min=1)
    dist_timeout: float = option(300.0, "Seconds a collective may wait for another process before the run stops.")
    backend: str = option("auto", "Distributed backend: auto (nccl with CUDA, else gloo) | gloo | nccl")
    save_pretrained: Path | None = option(None, "Also write the trained model as a Hugging Face folder "
                                          "(save_pretrained; models gpt and hf-gpt2).", metavar="DIR")

    def __post_init__(self) -> None:
        check(self)
        distributed.check_timeout(self.dist_timeout)  # (their messages name the flags)
        known(self.backend, distributed.BACKENDS, "backend")


# layers of at most a few hundred units: a second thread only waits for the first (the char GPT, width 128:
# one training step at batch 16 took 0.13 s on one thread and 1.44 s on two on a loaded 2-core machine)
FC_MODELS = ("mlp", "lenet300-100", "gpt")


def train_threads(model: str, threads: int | None) -> int:
    """The torch threads a train job uses: ``threads``, else 1 for a small model (the MLPs and the char GPT; measured on the
    default job on 2 cores: 2.6 s of training with one thread, 23-28 s with two on a busy machine, the same
    accuracy), else PyTorch's current setting."""
    if threads is not None:
        return threads
    return 1 if model in FC_MODELS else torch.get_num_threads()


class SignalProbe(Callback):
    """Measures signal propagation on a fixed batch when training starts (after the method's ``prepare``):
    the sparse network as it is initialised, which is where vanishing or exploding signal stalls training.

    When the method starts sparse, ``dense()`` (the same network built again, dense) gives the reference: the
    gain of the same initialisation without the mask, so a warning can tell the mask's effect from the init's.
    """

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor], dense: Callable[[], nn.Module] | None = None) -> None:
        self.batch, self.dense = batch, dense
        self.report: SignalReport | None = None
        self.reference: SignalReport | None = None
        self.starts_dense = False

    def on_train_start(self, state: TrainState) -> None:
        if state.step != 0:  # a resumed run has moved on from its initialisation
            return
        dev = next((p.device for p in state.model.parameters()), torch.device("cpu"))
        x, y = self.batch[0].to(dev), self.batch[1].to(dev)
        self.report = signal(state.model, x, y)
        mask = getattr(state.method, "mask", None)
        self.starts_dense = mask is None or all(bool(m.all()) for m in mask.values())
        if not self.starts_dense and self.dense is not None:
            self.reference = signal(self.dense().to(dev), x, y)


class HeInit(Callback):
    """``--sparse-init he``: once the first mask is in place (the nonzero weights), redraw every kept weight
    from N(0, 2/kept fan-in) (:func:`sparseflow.init.sparse_init_`), seeded; at the start of training only."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def apply(self, model: nn.Module) -> None:
        sparse_init_(model, generator=torch.Generator().manual_seed(self.seed))

    def on_train_start(self, state: TrainState) -> None:
        if state.step == 0:
            self.apply(state.model)


def _store(model: nn.Module, method: Method | None, out: Path) -> dict[str, Any]:
    """Write OUT/model.sfz (fp32, the method's masks) and return its sizes."""
    from sparseflow.storage import inspect, save

    save(out / "model.sfz", model, mask=method.mask if method is not None else None)
    r = inspect(out / "model.sfz")
    bound = r.mask_bound_bytes
    return {"file": "model.sfz", "file_bytes": r.file_bytes, "dense_fp32_bytes": r.dense_fp32_bytes,
            "mask_bytes": r.mask_bytes, "mask_bound_bytes": bound, "values_bytes": r.values_bytes,
            "mask_ratio": r.mask_bytes / bound if bound else None}


def _check_start(job: TrainJob, out: Path, resume: bool) -> None:
    """Refuse a resume with another job, or a job for another number of processes than are running."""
    if resume and (out / "config.json").is_file():
        differ = job_differences(read_job(out), job)
        if differ:
            raise SparseflowError(f"run directory {str(out)!r} holds a run with another configuration ("
                                  + "; ".join(differ) + "); resume with its settings, or choose a new directory")
    if job.world_size != distributed.world_size():
        raise SparseflowError(
            f"the job asks for world_size={job.world_size} processes, but {distributed.world_size()} are running; "
            "launch with torchrun --nproc-per-node N (or sparseflow train --nproc N) and pass the same N"
        )


def _dataset(job: TrainJob, data_dir: Path | None, download: bool) -> Dataset:
    ds = load_dataset(job.dataset, data_dir, download=download, subset=job.subset, seed=job.seed)
    if job.test_subset is not None:  # the first examples of the fixed test split: the same for every seed
        ds = dataclasses.replace(ds, x_test=ds.x_test[: job.test_subset], y_test=ds.y_test[: job.test_subset])
    return ds


def _sample(model: nn.Module, ds: Dataset, seed: int) -> str | None:
    """200 characters the trained language model writes after a newline (None for other datasets)."""
    if not isinstance(ds, TextDataset):
        return None
    ids = generate(model, ds.encode("\n").view(1, 1), SAMPLE_CHARS, context=ds.context, seed=seed)
    return ds.decode(ids[0, 1:])


def _mask_sparsity(saved_method: dict[str, Any] | None) -> float:
    """Sparsity of the mask a checkpoint's method state holds (0 without a method)."""
    if saved_method is None:
        return 0.0
    saved = saved_method["mask"]
    return 1.0 - sum(int(torch.count_nonzero(m)) for m in saved.values()) / sum(m.numel() for m in saved.values())


def run_train_job(job: TrainJob, out: Path, *, data_dir: Path | None = None, download: bool = False,
                  progress: bool = True, command: str | None = None, resume: bool = False,
                  checkpoint_every: int | None = None, save_pretrained: Path | None = None) -> JobResult | None:
    """Train ``job``'s sparse model and (if ``job.baseline``) its dense baseline on the same budget.

    ``checkpoint_every``: also checkpoint every that many steps (always at every epoch's end).
    ``save_pretrained``: also write the trained sparse model there as a Hugging Face folder (language models).
    Under torch.distributed (``job.world_size`` processes) every rank trains; rank 0 alone measures, stores
    and reports, and the other ranks return None. A run that fails before its first checkpoint leaves no
    folder behind (nothing in it could be resumed).
    """
    with removed_on_failure(out, enabled=distributed.is_main()):
        return _train_job(job, out, data_dir=data_dir, download=download, progress=progress, command=command,
                          resume=resume, checkpoint_every=checkpoint_every, save_pretrained=save_pretrained)


def _train_job(job: TrainJob, out: Path, *, data_dir: Path | None, download: bool, progress: bool,
               command: str | None, resume: bool, checkpoint_every: int | None,
               save_pretrained: Path | None) -> JobResult | None:
    from sparseflow.training.report import write_train_report  # matplotlib is imported only when reporting

    t0 = time.perf_counter()
    _check_start(job, out, resume)
    if save_pretrained is not None:  # refused before training, not after it
        if job.model not in LANGUAGE_MODELS:
            raise SparseflowError(f"--save-pretrained writes a Hugging Face language model; model {job.model!r} "
                                  f"is not one ({', '.join(LANGUAGE_MODELS)} are)")
        from sparseflow.training.hf import require_transformers

        require_transformers()
    device = distributed.device()
    ds = _dataset(job, data_dir, download)
    cfg = TrainConfig(**job.train_config_kwargs(), checkpoint_every=checkpoint_every)
    # The run folder is made by fit, once the model and the method are built: a job they refuse leaves nothing.

    def new_model() -> nn.Module:  # the same weights every time (seeded)
        model = build_model(job.model, ds.input_shape, ds.num_classes, norm=job.norm, hidden=job.hidden, seed=job.seed)
        if job.sparse_init == "he":
            HeInit(job.seed).apply(model)
        return model

    # Not for a language model: along its residual stream the per-layer gains do not multiply end to end.
    probe = None if isinstance(ds, TextDataset) else SignalProbe(first_batch(ds, job), dense=new_model)
    he = [HeInit(job.seed)] if job.sparse_init == "he" else []

    def one_run(method_name: str, run_dir: Path, label: str) -> tuple[TrainResult, Method | None, nn.Module, dict]:
        sub = dataclasses.replace(job, method=method_name)
        model = build_model(job.model, ds.input_shape, ds.num_classes, norm=job.norm, hidden=job.hidden, seed=job.seed)
        train_loader, test_loader = loaders(ds, job.batch_size, seed=job.seed)
        if distributed.active():  # each rank takes its part of every global batch of world_size * batch_size
            train_loader = distributed.shard(train_loader)
        method = build_method(sub, cfg.epochs * len(train_loader), batch=first_batch(ds, sub),
                              input_shape=ds.input_shape)
        schedule = {} if method is None else {
            f.name: getattr(method, f.name) for f in dataclasses.fields(method)
            if f.init and isinstance(getattr(method, f.name), (int, float, str, bool, type(None)))
        } | {"name": type(method).__name__, "distribution": job.distribution, "pattern": job.pattern}
        config = {"job": sub.to_dict(), "schedule": schedule, "command": command, "sparseflow_run": job.run_name()}
        result = fit(model, train_loader, test_loader, cfg, method=method, run_dir=run_dir, resume=resume,
                     progress=progress, config=config, device=device, label=label,
                     callbacks=he + ([probe] if probe is not None and method_name == job.method else []))
        return result, method, model.to("cpu"), schedule

    sparse_label = "dense run" if job.method == "dense" else f"sparse run ({job.method}, sparsity {job.sparsity:g})"
    sparse, method, model, schedule = one_run(job.method, out, sparse_label)
    dense = (one_run("dense", out / "dense", "dense baseline (same budget)")[0]
             if job.baseline and job.method != "dense" else None)
    if not distributed.is_main():
        return None  # fit has synchronised the ranks at every checkpoint; rank 0 measures and reports

    ckpt = load_checkpoint(out, quiet=True).state  # fit has just written it (and said so if it fell back)
    targets = set(method.mask) if method is not None else set()
    layers = layer_stats(ckpt["model"], list(Targets().select(model)), targets)  # every weight layer
    nnz = sum(layer.nonzeros for layer in layers if layer.target or method is None)
    numel = sum(layer.numel for layer in layers if layer.target or method is None)
    try:
        conn: Connectivity | None = connectivity(model)
    except SparseflowError:  # a model the tracer refuses: the report says so instead
        conn = None
    if save_pretrained is not None:
        from sparseflow.training.hf import save_pretrained as write_pretrained

        write_pretrained(model, save_pretrained)
    result = JobResult(
        connectivity=conn, signal=probe.report if probe else None,
        signal_reference=probe.reference if probe else None, starts_dense=probe.starts_dense if probe else False,
        storage=_store(model, method, out),
        sample=_sample(model, ds, job.seed), pretrained=None if save_pretrained is None else str(save_pretrained),
        job=job, run_dir=out, accuracy=sparse.test_acc,
        dense_accuracy=dense.test_acc if dense is not None else (sparse.test_acc if job.method == "dense" else None),
        sparsity=1.0 - nnz / numel, layers=layers, sparse=sparse, dense=dense,
        mask_sparsity=_mask_sparsity(ckpt["method"]), wall_s=time.perf_counter() - t0, schedule=schedule,
    )
    write_train_report(result, out, command=command)
    write_results(out, "train", result.to_json(), "result.json")
    return result
