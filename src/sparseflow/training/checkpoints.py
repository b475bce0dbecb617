"""A run directory's checkpoints: the last two kept, checksummed, written atomically; the data position.

Files (both sparseflow state files, :func:`sparseflow.io.save_state` with ``checksum=True``)::

    RUN/checkpoint.safetensors        the newest checkpoint
    RUN/checkpoint.prev.safetensors   the one before it

:func:`save_checkpoint` first makes the current newest file the previous one (a hard link, or a copy
where the filesystem has none, then an atomic rename), then writes the new one atomically (temporary
file, fsync, rename). So at every instant ``checkpoint.safetensors`` is a complete file, old or new,
and a crash (``kill -9``, power loss) never leaves a half-written file as the latest one. A write that
fails (a full disk, ``ENOSPC``) leaves both old files as they were and raises :class:`CheckpointError`
saying what failed, where, and what to do.

:func:`load_checkpoint` returns the newest valid checkpoint: its SHA-256 is verified; if the newest is
missing or damaged, the previous one is used and a message naming the damaged file is returned (and
printed on stderr); with neither valid, a :class:`CheckpointError` names both. Everything that reads a
run's checkpoint (the train job, analysis, storage, stain) goes through it.

The data position (for resuming in the middle of an epoch): :func:`rng_snapshot` captures the torch
RNG and the train loader's generators when an epoch starts; :func:`epoch_batches` restores that
snapshot, recreates the epoch's iterator (calling the sampler's ``set_epoch`` when it has one, as a
``DistributedSampler`` does) and skips the batches already trained on. The order is re-drawn exactly
as it was, so the skipped batches are the very ones consumed before the crash.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from sparseflow.errors import CheckpointError, SparseflowError
from sparseflow.io import load_state, save_state

CHECKPOINT_FILE = "checkpoint.safetensors"
PREVIOUS_FILE = "checkpoint.prev.safetensors"
DAMAGED_SUFFIX = ".damaged"

__all__ = [
    "CHECKPOINT_FILE",
    "PREVIOUS_FILE",
    "Checkpoint",
    "has_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "rng_snapshot",
    "set_rng",
    "epoch_batches",
]


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: its contents, header meta, the file it came from, and why not the newest."""

    state: Any
    meta: dict[str, Any]
    path: Path
    fallback: str | None = None  # None: the newest file; else the message saying why the previous one


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint file (newest or previous; valid or not)."""
    run_dir = Path(run_dir)
    return (run_dir / CHECKPOINT_FILE).is_file() or (run_dir / PREVIOUS_FILE).is_file()


def save_checkpoint(run_dir: str | Path, state: Any, *, meta: dict[str, Any] | None = None) -> Path:
    """Write ``state`` as ``run_dir``'s newest checkpoint, keeping the current newest as the previous one."""
    run_dir = Path(run_dir)
    latest, prev = run_dir / CHECKPOINT_FILE, run_dir / PREVIOUS_FILE
    _remove_stale_temporaries(run_dir)
    try:
        if latest.is_file():
            _link_or_copy(latest, prev)
        save_state(latest, state, meta=meta, checksum=True)
    except OSError as e:
        kept = [str(p) for p in (latest, prev) if p.is_file()]
        cause = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
        code = errno.errorcode.get(e.errno, "?") if e.errno is not None else "?"
        where = f" at step {meta['step']}" if meta and "step" in meta else ""
        raise CheckpointError(
            f"could not write checkpoint {str(latest)!r}{where}: {cause} [{code}]. "
            + (f"The earlier checkpoint(s) {', '.join(map(repr, kept))} are unchanged and loadable. " if kept
               else "No earlier checkpoint exists. ")
            + f"Free space in {str(run_dir)!r} (or move the run directory) and continue with resume "
            f"(sparseflow train --resume {run_dir})"
        ) from e
    return latest


