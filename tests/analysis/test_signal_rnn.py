"""signal() on recurrent weights against a hand computation: the hidden states of every layer and direction
from a loop over nn.LSTMCell / nn.GRUCell / nn.RNNCell loaded with the module's weights (the LSTM cell
equations written out where proj_size has no cell), each gate's pre-activation x_t W_c^T + b_c (weight_ih) and
h_{t-1} W_c^T + b_c (weight_hh, h0 first), and gradient norms per gate over the kept weights from autograd."""

from __future__ import annotations

import copy

import pytest
import realmodels
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from sparseflow.analysis.signal import signal
from sparseflow.analysis.signal_rnn import weight_inputs

GATES = {"LSTM": "ifgo", "GRU": "rzn", "RNN_TANH": "", "RNN_RELU": ""}


def _q(t: Tensor) -> float:
    return float(t.detach().double().pow(2).mean())


def _lstm_proj_step(x: Tensor, h: Tensor, c: Tensor, w: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    i, f, g, o = (x @ w["weight_ih"].T + w["bias_ih"] + h @ w["weight_hh"].T + w["bias_hh"]).chunk(4, -1)
    c = f.sigmoid() * c + i.sigmoid() * g.tanh()
    return (o.sigmoid() * c.tanh()) @ w["weight_hr"].T, c


def _cell(rnn: nn.RNNBase, w: dict[str, Tensor]) -> nn.Module:
    n_in = w["weight_ih"].shape[1]
    cell = {"LSTM": lambda: nn.LSTMCell(n_in, rnn.hidden_size), "GRU": lambda: nn.GRUCell(n_in, rnn.hidden_size),
            "RNN_TANH": lambda: nn.RNNCell(n_in, rnn.hidden_size, nonlinearity="tanh"),
            "RNN_RELU": lambda: nn.RNNCell(n_in, rnn.hidden_size, nonlinearity="relu")}[rnn.mode]()
    cell.load_state_dict(w)
    return cell


def by_hand(rnn: nn.RNNBase, x: Tensor, h0: Tensor | None = None, c0: Tensor | None = None) -> dict[str, tuple]:
    """Row name (leaf[gate]) -> (q of the weight's input, q of the gate's pre-activation), x shaped (T, B, in)."""
    dirs, h_out = 2 if rnn.bidirectional else 1, rnn.proj_size or rnn.hidden_size
    h0 = torch.zeros(rnn.num_layers * dirs, x.shape[1], h_out) if h0 is None else h0
    c0 = torch.zeros(rnn.num_layers * dirs, x.shape[1], rnn.hidden_size) if c0 is None else c0
    gates, rows = GATES[rnn.mode], {}
    with torch.no_grad():
        for k in range(rnn.num_layers):
            outs = []
            for d, suffix in enumerate([f"l{k}", f"l{k}_reverse"][:dirs]):
                w = {n.rsplit("_l", 1)[0]: p for n, p in rnn.named_parameters() if n.endswith(f"_{suffix}")}
                h, c, prev, hs = h0[k * dirs + d], c0[k * dirs + d], [], [None] * len(x)
                for t in (range(len(x)) if d == 0 else reversed(range(len(x)))):
                    prev.append(h)
                    if rnn.proj_size:
                        h, c = _lstm_proj_step(x[t], h, c, w)
                    elif rnn.mode == "LSTM":
                        h, c = _cell(rnn, w)(x[t], (h, c))
                    else:
                        h = _cell(rnn, w)(x[t], h)
                    hs[t] = h
                outs.append(torch.stack(hs))
                for leaf, inp in (("weight_ih", x), ("weight_hh", torch.stack(prev))):
                    pre = inp @ w[leaf].T + w[leaf.replace("weight", "bias")]
                    for i, g in enumerate(gates or [""]):
                        name = f"{leaf}_{suffix}" + (f"[{g}]" if g else "")
                        rows[name] = (_q(inp), _q(pre.chunk(len(gates) or 1, -1)[i]))
            x = torch.cat(outs, -1)
    return rows


class Seq(nn.Module):
    """A recurrent body called on (x, hx) (x batch-first; transposed for a time-major body), mean-pooled over time,
    and a Linear head."""

    def __init__(self, rnn: nn.RNNBase, hx: Tensor | tuple | None = None) -> None:
        super().__init__()
        self.rnn, self.hx = rnn, hx
        dirs = 2 if rnn.bidirectional else 1
        self.head = nn.Linear(dirs * (rnn.proj_size or rnn.hidden_size), 3)

    def forward(self, x: Tensor) -> Tensor:
        first = self.rnn.batch_first
        return self.head(self.rnn(x if first else x.transpose(0, 1), self.hx)[0].mean(1 if first else 0))


def check_rows(model: nn.Module, path: str, x: Tensor, y: Tensor, **state: Tensor) -> None:
    rnn, prefix = model.get_submodule(path), path + "."
    rep = {r.name: r for r in signal(model, (x, y)).layers}
    want = by_hand(rnn, x.transpose(0, 1), **state)  # x is batch-first
    assert {n for n in rep if n.startswith(prefix)} == {prefix + n for n in want}
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), y).backward()
    for name, (q_in, q) in want.items():
        row = rep[prefix + name]
        assert (row.q_in, row.q) == pytest.approx((q_in, q), rel=1e-5), name
        assert row.measured == pytest.approx(q / q_in, rel=1e-5) and row.reference == "own input"
        leaf, gate = name.split("[")[0], name[-2] if name.endswith("]") else ""
        p = ref.get_submodule(path).get_parameter(leaf)
        n = len(GATES[rnn.mode]) or 1
        i = GATES[rnn.mode].index(gate) if gate else 0
        g, kept = p.grad.chunk(n)[i], p.detach().chunk(n)[i] != 0
        assert row.grad_norm == pytest.approx(float((g * kept).norm()), rel=1e-5), name
        assert row.weight_sq == pytest.approx(float(p.detach().chunk(n)[i].pow(2).sum(1).mean()), rel=1e-6)
        assert row.bias_sq == pytest.approx(_q(getattr(rnn, leaf.replace("weight", "bias")).chunk(n)[i]), rel=1e-6)
        assert "inside" in row.note and row.predicted is None


