"""Reliability of the .sfz reader: every named corruption is one StorageError naming the tensor and the check.

Oracles: the saved tensors themselves (a file that decodes must decode to exactly them: kept values bitwise,
+0.0 elsewhere), the untouched bytes of the old file after a failed write, and a booby-trapped pickle that
would leave a marker file if anything unpickled it. The fuzz harness (benchmarks/fuzz/sfz_fuzz.py) runs here on a
few hundred files; ``python benchmarks/fuzz/run_fuzz.py`` runs it on 100,000.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from sparseflow.errors import StorageError
from sparseflow.io import save_state
from sparseflow.storage.codec import from_matrix_view
from sparseflow.storage.container import read, read_bytes, save
from sparseflow.storage.loading import load


FUZZ = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz"
sys.path.insert(0, str(FUZZ))
import sfz_fuzz as fz  # noqa: E402
import run_fuzz as fuzz_run  # noqa: E402
from sfz_mutate import join, make_pool, mutate, split  # noqa: E402

_HC = [HealthCheck.function_scoped_fixture]  # the fixtures are read-only or reset per example


def _model_file(tmp_path: Path, codec: str = "iid") -> tuple[Path, dict[str, torch.Tensor]]:
    """A Linear(32 -> 16) weight stored sparse with ``codec`` (chosen by the mask's structure), a dense bias."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 32, generator=g)
    if codec == "nm":  # 2:4 along the input dimension
        m = torch.zeros(16, 8, 4, dtype=torch.bool)
        m.scatter_(2, torch.rand(16, 8, 4, generator=g).argsort(2)[..., :2], True)
        m = m.reshape(16, 32)
    elif codec == "block":  # 2x4 tiles
        m = (torch.rand(8, 8, generator=g) < 0.5).repeat_interleave(2, 0).repeat_interleave(4, 1)
    else:
        m = torch.rand(16, 32, generator=g) < 0.3
    state = {"fc.weight": w * m, "fc.bias": torch.randn(16, generator=g)}
    path = tmp_path / f"{codec}.sfz"
    info = save(path, state, mask={"fc.weight": m})
    assert info["fc.weight"]["codec"] == codec
    return path, state


def _edit(path: Path, fn) -> bytes:
    """The file with its safetensors header passed through ``fn(header, tensors_json_dict)``."""
    h, body = split(path.read_bytes())
    ents = json.loads(h["__metadata__"]["tensors"])
    fn(h, ents)
    h["__metadata__"]["tensors"] = json.dumps(ents)
    return join(h, body)


def _flip(data: bytes, i: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[i] ^= 1 << bit
    return bytes(b)


def _span(path: Path, entry: str) -> tuple[int, int]:
    """Absolute byte range of a safetensors entry in the file."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    a, b = split(data)[0][entry]["data_offsets"]
    return 8 + n + a, 8 + n + b


def _refused(data: bytes, *words: str, **kw) -> str:
    with pytest.raises(StorageError) as e:
        read_bytes(data, **kw)
    msg = str(e.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------
# Named failure modes.


def test_truncated_at_every_kind_of_point_is_refused(tmp_path: Path) -> None:
    path, _ = _model_file(tmp_path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    for cut in (0, 4, 8, 8 + n // 2, 8 + n, 8 + n + 1, len(data) - 1):
        _refused(data[:cut], "truncated")


@pytest.mark.parametrize("codec", ["iid", "nm", "block"])
def test_bit_flip_in_mask_payload_names_the_tensor(tmp_path: Path, codec: str) -> None:
    path, _ = _model_file(tmp_path, codec)
    a, b = _span(path, "fc.weight::mask")
    data = path.read_bytes()
    for i in range(a + 1, b):  # every payload byte after the codec byte, one bit each
        msg = _refused(_flip(data, i, i % 8), "tensor 'fc.weight'")
        assert "mask check failed" in msg or "checksum mismatch" in msg


def test_bit_flip_in_values_fails_the_checksum(tmp_path: Path) -> None:
    path, _ = _model_file(tmp_path)
    for entry, name in (("fc.weight::values", "fc.weight"), ("fc.bias", "fc.bias")):
        a, b = _span(path, entry)
        _refused(_flip(path.read_bytes(), (a + b) // 2, 3), f"tensor {name!r}", "checksum mismatch")


def test_bit_flip_in_header_is_refused(tmp_path: Path) -> None:
    path, _ = _model_file(tmp_path)
    data = path.read_bytes()
    i = data.index(b'"sparseflow-sparse"') + 3
    _refused(_flip(data, i, 1), "not a sparseflow sparse file")
    _refused(_flip(data, data.index(b"{") + 1, 6), "header")  # the opening quote of the first key


def test_header_lying_about_sizes_and_offsets(tmp_path: Path) -> None:
    path, _ = _model_file(tmp_path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    _refused(struct.pack("<Q", len(data)) + data[8:], "header claims")
    _refused(struct.pack("<Q", 2**63) + data[8:], "header claims")

    def shift(h, ents):
        a, b = h["fc.bias"]["data_offsets"]
        h["fc.bias"]["data_offsets"] = [a, b + 4]

    _refused(_edit(path, shift), "not a valid safetensors file")

    def grow(h, ents):
        ents["fc.bias"]["shape"] = [17]

    _refused(_edit(path, grow), "tensor 'fc.bias'", "(16,)", "(17,)")


def test_nnz_mismatch_and_decoded_count_mismatch(tmp_path: Path) -> None:
    path, _ = _model_file(tmp_path, "block")

    def more(h, ents):
        ents["fc.weight"]["nnz"] += 1

    _refused(_edit(path, more), "tensor 'fc.weight'", "values entry")
    # Header and values entry agree on one more tile (8 weights), the mask payload does not.
    data = path.read_bytes()
    h, body = split(data)
    ents = json.loads(h["__metadata__"]["tensors"])
    nnz = ents["fc.weight"]["nnz"]
    ents["fc.weight"]["nnz"] = nnz + 8
    h["__metadata__"]["tensors"] = json.dumps(ents)
    a, b = h["fc.weight::values"]["data_offsets"]
    body = body[:b] + bytes(32) + body[b:]
    for k, e in h.items():
        if k != "__metadata__" and e["data_offsets"][0] >= b:
            e["data_offsets"] = [e["data_offsets"][0] + 32, e["data_offsets"][1] + 32]
    h["fc.weight::values"] |= {"data_offsets": [a, b + 32], "shape": [nnz + 8]}
    _refused(join(h, body), "tensor 'fc.weight'", "mask check failed")


def test_crc_codec_dtype_format_and_version_mismatches(tmp_path: Path) -> None:
    path, _ = _model_file(tmp_path)
    cases = {
        "checksum mismatch": lambda h, e: e["fc.weight"].update(crc32=e["fc.weight"]["crc32"] ^ 1),
        "codec 'nm' in the header differs": lambda h, e: e["fc.weight"].update(codec="nm"),
        "header says torch.float64": lambda h, e: e["fc.weight"].update(stored="float64"),
        "'complex64' is not a known dtype": lambda h, e: e["fc.bias"].update(dtype="complex64"),
        "not a sparseflow sparse file": lambda h, e: h["__metadata__"].update(format="sparseflow-state"),
        "version '3' is not supported": lambda h, e: h["__metadata__"].update(version="3"),
    }
    for words, fn in cases.items():
        _refused(_edit(path, fn), words)
    a, _ = _span(path, "fc.weight::mask")
    data = bytearray(path.read_bytes())
    data[a] = 99  # the payload's codec byte
    _refused(bytes(data), "tensor 'fc.weight'", "codec 99")


def test_absurd_shapes_are_refused_by_max_numel(tmp_path: Path) -> None:
    path, _ = _model_file(tmp_path)
    for shape in ([2**40], [2**20, 2**20], [-1, 8], [1.5], [1] * 9, [0, 2**70], [0, 2**40]):
        _refused(_edit(path, lambda h, e: e["fc.weight"].update(shape=shape)), "tensor 'fc.weight'",
                 max_numel=2**20)
    _refused(path.read_bytes(), "tensor 'fc.weight'", "over the limit of 500", max_numel=500)
    assert set(read(path, max_numel=512).tensors) == {"fc.weight", "fc.bias"}  # 16 x 32 = 512 fits exactly


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        read(tmp_path / "nope.sfz")


def test_malformed_json_is_refused_not_crashed(tmp_path: Path) -> None:
    """Deeply nested JSON (RecursionError) and 5000-digit integers (ValueError) inside the header."""
    path, _ = _model_file(tmp_path)
    for key, text in (("tensors", "[" * 100_000), ("meta", "[" * 100_000), ("meta", '{"a": ' + "9" * 5000 + "}")):
        _refused(_set_md(path, key, text), "header")


def _set_md(path: Path, key: str, text: str) -> bytes:
    h, body = split(path.read_bytes())
    h["__metadata__"][key] = text
    return join(h, body)


@pytest.mark.parametrize("edit", ["reshape", "dtype", "retype"])
def test_description_edits_that_keep_bytes_are_refused(tmp_path: Path, edit: str) -> None:
    """A same-numel reshape, an edited as-saved dtype, or a same-width reinterpretation keeps every value byte,
    so a checksum over the bytes alone passes; the file must still not decode to a different model."""
    path, _ = _model_file(tmp_path)

    def fn(h, ents):
        if edit == "reshape":
            ents["fc.weight"]["shape"] = [32, 16]
        elif edit == "dtype":
            ents["fc.weight"]["dtype"] = "float16"
        else:
            ents["fc.bias"] |= {"dtype": "int32", "stored": "int32"}
            h["fc.bias"]["dtype"] = "I32"

    _refused(_edit(path, fn), "tensor 'fc.")


def test_load_into_mismatched_model_names_tensor_and_both_shapes(tmp_path: Path) -> None:
    path = tmp_path / "m.sfz"
    save(path, nn.Linear(8, 6))
    with pytest.raises(StorageError) as e:
        load(path, nn.Linear(8, 5))
    assert "'weight'" in str(e.value) and "(6, 8)" in str(e.value) and "(5, 8)" in str(e.value)


# ---------------------------------------------------------------------------------------------
# Atomic writes and no pickle.


def test_failing_write_leaves_the_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, state = _model_file(tmp_path)
    old = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    for target in ("replace", "fsync"):
        with monkeypatch.context() as mp:
            mp.setattr(os, target, boom)
            with pytest.raises(OSError, match="disk full"):
                save(path, {"other": torch.ones(3)})
        assert path.read_bytes() == old
        assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left behind
    assert torch.equal(read(path).tensors["fc.bias"], state["fc.bias"])


def test_process_killed_mid_write_leaves_the_old_file_intact(tmp_path: Path) -> None:
    path, _ = _model_file(tmp_path)
    old = path.read_bytes()
    script = (
        "import os, signal, torch\n"
        "from sparseflow.storage.container import save\n"
        "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # dies after writing, before the rename\n"
        f"save({str(path)!r}, {{'big': torch.ones(100_000)}})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-500:]
    assert path.read_bytes() == old
    assert set(read(path).tensors) == {"fc.weight", "fc.bias"}


def test_pickle_files_are_refused_without_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    def never(*a, **k):
        raise AssertionError("the reader unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, never)
    monkeypatch.setattr(torch, "load", never)
    files = {"raw.sfz": pickle.dumps(Trap(), protocol=4)}
    torch.save({"w": torch.ones(2)}, tmp_path / "t.pt")
    files["torch.sfz"] = (tmp_path / "t.pt").read_bytes()
    save_state(tmp_path / "state.sfz", {"w": torch.ones(2)})
    files["state.sfz"] = (tmp_path / "state.sfz").read_bytes()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(StorageError):
            read(tmp_path / name)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Properties: mutated files and round trips.


@pytest.fixture(scope="module")
def pool() -> list[bytes]:
    return make_pool(7, 12)


@settings(max_examples=300, deadline=None, suppress_health_check=_HC)
@given(index=st.integers(0, 2**32 - 1))
def test_mutated_files_are_refused_or_decode_to_the_same_model(pool: list[bytes], index: int) -> None:
    rng = np.random.default_rng(index)
    base = pool[int(rng.integers(len(pool)))]
    data, muts = mutate(base, rng, pool)
    try:
        got = read_bytes(data, max_numel=2**20)
    except StorageError:
        return
    assert fz.same_model(got, read_bytes(base)), f"silently different after {muts}"


def test_fuzz_harness_classifies_outcomes(monkeypatch: pytest.MonkeyPatch) -> None:
    res = fz.fuzz(40, seed=3)
    assert sum(res.counts.values()) == 40 and res.counts["identical"] + res.counts["rejected"] >= 1
    assert fz.case_bytes(3, 5) == fz.case_bytes(3, 5)
    other = read_bytes(make_pool(4, 1)[0])
    for fake, outcome in ((lambda d, **k: {}["missing"], "crash"), (lambda d, **k: other, "silent")):
        calls = []

        def reader(data: bytes, _fake=fake, **kw):  # the reference decodes of the pool are real
            calls.append(1)
            return read_bytes(data, **kw) if len(calls) <= fz._POOL else _fake(data, **kw)

        monkeypatch.setattr(fz, "read_bytes", reader)
        got = fz.fuzz(5, seed=3)
        assert got.counts[outcome] == 5 and {f.outcome for f in got.failures} == {outcome}


@st.composite
def _models(draw):
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=4)))
    if len(shape) >= 2:
        shape = (shape[0], 4 * max(1, shape[1] // 4), *shape[2:])
    kind = draw(st.sampled_from(["random", "nm", "block"]))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    rows = shape[0] if len(shape) >= 2 else 1
    cols = int(np.prod(shape)) // rows if rows else 0
    if kind == "nm" and len(shape) >= 2 and rows * cols:
        mat = (rng.random((rows * cols // 4, 4)).argsort(1) < 2).reshape(rows, cols)
        m = from_matrix_view(mat, shape)
    elif kind == "block" and len(shape) >= 2 and rows % 2 == 0 and rows * cols:
        m = from_matrix_view(np.repeat(np.repeat(rng.random((rows // 2, cols // 4)) < 0.5, 2, 0), 4, 1), shape)
    else:
        m = np.asarray(rng.random(shape) < draw(st.sampled_from([0.0, 0.01, 0.2, 0.5, 0.9, 1.0])))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    w = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(dtype)
    return w, torch.from_numpy(m), draw(st.sampled_from([None, "fp32", "fp16", "bf16"]))


@settings(max_examples=120, deadline=None, suppress_health_check=_HC)
@given(case=_models())
def test_round_trip_is_bitwise_exact(tmp_path: Path, case) -> None:
    w, m, dtype = case
    w = w * m  # outside the mask: zeros, and -0.0 where the weight was negative
    path = tmp_path / "r.sfz"
    save(path, {"w": w}, mask={"w": m}, dtype=dtype)
    stored = read(path)
    target = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, None: w.dtype}[dtype]
    expect = torch.where(m, w.to(target), torch.zeros((), dtype=target)).to(w.dtype)  # +0.0 where pruned
    got = stored.tensors["w"]
    assert got.dtype == w.dtype and got.shape == w.shape
    assert fz._bytes(got) == fz._bytes(expect)
    if w.numel():
        assert torch.equal(stored.mask["w"], m)


def test_fuzz_script(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = fuzz_run.main(["--n", "30", "--seed", "2", "--json", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    obj = json.loads(out.strip().splitlines()[-1])
    assert obj["n"] == 30 and sum(obj["counts"].values()) == 30
    assert set(obj["criteria"]) == {"crashes", "silently different", "max decode time (s)", "over-allocations"}
    assert json.loads((tmp_path / "result.json").read_text())["counts"] == obj["counts"]
    with pytest.raises(SystemExit) as e:
        fuzz_run.main(["--n", "0"])
    assert e.value.code == 2
