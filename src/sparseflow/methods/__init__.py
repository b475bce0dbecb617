"""Methods that make networks sparse; see :class:`sparseflow.Method` for the shared API."""

from sparseflow.methods.base import MASK_SAFE_OPTIMIZERS, Method
from sparseflow.methods.pruning import GMP, MagnitudePruning, RandomSparse

__all__ = ["GMP", "MASK_SAFE_OPTIMIZERS", "MagnitudePruning", "Method", "RandomSparse"]
