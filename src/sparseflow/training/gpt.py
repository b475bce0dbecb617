"""A GPT in nanoGPT's shape (Karpathy, ``model.py``; Radford et al. 2019, GPT-2), sized for a CPU.

Token and position embeddings, ``n_layer`` pre-LayerNorm blocks (causal self-attention, then a 4x MLP, each
added to the residual stream), a final LayerNorm and a linear head tied to the token embedding. The default
(4 layers, 4 heads, width 128, context 128) has 0.80 M parameters. The GELU is GPT-2's tanh approximation,
the initialisation GPT-2's (normal, std 0.02; the residual projections ``c_proj`` scaled by 1/sqrt(2 n_layer)),
so :func:`~sparseflow.training.hf.to_gpt2` turns the model into a ``transformers`` ``GPT2LMHeadModel`` that
computes the same logits.

``forward(idx)`` maps token ids ``(B, T)`` to logits ``(B, T, vocab_size)``: classes on the last axis, as
:func:`sparseflow.layouts.default_loss` reads a 3-D output against ``(B, T)`` targets.

Sparsity: the Linear layers (``c_attn``, ``c_proj``, ``c_fc``) are the default targets; the head is the token
embedding (one tied parameter, first named ``transformer.wte.weight``), which :mod:`sparseflow.targets`
leaves dense because an Embedding holds it. Modules are registered in the order the forward pass calls them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseflow.errors import SparseflowError

SAMPLE_TEMPERATURE = 0.8  # nanoGPT's sample.py default


@torch.fx.wrap  # one opaque call when torch.fx traces the model (connectivity analysis), not Python branches
def _check_ids(idx: Tensor, block_size: int) -> None:
    if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
        raise SparseflowError(f"GPT takes token ids of shape (batch, time) as int64, got {idx.dtype} "
                              f"{tuple(idx.shape)}")
    if idx.shape[1] > block_size:
        raise SparseflowError(f"a sequence of {idx.shape[1]} tokens exceeds the GPT's context of {block_size}; "
                              f"pass at most the last {block_size}")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t attends to positions <= t (one fused q, k, v projection)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)  # rows: q, then k, then v
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        # (B, T, C) -> (B, heads, T, head size)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)): pre-LayerNorm (GPT-2)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A decoder-only transformer language model: ids ``(B, T)`` with ``T <= block_size`` -> logits ``(B, T, V)``."""

    def __init__(self, vocab_size: int, block_size: int = 128, n_layer: int = 4, n_head: int = 4,
                 n_embd: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        for what, v in (("vocab_size", vocab_size), ("block_size", block_size), ("n_layer", n_layer),
                        ("n_head", n_head), ("n_embd", n_embd)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SparseflowError(f"GPT {what} must be a positive integer, got {v!r}")
        if n_embd % n_head:
            raise SparseflowError(f"GPT n_embd={n_embd} must be divisible by n_head={n_head} (equal head sizes)")
        if not 0.0 <= dropout < 1.0:
            raise SparseflowError(f"GPT dropout must be in [0, 1), got {dropout!r}")
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.n_embd, self.dropout = n_layer, n_head, n_embd, dropout
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer)),
            ln_f=nn.LayerNorm(n_embd),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying (Press & Wolf 2017): one parameter
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: residual projections scaled by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: Tensor) -> Tensor:
        _check_ids(idx, self.block_size)
        pos = self.transformer.wpe.weight[: idx.shape[1]]  # (T, C): positions 0 .. T-1
        x = self.transformer.drop(self.transformer.wte(idx) + pos)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)


@torch.no_grad()
def generate(model: nn.Module, idx: Tensor, new_tokens: int, *, context: int, temperature: float = SAMPLE_TEMPERATURE,
             seed: int | None = 0) -> Tensor:
    """``idx`` ``(B, T0)`` followed by ``new_tokens`` sampled tokens, one at a time from the softmax of the last
    logits divided by ``temperature``, with a generator seeded by ``seed`` (``seed=None``: greedy, the argmax).

    Works for any causal language model whose output (or its ``.logits``) is ``(B, T, V)``; only the last
    ``context`` tokens are fed. The model's train/eval mode is restored; on the CPU it runs on one thread.
    """
    from sparseflow.layouts import call, output_tensor

    if not temperature > 0:
        raise SparseflowError(f"temperature must be positive, got {temperature!r}")
    g = None if seed is None else torch.Generator(device=idx.device).manual_seed(seed)
    was_training, threads = model.training, torch.get_num_threads()
    model.eval()
    # One token at a time is too little work to share: on the CPU a second thread only adds synchronisation,
    # which on a loaded machine made each step 100x slower (0.27 s instead of 3 ms for the default GPT).
    if idx.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        for _ in range(new_tokens):
            logits = output_tensor(call(model, idx[:, -context:]))[:, -1, :]  # (B, V) at the last position
            if g is None:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                nxt = torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=g)
            idx = torch.cat([idx, nxt], dim=1)
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)
    return idx
