"""Seeded valid ``.sfz`` files and the mutations `sfz_fuzz.py` applies to them.

Valid files come from :func:`~sparseflow.storage.container.save` (half of them with ``compress_values``, so the
byte-plane value decoder is fuzzed too) on small random state dicts whose masks are shaped to select every codec: i.i.d. random (any density, including empty and full), N:M along the input
dimension, r x c blocks, and trained-like masks (magnitude pruning of a rank-1-scaled matrix, the structure the
context coder models). Mutations are plain functions ``(data, rng, pool) -> data``; the header-level ones
parse the safetensors header, edit it, and re-frame the file so the reader's deeper checks are reached.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sparseflow.storage.codec import CODEC_NAMES, IID, _gap_model, ans_encode, from_matrix_view
from sparseflow.storage.container import save

__all__ = ["random_state", "make_pool", "mutate", "MUTATORS", "claimed_numel", "split", "join"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Valid files.


def _shape(rng: np.random.Generator) -> tuple[int, ...]:
    kind = rng.choice(["linear", "linear", "conv", "vector", "scalar", "empty", "big"])
    r = lambda lo, hi: int(rng.integers(lo, hi + 1))  # noqa: E731
    return {"linear": lambda: (r(1, 24), 4 * r(1, 8)), "conv": lambda: (r(1, 8), 2 * r(1, 4), r(1, 3), r(1, 3)),
            "vector": lambda: (r(1, 40),), "scalar": lambda: (), "empty": lambda: (0, r(1, 5)),
            "big": lambda: (8 * r(2, 6), 16 * r(2, 6))}[str(kind)]()


def _mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A bool mask of ``shape`` built in the (out, in) matrix view so N:M and blocks run along the input dim."""
    numel = math.prod(shape)
    rows = shape[0] if len(shape) >= 2 else 1
    cols = numel // rows if rows else 0
    kind = str(rng.choice(["random", "nm", "block", "trained", "extreme"]))
    if len(shape) < 2 or numel == 0:
        kind = "random" if kind != "extreme" else kind
    if kind == "nm" and cols % 4 == 0:
        n, m = [(1, 2), (1, 4), (2, 4), (3, 4)][int(rng.integers(4))]
        keep = np.argsort(rng.random((rows * cols // m, m)), axis=1)[:, :n]
        mat = np.zeros((rows * cols // m, m), dtype=bool)
        np.put_along_axis(mat, keep, True, axis=1)
        return from_matrix_view(mat.reshape(rows, cols), shape)
    if kind == "block" and rows % 2 == 0 and cols % 2 == 0:
        r, c = 2, 2 if cols % 4 else 4
        grid = rng.random((rows // r, cols // c)) < rng.uniform(0.1, 0.9)
        return from_matrix_view(np.repeat(np.repeat(grid, r, 0), c, 1), shape)
    if kind == "trained" and rows > 1:
        scores = np.abs(rng.standard_normal((rows, cols)) * rng.gamma(0.5, size=(rows, 1)) * rng.gamma(0.5, size=cols))
        k = max(1, int(rng.uniform(0.02, 0.5) * scores.size))
        return from_matrix_view(scores >= np.sort(scores, axis=None)[-k], shape)
    if kind == "extreme":
        return np.full(shape, bool(rng.integers(2)))
    return np.asarray(rng.random(shape) < rng.choice([0.01, 0.1, 0.3, 0.5, 0.7, 0.95]))


def random_state(rng: np.random.Generator) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str | None, dict]:
    """(state dict, masks of the tensors to store sparse, save dtype, meta): a small random model."""
    state: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    for i in range(int(rng.integers(1, 4))):
        shape = _shape(rng)
        dtype = _FLOATS[int(rng.integers(3))]
        w = torch.randn(shape, generator=gen).to(dtype)
        m = torch.from_numpy(_mask(shape, rng))
        if rng.random() < 0.2 and w.numel():
            w.view(-1)[0] = 0.0  # a kept weight that happens to be zero stays kept
        w = torch.where(m, w, torch.zeros((), dtype=dtype))
        state[f"layer{i}.weight"] = w
        if rng.random() < 0.8:
            masks[f"layer{i}.weight"] = m  # else saved without a mask: sparse iff that is smaller
        if len(shape) >= 1 and rng.random() < 0.5:
            state[f"layer{i}.bias"] = torch.randn(shape[0], generator=gen)
    if rng.random() < 0.3:  # enough values for byte-plane coding (compress_values) to apply
        state["emb.weight"] = torch.randn(4096 + int(rng.integers(0, 2048)), generator=gen)
    if rng.random() < 0.3:
        state["bn.num_batches_tracked"] = torch.tensor(int(rng.integers(1000)))
        state["buf.flag"] = torch.from_numpy(rng.random(int(rng.integers(1, 9))) < 0.5)
    dtype = [None, "fp32", "fp16", "bf16"][int(rng.integers(4))]
    meta = {"seed": int(rng.integers(2**31)), "note": "x" * int(rng.integers(0, 12)), "lr": float(rng.random())}
    return state, masks, dtype, meta


def make_pool(seed: int, k: int) -> list[bytes]:
    """``k`` valid files, a deterministic function of ``seed``."""
    rng = np.random.default_rng([seed, 2**32 - 1])
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.sfz")
        for _ in range(k):
            state, masks, dtype, meta = random_state(rng)
            save(path, state, mask=masks, dtype=dtype, meta=meta, compress_values=bool(rng.random() < 0.5))
            with open(path, "rb") as f:
                h, body = split(f.read())  # type: ignore[misc]
            # safetensors writes the metadata keys in hash order; sorted keys make the bytes a function of seed
            h["__metadata__"] = dict(sorted(h["__metadata__"].items()))
            out.append(join(h, body))
    return out


# ---------------------------------------------------------------------------------------------
# Framing helpers.


def split(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    """(safetensors header, data section) if the file frames, else None."""
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    try:
        h = json.loads(data[8 : 8 + n]) if n <= len(data) - 8 else None
    except (ValueError, RecursionError):
        return None
    return (h, data[8 + n :]) if isinstance(h, dict) else None


def join(h: dict[str, Any], body: bytes, pad: bytes = b" ") -> bytes:
    hb = json.dumps(h).encode()
    hb += pad * (-len(hb) % 8)
    return struct.pack("<Q", len(hb)) + hb + body


def claimed_numel(data: bytes, max_numel: int) -> int:
    """Elements the file's header claims (each tensor capped at ``max_numel``): what may be allocated."""
    try:
        entries = json.loads(split(data)[0]["__metadata__"]["tensors"])  # type: ignore[index]
        return sum(min(math.prod(int(s) for s in e["shape"]), max_numel) for e in entries.values())
    except Exception:  # noqa: BLE001  (any header that does not parse justifies nothing)
        return 0


def _reframe(h: dict[str, Any], body: bytes, new: dict[str, bytes]) -> bytes:
    """The file with the data of the entries in ``new`` replaced (uint8 1-D entries resized), offsets redone."""
    out = bytearray()
    for k in sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0]):
        s, t = h[k]["data_offsets"]
        chunk = new.get(k, body[s:t])
        h[k]["data_offsets"] = [len(out), len(out) + len(chunk)]
        if k in new and h[k]["dtype"] == "U8":
            h[k]["shape"] = [len(chunk)]
        out += chunk
    return join(h, bytes(out))


def _entries(h: dict[str, Any]) -> dict[str, Any]:
    return json.loads(h["__metadata__"]["tensors"])


# ---------------------------------------------------------------------------------------------
# Mutations.

_LIES = [-1, 0, 1, 255, 2**31, 2**32 + 3, 2**63, 2**64 + 1, 10**30, 1.5, -0.0, "3", "", None, True, [], {}, [1, 2]]
_DTYPE_NAMES = ["float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool",
                "complex64", "float8", "F32", ""]
_ST_DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "X"]
_SAME_SIZE = {"F32": ("I32", "float32", "int32"), "I32": ("F32", "int32", "float32"),
              "F16": ("BF16", "float16", "bfloat16"), "BF16": ("F16", "bfloat16", "float16"),
              "F64": ("I64", "float64", "int64"), "I64": ("F64", "int64", "float64"), "U8": ("I8", "uint8", "int8")}


def _bitflip(d: bytes, rng: np.random.Generator, pool: list[bytes]) -> bytes:
    b = bytearray(d)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(len(b)))
        b[i] ^= 1 << int(rng.integers(8))
    return bytes(b)


def _bitflip_body(d: bytes, rng: np.random.Generator, pool: list[bytes]) -> bytes:
    """A flip in the data section (masks and values), where the header checks cannot help."""
    n = struct.unpack("<Q", d[:8])[0] if len(d) >= 8 else len(d)
    if len(d) <= 8 + n:
        return _bitflip(d, rng, pool)
    b = bytearray(d)
    i = int(rng.integers(8 + n, len(b)))
    b[i] ^= 1 << int(rng.integers(8))
    return bytes(b)


def _byte(d: bytes, rng: np.random.Generator, pool: list[bytes]) -> bytes:
    b = bytearray(d)
    b[int(rng.integers(len(b)))] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, int(rng.integers(256))]))
    return bytes(b)


