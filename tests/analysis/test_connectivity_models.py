"""Connectivity on the models users have: hand-built dead units read through each weight's layout (HF Conv1D
stores (in, out), in_proj_weight and LSTM weights stack chunks, grouped convolutions are block-diagonal), the
layer-local analysis next to the unit graph where both apply, HF Conv1D in the unit graph and in repair, and
refusals that name the construct."""

from __future__ import annotations

import pytest
import realmodels
import torch
from torch import nn

from sparseflow.analysis.connectivity import connectivity
from sparseflow.analysis.repair import repair_mask
from sparseflow.analysis.stain_graph import layer_graph
from sparseflow.errors import SparseflowError
from sparseflow.mask import Mask


def _rows(c, name: str) -> dict[str, object]:
    """Chunk name ('' when unchunked) -> row, for the weight ``name``."""
    return {r.chunk: r for r in c.layers if r.name == name}


def test_gpt2_conv1d_input_and_output_units_follow_the_stored_in_out_layout() -> None:
    model = realmodels.gpt2()[0]
    w = model.transformer.h[0].mlp.c_fc.weight  # (in 32, out 128)
    with torch.no_grad():
        w[5, :] = 0  # every weight reading input unit 5
        w[:, 7] = 0  # every weight into output unit 7
        w[:, 9] = 0
    c = connectivity(model)
    assert c.analysis == "layer-local" and "GPT2LMHeadModel" in c.reason and "forward" in c.reason
    assert c.collapsed is None and c.effective is None and c.input_fraction is None
    row = _rows(c, "transformer.h.0.mlp.c_fc.weight")[""]
    assert (row.in_units, row.out_units) == (32, 128)
    assert row.unused_input_units == (5,) and row.no_incoming_units == (7, 9)
    assert (row.unused_inputs, row.no_incoming, row.nonzeros) == (1, 2, 32 * 128 - 128 - 2 * 31)
    assert row.unreachable is None and row.effective is None
    others = [r for r in c.layers if r.name != "transformer.h.0.mlp.c_fc.weight"]
    assert all(r.no_incoming == 0 and r.unused_inputs == 0 for r in others)
    assert len(c.layers) == 2 * 4 + 1  # c_attn, c_proj, c_fc, c_proj per block, lm_head
    # A mask gives the same answer as the zeroed weights.
    model2 = realmodels.gpt2()[0]
    mask = Mask({"transformer.h.0.mlp.c_fc.weight": w.detach() != 0})
    assert connectivity(model2, mask).layers == c.layers


def test_mha_in_proj_chunks_and_out_proj() -> None:
    model = realmodels.mha()[0]
    attn = model.body.attn  # E = 16: in_proj_weight (48, 16) = q, k, v
    with torch.no_grad():
        attn.in_proj_weight[3] = 0  # q unit 3 reads nothing
        attn.in_proj_weight[16 + 2] = 0  # k unit 2
        attn.in_proj_weight[32:, 11] = 0  # the v chunk ignores input unit 11
        attn.out_proj.weight[:, 4] = 0  # out_proj ignores attention unit 4
    c = connectivity(model)
    assert c.analysis == "layer-local" and "'body.attn' (MultiheadAttention)" in c.reason
    rows = _rows(c, "body.attn.in_proj_weight")
    assert list(rows) == ["q", "k", "v"] and all((r.in_units, r.out_units, r.weights) == (16, 16, 256) for r in rows.values())
    assert rows["q"].no_incoming_units == (3,) and rows["q"].unused_input_units == ()
    assert rows["k"].no_incoming_units == (2,) and rows["k"].unused_input_units == ()
    assert rows["v"].no_incoming_units == () and rows["v"].unused_input_units == (11,)
    out = _rows(c, "body.attn.out_proj.weight")[""]
    assert out.unused_input_units == (4,) and out.no_incoming == 0
    assert c.nonzeros == sum(int((p != 0).sum()) for n, p in model.named_parameters() if "weight" in n)


def test_lstm_gate_chunks() -> None:
    model = realmodels.lstm()[0]
    with torch.no_grad():
        model.body.weight_ih_l0[16 + 4] = 0  # forget gate unit 4 reads no input
        model.body.weight_hh_l0[48:, 6] = 0  # the output gate ignores hidden unit 6
    c = connectivity(model)
    ih, hh = _rows(c, "body.weight_ih_l0"), _rows(c, "body.weight_hh_l0")
    assert list(ih) == list(hh) == ["i", "f", "g", "o"]
    assert [r.no_incoming_units for r in ih.values()] == [(), (4,), (), ()]
    assert [r.unused_input_units for r in hh.values()] == [(), (), (), (6,)]


