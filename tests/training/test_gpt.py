"""The GPT: causal, tied, its targets; the same network as transformers' GPT2LMHeadModel; save_pretrained; sampling."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sparseflow as sf
from sparseflow.errors import SparseflowError
from sparseflow.training.gpt import GPT, generate
from sparseflow.training.hf import save_pretrained, to_gpt2
from sparseflow.training.loop import TrainConfig, fit
from sparseflow.training.models import build_model

V, T = 11, 16


@pytest.fixture(autouse=True)
def one_thread():  # noqa: ANN201
    """Tiny matrices: a second thread only waits on a shared, loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(V, block_size=T, n_layer=2, n_head=2, n_embd=16)


def ids(b: int = 3, t: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def test_default_shape_and_logits() -> None:
    model = build_model("gpt", (128,), 65, seed=0)
    assert (model.n_layer, model.n_head, model.n_embd, model.block_size, model.vocab_size) == (4, 4, 128, 128, 65)
    assert sum(p.numel() for p in model.parameters()) == 818_048  # the tied head counted once
    assert model(ids(2, 128) % 65).shape == (2, 128, 65)
    with pytest.raises(SparseflowError, match="exceeds the GPT's context of 128"):
        model(torch.zeros(1, 129, dtype=torch.int64))
    with pytest.raises(SparseflowError, match="language model"):
        build_model("gpt", (1, 8, 8), 10)


def test_named_modules_order_is_call_order() -> None:
    model = tiny()
    declared = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    called: list[str] = []
    for n in declared:
        dict(model.named_modules())[n].register_forward_hook(lambda *_, n=n: called.append(n))
    model(ids())
    assert called == declared and declared[-1] == "lm_head"


def test_torch_fx_traces_it() -> None:
    model, x = tiny().eval(), ids()
    assert torch.equal(torch.fx.symbolic_trace(model)(x), model(x))  # the input checks are one opaque call


def test_a_future_token_never_changes_earlier_logits() -> None:
    model, x = tiny().eval(), ids()
    before = model(x)
    for t in (0, 7, T - 1):
        changed = x.clone()
        changed[:, t] = (changed[:, t] + 1) % V
        after = model(changed)
        assert torch.allclose(after[:, :t], before[:, :t], atol=1e-6, rtol=0)  # positions before t: unchanged
        assert not torch.allclose(after[:, t:], before[:, t:], atol=1e-4)  # from t on: the change is seen


def test_head_is_tied_to_the_embedding_and_stays_dense() -> None:
    model = tiny()
    assert model.lm_head.weight is model.transformer.wte.weight
    expected = [f"transformer.h.{i}.{m}.weight" for i in range(2)
                for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert list(sf.prunable(model)) == expected  # the Linear layers in call order, not the tied head
    with torch.no_grad():
        model.transformer.wte.weight[3] = 0.5
    assert torch.equal(model.lm_head.weight[3], torch.full((16,), 0.5))


def test_gmp_and_rigl_train_it_with_the_fit_loop() -> None:
    """The loss path reads (B, T, V) logits per position: training lowers the loss; masks hold on the Linears."""
    g = torch.Generator().manual_seed(0)
    seq = torch.arange(200) % 5  # a periodic text: the next token is predictable from the last
    starts = torch.randint(0, 200 - T - 1, (64,), generator=g)
    x = torch.stack([seq[s : s + T] for s in starts])
    y = torch.stack([seq[s + 1 : s + T + 1] for s in starts])
    data = torch.utils.data.TensorDataset(x, y)
    for method in (sf.GMP(sparsity=0.5, start=2, end=12, every=2), sf.RigL(sparsity=0.5, update_every=4, until=16)):
        model = tiny()
        train = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
        test = torch.utils.data.DataLoader(data, batch_size=32)
        start_acc, start_loss = sf.evaluate(model, test)
        result = fit(model, train, test, TrainConfig(epochs=5, lr=3e-3, optimizer="adamw", weight_decay=0.0),
                     method=method, progress=False)
        assert result.test_loss < start_loss - 0.5 and result.test_acc > start_acc
        # the loop's loss is the mean per position, exactly (so exp of it is the perplexity)
        with torch.no_grad():
            model.eval()
            assert result.test_loss == pytest.approx(F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1)).item(),
                                                     rel=1e-5)
        weights = [dict(model.named_parameters())[name] for name in sf.prunable(model)]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert zeros == pytest.approx(0.5, abs=0.01)
        assert (model.transformer.wte.weight != 0).all()


def test_sampling_is_seeded_and_greedy_is_the_argmax() -> None:
    model, prompt = tiny(), ids(1, 3)
    a = generate(model, prompt, 20, context=T, seed=5)
    assert a.shape == (1, 23) and torch.equal(a[:, :3], prompt)
    assert torch.equal(a, generate(model, prompt, 20, context=T, seed=5))
    greedy, x = generate(model, prompt, 20, context=T, seed=None), prompt
    with torch.no_grad():
        for _ in range(20):  # by hand: feed the last T tokens, append the argmax of the last position
            x = torch.cat([x, model(x[:, -T:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy, x)


# --- the same network in transformers ---------------------------------------------------------------------
@pytest.fixture
def transformers():  # noqa: ANN201 (the module)
    return pytest.importorskip("transformers")


def test_to_gpt2_computes_the_same_logits(transformers) -> None:  # noqa: ANN001
    model = tiny().eval()
    hf = to_gpt2(model).eval()
    assert isinstance(hf, transformers.GPT2LMHeadModel)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # still tied
    x = ids()
    assert torch.allclose(hf(x).logits, model(x), atol=1e-5)


def test_hf_gpt2_trains_saves_and_reloads_with_identical_logits(tmp_path: Path, transformers) -> None:  # noqa: ANN001
    model = build_model("hf-gpt2", (T,), V, seed=0)
    assert isinstance(model, transformers.GPT2LMHeadModel) and model.config.n_positions == T
    assert len(list(sf.prunable(model))) == 16  # Conv1D projections; the tied head stays dense
    x, y = ids(8, seed=2), ids(8, seed=3)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    before = model(x).logits.detach()
    fit(model, data, data, TrainConfig(epochs=2, lr=1e-2, optimizer="adamw", weight_decay=0.0),
        method=sf.MagnitudePruning(sparsity=0.5, at_step=1), progress=False)
    model.eval()
    logits = model(x).logits.detach()
    assert not torch.allclose(logits, before)
    save_pretrained(model, tmp_path / "hf")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(again(x).logits, logits)
    assert (again.transformer.h[0].attn.c_attn.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    save_pretrained(model, tmp_path / "hf")  # a second save replaces the first
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SparseflowError, match="not a save_pretrained folder"):
        save_pretrained(model, tmp_path / "other")


def test_a_saved_gpt_reloads_as_gpt2(tmp_path: Path, transformers) -> None:  # noqa: ANN001
    model = tiny(3).eval()
    save_pretrained(model, tmp_path / "gpt")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt").eval()
    x = ids()
    assert torch.allclose(again(x).logits, model(x), atol=1e-5)


def test_missing_transformers_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(SparseflowError, match=r"pip install 'sparseflow\[hf\]'"):
        build_model("hf-gpt2", (T,), V)
    with pytest.raises(SparseflowError, match="transformers"):
        save_pretrained(tiny(), Path("unused"))
