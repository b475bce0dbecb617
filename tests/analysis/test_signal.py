"""signal(): mean-field prediction vs measurement, against closed forms, quadrature oracles and PyTorch."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.integrate import quad
from torch import nn

from sparseflow.analysis.meanfield import gain
from sparseflow.analysis.signal import LayerSignal, SignalReport, signal, verdict
from sparseflow.errors import SparseflowError
from sparseflow.training.models import build_model


def _normal_pdf(z: float, q: float) -> float:
    return math.exp(-z * z / (2 * q)) / math.sqrt(2 * math.pi * q)


def _oracle_gain(fn, q: float) -> float:  # E_{z~N(0,q)}[φ(z)²]/q by adaptive integration
    val, _ = quad(lambda z: float(fn(torch.tensor(z, dtype=torch.float64))) ** 2 * _normal_pdf(z, q), -60, 60, limit=200)
    return val / q


@pytest.mark.parametrize("q", [0.01, 1.0, 7.5])
def test_quadrature_closed_forms(q: float) -> None:
    assert gain(torch.relu, q) == pytest.approx(0.5, abs=1e-12)  # symmetric nodes: exact
    assert gain(lambda t: t, q) == pytest.approx(1.0, abs=1e-12)
    assert gain(lambda t: F.leaky_relu(t, 0.2), q) == pytest.approx((1 + 0.04) / 2, abs=1e-12)


@pytest.mark.parametrize("fn", [torch.tanh, F.gelu, F.silu, torch.sigmoid])
@pytest.mark.parametrize("q", [0.3, 1.0, 4.0])
def test_quadrature_matches_adaptive_integration(fn, q: float) -> None:
    assert gain(fn, q) == pytest.approx(_oracle_gain(fn, q), rel=1e-6)


def _set(linear: nn.Linear, w: list[list[float]], b: list[float] | None = None) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(w))
        if b is not None:
            linear.bias.copy_(torch.tensor(b))


def test_linear_network_hand_computed() -> None:
    # Identity activations: χ = mean row sum of squares + σ_b²/q exactly; measured ≈ the same on N(0, I).
    net = nn.Sequential(nn.Linear(2, 2), nn.Identity(), nn.Linear(2, 2, bias=False))
    _set(net[0], [[1.0, 2.0], [0.0, 3.0]], [1.0, -1.0])  # R = (1+4 + 0+9)/2 = 7, σ_b² = 1
    _set(net[2], [[0.5, 0.0], [0.0, 0.5]])  # R = 0.25
    x = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0))
    rep = signal(net, x)
    first, second = rep.layers
    q0 = float(x.double().pow(2).mean())
    assert (first.weight_sq, first.bias_sq, second.weight_sq) == (7.0, 1.0, 0.25)
    assert first.reference == "input" and second.reference == "0" and first.activation == "identity"
    assert first.predicted == pytest.approx(7 + 1 / q0, rel=1e-12)
    assert second.predicted == pytest.approx(0.25, rel=1e-12)
    assert first.measured == pytest.approx(8.0, rel=0.02)  # E[(Wx+b)_i²] averaged over i = 7 + 1
    assert second.measured == pytest.approx(0.25, rel=1e-6)  # a scaled identity is exact for any input
    assert rep.gain == pytest.approx(first.predicted * 0.25)


def _relu_mlp(width: int, depth: int, sigma2: float, density: float = 1.0, seed: int = 0) -> nn.Module:
    g, mask_g = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 7919)
    model = build_model("mlp", (width,), width, hidden=(width,) * (depth - 1), seed=seed)
    with torch.no_grad():
        for layer in model.layers:
            w = torch.randn(layer.weight.shape, generator=g) * math.sqrt(sigma2 / layer.in_features)
            keep = torch.rand(layer.weight.shape, generator=mask_g) < density
            layer.weight.copy_(w * keep)
            layer.bias.zero_()
    return model


def test_relu_large_width_matches_s_sigma2_over_2() -> None:
    # At width N a layer's measured gain fluctuates by about 5 % around the mean-field value (the part of
    # the signal shared across the batch averages over N units only): check each of 8 layers at 3 sigma and
    # their mean at 3 sigma / sqrt(8).
    model = _relu_mlp(1024, 9, sigma2=2.0, density=0.3)
    rep = signal(model, torch.randn(256, 1024, generator=torch.Generator().manual_seed(1)))
    ratios = []
    for row in rep.layers[1:]:  # behind a ReLU
        assert row.activation == "relu"
        assert row.density == pytest.approx(0.3, abs=0.01)
        assert row.predicted == pytest.approx(0.3 * 2.0 / 2, rel=0.02)  # s·σ_w²/2 from the actual weights
        assert row.measured == pytest.approx(row.predicted, rel=0.15)
        ratios.append(row.measured / row.predicted)
    assert sum(ratios) / len(ratios) == pytest.approx(1.0, abs=0.055)


def test_tanh_predicted_vs_measured() -> None:
    g = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Linear(1024, 1024, bias=False), nn.Tanh(), nn.Linear(1024, 1024, bias=False))
    with torch.no_grad():
        for m in (net[0], net[2]):
            m.weight.copy_(torch.randn(1024, 1024, generator=g) * math.sqrt(1.5 / 1024))
    rep = signal(net, torch.randn(512, 1024, generator=g))
    row = rep.layers[1]
    assert row.activation == "tanh"
    assert row.predicted == pytest.approx(row.weight_sq * _oracle_gain(torch.tanh, row.q_in), rel=1e-6)
    assert row.predicted < 1.5 * 0.9  # tanh squashes: below the linear σ_w²
    assert row.measured == pytest.approx(row.predicted, rel=0.03)


@pytest.mark.parametrize(("sigma2", "expected"), [(1.0, "vanishing"), (2.0, "critical"), (4.0, "exploding")])
def test_verdict_of_deep_relu_nets(sigma2: float, expected: str) -> None:
    rep = signal(_relu_mlp(256, 12, sigma2), torch.randn(64, 256, generator=torch.Generator().manual_seed(0)))
    assert rep.verdict == expected and rep.basis == "predicted"
    assert {r.flag for r in rep.layers[1:]} == {expected}
    dead = _relu_mlp(16, 3, 2.0)
    with torch.no_grad():
        dead.layers[1].weight.zero_()
    rep = signal(dead, torch.randn(8, 16))
    assert rep.verdict == "vanishing" and rep.gain == 0.0 and "exactly zero" in " ".join(rep.notes)
    assert verdict(0.099) == "vanishing" and verdict(0.1) == verdict(10.0) == "critical" and verdict(10.1) == "exploding"


def test_pure_model_grads_and_modes_unchanged() -> None:
    model = build_model("conv2", (1, 8, 8), 10, norm="batch", seed=0)
    model.train()
    model.layers[0].eval()  # a mixed mode must come back as it was
    model.layers[1].weight.grad = torch.full_like(model.layers[1].weight, 0.25)
    state = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    signal(model, (x, y))
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # BatchNorm running stats included
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model.layers[1].weight.grad, torch.full_like(model.layers[1].weight, 0.25))
    assert model.layers[0].weight.grad is None


def test_gradient_norms_match_pytorch_backward_on_kept_weights() -> None:
    model = _relu_mlp(32, 4, sigma2=2.0, density=0.5)
    model.eval()
    x, y = torch.randn(20, 32, generator=torch.Generator().manual_seed(2)), torch.randint(0, 32, (20,))
    rep = signal(model, x, y)
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), y).backward()
    for row, layer in zip(rep.layers, ref.layers):
        expected = float((layer.weight.grad * (layer.weight != 0)).norm())
        assert row.grad_norm == pytest.approx(expected, rel=1e-5)


def test_wrong_batch_shape_names_expected_and_got() -> None:
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    with pytest.raises(SparseflowError, match=r"shape \(4, 10\).*64 input features"):
        signal(model, torch.randn(4, 10))
    conv = build_model("conv2", (3, 8, 8), 10, seed=0)
    with pytest.raises(SparseflowError, match=r"3 input channels"):
        signal(conv, torch.randn(4, 1, 8, 8))
    with pytest.raises(SparseflowError, match="N >= 2"):
        signal(model, torch.randn(1, 64))
    with pytest.raises(SparseflowError, match="class indices"):
        signal(model, torch.randn(4, 64), torch.tensor([0, 1, 2, 10]))


class _Sine(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(torch.relu(h) if bool(h.detach().sum() > 0) else h)  # data-dependent: fx cannot trace it


def test_unknown_activation_and_untraceable_model_fall_back_to_measurement() -> None:
    net = nn.Sequential(nn.Linear(8, 8), _Sine(), nn.Linear(8, 8))
    rep = signal(net, torch.randn(32, 8))
    row = rep.layers[1]
    assert row.predicted is None and row.measured is not None and "'sin'" in row.note
    assert "measured" in rep.basis and row.flag != "unknown"
    rep = signal(_Branchy(), torch.randn(32, 8))
    assert all(r.predicted is None and r.measured is not None for r in rep.layers)
    assert "torch.fx could not trace _Branchy" in rep.notes[0] and rep.basis == "measured"


def test_convnet_and_resnet_run_with_notes() -> None:
    rep = signal(build_model("conv4", (3, 16, 16), 10, seed=0), torch.randn(4, 3, 16, 16))
    assert [r.kind for r in rep.layers[:4]] == ["Conv2d"] * 4 and all(r.q > 0 for r in rep.layers)
    assert rep.layers[1].predicted is not None and rep.layers[1].activation == "relu"
    assert rep.layers[2].predicted is None and "MaxPool2d 'pool'" in rep.layers[2].note
    res = signal(build_model("resnet", (3, 8, 8), 10, norm="none", seed=0), torch.randn(4, 3, 8, 8))
    merged = [r for r in res.layers if r.name == "stages.0.1.conv1"][0]
    assert merged.predicted is None and "residual" in merged.note and merged.measured is not None
    assert [r for r in res.layers if r.name == "stages.0.0.conv2"][0].predicted is not None
    assert "residual" in res.markdown()


def test_report_serialises() -> None:
    import json

    rep = signal(_relu_mlp(16, 3, 2.0), torch.randn(8, 16))
    assert isinstance(rep, SignalReport) and isinstance(rep.layers[0], LayerSignal)
    d = json.loads(json.dumps(rep.to_json()))
    assert [r["name"] for r in d["layers"]] == ["layers.0", "layers.1", "layers.2"]
    assert d["per_layer"] == pytest.approx(rep.gain ** (1 / 3))
    assert "| layers.1 | Linear |" in rep.markdown()
