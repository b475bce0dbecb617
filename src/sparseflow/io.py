"""Pickle-free, atomic persistence: nested Python state as one safetensors file.

Checkpoints, run directories and the compressed storage format all need to write a nested structure
(model and optimizer ``state_dict``s, RNG states, counters) without ``pickle`` — loading a pickle runs
arbitrary code — and without ever leaving a half-written file behind after a crash.

The file layout is a plain safetensors file:

* tensors under generated names ``t0``, ``t1``, ... (in depth-first order of the structure);
* the header metadata ``{"format": "sparseflow-state", "version": "1", "skeleton": <json>,
  "meta": <json>}``, where the skeleton is the structure with each tensor replaced by
  ``{"__tensor__": "t0"}``; with ``save_state(..., checksum=True)`` also ``"sha256"``: a SHA-256 over
  every tensor (name, dtype, shape, bytes, in name order), the skeleton and the meta, which
  :func:`load_state` verifies whenever it is present.

The skeleton survives JSON exactly: dicts with a non-str key (optimizer states use int keys) become
``{"__dict__": [[key, value], ...]}``, tuples ``{"__tuple__": [...]}`` and non-finite floats
``{"__float__": "nan" | "inf" | "-inf"}``. Subclasses come back as their base type (an ``OrderedDict``
as ``dict``, a named tuple as ``tuple``, an ``nn.Parameter`` as ``Tensor``), and a tensor that appears
twice comes back as two equal tensors.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save

from sparseflow.errors import PathError, SparseflowError, WriteError

__all__ = [
    "atomic_write_bytes",
    "check_file_target",
    "check_folder_target",
    "make_folder",
    "path_error",
    "atomic_write_text",
    "write_error",
    "removed_on_failure",
    "flatten_state",
    "unflatten_state",
    "save_state",
    "load_state",
    "payload_sha256",
]

FORMAT = "sparseflow-state"
VERSION = "1"
# Single-key JSON objects with these keys are encodings, so a user dict shaped like one is itself
# written in the "__dict__" form to stay unambiguous.
_MARKERS = frozenset({"__tensor__", "__tuple__", "__dict__", "__float__"})


# ---------------------------------------------------------------------------------------------
# Output paths: refused before any work with a message that names the path the user gave.


def _where(path: Path, label: str | None, kind: str) -> str:
    return f"{label} {str(path)!r}" if label else f"{kind} {str(path)!r}"


def _existing_ancestor(path: Path) -> Path:
    """The nearest part of ``path`` (itself or a parent) that exists; '.' for a relative path with none."""
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


def check_folder_target(path: str | os.PathLike[str], label: str | None = None) -> Path:
    """Refuse a folder that cannot be created or written (it is a file, lies under a file, or in a read-only
    folder), with a :class:`PathError` naming ``label`` (the option, such as ``--out``) and the path."""
    path = Path(path)
    where = _where(path, label, "folder")
    if path.exists() and not path.is_dir():
        raise PathError(f"{where} is a file, not a folder: pass a folder (it is created if missing), "
                        "or move the file away")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise PathError(f"{where} lies under {str(base)!r}, which is a file: pass a path in a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PathError(f"{where} cannot be written: {str(base)!r} is read-only for this user; "
                        "choose a folder you can write to")
    return path


def check_file_target(path: str | os.PathLike[str], label: str | None = None) -> Path:
    """Refuse a file that cannot be written (the path is a folder, its folder is missing, is a file or is
    read-only), with a :class:`PathError` naming ``label`` (the option) and the path."""
    path = Path(path)
    where = _where(path, label, "file")
    if path.is_dir():
        raise PathError(f"{where} is a folder, not a file: pass a file name, such as {str(path / 'name')!r}")
    parent = path.parent
    if not parent.is_dir():
        base = _existing_ancestor(parent)
        if base.is_dir():
            raise PathError(f"{where} cannot be written: its folder {str(parent)!r} does not exist; create it first")
        raise PathError(f"{where} lies under {str(base)!r}, which is a file: pass a path in a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PathError(f"{where} cannot be written: its folder {str(parent)!r} is read-only for this user; "
                        "choose a folder you can write to")
    return path


def path_error(path: str | os.PathLike[str], e: OSError, doing: str = "write") -> PathError:
    """``e`` (from writing or reading ``path``, perhaps through a temporary file) as a :class:`PathError` that
    names ``path`` itself, keeps ``e.errno`` and says what to do."""
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    cause = "the disk is full" if full else (e.strerror or str(e))
    if full:
        remedy = "free some space or write elsewhere; a file that was there before is unchanged"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        remedy = "choose a place you can " + doing + (" to" if doing == "write" else "")
    else:
        remedy = "check the path"
    err = PathError(f"cannot {doing} {str(path)!r} ({cause}): {remedy}")
    err.errno = e.errno
    return err


def make_folder(path: str | os.PathLike[str], label: str | None = None) -> Path:
    """``mkdir -p path`` after :func:`check_folder_target`; an operating-system failure becomes a PathError."""
    path = check_folder_target(path, label)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise path_error(path, e) from e
    return path


# ---------------------------------------------------------------------------------------------
# Atomic writes: a reader sees the old file or the new one, never a mix.


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename).

    A failure (no folder, no permission, a full disk) raises :class:`~sparseflow.errors.WriteError` (a
    :class:`PathError`) naming ``path``, never the temporary file, says whether an earlier file at ``path`` is
    unchanged (it always is) and leaves no temporary file behind.
    """
    path = check_file_target(path)
    directory = path.parent
    existed = path.is_file()
    tmp_name = None
    try:
        # Same directory, so os.replace is a rename within one filesystem and therefore atomic.
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; keep an existing file's mode, else use the usual 0644.
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException as e:
        # Also on KeyboardInterrupt: never leave a stray temp file next to the target.
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
        if isinstance(e, OSError) and not isinstance(e, PathError):
            raise write_error(path, e, kept=existed) from e
        raise
    _fsync_directory(directory)


