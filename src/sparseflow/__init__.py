"""sparseflow: sparse neural networks in PyTorch.

Create sparse networks (pruning, sparse-from-scratch, dynamic sparse training), keep their signal alive,
store them at their information content and run them fast. The public API is flat::

    import sparseflow as sf
    method = sf.GMP(sparsity=0.9, end=1000)
"""

import os as _os
import sys as _sys

_SCRIPTS = ("sparseflow", "sparseflow.exe", "sparseflow-script.py")  # the console script, as installed


def _command_words() -> list[str] | None:
    """The command (``["train"]``, ``["experiment", "methods"]``) when this process is the command-line tool
    (the ``sparseflow`` script, ``python -m sparseflow``) about to run one with stderr on a terminal, outside
    torchrun's workers; else None (a library import, a pipe, ``--help``, ``--version``)."""
    if not _sys.stderr.isatty() or "LOCAL_RANK" in _os.environ:
        return None
    argv, first, args = list(getattr(_sys, "orig_argv", [])), _sys.argv[0] if _sys.argv else "", None
    parts = first.replace("\\", "/").split("/")
    # python -m sparseflow: sys.argv[0] is "-m" while the package is imported, then the __main__ file's path
    if first == "-m" or parts[-2:] == ["sparseflow", "__main__.py"] or parts[-3:] == ["sparseflow", "cli",
                                                                                      "__main__.py"]:
        at = [i for i, a in enumerate(argv[:-1]) if a == "-m" and argv[i + 1] in ("sparseflow", "sparseflow.cli")]
        args = argv[at[0] + 2 :] if at else None
    elif parts[-1] in _SCRIPTS:
        args = _sys.argv[1:]
    if not args or args[0].startswith("-") or any(a in ("-h", "--help", "--version") for a in args):
        return None
    return args[:2] if len(args) > 1 and not args[1].startswith("-") else args[:1]


def _status_line(erase: bool = False) -> None:
    """``import sparseflow`` takes seconds (PyTorch, then the commands): at a terminal the command line shows
    ``sparseflow train: loading PyTorch…`` at once, and :func:`sparseflow.cli.main` erases it (``erase``) when
    the command starts, so it never mixes with the command's output."""
    words = _command_words()
    if words:
        _sys.stderr.write("\r\033[K" if erase else f"\rsparseflow {' '.join(words)}: loading PyTorch…")
        _sys.stderr.flush()


_status_line()  # before torch loads

from sparseflow.analysis.connectivity import Connectivity, LayerConnectivity, connectivity
from sparseflow.analysis.repair import LayerRepair, RepairReport, apply_repair_, repair_mask
from sparseflow.analysis.signal import LayerSignal, SignalReport, signal
from sparseflow.analysis.size import SizeReport, TensorSize, size_report
from sparseflow.analysis.stain import Stain, stain
from sparseflow.training.data import DATASETS, Dataset, load_dataset, loaders
from sparseflow.distributions import GLOBAL, Global, allocate, er, erk, kept_total, uniform
from sparseflow.errors import DataError, MaskError, PathError, SparseflowError, StorageError
from sparseflow.hopfield import Hopfield, Recall, capacity_theory, corrupt, optimal_threshold, random_patterns
from sparseflow.inference.convert import LayerReport, convert, deconvert, inference_report
from sparseflow.layouts import Layout, layout_of, parameter_layouts, register_layout
from sparseflow.init import VarianceRatios, calibrate_, rescale_, sparse_init_, unit_norms, variance_ratios
from sparseflow.lottery import LotteryJob, LotteryResult, run_lottery
from sparseflow.mask import Mask
from sparseflow.methods import GMP, MASK_SAFE_OPTIMIZERS, MagnitudePruning, Method, RandomSparse
from sparseflow.methods import SNIP, GraSP, SynFlow
from sparseflow.methods import SET, FixedMask, RigL
from sparseflow.methods import LayerPruning, SparseGPT, Wanda
from sparseflow.training.models import MODELS, build_model
from sparseflow.training.gpt import GPT, generate
from sparseflow.training.hf import save_pretrained, to_gpt2
from sparseflow.training.text import TextDataset
from sparseflow.patterns import NM, Block, Unstructured
from sparseflow.schedules import CosineDrop, Cubic, OneShot
from sparseflow.storage import (FileReport, Stored, append_mask, binary_entropy, from_torch_prune, inspect, load,
                                load_mask, load_masks, mask_sequence_bits, read, remove_torch_prune_, save,
                                save_masks, to_torch_prune_)
from sparseflow.sweep.config import Sweep
from sparseflow.sweep.grid import SweepResult, run_sweep
from sparseflow.sweep.executors import LocalExecutor, RayExecutor
from sparseflow.targets import Targets, prunable
from sparseflow.training.loop import Callback, TrainConfig, TrainResult, evaluate, fit
from sparseflow.methods.execution import EXECUTIONS
from sparseflow.methods.sparse_linear import SparseTrainLinear, dense_equivalent

__version__ = "0.1.0"

__all__ = [
    "LayerReport",
    "convert",
    "deconvert",
    "inference_report",
    "Connectivity",
    "LayerConnectivity",
    "connectivity",
    "LayerRepair",
    "RepairReport",
    "apply_repair_",
    "repair_mask",
    "LayerSignal",
    "SignalReport",
    "signal",
    "SizeReport",
    "TensorSize",
    "size_report",
    "Stain",
    "stain",
    "Hopfield",
    "capacity_theory",
    "Recall",
    "corrupt",
    "optimal_threshold",
    "random_patterns",
    "VarianceRatios",
    "calibrate_",
    "rescale_",
    "sparse_init_",
    "unit_norms",
    "variance_ratios",
    "DATASETS",
    "MODELS",
    "Callback",
    "Dataset",
    "EXECUTIONS",
    "SparseTrainLinear",
    "dense_equivalent",
    "GPT",
    "TextDataset",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "evaluate",
    "fit",
    "generate",
    "load_dataset",
    "loaders",
    "save_pretrained",
    "to_gpt2",
    "GLOBAL",
    "GMP",
    "MASK_SAFE_OPTIMIZERS",
    "Block",
    "CosineDrop",
    "Cubic",
    "DataError",
    "Global",
    "MagnitudePruning",
    "LotteryJob",
    "LotteryResult",
    "run_lottery",
    "FixedMask",
    "Mask",
    "MaskError",
    "PathError",
    "Method",
    "NM",
    "OneShot",
    "RandomSparse",
    "SNIP",
    "GraSP",
    "SynFlow",
    "LayerPruning",
    "SparseGPT",
    "Wanda",
    "RigL",
    "SET",
    "SparseflowError",
    "StorageError",
    "FileReport",
    "Stored",
    "append_mask",
    "binary_entropy",
    "from_torch_prune",
    "inspect",
    "load",
    "load_mask",
    "load_masks",
    "mask_sequence_bits",
    "read",
    "remove_torch_prune_",
    "save",
    "save_masks",
    "to_torch_prune_",
    "LocalExecutor",
    "RayExecutor",
    "Sweep",
    "SweepResult",
    "run_sweep",
    "Targets",
    "Layout",
    "layout_of",
    "parameter_layouts",
    "register_layout",
    "Unstructured",
    "__version__",
    "allocate",
    "er",
    "erk",
    "kept_total",
    "prunable",
    "uniform",
]