def test_grouped_convolutions_layer_local_equals_graph() -> None:
    model = realmodels.depthwise_conv()[0]  # 0: 4->8, 2: depthwise 8 (groups 8), 5: 8->16 1x1, 7: 16->16 groups 2
    with torch.no_grad():
        model[2].weight[3] = 0  # depthwise channel 3: no input; input channel 3 feeds only it
        model[7].weight[:8, 2] = 0  # group 0 ignores its local input 2 = channel 2
        model[7].weight[8:, 2] = 0  # group 1 ignores its local input 2 = channel 10
        model[7].weight[12] = 0
    graph, local = connectivity(model), connectivity(model, analysis="layer-local")
    assert graph.analysis == "graph" and local.analysis == "layer-local" and local.reason
    dw, grouped = _rows(local, "2.weight")[""], _rows(local, "7.weight")[""]
    assert (dw.no_incoming_units, dw.unused_input_units) == ((3,), (3,))
    assert (grouped.no_incoming_units, grouped.unused_input_units) == ((12,), (2, 10))
    for g, l in zip(graph.layers, local.layers):
        assert (g.name, g.in_units, g.out_units, g.weights, g.nonzeros) == (l.name, l.in_units, l.out_units, l.weights, l.nonzeros)
        assert (g.no_incoming_units, g.unused_input_units) == (l.no_incoming_units, l.unused_input_units)
    assert graph.layers[1].unreachable == 1 and graph.layers[1].no_outgoing == 0


@pytest.mark.parametrize("name, weight", [("bert", "bert.encoder.layer.1.intermediate.dense.weight"),
                                          ("vit", "vit.layers.0.mlp.fc2.weight"),
                                          ("transformer_encoder", "body.layers.1.linear1.weight")])
def test_hf_and_torch_transformers_layer_local(name: str, weight: str) -> None:
    model = realmodels.ARCHS[name]()[0]
    w = model.get_parameter(weight)  # nn.Linear: (out, in)
    with torch.no_grad():
        w[1] = 0
        w[:, 3] = 0
    c = connectivity(model)
    assert c.analysis == "layer-local" and c.reason
    row = _rows(c, weight)[""]
    assert (row.no_incoming_units, row.unused_input_units) == ((1,), (3,))
    assert sum(r.no_incoming + r.unused_inputs for r in c.layers) == 2
    assert "layer-local" in c.summary() and "n/a" in c.markdown()


class _Conv1DNet(nn.Module):
    """An MLP of HF Conv1D layers ((in, out) weights) and its nn.Linear twin with the transposed weights."""

    def __init__(self, widths: list[int], linear: bool) -> None:
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        make = (lambda a, b: nn.Linear(a, b, bias=False)) if linear else (lambda a, b: Conv1D(b, a))
        self.layers = nn.ModuleList(make(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == 0 else layer(torch.relu(x))
        return x


def _twins(widths: list[int], density: float, seed: int) -> tuple[nn.Module, nn.Module]:
    g = torch.Generator().manual_seed(seed)
    conv, lin = _Conv1DNet(widths, False), _Conv1DNet(widths, True)
    with torch.no_grad():
        for c, l in zip(conv.layers, lin.layers):
            w = torch.randn(l.weight.shape, generator=g) * (torch.rand(l.weight.shape, generator=g) < density)
            l.weight.copy_(w)
            c.weight.copy_(w.T)
            c.bias.zero_()
    return conv, lin


def test_conv1d_unit_graph_equals_linear_twin() -> None:
    conv, lin = _twins([6, 5, 4, 3], 0.35, 0)
    a, b = connectivity(conv), connectivity(lin)
    assert a.analysis == b.analysis == "graph"
    assert a == b  # same names (layers.i.weight), same unit counts, same paths


def test_repair_mask_on_conv1d_equals_linear_twin_transposed() -> None:
    conv, lin = _twins([8, 6, 6, 3], 0.6, 3)
    with torch.no_grad():
        lin.layers[1].weight[2] = 0  # hidden unit 2 of layer 1 has no input
        conv.layers[1].weight[:, 2] = 0
    new_c, rep_c = repair_mask(conv, seed=1)
    new_l, rep_l = repair_mask(lin, seed=1)
    assert rep_c == rep_l and rep_l.moved > 0
    for name in new_l:
        assert torch.equal(new_c[name], new_l[name].T)
    after = connectivity(conv, new_c)
    assert rep_c.unfixed == 0 and all(r.no_incoming == 0 and r.no_outgoing == 0 for r in after.layers[:-1])


def test_stain_graph_of_conv1d_equals_linear_twin() -> None:
    conv, lin = _twins([5, 4, 3], 0.5, 2)
    a, b = layer_graph(conv), layer_graph(lin)
    assert a.sizes == b.sizes and len(a.links) == len(b.links)
    for x, y in zip(a.links, b.links):  # structures in the (out, in) view of each layout
        assert torch.equal(x.adj, y.adj) and torch.equal(x.structure, y.structure)


class _Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):  # noqa: ANN001, ANN201
        return torch.cat([self.a(x), self.b(x)], 1)


class _Inner(nn.Module):
    def forward(self, x):  # noqa: ANN001, ANN201
        return x * 2 if x.sum() > 0 else x


class _Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.block = nn.Linear(4, 4), _Inner()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.block(self.fc(x))


class _Heads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):  # noqa: ANN001, ANN201
        h = self.fc(x)
        return h.reshape(h.shape[0], 2, 2)


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.heads = _Heads()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.heads(x).sum(2)


