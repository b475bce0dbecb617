"""Sparsity-aware initialisation: variances against 2/fan_in_eff, exact rescale factors computed by hand,
conv fan-in counting on a hand-made mask, calibration to measured ratio 1, and the methods' default.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparseflow.errors import MaskError, SparseflowError
from sparseflow.init import calibrate_, rescale_, sparse_init_, sparse_std, unit_fan_in, unit_norms, variance_ratios
from sparseflow.methods import GMP, SET, SNIP, MagnitudePruning, RandomSparse, RigL, SynFlow
from sparseflow.training.models import MLP
from sparseflow.targets import prunable


def _masked_linear(out: int, fan_in: int, kept: list[int], seed: int = 0) -> tuple[nn.Linear, torch.Tensor]:
    """A Linear whose row j keeps exactly kept[j] random inputs (weights zero elsewhere)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(fan_in, out, bias=False)
    mask = torch.zeros(out, fan_in, dtype=torch.bool)
    for j, k in enumerate(kept):
        mask[j, torch.randperm(fan_in, generator=g)[:k]] = True
    with torch.no_grad():
        lin.weight.mul_(mask)
    return lin, mask


def test_per_unit_variance_is_two_over_kept_fan_in_and_zeros_stay_zero() -> None:
    ks = [20] * 200 + [200] * 200 + [1000] * 50 + [0] * 5  # three fan-ins and some units with no input
    lin, mask = _masked_linear(len(ks), 1000, ks)
    sparse_init_(lin, generator=torch.Generator().manual_seed(1))
    w = lin.weight.detach().double()
    assert bool((w[~mask] == 0).all())
    assert bool((w[mask] != 0).all())
    assert bool((w[-5:] == 0).all())  # no kept input: left zero
    for k, rows in ((20, slice(0, 200)), (200, slice(200, 400)), (1000, slice(400, 450))):
        block, m = w[rows], mask[rows]
        var = float(block[m].square().mean())  # zero-mean draws: mean square estimates the variance
        n = int(m.sum())
        assert abs(var / (2 / k) - 1) < 5 * math.sqrt(2 / n), (k, var)  # 5 standard errors of a chi² mean


def test_per_layer_scale_is_two_over_density_times_fan_in() -> None:
    ks = [10] * 100 + [90] * 100  # mean kept fan-in 50 = density 0.5 of fan_in 100
    lin, mask = _masked_linear(len(ks), 100, ks)
    std = sparse_std(mask, per="layer")
    assert torch.allclose(std, torch.full((200,), math.sqrt(2 / (0.5 * 100)), dtype=torch.float64))
    sparse_init_(lin, per="layer", generator=torch.Generator().manual_seed(2))
    w = lin.weight.detach().double()[mask]
    assert abs(float(w.square().mean()) / (2 / 50) - 1) < 5 * math.sqrt(2 / w.numel())
    assert bool((lin.weight.detach()[~mask] == 0).all())


def test_sparse_std_by_hand() -> None:
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(unit_fan_in(mask), torch.tensor([4, 1, 0]))
    assert torch.allclose(sparse_std(mask), torch.tensor([math.sqrt(2 / 4), math.sqrt(2), 0.0], dtype=torch.float64))
    assert torch.allclose(sparse_std(mask, gain=3.0), torch.tensor([1.5, 3.0, 0.0], dtype=torch.float64))
    # per layer: density 5/12 of fan_in 4 -> d·fan_in = 5/3 for every unit, empty ones included
    assert torch.allclose(sparse_std(mask, per="layer"), torch.full((3,), math.sqrt(2 / (5 / 3)), dtype=torch.float64))


