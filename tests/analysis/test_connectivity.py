"""Connectivity analysis against oracles: brute-force path enumeration on tiny MLPs, hand-built cuts in a
ConvNet and a ResNet, agreement with has_path, and clear refusals (then a layer-local fallback) for models it
cannot trace."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseflow.analysis.connectivity import connectivity
from sparseflow.errors import SparseflowError
from sparseflow.experiments.collapse.run import has_path
from sparseflow.mask import Mask
from sparseflow.training.models import MLP, ConvNet, ResNet


def mlp_with_masks(masks: list[torch.Tensor], bias: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, m in enumerate(masks):
        lin = nn.Linear(m.shape[1], m.shape[0], bias=bias)
        with torch.no_grad():
            lin.weight.copy_(m.float() * (1 + torch.rand(m.shape)))  # nonzero exactly where kept
        layers += [lin] if i == len(masks) - 1 else [lin, nn.ReLU()]
    return nn.Sequential(*layers)


def brute_force(masks: list[torch.Tensor]) -> dict:
    """Enumerate every input-output unit path; a weight is effective iff some complete path uses it."""
    widths = [masks[0].shape[1]] + [m.shape[0] for m in masks]
    eff = [torch.zeros_like(m) for m in masks]
    on_path = [torch.zeros(w, dtype=torch.bool) for w in widths]
    for path in itertools.product(*(range(w) for w in widths)):
        if all(masks[l][path[l + 1], path[l]] for l in range(len(masks))):
            for l in range(len(masks)):
                eff[l][path[l + 1], path[l]] = True
            for l, u in enumerate(path):
                on_path[l][u] = True
    # Reached from / reaching: prefixes and suffixes of paths (boolean products).
    fwd = [torch.ones(widths[0], dtype=torch.bool)]
    for m in masks:
        fwd.append((m & fwd[-1]).any(1))
    bwd = [torch.ones(widths[-1], dtype=torch.bool)]
    for m in reversed(masks):
        bwd.insert(0, (m & bwd[0][:, None]).any(0))
    return {"effective": [int(e.sum()) for e in eff], "inputs": int(on_path[0].sum()),
            "unreachable": [int((~f).sum()) for f in fwd[1:]], "dead_end": [int((~b).sum()) for b in bwd[1:]],
            "collapsed": not bool(on_path[-1].any())}


def test_hand_built_mlp() -> None:
    # 3 inputs -> 3 hidden -> 2 outputs. Input 2 has no weight; hidden 1 has no input (but an output);
    # hidden 2 has no output; output 1 has no input. The only paths: inputs 0, 1 -> hidden 0 -> output 0.
    w1 = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 1, 0]], dtype=torch.bool)
    w2 = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    c = connectivity(mlp_with_masks([w1, w2]))
    l1, l2 = c.layers
    assert (l1.no_incoming, l1.no_outgoing, l1.unreachable, l1.dead_end, l1.effective) == (1, 1, 1, 1, 2)
    assert (l2.no_incoming, l2.no_outgoing, l2.unreachable, l2.dead_end, l2.effective) == (1, 0, 1, 0, 1)
    assert (c.inputs_reaching_output, c.input_units) == (2, 3)
    assert c.weights == 15 and c.nonzeros == 5 and c.effective == 3
    assert c.effective_sparsity == pytest.approx(1 - 3 / 15)
    assert not c.collapsed


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=2, max_size=4), st.floats(0.1, 0.9), st.integers(0, 10**6))
def test_random_mlp_matches_brute_force(widths: list[int], density: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    masks = [torch.rand(b, a, generator=g) < density for a, b in zip(widths[:-1], widths[1:])]
    c = connectivity(mlp_with_masks(masks))
    want = brute_force(masks)
    assert [r.effective for r in c.layers] == want["effective"]
    assert [r.unreachable for r in c.layers] == want["unreachable"]
    assert [r.dead_end for r in c.layers] == want["dead_end"]
    assert c.inputs_reaching_output == want["inputs"]
    assert c.collapsed == want["collapsed"] == (not has_path(masks))
    assert [r.no_incoming for r in c.layers] == [int((~m.any(1)).sum()) for m in masks]
    assert [r.no_outgoing for r in c.layers] == [int((~m.any(0)).sum()) for m in masks[1:]] + [0]


def test_explicit_mask_equals_pruned_weights_and_model_untouched() -> None:
    torch.manual_seed(0)
    model = MLP(12, 3, (10, 6))
    mask = Mask({n: torch.rand_like(p) < 0.2 for n, p in model.named_parameters() if n.endswith("weight")})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from_mask = connectivity(model, mask)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    mask.apply_(model)
    assert connectivity(model) == from_mask


def test_bias_only_units_are_unreachable_constants() -> None:
    w1 = torch.tensor([[1, 0], [0, 0], [0, 0]], dtype=torch.bool)
    w2 = torch.ones(1, 3, dtype=torch.bool)
    model = mlp_with_masks([w1, w2], bias=True)
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.5, 0.0, 0.3]))
    row = connectivity(model).layers[0]
    assert (row.unreachable, row.constant) == (2, 1)  # unit 2: no input, bias 0.3; unit 1: bias 0


def test_convnet_channel_cut_and_flatten() -> None:
    torch.manual_seed(0)
    model = ConvNet(1, 10, (8, 8), depth=2)  # conv 1->64, conv 64->64, pool to 4x4, flatten 1024 -> 256 -> ...
    with torch.no_grad():
        model.layers[1].weight[5] = 0  # channel 5 of the second conv: no input
        model.layers[2].weight[:, 3 * 16:4 * 16] = 0  # features of channel 3 (k = 4 x 4): no output
        model.layers[1].weight[7, :, 1, 1] = 0  # only the centre tap: channel 7 keeps its input
    c = connectivity(model)
    conv = c.layers[1]
    # Channel 5 is unreachable but still feeds the Linear; channel 3 reaches no output.
    assert (conv.no_incoming, conv.unreachable, conv.no_outgoing, conv.dead_end) == (1, 1, 1, 1)
    # Kernel weights count individually: channel 5's row is gone, channel 7 lost its 64 centre taps, and
    # channel 3's row of 64 * 9 kernel weights is kept but not effective.
    assert conv.nonzeros == 64 * 64 * 9 - 64 * 9 - 64
    assert conv.effective == conv.nonzeros - 64 * 9
    lin = c.layers[2]
    assert lin.in_units == 1024 and lin.effective == (1024 - 2 * 16) * 256  # features of channels 3, 5 are dead
    assert not c.collapsed and c.inputs_reaching_output == 1


def test_resnet_identity_shortcut_keeps_signal_and_fc_collapses() -> None:
    torch.manual_seed(0)
    model = ResNet(3, 10, depth=8, width=4, norm="none")
    with torch.no_grad():
        model.stages[0][0].conv1.weight.zero_()
        model.stages[0][0].conv2.weight.zero_()
    c = connectivity(model)
    rows = {r.name: r for r in c.layers}
    assert not c.collapsed and c.inputs_reaching_output == 3
    assert rows["stages.0.0.conv2.weight"].unreachable == 4 and rows["stages.0.0.conv1.weight"].dead_end == 4
    assert rows["stages.0.0.conv1.weight"].effective == 0
    assert rows["stages.1.0.conv1.weight"].effective == rows["stages.1.0.conv1.weight"].nonzeros  # after the add
    # A downsampling block: cutting its conv path and its 1x1 shortcut conv leaves no path.
    with torch.no_grad():
        model.stages[1][0].conv2.weight.zero_()
        model.stages[1][0].shortcut[0].weight.zero_()
    assert connectivity(model).collapsed
    model2 = ResNet(3, 10, depth=8, width=4, norm="batch")
    with torch.no_grad():
        model2.fc.weight.zero_()
    c2 = connectivity(model2)
    assert c2.collapsed and c2.effective == 0 and c2.inputs_reaching_output == 0


class _Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):  # noqa: ANN001, ANN201
        return torch.cat([self.a(x), self.b(x)], 1)


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.fc(F.relu(self.fc(x)))


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.attn = nn.MultiheadAttention(4, 1)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.attn(self.fc(x), x, x)[0]


@pytest.mark.parametrize("model, words", [
    (_Cat(), ["'cat'", "unknown"]),
    (_Branchy(), ["cannot trace _Branchy"]),
    (_Shared(), ["'fc'", "more than once"]),
    (_Attn(), ["'attn'", "MultiheadAttention"]),
])
def test_refuses_what_it_cannot_trace(model: nn.Module, words: list[str]) -> None:
    with pytest.raises(SparseflowError) as e:
        connectivity(model, analysis="graph")
    for w in words:
        assert w in str(e.value)
    local = connectivity(model)  # the default falls back to the layer-local analysis and says why
    assert local.analysis == "layer-local" and local.reason == str(e.value) and local.collapsed is None


def test_empty_and_foreign_masks_refused() -> None:
    model = MLP(4, 2, (3,))
    with pytest.raises(SparseflowError, match="empty"):
        connectivity(model, Mask())
    with pytest.raises(SparseflowError, match="not weights of Linear/Conv"):
        connectivity(model, Mask({"layers.0.bias": torch.ones(3, dtype=torch.bool)}))
