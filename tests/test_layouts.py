"""Layouts: the axes of every registered weight checked against hand computations and against what the modules
compute (an LSTM's gate chunks recompute the LSTM, the in_proj chunks recompute attention), register_layout for
a user's type, and parameter_layouts on a model with a tied parameter. The batch and output readers are tested in
test_layouts_batches.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

import realmodels
import sparseflow as sf
from sparseflow import Layout, SparseflowError, layout_of, parameter_layouts, register_layout
from sparseflow import layouts

TRANSPOSED = Layout(out_axis=1, in_axis=0)


@pytest.fixture
def rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test are undone after it (the registry is shared by the process)."""
    monkeypatch.setattr(layouts, "_RULES", list(layouts._RULES))


# --- Layout: canonical view, restore, fan-in and fan-out ---------------------------------------------------
@pytest.mark.parametrize(("layout", "shape"), [
    (Layout(), (5, 3)), (TRANSPOSED, (3, 5)), (Layout(), (6, 4, 3, 2)), (Layout(out_axis=1, in_axis=0), (4, 6, 3, 2)),
    (Layout(out_axis=2, in_axis=0), (4, 7, 6, 3)), (Layout(out_axis=-1, in_axis=0), (4, 3, 6)),
])
def test_canonical_is_out_in_rest_and_restore_inverts_it(layout: Layout, shape: tuple[int, ...]) -> None:
    t = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    c = layout.canonical(t)
    n = len(shape)
    out_ax, in_ax = layout.out_axis % n, layout.in_axis % n
    rest = [d for i, d in enumerate(shape) if i not in (out_ax, in_ax)]
    assert tuple(c.shape) == (shape[out_ax], shape[in_ax], *rest) == layout.canonical_shape(shape)
    # element (o, i, r...) of the view is the stored element with o at the out axis and i at the in axis
    for o, i in [(0, 0), (shape[out_ax] - 1, 1), (1, shape[in_ax] - 1)]:
        index = [0] * n
        index[out_ax], index[in_ax] = o, i
        assert c[(o, i, *[0] * len(rest))] == t[tuple(index)]
    back = layout.restore(c)
    assert back.shape == t.shape and torch.equal(back, t)


@pytest.mark.parametrize(("module", "fan_in", "fan_out"), [
    (nn.Linear(3, 5), 3, 5),
    (nn.Conv1d(4, 6, 3), 4 * 3, 6 * 3),
    (nn.Conv2d(4, 6, 3), 4 * 9, 6 * 9),
    (nn.Conv3d(2, 4, (3, 2, 1)), 2 * 6, 4 * 6),
    (nn.Conv2d(4, 6, 3, groups=2), 2 * 9, 6 * 9),  # 2 inputs per group feed an output; torch's fan-out convention
    (nn.ConvTranspose2d(4, 6, 3), 4 * 9, 6 * 9),  # stored (in, out, k, k)
    (nn.ConvTranspose2d(4, 6, 3, groups=2), 2 * 9, 3 * 9),  # an output channel reads the 2 inputs of its group
    (nn.ConvTranspose1d(4, 8, 5), 4 * 5, 8 * 5),
    (Conv1D(5, 3), 3, 5),  # Conv1D(nf=out, nx=in), stored (in, out)
    (nn.Embedding(10, 4), 10, 4),  # a one-hot token (10 inputs) to a 4-dim vector
])
def test_fan_in_and_fan_out_by_hand(module: nn.Module, fan_in: int, fan_out: int) -> None:
    layout = layout_of(module, "weight")
    assert layout is not None
    assert (layout.fan_in(module.weight.shape), layout.fan_out(module.weight.shape)) == (fan_in, fan_out)


@pytest.mark.parametrize("module", [nn.Linear(3, 5), nn.Conv1d(4, 6, 3), nn.Conv2d(4, 6, 3), nn.Conv3d(2, 4, 3),
                                    nn.Conv2d(4, 6, 3, groups=2), nn.Conv2d(8, 8, 3, groups=8)])
