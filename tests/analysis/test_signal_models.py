"""signal() on the batches and models users have, against hand computations: token ids (measured from the
embedding output), (x, y) pairs and dicts give the same numbers, nn.MultiheadAttention's q/k/v chunks and
out_proj against attention written out by hand, GPT-2's Conv1D layers against forward hooks and autograd, and
one finite row per target weight of the Hugging Face models."""

from __future__ import annotations

import copy
import math

import pytest
import realmodels
import torch
import torch.nn.functional as F
from torch import nn

from sparseflow.analysis.signal import signal
from sparseflow.layouts import parameter_layouts


def _q(t: torch.Tensor) -> float:
    return float(t.detach().double().pow(2).mean())


def _by_name(rep) -> dict:
    return {r.name: r for r in rep.layers}


def test_tensor_pair_and_dict_batches_agree() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    plain, pair, named = signal(model, x), signal(model, (x, y)), signal(model, {"input": x})
    assert [r.q for r in plain.layers] == [r.q for r in pair.layers] == [r.q for r in named.layers]
    assert [r.predicted for r in plain.layers] == [r.predicted for r in named.layers]
    assert pair.loss == "the cross-entropy on the given targets" and named.loss == plain.loss


def test_token_ids_are_measured_from_the_embedding_output() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(4 * 5, 6), nn.ReLU(), nn.Linear(6, 2))
    ids = torch.randint(0, 20, (8, 5))
    rep = signal(model, ids)
    emb = model[0](ids)
    first, second = rep.layers
    assert [r.name for r in rep.layers] == ["2", "4"]  # the embedding table is not a row
    assert rep.input_q == pytest.approx(_q(emb), rel=1e-12) and first.reference == "own input"
    assert first.q_in == pytest.approx(_q(emb), rel=1e-12)
    assert first.measured == pytest.approx(_q(model[2](emb.flatten(1))) / _q(emb), rel=1e-12)
    assert second.reference == "2" and second.activation == "relu" and second.predicted is not None
    assert any("token ids" in n for n in rep.notes)


def _attention_by_hand(attn: nn.MultiheadAttention, x: torch.Tensor) -> dict[str, tuple[float, float]]:
    e, h = attn.embed_dim, attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q, k, v = (x @ w[i * e:(i + 1) * e].T + b[i * e:(i + 1) * e] for i in range(3))
    split = lambda t: t.reshape(t.shape[0], t.shape[1], h, e // h).transpose(1, 2)  # noqa: E731  (B, H, S, d)
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(e // h)
    pre = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(x.shape)
    out = pre @ attn.out_proj.weight.T + attn.out_proj.bias
    return {"q": (_q(x), _q(q)), "k": (_q(x), _q(k)), "v": (_q(x), _q(v)), "out": (_q(pre), _q(out))}


def test_multihead_attention_chunks_and_out_proj_match_attention_by_hand() -> None:
    model, (x, y), _ = realmodels.mha()
    with torch.no_grad():
        model.body.attn.in_proj_bias.normal_()  # nonzero biases, so a chunk's bias must be its own
    rep = _by_name(signal(model, (x, y)))
    want = _attention_by_hand(model.body.attn, x)
    for c in "qkv":
        row = rep[f"body.attn.in_proj_weight[{c}]"]
        assert (row.q_in, row.q) == pytest.approx(want[c], rel=1e-6)
        assert row.measured == pytest.approx(want[c][1] / want[c][0], rel=1e-6)
    out = rep["body.attn.out_proj"]
    assert (out.q_in, out.q) == pytest.approx(want["out"], rel=1e-5)
    # Gradient norms per chunk against autograd on the same loss.
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), y).backward()
    g = ref.body.attn.in_proj_weight.grad
    for i, c in enumerate("qkv"):
        assert rep[f"body.attn.in_proj_weight[{c}]"].grad_norm == pytest.approx(float(g[i * 16:(i + 1) * 16].norm()), rel=1e-5)
    assert out.grad_norm == pytest.approx(float(ref.body.attn.out_proj.weight.grad.norm()), rel=1e-5)
    w = model.body.attn.in_proj_weight.detach()
    assert rep["body.attn.in_proj_weight[k]"].weight_sq == pytest.approx(float(w[16:32].pow(2).sum(1).mean()), rel=1e-6)


