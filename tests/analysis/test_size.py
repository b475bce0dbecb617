"""size_report: hand-computed bounds and 1-bit-mask counts; file bytes against the file save() writes."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from torch import nn

from sparseflow.analysis.size import size_report
from sparseflow.storage.codec import binary_entropy
from sparseflow.errors import StorageError
from sparseflow.mask import Mask
from sparseflow.storage.container import read, save


def _data_bytes(path) -> int:
    """Bytes of a safetensors file after its 8-byte length field and JSON header: the tensors' data."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return len(raw) - 8 - n


def _tiny() -> tuple[dict[str, torch.Tensor], Mask]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 8, generator=g) + 10.0  # no accidental zeros
    keep = torch.zeros(32, dtype=torch.bool)
    keep[torch.tensor([0, 3, 5, 9, 14, 20, 27, 31])] = True  # 8 of 32 kept: p = 1/4
    keep = keep.reshape(4, 8)
    state = {"w": w * keep, "b": torch.tensor([1.0, -2.0, 3.0, 0.5]), "step": torch.tensor([7, 8], dtype=torch.int64)}
    return state, Mask({"w": keep})


def test_binary_entropy_by_hand() -> None:
    assert binary_entropy(0.5) == 1.0 and binary_entropy(0.0) == 0.0 and binary_entropy(1.0) == 0.0
    assert binary_entropy(0.25) == pytest.approx(0.25 * 2 + 0.75 * math.log2(4 / 3))


def test_bound_and_one_bit_accounting_by_hand() -> None:
    state, mask = _tiny()
    rep = size_report(state, mask=mask)
    w, b, step = rep.tensors
    assert (w.name, w.shape, w.numel, w.nnz, w.value_bits, w.kind) == ("w", (4, 8), 32, 8, 32, "sparse")
    # p·N·b_w + N·H(p) with p = 1/4, N = 32, b_w = 32.
    assert w.bound_bits == pytest.approx(8 * 32 + 32 * (0.5 + 0.75 * math.log2(4 / 3)))
    assert w.onebit_bits == 8 * 32 + 32  # kept values + one bit per position
    assert (b.kind, b.bound_bits, b.onebit_bits, b.actual_bytes) == ("dense", 4 * 32, 4 * 32, 16)
    assert (step.value_bits, step.kind, step.bound_bits, step.onebit_bits) == (64, "dense", 128, 128)
    assert w.values_bytes == 8 * 4
    assert rep.numel == 38 and rep.nnz == 8 + 4 + 2
    assert rep.onebit_bytes == (288 + 128 + 128) / 8
    assert rep.dense_bytes == 32 * 4 + 16 + 16
    assert rep.bound_bytes == pytest.approx(sum(t.bound_bits for t in rep.tensors) / 8)


def test_fp16_halves_the_float_values_only() -> None:
    state, mask = _tiny()
    rep = size_report(state, mask=mask, dtype="fp16")
    w, b, step = rep.tensors
    assert (w.value_bits, b.value_bits, step.value_bits) == (16, 16, 64)
    assert w.onebit_bits == 8 * 16 + 32 and w.values_bytes == 16 and rep.dtype == "float16"


@pytest.mark.parametrize("dtype", [None, "fp16", "bf16"])
def test_file_bytes_equal_what_save_writes(tmp_path, make_tiny_convnet, dtype) -> None:
    model = make_tiny_convnet(seed=1)
    with torch.no_grad():  # one layer at 30 % density, a bias of zeros, a mostly-zero bias: all decisions
        model[0].weight.mul_(torch.rand(model[0].weight.shape, generator=torch.Generator().manual_seed(2)) < 0.3)
        model[2].bias.zero_()
        model[5].bias[1:] = 0.0
    mask = Mask({"5.weight": torch.ones_like(model[5].weight, dtype=torch.bool)})
    rep = size_report(model, mask=mask, dtype=dtype)
    path = tmp_path / "m.sfz"
    save(path, model, mask=mask, dtype=dtype)
    info = read(path).info
    assert [t.name for t in rep.tensors] == list(info)
    for t in rep.tensors:
        e = info[t.name]
        assert (t.kind, t.mask_bytes, t.values_bytes) == (e["kind"], e["mask_bytes"], e["values_bytes"]), t.name
        assert t.codec == e.get("codec")
    assert rep.actual_bytes == _data_bytes(path)
    kinds = {t.name: t.kind for t in rep.tensors}
    assert kinds["0.weight"] == kinds["2.bias"] == kinds["5.weight"] == "sparse" and kinds["0.bias"] == "dense"
    # A masked layer with nothing pruned needs no mask bits in the 1-bit accounting.
    fc = next(t for t in rep.tensors if t.name == "5.weight")
    assert fc.onebit_bits == fc.numel * fc.value_bits


def test_torch_prune_is_folded() -> None:
    lin = nn.Linear(16, 8)
    torch.nn.utils.prune.random_unstructured(lin, "weight", amount=0.75)
    rep = size_report(lin)
    names = {t.name: t for t in rep.tensors}
    assert set(names) == {"weight", "bias"}
    kept = int(lin.weight_mask.sum())
    assert names["weight"].kind == "sparse" and names["weight"].nnz == kept == 32
    assert names["weight"].onebit_bits == kept * 32 + 128


def test_mask_mistakes_raise() -> None:
    state, mask = _tiny()
    with pytest.raises(StorageError, match="'nope'"):
        size_report(state, mask={"nope": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(StorageError, match=r"shape \(8, 4\)"):
        size_report(state, mask={"w": torch.ones(8, 4, dtype=torch.bool)})
    with pytest.raises(StorageError, match="outside its mask"):
        size_report(state, mask={"w": torch.zeros(4, 8, dtype=torch.bool)})
    with pytest.raises(StorageError, match="dtype"):
        size_report(state, dtype="fp8")


def test_json_and_markdown_carry_the_rows() -> None:
    state, mask = _tiny()
    rep = size_report(state, mask=mask)
    d = rep.to_json()
    assert [r["name"] for r in d["tensors"]] == ["w", "b", "step"]
    assert d["actual_bytes"] == sum(r["actual_bytes"] for r in d["tensors"])
    assert d["onebit_bytes"] == 68.0 and d["tensors"][0]["density"] == 0.25
    text = rep.markdown()
    assert "| w | 4x8 | 32 | 8 |" in text and "1-bit-mask accounting" in text
