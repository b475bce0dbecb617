"""The batch and output readers of sparseflow.layouts on tensors, pairs, dicts and a real Hugging Face ModelOutput."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import realmodels
from sparseflow import SparseflowError
from sparseflow.layouts import batch_size, call, output_loss, output_tensor, split_batch, to_device


class Recorder(nn.Module):
    def forward(self, *args: object, **kwargs: object) -> tuple:
        return args, kwargs


def test_split_batch() -> None:
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    assert split_batch(x) == (x, None)
    assert split_batch((x, y)) == (x, y) and split_batch([x, y]) == (x, y)
    d = {"input_ids": x, "labels": y}
    inputs, targets = split_batch(d)
    assert targets is y and inputs == d and inputs is not d  # labels stay among the inputs
    assert split_batch({"pixel_values": x, "label": y})[1] is y
    assert split_batch({"input_ids": x})[1] is None
    with pytest.raises(SparseflowError, match="length 3"):
        split_batch((x, y, y))
    with pytest.raises(SparseflowError, match="int"):
        split_batch(3)


def test_call_spreads_dicts_and_tuples() -> None:
    x = torch.randn(2, 3)
    assert call(Recorder(), {"a": x}) == ((), {"a": x})
    assert call(Recorder(), (x, x)) == ((x, x), {})
    assert call(Recorder(), x) == ((x,), {})


def test_output_readers_on_tensors_tuples_and_dicts() -> None:
    t = torch.randn(2, 3)
    assert output_tensor(t) is t
    assert output_tensor((None, t, t + 1)) is t
    assert output_tensor({"last_hidden_state": t}) is t
    assert output_tensor({"logits": t, "last_hidden_state": t + 1}) is t
    with pytest.raises(SparseflowError, match="logits"):
        output_tensor({"something": t})
    assert output_loss(t) is None and output_loss({"loss": torch.ones(2)}) is None
    assert output_loss({"loss": torch.tensor(2.0)}) == 2.0


def test_readers_on_a_real_model_output() -> None:
    model, batch, loss = realmodels.gpt2()
    inputs, labels = split_batch(batch)
    assert labels is batch["labels"] and batch_size(inputs) == realmodels.BATCH
    out = call(model, inputs)
    assert output_tensor(out) is out.logits and out.logits.shape == (realmodels.BATCH, realmodels.SEQ, realmodels.VOCAB)
    assert output_loss(out) is out.loss and torch.equal(out.loss, loss(model, batch))
    no_labels = call(model, {"input_ids": inputs["input_ids"]})
    assert output_loss(no_labels) is None and output_tensor(no_labels).shape == out.logits.shape
    hidden = call(model.transformer, {"input_ids": inputs["input_ids"]})  # a ModelOutput without logits
    assert output_tensor(hidden) is hidden.last_hidden_state


def test_batch_size_and_to_device() -> None:
    x = torch.randn(5, 3)
    assert batch_size(x) == 5 and batch_size(torch.tensor(1.0)) == 1
    assert batch_size({"mask": None, "ids": x}) == 5 and batch_size((x, x)) == 5
    with pytest.raises(SparseflowError, match="batch size"):
        batch_size("abc")
    moved = to_device({"a": x, "b": (x, [x]), "c": 3}, "meta")
    assert moved["a"].device.type == "meta" and moved["c"] == 3
    assert isinstance(moved["b"], tuple) and isinstance(moved["b"][1], list) and moved["b"][1][0].is_meta
    assert to_device(x, "meta").is_meta


def test_default_loss_and_predictions_read_sequence_outputs_per_position() -> None:
    import torch.nn.functional as F

    from sparseflow.layouts import default_loss, predictions

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(3, 5, 7, generator=g), torch.randint(0, 7, (3, 5), generator=g)  # (B, T, V), (B, T)
    by_hand = -torch.log_softmax(logits, dim=-1).gather(-1, y[..., None]).mean()  # mean over the 15 positions
    assert torch.allclose(default_loss(logits, y), by_hand, atol=1e-6)
    assert torch.equal(predictions(logits, y), logits.argmax(-1)) and predictions(logits, y).shape == (3, 5)
    # torch's convention stays for (N, C, L) against (N, L): classes on axis 1
    seg, t = torch.randn(3, 7, 5, generator=g), torch.randint(0, 7, (3, 5), generator=g)
    assert torch.allclose(default_loss(seg, t), F.cross_entropy(seg, t))
    assert torch.allclose(default_loss(seg[:, :, 0], t[:, 0]), F.cross_entropy(seg[:, :, 0], t[:, 0]))
    # a model output's logits (not given labels): the same per-position reading
    assert torch.allclose(default_loss({"logits": logits}, y), by_hand, atol=1e-6)
    assert torch.equal(predictions({"logits": logits}, y), logits.argmax(-1))
    assert predictions({"logits": logits, "loss": by_hand}, y) is None  # labels shifted inside the model's loss
