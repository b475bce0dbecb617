"""Sparse checkpoints at the information content of their masks; see :mod:`sparseflow.storage.container`."""