def test_fans_agree_with_torch_for_linear_and_conv(module: nn.Module) -> None:
    layout = layout_of(module, "weight")
    shape = module.weight.shape
    assert (layout.fan_in(shape), layout.fan_out(shape)) == nn.init._calculate_fan_in_and_fan_out(module.weight)


def test_rnn_and_attention_fans() -> None:
    lstm, mha = nn.LSTM(6, 5), nn.MultiheadAttention(8, 2)
    ih, hh = layout_of(lstm, "weight_ih_l0"), layout_of(lstm, "weight_hh_l0")
    assert (ih.fan_in(lstm.weight_ih_l0.shape), ih.fan_out(lstm.weight_ih_l0.shape)) == (6, 20)
    assert (hh.fan_in(lstm.weight_hh_l0.shape), hh.fan_out(lstm.weight_hh_l0.shape)) == (5, 20)
    lay = layout_of(mha, "in_proj_weight")
    assert (lay.fan_in(mha.in_proj_weight.shape), lay.fan_out(mha.in_proj_weight.shape)) == (8, 24)


def test_canonical_shape_needs_a_matrix() -> None:
    with pytest.raises(SparseflowError, match="shape"):
        Layout().canonical_shape((5,))


# --- layout_of for every registered module kind ------------------------------------------------------------
@pytest.mark.parametrize(("module", "param", "expected"), [
    (nn.Linear(3, 5), "weight", Layout()),
    (nn.Linear(3, 5), "bias", None),
    (nn.Conv1d(4, 6, 3), "weight", Layout()),
    (nn.Conv2d(4, 6, 3, groups=2), "weight", Layout(groups=2)),
    (nn.Conv3d(4, 4, 3, groups=4), "weight", Layout(groups=4)),
    (nn.ConvTranspose1d(4, 6, 3), "weight", TRANSPOSED),
    (nn.ConvTranspose2d(4, 6, 3, groups=2), "weight", Layout(out_axis=1, in_axis=0, groups=2)),
    (nn.ConvTranspose3d(2, 4, 3), "weight", TRANSPOSED),
    (Conv1D(5, 3), "weight", TRANSPOSED),
    (Conv1D(5, 3), "bias", None),
    (nn.MultiheadAttention(8, 2), "in_proj_weight", Layout(chunks=("q", "k", "v"))),
    (nn.MultiheadAttention(8, 2, kdim=6, vdim=5), "q_proj_weight", Layout()),
    (nn.MultiheadAttention(8, 2, kdim=6, vdim=5), "k_proj_weight", Layout()),
    (nn.MultiheadAttention(8, 2, kdim=6, vdim=5), "v_proj_weight", Layout()),
    (nn.LSTM(6, 5, num_layers=2, bidirectional=True), "weight_ih_l1_reverse", Layout(chunks=("i", "f", "g", "o"))),
    (nn.LSTM(6, 5), "weight_hh_l0", Layout(chunks=("i", "f", "g", "o"))),
    (nn.GRU(6, 5), "weight_ih_l0", Layout(chunks=("r", "z", "n"))),
    (nn.RNN(6, 5), "weight_hh_l0", Layout()),
    (nn.Embedding(10, 4), "weight", TRANSPOSED),
    (nn.LayerNorm(4), "weight", None),
])
def test_layout_of_registered_kinds(module: nn.Module, param: str, expected: Layout | None) -> None:
    assert layout_of(module, param) == expected


def test_kdim_projections_read_their_own_input_sizes() -> None:
    mha = nn.MultiheadAttention(8, 2, kdim=6, vdim=5)
    fan_in = {p: layout_of(mha, p).fan_in(getattr(mha, p).shape) for p in ("q_proj_weight", "k_proj_weight", "v_proj_weight")}
    assert fan_in == {"q_proj_weight": 8, "k_proj_weight": 6, "v_proj_weight": 5}
    assert set(parameter_layouts(mha)) == {"q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"}