def test_rescale_is_a_no_op_on_a_dense_layer() -> None:
    torch.manual_seed(0)
    model = MLP(12, 3, hidden=(7,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rescale_(model)
    rescale_(model, per="layer")
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_rescale_multiplies_by_hand_computed_factors() -> None:
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, -2.0]]))
        lin.bias.copy_(torch.tensor([0.5, 0.5, 0.5]))
    rescale_(lin)  # kept fan-ins 2, 1, 4 of fan_in 4: factors sqrt(2), 2, 1
    want = torch.tensor([[math.sqrt(2), 2 * math.sqrt(2), 0, 0], [6.0, 0, 0, 0], [1.0, -1.0, 2.0, -2.0]])
    torch.testing.assert_close(lin.weight.detach(), want)
    assert torch.equal(lin.bias.detach(), torch.tensor([0.5, 0.5, 0.5]))  # biases untouched
    lin2 = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin2.weight.copy_(torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, -2.0]]))
    rescale_(lin2, per="layer")  # density 7/12: factor sqrt(12/7) everywhere
    torch.testing.assert_close(lin2.weight.detach(), torch.tensor(
        [[1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, -2.0]]) * math.sqrt(12 / 7))


def test_conv_fan_in_counts_kept_in_channel_kernel_positions() -> None:
    conv = nn.Conv2d(2, 3, kernel_size=2, bias=False)  # weight (3, 2, 2, 2): fan_in 8
    mask = torch.zeros(3, 2, 2, 2, dtype=torch.bool)
    mask[0] = True  # 8 kept
    mask[1, 0, 0, 0] = mask[1, 1, 1, 1] = True  # 2 kept, in different input channels
    mask[2, 1] = True  # 4 kept: one whole input channel
    assert torch.equal(unit_fan_in(mask), torch.tensor([8, 2, 4]))
    with torch.no_grad():
        conv.weight.fill_(1.0)
    rescale_(conv, {"weight": mask})
    for j, k in enumerate((8, 2, 4)):
        w = conv.weight.detach()[j]
        assert torch.allclose(w[mask[j]], torch.full((k,), math.sqrt(8 / k)))
        assert bool((w[~mask[j]] == 0).all())
    grouped = nn.Conv2d(4, 4, 3, groups=2)  # weight (4, 2, 3, 3): fan-in 18 per output channel, as PyTorch's
    assert torch.equal(unit_fan_in(torch.ones_like(grouped.weight, dtype=torch.bool)), torch.full((4,), 18))