def _truncate(d: bytes, rng: np.random.Generator, pool: list[bytes]) -> bytes:
    return d[: int(rng.integers(len(d)))]


def _insert(d: bytes, rng: np.random.Generator, pool: list[bytes]) -> bytes:
    i = int(rng.integers(len(d) + 1))
    return d[:i] + rng.bytes(int(rng.integers(1, 9))) + d[i:]


def _delete(d: bytes, rng: np.random.Generator, pool: list[bytes]) -> bytes:
    i = int(rng.integers(len(d)))
    return d[:i] + d[i + int(rng.integers(1, 9)) :]


def _splice(d: bytes, rng: np.random.Generator, pool: list[bytes]) -> bytes:
    """The head of this file and the tail of another (sizes and offsets now disagree)."""
    other = pool[int(rng.integers(len(pool)))]
    return d[: int(rng.integers(len(d)))] + other[int(rng.integers(len(other))) :]


def _length_lie(d: bytes, rng: np.random.Generator, pool: list[bytes]) -> bytes:
    (n,) = struct.unpack("<Q", d[:8].ljust(8, b"\0"))
    new = int(rng.choice([0, 1, n - 8, n - 1, n + 1, n + 8, len(d), 2**31, 2**63, 2**64 - 1]))
    return struct.pack("<Q", new % 2**64) + d[8:]


