"""Whole transformer models, dense against ``convert``, end to end (``sparseflow bench inference --models``).

Each model is built from its Hugging Face config (random weights, nothing downloaded), its attention
projections and MLP weights pruned to the sparsity asked (one-shot magnitude, the same density in every
layer), and converted. The token embeddings and the language-model head stay dense: they are not in the
default targets, and a tied head shares the embedding matrix.

Two workloads at batch 1:

* **prefill**: one forward pass over ``tokens`` positions (the prompt); a causal LM computes the logits of
  the last position only (``logits_to_keep=1``), as ``generate`` does;
* **decode**: one new token with the key/value cache of the ``tokens - 1`` positions before it, as a
  generation step runs. The cache is cut back to its length after every timed call, so every call does
  the same work.

Both models run on the same inputs; dense and sparse calls alternate within each repeat and the median is
reported, per thread count. A third arm, the **floor**, runs the converted model with every sparse layer
replaced by one that returns zeros at once: what the rest of the model costs (the dense layers such as the
language-model head, attention, norms, the framework's own Python), so ``dense / floor`` is the most any
sparse kernel could gain on that workload. The outputs (the logits, or BERT's last hidden state) are compared: the largest
absolute difference over the largest dense magnitude.
"""

from __future__ import annotations

import contextlib
import inspect
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from sparseflow.errors import SparseflowError

#: name -> what the full-size model is shaped like.
SHAPES = {
    "gpt2": "GPT-2 small: 12 layers, 768 wide, 12 heads, vocabulary 50,257 (Conv1D projections, tied head)",
    "bert": "BERT base: 12 layers, 768 wide, 12 heads, feed-forward 3,072, vocabulary 30,522 (encoder only)",
    "llama": "Llama-shaped: 12 layers, 768 wide, 12 query / 4 key-value heads, SwiGLU 2,048, vocabulary 32,000",
}
MODELS = tuple(SHAPES)
#: name -> whether the model is causal (a language model with a decode step) or an encoder (prefill only).
CAUSAL = {"gpt2": True, "bert": False, "llama": True}


def _need_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise SparseflowError("bench inference --models builds Hugging Face models: install transformers "
                              "(pip install 'sparseflow[hf]')") from None
    return transformers


def build(name: str, quick: bool) -> tuple[nn.Module, bool]:
    """The model ``name`` (random weights, seed 0, eval mode) and whether it is causal (has a decode step).
    ``quick``: 2 layers, 128 wide, vocabulary 1,000, the same architecture."""
    tf = _need_transformers()
    torch.manual_seed(0)
    small = dict(layers=2, width=128, heads=4, ff=512, vocab=1000) if quick else \
        dict(layers=12, width=768, heads=12, ff=3072, vocab=None)
    if name == "gpt2":
        cfg = tf.GPT2Config(n_layer=small["layers"], n_embd=small["width"], n_head=small["heads"],
                            vocab_size=small["vocab"] or 50257, n_positions=1024)
        return tf.GPT2LMHeadModel(cfg).eval(), CAUSAL[name]
    if name == "bert":
        cfg = tf.BertConfig(num_hidden_layers=small["layers"], hidden_size=small["width"],
                            num_attention_heads=small["heads"], intermediate_size=small["ff"],
                            vocab_size=small["vocab"] or 30522)
        return tf.BertModel(cfg, add_pooling_layer=False).eval(), CAUSAL[name]
    if name == "llama":
        cfg = tf.LlamaConfig(num_hidden_layers=small["layers"], hidden_size=small["width"],
                             num_attention_heads=small["heads"], num_key_value_heads=small["heads"] // 3 or 1,
                             intermediate_size=small["ff"] * 2 // 3, vocab_size=small["vocab"] or 32000,
                             max_position_embeddings=1024)
        return tf.LlamaForCausalLM(cfg).eval(), CAUSAL[name]
    raise SparseflowError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def prune_(model: nn.Module, sparsity: float) -> float:
    """Magnitude-prune the attention projections and MLPs to ``sparsity`` each (the default targets without the
    language-model head, which pruning methods for LLMs leave dense); returns their measured sparsity."""
    from sparseflow.methods import MagnitudePruning
    from sparseflow.targets import Targets, prunable

    targets = Targets(exclude=("lm_head.*",))
    method = MagnitudePruning(sparsity, targets=targets)  # one shot, in prepare
    method.prepare(model)
    method.remove()  # no training follows: drop the gradient hooks
    weights = [p for p in prunable(model, targets).values() if p.dim() >= 2]
    return 1.0 - sum(int(torch.count_nonzero(w)) for w in weights) / sum(w.numel() for w in weights)


def _output(out: Any) -> torch.Tensor:
    for key in ("logits", "last_hidden_state"):
        t = getattr(out, key, None)
        if isinstance(t, torch.Tensor):
            return t
    raise SparseflowError(f"the model's output has neither logits nor last_hidden_state: {type(out).__name__}")


