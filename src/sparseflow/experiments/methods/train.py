"""Training of the methods experiment (:mod:`sparseflow.experiments.methods.grid`): one budget per task, tasks
spread over worker processes, IMP's levels chained in one task per seed.

A grid task trains one (method, sparsity, seed) with the method :func:`sparseflow.training.build.build_method` makes
(the schedule of ``sparseflow train`` and ``sparseflow bench methods``); the IMP task of a seed trains the
dense network and then every IMP level under a :class:`sparseflow.FixedMask`, each from the previous level's
trained weights (learning-rate rewinding). Every run gets fresh loaders seeded by its seed, so all methods
see the same data order; the test set is evaluated once, after the last step.

Resuming: with a ``journal`` file every finished task appends one JSON line (its records); a later run of
the same configuration reads it and trains only the tasks missing there, so an interrupted grid costs only
its unfinished tasks. A journal of another configuration is set aside (renamed ``*.old``), never mixed in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparseflow.bench.methods import RunSpec
from sparseflow.experiments.methods.config import Setting
from sparseflow.experiments.methods.grid import IMP, ComparisonConfig, RunRecord, config_json, imp_mask
from sparseflow.experiments.methods.result import ComparisonResult
from sparseflow.io import write_error
from sparseflow.mask import Mask
from sparseflow.training.processes import worker_pool

JOURNAL = "runs.partial.jsonl"  # finished tasks of an unfinished run: rerunning the same command resumes


@dataclass(frozen=True)
class _Task:
    setting: Setting
    data_dir: str
    seed: int
    spec: RunSpec | None = None  # None: the dense run and IMP's levels
    imp_levels: tuple[float, ...] = ()
    budgets: int = 1  # the run trains this many times the setting's epochs (its schedule stretched to fit)


def _data(setting: Setting, data_dir: str, seed: int) -> Any:
    import torch.nn.functional as F

    from sparseflow.bench.methods import _dataset  # cached per worker process
    from sparseflow.training.data import Dataset

    ds = _dataset(setting.dataset, data_dir, setting.train_size, seed if setting.train_size is not None else 0)
    x_tr, x_te, y_te = ds.x_train, ds.x_test[: setting.test_size], ds.y_test[: setting.test_size]
    if setting.downsample > 1:  # (N, 1, 28, 28) -> (N, 1, 28/k, 28/k)
        x_tr, x_te = F.avg_pool2d(x_tr, setting.downsample), F.avg_pool2d(x_te, setting.downsample)
    return Dataset(ds.name, x_tr, ds.y_train, x_te, y_te, ds.num_classes)


def _train(setting: Setting, ds: Any, job: Any, label: str, budgets: int, *, start: dict | None = None,
           keep: Mask | None = None) -> tuple[RunRecord, torch.nn.Module]:
    """One budget: fresh loaders (same order per seed), ``job``'s method or a fixed mask ``keep``."""
    from sparseflow.training.data import loaders
    from sparseflow.training.build import build_method, first_batch
    from sparseflow.methods import FixedMask
    from sparseflow.training.models import build_model
    from sparseflow.targets import Targets
    from sparseflow.training.loop import TrainConfig, fit

    t0 = time.perf_counter()
    model = build_model(setting.model, ds.input_shape, ds.num_classes, seed=job.seed)
    if start is not None:
        model.load_state_dict(start)  # IMP's LR rewinding: keep the trained weights
    train, test = loaders(ds, setting.batch_size, seed=job.seed)
    if keep is not None:
        method = FixedMask(keep=keep, targets=Targets(first_layer=setting.prune_first))
    else:
        method = build_method(job, setting.epochs * len(train), batch=first_batch(ds, job), input_shape=ds.input_shape)
    cfg = TrainConfig(**job.train_config_kwargs(), eval_every_epoch=False)  # test once, after the last step
    result = fit(model, train, test, cfg, method=method, progress=False)
    names = list(method.mask) if method is not None else list(Targets().select(model))
    weights = dict(model.named_parameters())
    n = sum(weights[k].numel() for k in names)
    nnz = sum(int(torch.count_nonzero(weights[k])) for k in names)
    rec = RunRecord(setting.dataset, label, job.sparsity, job.seed, result.test_acc, 1.0 - nnz / n, n,
                    result.steps, budgets, time.perf_counter() - t0)
    return rec, model


def _work(task: _Task) -> tuple[RunRecord, ...]:
    """A grid run, or (``spec`` None) the dense run followed by IMP's levels of one seed."""
    s = task.setting
    ds = _data(s, task.data_dir, task.seed)
    if task.spec is not None:
        sp = task.spec
        long = dataclasses.replace(s, epochs=s.epochs * task.budgets)
        return (_train(long, ds, long.job(sp.method, sp.sparsity, sp.distribution, sp.seed), sp.label, task.budgets)[0],)
    from sparseflow.targets import Targets

    rec, model = _train(s, ds, s.job("dense", 0.0, None, task.seed), "dense", 1)
    out = [rec]
    targets = Targets(first_layer=s.prune_first)
    mask = Mask.ones(targets.select(model))
    for level, sparsity in enumerate(task.imp_levels, start=1):
        mask = imp_mask(mask, {n: p.detach() for n, p in targets.select(model).items()}, sparsity)
        job = s.job("magnitude", sparsity, "uniform", task.seed)  # the budget; the mask is IMP's
        rec, model = _train(s, ds, job, IMP, level + 1, start=model.state_dict(), keep=mask)
        out.append(rec)
    return tuple(out)