def _edit(fn: Callable[[dict[str, Any], bytes, np.random.Generator], bytes | None]
          ) -> Callable[[bytes, np.random.Generator, list[bytes]], bytes]:
    """Lift a header edit to a mutation; files whose header no longer parses fall back to a bit flip."""

    def mutation(d: bytes, rng: np.random.Generator, pool: list[bytes]) -> bytes:
        parts = split(d)
        try:
            out = fn(*parts, rng) if parts is not None and "__metadata__" in parts[0] else None
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError):
            out = None
        return _bitflip(d, rng, pool) if out is None else out

    return mutation


def _pick(rng: np.random.Generator, keys: list[str]) -> str:
    return keys[int(rng.integers(len(keys)))]


@_edit
def _entry_field(h: dict, body: bytes, rng: np.random.Generator) -> bytes:
    """One field of one tensor's description set to a lie: shape, nnz, crc32, codec, dtype, kind, ..."""
    ents = _entries(h)
    e = ents[_pick(rng, list(ents))]
    key = _pick(rng, ["shape", "shape", "nnz", "crc32", "codec", "dtype", "stored", "kind", "density", "extra"])
    numel = math.prod(e["shape"])
    choices: dict[str, list[Any]] = {
        "shape": [[numel + 1], [max(numel - 1, 0)], [2**31 + 1], [2**20, 2**20], [0, 2**70], [0, 2**62, 2**62],
                  [-1, -numel], [1.5], [1] * 9, "4", [None], [True, 1], [numel], e["shape"][::-1], [*e["shape"], 1]],
        "nnz": [e.get("nnz", 0) + 1, e.get("nnz", 0) - 1, -1, numel + 1, 2**63, 1.0, "1", None, 0, numel],
        "crc32": [e["crc32"] ^ 1, e["crc32"] + 2**32, -1, str(e["crc32"]), None, 1.5],
        "codec": [*CODEC_NAMES.values(), "zstd", 1, None],
        "dtype": _DTYPE_NAMES, "stored": _DTYPE_NAMES, "kind": ["sparse", "dense", "Sparse", None, 1],
        "density": [0.0, 1.0, -1.0, "x", None], "extra": _LIES,
    }[key]
    value = choices[int(rng.integers(len(choices)))]
    if key == "extra":
        e["unknown_field"] = value  # an unknown key: ignored, meaning-preserving
    elif rng.random() < 0.1:
        e.pop(key, None)
    else:
        e[key] = value
    h["__metadata__"]["tensors"] = json.dumps(ents)
    return join(h, body)


