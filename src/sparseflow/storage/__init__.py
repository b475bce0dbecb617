"""Sparse checkpoints at the information content of their masks.

``save``/``load`` write and read ``.sfz`` files (safetensors; entropy-coded masks, kept values, tied tensors
once, no pickle; see :mod:`sparseflow.storage.container`, :mod:`sparseflow.storage.state` for what is
stored and :mod:`sparseflow.storage.loading`), ``load_mask`` returns the masks a file was saved with,
``save_masks``/``load_masks`` a sequence of masks as deltas (:mod:`sparseflow.storage.sequence`),
``inspect`` reports a file against the entropy bound, and :mod:`sparseflow.storage.interop` converts masks
to and from ``torch.nn.utils.prune``.
"""

from sparseflow.storage.container import Stored, read, save
from sparseflow.storage.loading import load, load_mask
from sparseflow.storage.codec import binary_entropy
from sparseflow.storage.report import FileReport, inspect
from sparseflow.storage.interop import from_torch_prune, remove_torch_prune_, to_torch_prune_
from sparseflow.storage.sequence import append_mask, load_masks, mask_sequence_bits, save_masks

__all__ = ["Stored", "load", "load_mask", "read", "save", "FileReport", "binary_entropy", "inspect",
           "from_torch_prune", "remove_torch_prune_", "to_torch_prune_", "append_mask", "load_masks",
           "mask_sequence_bits", "save_masks"]
