"""Mask: validation on every write (naming the tensor and both shapes), measurements against hand counts."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseflow import Mask, MaskError


def _two_tensor_mask() -> Mask:
    # a: 3 of 4 kept; b: 0 of 3 kept -> 3 of 7 overall
    return Mask({"a": torch.tensor([[True, False], [True, True]]), "b": torch.zeros(3, dtype=torch.bool)})


def test_measurements_match_hand_counts() -> None:
    m = _two_tensor_mask()
    assert m.count() == 3 and m.numel() == 7
    assert m.counts() == {"a": 3, "b": 0}
    assert m.density() == pytest.approx(3 / 7) and m.sparsity() == pytest.approx(4 / 7)
    assert m.densities() == {"a": pytest.approx(0.75), "b": 0.0}
    assert list(m) == ["a", "b"] and len(m) == 2 and "a" in m and "c" not in m


def test_empty_mask_is_dense() -> None:
    assert Mask().density() == 1.0 and Mask().count() == 0 and Mask().numel() == 0
    assert Mask({"e": torch.zeros(0, 3, dtype=torch.bool)}).densities() == {"e": 1.0}


def test_ones_and_from_nonzeros() -> None:
    w = {"w": torch.tensor([[0.0, 2.0], [-1.0, 0.0]]), "v": torch.ones(3)}
    assert Mask.ones(w).count() == 7
    nz = Mask.from_nonzeros(w)
    assert torch.equal(nz["w"], torch.tensor([[False, True], [True, False]])) and nz["v"].all()


def test_clone_is_independent_and_eq() -> None:
    m = _two_tensor_mask()
    c = m.clone()
    assert c == m
    c["a"][0, 1] = True  # in-place edit of the clone only
    assert c != m and m.count() == 3
    assert m == m.to_dict()


@pytest.mark.parametrize("bad", [torch.ones(2, 2), torch.ones(2, 2, dtype=torch.uint8), [[True]], None])
def test_rejects_non_bool_values(bad: object) -> None:
    with pytest.raises(MaskError, match="'layer.weight'"):
        Mask({"layer.weight": bad})  # type: ignore[dict-item]


def test_setitem_wrong_shape_names_tensor_and_both_shapes() -> None:
    m = Mask({"fc.weight": torch.ones(3, 4, dtype=torch.bool)})
    with pytest.raises(MaskError) as e:
        m["fc.weight"] = torch.ones(4, 3, dtype=torch.bool)
    msg = str(e.value)
    assert "'fc.weight'" in msg and "(4, 3)" in msg and "(3, 4)" in msg
    assert m["fc.weight"].shape == (3, 4)  # unchanged


def test_getitem_unknown_name_raises_mask_error() -> None:
    with pytest.raises(MaskError, match="'nope'"):
        Mask()["nope"]


def test_check_unknown_parameter_and_wrong_shape() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    Mask({"0.weight": torch.ones(3, 4, dtype=torch.bool)}).check(model)  # fine
    with pytest.raises(MaskError, match=re.escape("'2.weight'")):
        Mask({"2.weight": torch.ones(3, 4, dtype=torch.bool)}).check(model)
    with pytest.raises(MaskError) as e:
        Mask({"1.weight": torch.ones(3, 2, dtype=torch.bool)}).check(model)
    msg = str(e.value)
    assert "'1.weight'" in msg and "(3, 2)" in msg and "(2, 3)" in msg
    with pytest.raises(MaskError, match="'1.weight'"):
        Mask({"1.weight": torch.ones(3, 2, dtype=torch.bool)}).apply_(model)


def test_apply_zeroes_outside_mask_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    w0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    keep = torch.rand(3, 4) > 0.5
    Mask({"0.weight": keep}).apply_(model)
    assert torch.equal(model[0].weight.detach(), torch.where(keep, w0, torch.zeros(())))
    assert torch.equal(model[0].bias.detach(), b0)  # not in the mask: untouched


shapes = st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3), min_size=0, max_size=4)


@settings(max_examples=40, deadline=None)
@given(shapes=shapes, seed=st.integers(0, 2**16))
def test_mask_invariants(shapes: list[list[int]], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    raw = {f"t{i}": torch.rand(tuple(sh), generator=g) > 0.5 for i, sh in enumerate(shapes)}
    m = Mask(raw)
    # oracle: plain Python sums over the tensors
    count = sum(int(v.sum()) for v in raw.values())
    numel = sum(v.numel() for v in raw.values())
    assert m.count() == count and m.numel() == numel
    assert m.density() == (count / numel if numel else 1.0)
    assert m.counts() == {k: int(v.sum()) for k, v in raw.items()}
    assert m.clone() == m and Mask.from_nonzeros({k: v.float() * 3.0 for k, v in raw.items()}) == m
    for k, v in raw.items():  # replacing with the same shape is allowed, with another shape is not
        m[k] = ~v
        with pytest.raises(MaskError, match=re.escape(repr(k))):
            m[k] = torch.ones(*v.shape, 2, dtype=torch.bool)
    assert m.count() == numel - count
