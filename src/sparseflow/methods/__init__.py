"""Methods that make networks sparse; see :class:`sparseflow.Method` for the shared API."""

from sparseflow.methods.base import MASK_SAFE_OPTIMIZERS, Method
from sparseflow.methods.dynamic import SET, RigL
from sparseflow.methods.fixed import FixedMask
from sparseflow.methods.oneshot import LayerPruning, SparseGPT, Wanda
from sparseflow.methods.pruning import GMP, MagnitudePruning, RandomSparse
from sparseflow.methods.saliency import SNIP, GraSP, SynFlow

__all__ = ["FixedMask", "LayerPruning", "SparseGPT", "Wanda", "GMP", "MASK_SAFE_OPTIMIZERS", "MagnitudePruning", "Method", "RandomSparse", "SNIP", "GraSP", "SynFlow", "RigL", "SET"]
