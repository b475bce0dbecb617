"""The safetensors framing of sparseflow's files: a bounded header reader and a deterministic writer.

safetensors keeps its header metadata in a hash map whose iteration order is seeded at random, so the same
tensors and metadata written twice (even in one process) come out as different bytes. :func:`to_bytes`
rewrites that header with the metadata keys in the caller's order (the tensor entries keep safetensors' own
order, which depends only on their dtypes and names), so equal inputs always give equal files: a file's
hash identifies its content, and a re-export of an unchanged model leaves the file unchanged.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Mapping

from safetensors.torch import save as _st_save
from torch import Tensor

from sparseflow.errors import StorageError

__all__ = ["to_bytes", "header", "MAX_HEADER"]

MAX_HEADER = 100 * 2**20  # safetensors' own cap on the JSON header


def to_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file of ``tensors`` whose bytes depend only on the tensors and ``metadata`` (in order)."""
    data = _st_save(dict(tensors), metadata=dict(metadata))
    (n,) = struct.unpack("<Q", data[:8])
    head = json.loads(data[8 : 8 + n])
    head["__metadata__"] = dict(metadata)  # the caller's key order, not the hash map's
    ordered = {"__metadata__": head.pop("__metadata__"), **head}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes so the data stays aligned
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def header(data: bytes, where: str) -> dict[str, Any]:
    """The safetensors JSON header, read with explicit bounds before handing the bytes to safetensors."""
    if len(data) < 8:
        raise StorageError(f"{where}: file is {len(data)} bytes, too short for a safetensors header (truncated?)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(len(data) - 8, MAX_HEADER):
        raise StorageError(f"{where}: header claims {n} bytes but the file has {len(data) - 8} after the length "
                           "field (truncated or not a safetensors file)")
    try:
        parsed = json.loads(data[8 : 8 + n])
    except (ValueError, RecursionError) as e:  # also 5000-digit ints (ValueError) and deep nesting
        raise StorageError(f"{where}: header is not valid JSON ({e}); the file is corrupted") from None
    if not isinstance(parsed, dict):
        raise StorageError(f"{where}: header is not a JSON object; the file is corrupted")
    return parsed
