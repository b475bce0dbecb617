"""Converted attention against the nn.MultiheadAttention it came from (the oracle): every mask form, is_causal,
need_weights, batch_first, unbatched and cross attention, separate k/v dims, no bias, a dense chunk; inside
nn.TransformerEncoder/DecoderLayer with their fast paths eligible (eval, inference mode, padding masks)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseflow.errors import SparseflowError
from sparseflow.inference.convert import convert, deconvert, inference_report
from sparseflow.inference.kernels.attention import SparseMultiheadAttention
from sparseflow.inference.kernels.modules import SparseLinear, StubWeight

E, H, L, S, N = 16, 4, 5, 7, 3


def prune_(module: nn.Module, density: float = 0.1, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:
                p[torch.rand(p.shape, generator=g) >= density] = 0
            else:
                p.copy_(torch.randn(p.shape, generator=g))  # nonzero biases, so that a lost bias shows
    return module


def close(a, b, rel=1e-5):
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.shape == b.shape
    scale = b.abs().max().clamp_min(1e-12)
    assert bool(((a - b).abs() <= rel * scale).all()), float((a - b).abs().max() / scale)


def _masks(g: torch.Generator, src: int) -> dict[str, dict]:
    kpm = torch.zeros(N, src, dtype=torch.bool)
    kpm[0, -2:] = True  # pad the last keys of the first and third sequences
    kpm[2, -1] = True
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    out = {
        "none": {},
        "kpm_bool": {"key_padding_mask": kpm},
        "kpm_float": {"key_padding_mask": torch.zeros(N, src).masked_fill(kpm, -1e4)},
        "mask_2d_bool": {"attn_mask": torch.rand(L, src, generator=g) > 0.7},
        "mask_3d_float": {"attn_mask": torch.randn(N * H, L, src, generator=g)},
        "mask_and_kpm": {"attn_mask": torch.rand(L, src, generator=g) > 0.8, "key_padding_mask": kpm},
    }
    if src == L:  # causal masks are square
        out |= {"causal": {"attn_mask": causal, "is_causal": True},
                "causal_kpm": {"attn_mask": causal, "is_causal": True, "key_padding_mask": kpm}}
    return out


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # torch's, for the mixed case
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("variant", ["self", "cross", "kvdim", "nobias"])
def test_attention_matches_torch(batch_first, variant):
    torch.manual_seed(0)
    kw = dict(kdim=6, vdim=10) if variant == "kvdim" else dict(bias=variant != "nobias")
    mha = prune_(nn.MultiheadAttention(E, H, batch_first=batch_first, **kw)).eval()
    fast = convert(mha, measure=False)
    assert isinstance(fast, SparseMultiheadAttention)
    assert all(isinstance(getattr(fast, p), SparseLinear) for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
    g = torch.Generator().manual_seed(1)
    q = torch.randn(N, L, E, generator=g)
    kv_len = L if variant in ("self", "nobias") else S
    k = q if kv_len == L else torch.randn(N, kv_len, kw.get("kdim", E), generator=g)
    v = q if kv_len == L else torch.randn(N, kv_len, kw.get("vdim", E), generator=g)
    if not batch_first:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        k, v = (q, q) if kv_len == L else (k, v)
    for masks in _masks(g, kv_len).values():
        for need_weights, average in ((False, True), (True, True), (True, False)):
            with torch.no_grad():
                want = mha(q, k, v, need_weights=need_weights, average_attn_weights=average, **masks)
                got = fast(q, k, v, need_weights=need_weights, average_attn_weights=average, **masks)
            close(got[0], want[0]), close(got[1], want[1])


def test_unbatched_input_and_a_dense_chunk():
    torch.manual_seed(0)
    mha = prune_(nn.MultiheadAttention(E, H)).eval()
    with torch.no_grad():
        mha.in_proj_weight[E:2 * E] = torch.randn(E, E)  # the k chunk fully dense: it stays an nn.Linear
    fast = convert(mha, measure=False)
    assert type(fast.k_proj) is nn.Linear and isinstance(fast.q_proj, SparseLinear)
    rows = {r.name: r for r in inference_report(fast)}
    assert rows["k_proj"].plan == () and "density 1.00 above" in rows["k_proj"].reason
    assert rows["q_proj"].kind == "MultiheadAttention.q_proj" and rows["q_proj"].plan
    x, kpm = torch.randn(L, E), torch.tensor([False] * (L - 1) + [True])
    with torch.no_grad():
        for kw in ({}, {"key_padding_mask": kpm}, {"attn_mask": torch.randn(H, L, L)}):
            want, got = mha(x, x, x, **kw), fast(x, x, x, **kw)
            close(got[0], want[0]), close(got[1], want[1])


def test_unsupported_attention_stays_dense_with_a_reason():
    torch.manual_seed(0)
    mha = prune_(nn.MultiheadAttention(E, H, add_bias_kv=True)).eval()
    with pytest.warns(UserWarning, match="add_bias_kv"):
        fast = convert(nn.Sequential(mha), measure=False)
    assert type(fast[0]) is nn.MultiheadAttention and type(fast[0].out_proj) is not SparseLinear
    rows = {r.name: r for r in inference_report(fast)}
    assert "add_bias_kv" in rows["0"].reason and "add_bias_kv" in rows["0.out_proj"].reason
    x = torch.randn(L, 2, E)
    with torch.no_grad():
        close(fast[0](x, x, x)[0], mha(x, x, x)[0])


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # the dense encoder's nested path
@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_with_fast_path_conditions(norm_first):
    """Eval, inference mode, batch_first, even heads, a padding mask: torch would take its fused fast path and
    nested tensors; the converted encoder must take its plain path and give the same result."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, 32, dropout=0.1, batch_first=True, norm_first=norm_first)  # eval: no dropout
    enc = prune_(nn.TransformerEncoder(layer, 2, enable_nested_tensor=not norm_first)).eval()
    fast = convert(enc, measure=False)
    assert isinstance(fast.layers[0].self_attn, SparseMultiheadAttention) and not fast.use_nested_tensor
    x = torch.randn(N, L, E)
    kpm = torch.zeros(N, L, dtype=torch.bool)
    kpm[0, -2:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    with torch.inference_mode():
        for kw in ({}, {"src_key_padding_mask": kpm}, {"mask": causal, "is_causal": True}):
            want, got = enc(x, **kw), fast(x, **kw)
            keep = ~kpm[..., None].expand_as(want) if "src_key_padding_mask" in kw else torch.ones_like(want, dtype=torch.bool)
            close(got[keep], want[keep])  # torch's nested path zeroes padded positions; those are not outputs
    back = deconvert(fast)
    assert type(back.layers[0].self_attn) is nn.MultiheadAttention and back.use_nested_tensor == enc.use_nested_tensor
    assert torch.equal(back.layers[1].self_attn.in_proj_weight, enc.layers[1].self_attn.in_proj_weight)


def test_decoder_layer_and_only_the_feedforward_sparse():
    torch.manual_seed(0)
    dec = prune_(nn.TransformerDecoderLayer(E, H, 32, dropout=0.0, batch_first=True)).eval()
    tgt, mem = torch.randn(N, L, E), torch.randn(N, S, E)
    mask = nn.Transformer.generate_square_subsequent_mask(L)
    fast = convert(dec, measure=False)
    assert isinstance(fast.multihead_attn, SparseMultiheadAttention)
    with torch.inference_mode():
        close(fast(tgt, mem, tgt_mask=mask, tgt_is_causal=True), dec(tgt, mem, tgt_mask=mask, tgt_is_causal=True))
    # attention dense (its weights fully dense), only the feed-forward sparse: the encoder layer's fast path
    # would read linear1.weight; it must see the stub and run its plain path
    enc = nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True).eval()
    prune_(enc.linear1), prune_(enc.linear2)
    fast = convert(enc, measure=False)
    assert type(fast.self_attn) is nn.MultiheadAttention and isinstance(fast.linear1, SparseLinear)
    with torch.inference_mode():
        close(fast(tgt), enc(tgt))


def test_stub_weight_reads_metadata_and_refuses_values():
    fast = convert(prune_(nn.MultiheadAttention(E, H, batch_first=True)), measure=False)
    w = fast.in_proj_weight
    assert isinstance(w, torch.Tensor) and isinstance(w, StubWeight)
    assert w.shape == (3 * E, E) and w.dtype == torch.float32 and w.device.type == "cpu" and w.dim() == 2
    assert fast.out_proj.weight.shape == (E, E) and "StubWeight" in repr(w)
    with pytest.raises(SparseflowError, match="deconvert"):
        torch.nn.functional.linear(torch.randn(2, E), fast.out_proj.weight)
    with pytest.raises(SparseflowError, match="weight of a converted layer"):
        fast.in_proj_weight.sum()
    with pytest.raises(SparseflowError, match="is_causal"):
        fast(torch.randn(1, L, E), torch.randn(1, L, E), torch.randn(1, L, E), is_causal=True)
