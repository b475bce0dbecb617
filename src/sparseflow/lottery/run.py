"""Iterative magnitude pruning with rewinding and its two controls, level by level, resumable.

Algorithm (Frankle & Carbin 2019; late rewinding: Frankle et al. 2020; LR rewinding: Renda et al. 2020),
per replicate seed: level 0 trains the dense network from its initialisation w0 (saving w_k at the rewind
step k). Level L >= 1 prunes the previous level's trained ticket to mask M_L, sets the kept weights to w_k
(``rewind="weights"``; or keeps the trained weights and replays only the LR schedule, ``rewind="lr"``) and
trains from step k to T. Controls at every level (or at the levels nearest ``controls_at``): the same mask
from a fresh initialisation (random reinit) and a random mask with the same per-layer counts from the ticket's
starting weights. Every arm trains for the same T steps; with a validation set (``val_size``) the criteria read
each arm at its early-stopping point, the evaluation with the lowest validation loss.

Run directory (open_lth's layout idea: a level is done when its output exists)::

    OUT/config.json                  the job; another job in the same directory is refused
    OUT/seed{s}/masks.sfm            M_0..M_{L+1}, nested, delta-coded (sparseflow.storage.sequence)
    OUT/seed{s}/rewind.safetensors   w_k when k > 0 (part of level 0)
    OUT/seed{s}/level_{L:02d}/result.json        per-arm accuracies and evaluations, with a checksum
    OUT/seed{s}/level_{L:02d}/ticket.safetensors the trained ticket (what M_{L+1} is pruned from)
    OUT/seed{s}/level_{L:02d}/{arm}/checkpoint.safetensors  while the level runs; removed when it is done

Rerunning the same command skips finished levels and resumes the unfinished arm from its checkpoint. A
level file that fails its checksum is reported with its level; ``recompute_level=L`` (CLI
``--recompute-level L``) deletes level L and the levels after it and runs them again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparseflow.training.data import load_dataset
from sparseflow.errors import SparseflowError
from sparseflow.io import atomic_write_text, json_safe, load_state, make_folder, removed_on_failure, save_state
from sparseflow.lottery.config import LotteryJob, level_counts
from sparseflow.lottery.prune import derived_seed, next_mask, random_mask
from sparseflow.lottery.trainer import LevelData, eval_loader, train_arm
from sparseflow.mask import Mask
from sparseflow.training.models import build_model
from sparseflow.storage.sequence import load_masks, save_masks
from sparseflow.targets import Targets
from sparseflow.training.loop import TrainConfig

ARMS = ("ticket", "reinit", "random")
MASKS, REWIND, RESULT, TICKET = "masks.sfm", "rewind.safetensors", "result.json", "ticket.safetensors"
StepHook = Callable[[int, int, str, int], None]  # (seed, level, arm, finished steps)


@dataclass(frozen=True)
class LotteryResult:
    """Every level of every replicate: ``levels[seed]`` is the list of level records (result.json).
    ``levels_trained``: how many levels this call trained (0: all were finished before, and only read)."""

    job: LotteryJob
    run_dir: Path
    levels: dict[int, list[dict[str, Any]]]
    wall_s: float
    levels_trained: int = 0


def _checksum(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _fix(seed: int, level: int, what: str) -> str:
    return (f"level {level} of seed {seed} is corrupted: {what}; rerun the same command with "
            f"--recompute-level {level} (python: recompute_level={level}) to recompute level {level} "
            "and the levels after it, which depend on it")


def _weights_digest(sd: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_weights(path: Path, sd: dict[str, Tensor]) -> None:
    sd = {k: v.detach().clone() for k, v in sd.items()}
    save_state(path, sd, meta={"kind": "lottery-weights", "sha256": _weights_digest(sd)})


def _load_weights(path: Path, seed: int, level: int) -> dict[str, Tensor]:
    try:
        sd, meta = load_state(path)
    except SparseflowError as e:
        raise SparseflowError(_fix(seed, level, f"{path} cannot be read ({e})")) from None
    if not isinstance(sd, dict) or _weights_digest(sd) != meta.get("sha256"):
        raise SparseflowError(_fix(seed, level, f"{path} fails its checksum"))
    return sd


def _read_level(path: Path, seed: int, level: int) -> dict[str, Any]:
    try:
        rec = json.loads(path.read_text())
        body = rec["record"]
        ok = rec["sha256"] == _checksum(body) and body["level"] == level and body["seed"] == seed
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise SparseflowError(_fix(seed, level, f"{path} is unreadable or fails its checksum"))
    return body


def glorot(model: nn.Module, seed: int) -> nn.Module:
    """Gaussian Glorot init (std = sqrt(2 / (fan_in + fan_out))) of every Linear and Conv weight, zero biases
    (Frankle & Carbin 2019's LeNet and Conv networks), drawn from ``seed``; norm layers keep theirs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                nn.init.xavier_normal_(m.weight, generator=g)
                if m.bias is not None:
                    m.bias.zero_()
    return model


def _check_config(job: LotteryJob, out: Path, command: str | None) -> None:
    """Refuse a run directory that holds another configuration (replicate seeds may be added)."""
    path = out / "config.json"
    now = {k: v for k, v in job.to_dict().items() if k != "seeds"}
    if path.exists():
        try:
            stored = json.loads(path.read_text())["job"]
        except (ValueError, KeyError, TypeError):
            raise SparseflowError(f"{path} is unreadable; delete it only if the run directory holds this job") from None
        diff = [f"{k} is {stored.get(k)!r} there, {v!r} here" for k, v in now.items() if stored.get(k) != v]
        if diff:
            raise SparseflowError(f"run directory {str(out)!r} holds another lottery configuration ({'; '.join(diff)}); "
                                  "refusing to mix runs: pass the same settings, or another --out")
        return
    make_folder(out)
    atomic_write_text(path, json.dumps({"job": now, "run": job.run_name(), "command": command}, indent=2) + "\n")


def _data(job: LotteryJob, data_dir: Path | None) -> tuple[Tensor, Tensor, Any, Any, tuple[int, ...], int]:
    ds = load_dataset(job.dataset, data_dir, subset=job.subset, seed=0)  # the same examples for every replicate
    x, y = ds.x_train, ds.y_train
    x_test, y_test = ds.x_test[: job.test_subset], ds.y_test[: job.test_subset]
    test = eval_loader(x_test, y_test)
    if job.val_size == 0:
        return x, y, test, None, ds.input_shape, ds.num_classes
    if job.val_size >= len(x):
        raise SparseflowError(f"val_size {job.val_size} leaves no training examples of {len(x)}; pass a smaller one")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # fixed, like the test split
    tr, va = perm[: len(x) - job.val_size], perm[len(x) - job.val_size :]
    return x[tr], y[tr], eval_loader(x[va], y[va]), test, ds.input_shape, ds.num_classes


def run_lottery(job: LotteryJob, out: Path, *, data_dir: Path | None = None, recompute_level: int | None = None,
                command: str | None = None, on_step: StepHook | None = None,
                progress: Callable[[str, int], None] | None = None, workers: int = 1) -> LotteryResult:
    """Run (or resume) ``job`` in ``out``; see the module docstring. ``progress(label, steps)`` reports work.
    A run that fails before it has written anything to resume from leaves no folder behind.

    ``workers > 1`` trains the replicate seeds in that many processes (each seed's chain is sequential, the seeds
    are independent), each with this process's torch threads divided among them; ``progress`` then moves once per
    finished seed, and ``on_step`` is refused (it cannot reach into another process)."""
    if workers > 1 and on_step is not None:
        raise SparseflowError("run_lottery: on_step runs in this process only; pass workers=1 to use it")
    with removed_on_failure(out):
        if workers > 1 and len(job.seeds) > 1:
            return _run_parallel(job, out, data_dir=data_dir, recompute_level=recompute_level, command=command,
                                 progress=progress, workers=workers)
        return _run_lottery(job, out, data_dir=data_dir, recompute_level=recompute_level, command=command,
                            on_step=on_step, progress=progress)


def _seed_worker(job: LotteryJob, out: Path, data_dir: Path | None, recompute_level: int | None,
                 command: str | None, threads: int) -> LotteryResult:
    torch.set_num_threads(threads)
    return _run_lottery(job, out, data_dir=data_dir, recompute_level=recompute_level, command=command,
                        on_step=None, progress=None)


def _run_parallel(job: LotteryJob, out: Path, *, data_dir: Path | None, recompute_level: int | None,
                  command: str | None, progress: Callable[[str, int], None] | None, workers: int) -> LotteryResult:
    from concurrent.futures import as_completed

    from sparseflow.training.processes import worker_pool

    t0 = time.perf_counter()
    _setup(job, out, data_dir, recompute_level, command)  # refuses bad input here, once, before any process
    threads = max(1, torch.get_num_threads() // min(workers, len(job.seeds)))
    levels, trained = {}, 0
    with worker_pool(min(workers, len(job.seeds))) as pool:
        futures = {pool.submit(_seed_worker, dataclasses.replace(job, seeds=(seed,)), out, data_dir, recompute_level,
                               command, threads): seed for seed in job.seeds}
        for fut in as_completed(futures):
            res = fut.result()
            levels.update(res.levels)
            trained += res.levels_trained
            if progress is not None:
                progress(f"seed {futures[fut]}: {len(res.levels[futures[fut]])} levels done", 0)
    return LotteryResult(job, out, {s: levels[s] for s in job.seeds}, time.perf_counter() - t0, trained)


def _setup(job: LotteryJob, out: Path, data_dir: Path | None, recompute_level: int | None, command: str | None
           ) -> tuple[tuple[Tensor, Tensor, Any, Any], Callable[[int], nn.Module], list[dict[str, int]]]:
    """Read the data, build the level schedule and claim ``out``: refuses bad data, an unreachable target, a
    recompute level outside the run and another job in ``out``, before any training. Returns the training tensors
    and evaluation loaders, the model builder (init by seed) and the schedule."""
    x, y, val, test, input_shape, classes = _data(job, data_dir)

    def model_for(seed: int) -> nn.Module:
        model = build_model(job.model, input_shape, classes, hidden=job.hidden, seed=seed)
        return glorot(model, seed) if job.init == "glorot" else model

    sizes = {n: p.numel() for n, p in Targets().select(model_for(job.seeds[0])).items()}  # forward order
    schedule = level_counts(job, sizes)  # refuses an unreachable target before any training
    if recompute_level is not None and not (0 <= recompute_level < len(schedule)):
        raise SparseflowError(f"--recompute-level {recompute_level} is not a level of this run (0..{len(schedule) - 1})")
    _check_config(job, out, command)
    return (x, y, val, test), model_for, schedule


def _run_lottery(job: LotteryJob, out: Path, *, data_dir: Path | None, recompute_level: int | None,
                 command: str | None, on_step: StepHook | None,
                 progress: Callable[[str, int], None] | None) -> LotteryResult:
    t0 = time.perf_counter()
    (x, y, val, test), model_for, schedule = _setup(job, out, data_dir, recompute_level, command)
    cfg = TrainConfig(batch_size=job.batch_size, lr=job.lr, optimizer=job.optimizer, weight_decay=job.weight_decay,
                      lr_schedule=job.lr_schedule)
    levels, trained = {}, 0
    for seed in job.seeds:
        data = LevelData(x, y, job.batch_size, seed, val, test)
        runner = _SeedRun(job, seed, out / f"seed{seed}", data, cfg, schedule, model_for, on_step, progress)
        if recompute_level is not None:
            runner.reset_from(recompute_level)
        levels[seed] = runner.run()
        trained += runner.trained
    return LotteryResult(job, out, levels, time.perf_counter() - t0, trained)


class _SeedRun:
    """The chain of levels of one replicate."""

    def __init__(self, job: LotteryJob, seed: int, sdir: Path, data: LevelData, cfg: TrainConfig,
                 schedule: list[dict[str, int]], model_for: Callable[[int], nn.Module],
                 on_step: StepHook | None, progress: Callable[[str, int], None] | None) -> None:
        self.job, self.seed, self.sdir, self.data, self.cfg = job, seed, sdir, data, cfg
        self.schedule, self.model_for = schedule, model_for
        self.on_step, self.progress = on_step, progress
        self.trained = 0  # levels trained by run() (the others were finished before)

    def level_dir(self, level: int) -> Path:
        return self.sdir / f"level_{level:02d}"

    def reset_from(self, level: int) -> None:
        """Delete ``level`` and later levels; rebuild the masks file up to M_level from the kept tickets."""
        for lv in range(level, len(self.schedule)):
            shutil.rmtree(self.level_dir(lv), ignore_errors=True)
        if level == 0:
            for f in (MASKS, REWIND):
                (self.sdir / f).unlink(missing_ok=True)
            return
        masks = [self.ones()]
        for lv in range(1, level + 1):
            weights = _load_weights(self.level_dir(lv - 1) / TICKET, self.seed, lv - 1)
            masks.append(next_mask(masks[-1], weights, self.schedule[lv]))
        save_masks(self.sdir / MASKS, masks)

    def ones(self) -> Mask:
        model = self.model_for(self.seed)
        return Mask.ones(Targets().select(model))

    def run(self) -> list[dict[str, Any]]:
        self.sdir.mkdir(parents=True, exist_ok=True)
        done: list[dict[str, Any]] = []
        for lv in range(len(self.schedule)):
            path = self.level_dir(lv) / RESULT
            if not path.exists():
                break
            done.append(_read_level(path, self.seed, lv))
            _load_weights(self.level_dir(lv) / TICKET, self.seed, lv)  # checked now, not when a later level needs it
        masks = self.load_mask_file(len(done))
        if self.progress is not None and done:
            self.progress(f"seed {self.seed}: levels 0-{len(done) - 1} of 0-{len(self.schedule) - 1} already finished "
                          "(read back, not trained again)", 0)
        for lv in range(len(done), len(self.schedule)):
            done.append(self.run_level(lv, masks))
            self.trained += 1
        return done

    def load_mask_file(self, finished: int) -> list[Mask]:
        path = self.sdir / MASKS
        if not path.exists():
            if finished:
                raise SparseflowError(_fix(self.seed, finished - 1, f"{path} is missing"))  # rebuilt from the tickets
            return [self.ones()]
        try:
            masks = load_masks(path)
        except SparseflowError as e:
            bad = next((lv for lv in range(len(self.schedule)) if f"level {lv}," in str(e)), 0)
            raise SparseflowError(_fix(self.seed, max(bad - 1, 0), f"its mask M_{bad} in {path} is unreadable ({e})")
                                  ) from None
        want = min(finished + 1, len(self.schedule))
        if len(masks) < want:
            raise SparseflowError(_fix(self.seed, len(masks) - 1, f"{path} holds {len(masks)} masks, {want} expected"))
        return masks[:want]

    def start_weights(self, level: int) -> dict[str, Tensor]:
        if self.job.rewind == "lr":  # keep the trained weights; only the LR schedule goes back to step k
            return _load_weights(self.level_dir(level - 1) / TICKET, self.seed, level - 1)
        if self.job.rewind_step == 0:
            return self.model_for(self.seed).state_dict()
        return _load_weights(self.sdir / REWIND, self.seed, 0)

    def run_level(self, level: int, masks: list[Mask]) -> dict[str, Any]:
        job, seed, ldir = self.job, self.seed, self.level_dir(level)
        mask = masks[level]
        arms: dict[str, tuple[nn.Module, Mask]] = {}
        if level == 0:
            start = 0
            arms["ticket"] = (self.model_for(seed), mask)
        else:
            start = job.rewind_step
            w = self.start_weights(level)
            ticket = self.model_for(seed)
            ticket.load_state_dict(w)
            arms["ticket"] = (ticket, mask)
            total = sum(self.schedule[0].values())
            controls = level in job.control_levels([sum(c.values()) / total for c in self.schedule])
            if job.reinit and controls:
                arms["reinit"] = (self.model_for(derived_seed(seed, "reinit", level)), mask)
            if job.random_mask and controls:
                rnd = self.model_for(seed)
                rnd.load_state_dict(w)
                arms["random"] = (rnd, random_mask(mask, derived_seed(seed, "random", level)))
        capture = job.rewind == "weights" and level == 0 and job.rewind_step > 0
        results = {}
        for arm, (model, arm_mask) in arms.items():
            label = f"seed {seed} level {level}/{len(self.schedule) - 1} {arm}"

            def hook(step: int, m: nn.Module, arm: str = arm, label: str = label) -> None:
                if capture and step == job.rewind_step:
                    _save_weights(self.sdir / REWIND, m.state_dict())
                if self.progress is not None:
                    self.progress(label, 1)
                if self.on_step is not None:
                    self.on_step(seed, level, arm, step)

            try:
                res = train_arm(model, arm_mask, self.data, self.cfg, start=start, end=job.iterations,
                                eval_every=job.eval_every, run_dir=ldir / arm, on_step=hook)
            except SparseflowError as e:
                if "checkpoint" in str(e) or "safetensors" in str(e):
                    raise SparseflowError(_fix(seed, level, f"the {arm} checkpoint cannot be used ({e})")) from None
                raise
            if arm == "ticket":
                _save_weights(ldir / TICKET, model.state_dict())
                if level + 1 < len(self.schedule):
                    nxt = next_mask(mask, model.state_dict(), self.schedule[level + 1])
                    save_masks(self.sdir / MASKS, [*masks[: level + 1], nxt], meta={"seed": seed})
                    masks[level + 1 :] = [nxt]
            results[arm] = res.to_json() | {"density": arm_mask.density(),
                                            "layer_density": {n: arm_mask[n].float().mean().item() for n in arm_mask}}
        body = {"level": level, "seed": seed, "density": mask.density(), "counts": mask.counts(),
                "start_step": start, "iterations": job.iterations, "arms": results}
        body = json_safe(body)
        atomic_write_text(ldir / RESULT, json.dumps({"record": body, "sha256": _checksum(body)}, indent=1) + "\n")
        for arm in arms:
            shutil.rmtree(ldir / arm, ignore_errors=True)  # the level's outputs are written: checkpoints go
        return body
