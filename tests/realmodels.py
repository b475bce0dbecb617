"""Small random-init models of the architectures users bring, built from their configs (nothing downloaded).

``ARCHS`` maps a name to ``build() -> (model, batch, loss)``: ``batch`` is what a user's loader yields (a
tensor, an ``(x, y)`` pair or a dict of Hugging Face inputs) and ``loss(model, batch)`` is the scalar the
user's training loop would minimise. Every model is seeded (seed 0) and in eval mode only where dropout
would make two calls differ (the builders set dropout to 0 instead, so train mode is deterministic too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Built = tuple[nn.Module, Any, Callable[[nn.Module, Any], torch.Tensor]]
VOCAB, SEQ, BATCH = 64, 8, 4


def _tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


def _hf_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def gpt2() -> Built:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    ids = _tokens()
    return GPT2LMHeadModel(cfg), {"input_ids": ids, "labels": ids}, _hf_loss


def bert() -> Built:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, num_labels=3)
    ids = _tokens()
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 1])}
    return BertForSequenceClassification(cfg), batch, _hf_loss


def _llama(tied: bool) -> Built:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                      tie_word_embeddings=tied)
    ids = _tokens()
    return LlamaForCausalLM(cfg), {"input_ids": ids, "labels": ids}, _hf_loss


def llama() -> Built:
    return _llama(False)


def llama_tied() -> Built:
    return _llama(True)


def vit() -> Built:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, num_labels=3, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    x = torch.randn(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return ViTForImageClassification(cfg), {"pixel_values": x, "labels": torch.tensor([0, 1, 2, 0])}, _hf_loss


def t5() -> Built:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
                   decoder_start_token_id=0, pad_token_id=0)
    ids = _tokens()
    return T5ForConditionalGeneration(cfg), {"input_ids": ids, "labels": _tokens(2)}, _hf_loss


def hf_resnet() -> Built:
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    cfg = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                       num_labels=3)
    x = torch.randn(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return ResNetForImageClassification(cfg), {"pixel_values": x, "labels": torch.tensor([0, 1, 2, 0])}, _hf_loss


def _xy_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


class _Head(nn.Module):
    """An encoder (B, S, E) -> (B, S, E) followed by mean pooling and a Linear classifier."""

    def __init__(self, body: nn.Module, dim: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.body, self.head = body, nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if isinstance(out, tuple):
            out = out[0]
        return self.head(out.mean(1))


def _seq_batch(dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, SEQ, dim, generator=g), torch.tensor([0, 1, 2, 1])


def transformer_encoder() -> Built:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    return _Head(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)), _seq_batch(), _xy_loss


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerDecoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.dec = nn.TransformerDecoder(layer, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(x, x)


def transformer_decoder() -> Built:
    torch.manual_seed(0)
    return _Head(_Decoder()), _seq_batch(), _xy_loss


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def mha() -> Built:
    torch.manual_seed(0)
    return _Head(_SelfAttention()), _seq_batch(), _xy_loss


def lstm() -> Built:
    torch.manual_seed(0)
    return _Head(nn.LSTM(16, 16, batch_first=True)), _seq_batch(), _xy_loss


def gru() -> Built:
    torch.manual_seed(0)
    return _Head(nn.GRU(16, 16, num_layers=2, batch_first=True)), _seq_batch(), _xy_loss


def _image_batch(channels: int, *spatial: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, channels, *spatial, generator=g), torch.tensor([0, 1, 2, 1])


def depthwise_conv() -> Built:
    """MobileNet-style: depthwise 3x3 (groups = channels), pointwise 1x1, grouped 3x3 (groups 2)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    return model, _image_batch(4, 8, 8), _xy_loss


def conv1d() -> Built:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 8, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 3))
    return model, _image_batch(4, 12), _xy_loss


def conv3d() -> Built:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 8, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 3))
    return model, _image_batch(4, 5, 5, 5), _xy_loss


HF = {"gpt2": gpt2, "bert": bert, "llama": llama, "llama_tied": llama_tied, "vit": vit, "t5": t5,
      "hf_resnet": hf_resnet}
TORCH = {"transformer_encoder": transformer_encoder, "transformer_decoder": transformer_decoder, "mha": mha,
         "lstm": lstm, "gru": gru, "depthwise_conv": depthwise_conv, "conv1d": conv1d, "conv3d": conv3d}
ARCHS: dict[str, Callable[[], Built]] = {**HF, **TORCH}


def loss_of(name: str) -> Callable[[nn.Module, Any], torch.Tensor]:
    return ARCHS[name]()[2]
