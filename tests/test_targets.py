"""Targets: which parameters are pruned; excluded layers stay dense and untouched by a method."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import sparseflow as sf
from sparseflow import MaskError, Targets, prunable


class Net(nn.Module):
    """conv (Conv1d) -> block.0, block.1 (Linear) -> norm (LayerNorm, not a target) -> head (Linear)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(2, 4, 3)  # (B, 2, 4) -> (B, 4, 2) -> flatten 8
        self.block = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).flatten(1)
        return self.head(self.norm(self.block(h)))


ALL = ["conv.weight", "block.0.weight", "block.1.weight", "head.weight"]


def test_default_targets_are_linear_and_conv_weights_in_module_order() -> None:
    assert list(prunable(Net())) == ALL
    assert list(Targets().select(Net())) == ALL


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        (Targets(include=("block.*.weight",)), ["block.0.weight", "block.1.weight"]),
        (Targets(include=("*.weight",)), ALL[:3] + ["norm.weight", "head.weight"]),  # include widens past types
        (Targets(include=("head.*",)), ["head.weight", "head.bias"]),
        (Targets(exclude=("block.1.*",)), ["conv.weight", "block.0.weight", "head.weight"]),
        (Targets(exclude=("*conv*", "head.weight")), ["block.0.weight", "block.1.weight"]),
        (Targets(exclude_types=(nn.Conv1d,)), ALL[1:]),
        (Targets(types=(nn.Conv1d,)), ["conv.weight"]),
        (Targets(first_layer=False), ALL[1:]),
        (Targets(last_layer=False), ALL[:-1]),
        (Targets(first_layer=False, last_layer=False), ALL[1:-1]),
        (Targets(exclude_types=(nn.Conv1d,), first_layer=False), ["block.1.weight", "head.weight"]),
    ],
)
def test_selection_rules(targets: Targets, expected: list[str]) -> None:
    model = Net()
    chosen = targets.select(model)
    assert list(chosen) == expected
    params = dict(model.named_parameters())
    assert all(chosen[n] is params[n] for n in expected)


def test_fnmatch_is_case_sensitive_and_anchored() -> None:
    with pytest.raises(MaskError):
        Targets(include=("BLOCK.*",)).select(Net())
    with pytest.raises(MaskError):
        Targets(include=("block.0",)).select(Net())  # names a module, not a parameter


@pytest.mark.parametrize(
    "model",
    [nn.Sequential(nn.ReLU(), nn.LayerNorm(4)), nn.Sequential(nn.Embedding(5, 3)), nn.Sequential()],
    ids=["relu-norm", "embedding", "empty"],
)
def test_no_prunable_parameters_raises(model: nn.Module) -> None:
    with pytest.raises(MaskError, match="no prunable parameters"):
        prunable(model)
    with pytest.raises(MaskError):
        sf.MagnitudePruning(0.5).prepare(model)


def test_everything_excluded_raises() -> None:
    with pytest.raises(MaskError):
        Targets(exclude=("*",)).select(Net())
    with pytest.raises(MaskError):  # one target layer, and it is the first
        Targets(first_layer=False).select(nn.Sequential(nn.Linear(3, 3)))


def test_shared_parameter_is_selected_once_under_its_first_name() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.b.weight = self.a.weight

    model = Tied()
    assert list(prunable(model)) == ["a.weight"]
    method = sf.MagnitudePruning(0.5)
    method.prepare(model)
    method.mask.check(model)  # every name is one that model.named_parameters() knows
    assert method.mask.counts() == {"a.weight": 8} and int((model.a.weight != 0).sum()) == 8


@pytest.mark.parametrize(
    ("targets", "dense"),
    [
        (Targets(first_layer=False), ["conv.weight"]),
        (Targets(last_layer=False), ["head.weight"]),
        (Targets(exclude=("block.1.weight",)), ["block.1.weight"]),
        (Targets(exclude_types=(nn.Conv1d,), last_layer=False), ["conv.weight", "head.weight"]),
    ],
)
def test_excluded_layers_stay_dense_through_training(targets: Targets, dense: list[str]) -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = sf.GMP(0.75, initial_sparsity=0.5, start=0, end=6, every=3, targets=targets)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method.prepare(model, opt)
    params = dict(model.named_parameters())
    assert set(method.mask) == set(ALL) - set(dense)
    for n in dense:  # not pruned in prepare: identical weights
        assert torch.equal(params[n].detach(), before[n])

    # The dense layers train exactly as in an unpruned copy of the model would, given the same inputs.
    ref = Net()
    ref.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(1)
    for _ in range(8):
        x, y = torch.randn(5, 2, 4, generator=g), torch.randint(0, 3, (5,), generator=g)
        nn.functional.cross_entropy(model(x), y).backward()
        nn.functional.cross_entropy(ref(x), y).backward()
        for n in dense:
            assert torch.equal(params[n].grad, dict(ref.named_parameters())[n].grad)
            assert bool((params[n].grad != 0).any())
        opt.step()
        method.step()
        opt.zero_grad()
        ref.zero_grad()
        ref.load_state_dict(model.state_dict())
    for n in dense:
        assert bool((params[n] != 0).all())  # never pruned
    assert method.density() == pytest.approx(0.25, abs=0.02)


def test_empty_selection_names_the_types_that_hold_weights_and_the_suggestion_works() -> None:
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.norm = nn.LSTM(8, 16), nn.LayerNorm(16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.lstm(x)[0])

    model = Recurrent()
    with pytest.raises(MaskError) as e:
        Targets().select(model)
    message = str(e.value)
    assert "the default Targets()" in message and "LSTM: 'lstm.weight_ih_l0', 'lstm.weight_hh_l0'" in message
    suggested = re.search(r"targets=(sf\.Targets\(types=\(.*?\)\))", message).group(1)
    assert suggested == "sf.Targets(types=(nn.LSTM,))"
    chosen = eval(suggested, {"sf": sf, "nn": nn}).select(model)  # the suggestion, as written, works
    assert list(chosen) == ["lstm.weight_ih_l0", "lstm.weight_hh_l0"]
    with pytest.raises(MaskError, match="first_layer=False or last_layer=False leaves that dense"):
        Targets(first_layer=False).select(nn.Sequential(nn.Linear(3, 4)))
