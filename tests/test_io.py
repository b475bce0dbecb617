"""Tests for sparseflow.io: exact round trips, optimizer resume, damaged files, atomic writes."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_save

from sparseflow.errors import SparseflowError
from sparseflow.io import (
    atomic_write_bytes,
    atomic_write_text,
    flatten_state,
    load_state,
    save_state,
    unflatten_state,
)


def assert_same(a: Any, b: Any, path: str = "obj") -> None:
    """Exact equality: same types, same keys in the same order, tensors equal bit-for-bit (NaN == NaN)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=path)
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b)), path
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            assert type(k) is type(next(kb for kb in b if kb == k)), f"{path}: key type of {k!r}"
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# --- hypothesis: random nested structures -------------------------------------------------------

_FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
_INT_DTYPES = [torch.int64, torch.int32, torch.int8, torch.uint8]


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    numel = math.prod(shape)
    kind = draw(st.sampled_from(["float", "int", "bool"]))
    if kind == "float":
        values = draw(st.lists(st.floats(width=16), min_size=numel, max_size=numel))
        t = torch.tensor(values, dtype=draw(st.sampled_from(_FLOAT_DTYPES))).reshape(shape)
    elif kind == "int":
        values = draw(st.lists(st.integers(0, 127), min_size=numel, max_size=numel))
        t = torch.tensor(values, dtype=draw(st.sampled_from(_INT_DTYPES))).reshape(shape)
    else:
        values = draw(st.lists(st.booleans(), min_size=numel, max_size=numel))
        t = torch.tensor(values, dtype=torch.bool).reshape(shape)
    if t.dim() == 2 and draw(st.booleans()):
        t = t.t()  # non-contiguous view
    return t


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | tensors()
)
# Keys include the marker names, so a user dict that looks like an encoding must still round-trip.
_markers = st.sampled_from(["__tensor__", "__tuple__", "__dict__", "__float__"])
_keys = st.integers(-5, 5) | st.text(max_size=6) | _markers
_states = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4)
    | st.lists(children, max_size=4).map(tuple)
    | st.dictionaries(_keys, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(_states)
def test_random_structure_round_trips_through_file(obj: Any) -> None:
    tensors_, skeleton = flatten_state(obj)
    assert_same(unflatten_state(tensors_, skeleton), obj)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "state.safetensors"
        save_state(path, obj, meta={"note": "x", 1: (2.5, float("inf"))})
        loaded, meta = load_state(path)
        assert_same(loaded, obj)
        assert_same(meta, {"note": "x", 1: (2.5, float("inf"))})


def test_skeleton_is_plain_json_and_tensors_are_placeholders() -> None:
    t = torch.ones(2)
    tensors_, skeleton = flatten_state({"w": t, 3: (t, None)})
    assert set(tensors_) == {"t0", "t1"}
    t0, t1 = {"__tensor__": "t0"}, {"__tensor__": "t1"}
    assert skeleton == {"__dict__": [["w", t0], [3, {"__tuple__": [t1, None]}]]}
    # A user dict that looks like an encoding is escaped, not mistaken for one.
    lookalike = {"__tensor__": "t0"}
    assert flatten_state(lookalike)[1] == {"__dict__": [["__tensor__", "t0"]]}
    assert unflatten_state(*flatten_state(lookalike)) == lookalike


def test_shared_and_noncontiguous_tensors_save(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    obj = {"a": base, "same": base, "view": base[:, 1], "t": base.t(), "param": torch.nn.Parameter(torch.ones(2))}
    save_state(tmp_path / "s.safetensors", obj)
    loaded, meta = load_state(tmp_path / "s.safetensors")
    assert meta == {}
    for k in ["a", "same", "view", "t"]:
        assert torch.equal(loaded[k], obj[k])
    assert type(loaded["param"]) is torch.Tensor and torch.equal(loaded["param"], torch.ones(2))


def test_bool_tensor_stays_bool(tmp_path: Path) -> None:
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(0)) > 0.5
    save_state(tmp_path / "m.safetensors", {"mask": mask})
    loaded, _ = load_state(tmp_path / "m.safetensors")
    assert loaded["mask"].dtype == torch.bool and torch.equal(loaded["mask"], mask)


def test_unsupported_type_names_the_path() -> None:
    with pytest.raises(TypeError, match=r"obj\['a'\]\[1\].*set"):
        flatten_state({"a": [1, {2}]})
    with pytest.raises(TypeError, match=r"key 1\.5"):
        flatten_state({1.5: 0})
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(TypeError, match="cycle"):
        flatten_state(cyclic)


def test_meta_may_not_hold_tensors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="meta"):
        save_state(tmp_path / "s.safetensors", {}, meta={"t": torch.ones(1)})