def _chunks(layout: Layout, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """The named blocks of a weight (or its bias) along the output axis."""
    c = layout.canonical(t) if t.dim() >= 2 else t
    return dict(zip(layout.chunks, c.chunk(len(layout.chunks), dim=0)))


def test_lstm_gate_chunks_recompute_the_lstm() -> None:
    torch.manual_seed(0)
    lstm, x = nn.LSTM(6, 5, batch_first=True), torch.randn(3, 1, 6)
    h0, c0 = torch.randn(1, 3, 5), torch.randn(1, 3, 5)
    lay = layout_of(lstm, "weight_ih_l0")
    wi, wh = _chunks(lay, lstm.weight_ih_l0), _chunks(layout_of(lstm, "weight_hh_l0"), lstm.weight_hh_l0)
    bi, bh = _chunks(lay, lstm.bias_ih_l0), _chunks(lay, lstm.bias_hh_l0)
    pre = {g: x[:, 0] @ wi[g].T + bi[g] + h0[0] @ wh[g].T + bh[g] for g in lay.chunks}
    c1 = torch.sigmoid(pre["f"]) * c0[0] + torch.sigmoid(pre["i"]) * torch.tanh(pre["g"])
    h1 = torch.sigmoid(pre["o"]) * torch.tanh(c1)
    with torch.no_grad():
        out, (h, c) = lstm(x, (h0, c0))
    torch.testing.assert_close(h[0], h1.detach())
    torch.testing.assert_close(c[0], c1.detach())


def test_gru_gate_chunks_recompute_the_gru() -> None:
    torch.manual_seed(0)
    gru, x, h0 = nn.GRU(6, 5, batch_first=True), torch.randn(3, 1, 6), torch.randn(1, 3, 5)
    lay = layout_of(gru, "weight_ih_l0")
    wi, wh = _chunks(lay, gru.weight_ih_l0), _chunks(layout_of(gru, "weight_hh_l0"), gru.weight_hh_l0)
    bi, bh = _chunks(lay, gru.bias_ih_l0), _chunks(lay, gru.bias_hh_l0)
    a = {g: x[:, 0] @ wi[g].T + bi[g] for g in lay.chunks}
    b = {g: h0[0] @ wh[g].T + bh[g] for g in lay.chunks}
    r, z = torch.sigmoid(a["r"] + b["r"]), torch.sigmoid(a["z"] + b["z"])
    h1 = (1 - z) * torch.tanh(a["n"] + r * b["n"]) + z * h0[0]
    with torch.no_grad():
        torch.testing.assert_close(gru(x, h0)[1][0], h1.detach())


def test_in_proj_chunks_recompute_attention() -> None:
    torch.manual_seed(0)
    mha, x = nn.MultiheadAttention(8, 2, batch_first=True), torch.randn(3, 4, 8)
    lay = layout_of(mha, "in_proj_weight")
    w, b = _chunks(lay, mha.in_proj_weight), _chunks(lay, mha.in_proj_bias)
    q, k, v = (x @ w[n].T + b[n] for n in ("q", "k", "v"))
    heads = lambda t: t.reshape(3, 4, 2, 4).transpose(1, 2)  # noqa: E731 (batch, heads, seq, head_dim)
    att = F.softmax(heads(q) @ heads(k).transpose(-1, -2) / 2.0, dim=-1) @ heads(v)
    want = mha.out_proj(att.transpose(1, 2).reshape(3, 4, 8))
    with torch.no_grad():
        torch.testing.assert_close(mha(x, x, x, need_weights=False)[0], want.detach())


def test_conv1d_layout_matches_its_product() -> None:
    torch.manual_seed(0)
    conv, x = Conv1D(5, 3), torch.randn(2, 3)
    w = layout_of(conv, "weight").canonical(conv.weight)  # (out, in): acts as a Linear weight
    torch.testing.assert_close(conv(x), F.linear(x, w, conv.bias))


# --- register_layout for a user's own type -------------------------------------------------------------------
class Transposed(nn.Module):
    """A user's layer that stores its weight (in, out), with extra matrices named ``gate_<k>``."""

    def __init__(self, n_in: int = 3, n_out: int = 5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))
        self.gate_a = nn.Parameter(torch.randn(n_out, n_in))
        self.gate_b = nn.Parameter(torch.randn(n_out, n_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


@pytest.mark.usefixtures("rules")
def test_register_a_user_type_by_class_and_prefix() -> None:
    m = Transposed()
    assert layout_of(m, "weight") is None
    register_layout(Transposed, "weight", TRANSPOSED)
    register_layout(Transposed, "gate_*", Layout(chunks=("x",)))
    assert layout_of(m, "weight") == TRANSPOSED and layout_of(m, "gate_b") == Layout(chunks=("x",))
    assert layout_of(m, "gatex") is None
    model = nn.Sequential(nn.Linear(4, 3), Transposed())
    assert parameter_layouts(model) == {"0.weight": Layout(), "1.weight": TRANSPOSED,
                                        "1.gate_a": Layout(chunks=("x",)), "1.gate_b": Layout(chunks=("x",))}
    assert sf.layout_of is layout_of and sf.register_layout is register_layout


@pytest.mark.usefixtures("rules")
def test_a_later_rule_wins_and_a_rule_may_be_a_function() -> None:
    m = Transposed()
    register_layout(Transposed, "weight", Layout())
    register_layout(Transposed, "weight", TRANSPOSED)
    assert layout_of(m, "weight") == TRANSPOSED
    register_layout(Transposed, "weight", lambda module, param: Layout(groups=module.weight.shape[0]))
    assert layout_of(m, "weight") == Layout(groups=3)
    register_layout(nn.Linear, "weight", TRANSPOSED)  # a later rule also wins over a built-in one
    assert layout_of(nn.Linear(2, 2), "weight") == TRANSPOSED


@pytest.mark.usefixtures("rules")
def test_register_by_qualified_name_without_importing_the_type() -> None:
    Thing = type("Thing", (Transposed,), {"__module__": "userpkg.layers"})  # as if userpkg were installed
    register_layout("userpkg.moved.Thing", "weight", TRANSPOSED)  # the class may move between modules
    register_layout("otherpkg.layers.Transposed", "weight", Layout(groups=7))  # not this package: no match
    assert layout_of(Thing(), "weight") == TRANSPOSED
    assert layout_of(Transposed(), "weight") is None
    register_layout(f"{__name__}.Transposed", "weight", Layout(groups=2))  # a base class of Thing in its MRO
    assert layout_of(Transposed(), "weight") == Layout(groups=2)


@pytest.mark.usefixtures("rules")
@pytest.mark.parametrize("args", [
    (int, "weight", Layout()),  # not a module type
    (Transposed(), "weight", Layout()),  # an instance, not the type
    (Transposed, "weight", "out 1, in 0"),  # not a Layout
    (Transposed, 3, Layout()),  # parameter name not a string
    ("Transposed", "weight", Layout()),  # a bare name: "package.module.Name" is needed
])
def test_register_layout_bad_arguments(args: tuple) -> None:
    before = list(layouts._RULES)
    with pytest.raises(SparseflowError):
        register_layout(*args)
    assert layouts._RULES == before  # nothing half-registered


@pytest.mark.parametrize("kwargs", [dict(out_axis=1, in_axis=1), dict(groups=0)])
def test_an_impossible_layout_is_refused(kwargs: dict) -> None:
    with pytest.raises(SparseflowError):
        Layout(**kwargs).canonical_shape((4, 4, 3))


# --- parameter_layouts on a real model with a tied parameter -------------------------------------------------
def test_parameter_layouts_lists_every_name_of_a_tied_parameter() -> None:
    model = realmodels.gpt2()[0]
    assert model.lm_head.weight is model.transformer.wte.weight
    lays = parameter_layouts(model)
    assert lays["lm_head.weight"] == Layout()  # a Linear: (vocab out, embedding in)
    assert lays["transformer.wte.weight"] == TRANSPOSED  # an embedding: (vocab in, embedding out)
    conv1d = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, Conv1D)]
    assert len(conv1d) == 8 and all(lays[n] == TRANSPOSED for n in conv1d)
    assert all(model.get_parameter(n).dim() >= 2 for n in lays)
    assert not [n for n in lays if n.endswith("bias") or ".ln_" in n]
