"""convert(): converted models against the dense model they came from (the oracle), for MLPs and
convolutions (1x1, k x k with stride/padding/dilation), fully dense and empty layers, every backend,
measured and cost-model plans; unsupported layers stay dense and are listed; bad inputs raise."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparseflow as sf
from sparseflow.errors import SparseflowError
from sparseflow.inference.convert import convert, deconvert, inference_report
from sparseflow.inference.kernels import Backend, best_isa
from sparseflow.inference.kernels.modules import Kernel, SparseConv2d, SparseLinear

BACKENDS = [Backend.TORCH] + ([Backend.COMPILED] if best_isa() is not None else [])


def sparsify_(model: nn.Module, density: float, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
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
    assert rows["1"].plan == () and "faster" in rows["1"].reason


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("conv", [dict(kernel_size=1), dict(kernel_size=1, stride=2), dict(kernel_size=3, padding=1),
                                  dict(kernel_size=3, stride=2, padding=2, dilation=2), dict(kernel_size=(3, 1)),
                                  dict(kernel_size=2, bias=False)])
def test_conv_matches_dense(backend, conv):
    torch.manual_seed(0)
    dense = sparsify_(nn.Sequential(nn.Conv2d(6, 10, **conv), nn.ReLU(), nn.Conv2d(10, 4, 1)).eval(), 0.2)
    fast = convert(dense, backend=backend, measure=False)
    assert isinstance(fast[0], SparseConv2d)
    assert_same(fast, dense, torch.randn(3, 6, 9, 11))


def test_unsupported_layers_stay_dense_and_are_listed():
    torch.manual_seed(0)
    dense = sparsify_(nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 8, 3, padding="same"),
                                    nn.Flatten(2), nn.Conv1d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 36, 5)).eval(), 0.1)
    with pytest.warns(UserWarning, match="left dense"):
        fast = convert(dense, measure=False)
    reasons = {r.name: r.reason for r in inference_report(fast)}
    assert "grouped" in reasons["0"] and "padding" in reasons["1"] and "no sparse kernel" in reasons["3"]
    assert reasons["5"] == "" and isinstance(fast[5], SparseLinear)
    assert_same(fast, dense, torch.randn(2, 4, 8, 8))


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
