"""Targets and methods on real architectures: HF Conv1D, attention projections, tied weights, RNNs.

Oracles: the parameter names a reader finds by hand in each model; N:M groups counted along the input axis
(GPT-2's Conv1D stores (in, out)); the sparse-init factor sqrt(fan_in / kept) per output column; the global
ranking of all scores (torch's own sort) for the floor.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import realmodels as rm
import sparseflow as sf
from sparseflow import MaskError


def test_gpt2_targets_are_its_conv1d_projections_and_not_the_tied_embedding() -> None:
    model, _, _ = rm.gpt2()
    expected = [f"transformer.h.{i}.{m}.weight" for i in range(2)
                for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert list(sf.Targets().select(model)) == expected
    assert model.lm_head.weight is model.transformer.wte.weight
    # reachable by its second name, as one target named by the first
    chosen = sf.Targets(include=("lm_head.weight",)).select(model)
    assert list(chosen) == ["transformer.wte.weight"] and chosen["transformer.wte.weight"] is model.lm_head.weight
    assert "transformer.wte.weight" not in sf.Targets(include=("*.weight",), exclude=("lm_head.*",)).select(model)
    # the untied Llama head is a Linear like any other; the tied one is not targeted by default
    assert "lm_head.weight" in sf.Targets().select(rm.llama()[0])
    assert "lm_head.weight" not in sf.Targets().select(rm.llama_tied()[0])
    # opting in to embeddings targets the tied weight once
    tied = sf.Targets(types=sf.Targets().types + (nn.Embedding,)).select(rm.llama_tied()[0])
    assert [n for n in tied if "embed" in n or "lm_head" in n] == ["model.embed_tokens.weight"]


def test_attention_in_proj_and_rnn_weights() -> None:
    model, _, _ = rm.transformer_encoder()
    names = list(sf.Targets().select(model))
    assert "body.layers.0.self_attn.in_proj_weight" in names and "body.layers.0.self_attn.out_proj.weight" in names
    assert not any("norm" in n or n.endswith("bias") for n in names)
    lstm, _, _ = rm.lstm()
    assert list(sf.Targets(types=(nn.LSTM,)).select(lstm)) == ["body.weight_ih_l0", "body.weight_hh_l0"]
    assert list(sf.Targets(types=("torch.nn.modules.rnn.LSTM",)).select(lstm)) == ["body.weight_ih_l0", "body.weight_hh_l0"]
    with pytest.raises(MaskError, match="tuple of nn.Module classes"):
        sf.Targets(types=nn.LSTM)  # type: ignore[arg-type]


def _groups_along_input(method: sf.Method, name: str, m: int) -> torch.Tensor:
    layout = method.targets.layouts(method.model)[name]
    c = layout.canonical(method.mask[name])  # (out, in, *rest)
    return c.movedim(1, -1).reshape(-1, m).sum(-1)


def test_gpt2_two_four_keeps_two_of_every_four_inputs_of_every_conv1d() -> None:
    model, _, _ = rm.gpt2()
    method = sf.MagnitudePruning(0.5, pattern=sf.NM(2, 4))
    method.prepare(model)
    for name, p in method.mask.items():
        assert isinstance(model.get_submodule(name.rsplit(".", 1)[0]), nn.Module)
        # stored (in, out): groups of 4 consecutive rows of the stored tensor, per column
        stored = p.reshape(p.shape[0] // 4, 4, p.shape[1]).sum(1)
        assert (stored == 2).all(), name
        assert (_groups_along_input(method, name, 4) == 2).all()
        w = model.get_parameter(name)
        assert torch.equal(w != 0, method.mask[name])


def test_incompatible_layers_are_listed_at_once_or_skipped_with_a_warning() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 6), nn.Linear(6, 2), nn.Linear(2, 3))
    with pytest.raises(MaskError, match=r"does not fit 2 of 4 .*'2\.weight'.*'3\.weight'.*skip_incompatible=True"):
        sf.MagnitudePruning(0.5, pattern=sf.NM(2, 4)).prepare(model)
    method = sf.MagnitudePruning(0.5, pattern=sf.NM(2, 4), skip_incompatible=True)
    with pytest.warns(UserWarning, match=r"left dense: '2\.weight'.*'3\.weight'"):
        method.prepare(model)
    assert list(method.mask) == ["0.weight", "1.weight"]
    assert bool((model[2].weight != 0).all()) and bool((model[3].weight != 0).all())


def test_sparse_init_rescales_each_output_column_of_a_conv1d() -> None:
    model, _, _ = rm.gpt2()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = sf.RandomSparse(0.75, sparse_init=True)
    method.prepare(model)
    for name, mask in method.mask.items():
        w = before[name].double()  # (in, out): a column per output unit, given back its dense squared norm
        expected = (w * (w.square().sum(0) / (w * mask).square().sum(0)).sqrt()) * mask
        assert torch.allclose(model.get_parameter(name).double(), expected, rtol=1e-6, atol=0)


def test_global_allocation_warns_under_one_weight_per_output_and_min_density_sets_a_floor() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # tiny weights but 10: global magnitude keeps those 10 for 32 outputs
        model[2].weight.view(-1)[:10] = 1.0
    with pytest.warns(UserWarning, match=r"'2\.weight' keeps 10 for 32 outputs.*min_density="):
        sf.MagnitudePruning(0.9, distribution=sf.GLOBAL).prepare(model)
    method = sf.MagnitudePruning(0.9, distribution=sf.GLOBAL, min_density=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.prepare(model)
    counts = {n: int(m.sum()) for n, m in method.mask.items()}
    assert counts["2.weight"] == math.ceil(0.05 * 64 * 32)
    assert sum(counts.values()) == (64 * 64 + 64 * 32) - round(0.9 * (64 * 64 + 64 * 32))
    # the rest of the budget is the global ranking over the other layer: its top |w|
    w0 = model[0].weight.detach().abs().reshape(-1)
    assert torch.equal(method.mask["0.weight"].reshape(-1), w0 >= w0.sort(descending=True).values[counts["0.weight"] - 1])
    with pytest.raises(sf.SparseflowError, match="min_density is a floor for distribution=GLOBAL"):
        sf.MagnitudePruning(0.9, min_density=0.05)
