"""Sparse execution for training (:mod:`sparseflow.methods.sparse_linear`).

Oracles: the forward, input gradient and weight gradient equal the dense ``nn.Linear`` with the masked weight
(and torch.autograd.gradcheck in float64); 100 steps of SGD with momentum and of AdamW give the same weights and
losses as masked-dense training of the same model under :class:`sparseflow.FixedMask`.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparseflow as sf
from sparseflow.errors import MaskError
from sparseflow.training.loop import optimizer_step
from sparseflow.methods.sparse_linear import SparseTrainLinear, _SparseMatmul, _Structure, sparse_linear_


def _mask(shape: tuple[int, int], density: float, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < density


def test_forward_and_gradients_equal_the_masked_dense_layer() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(24, 16)
    mask = _mask((16, 24), 0.3)
    sp = SparseTrainLinear.from_linear(lin, mask)
    with torch.no_grad():
        lin.weight.mul_(mask)
    x = torch.randn(2, 5, 24, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = sp(x), lin(x2)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sp.values.grad, lin.weight.grad[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sp.bias.grad, lin.bias.grad)
    assert torch.equal(sp.mask, mask) and torch.equal(sp.dense_weight(), lin.weight.detach())


def test_gradcheck_in_float64() -> None:
    mask = _mask((5, 7), 0.4, seed=1)
    layer = SparseTrainLinear(mask).double()
    values = torch.randn(int(mask.sum()), dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, v: _SparseMatmul.apply(a, v, layer), (x, values))
    layer.collect_dense_grad = True  # the path that also keeps the dense gradient (RigL's update steps)
    assert torch.autograd.gradcheck(lambda a, v: _SparseMatmul.apply(a, v, layer), (x, values))


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_training_equals_masked_dense_training(opt: str) -> None:
    make = (lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3)) if opt == "sgd" else (
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2))
    dense = _mlp(0)
    method = sf.MagnitudePruning(0.8)
    opt_d = make(dense.parameters())
    method.prepare(dense, opt_d)
    keep = method.mask.to_dict()
    sparse = copy.deepcopy(dense)
    sparse_linear_(sparse, keep)
    assert all(isinstance(sparse[i], SparseTrainLinear) for i in (0, 2, 4))
    opt_s = make(sparse.parameters())
    g = torch.Generator().manual_seed(1)
    for step in range(100):
        x, y = torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)
        loss_d = optimizer_step(F.cross_entropy(dense(x), y), opt_d, method)
        loss_s = optimizer_step(F.cross_entropy(sparse(x), y), opt_s)
        assert loss_s == pytest.approx(loss_d, rel=1e-4), step
    for i in (0, 2, 4):
        torch.testing.assert_close(sparse[i].dense_weight(), dense[i].weight.detach(), rtol=1e-4, atol=1e-5)
    # the optimizer state is nnz-sized: 20 % of the dense weights' entries
    state = sum(t.numel() for p in (sparse[i].values for i in (0, 2, 4)) for t in opt_s.state[p].values()
                if torch.is_tensor(t) and t.dim() == 1 and t.numel() == p.numel())
    dense_state = sum(t.numel() for p in (dense[i].weight for i in (0, 2, 4)) for t in opt_d.state[p].values()
                      if torch.is_tensor(t) and t.shape == p.shape)
    assert state == pytest.approx(0.2 * dense_state, rel=0.02)


def test_bad_masks_are_refused() -> None:
    with pytest.raises(MaskError, match="2-D bool mask"):
        SparseTrainLinear(torch.ones(3, 4))
    with pytest.raises(MaskError, match="keeps no weight"):
        SparseTrainLinear(torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(MaskError, match="shape"):
        SparseTrainLinear.from_linear(nn.Linear(4, 3), torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(sf.SparseflowError, match="takes inputs of 4 features"):
        SparseTrainLinear(torch.ones(3, 4, dtype=torch.bool))(torch.randn(2, 5))