def _tasks(cfg: ComparisonConfig) -> list[_Task]:
    dirs = dict(cfg.data_dirs)
    chains = [_Task(s, dirs[s.dataset], seed, imp_levels=cfg.imp_levels()) for s in cfg.settings for seed in cfg.seeds]
    grid = [_Task(s, dirs[s.dataset], seed, spec=RunSpec(label, m, d, sp, seed), budgets=k)
            for s in cfg.settings for sp in cfg.sparsities for label, m, d, k in cfg.grid() for seed in cfg.seeds]
    grid += [_Task(s, dirs[s.dataset], seed, spec=RunSpec(label, "dense", None, 0.0, seed), budgets=k)
             for s in cfg.settings for label, k in cfg.dense() if k > 1 for seed in cfg.seeds]
    # Longest first (IMP chains, then the longer budgets and the costlier dataset), so no long run is left
    # alone at the end.
    grid.sort(key=lambda t: -t.setting.seconds_per_run() * t.budgets)
    return chains + grid


def _key(task: _Task) -> str:
    what = "dense + IMP" if task.spec is None else f"{task.spec.label} {task.spec.sparsity!r}"
    return f"{task.setting.dataset} | {what} | seed {task.seed}"


def _head(cfg: ComparisonConfig) -> dict[str, Any]:
    # What the records depend on: everything but the number of worker processes (JSON-normalised).
    return json.loads(json.dumps({"config": {k: v for k, v in config_json(cfg).items() if k != "workers"}}))


def _read_journal(path: Path, cfg: ComparisonConfig) -> dict[str, tuple[RunRecord, ...]]:
    """Finished tasks of ``cfg`` in ``path`` (key -> records); a torn last line (killed mid-write) is dropped."""
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    try:
        head = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        head = None
    if head != _head(cfg):  # another grid: keep it, but aside
        path.replace(path.with_name(path.name + ".old"))
        return {}
    done = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[row["task"]] = tuple(RunRecord(**r) for r in row["records"])
    return done


def _append(path: Path, row: dict[str, Any]) -> None:
    try:
        with path.open("a") as f:  # one line per task, flushed to disk before the next task is counted
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # (a torn last line is skipped when the journal is read back)
        raise write_error(path, e, kept=True) from e


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_methods(cfg: ComparisonConfig, progress: Callable[[str, int], None] = lambda what, n: None,
                journal: Path | None = None) -> ComparisonResult:
    """Train every (dataset, method, sparsity, seed) of ``cfg``; ``progress(what, runs)`` after each task.
    With ``journal``, tasks finished there by an earlier run of the same ``cfg`` are not trained again."""
    cfg.check()
    for s in cfg.settings:  # read and verify the files here, so a bad folder fails before any training
        _data(s, dict(cfg.data_dirs)[s.dataset], cfg.seeds[0])
    t0 = time.perf_counter()
    tasks, records = _tasks(cfg), []
    finished = {} if journal is None else _read_journal(journal, cfg)
    if journal is not None and not journal.is_file():
        journal.parent.mkdir(parents=True, exist_ok=True)
        _append(journal, _head(cfg))
    for task in [t for t in tasks if _key(t) in finished]:
        records.extend(finished[_key(task)])
        progress(f"{_key(task)} (from {journal.name})", len(finished[_key(task)]))
    tasks = [t for t in tasks if _key(t) not in finished]

    def done(task: _Task, recs: tuple[RunRecord, ...]) -> None:
        records.extend(recs)
        if journal is not None:
            _append(journal, {"task": _key(task), "records": [dataclasses.asdict(r) for r in recs]})
        what = f"{task.setting.dataset} {'dense + IMP' if task.spec is None else task.spec.label}"
        progress(what + ("" if task.spec is None else f" s={task.spec.sparsity:g}") + f" seed {task.seed}", len(recs))

    if cfg.workers == 1 or not tasks:
        for task in tasks:
            done(task, _work(task))
    else:
        threads = max(1, (os.cpu_count() or 1) // cfg.workers)
        # spawn workers (a forked child of a process whose OpenMP pool is running can hang) that end with this one
        with worker_pool(cfg.workers, initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(_work, t): t for t in tasks}
            for fut in as_completed(futures):
                done(futures[fut], fut.result())
    order = {label: i for i, label in enumerate((*(d for d, _ in cfg.dense()), *cfg.labels()))}
    records.sort(key=lambda r: (r.dataset, order[r.method], r.sparsity, r.seed))
    return ComparisonResult(cfg, tuple(records), time.perf_counter() - t0)
