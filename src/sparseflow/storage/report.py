"""What a stored file holds, tensor by tensor, against the information-theoretic bound.

:func:`inspect` decodes the file (so every check of :func:`sparseflow.storage.container.read` runs) and
reports per tensor the coded mask size in bits per position beside the i.i.d. bound ``H(p)`` (binary entropy
of the keep fraction ``p``): a ratio below 1 means the codec found structure an i.i.d. model cannot see.
A tied tensor is one entry (it is stored once) listing its other names as ``aliases``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparseflow.storage.codec import binary_entropy
from sparseflow.storage.container import MAX_NUMEL, read

__all__ = ["TensorEntry", "FileReport", "inspect", "binary_entropy"]

_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    kind: str  # "sparse" or "dense"
    shape: tuple[int, ...]
    stored: str  # dtype as written
    numel: int
    nnz: int
    density: float
    codec: str | None
    mask_bytes: int
    values_bytes: int
    bits_per_position: float  # coded mask bits / numel
    bound_bits_per_position: float  # H(density)
    aliases: tuple[str, ...] = ()  # the other names of a tied tensor (stored once, under ``name``)

    @property
    def ratio(self) -> float:
        """Coded mask size over the i.i.d. bound ``numel·H(p)`` (nan for a dense tensor or p in {0, 1})."""
        if self.kind != "sparse" or self.bound_bits_per_position == 0.0:
            return math.nan
        return self.bits_per_position / self.bound_bits_per_position


@dataclass(frozen=True)
class FileReport:
    path: str
    file_bytes: int
    tensors: tuple[TensorEntry, ...]
    meta: dict[str, Any]

    @property
    def mask_bytes(self) -> int:
        return sum(t.mask_bytes for t in self.tensors)

    @property
    def mask_bound_bytes(self) -> float:
        """``Σ N·H(p) / 8`` over the sparse tensors."""
        return sum(t.numel * t.bound_bits_per_position for t in self.tensors if t.kind == "sparse") / 8

    @property
    def values_bytes(self) -> int:
        return sum(t.values_bytes for t in self.tensors)

    @property
    def dense_fp32_bytes(self) -> int:
        """What the same tensors take as dense float32 (4 bytes per element), for comparison."""
        return 4 * sum(t.numel for t in self.tensors)

    def rows(self) -> list[list[str]]:
        out = []
        for t in self.tensors:
            sparse = t.kind == "sparse"
            name = f"{t.name} (= {', '.join(t.aliases)})" if t.aliases else t.name
            out.append([name, "x".join(map(str, t.shape)) or "scalar", _SHORT.get(t.stored, t.stored),
                        f"{t.density:.4f}", t.codec or "dense", f"{t.bits_per_position:.3f}" if sparse else "",
                        f"{t.bound_bits_per_position:.3f}" if sparse else "",
                        f"{t.ratio:.3f}" if sparse and not math.isnan(t.ratio) else "",
                        f"{t.mask_bytes + t.values_bytes:,}"])
        return out

    HEADERS = ("tensor", "shape", "dtype", "density", "codec", "bits/pos", "H(p)", "ratio", "bytes")

    def to_json(self) -> dict[str, Any]:
        bound = self.mask_bound_bytes
        return {
            "path": self.path, "file_bytes": self.file_bytes, "mask_bytes": self.mask_bytes,
            "mask_bound_bytes": bound, "mask_ratio": self.mask_bytes / bound if bound else None,
            "values_bytes": self.values_bytes, "dense_fp32_bytes": self.dense_fp32_bytes,
            "tensors": [asdict(t) | {"ratio": t.ratio} for t in self.tensors], "meta": self.meta,
        }


def inspect(path: str | os.PathLike[str], *, max_numel: int = MAX_NUMEL) -> FileReport:
    """Decode ``path`` (a file written by :func:`sparseflow.save`) and report it tensor by tensor."""
    stored = read(path, max_numel=max_numel)
    aliases: dict[str, list[str]] = {}
    for alias, name in stored.aliases.items():
        aliases.setdefault(name, []).append(alias)
    entries = []
    for name, e in stored.info.items():
        numel = math.prod(e["shape"])
        nnz = e["nnz"] if e["kind"] == "sparse" else numel
        density = nnz / numel if numel else 0.0
        entries.append(TensorEntry(
            name=name, kind=e["kind"], shape=tuple(e["shape"]), stored=e["stored"], numel=numel, nnz=nnz,
            density=density, codec=e.get("codec"), mask_bytes=e["mask_bytes"], values_bytes=e["values_bytes"],
            bits_per_position=8 * e["mask_bytes"] / numel if numel else 0.0,
            bound_bits_per_position=binary_entropy(density) if e["kind"] == "sparse" else 0.0,
            aliases=tuple(aliases.get(name, ()))))
    return FileReport(str(path), Path(path).stat().st_size, tuple(entries), stored.meta)