def test_graph_refusals_name_module_operation_and_source_line() -> None:
    with pytest.raises(SparseflowError) as e:
        connectivity(_Outer(), analysis="graph")
    assert "operation 'getattr' in module 'heads' (_Heads)" in str(e.value)
    assert "`return h.reshape(h.shape[0], 2, 2)`" in str(e.value)
    with pytest.raises(SparseflowError) as e:
        connectivity(_Cat(), analysis="graph")
    assert "'cat'" in str(e.value) and "test_connectivity_models.py" in str(e.value) and "torch.cat" in str(e.value)
    with pytest.raises(SparseflowError) as e:
        connectivity(_Nested(), analysis="graph")
    msg = str(e.value)
    assert "module 'block' (_Inner)" in msg and "control flow" in msg and "if x.sum() > 0" in msg
    assert "Proxy" not in msg and "co_varnames" not in msg
    local = connectivity(_Nested())
    assert local.analysis == "layer-local" and local.reason == msg
    with pytest.raises(SparseflowError, match="'auto', 'graph' or 'layer-local'"):
        connectivity(_Cat(), analysis="both")  # type: ignore[arg-type]


def test_hf_refusal_names_the_forward_not_fx_internals() -> None:
    with pytest.raises(SparseflowError) as e:
        connectivity(realmodels.bert()[0], analysis="graph")
    msg = str(e.value)
    assert "BertForSequenceClassification.forward" in msg and "decorator" in msg and "co_varnames" not in msg


def test_layer_local_mask_errors() -> None:
    model = realmodels.mha()[0]
    with pytest.raises(SparseflowError, match="not weights with a known layout"):
        connectivity(model, Mask({"body.attn.in_proj_bias": torch.ones(48, dtype=torch.bool)}))
    with pytest.raises(SparseflowError, match="no weight with a known layout"):
        connectivity(nn.Sequential(nn.ReLU()), analysis="layer-local")


def test_grouped_transposed_convolution_reads_in_out_per_group() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    up = model[2].weight  # (in 4, out / groups 3, 3, 3): input channel i of group i // 2 feeds outputs 3g .. 3g + 2
    with torch.no_grad():
        up[2:, 1] = 0  # group 1 (inputs 2, 3): its local output 1 = output channel 4 reads nothing
        up[0] = 0  # input channel 0 feeds nothing
    graph, local = connectivity(model), connectivity(model, analysis="layer-local")
    assert graph.analysis == "graph"
    for g, l in zip(graph.layers, local.layers):
        assert (g.no_incoming_units, g.unused_input_units, g.nonzeros) == (l.no_incoming_units, l.unused_input_units, l.nonzeros)
    row = graph.layers[1]
    assert (row.in_units, row.out_units) == (4, 6) and row.no_incoming_units == (4,) and row.unused_input_units == (0,)
    assert graph.layers[0].no_outgoing == 1 and graph.layers[2].unused_input_units == ()
    assert graph.layers[1].unreachable == 1 and not graph.collapsed
