"""The inputs of a recurrent module's weights in one call, for :func:`sparseflow.signal`.

An ``nn.LSTM``/``nn.GRU``/``nn.RNN`` applies ``weight_ih_l{k}`` to layer k's input sequence x_t (the module's
input for k = 0, the hidden states of layer k - 1, both directions concatenated, above it) and ``weight_hh_l{k}``
to the layer's previous hidden state h_{t-1} (h_{-1} = h0, zeros when none is given; the reverse direction
reads h_{t+1} and starts from its own h0 at the last step), all inside one ATen/cuDNN kernel that exposes
neither the intermediate layers nor the gate pre-activations. :func:`weight_inputs` recomputes them from the
call's own arguments: each layer alone, both directions, through the same kernel (``torch.lstm``, ``torch.gru``,
``torch.rnn_tanh``, ``torch.rnn_relu``, the functions ``nn.LSTM.forward`` calls) with that layer's weights
(``weight_hr_l{k}`` too for an LSTM with ``proj_size``, whose h_t is the projected state) and no dropout, as
in eval mode. The last layer's recomputed output must reproduce the module's own output, else nothing is
returned but the reason (a subclass whose forward does something else is not measured). A weight's gate
pre-activations are then ``F.linear(x, W_c, b_c)`` per gate chunk c.

A :class:`~torch.nn.utils.rnn.PackedSequence` input is not measured (its reason says so).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

KERNELS = {"LSTM": torch.lstm, "GRU": torch.gru, "RNN_TANH": torch.rnn_tanh, "RNN_RELU": torch.rnn_relu}


def _call_args(args: tuple, kwargs: dict) -> tuple[Any, Any]:
    x = args[0] if args else kwargs.get("input")
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    return x, hx


def _tensor(out: Any) -> Tensor | None:
    return out[0] if isinstance(out, tuple) and out and isinstance(out[0], Tensor) else None


def weight_inputs(m: nn.RNNBase, args: tuple, kwargs: dict, out: Any) -> dict[str, Tensor] | str:
    """``{parameter leaf ("weight_ih_l0", "weight_hh_l1_reverse", ...): the (T, B, in) sequence it multiplies}``
    for one call of ``m`` (its arguments and output, as a forward hook sees them), or why it cannot be measured."""
    x, hx = _call_args(args, kwargs)
    if isinstance(x, PackedSequence):
        return "its input is a PackedSequence (pass a padded tensor to measure it)"
    kernel = KERNELS.get(getattr(m, "mode", ""))
    if not isinstance(x, Tensor) or x.dim() not in (2, 3) or kernel is None:
        return f"a {type(m).__name__} call with input {type(x).__name__} is not one this analysis can recompute"
    lstm, dirs, layers = m.mode == "LSTM", 2 if m.bidirectional else 1, m.num_layers
    h_out = m.proj_size if m.proj_size > 0 else m.hidden_size
    batched = x.dim() == 3
    x = x.transpose(0, 1) if batched and m.batch_first else x if batched else x.unsqueeze(1)  # (T, B, in)
    if hx is None:
        h0 = x.new_zeros(layers * dirs, x.shape[1], h_out)
        c0 = x.new_zeros(layers * dirs, x.shape[1], m.hidden_size) if lstm else None
    else:
        h0, c0 = hx if lstm else (hx, None)
        if not batched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1) if c0 is not None else None
    leaves = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if m.bias else []) + (
        ["weight_hr"] if m.proj_size > 0 else [])
    inputs: dict[str, Tensor] = {}
    for k in range(layers):
        suffixes = [f"l{k}", f"l{k}_reverse"][:dirs]
        weights = [getattr(m, f"{leaf}_{s}") for s in suffixes for leaf in leaves]
        h_k = h0[k * dirs:(k + 1) * dirs]
        state = (h_k, c0[k * dirs:(k + 1) * dirs]) if lstm else h_k
        y = kernel(x, state, weights, m.bias, 1, 0.0, False, dirs == 2, False)[0]  # (T, B, dirs * h_out)
        for d, s in enumerate(suffixes):
            h = y[..., d * h_out:(d + 1) * h_out]
            first = h_k[d:d + 1]  # the state before the first step this direction takes
            inputs[f"weight_ih_{s}"] = x
            inputs[f"weight_hh_{s}"] = torch.cat([first, h[:-1]]) if d == 0 else torch.cat([h[1:], first])
        x = y
    got = _tensor(out)
    want = x.transpose(0, 1) if batched and m.batch_first else x if batched else x.squeeze(1)
    tol = 1e-3 if x.dtype in (torch.float16, torch.bfloat16) else 1e-5
    if got is None or got.shape != want.shape or not torch.allclose(got, want, rtol=tol, atol=tol):
        return (f"recomputing its layers did not reproduce the {type(m).__name__}'s output (a forward that is not "
                "the standard recurrence?)")
    return inputs
