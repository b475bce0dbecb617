"""Reference models: shapes on every dataset shape, parameter counts against hand formulas, naming order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseflow.errors import SparseflowError
from sparseflow.training.models import LANGUAGE_MODELS, MODELS, NORMS, MLP, ConvNet, ResNet, build_model, group_count

CLASSIFIERS = tuple(m for m in MODELS if m not in LANGUAGE_MODELS)  # (the GPTs: tests/training/test_gpt.py)
SHAPES = ((1, 8, 8), (1, 40), (1, 28, 28))  # digits, mnist1d, (fashion-)mnist
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_backward_every_model_norm_shape(name: str, norm: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, shape, 10, norm=norm, seed=0)
    x, y = torch.randn(2, *shape), torch.tensor([3, 7])  # batch of 2: the smallest batch norm accepts
    model.train()
    F.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", ((1, 40), (3, 32, 32)), ids=("1d", "2d"))
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_named_modules_order_is_call_order(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, shape, 10, norm="batch", seed=0)
    declared = [n for n, m in model.named_modules() if isinstance(m, WEIGHTED)]
    called: list[str] = []
    for n, m in model.named_modules():
        if isinstance(m, WEIGHTED):
            m.register_forward_hook(lambda *_, n=n: called.append(n))
    model(torch.randn(2, *shape))
    assert called == declared
    last = dict(model.named_modules())[declared[-1]]
    assert isinstance(last, nn.Linear) and last.out_features == 10  # the classifier is last


def test_mlp_layer_names_and_norm_types() -> None:
    model = build_model("lenet300-100", (1, 28, 28), 10, norm="layer")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears == ["layers.0", "layers.1", "layers.2"]
    assert [type(m) for m in model.norms] == [nn.LayerNorm, nn.LayerNorm]
    conv = build_model("conv2", (1, 40), 10, norm="layer")
    assert isinstance(conv.layers[0], nn.Conv1d) and isinstance(conv.norms[0], nn.GroupNorm)
    assert conv.norms[0].num_groups == 1
    assert isinstance(build_model("conv2", (1, 8, 8), 10, norm="batch").norms[0], nn.BatchNorm2d)


def test_lenet_300_100_parameter_count() -> None:
    expected = 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert expected == 266610
    assert n_params(build_model("lenet300-100", (1, 28, 28), 10)) == expected
    assert n_params(MLP(784, 10)) == expected


def test_conv2_parameter_count_28x28() -> None:
    conv = 1 * 64 * 9 + 64 + 64 * 64 * 9 + 64  # two 3x3 convs with bias (no norm)
    fc = (64 * 14 * 14) * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10  # one 2x2 pool: 28 -> 14
    assert n_params(build_model("conv2", (1, 28, 28), 10)) == conv + fc == 3317450


def resnet_params(in_ch: int, classes: int, n: int, w: int) -> int:
    """Hand count for ResNet-(6n+2) with batch norm (2 parameters per channel) and bias-free convs."""
    total = in_ch * w * 9 + 2 * w  # stem
    prev = w
    for s in range(3):
        ws = w * 2**s
        total += prev * ws * 9 + 2 * ws + ws * ws * 9 + 2 * ws  # first block
        if prev != ws:
            total += prev * ws + 2 * ws  # 1x1 projection shortcut + its norm
        total += (n - 1) * 2 * (ws * ws * 9 + 2 * ws)  # remaining blocks
        prev = ws
    return total + prev * classes + classes


def test_resnet_parameter_count() -> None:
    model = ResNet(3, 10, depth=20, width=16, norm="batch")
    assert n_params(model) == resnet_params(3, 10, 3, 16) == 272474  # the paper's "0.27M"
    assert n_params(ResNet(1, 10, depth=32, width=16)) == resnet_params(1, 10, 5, 16)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_seeded_build_is_reproducible_and_leaves_global_rng() -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = build_model("conv4", (1, 28, 28), 10, norm="batch", seed=7)
    b = build_model("conv4", (1, 28, 28), 10, norm="batch", seed=7)
    c = build_model("conv4", (1, 28, 28), 10, norm="batch", seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(p, q), name
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)


def test_pooling_skips_at_size_one() -> None:
    assert build_model("conv6", (1, 8, 8), 10).pools == (False, True, False, True, False, True)
    tiny = ConvNet(1, 10, (2, 2), depth=6)  # 2 -> 1, then two skipped pools
    assert tiny.pools == (False, True, False, False, False, False)
    assert tiny(torch.randn(2, 1, 2, 2)).shape == (2, 10)


def test_group_count_rule() -> None:
    assert [group_count(c) for c in (1, 2, 16, 64, 100, 256, 300)] == [1, 1, 8, 32, 25, 32, 30]


def test_bad_values_raise_with_remedy() -> None:
    with pytest.raises(SparseflowError, match="vgg.*mlp"):
        build_model("vgg", (1, 28, 28), 10)
    with pytest.raises(SparseflowError, match="norm 'instance'"):
        build_model("mlp", (1, 28, 28), 10, norm="instance")
    with pytest.raises(SparseflowError, match=r"\(784,\).*mlp"):
        build_model("conv2", (784,), 10)
    with pytest.raises(SparseflowError, match="hidden"):
        build_model("conv2", (1, 28, 28), 10, hidden=(10,))
    with pytest.raises(SparseflowError, match="input_shape"):
        build_model("mlp", (), 10)
    with pytest.raises(SparseflowError, match="6n\\+2.*21"):
        ResNet(3, 10, depth=21)
    with pytest.raises(SparseflowError, match="2, 4 or 6"):
        ConvNet(1, 10, (28, 28), depth=3)
    with pytest.raises(SparseflowError, match="hidden width"):
        MLP(784, 10, hidden=(0,))
    assert [m.out_features for m in build_model("mlp", (1, 40), 10, hidden=(32,)).layers] == [32, 10]