def write_error(path: Path, e: OSError, *, kept: bool) -> WriteError:
    """The error for a failed write of ``path``: what failed and why, whether the old file is intact, what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        cause, fix = "the disk is full", "free space there (or write somewhere else) and run again"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause, fix = e.strerror or "permission denied", "choose a folder you can write to"
    elif e.errno == errno.EISDIR:
        cause, fix = "it is a folder", "pass a file path, not a folder"
    else:
        cause, fix = e.strerror or str(e) or type(e).__name__, "check the path and the disk, then run again"
    state = "the previous file is unchanged" if kept else "no file was written"
    return WriteError(f"cannot write {str(path)!r} ({cause}): {state}; {fix}", e)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode(encoding))


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk. Some platforms (Windows)
    # cannot open a directory; the rename is still atomic there, just not yet durable.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def removed_on_failure(directory: str | os.PathLike[str], *, disposable: tuple[str, ...] = ("config.json",),
                       enabled: bool = True) -> Iterator[None]:
    """Run the block; if it fails (any exception, Ctrl-C included), remove ``directory`` and the parent folders
    created with it, provided they did not exist before and hold no file other than ``disposable`` ones.

    A failed run so leaves no empty (or config-only) run folder behind, while one that got far enough to be
    resumed (a checkpoint, a journal, an error log) is kept. ``enabled=False`` (other ranks than rank 0 of a
    distributed run) only runs the block.
    """
    directory = Path(directory)
    top = None  # the outermost folder this block may create
    for d in (directory, *directory.parents):
        if d.exists():
            break
        top = d
    try:
        yield
    except BaseException:
        if enabled and top is not None and top.is_dir() and not _holds_files(top, disposable):
            shutil.rmtree(top, ignore_errors=True)
        raise


def _holds_files(directory: Path, disposable: tuple[str, ...]) -> bool:
    return any(not p.is_dir() and p.name not in disposable for p in directory.rglob("*"))


# ---------------------------------------------------------------------------------------------
# Nested structure <-> (flat tensor dict, JSON-able skeleton).


def flatten_state(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``obj`` into ``({name: tensor}, skeleton)``; the skeleton is JSON-serialisable.

    Supported: dict (str or int keys), list, tuple, Tensor, int, float, bool, str, None.
    Anything else raises ``TypeError`` naming its path, e.g. ``obj['state'][0]['buf']``.
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(obj, "obj", tensors, active=set())
    return tensors, skeleton


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor] | None, active: set[int]) -> Any:
    # Order matters: bool is a subclass of int, so it is tested before int.
    if isinstance(obj, torch.Tensor):
        if tensors is None:
            raise TypeError(f"{path} is a tensor, but tensors are not allowed here (metadata is JSON only)")
        name = f"t{len(tensors)}"
        tensors[name] = obj
        return {"__tensor__": name}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)  # json writes repr(float), which reads back bit-for-bit
        return {"__float__": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
    if isinstance(obj, (dict, list, tuple)):
        # A structure that contains itself would recurse forever; name where the cycle closes.
        if id(obj) in active:
            raise TypeError(f"{path} contains itself (a reference cycle); state must be a tree")
        active.add(id(obj))
        try:
            return _encode_container(obj, path, tensors, active)
        finally:
            active.discard(id(obj))
    raise TypeError(
        f"{path} has unsupported type {type(obj).__name__}; state may hold only dict, list, tuple, "
        "Tensor, int, float, bool, str and None"
    )


def _encode_container(
    obj: dict[Any, Any] | list[Any] | tuple[Any, ...],
    path: str,
    tensors: dict[str, torch.Tensor] | None,
    active: set[int],
) -> Any:
    if isinstance(obj, dict):
        for key in obj:
            if not isinstance(key, (str, int)):
                raise TypeError(
                    f"{path} has a key {key!r} of type {type(key).__name__}; dict keys must be str or int"
                )
        plain = all(type(k) is str for k in obj) and not (len(obj) == 1 and next(iter(obj)) in _MARKERS)
        if plain:
            return {k: _encode(v, f"{path}[{k!r}]", tensors, active) for k, v in obj.items()}
        # Keys are written as JSON scalars (str, int, true/false), which read back as the same type.
        return {"__dict__": [[k, _encode(v, f"{path}[{k!r}]", tensors, active)] for k, v in obj.items()]}
    items = [_encode(v, f"{path}[{i}]", tensors, active) for i, v in enumerate(obj)]
    return {"__tuple__": items} if isinstance(obj, tuple) else items


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """Invert :func:`flatten_state`: rebuild the structure, putting each tensor back in its place."""
    return _decode(skeleton, tensors)


def _decode(node: Any, tensors: dict[str, torch.Tensor] | None) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (key, value), = node.items()
        if key == "__tensor__":
            if tensors is None or value not in tensors:
                raise KeyError(f"skeleton refers to tensor {value!r}, which is not in the file")
            return tensors[value]
        if key == "__tuple__":
            return tuple(_decode(v, tensors) for v in value)
        if key == "__dict__":
            return {k: _decode(v, tensors) for k, v in value}
        if key == "__float__":
            return float(value)  # float("nan"), float("inf"), float("-inf")
    return {k: _decode(v, tensors) for k, v in node.items()}


# ---------------------------------------------------------------------------------------------
# Files.


def save_state(
    path: str | os.PathLike[str], obj: Any, *, meta: dict[str, Any] | None = None, checksum: bool = False
) -> None:
    """Save a nested structure of tensors and plain values to ``path`` (safetensors, atomically).

    ``meta`` is a small JSON-able dict (no tensors) stored in the header, readable without the tensors.
    ``checksum=True`` stores a SHA-256 of the payload in the header; :func:`load_state` verifies it.
    """
    tensors, skeleton = flatten_state(obj)
    meta_skeleton = _encode(meta if meta is not None else {}, "meta", None, active=set())
    stored: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for name, tensor in tensors.items():
        t = tensor.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share memory (two views of one buffer, or the same
        # tensor twice); copy those so every stored tensor owns its bytes.
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen_storage and t.numel() > 0:
            t = t.clone()
        seen_storage.add(t.untyped_storage().data_ptr())
        stored[name] = t
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "skeleton": json.dumps(skeleton, allow_nan=False),
        "meta": json.dumps(meta_skeleton, allow_nan=False),
    }
    if checksum:
        metadata["sha256"] = payload_sha256(stored, metadata["skeleton"], metadata["meta"])
    atomic_write_bytes(path, _safetensors_save(stored, metadata=metadata))


def payload_sha256(tensors: dict[str, torch.Tensor], skeleton: str, meta: str) -> str:
    """SHA-256 over the tensors (name, dtype, shape and bytes, in name order), the skeleton and the meta."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # the raw bytes, no copy
    h.update(skeleton.encode())
    h.update(b"|")
    h.update(meta.encode())
    return h.hexdigest()


