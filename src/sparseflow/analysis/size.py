"""How many bytes a sparse model takes: the information bound, our ``.sfz`` file, and the 1-bit-mask count.

Per tensor of ``N`` weights with ``n`` kept (density ``p = n/N``) and ``b_w`` bits per stored value:

* **bound**: ``p·N·b_w + N·H(p)`` bits, the kept values plus the entropy of an i.i.d. mask with that density
  (``H`` the binary entropy); ``N·b_w`` for a tensor that is not a sparse candidate (integer buffers, scalars).
* **actual**: the bytes this tensor takes in the file :func:`sparseflow.storage.container.save` writes, the
  coded mask (:func:`sparseflow.storage.codec.encode_mask`) plus ``n`` values, or ``N`` values when stored
  dense. The decision is the container's: sparse when the tensor has a mask, else when that is smaller than
  dense. The file's safetensors header (a few hundred bytes of JSON) is not included.
* **1-bit mask**: ``n·b_w + N`` bits for a layer with pruned weights, ``N·b_w`` otherwise: the accounting of
  the MicroNet counting code behind RigL's ResNet-50 size table (Evci et al. 2020, "Rigging the Lottery",
  README of google-research/rigl), a bitmap next to the dense list of kept values.

The mask semantics are those of ``save``: ``mask`` names the tensors to treat as sparse (values outside it
must be zero); other floating tensors count as sparse when storing their nonzeros is smaller.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sparseflow.errors import StorageError
from sparseflow.mask import Mask
from sparseflow.storage.codec import CODEC_NAMES, encode_mask
from sparseflow.storage.codec import binary_entropy
from sparseflow.storage.container import _resolve_dtype, state_and_masks

__all__ = ["TensorSize", "SizeReport", "size_report"]


@dataclass(frozen=True)
class TensorSize:
    """One tensor. ``kind`` is how the file stores it (sparse/dense); ``codec`` names its mask coder."""

    name: str
    shape: tuple[int, ...]
    numel: int
    nnz: int
    value_bits: int
    kind: str
    codec: str | None
    mask_bytes: int
    values_bytes: int
    bound_bits: float
    onebit_bits: int

    @property
    def density(self) -> float:
        return self.nnz / self.numel if self.numel else 1.0

    @property
    def actual_bytes(self) -> int:
        return self.mask_bytes + self.values_bytes

    @property
    def dense_bytes(self) -> int:
        return self.numel * self.value_bits // 8


@dataclass(frozen=True)
class SizeReport:
    """Per-tensor rows (state-dict order) and totals in bytes; ``dtype`` is the stored value dtype or None."""

    tensors: tuple[TensorSize, ...]
    dtype: str | None

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def nnz(self) -> int:
        return sum(t.nnz for t in self.tensors)

    @property
    def dense_bytes(self) -> int:
        """Every tensor stored dense at its stored dtype."""
        return sum(t.dense_bytes for t in self.tensors)

    @property
    def bound_bytes(self) -> float:
        return sum(t.bound_bits for t in self.tensors) / 8

    @property
    def actual_bytes(self) -> int:
        return sum(t.actual_bytes for t in self.tensors)

    @property
    def mask_bytes(self) -> int:
        return sum(t.mask_bytes for t in self.tensors)

    @property
    def onebit_bytes(self) -> float:
        return sum(t.onebit_bits for t in self.tensors) / 8

    def to_json(self) -> dict[str, Any]:
        rows = []
        for t in self.tensors:
            row = asdict(t)
            row |= {"shape": list(t.shape), "density": t.density, "actual_bytes": t.actual_bytes,
                    "bound_bytes": t.bound_bits / 8, "onebit_bytes": t.onebit_bits / 8}
            rows.append(row)
        return {"tensors": rows, "dtype": self.dtype, "numel": self.numel, "nnz": self.nnz,
                "dense_bytes": self.dense_bytes, "bound_bytes": self.bound_bytes, "actual_bytes": self.actual_bytes,
                "mask_bytes": self.mask_bytes, "onebit_bytes": self.onebit_bytes}

    def markdown(self) -> str:
        from sparseflow.training.report import md_table

        header = ["tensor", "shape", "N", "nnz", "density", "b_w", "stored", "bound B", "file B", "1-bit-mask B"]
        body = [[t.name, "x".join(map(str, t.shape)) or "scalar", t.numel, t.nnz, f"{t.density:.4f}", t.value_bits,
                 t.kind if t.codec is None else f"{t.kind} ({t.codec})", f"{t.bound_bits / 8:,.0f}",
                 f"{t.actual_bytes:,}", f"{t.onebit_bits / 8:,.0f}"] for t in self.tensors]
        return md_table(header, body) + "\n\n" + self.summary() + "\n"

    def summary(self) -> str:
        mb = 1e6
        return (f"{self.numel:,} weights, {self.nnz:,} kept; dense {self.dense_bytes / mb:.3f} MB, bound "
                f"{self.bound_bytes / mb:.3f} MB, file {self.actual_bytes / mb:.3f} MB (masks "
                f"{self.mask_bytes / mb:.3f} MB, header not included), 1-bit-mask accounting "
                f"{self.onebit_bytes / mb:.3f} MB (MB = 1e6 bytes)")

    def __str__(self) -> str:
        return json.dumps(self.to_json(), indent=1)


def _one(name: str, t: Tensor, m: Tensor | None, given: bool, target: torch.dtype) -> TensorSize:
    value = t.detach().to("cpu").to(target)
    numel, item = value.numel(), value.element_size()
    bits = 8 * item
    if m is not None and given and numel:
        outside = int(torch.count_nonzero(value[~m]))
        if outside:
            raise StorageError(f"tensor {name!r} has {outside} nonzero values outside its mask; apply the mask "
                               "first (mask.apply_(model)) or pass no mask to count the nonzeros")
    candidate = m is not None or (value.is_floating_point() and numel > 1 and value.dim() >= 1)
    if m is None and candidate:
        m = value != 0
    shape = tuple(value.shape)
    if not candidate or not numel:
        return TensorSize(name, shape, numel, numel, bits, "dense", None, 0, numel * item, numel * bits,
                          numel * bits)
    nnz = int(torch.count_nonzero(m))
    p = nnz / numel
    bound = p * numel * bits + numel * binary_entropy(p)
    payload = encode_mask(m.numpy())
    sparse_bytes = len(payload) + nnz * item
    if given or sparse_bytes < numel * item:  # the container's rule
        kind, codec, mask_bytes, values_bytes = "sparse", CODEC_NAMES[payload[0]], len(payload), nnz * item
    else:
        kind, codec, mask_bytes, values_bytes = "dense", None, 0, numel * item
    onebit = nnz * bits + numel if kind == "sparse" and nnz < numel else numel * bits
    return TensorSize(name, shape, numel, nnz, bits, kind, codec, mask_bytes, values_bytes, bound, onebit)


@torch.no_grad()
def size_report(
    model: nn.Module | Mapping[str, Tensor],
    *,
    mask: Mask | Mapping[str, Tensor] | None = None,
    dtype: str | torch.dtype | None = None,
) -> SizeReport:
    """Bound, file bytes and 1-bit-mask bytes of every tensor of ``model`` (see the module docstring).

    ``mask`` and ``dtype`` mean what they mean to :func:`sparseflow.storage.container.save`: ``dtype`` is
    ``"fp32"``, ``"fp16"`` or ``"bf16"`` for every floating tensor, None keeps each tensor's own.
    Raises StorageError for a mask that names no tensor, has the wrong shape, or leaves nonzeros outside it.
    """
    stored = _resolve_dtype(dtype)
    state, masks = state_and_masks(model, mask)
    given = set(masks)
    rows = []
    for name, t in state.items():
        target = stored if (stored is not None and t.is_floating_point()) else t.dtype
        rows.append(_one(name, t, masks.get(name), name in given, target))
    label = None if stored is None else str(stored).removeprefix("torch.")
    return SizeReport(tuple(rows), label)
