"""The ``.sfz`` file: a sparse model as one safetensors file, masks entropy-coded, no pickle.

Layout (any safetensors reader can list it):

* a sparse tensor ``name`` is two entries: ``name::mask`` (uint8: the coded mask, first byte = codec, see
  :mod:`sparseflow.storage.codec`) and ``name::values`` (1-D, the kept values in row-major order, in the
  stored dtype: float32, float16 or bfloat16);
* a dense tensor (biases, norms, buffers) is stored as itself under ``name``;
* a tied tensor (one tensor under several names, :mod:`sparseflow.storage.state`) is stored once, under its
  first name; each other name is an *alias* entry of the header and has no data of its own;
* the header metadata ``{"format": "sparseflow-sparse", "version": "1" | "2", "tensors": <json>,
  ["masks": <json>,] "meta": <json>}`` gives, per name in the state dict's order, ``kind`` (sparse, dense or
  alias), ``shape``, ``dtype`` (as saved), ``stored`` (as written), ``nnz``, ``density``, ``codec`` and
  ``crc32``, the checksum of the decoded tensor in the stored dtype; an alias gives only ``of``, the name
  it is stored under. ``axes`` ``[out, in]`` (optional) says the mask was coded in the weight's
  ``(out, in, *rest)`` view (:class:`~sparseflow.Layout`), where N:M groups and blocks are found along the
  input axis whatever the stored order. ``masks`` lists the names of the masks ``save`` was given, in their
  order: :func:`load_mask` returns exactly those.

Version "2" files are those that use aliases or ``axes``; every other file is written as version "1", which
sparseflow has always read (a version "1" reader would misread the newer entries, so they carry the new
number). Metadata keys and tensor entries are written in a fixed order, so equal models give equal bytes.

Loading checks, in order, and names the tensor and the failed check on the first failure: the safetensors
framing (bounded header, offsets inside the file), the format and version, every shape against
``max_numel`` (so a forged header cannot make the loader allocate more than the caps allow), the entries each
tensor needs and their dtypes and lengths, the decoded mask's kept count, and the checksum. A file that passes
decodes to exactly the tensors that were saved, each alias the same tensor object as the name it refers to.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load as _st_load
from torch import Tensor, nn

from sparseflow.errors import StorageError
from sparseflow.io import atomic_write_bytes
from sparseflow.mask import Mask
from sparseflow.layouts import Layout
from sparseflow.storage.codec import CODEC_NAMES, decode_mask, encode_mask, encode_structured
from sparseflow.storage.framing import header, to_bytes
from sparseflow.storage.state import STORABLE_DTYPES, prepare
from sparseflow.storage.values import decode_values, encode_values

__all__ = ["save", "read", "read_bytes", "is_sparse_file", "state_and_masks", "Stored", "DTYPES", "MAX_NUMEL",
           "FORMAT", "VERSIONS"]

FORMAT = "sparseflow-sparse"
VERSIONS = ("1", "2")  # read; save writes the lowest that holds the file (see the module docstring)
MASK_SUFFIX, VALUES_SUFFIX = "::mask", "::values"
VALUES_CODEC = "planes"  # header "values" of an entry whose values are coded (absent: stored as themselves)
# Names accepted for the stored value dtype (CLI strings and torch dtypes both map here).
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_TORCH_DTYPES = {str(d).removeprefix("torch."): d for d in STORABLE_DTYPES}
MAX_NUMEL = 2**31  # per tensor, unless the caller raises it


@dataclass(frozen=True)
class Stored:
    """What :func:`read` returns.

    ``tensors``: the state dict as saved, every name in order (an alias is the same tensor object as the
    name it refers to); ``mask``: the masks of the tensors stored sparse; ``info``: per stored tensor, the
    header's entry plus ``mask_bytes`` and ``values_bytes``; ``meta``: the user's meta; ``aliases``: each
    alias -> the name it is stored under; ``masked``: the names of the masks ``save`` was given, in order
    (None for a file saved without masks, or written before files recorded them).
    """

    tensors: dict[str, Tensor]
    mask: Mask
    info: dict[str, dict[str, Any]]
    meta: dict[str, Any]
    aliases: dict[str, str] = field(default_factory=dict)
    masked: tuple[str, ...] | None = None


# ---------------------------------------------------------------------------------------------
# Saving.


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or dtype in _DTYPE_NAMES:
        return dtype  # type: ignore[return-value]
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise StorageError(f"dtype {dtype!r} is not storable; use one of {sorted(DTYPES)} (or None to keep each "
                       "tensor's own floating dtype)")


def state_and_masks(model: nn.Module | Mapping[str, Tensor], mask: Mask | Mapping[str, Tensor] | None
                    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The tensors :func:`save` stores (each tied tensor once, torch.nn.utils.prune pairs folded) and their
    masks by stored name, each checked against its tensor's name and shape."""
    prep = prepare(model, mask)
    return prep.state, prep.masks


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