def test_gpt2_rows_match_hooks_and_autograd() -> None:
    model, batch, loss = realmodels.gpt2()
    state = copy.deepcopy(model.state_dict())
    rep = signal(model, batch)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()) and model.training
    ref = copy.deepcopy(model)
    seen: dict[str, tuple[float, float]] = {}  # module -> (q of its input, q of its output), first call
    names = {m: n for n, m in model.named_modules() if type(m).__name__ in ("Conv1D", "Linear")}

    def record(m: nn.Module, i: tuple, o: torch.Tensor) -> None:
        seen.setdefault(names[m], (_q(i[0]), _q(o)))

    hooks = [m.register_forward_hook(record) for m in names]
    model.eval()
    with torch.no_grad():
        model(**batch)
    model.train()
    for h in hooks:
        h.remove()
    assert [r.name for r in rep.layers] == list(seen)  # call order
    for r in rep.layers:
        assert (r.q_in, r.q) == pytest.approx(seen[r.name], rel=1e-6) and r.reference == "own input"
    assert rep.input_q == rep.layers[0].q_in  # token ids: the first weight's input, ln_1 of the embeddings
    assert rep.loss.startswith("the model's own loss")
    loss(ref, batch).backward()
    c_fc = ref.transformer.h[0].mlp.c_fc
    row = _by_name(rep)["transformer.h.0.mlp.c_fc"]
    assert row.grad_norm == pytest.approx(float(c_fc.weight.grad.norm()), rel=1e-5)
    assert row.weight_sq == pytest.approx(float(c_fc.weight.detach().pow(2).sum(0).mean()), rel=1e-6)  # (in, out)
    # input_ids alone (a tensor) measure the same forward pass.
    ids_only = signal(model, batch["input_ids"])
    assert [r.q for r in ids_only.layers] == [r.q for r in rep.layers]


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama", "vit", "t5"])
def test_hf_models_one_finite_row_per_target_weight(name: str) -> None:
    model, batch, _ = realmodels.ARCHS[name]()
    rep = signal(model, batch)
    want = set()
    for param in parameter_layouts(model):
        module_name, leaf = param.rsplit(".", 1)
        if not isinstance(model.get_submodule(module_name), nn.Embedding):
            want.add(module_name if leaf == "weight" else param)
    assert len(rep.layers) == len(want) and {r.name for r in rep.layers} == want
    for r in rep.layers:
        assert all(v is not None and math.isfinite(v) and v > 0 for v in (r.q_in, r.q, r.measured, r.grad_norm)), r
    assert math.isfinite(rep.input_q) and rep.input_q > 0 and rep.loss.startswith("the model's own loss")


@pytest.mark.parametrize("name", ["transformer_encoder", "transformer_decoder"])
def test_torch_transformer_layers_measured_at_every_weight(name: str) -> None:
    model, (x, y), _ = realmodels.ARCHS[name]()
    with torch.no_grad():
        for p in model.parameters():
            p.requires_grad_(False)  # a frozen model in eval mode would take PyTorch's fused fast path
    rep = signal(model, (x, y))
    rows = _by_name(rep)
    assert all(r.q is not None and r.q > 0 and r.measured is not None for r in rep.layers)
    assert rows["body.layers.0.self_attn.in_proj_weight[q]" if name == "transformer_encoder"
                else "body.dec.layers.0.self_attn.in_proj_weight[q]"].q_in == pytest.approx(_q(x), rel=1e-6)
    if name == "transformer_decoder":  # cross-attention: keys and values read the memory (here x itself)
        assert rows["body.dec.layers.1.multihead_attn.in_proj_weight[k]"].q_in == pytest.approx(_q(x), rel=1e-6)
    assert "inside MultiheadAttention" in rows[[n for n in rows if n.endswith("out_proj")][0]].note
    assert torch.backends.mha.get_fastpath_enabled()
