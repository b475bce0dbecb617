"""sparseflow: sparse neural networks in PyTorch.

Create sparse networks (pruning, sparse-from-scratch, dynamic sparse training), keep their signal alive,
store them at their information content and run them fast. The public API is flat::

    import sparseflow as sf
    method = sf.GMP(sparsity=0.9, end=1000)
"""

from sparseflow.analysis.connectivity import Connectivity, LayerConnectivity, connectivity
from sparseflow.analysis.repair import LayerRepair, RepairReport, apply_repair_, repair_mask
from sparseflow.analysis.signal import LayerSignal, SignalReport, signal
from sparseflow.analysis.size import SizeReport, TensorSize, size_report
from sparseflow.analysis.stain import Stain, stain
from sparseflow.training.data import DATASETS, Dataset, load_dataset, loaders
from sparseflow.distributions import GLOBAL, Global, allocate, er, erk, kept_total, uniform
from sparseflow.errors import DataError, MaskError, SparseflowError, StorageError
from sparseflow.hopfield import Hopfield, Recall, corrupt, optimal_threshold, random_patterns
from sparseflow.inference.convert import LayerReport, convert, deconvert, inference_report
from sparseflow.layouts import Layout, layout_of, parameter_layouts, register_layout
from sparseflow.init import VarianceRatios, calibrate_, rescale_, sparse_init_, variance_ratios
from sparseflow.lottery import LotteryJob, LotteryResult, run_lottery
from sparseflow.mask import Mask
from sparseflow.methods import GMP, MASK_SAFE_OPTIMIZERS, MagnitudePruning, Method, RandomSparse
from sparseflow.methods import SNIP, GraSP, SynFlow
from sparseflow.methods import SET, FixedMask, RigL
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
    "Recall",
    "corrupt",
    "optimal_threshold",
    "random_patterns",
    "VarianceRatios",
    "calibrate_",
    "rescale_",
    "sparse_init_",
    "variance_ratios",
    "DATASETS",
    "MODELS",
    "Callback",
    "Dataset",
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
    "Method",
    "NM",
    "OneShot",
    "RandomSparse",
    "SNIP",
    "GraSP",
    "SynFlow",
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