def _calls(model: nn.Module, ids: torch.Tensor, causal: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """The timed calls on ``model``: prefill over all of ``ids``, and (causal models) decoding its last token
    against a cache of the others."""
    params = inspect.signature(model.forward).parameters
    # a generation step needs the logits of the last position only (what generate() asks for with logits_to_keep)
    keep = {"logits_to_keep": 1} if causal and "logits_to_keep" in params else {}
    calls: dict[str, Callable[[], torch.Tensor]] = {"prefill": lambda: _output(model(input_ids=ids, **keep))}
    if causal:
        # newer transformers name the cache argument "cache" and deprecate "past_key_values"
        key = "cache" if "cache" in params else "past_key_values"
        first = model(input_ids=ids[:, :-1], use_cache=True)
        past = getattr(first, "cache", None) or first.past_key_values
        length = ids.shape[1] - 1
        if not (hasattr(past, "crop") and hasattr(past, "get_seq_length")):
            raise SparseflowError(f"{type(model).__name__}'s cache ({type(past).__name__}) cannot be cut back "
                                  "between timed calls; upgrade transformers")

        def decode() -> torch.Tensor:
            try:
                return _output(model(input_ids=ids[:, -1:], use_cache=True, **{key: past}))
            finally:
                extra = past.get_seq_length() - length
                if extra > 0:
                    past.crop(-extra)  # negative: drop the newest positions (the form every version accepts)

        calls["decode"] = decode
    return calls


@dataclass(frozen=True)
class ModelRow:
    model: str
    workload: str   # "prefill" | "decode"
    tokens: int     # positions in the forward pass (decode: 1, with tokens - 1 cached)
    threads: int
    dense_ms: float
    sparse_ms: float
    max_rel_err: float
    floor_ms: float | None = None  # the converted model with its sparse layers free (returning zeros)

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms

    @property
    def bound(self) -> float | None:
        """dense / floor: the speedup with sparse layers that cost nothing."""
        return None if not self.floor_ms else self.dense_ms / self.floor_ms


class _FreeSparseLayers:
    """Within the block, every SparseLinear of ``model`` returns zeros of its output shape without computing."""

    def __init__(self, model: nn.Module) -> None:
        from sparseflow.inference.kernels.modules import SparseLinear

        self.layers = [m for m in model.modules() if isinstance(m, SparseLinear)]

    def __enter__(self) -> None:
        for m in self.layers:
            m.forward = lambda x, m=m: x.new_zeros(*x.shape[:-1], m.out_features)

    def __exit__(self, *exc: object) -> None:
        for m in self.layers:
            del m.forward


def model_rows(name: str, *, sparsity: float, tokens: int, threads: tuple[int, ...], repeats: int, quick: bool,
               progress: Callable[[str], None] = lambda _: None) -> tuple[list[ModelRow], dict[str, Any]]:
    """Build, prune and convert model ``name``, then time dense against converted at every thread count."""
    from sparseflow.inference.convert import convert, inference_report

    model, causal = build(name, quick)
    measured = prune_(model, sparsity)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(1))
    torch.set_num_threads(max(threads))
    t0 = time.perf_counter()
    with torch.inference_mode():
        fast = convert(model, batch_sizes=(1, tokens), check={"input_ids": ids})
    convert_s = time.perf_counter() - t0
    report = inference_report(fast)
    sparse_layers = sum(1 for r in report if not r.reason)
    rows = []
    with torch.inference_mode():
        for t in threads:
            torch.set_num_threads(t)
            dense_calls, sparse_calls = _calls(model, ids, causal), _calls(fast, ids, causal)
            for workload in dense_calls:
                d, s = dense_calls[workload], sparse_calls[workload]
                ref, got = d(), s()
                err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                times: dict[str, list[float]] = {"dense": [], "sparse": [], "floor": []}
                free = _FreeSparseLayers(fast)
                for _ in range(repeats):  # interleaved: drift on a shared machine hits both alike
                    for key, f in (("dense", d), ("sparse", s), ("floor", s)):
                        with free if key == "floor" else contextlib.nullcontext():
                            t1 = time.perf_counter()
                            f()
                            times[key].append((time.perf_counter() - t1) * 1e3)
                rows.append(ModelRow(name, workload, tokens if workload == "prefill" else 1, t,
                                     statistics.median(times["dense"]), statistics.median(times["sparse"]), err,
                                     statistics.median(times["floor"])))
                progress(f"{name} {workload} threads {t}")
    info = {"model": name, "shape": SHAPES[name] if not quick else f"{name}, 2 layers, 128 wide (quick)",
            "sparsity": round(measured, 4), "convert_s": round(convert_s, 2), "sparse_layers": sparse_layers,
            "layers": len(report), "parameters": sum(p.numel() for p in model.parameters())}
    return rows, info
