"""``sparseflow experiment methods``: dense-to-sparse vs sparse-from-scratch vs dynamic sparse training on one
training budget per dataset, and how their ordering compares with the literature's.

Methods (labels as in ``sparseflow bench methods``; each with the layer densities of its paper):

* dense-to-sparse: one-shot magnitude pruning at mid-training, then fine-tuning (Han et al. 2015), gradual
  magnitude pruning (GMP, Zhu & Gupta 2017), both uniform; iterative magnitude pruning (IMP, Frankle &
  Carbin 2019) with learning-rate rewinding (Renda et al. 2020), uniform;
* sparse from scratch: static random masks with ER or ERK densities (Mocanu et al. 2018; Evci et al. 2020),
  SNIP (Lee et al. 2019) and SynFlow (Tanaka et al. 2020), global;
* dynamic: SET (Mocanu et al. 2018) and RigL (Evci et al. 2020), ERK.

Equal budget: at one dataset every run takes the same number of optimizer steps with the same optimizer,
cosine learning-rate schedule, batch size, and per seed the same initialisation, data order and training
subset; each method derives its schedule from that number (:func:`sparseflow.training.build.build_method`).
IMP, per seed: level 0 is the dense run; level i prunes level i-1's trained weights layer-wise to the next
sparsity of ``IMP_FIRST`` + the grid (a subset of the previous mask) and retrains the surviving weights for
the full budget with the full LR schedule. Every level costs one budget, so IMP at the i-th level has
used i + 1 budgets in total (reported as ``budgets``); the others use one.

This module: which datasets run, from which folders (:func:`plan`), and the run. Settings: :mod:`.config`;
the grid, the records and IMP's mask: :mod:`.grid`; training: :mod:`.train`; the measurement (orderings,
Kendall's τ_b against the reference, criteria): :mod:`.result`; report: :mod:`.report`; figures: :mod:`.plots`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from sparseflow.errors import SparseflowError
from sparseflow.experiments.methods.config import DATASETS, DIR_FLAGS, MethodsConfig, MethodsOptions
from sparseflow.experiments.methods.grid import ComparisonConfig
from sparseflow.experiments.methods.result import ComparisonResult
from sparseflow.experiments.methods.train import JOURNAL, run_methods
from sparseflow.experiments.protocol import Tick, command_line, no_progress
from sparseflow.training.rundir import check_budget


def plan(config: MethodsConfig, options: MethodsOptions) -> tuple[ComparisonConfig, tuple[str, ...]]:
    """The plan of a run, and the datasets skipped: without ``--datasets``, every dataset whose folder is given
    (``--mnist-dir``, ``--fashion-dir`` or a sub-folder of ``--data-dir``), the others skipped with a note."""
    given = {"mnist": options.mnist_dir, "fashion-mnist": options.fashion_dir}
    root = options.data_dir
    skipped: tuple[str, ...] = ()
    if config.datasets is None:
        names = tuple(d for d in DATASETS if given[d] is not None or (root is not None and (root / d).is_dir()))
        skipped = tuple(d for d in DATASETS if d not in names)
        if not names:
            raise SparseflowError("no data given: pass --mnist-dir and/or --fashion-dir (folders holding the four IDX "
                                  ".gz files), or --data-dir (a folder with mnist/ and fashion-mnist/ subfolders)")
    else:
        names = config.datasets
    dirs = {}
    for d in names:
        folder = given[d] or (root / d if root is not None else None)
        if folder is None:
            raise SparseflowError(f"{d} is read from its IDX files: pass --data-dir (a folder with a {d}/ subfolder) "
                                  f"or {DIR_FLAGS[d]}")
        if not folder.is_dir():
            raise SparseflowError(f"{str(folder)!r} is not a folder; pass the folder holding {d}'s four IDX .gz files "
                                  f"({DIR_FLAGS[d]}) or their parent (--data-dir)")
        dirs[d] = str(folder)
    cfg = ComparisonConfig.of(config, names, tuple(dirs.items()), options.workers)
    cfg.check()
    return cfg, skipped


def check(config: MethodsConfig, options: MethodsOptions) -> Sequence[str]:
    """Refuse missing data or a grid estimated past an hour without ``--yes``; notes: what is skipped, the estimate."""
    cfg, skipped = plan(config, options)
    check_budget(cfg.estimate_s(), options.yes, "experiment methods")
    return [*(f"note: {d} skipped (no {DIR_FLAGS[d]} and no {d}/ under --data-dir)" for d in skipped),
            f"about {cfg.estimate_s() / 60:.1f} min for {cfg.units()} training runs on {cfg.workers} worker(s)"]


def run(config: MethodsConfig, out: Path | None = None, progress: Tick = no_progress, *,
        options: MethodsOptions) -> ComparisonResult:
    """Train the plan of ``config``; with ``out``, finished tasks are journalled there, and a rerun of the same
    command resumes from them."""
    cfg, skipped = plan(config, options)
    progress("methods", advance=0, total=cfg.units())
    result = run_methods(cfg, lambda what, n: progress(what, advance=n), journal=None if out is None else out / JOURNAL)
    command = command_line("methods", config, dataclasses.replace(options, out=out))
    return dataclasses.replace(result, skipped=skipped, command=command)
