"""A sequence of masks in one file, each stored as a delta against the one before.

Lottery-ticket levels are nested (each level keeps a subset of the previous one) and dynamic-training snapshots
differ in a few positions, so a mask given its predecessor carries far less than its own ``log2 C(N, n)``
bits. Level ``k`` of a tensor is coded as two i.i.d. sub-masks (:func:`~sparseflow.storage.codec.encode_iid`):

* which of the previous level's ``n1`` kept positions are still kept (``kept`` of them), and
* which of its ``n0`` pruned positions are now kept (``grown``),

costing ``log2 C(n1, kept) + log2 C(n0, grown)`` bits: the conditional entropy of the new mask under a
two-class model (a nested level has ``grown = 0`` and pays only the first term). Level 0, and any level whose
delta would be larger, is coded on its own with :func:`~sparseflow.storage.codec.encode_mask`.

File: a safetensors file with one uint8 entry per level and tensor, ``"{level}/{name}"``, whose first byte is
0 (full) or 1 (delta); the header metadata ``{"format": "sparseflow-masks", "version": "1", "levels": <json>,
"meta": <json>}`` lists per level and tensor ``shape``, ``nnz``, ``kept`` (deltas) and ``crc32`` of the
decoded mask's packed bits.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as _st_load

from sparseflow.errors import StorageError
from sparseflow.io import atomic_write_bytes
from sparseflow.mask import Mask
from sparseflow.storage.codec import decode_iid, decode_mask, encode_iid, encode_mask
from sparseflow.storage.container import MAX_NUMEL
from sparseflow.storage.framing import header as _header
from sparseflow.storage.framing import to_bytes

__all__ = ["save_masks", "load_masks", "append_mask", "mask_sequence_bits"]

FORMAT = "sparseflow-masks"
VERSION = "1"
_FULL, _DELTA = 0, 1


def _crc(m: np.ndarray) -> int:
    """CRC-32 of the shape, then the packed bits: a reshaped mask fails it too."""
    return zlib.crc32(np.packbits(m.reshape(-1)).tobytes(), zlib.crc32(json.dumps(list(m.shape)).encode()))


def _encode_delta(prev: np.ndarray, cur: np.ndarray) -> tuple[bytes, int]:
    stay = encode_iid(cur[prev])  # over the previous kept positions
    grow = encode_iid(cur[~prev])  # over the previous pruned positions
    return bytes([_DELTA]) + struct.pack("<I", len(stay)) + stay + grow, int(np.count_nonzero(cur[prev]))


def _decode_delta(body: bytes, prev: np.ndarray, nnz: int, kept: int) -> np.ndarray:
    if len(body) < 4:
        raise StorageError("delta payload is truncated (no length field)")
    (n_stay,) = struct.unpack("<I", body[:4])
    if n_stay > len(body) - 4:
        raise StorageError(f"delta payload says its first part has {n_stay} bytes but only {len(body) - 4} follow")
    n1 = int(np.count_nonzero(prev))
    if not 0 <= kept <= min(n1, nnz) or nnz - kept > prev.size - n1:
        raise StorageError(f"delta keeps {kept} of the previous {n1} and grows {nnz - kept} of "
                           f"{prev.size - n1}, which is impossible")
    out = np.zeros_like(prev)
    out[prev] = decode_iid(body[4 : 4 + n_stay], n1, kept)
    out[~prev] = decode_iid(body[4 + n_stay :], prev.size - n1, nnz - kept)
    return out


def _as_numpy(mask: Mask | Mapping[str, torch.Tensor], level: int) -> dict[str, np.ndarray]:
    out = {}
    for name, m in mask.items():
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise StorageError(f"level {level}: mask for {name!r} must be a bool tensor, got "
                               f"{getattr(m, 'dtype', type(m).__name__)}")
        out[name] = m.detach().cpu().numpy()
    return out


def save_masks(path: str | os.PathLike[str], masks: Sequence[Mask | Mapping[str, torch.Tensor]], *,
               meta: Mapping[str, Any] | None = None) -> list[dict[str, dict[str, Any]]]:
    """Write ``masks`` (same tensor names and shapes at every level) as deltas; atomic, no pickle.

    Returns per level and tensor the metadata written, including ``bytes`` (the coded size).
    """
    if not masks:
        raise StorageError("save_masks needs at least one mask")
    levels = [_as_numpy(m, k) for k, m in enumerate(masks)]
    first = levels[0]
    for k, lv in enumerate(levels[1:], start=1):
        if set(lv) != set(first):
            raise StorageError(f"level {k} masks tensors {sorted(lv)[:6]} but level 0 masks {sorted(first)[:6]}; "
                               "every level must mask the same tensors")
        for name, m in lv.items():
            if m.shape != first[name].shape:
                raise StorageError(f"level {k}: mask for {name!r} has shape {m.shape}, level 0 has "
                                   f"{first[name].shape}")
    tensors: dict[str, torch.Tensor] = {}
    info: list[dict[str, dict[str, Any]]] = []
    for k, lv in enumerate(levels):
        entries = {}
        for name, m in lv.items():
            payload, e = bytes([_FULL]) + encode_mask(m), {"shape": list(m.shape), "nnz": int(np.count_nonzero(m))}
            if k > 0:
                delta, kept = _encode_delta(levels[k - 1][name].reshape(-1), m.reshape(-1))
                if len(delta) < len(payload):
                    payload, e["kept"] = delta, kept
            e["crc32"] = _crc(m)
            tensors[f"{k}/{name}"] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            entries[name] = e | {"bytes": len(payload)}
        info.append(entries)
    try:
        meta_json = json.dumps(dict(meta or {}), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StorageError(f"meta must be a JSON-serialisable dict of finite values ({e})") from None
    header = {"format": FORMAT, "version": VERSION, "levels": json.dumps(info), "meta": meta_json}
    atomic_write_bytes(path, to_bytes(tensors, header))
    return info


def load_masks(path: str | os.PathLike[str], *, max_numel: int = MAX_NUMEL) -> list[Mask]:
    """Read every level of a file written by :func:`save_masks`, checking counts and checksums."""
    where = str(path)
    if not Path(path).is_file():
        raise StorageError(f"{where!r} does not exist or is not a file; pass a file written by save_masks")
    data = Path(path).read_bytes()
    meta = _header(data, where).get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StorageError(f"{where}: not a sparseflow mask-sequence file; write one with save_masks")
    if meta.get("version") != VERSION:
        raise StorageError(f"{where}: format version {meta.get('version')!r} is not supported (reads {VERSION})")
    try:
        levels = json.loads(meta["levels"])
        raw = _st_load(data)
    except Exception as e:  # JSON or safetensors framing
        raise StorageError(f"{where}: file is truncated or corrupted ({e})") from None
    if not isinstance(levels, list) or not levels:
        raise StorageError(f"{where}: header lists no levels; the file is corrupted")
    out: list[Mask] = []
    prev: dict[str, np.ndarray] = {}
    for k, entries in enumerate(levels):
        if not isinstance(entries, dict) or (k and set(entries) != set(prev)):
            raise StorageError(f"{where}: level {k} lists different tensors from level 0; the file is corrupted")
        cur: dict[str, np.ndarray] = {}
        for name, e in entries.items():
            cur[name] = _decode_level(f"{where}: level {k}, tensor {name!r}", e, raw.get(f"{k}/{name}"),
                                      prev.get(name), max_numel)
        out.append(Mask({n: torch.from_numpy(m) for n, m in cur.items()}))
        prev = cur
    return out


def _decode_level(where: str, e: Any, payload: torch.Tensor | None, prev: np.ndarray | None,
                  max_numel: int) -> np.ndarray:
    if not isinstance(e, dict) or not isinstance(e.get("shape"), list) or type(e.get("nnz")) is not int:
        raise StorageError(f"{where}: metadata entry is malformed")
    shape = tuple(e["shape"])
    if (len(shape) > 8 or not all(type(s) is int and 0 <= s <= max_numel for s in shape)
            or math.prod(shape) > max_numel):
        raise StorageError(f"{where}: shape {list(shape)} is invalid or over the limit of {max_numel} elements")
    if payload is None or payload.dtype != torch.uint8 or payload.dim() != 1 or payload.numel() < 1:
        raise StorageError(f"{where}: coded mask entry is missing or not 1-D uint8")
    body = payload.numpy().tobytes()
    try:
        if body[0] == _FULL:
            m = decode_mask(body[1:], shape, e["nnz"])
        elif body[0] == _DELTA and prev is not None and prev.shape == shape and type(e.get("kept")) is int:
            m = _decode_delta(body[1:], prev.reshape(-1), e["nnz"], e["kept"]).reshape(shape)
        else:
            raise StorageError(f"payload kind {body[0]} is unknown or has no previous level to apply to")
    except StorageError as err:
        raise StorageError(f"{where}: {err}") from None
    if _crc(m) != e.get("crc32"):
        raise StorageError(f"{where}: checksum mismatch: the decoded mask differs from the one saved")
    return m


def append_mask(path: str | os.PathLike[str], mask: Mask | Mapping[str, torch.Tensor], *,
                meta: Mapping[str, Any] | None = None) -> list[dict[str, dict[str, Any]]]:
    """Add ``mask`` as a new last level (creating the file if it does not exist); rewrites atomically."""
    masks: list[Mask | Mapping[str, torch.Tensor]] = list(load_masks(path)) if Path(path).exists() else []
    return save_masks(path, [*masks, mask], meta=meta)


def mask_sequence_bits(masks: Sequence[Mask | Mapping[str, torch.Tensor]]) -> list[float]:
    """Per level, the two-class conditional bound ``Σ log2 C(n1, kept) + log2 C(n0, grown)`` in bits
    (level 0: ``Σ log2 C(N, n)``) that :func:`save_masks` approaches."""
    from sparseflow.storage.codec import iid_bound_bits

    out, prev = [], None
    for k, m in enumerate(masks):
        cur = _as_numpy(m, k)
        bits = 0.0
        for name, a in cur.items():
            if prev is None:
                bits += iid_bound_bits(a.size, int(np.count_nonzero(a)))
            else:
                p = prev[name].reshape(-1)
                a = a.reshape(-1)
                n1 = int(np.count_nonzero(p))
                bits += iid_bound_bits(n1, int(np.count_nonzero(a[p])))
                bits += iid_bound_bits(a.size - n1, int(np.count_nonzero(a[~p])))
        out.append(bits)
        prev = cur
    return out
