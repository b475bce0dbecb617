"""Lossless coding of stored values by byte planes (``sparseflow.save(..., compress_values=True)``).

Floating-point weights are far from uniform bytes: the high byte of an fp32 weight holds the sign and seven
exponent bits, and trained or Gaussian weights use a handful of exponents, so that byte carries ~4 bits
instead of 8; the mantissa bytes stay close to uniform. Each byte plane (byte j of every value, little-endian
as safetensors stores them) is coded on its own with a static categorical model, its 256-entry histogram
(the exact counts, stored), under ANS (``constriction``); a plane that would not shrink by 3 % is kept raw.

Payload: ``[1][itemsize][mode per plane]`` then per plane either the raw bytes (mode 0) or the histogram
(256 little-endian uint32, summing to the value count), a uint32 length and the ANS words (mode 1).
The decoder checks the histogram's sum, each plane's sentinel and that no bytes are left over.
"""

from __future__ import annotations

import struct

import numpy as np
import torch
from constriction import stream
from torch import Tensor

from sparseflow.errors import StorageError
from sparseflow.storage.codec import ans_encode, ans_finish, ans_words

__all__ = ["encode_values", "decode_values", "MIN_VALUES"]

MIN_VALUES = 4096  # below this the 1 KB histogram per plane costs more than it saves
_VERSION, _RAW, _CODED = 1, 0, 1


def _entropy_bits(counts: np.ndarray) -> float:
    n = counts.sum()
    p = counts[counts > 0] / n
    return float(-(counts[counts > 0] * np.log2(p)).sum())


def encode_values(values: Tensor) -> bytes | None:
    """Payload for a 1-D tensor's values, or None when it would not be smaller than their raw bytes."""
    flat = values.detach().contiguous().reshape(-1)
    n, item = flat.numel(), flat.element_size()
    if n < MIN_VALUES:
        return None
    planes = flat.view(torch.uint8).numpy().reshape(n, item)
    modes, parts = [], []
    for j in range(item):
        plane = np.ascontiguousarray(planes[:, j])
        counts = np.bincount(plane, minlength=256)
        if _entropy_bits(counts) + 8 * (1024 + 64) < 0.97 * 8 * n:
            model = stream.model.Categorical(counts.astype(np.float64), perfect=False)
            words = ans_encode(plane.astype(np.int32), model)
            modes.append(_CODED)
            parts.append(counts.astype("<u4").tobytes() + struct.pack("<I", len(words)) + words)
        else:
            modes.append(_RAW)
            parts.append(plane.tobytes())
    if _CODED not in modes:
        return None
    payload = bytes([_VERSION, item, *modes]) + b"".join(parts)
    return payload if len(payload) < n * item else None


def decode_values(payload: bytes, n: int, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`encode_values`: ``n`` values of ``dtype`` (the count comes from the file's header)."""
    item = torch.empty((), dtype=dtype).element_size()
    if len(payload) < 2 + item or payload[0] != _VERSION or payload[1] != item:
        raise StorageError(f"coded values payload does not start with version {_VERSION} and item size {item}")
    out = np.empty((n, item), dtype=np.uint8)
    pos = 2 + item
    for j, mode in enumerate(payload[2 : 2 + item]):
        if mode == _RAW:
            if len(payload) - pos < n:
                raise StorageError(f"coded values payload is truncated in byte plane {j}")
            out[:, j] = np.frombuffer(payload, dtype=np.uint8, count=n, offset=pos)
            pos += n
        elif mode == _CODED:
            if len(payload) - pos < 1028:
                raise StorageError(f"coded values payload is truncated in byte plane {j}'s histogram")
            counts = np.frombuffer(payload, dtype="<u4", count=256, offset=pos).astype(np.int64)
            (length,) = struct.unpack_from("<I", payload, pos + 1024)
            pos += 1028
            if int(counts.sum()) != n:
                raise StorageError(f"byte plane {j}'s histogram counts {int(counts.sum())} values, the header says {n}")
            if length > len(payload) - pos:
                raise StorageError(f"coded values payload is truncated in byte plane {j}")
            words = ans_words(payload[pos : pos + length], f"byte plane {j}")
            pos += length
            try:
                decoder = stream.stack.AnsCoder(words)
                symbols = decoder.decode(stream.model.Categorical(counts.astype(np.float64), perfect=False), n)
            except (ValueError, RuntimeError, OverflowError) as e:
                raise StorageError(f"byte plane {j} does not decode ({e})") from None
            ans_finish(decoder, f"byte plane {j}")
            if symbols.size and (symbols.min() < 0 or symbols.max() > 255):
                raise StorageError(f"byte plane {j} decodes to a value outside 0..255")
            out[:, j] = symbols
        else:
            raise StorageError(f"byte plane {j} has unknown mode {mode}")
    if pos != len(payload):
        raise StorageError(f"coded values payload has {len(payload) - pos} bytes left over (corrupted)")
    return torch.from_numpy(out.reshape(-1)).view(dtype)
