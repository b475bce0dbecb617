"""``SparseMultiheadAttention``: ``nn.MultiheadAttention`` with its projections as (sparse) modules.

``nn.MultiheadAttention`` reads ``in_proj_weight`` and ``out_proj.weight`` itself (``F.multi_head_attention_forward``
and its fused fast path), so swapping its ``out_proj`` for a sparse module breaks it. This module replaces the
whole attention: q, k and v come from ``q_proj``, ``k_proj``, ``v_proj`` (the chunks of ``in_proj_weight`` or the
separate ``{q,k,v}_proj_weight``; each a ``SparseLinear`` where the sparse kernel won, else an ``nn.Linear``),
attention is torch's ``scaled_dot_product_attention`` (or, with ``need_weights``, the explicit softmax that
returns the weights), and ``out_proj`` projects back. The call signature, masks (``key_padding_mask`` and
``attn_mask``, bool or additive float, 2-D or per-head 3-D), ``is_causal``, ``need_weights`` /
``average_attn_weights``, ``batch_first``, unbatched inputs and dropout in training mode follow
``nn.MultiheadAttention``, so ``nn.TransformerEncoderLayer``/``DecoderLayer`` call it unchanged. The attributes
their fast-path checks read are there; the projection weights are ``StubWeight``s, which send those layers down
their plain path. ``add_bias_kv`` and ``add_zero_attn`` are not supported: ``convert`` leaves such attention dense.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparseflow.errors import SparseflowError
from sparseflow.inference.kernels.modules import StubWeight

__all__ = ["SparseMultiheadAttention", "attention_unsupported"]


def attention_unsupported(mha: nn.MultiheadAttention) -> str | None:
    """Why ``mha`` cannot become a SparseMultiheadAttention, or None when it can."""
    if mha.bias_k is not None or mha.bias_v is not None:
        return "attention with add_bias_kv (no sparse path)"
    if mha.add_zero_attn:
        return "attention with add_zero_attn (no sparse path)"
    return None


def _additive(mask: torch.Tensor | None, dtype: torch.dtype, name: str) -> torch.Tensor | None:
    """A bool mask (True: not attended) as 0 / -inf, a float mask as it is (as nn.MultiheadAttention reads them)."""
    if mask is None or torch.is_floating_point(mask):
        return mask
    if mask.dtype != torch.bool:
        raise SparseflowError(f"{name} must be bool or floating point, got {mask.dtype}")
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))


class SparseMultiheadAttention(nn.Module):
    """Multi-head attention called exactly like ``nn.MultiheadAttention``, built from one and its four projections."""

    def __init__(self, mha: nn.MultiheadAttention, q_proj: nn.Module, k_proj: nn.Module, v_proj: nn.Module,
                 out_proj: nn.Module) -> None:
        super().__init__()
        reason = attention_unsupported(mha)
        if reason is not None:
            raise SparseflowError(f"cannot build SparseMultiheadAttention: {reason}")
        self.embed_dim, self.kdim, self.vdim = mha.embed_dim, mha.kdim, mha.vdim
        self.num_heads, self.head_dim = mha.num_heads, mha.head_dim
        self.dropout, self.batch_first = mha.dropout, mha.batch_first
        self._qkv_same_embed_dim = mha._qkv_same_embed_dim
        self.has_bias = mha.in_proj_bias is not None
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False

    # what nn.TransformerEncoderLayer's fast-path checks read; stubs, so that it takes its plain path
    @property
    def in_proj_weight(self) -> StubWeight | None:
        return StubWeight.of((3 * self.embed_dim, self.embed_dim)) if self._qkv_same_embed_dim else None

    @property
    def in_proj_bias(self) -> StubWeight | None:
        return StubWeight.of((3 * self.embed_dim,)) if self.has_bias else None

    @property
    def q_proj_weight(self) -> StubWeight | None:
        return None if self._qkv_same_embed_dim else StubWeight.of((self.embed_dim, self.embed_dim))

    @property
    def k_proj_weight(self) -> StubWeight | None:
        return None if self._qkv_same_embed_dim else StubWeight.of((self.embed_dim, self.kdim))

    @property
    def v_proj_weight(self) -> StubWeight | None:
        return None if self._qkv_same_embed_dim else StubWeight.of((self.embed_dim, self.vdim))

    def _check(self, query, key, value, key_padding_mask, attn_mask) -> None:
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise SparseflowError(f"query, key and value must all be 3-D (batched) or 2-D (unbatched), got "
                                  f"{query.dim()}-D, {key.dim()}-D and {value.dim()}-D")
        if key_padding_mask is not None and key_padding_mask.dim() != (2 if batched else 1):
            raise SparseflowError(f"key_padding_mask must be {'2' if batched else '1'}-D for "
                                  f"{'batched' if batched else 'unbatched'} input, got {key_padding_mask.dim()}-D")
        if attn_mask is not None and attn_mask.dim() not in (2, 3):
            raise SparseflowError(f"attn_mask must be 2-D or 3-D, got {attn_mask.dim()}-D")
        if key.shape[:-1] != value.shape[:-1]:
            raise SparseflowError(f"key {tuple(key.shape)} and value {tuple(value.shape)} differ in sequence/batch dims")

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check(query, key, value, key_padding_mask, attn_mask)
        batched = query.dim() == 3
        if not batched:  # one sequence: a batch of one
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # [L, N, E] -> [N, L, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, tgt, src, heads, hd = query.shape[0], query.shape[1], key.shape[1], self.num_heads, self.head_dim

        # masks as nn.MultiheadAttention merges them: is_causal is only a hint that attn_mask is causal, used by
        # itself when there is no padding mask and no weights to return
        kpm = _additive(key_padding_mask, query.dtype, "key_padding_mask")
        if is_causal and attn_mask is None:
            raise SparseflowError("is_causal=True needs attn_mask as well (as in nn.MultiheadAttention); build one "
                                  "with nn.Transformer.generate_square_subsequent_mask")
        causal = is_causal and kpm is None and not need_weights
        mask = None if causal else _additive(attn_mask, query.dtype, "attn_mask")
        if mask is not None:
            want = (tgt, src) if mask.dim() == 2 else (n * heads, tgt, src)
            if tuple(mask.shape) != want:
                raise SparseflowError(f"attn_mask of shape {tuple(mask.shape)} should be {want}")
            mask = mask.view(1, 1, tgt, src) if mask.dim() == 2 else mask.view(n, heads, tgt, src)
        if kpm is not None:
            if tuple(kpm.shape) != (n, src):
                raise SparseflowError(f"key_padding_mask of shape {tuple(kpm.shape)} should be {(n, src)}")
            kpm = kpm.view(n, 1, 1, src)
            mask = kpm if mask is None else mask + kpm

        q = self.q_proj(query).view(n, tgt, heads, hd).transpose(1, 2)   # [N, H, L, hd]
        k = self.k_proj(key).view(n, src, heads, hd).transpose(1, 2)     # [N, H, S, hd]
        v = self.v_proj(value).view(n, src, heads, hd).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * hd ** -0.5) @ k.transpose(-2, -1)               # [N, H, L, S]
            weights = (scores if mask is None else scores + mask).softmax(dim=-1)
            if p > 0:  # the returned weights are the dropped-out ones, as torch returns them
                weights = F.dropout(weights, p)
            out = weights @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, mask, p, causal)
        out = self.out_proj(out.transpose(1, 2).reshape(n, tgt, self.embed_dim))
        if not batched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kdim={self.kdim}, vdim={self.vdim}, "
                f"batch_first={self.batch_first}, dropout={self.dropout}")
