"""Result of ``sparseflow bench storage``: its rows and the criteria computed from them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from sparseflow.bench.storage.config import StorageConfig

MB = 1e6
LAYER_FORMATS = ("ours (.sfz)", "ours, values coded", "bound", "torch.save dense", "safetensors dense", "torch.save CSR",
                 "CSR int32 raw", "scipy save_npz", "zstd bitmap+values", "zstd bitmap, raw values")
TARGET_90_MB = 7.72  # 4096^2 at 90 % sparsity, fp32; scaled by numel for another side
FULL_NUMEL = 4096 * 4096


@dataclass(frozen=True)
class LayerRow:
    sparsity: float
    numel: int
    nnz: int
    bytes: dict[str, float]  # format -> bytes (LAYER_FORMATS)
    zstd_s: float  # compression time of the zstd rows


@dataclass(frozen=True)
class CodeRow:
    density: float
    numel: int
    nnz: int
    codec: str
    payload_bytes: int
    bound_bytes: float


@dataclass(frozen=True)
class SpeedRow:
    density: float
    numel: int
    encode_mps: float  # million mask positions per second
    decode_mps: float


@dataclass(frozen=True)
class ResNetRow:
    distribution: str
    sparsity: float
    numel: int
    nnz: int
    onebit_bytes: float
    bound_bytes: float
    file_fp32: int
    file_fp16: int
    rigl_bytes: float | None


@dataclass(frozen=True)
class StorageBench:
    config: StorageConfig
    threads: int
    layer: tuple[LayerRow, ...]
    coding: tuple[CodeRow, ...]
    nm: CodeRow
    speed: tuple[SpeedRow, ...]
    resnet: tuple[ResNetRow, ...]
    notes: tuple[str, ...] = field(default=())

    def criteria(self) -> dict[str, dict[str, object]]:
        return criteria(self)

    def record(self) -> dict[str, Any]:
        """What result.json holds: every row, the measurement settings and the criteria."""
        return {**asdict(self), "config": self.config.settings(), "criteria": criteria(self)}

    def to_json(self) -> dict[str, Any]:
        return {"command": "bench storage", "quick": self.config.quick, "torch": torch.__version__, **self.record()}


def _crit(value: float, target: str, ok: bool) -> dict[str, object]:
    return {"value": round(value, 6), "target": target, "pass": bool(ok)}


def criteria(b: StorageBench) -> dict[str, dict[str, object]]:
    """Each goal, computed from the rows of ``b`` (targets scale with the tensor size where they depend on it)."""
    out: dict[str, dict[str, object]] = {}
    for r in b.layer:
        if abs(r.sparsity - 0.9) < 1e-9:
            target = TARGET_90_MB * r.numel / FULL_NUMEL
            out[f"file, {b.config.side}^2 fp32 at 90 % (MB)"] = _crit(
                r.bytes["ours (.sfz)"] / MB, f"<= {target:.4g} MB (bound {r.bytes['bound'] / MB:.4f} MB)",
                r.bytes["ours (.sfz)"] / MB <= target)
    for label, rows in (("0.005-0.5", [c for c in b.coding if c.density <= 0.5]),
                        ("above 0.5", [c for c in b.coding if c.density > 0.5])):
        if rows:
            worst = max(rows, key=lambda c: c.payload_bytes - (1.002 * c.bound_bytes + 64))
            out[f"mask bytes / log2 C(N,nnz), densities {label} (worst)"] = _crit(
                worst.payload_bytes / worst.bound_bytes,
                f"payload <= 1.002 x bound + 64 B (worst at p={worst.density:g})",
                all(c.payload_bytes <= 1.002 * c.bound_bytes + 64 for c in rows))
    if b.speed:
        enc, dec = min(s.encode_mps for s in b.speed), min(s.decode_mps for s in b.speed)
        ps = f"p <= {max(s.density for s in b.speed):g}, {b.threads} thread(s)"
        out["mask encode (M positions/s, slowest)"] = _crit(enc, f">= 200 ({ps})", enc >= 200)
        out["mask decode (M positions/s, slowest)"] = _crit(dec, f">= 100 ({ps})", dec >= 100)
    bits = 8 * b.nm.payload_bytes / b.nm.numel
    out["2:4 mask (bits per position)"] = _crit(bits, f"<= 1.002 x {math.log2(6) / 4:.4f}",
                                                bits <= 1.002 * math.log2(6) / 4)
    for r in b.resnet:
        if r.rigl_bytes is not None:
            rel = r.onebit_bytes / r.rigl_bytes - 1
            out[f"ResNet-50 {r.distribution} {r.sparsity:g}, 1-bit-mask accounting vs RigL"] = _crit(
                rel, f"|rel. diff| <= 0.04 (RigL {r.rigl_bytes / MB:.3f} MB)", abs(rel) <= 0.04)
    return out
