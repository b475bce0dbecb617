"""convert(): converted models against the dense model they came from (the oracle), for MLPs and
convolutions (Conv1d/2d/3d: 1x1, k x k with stride/padding/dilation, "same"/"valid", every padding mode),
fully dense and empty layers, every backend, measured and cost-model plans; unsupported layers stay dense
and are listed; bad inputs raise; deconvert gives back the original modules."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparseflow as sf
from sparseflow.errors import SparseflowError
from sparseflow.inference.convert import convert, deconvert, inference_report
from sparseflow.inference.kernels import Backend, best_isa
from sparseflow.inference.kernels.conv import SparseConv
from sparseflow.inference.kernels.modules import Choice, Kernel, SparseLinear
from sparseflow.inference.plan import Planner

BACKENDS = [Backend.TORCH] + ([Backend.COMPILED] if best_isa() is not None else [])


def sparsify_(model: nn.Module, density: float, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                m.weight[torch.rand(m.weight.shape, generator=g) >= density] = 0
    return model


def assert_same(fast: nn.Module, dense: nn.Module, x: torch.Tensor) -> None:
    # relative to the output scale of the dense model: 1e-5 of its largest magnitude per sample
    with torch.no_grad():
        a, b = fast(x), dense(x)
    scale = b.abs().flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, *[1] * (b.dim() - 1))
    assert a.shape == b.shape
    assert bool(((a - b).abs() <= 1e-5 * scale).all()), float(((a - b).abs() / scale).max())


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(1, 96), min_size=2, max_size=4), density=st.sampled_from([0.0, 0.05, 0.2, 1.0]),
       batch=st.sampled_from([1, 2, 7, 16, 33, 100]), measure=st.booleans(), seed=st.integers(0, 1000))
def test_mlp_matches_dense(backend, widths, density, batch, measure, seed):
    torch.manual_seed(seed)
    layers = [nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])]
    dense = sparsify_(nn.Sequential(*layers).eval(), density, seed)
    with torch.no_grad():
        dense[0].weight[: max(1, widths[1] // 3)] = 0  # empty rows
    fast = convert(dense, batch_sizes=(1, 16), backend=backend, measure=measure, repeats=1)
    assert_same(fast, dense, torch.randn(batch, widths[0]))


def test_cost_model_plan_is_sparse_for_sparse_layers_and_dense_for_dense():
    dense = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    sparsify_(dense[0], 0.1)
    fast = convert(dense, measure=False)
    assert isinstance(fast[0], SparseLinear) and all(c.kernel is not Kernel.DENSE for c in fast[0].plan)
    assert isinstance(fast[1], nn.Linear)  # fully dense: left as it was
    rows = {r.name: r for r in inference_report(fast)}
    assert rows["1"].plan == () and rows["1"].reason == "density 1.00 above the threshold 0.3 (cost model, not measured)"
    measured = (Choice(1, Kernel.DENSE, None, 0, 0.01, 0.02), Choice(16, Kernel.DENSE, None, 0, 0.1, 0.3))
    assert Planner.dense_reason(measured, 0.25) == ("density 0.25: dense was faster at every measured batch size "
                                                    "(B=1: 0.01 vs 0.02 ms, B=16: 0.1 vs 0.3 ms)")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("conv", [dict(kernel_size=1), dict(kernel_size=1, stride=2), dict(kernel_size=3, padding=1),
                                  dict(kernel_size=3, stride=2, padding=2, dilation=2), dict(kernel_size=(3, 1)),
                                  dict(kernel_size=2, bias=False)])
def test_conv_matches_dense(backend, conv):
    torch.manual_seed(0)
    dense = sparsify_(nn.Sequential(nn.Conv2d(6, 10, **conv), nn.ReLU(), nn.Conv2d(10, 4, 1)).eval(), 0.2)
    fast = convert(dense, backend=backend, measure=False)
    assert isinstance(fast[0], SparseConv)
    assert_same(fast, dense, torch.randn(3, 6, 9, 11))


@pytest.mark.parametrize("dims,conv", [
    (1, dict(kernel_size=3, padding=1)), (1, dict(kernel_size=4, stride=2, dilation=2, padding="valid")),
    (1, dict(kernel_size=1, stride=3)), (2, dict(kernel_size=(2, 4), padding="same")),
    (2, dict(kernel_size=3, padding=2, padding_mode="reflect")), (2, dict(kernel_size=3, padding=1, padding_mode="circular")),
    (3, dict(kernel_size=3, padding=1)), (3, dict(kernel_size=(2, 3, 1), stride=(1, 2, 1), dilation=(2, 1, 1))),
    (3, dict(kernel_size=2, padding="same", padding_mode="replicate", bias=False)), (3, dict(kernel_size=1))])
def test_conv_nd_padding_modes_match_dense(dims, conv):
    torch.manual_seed(0)
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    dense = sparsify_(nn.Sequential(cls(5, 7, **conv)).eval(), 0.2)
    fast = convert(dense, measure=False)
    assert isinstance(fast[0], SparseConv) and fast[0].kind == cls.__name__
    x = torch.randn(2, 5, *(9, 8, 7)[:dims])
    assert_same(fast, dense, x)
    assert_same(fast, dense, x[0])  # unbatched input, as torch's convolutions take it
    back = deconvert(fast)
    assert type(back[0]) is cls and back[0].padding == dense[0].padding and torch.equal(back[0].weight, dense[0].weight)


def test_unsupported_layers_stay_dense_and_are_listed():
    torch.manual_seed(0)
    dense = sparsify_(nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 8, 3, groups=8),
                                    nn.ConvTranspose2d(8, 8, 1), nn.Flatten(2), nn.Conv1d(8, 4, 1), nn.Flatten(),
                                    nn.Linear(4 * 16, 5)).eval(), 0.1)
    with torch.no_grad():
        dense[2].weight[torch.rand(dense[2].weight.shape) < 0.9] = 0
    with pytest.warns(UserWarning, match="left dense"):
        fast = convert(dense, measure=False)
    reasons = {r.name: r.reason for r in inference_report(fast)}
    assert "grouped" in reasons["0"] and "depthwise" in reasons["1"] and "no sparse kernel" in reasons["2"]
    assert reasons["4"] == reasons["6"] == "" and isinstance(fast[6], SparseLinear) and isinstance(fast[4], SparseConv)
    assert_same(fast, dense, torch.randn(2, 4, 8, 8))


class _MyLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


def test_rnn_embedding_and_linear_subclass_are_listed_with_reasons():
    torch.manual_seed(0)
    model = nn.ModuleDict({"emb": nn.Embedding(10, 8), "lstm": nn.LSTM(8, 8), "gru": nn.GRU(8, 8, num_layers=2),
                           "mine": _MyLinear(8, 8), "dense": nn.Linear(8, 8)})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not name.startswith("dense"):
                p[torch.rand(p.shape, generator=g) >= 0.1] = 0
    with pytest.warns(UserWarning, match="left dense"):
        fast = convert(model, measure=False)
    rows = {r.name: r for r in inference_report(fast)}
    assert set(rows) == {"emb", "lstm", "gru", "mine", "dense"} and all(not r.plan for r in rows.values())
    assert "table lookup" in rows["emb"].reason and "LSTM weights: no sparse kernel" in rows["lstm"].reason
    assert "GRU" in rows["gru"].reason and "_MyLinear subclasses Linear" in rows["mine"].reason
    assert rows["dense"].reason.startswith("density 1.00 above the threshold")
    assert type(fast["mine"]) is _MyLinear and type(fast["dense"]) is nn.Linear
    assert abs(rows["lstm"].density - 0.1) < 0.05
    back = deconvert(fast)
    assert not any(k.startswith("_sparseflow") for m in back.modules() for k in vars(m))


def test_fp64_model_is_left_dense():
    dense = sparsify_(nn.Sequential(nn.Linear(8, 8)).double(), 0.1)
    with pytest.warns(UserWarning, match="float64"):
        fast = convert(dense, measure=False)
    assert isinstance(fast[0], nn.Linear)


def test_bad_inputs_raise():
    fast = convert(sparsify_(nn.Sequential(nn.Linear(8, 4)), 0.2), measure=False)
    with pytest.raises(SparseflowError, match="in_features=8"):
        fast(torch.randn(2, 7))
    with pytest.raises(SparseflowError, match="fp32"):
        fast(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(SparseflowError, match="inference-only"):
        fast(torch.randn(2, 8, requires_grad=True))
    with pytest.raises(SparseflowError, match="call .float"):
        fast.half()(torch.randn(2, 8))
    with pytest.raises(SparseflowError, match="in_channels=3"):
        convert(sparsify_(nn.Conv3d(3, 4, 1), 0.2), measure=False)(torch.randn(2, 3, 4, 4))
    with pytest.raises(SparseflowError, match="batch_sizes"):
        convert(nn.Linear(2, 2), batch_sizes=(0,))


def test_forced_fallback_and_missing_extension(monkeypatch):
    monkeypatch.setenv("SPARSEFLOW_KERNELS", "torch")
    dense = sparsify_(nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5)).eval(), 0.1)
    fast = convert(dense, measure=False)
    assert {c.kernel for c in fast[0].plan} == {Kernel.TORCH_CSR}
    assert_same(fast, dense, torch.randn(40, 30))
    with pytest.raises(SparseflowError, match="not available"):
        convert(dense, backend=Backend.COMPILED)


def test_leading_dims_and_bare_linear():
    lin = sparsify_(nn.Linear(12, 6), 0.2)
    fast = convert(lin, measure=False)
    assert isinstance(fast, SparseLinear)
    assert_same(fast, lin, torch.randn(2, 3, 12))


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    dense = sparsify_(nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(32, 3)), 0.2)
    dense = nn.Sequential(dense[0], dense[1], nn.Linear(16, 3)).eval()
    fast = convert(dense, measure=False)
    sf.save(tmp_path / "m.sfz", deconvert(fast))
    fresh = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
    again = convert(sf.load(tmp_path / "m.sfz", fresh).eval(), measure=False)
    x = torch.randn(4, 20)
    with torch.no_grad():
        assert torch.equal(again(x), fast(x))


def test_shared_layer_is_converted_under_every_name_and_dense_unsupported_layers_do_not_warn():
    lin = sparsify_(nn.Linear(8, 8), 0.1)
    model = nn.ModuleDict({"a": nn.Sequential(lin), "b": nn.Sequential(lin), "emb": nn.Embedding(5, 8)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dense Embedding is no news
        fast = convert(model, measure=False)
    assert fast["a"][0] is fast["b"][0] and isinstance(fast["a"][0], SparseLinear)
    back = deconvert(fast)
    assert back["a"][0] is back["b"][0] and type(back["a"][0]) is nn.Linear
    assert torch.equal(back["b"][0].weight, lin.weight)
