""".sfz files of the models users have: Hugging Face transformers (tied embeddings), attention, RNNs, convnets.

Oracles: the saved model itself (outputs and state dict bitwise equal after loading into a freshly built,
re-randomised model of the same config; tied parameters still the same object), the method's own mask
(``load_mask`` equals ``method.mask`` key for key and bit for bit), byte equality of two saves, and the
masked model for ``torch.nn.utils.prune``.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

import realmodels
import sparseflow as sf
from sparseflow.errors import StorageError
from sparseflow.layouts import call, output_tensor, split_batch
from sparseflow.storage import framing
from sparseflow.storage.container import read, read_bytes, save
from sparseflow.storage.loading import load, load_mask
from sparseflow.storage.interop import from_torch_prune, remove_torch_prune_, to_torch_prune_
from sparseflow.storage.report import inspect
from sparseflow.storage.sequence import save_masks

from conftest import RunCli


def output(model: nn.Module, batch) -> torch.Tensor:  # noqa: ANN001
    model.eval()  # BatchNorm reads its running statistics instead of updating them
    with torch.no_grad():
        return output_tensor(call(model, split_batch(batch)[0]))


def prune(model: nn.Module, sparsity: float = 0.9) -> sf.Method:
    """One-shot magnitude pruning of every weight with a layout (Linear, conv, HF Conv1D, attention, RNN,
    embeddings: tied embeddings included), named explicitly so the test does not depend on default targets."""
    method = sf.MagnitudePruning(sparsity=sparsity, targets=sf.Targets(include=tuple(sf.parameter_layouts(model))))
    method.prepare(model)
    return method


def rerandomise_(model: nn.Module, seed: int = 7) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))


def tied_groups(model: nn.Module) -> list[list[str]]:
    names: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    return [g for g in names.values() if len(g) > 1]


def entries(path: Path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def header(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
@pytest.mark.parametrize("arch", sorted(realmodels.ARCHS))
def test_every_arch_round_trips_into_a_fresh_model(arch: str, pruned: bool, tmp_path: Path) -> None:
    model, batch, _ = realmodels.ARCHS[arch]()
    method = prune(model) if pruned else None
    before = output(model, batch)
    path = tmp_path / "m.sfz"
    save(path, model, mask=method.mask if method else None)

    fresh, _, _ = realmodels.ARCHS[arch]()
    rerandomise_(fresh)
    assert not torch.equal(output(fresh, batch), before)  # the load below has something to do
    groups = tied_groups(fresh)
    params = dict(fresh.named_parameters())
    load(path, fresh)
    assert torch.equal(output(fresh, batch), before)
    a, b = model.state_dict(), fresh.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert tied_groups(fresh) == groups == tied_groups(model)  # same tying, same objects as before the load
    assert all(p is params[n] for n, p in fresh.named_parameters())
    for group in groups:
        ptrs = {dict(fresh.named_parameters(remove_duplicate=False))[n].data_ptr() for n in group}
        assert len(ptrs) == 1
    # each tied parameter is stored once, under its first name; the others are aliases
    stored = read(path)
    assert {alias for g in groups for alias in g[1:]} == set(stored.aliases)
    assert all(stored.aliases[alias] == g[0] for g in groups for alias in g[1:])
    if method is not None:
        assert load_mask(path) == method.mask
        again = prune(fresh)  # a different mask: the weights are re-randomised, then loaded
        again.set_mask(load_mask(path))
        assert again.mask == method.mask
        assert torch.equal(output(fresh, batch), before)


@pytest.mark.parametrize("arch", ["gpt2", "llama_tied", "t5"])
def test_tied_weights_are_written_once_and_come_back_as_one_tensor(arch: str, tmp_path: Path) -> None:
    model, batch, _ = realmodels.ARCHS[arch]()
    groups = tied_groups(model)
    assert groups
    save(tmp_path / "m.sfz", model, dtype="fp16")
    names = entries(tmp_path / "m.sfz")
    for group in groups:
        assert group[0] in names and not any(n.startswith(alias) for alias in group[1:] for n in names)
    assert header(tmp_path / "m.sfz")["version"] == "2"
    # as a state dict: every name, in order, each alias the very tensor it refers to
    state = load(tmp_path / "m.sfz")
    assert list(state) == list(model.state_dict())
    for group in groups:
        assert all(state[alias] is state[group[0]] for alias in group[1:])
    fresh, _, _ = realmodels.ARCHS[arch]()
    fresh.load_state_dict(state)
    rounded, _, _ = realmodels.ARCHS[arch]()  # what fp16 storage does to the values
    rounded.load_state_dict({k: v.half().to(v.dtype) if v.is_floating_point() else v
                             for k, v in model.state_dict().items()})
    assert torch.equal(output(fresh, batch), output(rounded, batch))
    assert tied_groups(fresh) == groups


def test_state_dict_input_and_slices_sharing_memory(tmp_path: Path) -> None:
    model, batch, _ = realmodels.gpt2()
    state = model.state_dict()
    save(tmp_path / "a.sfz", state)
    save(tmp_path / "b.sfz", model)
    assert (tmp_path / "a.sfz").read_bytes() == (tmp_path / "b.sfz").read_bytes()
    # a tensor that is a slice of another shares its memory but is not the same tensor: stored separately
    base = torch.arange(12.0).reshape(3, 4)
    save(tmp_path / "s.sfz", {"a": base, "b": base[1:], "c": base.t()})
    back = load(tmp_path / "s.sfz")
    assert read(tmp_path / "s.sfz").aliases == {}
    assert torch.equal(back["b"], base[1:]) and torch.equal(back["c"], base.t())


def test_tied_file_into_untied_model_and_back(tmp_path: Path) -> None:
    tied, batch, _ = realmodels.llama_tied()
    save(tmp_path / "tied.sfz", tied)
    untied, _, _ = realmodels.llama()  # same names, lm_head its own parameter
    assert not tied_groups(untied)
    load(tmp_path / "tied.sfz", untied)  # both names get the one stored tensor
    assert torch.equal(output(untied, batch), output(tied, batch))
    assert not tied_groups(untied)  # the model's own structure is kept
    # an untied file whose two tensors differ cannot go into a model that ties them: one would be lost
    other, _, _ = realmodels.llama()
    save(tmp_path / "untied.sfz", other)
    with pytest.raises(StorageError, match="ties 'lm_head.weight' to 'model.embed_tokens.weight'"):
        load(tmp_path / "untied.sfz", realmodels.llama_tied()[0])


def test_masks_of_tied_tensors(tmp_path: Path) -> None:
    model, _, _ = realmodels.gpt2()
    method = prune(model)
    assert "transformer.wte.weight" in method.mask and "lm_head.weight" not in method.mask
    # a mask given under the alias masks the tied tensor and comes back under the name it was given
    by_alias = sf.Mask({("lm_head.weight" if n == "transformer.wte.weight" else n): m for n, m in method.mask.items()})
    save(tmp_path / "a.sfz", model, mask=by_alias)
    assert load_mask(tmp_path / "a.sfz") == by_alias
    assert read(tmp_path / "a.sfz").info["transformer.wte.weight"]["kind"] == "sparse"
    both = sf.Mask({**method.mask, "lm_head.weight": method.mask["transformer.wte.weight"]})
    save(tmp_path / "b.sfz", model, mask=both)
    assert load_mask(tmp_path / "b.sfz") == both
    clash = dict(both, **{"lm_head.weight": ~method.mask["transformer.wte.weight"]})
    with pytest.raises(StorageError, match="one tensor \\(tied\\) but their masks differ"):
        save(tmp_path / "c.sfz", model, mask=clash)


@pytest.mark.parametrize("arch", ["hf_resnet", "depthwise_conv", "vit", "bert"])
def test_load_mask_without_a_record_leaves_out_mostly_zero_vectors(arch: str, tmp_path: Path) -> None:
    """Files saved without masks (and files from before the record) fall back to the weights stored sparse:
    zero biases, LayerNorm shifts and BatchNorm running means are stored sparse too, but are 1-D."""
    model, _, _ = realmodels.ARCHS[arch]()
    method = prune(model)
    save(tmp_path / "m.sfz", model)
    stored = read(tmp_path / "m.sfz")
    assert stored.masked is None and "masks" not in header(tmp_path / "m.sfz")
    assert any(m.dim() == 1 for m in stored.mask.values())  # what used to break set_mask
    assert load_mask(tmp_path / "m.sfz") == method.mask
    save(tmp_path / "none.sfz", model, mask={})  # an explicit empty mask is recorded as such
    assert load_mask(tmp_path / "none.sfz") == sf.Mask()


def test_equal_models_give_equal_bytes(tmp_path: Path) -> None:
    files = []
    for i in range(2):
        model, _, _ = realmodels.gpt2()  # built separately, equal
        method = prune(model)
        for j in range(2):
            path = tmp_path / f"{i}{j}.sfz"
            save(path, model, mask=method.mask, dtype="fp16", compress_values=True, meta={"b": 1, "a": [2, 3]})
            files.append(path.read_bytes())
        save_masks(tmp_path / f"{i}.sfm", [method.mask, method.mask])
        files.append((tmp_path / f"{i}.sfm").read_bytes())
    assert files[0] == files[1] == files[3] == files[4]
    assert files[2] == files[5]
    meta = framing.header((tmp_path / "00.sfz").read_bytes(), "file")["__metadata__"]  # as written, in order
    assert list(meta) == ["format", "version", "tensors", "masks", "meta"]


def test_torch_prune_interop_with_tied_weights(tmp_path: Path) -> None:
    model, batch, _ = realmodels.gpt2()
    method = prune(model)
    expected = output(model, batch)  # the masked model
    torch_pruned, _, _ = realmodels.gpt2()  # the same dense weights, masked by torch.nn.utils.prune instead
    to_torch_prune_(torch_pruned, method.mask)
    assert torch.equal(output(torch_pruned, batch), expected)  # lm_head sees the masked embedding too
    assert torch_pruned.lm_head.weight_orig is torch_pruned.transformer.wte.weight_orig
    assert from_torch_prune(torch_pruned) == method.mask  # the tied tensor once, by its first name
    save(tmp_path / "t.sfz", torch_pruned)
    assert read(tmp_path / "t.sfz").aliases == {"lm_head.weight": "transformer.wte.weight"}
    assert load_mask(tmp_path / "t.sfz") == method.mask
    plain, _, _ = realmodels.gpt2()
    rerandomise_(plain)
    load(tmp_path / "t.sfz", plain)
    assert torch.equal(output(plain, batch), expected)
    remove_torch_prune_(torch_pruned)
    assert torch_pruned.lm_head.weight is torch_pruned.transformer.wte.weight
    assert torch.equal(output(torch_pruned, batch), expected)


def test_inspect_lists_a_tied_tensor_once(tmp_path: Path, run_cli: RunCli) -> None:
    model, _, _ = realmodels.gpt2()
    save(tmp_path / "m.sfz", model, mask=prune(model).mask)
    report = inspect(tmp_path / "m.sfz")
    names = [t.name for t in report.tensors]
    assert "lm_head.weight" not in names and names.count("transformer.wte.weight") == 1
    wte = report.tensors[names.index("transformer.wte.weight")]
    assert wte.aliases == ("lm_head.weight",)
    assert report.dense_fp32_bytes == 4 * sum(p.numel() for p in model.parameters()) + 4 * sum(
        b.numel() for b in model.buffers())
    code, out, err = run_cli(["inspect", str(tmp_path / "m.sfz"), "--json"])
    assert code == 0, err
    rows = json.loads(out.strip().splitlines()[-1])["tensors"]
    assert [r["aliases"] for r in rows if r["name"] == "transformer.wte.weight"] == [["lm_head.weight"]]
    assert not any(r["name"] == "lm_head.weight" for r in rows)
    code, out, err = run_cli(["inspect", str(tmp_path / "m.sfz")])
    assert code == 0 and "lm_head.weight" in out and out.count("lm_head.weight") == 1


def test_nm_masks_are_coded_along_the_input_axis_of_conv1d(tmp_path: Path) -> None:
    """HF Conv1D stores (in, out): a 2:4 mask over the inputs is coded as N:M in the (out, in) view."""
    model, batch, _ = realmodels.gpt2()
    name = "transformer.h.0.attn.c_attn.weight"
    w = model.get_parameter(name)
    assert sf.layout_of(model.get_submodule(name.rsplit(".", 1)[0]), "weight").in_axis == 0
    g = torch.Generator().manual_seed(0)
    groups = torch.rand(w.shape[0] // 4, 4, w.shape[1], generator=g).argsort(1) < 2  # 2 of every 4 inputs
    mask = groups.reshape(w.shape)
    with torch.no_grad():
        w.mul_(mask)
    before = output(model, batch)
    info = save(tmp_path / "m.sfz", model, mask={name: mask})
    assert info[name]["axes"] == [1, 0] and info[name]["codec"] == "nm"
    plain = save(tmp_path / "plain.sfz", model.state_dict(), mask={name: mask})  # no module: no layouts
    assert "axes" not in plain[name] and plain[name]["codec"] != "nm"
    coded, uncoded = read(tmp_path / "m.sfz").info[name], read(tmp_path / "plain.sfz").info[name]
    assert coded["mask_bytes"] < 0.75 * uncoded["mask_bytes"]  # log2(6)/4 = 0.65 bits vs ~1 bit per weight
    assert load_mask(tmp_path / "m.sfz") == sf.Mask({name: mask})
    fresh, _, _ = realmodels.gpt2()
    rerandomise_(fresh)
    load(tmp_path / "m.sfz", fresh)
    assert torch.equal(output(fresh, batch), before)


def _rewrite(path: Path, edit) -> bytes:  # noqa: ANN001
    """The file with its header metadata passed through ``edit(metadata, tensors_json)``."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    head = json.loads(data[8 : 8 + n])
    ents = json.loads(head["__metadata__"]["tensors"])
    edit(head["__metadata__"], ents)
    head["__metadata__"]["tensors"] = json.dumps(ents)
    text = json.dumps(head).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def test_forged_alias_and_mask_records_are_refused(tmp_path: Path) -> None:
    model, _, _ = realmodels.gpt2()
    save(tmp_path / "m.sfz", model, mask=prune(model).mask)
    wte, head = "transformer.wte.weight", "lm_head.weight"
    cases = {
        "alias of 'nowhere'": lambda md, e: e[head].update({"of": "nowhere"}),
        "alias of 'lm_head.weight'": lambda md, e: e.update({"x": {"kind": "alias", "of": head}}),
        "does not name the tensor": lambda md, e: e[head].update({"of": 3}),
        "not a list of distinct names": lambda md, e: md.update(masks=json.dumps([wte, wte])),
        "not valid JSON": lambda md, e: md.update(masks="[" * 10_000),
        "does not hold as a sparse tensor": lambda md, e: md.update(masks=json.dumps(["transformer.ln_f.weight"])),
        "axes [0, 0]": lambda md, e: e[wte].update(axes=[0, 0]),
    }
    for words, edit in cases.items():
        with pytest.raises(StorageError, match=re.escape(words)):
            read_bytes(_rewrite(tmp_path / "m.sfz", edit))
    # a mask record naming the alias resolves to the stored tensor
    by_alias = read_bytes(_rewrite(tmp_path / "m.sfz", lambda md, e: md.update(masks=json.dumps([head]))))
    assert by_alias.masked == (head,) and torch.equal(by_alias.mask[wte], load_mask(tmp_path / "m.sfz")[wte])
    # files without aliases or layout-coded masks stay version 1, which earlier releases read
    plain, _, _ = realmodels.hf_resnet()
    save(tmp_path / "r.sfz", plain, mask=prune(plain).mask)
    assert header(tmp_path / "r.sfz")["version"] == "1"