@_edit
def _consistent(h: dict, body: bytes, rng: np.random.Generator) -> bytes:
    """Edits that keep every cross-check consistent: a same-numel reshape, a same-size dtype reinterpretation,
    or the as-saved dtype alone. Only a checksum binding the description to the bytes can catch these."""
    ents = _entries(h)
    name = _pick(rng, list(ents))
    e = ents[name]
    kind = _pick(rng, ["reshape", "retype", "dtype"])
    st = h.get(name) if e["kind"] == "dense" else h.get(name + "::values")
    if kind == "reshape" and len(e["shape"]) >= 1:
        numel = math.prod(e["shape"])
        e["shape"] = [numel] if len(e["shape"]) > 1 else [1, numel]
        if e["kind"] == "dense":
            st["shape"] = e["shape"]
    elif kind == "retype" and st["dtype"] in _SAME_SIZE:
        st["dtype"], old, new = _SAME_SIZE[st["dtype"]]
        e["stored"] = new
        e["dtype"] = new if e["dtype"] == old else e["dtype"]
    else:
        e["dtype"] = _pick(rng, ["float32", "float16", "bfloat16", "float64"])
    h["__metadata__"]["tensors"] = json.dumps(ents)
    return join(h, body)


@_edit
def _st_entry(h: dict, body: bytes, rng: np.random.Generator) -> bytes:
    """One safetensors entry's dtype, shape or offsets set to a lie, or the entry removed or renamed."""
    name = _pick(rng, [k for k in h if k != "__metadata__"])
    e = h[name]
    what = _pick(rng, ["dtype", "shape", "offsets", "offsets", "drop", "rename"])
    if what == "dtype":
        e["dtype"] = _pick(rng, _ST_DTYPES)
    elif what == "shape":
        e["shape"] = [[], [0], [len(body)], [2**40], [-1], [1, 1, 1], [e["shape"][0] + 1] if e["shape"] else [2]][
            int(rng.integers(7))]
    elif what == "offsets":
        a, b = e["data_offsets"]
        e["data_offsets"] = [[a, b + 1], [a + 1, b], [b, a], [0, len(body)], [a, 2**64 - 1], [-1, b], [a, a]][
            int(rng.integers(7))]
    elif what == "drop":
        del h[name]
    else:
        h[name + ("x" if rng.random() < 0.5 else "::mask")] = h.pop(name)
    return join(h, body)


@_edit
def _mask_payload(h: dict, body: bytes, rng: np.random.Generator) -> bytes:
    """A mask payload with its codec byte (and maybe the header's codec name) changed, bytes flipped, or its
    length changed with the framing kept consistent, so the codec decoders see foreign or damaged payloads."""
    masks = [k for k in h if k.endswith("::mask")]
    if not masks:
        return None  # type: ignore[return-value]
    name = _pick(rng, masks)
    a, b = h[name]["data_offsets"]
    payload = bytearray(body[a:b])
    what = _pick(rng, ["codec", "codec", "flip", "grow", "shrink", "params"])
    if what == "codec" and payload:
        payload[0] = _pick(rng, [*CODEC_NAMES, 0, 5, 255])  # type: ignore[arg-type]
        if rng.random() < 0.7:  # keep the header's codec name in step, so decoding proper is reached
            ents = _entries(h)
            ents[name[: -len("::mask")]]["codec"] = CODEC_NAMES.get(payload[0], "unknown")
            h["__metadata__"]["tensors"] = json.dumps(ents)
    elif what == "flip" and payload:
        i = int(rng.integers(len(payload)))
        payload[i] ^= 1 << int(rng.integers(8))
    elif what == "grow":
        payload += rng.bytes(int(rng.choice([1, 4, 8, 64])))
    elif what == "shrink":
        del payload[len(payload) - int(rng.integers(1, 9)) :]
    elif len(payload) >= 3:  # N:M n, m bytes or block tile sizes
        payload[1 + int(rng.integers(min(8, len(payload) - 1)))] = int(rng.choice([0, 1, 2, 3, 4, 16, 17, 255]))
    return _reframe(h, body, {name: bytes(payload)})


