"""The .sfz container, mask sequences, torch.nn.utils.prune interop and the export/inspect commands.

Oracles: the saved model itself (bitwise equal tensors and outputs after loading), PyTorch's own pruning
buffers, log2 C(N, n) for sizes. Corruption and fuzzing live in test_storage_reliability.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.nn.utils import prune

import sparseflow as sf
from sparseflow.errors import StorageError
from sparseflow.storage.codec import iid_bound_bits
from sparseflow.storage.container import read, save
from sparseflow.storage.loading import load, load_mask
from sparseflow.storage.codec import binary_entropy
from sparseflow.storage.report import inspect
from sparseflow.storage.interop import from_torch_prune, remove_torch_prune_, to_torch_prune_
from sparseflow.storage.sequence import append_mask, load_masks, mask_sequence_bits, save_masks

from conftest import RunCli, build_tiny_convnet


def lenet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def pruned(model: nn.Module, sparsity: float = 0.9, **kw) -> sf.Mask:
    method = sf.MagnitudePruning(sparsity=sparsity, **kw)
    method.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    return method.mask


def same_state(a: nn.Module | dict, b: nn.Module | dict) -> bool:
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_is_exact_and_keeps_the_mask(tmp_path: Path) -> None:
    model = lenet()
    mask = pruned(model)
    with torch.no_grad():  # a kept weight that is exactly 0 must stay kept
        name = "0.weight"
        idx = torch.nonzero(mask[name])[0]
        model[0].weight[tuple(idx)] = 0.0
    save(tmp_path / "m.sfz", model, mask=mask)
    fresh = lenet(seed=1)
    load(tmp_path / "m.sfz", fresh)
    assert same_state(model, fresh)
    assert load_mask(tmp_path / "m.sfz") == mask
    x = torch.randn(5, 784)
    assert torch.equal(fresh(x), model(x))


def test_without_mask_sparse_tensors_are_found_from_their_zeros(tmp_path: Path) -> None:
    model = lenet()
    mask = pruned(model)
    info = save(tmp_path / "m.sfz", model)
    assert {n for n, e in info.items() if e["kind"] == "sparse"} == set(mask)
    assert read(tmp_path / "m.sfz").mask == mask
    assert same_state(load(tmp_path / "m.sfz"), model)


def test_file_size_is_values_plus_the_mask_bound(tmp_path: Path) -> None:
    model = lenet()
    mask = pruned(model)
    save(tmp_path / "m.sfz", model, mask=mask)
    stored = read(tmp_path / "m.sfz")
    for name, m in mask.items():
        n, k = m.numel(), int(m.sum())
        assert stored.info[name]["values_bytes"] == 4 * k
        # the chosen codec is never worse than the i.i.d. one: ≤ bound + 64 bytes
        assert 8 * stored.info[name]["mask_bytes"] <= 1.002 * iid_bound_bits(n, k) + 64 * 8
    values = sum(4 * int(m.sum()) for m in mask.values())
    dense_rest = sum(4 * t.numel() for n, t in model.state_dict().items() if n not in mask)
    bound = sum(iid_bound_bits(m.numel(), int(m.sum())) for m in mask.values()) / 8
    overhead = (tmp_path / "m.sfz").stat().st_size - values - dense_rest - bound
    assert 0 < overhead < 3000  # header JSON and per-tensor coder state, not a multiple of anything


@pytest.mark.parametrize("dtype,torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16),
                                               (torch.float16, torch.float16)])
def test_half_precision_values(tmp_path: Path, dtype, torch_dtype) -> None:
    model = lenet()
    mask = pruned(model)
    save(tmp_path / "m.sfz", model, mask=mask, dtype=dtype)
    with safe_open(tmp_path / "m.sfz", framework="pt") as f:  # any safetensors reader can list it
        assert f.get_tensor("0.weight::values").dtype == torch_dtype
        assert f.get_tensor("0.bias").dtype == torch_dtype
    state = load(tmp_path / "m.sfz")
    for name, t in model.state_dict().items():
        assert state[name].dtype == t.dtype  # loaded back in the dtype it was saved from
        assert torch.equal(state[name], t.to(torch_dtype).to(t.dtype))


def test_structured_masks_pick_structured_codecs(tmp_path: Path) -> None:
    model = lenet()
    mask = pruned(model, 0.5, pattern=sf.NM(2, 4))
    info = save(tmp_path / "nm.sfz", model, mask=mask)
    assert all(info[n]["codec"] == "nm" for n in mask)
    conv = build_tiny_convnet()
    cmask = pruned(conv, 0.75, pattern=sf.Block(2, 2))
    info = save(tmp_path / "block.sfz", conv, mask=cmask)
    assert all(info[n]["codec"] in ("block", "nm") for n in cmask)
    fresh = build_tiny_convnet(seed=3)
    load(tmp_path / "block.sfz", fresh)
    assert same_state(conv, fresh)


def test_weights_outside_the_mask_are_refused_not_dropped(tmp_path: Path) -> None:
    model = lenet()
    mask = pruned(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # now nonzero everywhere
    with pytest.raises(StorageError, match="outside its mask"):
        save(tmp_path / "m.sfz", model, mask=mask)
    assert not (tmp_path / "m.sfz").exists()


def test_save_rejects_bad_arguments(tmp_path: Path) -> None:
    model = lenet()
    with pytest.raises(StorageError, match=r"'w' has 1 finite values that overflow torch.float16"):
        save(tmp_path / "m.sfz", {"w": torch.tensor([1.0, 1e6])}, dtype="fp16")
    save(tmp_path / "m.sfz", {"w": torch.tensor([1.0, 1e6])}, dtype="bf16")  # bf16 has fp32's range
    with pytest.raises(StorageError, match="dtype"):
        save(tmp_path / "m.sfz", model, dtype="fp8")
    with pytest.raises(StorageError, match="not a tensor of the model"):
        save(tmp_path / "m.sfz", model, mask={"nope.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(StorageError, match=r"shape \(3,\)"):
        save(tmp_path / "m.sfz", model, mask={"0.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(StorageError, match="JSON"):
        save(tmp_path / "m.sfz", model, meta={"x": object()})
    with pytest.raises(sf.SparseflowError, match="does not exist"):
        save(tmp_path / "missing" / "m.sfz", model)


def test_load_into_a_mismatched_model_names_tensor_and_shapes(tmp_path: Path) -> None:
    save(tmp_path / "m.sfz", lenet())
    other = nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 100), nn.ReLU(), nn.Linear(100, 10))
    with pytest.raises(StorageError, match=r"'0.weight' has shape \(300, 784\) in the file but \(200, 784\)"):
        load(tmp_path / "m.sfz", other)
    smaller = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100))
    with pytest.raises(StorageError, match="not in the model"):
        load(tmp_path / "m.sfz", smaller)
    load(tmp_path / "m.sfz", smaller, strict=False)
    assert torch.equal(smaller[0].weight, lenet()[0].weight)


def test_meta_round_trips(tmp_path: Path) -> None:
    save(tmp_path / "m.sfz", lenet(), meta={"epoch": 3, "note": "ok", "nested": [1, 2.5]})
    assert read(tmp_path / "m.sfz").meta == {"epoch": 3, "note": "ok", "nested": [1, 2.5]}


# --- torch.nn.utils.prune interop -------------------------------------------------------------------------


def test_torch_prune_masks_import_export_and_fold(tmp_path: Path) -> None:
    model = lenet()
    prune.l1_unstructured(model[0], "weight", amount=0.8)
    prune.l1_unstructured(model[0], "weight", amount=0.5)  # a PruningContainer: masks combined
    prune.random_unstructured(model[2], "weight", amount=0.3)
    mask = from_torch_prune(model)
    assert set(mask) == {"0.weight", "2.weight"}
    assert torch.equal(mask["0.weight"], model[0].weight_mask.bool())
    assert mask.densities()["0.weight"] == pytest.approx(0.1, abs=1e-4)

    save(tmp_path / "m.sfz", model)  # folded: weight = weight_orig * weight_mask, stored sparse
    x = torch.randn(3, 784)
    plain = lenet(seed=5)
    load(tmp_path / "m.sfz", plain)  # one call into a plain dense model
    assert torch.equal(plain(x), model(x))
    assert read(tmp_path / "m.sfz").mask == mask

    again = lenet(seed=6)
    to_torch_prune_(again, mask)
    load(tmp_path / "m.sfz", again)  # fills weight_orig and weight_mask
    assert torch.equal(again(x), model(x))
    assert from_torch_prune(again) == mask
    remove_torch_prune_(again)
    assert {n for n, _ in again.named_parameters()} == {n for n, _ in lenet().named_parameters()}
    assert torch.equal(again(x), model(x))


def test_to_torch_prune_rejects_a_wrong_mask() -> None:
    with pytest.raises(sf.MaskError, match="shape"):
        to_torch_prune_(lenet(), sf.Mask({"0.weight": torch.ones(2, 2, dtype=torch.bool)}))


# --- mask sequences ---------------------------------------------------------------------------------------


def nested_levels(levels: int = 6, rate: float = 0.2) -> list[sf.Mask]:
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(200, 300, generator=g), "b": torch.randn(50, 200, generator=g)}
    out = []
    for k in range(levels):
        keep = (1 - rate) ** k
        out.append(sf.Mask({n: t.abs() >= t.abs().flatten().kthvalue(max(1, int((1 - keep) * t.numel()))).values
                            for n, t in w.items()}))
    return out


def test_nested_levels_cost_their_conditional_entropy(tmp_path: Path) -> None:
    levels = nested_levels()
    info = save_masks(tmp_path / "seq.sfm", levels)
    assert load_masks(tmp_path / "seq.sfm") == levels
    bounds = mask_sequence_bits(levels)
    for k, (lv, bound) in enumerate(zip(info, bounds)):
        bits = 8 * sum(e["bytes"] for e in lv.values())
        assert bits <= 1.01 * bound + 2 * 64 * 8
        if k >= 2:  # (level 0 keeps everything, so level 1 costs the same either way)
            assert all("kept" in e for e in lv.values())  # coded as deltas
    # nested: level k costs log2 C(n_{k-1}, n_k), far below its own log2 C(N, n_k)
    alone = sum(iid_bound_bits(m.numel(), int(m.sum())) for m in levels[3].values())
    assert bounds[3] < 0.6 * alone


def test_snapshots_with_swaps_cost_the_two_class_bound(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    m0 = torch.rand(256, 256, generator=g) < 0.1
    m1 = m0.clone().view(-1)
    on, off = torch.nonzero(m1).flatten(), torch.nonzero(~m1).flatten()
    m1[on[torch.randperm(on.numel(), generator=g)[:300]]] = False
    m1[off[torch.randperm(off.numel(), generator=g)[:300]]] = True
    m1 = m1.view(256, 256)
    expected = iid_bound_bits(int(m0.sum()), int(m0.sum()) - 300) + iid_bound_bits(int((~m0).sum()), 300)
    assert mask_sequence_bits([{"w": m0}, {"w": m1}])[1] == pytest.approx(expected)
    info = save_masks(tmp_path / "dyn.sfm", [{"w": m0}, {"w": m1}])
    assert 8 * info[1]["w"]["bytes"] <= expected + 2 * 64 * 8
    append_mask(tmp_path / "dyn.sfm", {"w": m0})
    back = load_masks(tmp_path / "dyn.sfm")
    assert [torch.equal(m["w"], t) for m, t in zip(back, (m0, m1, m0))] == [True] * 3


def test_sequence_rejects_inconsistent_levels(tmp_path: Path) -> None:
    a = torch.ones(4, 4, dtype=torch.bool)
    with pytest.raises(StorageError, match="same tensors"):
        save_masks(tmp_path / "s.sfm", [{"w": a}, {"v": a}])
    with pytest.raises(StorageError, match="shape"):
        save_masks(tmp_path / "s.sfm", [{"w": a}, {"w": torch.ones(2, 8, dtype=torch.bool)}])
    with pytest.raises(StorageError, match="at least one"):
        save_masks(tmp_path / "s.sfm", [])
    save(tmp_path / "m.sfz", lenet())
    with pytest.raises(StorageError, match="not a sparseflow mask-sequence file"):
        load_masks(tmp_path / "m.sfz")


# --- inspect and the CLI ----------------------------------------------------------------------------------


def test_inspect_reports_bits_per_position_against_entropy(tmp_path: Path) -> None:
    model = lenet()
    mask = pruned(model)
    save(tmp_path / "m.sfz", model, mask=mask)
    report = inspect(tmp_path / "m.sfz")
    rows = {t.name: t for t in report.tensors}
    for name, m in mask.items():
        p = m.float().mean().item()
        assert rows[name].density == pytest.approx(p)
        assert rows[name].bound_bits_per_position == pytest.approx(binary_entropy(p))
        assert rows[name].bits_per_position == pytest.approx(8 * rows[name].mask_bytes / m.numel())
    assert report.file_bytes == (tmp_path / "m.sfz").stat().st_size
    assert binary_entropy(0.1) == pytest.approx(0.469, abs=5e-4)
    assert binary_entropy(0.01) == pytest.approx(0.0808, abs=5e-4)


def test_export_and_inspect_commands(tmp_path: Path, run_cli: RunCli) -> None:
    run = tmp_path / "run"
    code, train_out, err = run_cli(["train", "--quick", "--epochs", "1", "--no-baseline", "--out", str(run), "--json"])
    assert code == 0, err
    code, out, err = run_cli(["export", str(run), "--out", str(tmp_path / "m.sfz"), "--dtype", "fp16", "--json"])
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["file_bytes"] == (tmp_path / "m.sfz").stat().st_size
    from sparseflow.io import load_state

    ckpt, _ = load_state(run / "checkpoint.safetensors")
    saved_mask = ckpt["method"]["mask"]
    stored = read(tmp_path / "m.sfz")
    assert set(stored.mask) == set(saved_mask)
    for name, m in saved_mask.items():
        assert torch.equal(stored.mask[name], m.bool())
        assert torch.equal(stored.tensors[name], ckpt["model"][name].half().float())
    assert result["mask_bytes"] == sum(e["mask_bytes"] for e in stored.info.values())

    # the run itself wrote model.sfz: fp32, the same tensors and masks as the checkpoint
    train_json = json.loads(train_out.strip().splitlines()[-1])
    assert train_json["storage"]["file_bytes"] == (run / "model.sfz").stat().st_size
    in_run = read(run / "model.sfz")
    assert in_run.mask == stored.mask
    assert all(torch.equal(in_run.tensors[k], v) for k, v in ckpt["model"].items())

    code, out, err = run_cli(["inspect", str(tmp_path / "m.sfz"), "--json"])
    assert code == 0
    assert json.loads(out.strip().splitlines()[-1])["mask_bytes"] == result["mask_bytes"]
    code, out, err = run_cli(["analyze", str(tmp_path / "m.sfz"), "--json"])  # rebuilt from the stored config
    assert code == 0, out

    code, out, err = run_cli(["export", str(run), "--out", str(tmp_path / "c.sfz"), "--dtype", "fp16",
                              "--compress-values", "--json"])
    assert code == 0, err
    packed = read(tmp_path / "c.sfz")
    assert all(torch.equal(packed.tensors[k], v) for k, v in stored.tensors.items())
    assert json.loads(out.strip().splitlines()[-1])["values_bytes"] <= result["values_bytes"]  # small layers stay raw

    code, out, err = run_cli(["export", str(run), "--out", str(tmp_path / "d.safetensors"), "--dense", "--json"])
    assert code == 0
    from safetensors.torch import load_file

    dense = load_file(tmp_path / "d.safetensors")
    assert all(torch.equal(dense[k], v) for k, v in ckpt["model"].items())


def test_cli_errors_exit_2(tmp_path: Path, run_cli: RunCli) -> None:
    code, out, err = run_cli(["inspect", str(tmp_path / "none.sfz")])
    assert code == 2 and "does not exist" in err
    (tmp_path / "junk.sfz").write_bytes(b"\x00" * 20)
    code, out, err = run_cli(["inspect", str(tmp_path / "junk.sfz")])
    assert code == 2 and "error:" in err
    code, out, err = run_cli(["export", str(tmp_path), "--out", str(tmp_path / "x.sfz"), "--dtype", "fp8"])
    assert code == 2 and "--dtype" in err
    code, out, err = run_cli(["export", str(tmp_path), "--out", str(tmp_path / "x.bin")])
    assert code == 2 and ".sfz" in err


def test_file_size_beats_every_dense_format_at_high_sparsity(tmp_path: Path) -> None:
    # The point of the format: at 90 % the file is ~ values + N·H(p)/8, a fraction of dense fp32.
    model = lenet()
    mask = pruned(model)
    save(tmp_path / "m.sfz", model, mask=mask)
    n = sum(t.numel() for t in model.state_dict().values())
    size = (tmp_path / "m.sfz").stat().st_size
    assert size < 0.16 * 4 * n
    kept = sum(int(m.sum()) for m in mask.values())
    assert size > 4 * kept  # can't be below the values themselves


def test_mutated_mask_sequence_files_are_refused_or_identical(tmp_path: Path) -> None:
    # Bit flips, byte edits and truncations of a .sfm file: a StorageError or the very same masks, never
    # another exception or different masks (the .sfz fuzzing lives in test_storage_reliability.py).
    levels = nested_levels(4)
    save_masks(tmp_path / "seq.sfm", levels)
    data = (tmp_path / "seq.sfm").read_bytes()
    rng = np.random.default_rng(0)
    target = tmp_path / "mutated.sfm"
    outcomes = {"refused": 0, "identical": 0}
    for case in range(300):
        b = bytearray(data)
        kind = case % 3
        if kind == 0:
            pos = int(rng.integers(0, len(b)))
            b[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            pos = int(rng.integers(0, len(b)))
            b[pos] = int(rng.integers(0, 256))
        else:
            b = b[: int(rng.integers(0, len(b)))]
        target.write_bytes(bytes(b))
        try:
            back = load_masks(target)
        except StorageError:
            outcomes["refused"] += 1
            continue
        assert back == levels, f"case {case} decoded to different masks"
        outcomes["identical"] += 1
    assert outcomes["refused"] > 200


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_compressed_values_round_trip_bitwise_and_shrink(tmp_path: Path, dtype: str) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(512, 512, generator=g)
    m = torch.rand(512, 512, generator=g) < 0.2
    state = {"w": w * m, "b": torch.randn(8192, generator=g), "tiny": torch.randn(7, generator=g)}
    save(tmp_path / "raw.sfz", state, mask={"w": m}, dtype=dtype)
    info = save(tmp_path / "coded.sfz", state, mask={"w": m}, dtype=dtype, compress_values=True)
    assert info["w"]["values"] == info["b"]["values"] == "planes" and "values" not in info["tiny"]
    raw, coded = read(tmp_path / "raw.sfz"), read(tmp_path / "coded.sfz")
    for name in state:  # lossless: the very same bits as the uncompressed file
        assert torch.equal(coded.tensors[name].view(torch.uint8), raw.tensors[name].view(torch.uint8))
    assert coded.mask == raw.mask
    # Gaussian values: the sign+exponent byte carries far less than 8 bits
    assert coded.info["w"]["values_bytes"] < 0.9 * raw.info["w"]["values_bytes"]
    assert (tmp_path / "coded.sfz").stat().st_size < (tmp_path / "raw.sfz").stat().st_size


def test_compressed_values_refuse_corruption(tmp_path: Path) -> None:
    from sparseflow.storage.values import decode_values, encode_values

    v = torch.randn(10_000, generator=torch.Generator().manual_seed(1))
    payload = encode_values(v)
    assert torch.equal(decode_values(payload, v.numel(), torch.float32), v)
    for bad in (payload[:-4], payload + b"\0", bytes([9]) + payload[1:], payload[:2] + bytes([7]) + payload[3:]):
        with pytest.raises(StorageError):
            decode_values(bad, v.numel(), torch.float32)
    with pytest.raises(StorageError, match="histogram counts"):
        decode_values(payload, v.numel() + 1, torch.float32)
    assert encode_values(torch.randn(100)) is None  # too few values to pay for the histograms