def _coded_mask(m: Tensor, layout: Layout | None) -> tuple[bytes, list[int] | None]:
    """The smallest mask payload, coded as stored or (for a weight whose outputs and inputs are not axes 0
    and 1) in its ``(out, in, *rest)`` view, where N:M groups and blocks run along the input axis."""
    payload = encode_mask(m.numpy())
    if layout is None:
        return payload, None
    # The i.i.d. code does not depend on the order and the context coder tries both orientations of the
    # matrix: only N:M groups and blocks need the (out, in) view.
    alt = encode_structured(layout.canonical(m).contiguous().numpy())
    if alt is not None and len(alt) < len(payload):
        return alt, [layout.out_axis % m.dim(), layout.in_axis % m.dim()]
    return payload, None


def _unshare(tensors: dict[str, Tensor]) -> None:
    """Copy each entry that shares memory with an earlier one (a slice of another tensor: tied tensors are
    already stored once). safetensors refuses shared memory, and the loaded tensors are separate anyway."""
    seen: set[int] = set()
    for name, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            tensors[name] = t.clone()
        seen.add(ptr)


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

    ``mask``: the tensors to store sparse and their masks (a :class:`~sparseflow.Mask`, e.g. ``method.mask``),
    recorded as the file's masks (:func:`load_mask` returns exactly them). A kept weight that happens to be 0
    stays kept. Weights outside the mask must be zero (the invariant every sparseflow method keeps);
    otherwise this raises rather than silently dropping them. Without ``mask``, each floating tensor is
    stored sparse (mask = its nonzeros) when that is smaller than dense. Modules pruned with
    ``torch.nn.utils.prune`` are folded (``weight_orig * weight_mask`` stored as ``weight`` with that mask,
    recorded as a mask too). A tensor tied under several names (GPT-2's ``lm_head.weight`` and
    ``transformer.wte.weight``) is stored once and its other names recorded as aliases
    (:mod:`sparseflow.storage.state`).
    ``dtype``: ``"fp32"``, ``"fp16"``, ``"bf16"`` (or the torch dtype) for every floating tensor; None keeps
    each tensor's own. ``compress_values``: also entropy-code the values byte plane by byte plane, losslessly
    (:mod:`sparseflow.storage.values`; ~17 % smaller for fp32 weights), at the price of entries that a plain
    safetensors reader sees as uint8 rather than as the values. ``meta``: JSON-serialisable dict stored in
    the header. Equal inputs give byte-identical files.
    Returns the per-name metadata written (see :func:`read`), aliases included.
    """
    stored_dtype = _resolve_dtype(dtype)
    prep = prepare(model, mask)
    try:
        meta_json = json.dumps(dict(meta or {}), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StorageError(f"meta must be a JSON-serialisable dict of finite values ({e})") from None

    tensors: dict[str, Tensor] = {}
    info: dict[str, dict[str, Any]] = {}
    for name, t in prep.state.items():
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
        m = prep.masks.get(name)
        if m is not None:
            outside = int(torch.count_nonzero(value[~m])) if value.numel() else 0
            if outside:
                raise StorageError(
                    f"tensor {name!r} has {outside} nonzero values outside its mask; apply the mask first "
                    "(mask.apply_(model)) or save without mask= to store the nonzeros")
        elif t.is_floating_point() and t.numel() > 1 and t.dim() >= 1:
            m = value != 0
        if m is not None and value.numel():
            payload, axes = _coded_mask(m, prep.layouts.get(name))
            kept = value[m]
            packed = _packed(kept, compress_values)
            nbytes = len(payload) + (packed.numel() if packed is not None else kept.numel() * kept.element_size())
            if name in prep.masks or nbytes < _dense_bytes(value, compress_values):
                entry |= {"kind": "sparse", "nnz": int(kept.numel()), "density": kept.numel() / value.numel(),
                          "codec": CODEC_NAMES[payload[0]]}
                if axes is not None:
                    entry["axes"] = axes
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
    _unshare(tensors)
    written = {n: info[n] if n in info else {"kind": "alias", "of": prep.aliases[n]} for n in prep.order}
    v2 = bool(prep.aliases) or any("axes" in e for e in info.values())
    header = {"format": FORMAT, "version": "2" if v2 else "1", "tensors": json.dumps(written)}
    if prep.masked is not None:
        header["masks"] = json.dumps(prep.masked)
    header["meta"] = meta_json
    atomic_write_bytes(path, to_bytes(tensors, header))
    return written


# ---------------------------------------------------------------------------------------------
# Loading.


def is_sparse_file(data: bytes) -> bool:
    """Whether ``data`` starts like a file written by :func:`save` (no validation beyond the header)."""
    try:
        meta = header(data, "<bytes>").get("__metadata__")
    except StorageError:
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _entry(name: str, e: object, where: str, max_numel: int) -> dict[str, Any]:
    def bad(check: str) -> StorageError:
        return StorageError(f"{where}: tensor {name!r}: {check}")

    if isinstance(e, dict) and e.get("kind") == "alias":
        if not isinstance(e.get("of"), str) or set(e) != {"kind", "of"}:
            raise bad("alias entry does not name the tensor it refers to")
        return e
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
        axes = e.get("axes")
        if axes is not None and not (isinstance(axes, list) and len(axes) == 2 and len(shape) >= 2
                                     and all(type(a) is int and 0 <= a < len(shape) for a in axes)
                                     and axes[0] != axes[1]):
            raise bad(f"axes {axes!r} are not two distinct axes of a tensor of shape {shape}")
    return e


def _names_list(text: object, where: str, what: str) -> list[str]:
    try:
        names = json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError, RecursionError) as e:
        raise StorageError(f"{where}: header {what} is not valid JSON ({e}); the file is corrupted") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise StorageError(f"{where}: header {what} is not a list of distinct names; the file is corrupted")
    return names


def read(path: str | os.PathLike[str], *, max_numel: int = MAX_NUMEL) -> Stored:
    """Decode every tensor of an ``.sfz`` file, checking as documented in the module docstring."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise StorageError(f"{where!r} does not exist or is not a file; pass a file written by sparseflow.save")
    return read_bytes(path.read_bytes(), where=where, max_numel=max_numel)


