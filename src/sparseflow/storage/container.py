"""The ``.sfz`` file: a sparse model as one safetensors file, masks entropy-coded, no pickle.

Layout (any safetensors reader can list it):

* a sparse tensor ``name`` is two entries: ``name::mask`` (uint8: the coded mask, first byte = codec, see
  :mod:`sparseflow.storage.codec`) and ``name::values`` (1-D, the kept values in row-major order, in the
  stored dtype: float32, float16 or bfloat16);
* a dense tensor (biases, norms, buffers) is stored as itself under ``name``;
* the header metadata ``{"format": "sparseflow-sparse", "version": "1", "tensors": <json>, "meta": <json>}``
  gives, per tensor, ``kind`` (sparse/dense), ``shape``, ``dtype`` (as saved), ``stored`` (as written),
  ``nnz``, ``density``, ``codec`` and ``crc32``, the checksum of the decoded tensor in the stored dtype.

Loading checks, in order, and names the tensor and the failed check on the first failure: the safetensors
framing (bounded header, offsets inside the file), the format and version, every shape against
``max_numel`` (so a forged header cannot make the loader allocate more than the caps allow), the entries each
tensor needs and their dtypes and lengths, the decoded mask's kept count, and the checksum. A file that passes
decodes to exactly the tensors that were saved.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import Tensor, nn

from sparseflow.errors import StorageError
from sparseflow.io import atomic_write_bytes
from sparseflow.mask import Mask
from sparseflow.storage.codec import CODEC_NAMES, decode_mask, encode_mask
from sparseflow.storage.values import decode_values, encode_values

__all__ = ["save", "load", "load_mask", "read", "read_bytes", "is_sparse_file", "Stored", "DTYPES", "MAX_NUMEL", "FORMAT", "VERSION"]

FORMAT = "sparseflow-sparse"
VERSION = "1"
MASK_SUFFIX, VALUES_SUFFIX = "::mask", "::values"
VALUES_CODEC = "planes"  # header "values" of an entry whose values are coded (absent: stored as themselves)
# Names accepted for the stored value dtype (CLI strings and torch dtypes both map here).
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_TORCH_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool)}
MAX_NUMEL = 2**31  # per tensor, unless the caller raises it
_MAX_HEADER = 100 * 2**20  # safetensors' own cap on the JSON header


@dataclass(frozen=True)
class Stored:
    """What :func:`read` returns: the decoded tensors (as saved), the masks of the sparse ones, per-tensor
    metadata (the header's ``tensors`` entry plus ``mask_bytes`` and ``values_bytes``) and the user's meta."""

    tensors: dict[str, Tensor]
    mask: Mask
    info: dict[str, dict[str, Any]]
    meta: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Saving.


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or dtype in _DTYPE_NAMES:
        return dtype  # type: ignore[return-value]
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise StorageError(f"dtype {dtype!r} is not storable; use one of {sorted(DTYPES)} (or None to keep each "
                       "tensor's own floating dtype)")


def _state_of(obj: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(obj, nn.Module):
        state = dict(obj.state_dict())
    elif isinstance(obj, Mapping):
        state = dict(obj)
    else:
        raise StorageError(f"save needs an nn.Module or a state dict, got {type(obj).__name__}")
    for name, t in state.items():
        if not isinstance(name, str) or not isinstance(t, Tensor):
            raise StorageError(f"state entry {name!r} is a {type(t).__name__}, not a tensor; save stores tensors only")
        if name.endswith((MASK_SUFFIX, VALUES_SUFFIX)):
            raise StorageError(f"tensor name {name!r} ends in a suffix reserved for the file layout; rename it")
        if t.dtype not in _TORCH_DTYPES.values():
            raise StorageError(f"tensor {name!r} has dtype {t.dtype}, which the file format does not store")
    return _fold_torch_prune(state)


def _fold_torch_prune(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``x_orig`` + ``x_mask`` (torch.nn.utils.prune) -> ``x`` with zeros outside the mask, and its mask."""
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        if name.endswith("_orig") and name[: -len("_orig")] + "_mask" in state:
            base = name[: -len("_orig")]
            out[base] = t * state[base + "_mask"].to(t.dtype)
            out[base + "\0mask"] = state[base + "_mask"] != 0  # carried to save() below, never written
        elif not (name.endswith("_mask") and name[: -len("_mask")] + "_orig" in state):
            out[name] = t
    return out


def state_and_masks(model: nn.Module | Mapping[str, Tensor], mask: Mask | Mapping[str, Tensor] | None
                    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The tensors :func:`save` stores and the masks it was given (torch.nn.utils.prune ones folded in),
    each mask checked against its tensor's name and shape."""
    state = _state_of(model)
    masks = {n[: -len("\0mask")]: state.pop(n) for n in list(state) if n.endswith("\0mask")}
    for name, m in (mask or {}).items():
        if name not in state:
            raise StorageError(f"mask names {name!r}, which is not a tensor of the model; tensors: "
                               f"{list(state)[:8]}{'...' if len(state) > 8 else ''}")
        if tuple(m.shape) != tuple(state[name].shape):
            raise StorageError(f"mask for {name!r} has shape {tuple(m.shape)} but the tensor has shape "
                               f"{tuple(state[name].shape)}")
        masks[name] = m.detach().to("cpu", torch.bool)
    return state, masks


def _dense_bytes(value: Tensor, compress: bool) -> int:
    """What ``value`` costs stored dense (coded by byte planes when asked, as the dense path would)."""
    raw = value.numel() * value.element_size()
    packed = _packed(value, compress)
    return raw if packed is None else min(raw, packed.numel())


def _packed(values: Tensor, compress: bool) -> Tensor | None:
    """The values coded by byte planes as a uint8 tensor, or None (not asked, not floating, or no smaller)."""
    if not compress or not values.is_floating_point():
        return None
    payload = encode_values(values)
    return None if payload is None else torch.frombuffer(bytearray(payload), dtype=torch.uint8)


def _crc(t: Tensor, e: Mapping[str, Any]) -> int:
    """CRC-32 of the tensor's description (kind, shape, dtypes) then its bytes: an edit to either fails it."""
    desc = json.dumps([e["kind"], list(e["shape"]), e["dtype"], e["stored"]]).encode()
    return zlib.crc32(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), zlib.crc32(desc))


def save(
    path: str | os.PathLike[str],
    model: nn.Module | Mapping[str, Tensor],
    *,
    mask: Mask | Mapping[str, Tensor] | None = None,
    dtype: str | torch.dtype | None = None,
    compress_values: bool = False,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Write ``model`` (a module or a state dict) to ``path`` with entropy-coded masks; atomic, no pickle.

    ``mask``: the tensors to store sparse and their masks (a :class:`~sparseflow.Mask`, e.g. ``method.mask``).
    A kept weight that happens to be 0 stays kept. Weights outside the mask must be zero (the invariant every
    sparseflow method keeps); otherwise this raises rather than silently dropping them. Without ``mask``,
    each floating tensor is stored sparse (mask = its nonzeros) when that is smaller than dense. Modules pruned
    with ``torch.nn.utils.prune`` are folded (``weight_orig * weight_mask`` stored as ``weight`` with that mask).
    ``dtype``: ``"fp32"``, ``"fp16"``, ``"bf16"`` (or the torch dtype) for every floating tensor; None keeps
    each tensor's own. ``compress_values``: also entropy-code the values byte plane by byte plane, losslessly
    (:mod:`sparseflow.storage.values`; ~17 % smaller for fp32 weights), at the price of entries that a plain
    safetensors reader sees as uint8 rather than as the values. ``meta``: JSON-serialisable dict stored in
    the header.
    Returns the per-tensor metadata written (see :func:`read`).
    """
    stored_dtype = _resolve_dtype(dtype)
    state, masks = state_and_masks(model, mask)
    try:
        meta_json = json.dumps(dict(meta or {}), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StorageError(f"meta must be a JSON-serialisable dict of finite values ({e})") from None

    tensors: dict[str, Tensor] = {}
    info: dict[str, dict[str, Any]] = {}
    for name, t in state.items():
        t = t.detach().to("cpu")
        target = stored_dtype if (stored_dtype is not None and t.is_floating_point()) else t.dtype
        value = t.to(target).contiguous()
        if target != t.dtype and value.is_floating_point():
            overflow = int(torch.count_nonzero(torch.isfinite(t) & ~torch.isfinite(value)))
            if overflow:
                raise StorageError(f"tensor {name!r} has {overflow} finite values that overflow {target} "
                                   f"(largest |value| {t.abs().max().item():.4g}); store it with dtype='fp32' or 'bf16'")
        entry: dict[str, Any] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                                 "stored": str(target).removeprefix("torch.")}
        m = masks.get(name)
        if m is not None:
            outside = int(torch.count_nonzero(value[~m])) if value.numel() else 0
            if outside:
                raise StorageError(
                    f"tensor {name!r} has {outside} nonzero values outside its mask; apply the mask first "
                    "(mask.apply_(model)) or save without mask= to store the nonzeros")
        elif t.is_floating_point() and t.numel() > 1 and t.dim() >= 1:
            m = value != 0
        if m is not None and value.numel():
            payload = encode_mask(m.numpy())
            kept = value[m]
            packed = _packed(kept, compress_values)
            nbytes = len(payload) + (packed.numel() if packed is not None else kept.numel() * kept.element_size())
            if name in masks or nbytes < _dense_bytes(value, compress_values):
                entry |= {"kind": "sparse", "nnz": int(kept.numel()), "density": kept.numel() / value.numel(),
                          "codec": CODEC_NAMES[payload[0]]}
                tensors[name + MASK_SUFFIX] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
                tensors[name + VALUES_SUFFIX] = kept.contiguous() if packed is None else packed
                if packed is not None:
                    entry["values"] = VALUES_CODEC
                canonical = torch.zeros_like(value)  # as decoded: +0.0 outside the mask (a masked w*0 may be -0.0)
                canonical[m] = kept
                entry["crc32"] = _crc(canonical, entry)
                info[name] = entry
                continue
        entry["kind"] = "dense"
        entry["crc32"] = _crc(value, entry)
        packed = _packed(value, compress_values)
        tensors[name] = value if packed is None else packed
        if packed is not None:
            entry["values"] = VALUES_CODEC
        info[name] = entry
    header = {"format": FORMAT, "version": VERSION, "tensors": json.dumps(info), "meta": meta_json}
    atomic_write_bytes(path, _st_save(tensors, metadata=header))
    return info


# ---------------------------------------------------------------------------------------------
# Loading.


def _header(data: bytes, where: str) -> dict[str, Any]:
    """The safetensors JSON header, read with explicit bounds before handing the bytes to safetensors."""
    if len(data) < 8:
        raise StorageError(f"{where}: file is {len(data)} bytes, too short for a safetensors header (truncated?)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(len(data) - 8, _MAX_HEADER):
        raise StorageError(f"{where}: header claims {n} bytes but the file has {len(data) - 8} after the length "
                           "field (truncated or not a safetensors file)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, RecursionError) as e:  # also 5000-digit ints (ValueError) and deep nesting
        raise StorageError(f"{where}: header is not valid JSON ({e}); the file is corrupted") from None
    if not isinstance(header, dict):
        raise StorageError(f"{where}: header is not a JSON object; the file is corrupted")
    return header


def is_sparse_file(data: bytes) -> bool:
    """Whether ``data`` starts like a file written by :func:`save` (no validation beyond the header)."""
    try:
        meta = _header(data, "<bytes>").get("__metadata__")
    except StorageError:
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _entry(name: str, e: object, where: str, max_numel: int) -> dict[str, Any]:
    def bad(check: str) -> StorageError:
        return StorageError(f"{where}: tensor {name!r}: {check}")

    if not isinstance(e, dict) or e.get("kind") not in ("sparse", "dense"):
        raise bad("metadata entry is not a sparse/dense tensor description")
    shape = e.get("shape")
    if not isinstance(shape, list) or len(shape) > 8 or not all(type(s) is int and s >= 0 for s in shape):
        raise bad(f"shape {shape!r} is not a list of at most 8 non-negative ints")
    numel = math.prod(shape)
    if numel > max_numel or any(s > max_numel for s in shape):  # [0, 2**70] has no elements but no array either
        raise bad(f"shape {shape} has {numel} elements, over the limit of {max_numel} (pass a larger "
                  "max_numel to load a tensor this large)")
    for key in ("dtype", "stored"):
        if e.get(key) not in _TORCH_DTYPES:
            raise bad(f"{key} {e.get(key)!r} is not a known dtype")
    if type(e.get("crc32")) is not int:
        raise bad("checksum is missing")
    if "values" in e and e["values"] != VALUES_CODEC:
        raise bad(f"values codec {e['values']!r} is unknown (this sparseflow reads {VALUES_CODEC!r})")
    if e["kind"] == "sparse":
        nnz = e.get("nnz")
        if type(nnz) is not int or not 0 <= nnz <= numel:
            raise bad(f"kept count {nnz!r} is not an int in 0..{numel}")
    return e


def read(path: str | os.PathLike[str], *, max_numel: int = MAX_NUMEL) -> Stored:
    """Decode every tensor of an ``.sfz`` file, checking as documented in the module docstring."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise StorageError(f"{where!r} does not exist or is not a file; pass a file written by sparseflow.save")
    return read_bytes(path.read_bytes(), where=where, max_numel=max_numel)


def read_bytes(data: bytes, *, where: str = "<bytes>", max_numel: int = MAX_NUMEL) -> Stored:
    """:func:`read` for the file's bytes already in memory; ``where`` names the source in errors."""
    header = _header(data, where)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StorageError(f"{where}: not a sparseflow sparse file (header format is "
                           f"{meta.get('format') if isinstance(meta, dict) else None!r}); write one with sparseflow.save")
    if meta.get("version") != VERSION:
        raise StorageError(f"{where}: format version {meta.get('version')!r} is not supported (this sparseflow "
                           f"reads version {VERSION}); upgrade sparseflow")
    try:
        entries = json.loads(meta["tensors"])
        user_meta = json.loads(meta.get("meta", "{}"))
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise StorageError(f"{where}: header metadata is not valid JSON ({e}); the file is corrupted") from None
    if not isinstance(entries, dict) or not isinstance(user_meta, dict):
        raise StorageError(f"{where}: header metadata has the wrong structure; the file is corrupted")
    entries = {n: _entry(n, e, where, max_numel) for n, e in entries.items()}
    try:  # safetensors checks every entry's offsets and byte length against the file
        raw = _st_load(data)
    except Exception as e:  # safetensors raises its own error type for every framing problem
        raise StorageError(f"{where}: not a valid safetensors file ({e}); the file is truncated or corrupted") from None
    expected = set()
    for name, e in entries.items():
        expected |= {name + MASK_SUFFIX, name + VALUES_SUFFIX} if e["kind"] == "sparse" else {name}
    if set(raw) != expected:
        missing, extra = sorted(expected - set(raw)), sorted(set(raw) - expected)
        raise StorageError(f"{where}: stored entries do not match the header (missing {missing[:4]}, "
                           f"unexpected {extra[:4]}); the file is corrupted")

    tensors: dict[str, Tensor] = {}
    mask = Mask()
    info: dict[str, dict[str, Any]] = {}
    for name, e in entries.items():
        tensors[name], m, extra = _decode_tensor(name, e, raw, where)
        if m is not None:
            mask[name] = m
        info[name] = dict(e) | extra
    return Stored(tensors, mask, info, user_meta)


def _decode_tensor(name: str, e: dict[str, Any], raw: dict[str, Tensor], where: str
                   ) -> tuple[Tensor, Tensor | None, dict[str, int]]:
    def bad(check: str) -> StorageError:
        return StorageError(f"{where}: tensor {name!r}: {check}")

    shape, stored, dtype = tuple(e["shape"]), _TORCH_DTYPES[e["stored"]], _TORCH_DTYPES[e["dtype"]]
    if e["kind"] == "dense":
        value = raw[name]
        coded = value.numel() if "values" in e else None  # bytes of the coded values
        if coded is not None:
            value = _unpack(value, math.prod(shape), stored, bad).reshape(shape)
        if value.dtype != stored or tuple(value.shape) != shape:
            raise bad(f"stored as {value.dtype} {tuple(value.shape)}, header says {stored} {shape}")
        if _crc(value, e) != e["crc32"]:
            raise bad("checksum mismatch: the stored values are corrupted")
        return value.to(dtype), None, {"mask_bytes": 0, "values_bytes": value.numel() * value.element_size()
                                       if coded is None else coded}
    payload, kept = raw[name + MASK_SUFFIX], raw[name + VALUES_SUFFIX]
    if payload.dtype != torch.uint8 or payload.dim() != 1:
        raise bad(f"mask entry is {payload.dtype} with {payload.dim()} dims, expected 1-D uint8")
    coded = kept.numel() if "values" in e else None
    if coded is not None:
        kept = _unpack(kept, e["nnz"], stored, bad)
    if kept.dtype != stored or kept.dim() != 1 or kept.numel() != e["nnz"]:
        raise bad(f"values entry is {kept.dtype} of shape {tuple(kept.shape)}, header says {stored} "
                  f"({e['nnz']},)")
    try:
        m = torch.from_numpy(decode_mask(payload.numpy().tobytes(), shape, e["nnz"]))
    except StorageError as err:
        raise bad(f"mask check failed: {err}") from None
    if CODEC_NAMES.get(int(payload[0])) != e.get("codec"):
        raise bad(f"codec {e.get('codec')!r} in the header differs from the payload's")
    value = torch.zeros(shape, dtype=stored)
    value[m] = kept
    if _crc(value, e) != e["crc32"]:
        raise bad("checksum mismatch: the decoded tensor differs from the one saved (corrupted values or mask)")
    return value.to(dtype), m, {"mask_bytes": payload.numel(),
                                "values_bytes": kept.numel() * kept.element_size() if coded is None else coded}


def _unpack(entry: Tensor, n: int, stored: torch.dtype, bad: Any) -> Tensor:
    """Values coded by byte planes back to ``n`` values of ``stored``."""
    if entry.dtype != torch.uint8 or entry.dim() != 1 or not stored.is_floating_point:
        raise bad(f"coded values entry is {entry.dtype} with {entry.dim()} dims for a {stored} tensor, expected "
                  "1-D uint8 for a floating tensor")
    try:
        return decode_values(entry.numpy().tobytes(), n, stored)
    except StorageError as err:
        raise bad(f"values check failed: {err}") from None


def load(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    strict: bool = True,
    max_numel: int = MAX_NUMEL,
) -> dict[str, Tensor] | nn.Module:
    """Read an ``.sfz`` file. Without ``model``: the state dict (dense tensors, dtypes as saved).

    With ``model``: load into it and return it. Names the tensor and both shapes on a shape mismatch;
    with ``strict`` (default) missing or unexpected names are errors too. A model pruned with
    ``torch.nn.utils.prune`` gets its ``weight_orig``/``weight_mask`` filled from the stored weight and mask.
    """
    stored = read(path, max_numel=max_numel)
    if model is None:
        return stored.tensors
    load_into(model, stored, strict=strict, where=str(path))
    return model


def load_into(model: nn.Module, stored: Stored, *, strict: bool = True, where: str = "file") -> None:
    own = model.state_dict()
    state: dict[str, Tensor] = {}
    for name, t in stored.tensors.items():
        if name not in own and name + "_orig" in own and name + "_mask" in own:  # torch.nn.utils.prune
            m = stored.mask[name] if name in stored.mask else t != 0
            state[name + "_orig"], state[name + "_mask"] = t, m.to(own[name + "_mask"].dtype)
        else:
            state[name] = t
    for name, t in state.items():
        if name in own and tuple(own[name].shape) != tuple(t.shape):
            raise StorageError(f"{where}: tensor {name!r} has shape {tuple(t.shape)} in the file but "
                               f"{tuple(own[name].shape)} in the model")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        raise StorageError(f"{where}: file and model differ: missing from the file {missing[:6]}, not in the "
                           f"model {unexpected[:6]}; pass strict=False to load the common tensors")
    with torch.no_grad():
        for name, t in state.items():
            if name in own:
                own[name].copy_(t)


def load_mask(path: str | os.PathLike[str], *, max_numel: int = MAX_NUMEL) -> Mask:
    """The masks of the tensors stored sparse, as a :class:`~sparseflow.Mask`."""
    return read(path, max_numel=max_numel).mask