# --- optimizer state: resume equals an uninterrupted run ------------------------------------------


def _make(opt_name: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    if opt_name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=1e-3)
    return model, opt


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, i: int) -> None:
    g = torch.Generator().manual_seed(100 + i)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_optimizer_state_round_trip_is_bit_exact(tmp_path: Path, opt_name: str) -> None:
    model, opt = _make(opt_name)
    for i in range(3):
        _step(model, opt, i)
    save_state(tmp_path / "ckpt.safetensors", {"model": model.state_dict(), "optimizer": opt.state_dict()})
    _step(model, opt, 3)  # the uninterrupted run

    fresh_model, fresh_opt = _make(opt_name)
    state, _ = load_state(tmp_path / "ckpt.safetensors")
    fresh_model.load_state_dict(state["model"])
    fresh_opt.load_state_dict(state["optimizer"])
    assert_same(state["optimizer"]["param_groups"], opt.state_dict()["param_groups"])
    _step(fresh_model, fresh_opt, 3)
    for (name, a), b in zip(model.state_dict().items(), fresh_model.state_dict().values()):
        assert torch.equal(a, b), name


# --- damaged or foreign files ------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SparseflowError, match="does not exist"):
        load_state(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("keep", [0, 5, 20, -3])
def test_truncated_file(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "s.safetensors"
    save_state(path, {"w": torch.randn(10, 10), "n": 3})
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(SparseflowError, match="s.safetensors"):
        load_state(path)


def test_foreign_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(safetensors_save({"w": torch.ones(2)}, metadata={"format": "pt"}))
    with pytest.raises(SparseflowError, match="format field is 'pt'"):
        load_state(plain)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(SparseflowError, match="not valid JSON"):
        load_state(junk)


# --- atomic writes -----------------------------------------------------------------------------


def test_failed_replace_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.safetensors"
    save_state(path, {"v": 1})
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        save_state(path, {"v": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["s.safetensors"]


@pytest.mark.parametrize("stage", ["mkstemp", "write", "fsync", "replace"])
def test_full_disk_keeps_the_previous_file_and_names_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                stage: str) -> None:
    import errno

    from sparseflow.errors import WriteError

    path = tmp_path / "metrics.jsonl"
    atomic_write_text(path, "old\n")

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class FullFile:  # a file object whose write fails as on a full disk
        def __init__(self, fd: int, mode: str) -> None:
            self.f = real_fdopen(fd, mode)

        def __enter__(self) -> "FullFile":
            return self

        def __exit__(self, *exc: Any) -> None:
            self.f.close()

        write = full

    real_fdopen = os.fdopen
    patch = {"mkstemp": (tempfile, "mkstemp", full), "write": (os, "fdopen", FullFile),
             "fsync": (os, "fsync", full), "replace": (os, "replace", full)}[stage]
    with monkeypatch.context() as mp:
        mp.setattr(*patch)
        with pytest.raises(WriteError) as e:
            atomic_write_text(path, "new\n")
    assert str(e.value) == (f"cannot write {str(path)!r} (the disk is full): the previous file is unchanged; "
                            "free space there (or write somewhere else) and run again")
    assert isinstance(e.value, SparseflowError) and isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["metrics.jsonl"]  # intact, no temporary


def test_write_onto_a_folder_names_it(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(SparseflowError, match=r"file '.*d' is a folder, not a file"):
        atomic_write_bytes(tmp_path / "d", b"x")
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == []


def test_atomic_write_text_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    atomic_write_text(path, "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    assert path.stat().st_mode & 0o777 == 0o644
    os.chmod(path, 0o600)
    atomic_write_bytes(path, b"again")
    assert path.read_bytes() == b"again" and path.stat().st_mode & 0o777 == 0o600


def test_write_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SparseflowError, match="does not exist"):
        atomic_write_bytes(tmp_path / "no" / "such" / "file", b"x")