def load_checkpoint(run_dir: str | Path, *, quarantine: bool = False, quiet: bool = False) -> Checkpoint:
    """The newest valid checkpoint of ``run_dir``, falling back to the previous one (see module docstring).

    ``quarantine=True`` (the trainer, about to write new checkpoints) renames a damaged newest file to
    ``checkpoint.safetensors.damaged``, so the next write does not keep it as the previous one.
    ``quiet=True`` does not print the fallback message on stderr (it is in :attr:`Checkpoint.fallback`).
    """
    run_dir = Path(run_dir)
    latest, prev = run_dir / CHECKPOINT_FILE, run_dir / PREVIOUS_FILE
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist; pass a directory written by "
                              "`sparseflow train` (or sparseflow.training.loop.fit with run_dir)")
    if not latest.is_file() and not prev.is_file():
        raise CheckpointError(f"run directory {str(run_dir)!r} has no {CHECKPOINT_FILE} (nor {PREVIOUS_FILE}); "
                              "pass a directory written by `sparseflow train`, or train it first")
    try:
        state, meta = load_state(latest)
        return Checkpoint(state, meta, latest)
    except SparseflowError as e:
        problem = f"checkpoint {str(latest)!r} is missing" if not latest.is_file() else str(e)
    if not prev.is_file():
        raise CheckpointError(f"{problem}; and there is no previous checkpoint {str(prev)!r} to fall back to. "
                              "Restore the file from a copy or start the run again")
    try:
        state, meta = load_state(prev)
    except SparseflowError as e:
        raise CheckpointError(f"no valid checkpoint in {str(run_dir)!r}: {problem}; and the previous one is not "
                              f"usable either: {e}. Restore a file from a copy or start the run again") from None
    message = f"{problem}; using the previous checkpoint {str(prev)!r}"
    if "step" in meta:
        message += f" (step {meta['step']})"
    if quarantine and latest.is_file():
        os.replace(latest, latest.with_name(latest.name + DAMAGED_SUFFIX))
        message += f"; the damaged file was renamed to {latest.name + DAMAGED_SUFFIX!r}"
    if not quiet:
        print(f"warning: {message}", file=sys.stderr, flush=True)
    return Checkpoint(state, meta, prev, fallback=message)


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The path of ``run_dir``'s newest valid checkpoint (verified; the previous one if the newest is bad)."""
    return load_checkpoint(run_dir).path


def _link_or_copy(src: Path, dst: Path) -> None:
    # The previous file appears under its name only complete: link (or copy) to a temporary, then rename.
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        shutil.copyfile(src, tmp)  # a filesystem without hard links
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)


def _remove_stale_temporaries(run_dir: Path) -> None:
    # A process killed mid-write leaves its temporary behind (atomic_write_bytes names them ".NAME.*.tmp").
    for name in (CHECKPOINT_FILE, PREVIOUS_FILE):
        for tmp in run_dir.glob(f".{name}.*tmp"):
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass


# --- data position ------------------------------------------------------------------------------


def loader_generators(loader: DataLoader) -> list[torch.Generator]:
    """The generators that draw a loader's order: the loader's own and its sampler's (once each)."""
    gens: list[torch.Generator] = []
    samplers = (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None))
    for g in (getattr(loader, "generator", None), *(getattr(s, "generator", None) for s in samplers)):
        if isinstance(g, torch.Generator) and all(g is not h for h in gens):
            gens.append(g)
    return gens


def rng_snapshot(loader: DataLoader, device: torch.device) -> dict[str, Any]:
    """torch's RNG (and CUDA's on a CUDA device) and the loader's generators, as storable tensors."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "loader": [g.get_state() for g in loader_generators(loader)],
    }


def set_rng(loader: DataLoader, snapshot: dict[str, Any], device: torch.device, *, loader_too: bool = True) -> None:
    """Restore an :func:`rng_snapshot` (``loader_too=False``: torch's and CUDA's only)."""
    gens = loader_generators(loader)
    if len(gens) != len(snapshot["loader"]):
        raise SparseflowError(
            f"the checkpoint stored {len(snapshot['loader'])} train-loader generators, the loader has {len(gens)}; "
            "resume with a loader built the same way"
        )
    torch.set_rng_state(snapshot["torch"])
    if snapshot["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(snapshot["cuda"], device)
    if loader_too:
        for g, s in zip(gens, snapshot["loader"]):
            g.set_state(s)


def epoch_batches(
    loader: DataLoader,
    epoch: int,
    device: torch.device,
    *,
    start: dict[str, Any] | None = None,
    skip: int = 0,
    now: dict[str, Any] | None = None,
) -> Iterator[Any]:
    """The batches of ``epoch`` (1-based). To resume mid-epoch: ``start`` is the :func:`rng_snapshot` taken
    when the epoch began, ``skip`` the batches already trained on, ``now`` the snapshot at the checkpoint
    (torch's RNG is set to it after the skipped batches are re-drawn; they are loaded, not trained on)."""
    if start is not None:
        set_rng(loader, start, device)
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)  # a DistributedSampler's order is a function of (seed, epoch)
            break
    it = iter(loader)
    for i in range(skip):
        if next(it, None) is None:
            raise SparseflowError(f"the checkpoint is {skip} batches into epoch {epoch}, but the train loader "
                                  f"yields only {i}; resume with the same data and batch size")
    if now is not None:
        set_rng(loader, now, device, loader_too=False)
    yield from it
