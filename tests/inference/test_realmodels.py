"""convert() on the architectures users bring (tests/realmodels.py), pruned to 90 % by magnitude here: the
converted model's output equals the dense model's within 1e-5 of its scale (the oracle), every weight layer
has a report row with its plan or the reason it stayed dense, and deconvert gives back the original
module types and weights."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import realmodels
from sparseflow.errors import SparseflowError
from sparseflow.inference.convert import convert, deconvert, inference_report
from sparseflow.inference.kernels.attention import SparseMultiheadAttention
from sparseflow.inference.kernels.modules import SparseLinear
from sparseflow.inference.report import is_hf_conv1d, weight_params
from sparseflow.layouts import call, output_tensor, split_batch


def prune_by_magnitude_(model: nn.Module, sparsity: float = 0.9) -> None:
    """Zero the smallest ``sparsity`` of every weight of Linear, Conv1d/2d/3d, HF Conv1D and attention in_proj."""
    weights = []
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or is_hf_conv1d(mod):
            weights.append(mod.weight)
        elif isinstance(mod, nn.MultiheadAttention):
            weights += [w for w in (mod.in_proj_weight, mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight)
                        if w is not None]
    with torch.no_grad():
        for w in weights:
            k = int(w.numel() * sparsity)
            if k:
                w[w.abs() <= w.abs().flatten().kthvalue(k).values] = 0


def built(name: str):
    model, batch, _ = realmodels.ARCHS[name]()
    prune_by_magnitude_(model)
    return model.eval(), split_batch(batch)[0]


def outputs(model: nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        return output_tensor(call(model, inputs))


def assert_close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> None:
    assert got.shape == want.shape
    err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
    assert err <= rel, err


def expected_rows(dense: nn.Module, fast: nn.Module) -> set[str]:
    """Report names for every weight layer of ``dense``: the layer itself, or a converted attention's projections."""
    names = set()
    for name, mod in dense.named_modules():
        if not weight_params(mod):
            continue
        if isinstance(mod, nn.MultiheadAttention) and isinstance(fast.get_submodule(name), SparseMultiheadAttention):
            names |= {f"{name}.{p}" for p in ("q_proj", "k_proj", "v_proj")}
        else:
            names.add(name)
    return names


@pytest.mark.parametrize("name", sorted(realmodels.ARCHS))
def test_converted_model_matches_dense_and_reports_every_layer(name):
    dense, inputs = built(name)
    rng = torch.random.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unsupported layers, listed in the report below
        fast = convert(dense, measure=False)
    assert_close(outputs(fast, inputs), outputs(dense, inputs))

    rows = {r.name: r for r in inference_report(fast)}
    assert expected_rows(dense, fast) <= set(rows)
    assert all(bool(r.plan) != bool(r.reason) for r in rows.values())
    converted = [r for r in rows.values() if r.plan]
    assert converted, "90 % sparse models have layers that run sparse"
    for mod_name, mod in dense.named_modules():  # every pruned Linear/Conv1D layer runs sparse (cost model)
        if type(mod) is nn.Linear or is_hf_conv1d(mod):
            assert rows[mod_name].plan, rows[mod_name]

    back = deconvert(fast)
    assert torch.equal(torch.random.get_rng_state(), rng)  # neither draws from the global generator
    assert [type(m) for m in back.modules()] == [type(m) for m in dense.modules()]
    want = dense.state_dict()
    got = back.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert_close(outputs(back, inputs), outputs(dense, inputs), rel=0.0)


def test_encoder_and_gpt2_report_each_projection():
    dense, inputs = built("transformer_encoder")
    fast = convert(dense, measure=False)
    for layer in ("body.layers.0", "body.layers.1"):
        attn = fast.get_submodule(f"{layer}.self_attn")
        assert isinstance(attn, SparseMultiheadAttention)
        assert all(isinstance(getattr(attn, p), SparseLinear) for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
    kinds = {r.name: r.kind for r in inference_report(fast)}
    assert kinds["body.layers.0.self_attn.v_proj"] == "MultiheadAttention.v_proj"
    assert kinds["body.layers.1.linear2"] == "Linear"

    dense, inputs = built("gpt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = convert(dense, measure=False)
    rows = {r.name: r for r in inference_report(fast)}
    c_attn = fast.get_submodule("transformer.h.0.attn.c_attn")
    assert isinstance(c_attn, SparseLinear) and c_attn.kind == "Conv1D" and c_attn.weight.shape == (32, 96)
    assert rows["transformer.h.1.mlp.c_proj"].kind == "Conv1D" and abs(rows["transformer.h.1.mlp.c_proj"].density - 0.1) < 0.01
    assert "table lookup" in rows["transformer.wte"].reason


def test_measured_convert_with_a_dict_check_batch():
    """convert times the kernels and checks the result on a Hugging Face dict batch (labels included)."""
    dense, inputs = built("gpt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = convert(dense, batch_sizes=(1, 32), repeats=1, check=inputs)
    assert_close(outputs(fast, inputs), outputs(dense, inputs))
    assert all(c.dense_ms is not None for r in inference_report(fast) for c in r.plan)


def test_check_batch_catches_a_wrong_conversion():
    dense, inputs = built("mha")
    fast = convert(dense, measure=False, check=inputs)  # passes

    class Broken(nn.Module):  # reads its layer's weight values: the stub refuses, check reports it
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(16, 3)

        def forward(self, x):
            return self.lin(x) + self.lin.weight.sum()

    model = Broken()
    prune_by_magnitude_(model)
    with pytest.raises(SparseflowError, match="failed on the check batch"):
        convert(model, measure=False, check=inputs[0])
    assert isinstance(fast.body.attn, SparseMultiheadAttention)