def read_bytes(data: bytes, *, where: str = "<bytes>", max_numel: int = MAX_NUMEL) -> Stored:
    """:func:`read` for the file's bytes already in memory; ``where`` names the source in errors."""
    meta = header(data, where).get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StorageError(f"{where}: not a sparseflow sparse file (header format is "
                           f"{meta.get('format') if isinstance(meta, dict) else None!r}); write one with sparseflow.save")
    if meta.get("version") not in VERSIONS:
        raise StorageError(f"{where}: format version {meta.get('version')!r} is not supported (this sparseflow "
                           f"reads versions {', '.join(VERSIONS)}); upgrade sparseflow")
    try:
        entries = json.loads(meta["tensors"])
        user_meta = json.loads(meta.get("meta", "{}"))
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise StorageError(f"{where}: header metadata is not valid JSON ({e}); the file is corrupted") from None
    if not isinstance(entries, dict) or not isinstance(user_meta, dict):
        raise StorageError(f"{where}: header metadata has the wrong structure; the file is corrupted")
    entries = {n: _entry(n, e, where, max_numel) for n, e in entries.items()}
    aliases = {n: e["of"] for n, e in entries.items() if e["kind"] == "alias"}
    for name, of in aliases.items():
        if of not in entries or of in aliases:
            raise StorageError(f"{where}: tensor {name!r} is an alias of {of!r}, which is not a stored tensor; "
                               "the file is corrupted")
    masked = _names_list(meta["masks"], where, "masks") if "masks" in meta else None
    for name in masked or ():
        e = entries.get(aliases.get(name, name))
        if e is None or (e["kind"] == "dense" and math.prod(e["shape"])):  # only an empty tensor is masked dense
            raise StorageError(f"{where}: header lists a mask for {name!r}, which the file does not hold as a "
                               "sparse tensor; the file is corrupted")
    try:  # safetensors checks every entry's offsets and byte length against the file
        raw = _st_load(data)
    except Exception as e:  # safetensors raises its own error type for every framing problem
        raise StorageError(f"{where}: not a valid safetensors file ({e}); the file is truncated or corrupted") from None
    expected = set()
    for name, e in entries.items():
        if e["kind"] != "alias":
            expected |= {name + MASK_SUFFIX, name + VALUES_SUFFIX} if e["kind"] == "sparse" else {name}
    if set(raw) != expected:
        missing, extra = sorted(expected - set(raw)), sorted(set(raw) - expected)
        raise StorageError(f"{where}: stored entries do not match the header (missing {missing[:4]}, "
                           f"unexpected {extra[:4]}); the file is corrupted")

    tensors: dict[str, Tensor] = {}
    mask = Mask()
    info: dict[str, dict[str, Any]] = {}
    for name, e in entries.items():
        if e["kind"] == "alias":
            continue
        tensors[name], m, extra = _decode_tensor(name, e, raw, where)
        if m is not None:
            mask[name] = m
        info[name] = dict(e) | extra
    tensors = {n: tensors[aliases.get(n, n)] for n in entries}  # the state dict's order; an alias is its tensor
    return Stored(tensors, mask, info, user_meta, aliases, None if masked is None else tuple(masked))


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
    layout = Layout(*e["axes"]) if "axes" in e else None
    try:
        coded_shape = shape if layout is None else layout.canonical_shape(shape)
        m = torch.from_numpy(decode_mask(payload.numpy().tobytes(), coded_shape, e["nnz"]))
    except StorageError as err:
        raise bad(f"mask check failed: {err}") from None
    if layout is not None:
        m = layout.restore(m)
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
