"""Packed training: K networks as one. Oracle: each member's own network, forward, gradients and SGD steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparseflow.errors import SparseflowError
from sparseflow.training.models import ResNet
from sparseflow.training.packed import PackedLinear, member_outputs, pack, pack_inputs, packed_masks, unpack

K = 3


def _members(norm: str, k: int = K) -> list[nn.Module]:
    nets = []
    for s in range(k):
        torch.manual_seed(s)
        nets.append(ResNet(1, 10, depth=8, width=4, norm=norm))
    return nets


def _batches(k: int = K, n: int = 5) -> torch.Tensor:
    return torch.randn(k, n, 1, 8, 8, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("norm", ["batch", "group", "layer", "none"])
@pytest.mark.parametrize("training", [True, False])
def test_packed_forward_is_each_members_forward(norm: str, training: bool) -> None:
    nets = _members(norm)
    if norm == "batch":  # running statistics that differ per member, so eval mode tests them too
        for s, net in enumerate(nets):
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.fill_(0.1 * s)
                    m.running_var.fill_(1.0 + s)
    model = pack(nets)
    xs = _batches()
    for net in nets:
        net.train(training)
    model.train(training)
    out = member_outputs(model(pack_inputs(xs)), K)
    for k, net in enumerate(nets):  # BatchNorm in training mode: statistics of member k's own batch only
        assert torch.allclose(out[k], net(xs[k]), atol=1e-5), (norm, k)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_sgd_on_the_pack_is_sgd_on_each_member(norm: str) -> None:
    """Three SGD steps (momentum, weight decay) on the summed loss of the pack move every member exactly as three
    steps on its own loss do, BatchNorm's running statistics included; unpack() writes them back."""
    nets = _members(norm)
    alone = [copy.deepcopy(n) for n in nets]
    model = pack(nets)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opts = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3) for n in alone]
    y = torch.randint(0, 10, (K, 5), generator=torch.Generator().manual_seed(1))
    for step in range(3):
        xs = _batches() + step
        out = member_outputs(model(pack_inputs(xs)), K)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1).sum().backward()
        opt.step()
        for k, (net, o) in enumerate(zip(alone, opts)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(net(xs[k]), y[k]).backward()
            o.step()
    unpack(model, nets)
    for net, ref in zip(nets, alone):
        for (name, a), (_, b) in zip(net.state_dict().items(), ref.state_dict().items()):
            assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_unpack_round_trip_and_copies() -> None:
    nets = _members("batch")
    model = pack(nets)
    with torch.no_grad():  # the pack holds copies: changing it leaves the members alone until unpack()
        for p in model.parameters():
            p.add_(1.0)
    fresh = _members("batch")
    assert all(torch.equal(a, b) for n, f in zip(nets, fresh) for a, b in zip(n.parameters(), f.parameters()))
    unpack(model, nets)
    assert all(torch.allclose(a, b + 1.0) for n, f in zip(nets, fresh) for a, b in zip(n.parameters(), f.parameters()))
    with pytest.raises(SparseflowError, match="got 2 models for a network packing 3"):
        unpack(model, nets[:2])


def test_linear_layers_pack_as_batched_products() -> None:
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)) for _ in range(K)]
    model = pack(nets)
    assert isinstance(model[0], PackedLinear) and model[0].weight.shape == (K, 6, 4)
    xs = torch.randn(K, 7, 4)
    out = member_outputs(model(pack_inputs(xs)), K)
    for k, net in enumerate(nets):
        assert torch.allclose(out[k], net(xs[k]), atol=1e-6)


def test_packed_masks_place_each_members_mask() -> None:
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(2), nn.Linear(4, 3)) for _ in range(2)]
    model = pack(nets)
    conv = [torch.rand(2, 1, 3, 3) > 0.5 for _ in range(2)]
    lin = torch.rand(3, 4) > 0.5
    masks = packed_masks([{"0.weight": conv[0], "2.weight": lin}, {"0.weight": conv[1]}], model)
    assert torch.equal(masks["0.weight"], torch.cat(conv))  # channel blocks, member-major
    assert torch.equal(masks["2.weight"], torch.stack([lin, torch.ones(3, 4, dtype=torch.bool)]))  # member 1: dense
    with pytest.raises(SparseflowError, match="'9.weight'"):
        packed_masks([{"9.weight": lin}], model)


def test_refusals_name_the_layer() -> None:
    with pytest.raises(SparseflowError, match="at least one"):
        pack([])
    with pytest.raises(SparseflowError, match="'1'.*LayerNorm"):
        pack([nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)) for _ in range(2)])
    with pytest.raises(SparseflowError, match="one architecture"):
        pack([nn.Sequential(nn.Linear(3, 3)), nn.Sequential(nn.Linear(3, 3), nn.ReLU())])
    with pytest.raises(SparseflowError, match="equal shapes"):
        pack([nn.Sequential(nn.Linear(3, 3)), nn.Sequential(nn.Linear(3, 4))])