def test_lstm_one_layer_gates_by_hand_with_pruned_weights() -> None:
    model, (x, y), _ = realmodels.lstm()
    with torch.no_grad():  # half of weight_hh pruned: the gradient norm counts kept weights only
        model.body.weight_hh_l0.mul_(torch.rand(model.body.weight_hh_l0.shape, generator=torch.Generator().manual_seed(2)) < 0.5)
    check_rows(model, "body", x, y)


def test_gru_two_layers_by_hand() -> None:
    model, (x, y), _ = realmodels.gru()
    check_rows(model, "body", x, y)
    rows = [r.name for r in signal(model, (x, y)).layers]
    assert rows[:4] == ["body.weight_ih_l0[r]", "body.weight_ih_l0[z]", "body.weight_ih_l0[n]", "body.weight_hh_l0[r]"]
    assert rows[-1] == "head"


def test_bidirectional_lstm_two_layers_time_major_with_given_state() -> None:
    torch.manual_seed(0)
    rnn = nn.LSTM(5, 6, num_layers=2, bidirectional=True)
    h0, c0 = torch.randn(4, 3, 6), torch.randn(4, 3, 6)
    x, y = torch.randn(3, 7, 5), torch.tensor([0, 2, 1])
    check_rows(Seq(rnn, (h0, c0)), "rnn", x, y, h0=h0, c0=c0)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_lstm_with_projection_and_relu_rnn_without_gates() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 6, proj_size=3, bidirectional=True, batch_first=True)
    x, y = torch.randn(4, 7, 5), torch.tensor([0, 2, 1, 1])
    check_rows(Seq(lstm), "rnn", x, y)
    rnn = nn.RNN(5, 4, num_layers=2, nonlinearity="relu", batch_first=True)
    check_rows(Seq(rnn), "rnn", x, y)
    assert "rnn.weight_hh_l1" in {r.name for r in signal(Seq(rnn), (x, y)).layers}  # one row, no gates


def test_unbatched_call_reads_the_same_inputs_as_a_batch_of_one() -> None:
    torch.manual_seed(0)
    gru = nn.GRU(5, 4, num_layers=2, bidirectional=True)
    x, h0 = torch.randn(7, 5), torch.randn(4, 4)
    one = weight_inputs(gru, (x, h0), {}, gru(x, h0))
    batched = weight_inputs(gru, (x[:, None], h0[:, None]), {}, gru(x[:, None], h0[:, None]))
    assert one.keys() == batched.keys() and all(torch.equal(one[k], batched[k]) for k in one)
    assert torch.equal(one["weight_hh_l0"][0, 0], h0[0]) and torch.equal(one["weight_hh_l1_reverse"][-1, 0], h0[3])


class Packed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.head = nn.LSTM(5, 4, batch_first=True), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        _, (h, _) = self.rnn(pack_padded_sequence(x, [x.shape[1]] * x.shape[0], batch_first=True))
        return self.head(h[-1])


class Scaled(nn.LSTM):
    """A forward that is not the plain recurrence on its arguments."""

    def forward(self, x: Tensor, hx: object = None) -> tuple:
        return super().forward(2 * x, hx)


def test_packed_sequence_and_custom_forward_are_not_measured_with_a_reason() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4, 7, 5), torch.tensor([0, 2, 1, 1])
    rep = {r.name: r for r in signal(Packed(), (x, y)).layers}
    assert rep["head"].q is not None and rep["rnn.weight_ih_l0[i]"].q is None
    assert all("PackedSequence" in r.note and r.grad_norm is not None for n, r in rep.items() if n != "head")
    rep = {r.name: r for r in signal(Seq(Scaled(5, 4, batch_first=True)), (x, y)).layers}
    assert rep["rnn.weight_hh_l0[o]"].q is None and "did not reproduce" in rep["rnn.weight_hh_l0[o]"].note