def load_state(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """Load ``(obj, meta)`` written by :func:`save_state`; never unpickles anything.

    Raises :class:`SparseflowError` if the file is missing or is not an intact sparseflow state file.
    """
    path = Path(path)
    if path.is_dir():
        raise PathError(f"state file {str(path)!r} is a folder, not a file; pass the .safetensors file inside it")
    if not path.is_file():
        raise SparseflowError(f"state file {str(path)!r} does not exist; check the path")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise path_error(path, e, "read") from e
    metadata = _read_metadata(path, data)
    try:
        tensors = _safetensors_load(data)
    except Exception as e:  # safetensors raises its own error type for bad offsets or sizes
        raise SparseflowError(
            f"{str(path)!r} is not a readable sparseflow state file: the tensor data is damaged or "
            f"truncated ({e}); restore it from a copy or re-create it"
        ) from e
    if "sha256" in metadata and payload_sha256(tensors, metadata["skeleton"], metadata["meta"]) != metadata["sha256"]:
        raise SparseflowError(
            f"{str(path)!r} is damaged: its SHA-256 checksum does not match its contents (a torn or corrupted "
            "write); restore it from a copy or re-create it"
        )
    try:
        obj = unflatten_state(tensors, json.loads(metadata["skeleton"]))
        meta = _decode(json.loads(metadata["meta"]), None)
    except (KeyError, ValueError, TypeError) as e:
        raise SparseflowError(
            f"{str(path)!r} is not a readable sparseflow state file: its skeleton is damaged ({e}); "
            "restore it from a copy or re-create it"
        ) from e
    return obj, meta


def _read_metadata(path: Path, data: bytes) -> dict[str, str]:
    # The safetensors header is an 8-byte little-endian length followed by that much JSON. Reading
    # it here gives precise messages for the common failures (empty, truncated, some other file).
    def bad(what: str) -> SparseflowError:
        return SparseflowError(
            f"{str(path)!r} is not a readable sparseflow state file: {what}; "
            "pass a file written by sparseflow.io.save_state"
        )

    if len(data) < 8:
        raise bad(f"it is only {len(data)} bytes long (truncated or empty)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise bad(f"its header claims {header_len} bytes but only {len(data) - 8} follow (truncated?)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, ValueError):
        raise bad("its header is not valid JSON") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise bad(f"its format field is {found!r}, expected {FORMAT!r}")
    if metadata.get("version") != VERSION:
        raise bad(f"its version is {metadata.get('version')!r}; this sparseflow reads version {VERSION!r}")
    if "skeleton" not in metadata or "meta" not in metadata:
        raise bad("its header lacks the 'skeleton' or 'meta' entry")
    return metadata


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None (JSON has no inf/NaN); tuples become lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