def test_explicit_mask_and_errors() -> None:
    lin = nn.Linear(6, 4)
    m = torch.zeros(4, 6, dtype=torch.bool)
    m[:, :3] = True
    sparse_init_(lin, {"weight": m}, generator=torch.Generator().manual_seed(0))
    assert bool((lin.weight.detach()[:, 3:] == 0).all())
    a, b = nn.Linear(6, 4), nn.Linear(6, 4)
    sparse_init_(a, generator=torch.Generator().manual_seed(5))
    sparse_init_(b, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.weight, b.weight)  # the generator alone decides the draw
    with pytest.raises(MaskError, match="does not have"):
        rescale_(lin, {"nope.weight": m})
    with pytest.raises(MaskError, match="shape"):
        rescale_(lin, {"weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(SparseflowError, match="per must be"):
        sparse_init_(lin, per="row")
    with pytest.raises(SparseflowError, match="gain"):
        sparse_init_(lin, gain=-1.0)


def _deep_sparse_mlp(density: float, depth: int = 12, width: int = 200, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    model = MLP(100, 10, hidden=(width,) * (depth - 1))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in prunable(model).values():
            p.mul_(torch.rand(p.shape, generator=g) < density)
    return model


def test_variance_ratios_by_hand() -> None:
    lin = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(2 * torch.eye(3))
    r = variance_ratios(nn.Sequential(lin), torch.tensor([[1.0, 2.0, 3.0]]))
    assert r.layers == ("0",) and r.input_moment == pytest.approx(14 / 3)
    assert r.moments == pytest.approx((56 / 3,)) and r.ratios == pytest.approx((4.0,))


def test_sparse_he_keeps_chi_one_where_masked_he_shrinks_by_the_density() -> None:
    """Mean field (Poole et al. 2016): a ReLU layer's ratio is σ_w² · kept fan-in / 2; masked He gives d."""
    x = torch.randn(2000, 100, generator=torch.Generator().manual_seed(0))
    for init in ("he", "sparse"):
        model = _deep_sparse_mlp(0.1)
        for lin in model.layers:
            nn.init.zeros_(lin.bias)
        if init == "he":
            for p in prunable(model).values():  # dense He, then masked: the variance shrinks by d per layer
                mask = p.detach() != 0
                nn.init.kaiming_normal_(p, nonlinearity="relu")
                with torch.no_grad():
                    p.mul_(mask)
            want = 0.1
        else:
            sparse_init_(model, generator=torch.Generator().manual_seed(1))
            want = 1.0
        hidden = variance_ratios(model, x).ratios[1:]  # layer 1 sees the raw input, not a ReLU output
        mean = sum(hidden) / len(hidden)
        assert abs(mean / want - 1) < 0.15, (init, hidden)


@pytest.mark.parametrize("target", [1.0, 2.0])
def test_calibrate_brings_measured_ratios_to_target(target: float) -> None:
    model = _deep_sparse_mlp(0.05)  # PyTorch default init with biases: ratios far from 1
    model.train()
    zeros = {n: p.detach() == 0 for n, p in prunable(model).items()}
    x = torch.randn(256, 100, generator=torch.Generator().manual_seed(3))
    assert max(abs(r - target) for r in variance_ratios(model, x).ratios) > 0.2
    calibrate_(model, x, target=target, tol=0.01)
    ratios = variance_ratios(model, x).ratios
    assert all(abs(r / target - 1) <= 0.01 + 1e-9 for r in ratios), ratios
    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert all(bool((p.detach()[zeros[n]] == 0).all()) for n, p in prunable(model).items())
    fresh = variance_ratios(model, torch.randn(1024, 100, generator=torch.Generator().manual_seed(4))).ratios
    assert all(abs(r / target - 1) < 0.25 for r in fresh), fresh  # generalises to other inputs


def test_calibrate_conv_and_bad_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    model.eval()
    x = torch.randn(64, 1, 8, 8)
    calibrate_(model, x)
    assert variance_ratios(model, x).ratios == pytest.approx((1.0, 1.0, 1.0), rel=0.011)
    assert not model.training
    with pytest.raises(SparseflowError, match="cannot run on the calibration batch of shape"):
        calibrate_(model, torch.randn(4, 3, 8, 8))
    with pytest.raises(SparseflowError, match="pass x"):
        calibrate_(model, (x, torch.zeros(64)))
    with pytest.raises(SparseflowError, match="target"):
        calibrate_(model, x, target=0.0)


def _masked_reference(model: nn.Module, mask) -> dict[str, torch.Tensor]:
    return {n: torch.where(mask[n], p.detach(), torch.zeros(())) for n, p in prunable(model).items()}


_G = torch.Generator().manual_seed(7)
_SNIP_DATA = (torch.randn(16, 20, generator=_G), torch.randint(0, 5, (16,), generator=_G))


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: RandomSparse(0.9, seed=3, **kw),
        lambda **kw: SET(0.9, until=200, **kw),
        lambda **kw: RigL(0.9, until=200, **kw),
        lambda **kw: SynFlow(0.9, rounds=3, input_shape=(20,), **kw),
        lambda **kw: SNIP(0.9, data=_SNIP_DATA, **kw),
    ],
    ids=["random", "set", "rigl", "synflow", "snip"],
)
def test_from_scratch_methods_rescale_by_default_and_opt_out_is_bit_exact(make) -> None:
    def build() -> MLP:
        torch.manual_seed(0)
        return MLP(20, 5, hidden=(30, 30))

    off, on = build(), build()
    before = {n: p.detach().clone() for n, p in off.named_parameters()}
    m_off, m_on = make(sparse_init=False), make()
    assert m_on.sparse_init is True
    m_off.prepare(off)
    m_on.prepare(on)
    assert m_off.mask == m_on.mask
    for n, p in off.named_parameters():  # opt-out: exactly the masked original weights, as before
        assert torch.equal(p.detach(), torch.where(m_off.mask[n], before[n], torch.zeros(())) if n in m_off.mask else before[n])
    assert m_off.sparse_init_applied is None
    calibrated = isinstance(m_on, SNIP)  # SNIP has a data batch: calibrated back to the dense ratios
    assert m_on.sparse_init_applied == ("calibrated" if calibrated else "rescaled")
    for n, p in on.named_parameters():
        if n not in m_on.mask:
            assert torch.equal(p.detach(), before[n])  # biases untouched
            continue
        m = m_on.mask[n]
        masked = torch.where(m, before[n].double(), torch.zeros((), dtype=torch.float64))
        if calibrated:  # one positive factor per layer
            c = float((p.detach().double() * masked).sum() / masked.square().sum())
            torch.testing.assert_close(p.detach().double(), c * masked, rtol=1e-5, atol=1e-7)
            continue
        # norm matching: unit j's kept weights times ||w_j|| / ||w_j * m_j||
        factor = (before[n].double().square().sum(1, keepdim=True) / masked.square().sum(1, keepdim=True).clamp(min=1e-300)).sqrt()
        torch.testing.assert_close(p.detach(), (masked * factor).float(), rtol=1e-6, atol=0)
    if calibrated:  # the masked network propagates the signal as the dense one did, layer by layer
        x = _SNIP_DATA[0]
        dense = variance_ratios(build(), x).ratios
        torch.testing.assert_close(torch.tensor(variance_ratios(on, x).ratios), torch.tensor(dense), rtol=0.011, atol=0)


def test_pruning_of_trained_weights_does_not_rescale_and_flag_is_checked() -> None:
    assert MagnitudePruning(0.5).sparse_init is False and GMP(0.5, end=300).sparse_init is False
    torch.manual_seed(0)
    model = MLP(20, 5, hidden=(30,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = MagnitudePruning(0.5)
    method.prepare(model)
    assert all(torch.equal(p.detach(), torch.where(method.mask[n], before[n], torch.zeros(()))) for n, p in prunable(model).items())
    with pytest.raises(SparseflowError, match="sparse_init"):
        RandomSparse(0.5, sparse_init="yes")  # type: ignore[arg-type]


def test_rescale_with_reference_restores_each_units_dense_norm_by_hand() -> None:
    dense = torch.tensor([[3.0, 4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [2.0, 0.5, 0.5, 0.5]])
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    lin = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(dense)
    norms = unit_norms(lin)
    torch.testing.assert_close(norms["weight"], torch.tensor([25.0, 4.0, 4.75], dtype=torch.float64))
    rescale_(lin, {"weight": mask}, reference=norms)
    # unit 0 keeps 3 of norm 5: x 5/3; unit 1 keeps two ones of norm 2: x sqrt(2); unit 2 keeps nothing: zero
    want = torch.tensor([[5.0, 0, 0, 0], [math.sqrt(2), math.sqrt(2), 0, 0], [0.0, 0, 0, 0]])
    torch.testing.assert_close(lin.weight.detach(), want)
    # the dense weights themselves are an equivalent reference, in the layout the model stores them
    lin2 = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin2.weight.copy_(dense)
    rescale_(lin2, {"weight": mask}, reference={"weight": dense})
    torch.testing.assert_close(lin2.weight.detach(), want)
    # per layer: one factor sqrt(33.75 / (9 + 2)) for every kept weight
    lin3 = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin3.weight.copy_(dense)
    rescale_(lin3, {"weight": mask}, per="layer", reference=norms)
    torch.testing.assert_close(lin3.weight.detach(), torch.where(mask, dense, 0.0) * math.sqrt(33.75 / 11))
    with pytest.raises(MaskError, match="reference"):
        rescale_(lin3, {"weight": mask}, reference={"other": dense})
    with pytest.raises(MaskError, match="shape"):
        rescale_(lin3, {"weight": mask}, reference={"weight": torch.ones(5)})


def test_norm_matching_fits_masks_that_keep_large_weights_where_count_matching_overshoots() -> None:
    """Keeping the largest 10 % of a Gaussian keeps about 4.4x its mean square: count matching multiplies each
    unit's squared norm by that, norm matching gives it back exactly (mean field: q is set by the squared norm)."""
    torch.manual_seed(0)
    w = torch.randn(64, 1000)
    mask = w.abs() >= w.abs().quantile(0.9, dim=1, keepdim=True)
    dense_sq = w.double().square().sum(1)
    a, b = nn.Linear(1000, 64, bias=False), nn.Linear(1000, 64, bias=False)
    with torch.no_grad():
        a.weight.copy_(w)
        b.weight.copy_(w)
    rescale_(a, {"weight": mask})
    rescale_(b, {"weight": mask}, reference={"weight": w})
    gain_count = float((a.weight.double().square().sum(1) / dense_sq).mean())
    assert 4.0 < gain_count < 4.8  # E[w² | |w| > z_0.95] = 1 + z φ(z) / 0.05 = 4.39 for a unit Gaussian
    torch.testing.assert_close(b.weight.double().square().sum(1), dense_sq, rtol=1e-6, atol=0)


def test_calibrate_to_per_layer_targets() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 30, bias=False), nn.ReLU(), nn.Linear(30, 30, bias=False), nn.ReLU(),
                          nn.Linear(30, 5, bias=False))
    x = torch.randn(256, 10)
    calibrate_(model, x, target={"0": 0.5, "4": 2.0}, tol=1e-3)
    r = variance_ratios(model, x)
    torch.testing.assert_close(torch.tensor(r.ratios), torch.tensor([0.5, 1.0, 2.0]), rtol=2e-3, atol=0)
    with pytest.raises(SparseflowError, match="not calibrated"):
        calibrate_(model, x, target={"9": 1.0})
    with pytest.raises(SparseflowError, match="positive finite"):
        calibrate_(model, x, target={"0": -1.0})


def test_snip_without_a_measurable_batch_falls_back_to_norm_matching() -> None:
    """Inputs given as a dict (a Hugging Face batch) cannot be calibrated on: SNIP rescales by norm instead."""

    class DictMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = MLP(20, 5, hidden=(30,))

        def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
            logits = self.net(input_ids)
            return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}

    torch.manual_seed(0)
    model = DictMLP()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = _SNIP_DATA
    method = SNIP(0.8, data={"input_ids": x, "labels": y})
    method.prepare(model)
    assert method.sparse_init_applied == "rescaled"
    for n, m in method.mask.items():
        got = dict(model.named_parameters())[n].detach().double()
        dense_sq = before[n].double().square().sum(1)
        live = m.any(1)
        torch.testing.assert_close(got.square().sum(1)[live], dense_sq[live], rtol=1e-6, atol=0)


def test_snip_on_multihead_attention_falls_back_to_norm_matching_for_every_target() -> None:
    """nn.MultiheadAttention multiplies by out_proj.weight without calling out_proj, so the per-layer variance
    cannot be measured: SNIP gives every target, in_proj_weight included, its dense unit norms back."""
    from sparseflow.distributions import uniform

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.head = nn.Linear(16, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.attn(x, x, x, need_weights=False)[0]
            return self.head(h.mean(1))

    torch.manual_seed(0)
    model = Attn()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(32, 6, 16, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (32,), generator=torch.Generator().manual_seed(2))
    method = SNIP(0.7, data=(x, y), distribution=uniform)
    method.prepare(model)
    assert method.sparse_init_applied == "rescaled"
    assert "attn.in_proj_weight" in method.mask
    for n, m in method.mask.items():
        w = dict(model.named_parameters())[n].detach().double()
        live = m.any(1)
        torch.testing.assert_close(w.square().sum(1)[live], before[n].double().square().sum(1)[live], rtol=1e-6, atol=0)
