"""Mask repair: every hidden unit gets an input and an output, per-layer counts are kept, the inputs are untouched."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseflow.analysis.connectivity import connectivity
from sparseflow.analysis.repair import apply_repair_, repair_mask
from sparseflow.errors import SparseflowError
from sparseflow.mask import Mask
from sparseflow.training.models import MLP, ConvNet, ResNet


def random_mask(model: torch.nn.Module, density: float, seed: int) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(p.shape, generator=g) < density for n, p in model.named_parameters()
                 if n.endswith("weight")})


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(2, 12), min_size=3, max_size=5), st.floats(0.05, 0.5), st.integers(0, 10**6))
def test_repair_keeps_counts_and_serves_every_hidden_unit(widths: list[int], density: float, seed: int) -> None:
    model = MLP(widths[0], widths[-1], tuple(widths[1:-1]))
    mask = random_mask(model, density, seed)
    original = mask.clone()
    new, report = repair_mask(model, mask, seed=seed)
    assert mask == original  # pure
    assert new.counts() == mask.counts()
    # Moved weights: as many turned on as off in each layer, and exactly those positions differ.
    for r in report.layers:
        assert int((new[r.name] ^ mask[r.name]).sum()) == 2 * r.moved
    c = connectivity(model, new)
    hidden = c.layers[:-1]
    if report.unfixed == 0:
        assert all(r.no_incoming == 0 and r.no_outgoing == 0 for r in hidden)
        if all(n > 0 for n in mask.counts().values()):
            assert not c.collapsed and not report.collapsed_after
    # Feasible whenever each layer keeps more weights than its rows + columns (the repair never leaves a row or a
    # column empty, inputs and outputs included): then some kept weight shares its row and its column.
    need = [widths[i + 1] + widths[i] for i in range(len(widths) - 1)]
    if all(mask[f"layers.{i}.weight"].sum() > n for i, n in enumerate(need)):
        assert report.unfixed == 0


def test_repair_fixes_a_known_orphan_and_prefers_large_weights() -> None:
    torch.manual_seed(0)
    model = MLP(4, 2, (3,))
    mask = Mask({"layers.0.weight": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool),
                 "layers.1.weight": torch.tensor([[1, 1, 1], [1, 1, 1]], dtype=torch.bool)})
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor([[.9, .8, .7, .6], [.5, .4, .3, .01], [.1, .2, 3., .1]]))
    new, report = repair_mask(model, mask)
    # Unit 2 gets its largest incoming weight (input 2); the smallest removable kept weight (0.01) goes.
    assert new["layers.0.weight"][2].tolist() == [False, False, True, False]
    assert not new["layers.0.weight"][1, 3]
    assert report.layers[0].given_input == 1 and report.moved == 1


def test_repair_conv_through_flatten() -> None:
    model = ConvNet(1, 3, (2, 2), depth=2)  # conv 1->64, conv 64->64, pool 2x2 -> 1x1, flatten 64 -> 256 -> ...
    mask = random_mask(model, 0.3, 0)
    mask["layers.2.weight"][:, 5] = False  # channel 5 of the second conv feeds nothing
    mask["layers.1.weight"][9] = False  # channel 9 reads nothing
    mask["layers.4.weight"][:] = True  # the 3 x 256 classifier at 30 % could not serve all 256 units
    new, report = repair_mask(model, mask)
    assert new.counts() == mask.counts() and report.unfixed == 0
    assert report.layers[1].given_input >= 1 and report.layers[2].given_output >= 1
    assert new["layers.1.weight"][9].any() and new["layers.2.weight"][:, 5].any()
    c = connectivity(model, new)
    assert all(r.no_incoming == 0 and r.no_outgoing == 0 for r in c.layers[:-1])


def test_apply_repair_sets_the_moved_weights() -> None:
    torch.manual_seed(0)
    model = MLP(6, 2, (5,))
    mask = random_mask(model, 0.3, 1)
    mask.apply_(model)
    new, _ = repair_mask(model)
    apply_repair_(model, new)
    for name, m in new.items():
        assert torch.equal(dict(model.named_parameters())[name] != 0, m)


def test_repair_refuses_residual_models() -> None:
    with pytest.raises(SparseflowError, match="sequential"):
        repair_mask(ResNet(3, 10, depth=8, width=4))