@_edit
def _metadata(h: dict, body: bytes, rng: np.random.Generator) -> bytes:
    """Top-level metadata: format, version, the JSON strings themselves (truncated, nested, huge numbers,
    duplicate keys), meta edits and whitespace (the last two meaning-preserving)."""
    md = h["__metadata__"]
    what = _pick(rng, ["format", "version", "tensors", "nest", "bigint", "dup", "meta", "space", "order", "drop"])
    if what == "format":
        md["format"] = _pick(rng, ["sparseflow-state", "pt", "", "SPARSEFLOW-SPARSE"])
    elif what == "version":
        md["version"] = _pick(rng, ["0", "2", "1.0", " 1", ""])
    elif what == "tensors":
        md["tensors"] = md["tensors"][: int(rng.integers(len(md["tensors"])))]
    elif what == "nest":
        depth = int(rng.choice([100, 5000, 100000]))
        md[_pick(rng, ["tensors", "meta"])] = "[" * depth + "]" * depth
    elif what == "bigint":
        md["meta"] = '{"n": ' + "9" * int(rng.choice([20, 5000])) + "}"
    elif what == "dup":  # a duplicate key: JSON keeps the last, so a bogus first copy must not matter
        ents = md["tensors"]
        first = ents.index("{", 1)
        md["tensors"] = ents[:first + 1] + '"shape": [7, 7], "crc32": 0, ' + ents[first + 1:]
    elif what == "meta":
        md["meta"] = json.dumps({"edited": int(rng.integers(100))})
    elif what == "space":
        md["tensors"] = json.dumps(_entries(h), indent=int(rng.integers(0, 3)))
    elif what == "order":
        ents = _entries(h)
        md["tensors"] = json.dumps({k: dict(sorted(v.items())) for k, v in reversed(ents.items())})
    else:
        md.pop(_pick(rng, ["tensors", "meta", "version", "format"]))
    return join(h, body, pad=b"\t" if what == "space" else b" ")


@_edit
def _escape_chain(h: dict, body: bytes, rng: np.random.Generator) -> bytes:
    """A well-formed i.i.d. payload that claims one kept weight after ``M`` escape symbols in a large tensor.
    Near p = 1e-5 an escape costs about one bit, so a small payload makes a decoder that only bounds symbols
    by payload length loop ``M`` times; each escape moves ``K-1`` positions, so ``numel / (K-1)`` bounds them."""
    masks = [k for k in h if k.endswith("::mask")]
    if not masks:
        return None  # type: ignore[return-value]
    name = _pick(rng, masks)[: -len("::mask")]
    ents = _entries(h)
    numel = int(rng.choice([94_000, 2**17, 2**20]))
    k, model = _gap_model(numel, 1)  # the model the decoder will rebuild from (numel, nnz=1)
    count = int(rng.choice([1_000, 30_000, 600_000], p=[0.6, 0.35, 0.05]))
    payload = bytes([IID]) + ans_encode(np.array([k - 1] * count + [0], dtype=np.int32), model)
    ents[name] |= {"shape": [numel], "nnz": 1, "codec": "iid"}
    h["__metadata__"]["tensors"] = json.dumps(ents)
    values = h[name + "::values"]
    values["shape"] = [1]
    width = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}.get(values["dtype"], 1)
    return _reframe(h, body, {name + "::mask": payload, name + "::values": bytes(width)})


_ALL: dict[str, Callable[[bytes, np.random.Generator, list[bytes]], bytes]] = {
    "bitflip": _bitflip, "bitflip-data": _bitflip_body, "byte": _byte, "truncate": _truncate, "insert": _insert,
    "delete": _delete, "splice": _splice, "length-lie": _length_lie, "entry-field": _entry_field,
    "consistent-edit": _consistent, "safetensors-entry": _st_entry, "mask-payload": _mask_payload,
    "metadata": _metadata, "escape-chain": _escape_chain,
}
MUTATORS = tuple(_ALL)
_WEIGHTS = np.array([2, 2, 1, 1, 1, 1, 1, 1, 3, 1, 2, 3, 2, 0.1], dtype=float)


def mutate(data: bytes, rng: np.random.Generator, pool: list[bytes]) -> tuple[bytes, tuple[str, ...]]:
    """One to three mutations of ``data``, drawn from ``rng``; returns the file and the mutation names."""
    names = tuple(str(n) for n in rng.choice(MUTATORS, size=int(rng.choice([1, 1, 1, 2, 3])),
                                             p=_WEIGHTS / _WEIGHTS.sum()))
    for n in names:
        if not data:
            data = rng.bytes(int(rng.integers(0, 16)))
            continue
        data = _ALL[n](data, rng, pool)
    return data, names
