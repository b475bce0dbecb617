"""Sparse execution of a method's targets (``prepare(..., execution="sparse" | "auto")``).

Oracle: masked-dense execution of the same method, seed and data. After 100 steps the masks are equal and the
losses and weights within 1e-4 relative, across mask updates (SET, RigL, GMP), with SGD+momentum and AdamW,
gradient accumulation, the compiled kernels and the torch fallback; a resumed run equals the uninterrupted one;
``state_dict()``/``sf.save`` write what dense execution writes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparseflow as sf
from sparseflow.training.loop import Callback, TrainConfig, TrainState, fit
from sparseflow.methods.autotune import SPARSE_EDGE
from sparseflow.methods.sparse_linear import SparseTrainConv1x1, SparseTrainLinear

STEPS = 100


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 5))


def _batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)


METHODS: dict[str, Callable[[], sf.Method]] = {
    "random-erk": lambda: sf.RandomSparse(0.8, distribution=sf.erk, seed=3),
    "snip": lambda: sf.SNIP(0.8, data=_batch(torch.Generator().manual_seed(9))),
    "set": lambda: sf.SET(0.8, update_every=10, until=80, seed=0),
    "rigl": lambda: sf.RigL(0.8, update_every=10, until=80, seed=0),
    "gmp": lambda: sf.GMP(0.8, start=10, end=60, every=10),
}
OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2),
}


def _train(execution: str, method: sf.Method, opt_name: str, *, accumulate: int = 1, steps: int = STEPS
           ) -> tuple[nn.Module, sf.Method, list[float], torch.optim.Optimizer]:
    model = _mlp()
    opt = OPTIMIZERS[opt_name](model.parameters())
    method.prepare(model, opt, execution=execution)
    g, losses = torch.Generator().manual_seed(1), []
    for _ in range(steps):
        opt.zero_grad()
        for _ in range(accumulate):
            x, y = _batch(g)
            loss = F.cross_entropy(model(x), y) / accumulate
            loss.backward()
        opt.step()
        method.step()
        losses.append(loss.item())
    return model, method, losses, opt


def _assert_same(dense: tuple, sparse: tuple) -> None:
    model_d, m_d, loss_d, _ = dense
    model_s, m_s, loss_s, _ = sparse
    assert m_s.mask_version == m_d.mask_version
    for name in m_d.mask:
        assert torch.equal(m_s.mask[name], m_d.mask[name]), name
    for step, (a, b) in enumerate(zip(loss_d, loss_s)):
        assert b == pytest.approx(a, rel=1e-4), step
    sd_d, sd_s = model_d.state_dict(), model_s.state_dict()
    assert list(sd_s) == list(sd_d)  # the same names and order as nn.Linear's
    for k in sd_d:
        torch.testing.assert_close(sd_s[k], sd_d[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("name", sorted(METHODS))
def test_sparse_execution_equals_masked_dense(name: str, opt: str) -> None:
    dense = _train("dense", METHODS[name](), opt)
    sparse = _train("sparse", METHODS[name](), opt)
    assert set(sparse[1].sparse_layers) == {"0.weight", "2.weight", "4.weight"}
    assert all(isinstance(sparse[0][i], SparseTrainLinear) for i in (0, 2, 4))
    _assert_same(dense, sparse)
    if name in ("set", "rigl", "gmp"):
        assert sparse[1].mask_version > 1  # the mask moved: the comparison crossed updates


def test_rigl_with_gradient_accumulation_and_the_torch_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEFLOW_KERNELS", "torch")
    _assert_same(_train("dense", METHODS["rigl"](), "sgd", accumulate=2, steps=40),
                 _train("sparse", METHODS["rigl"](), "sgd", accumulate=2, steps=40))


def test_rigl_collects_the_dense_gradient_only_before_updates() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    method = sf.RigL(0.8, update_every=5, until=20, seed=0)
    method.prepare(model, opt, execution="sparse")
    armed = []
    g = torch.Generator().manual_seed(1)
    for _ in range(12):
        armed.append(model[0].collect_dense_grad)
        x, y = _batch(g)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        method.step()
    assert [i + 1 for i, a in enumerate(armed) if a] == [5, 10]  # the backward of steps 5 and 10 only
    assert model[0]._dense_grad is None  # handed to the method and dropped


def test_optimizer_state_shrinks_with_the_density() -> None:
    make = lambda: sf.RandomSparse(0.9, seed=0)  # noqa: E731
    _, _, _, opt_d = _train("dense", make(), "adamw", steps=2)
    model, _, _, opt_s = _train("sparse", make(), "adamw", steps=2)

    def state_numel(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> int:
        return sum(t.numel() for p in params for t in opt.state[p].values() if torch.is_tensor(t) and t.dim() > 0)

    weights_d = [p for p in opt_d.param_groups[0]["params"] if p.dim() == 2]
    weights_s = [model[i].values for i in (0, 2, 4)]
    assert state_numel(opt_s, weights_s) == pytest.approx(0.1 * state_numel(opt_d, weights_d), rel=0.01)


def test_set_execution_dense_gives_back_linear_layers_and_training_goes_on() -> None:
    a = _train("sparse", METHODS["rigl"](), "sgd", steps=30)
    model, method, _, opt = a
    method.set_execution("dense")
    assert method.execution == "dense" and method.sparse_layers == {}
    assert all(type(model[i]) is nn.Linear for i in (0, 2, 4))
    params = opt.param_groups[0]["params"]
    assert all(p is q for p, q in zip(params, model.parameters()))
    assert opt.state[model[0].weight]["momentum_buffer"].shape == (48, 20)
    reference = _train("dense", METHODS["rigl"](), "sgd", steps=30)
    torch.testing.assert_close(model[0].weight, reference[0][0].weight, rtol=1e-4, atol=1e-5)
    g = torch.Generator().manual_seed(5)
    x, y = _batch(g)
    F.cross_entropy(model(x), y).backward()  # the dense hooks mask the gradient again
    assert bool((model[0].weight.grad[~method.mask["0.weight"]] == 0).all())


def test_targets_that_are_not_linear_stay_dense_and_masked() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1, padding=1), nn.Conv2d(4, 4, 1, groups=2),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    method = sf.RandomSparse(0.7, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method.prepare(model, opt, execution="sparse")
    # a 3x3 convolution, a padded 1x1 and a grouped 1x1 stay dense
    assert list(method.sparse_layers) == ["5.weight"] and all(type(model[i]) is nn.Conv2d for i in (0, 2, 3))
    F.cross_entropy(model(torch.randn(2, 1, 8, 8)), torch.tensor([1, 2])).backward()
    opt.step()
    method.step()
    assert bool((model[0].weight[~method.mask["0.weight"]] == 0).all())


@pytest.mark.parametrize("stride, bias", [((1, 1), True), ((2, 1), False)])
def test_a_sparse_1x1_convolution_is_the_masked_convolution(stride: tuple[int, int], bias: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 10, 1, stride=stride, bias=bias).double()
    mask = torch.rand(10, 12, 1, 1) < 0.3
    layer = SparseTrainConv1x1.from_conv(conv, mask)
    assert layer.weight_shape == (10, 12, 1, 1) and layer.nnz == int(mask.sum())
    x = torch.randn(3, 12, 7, 5, dtype=torch.double, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    with torch.no_grad():
        conv.weight.mul_(mask)
    y, want = layer(x), conv(x2)
    torch.testing.assert_close(y, want)
    g = torch.randn_like(want)
    y.backward(g)
    want.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(layer.scatter(layer.values.grad), conv.weight.grad * mask)  # kept positions only
    if bias:
        torch.testing.assert_close(layer.bias.grad, conv.bias.grad)
    back = layer.to_module()
    assert type(back) is nn.Conv2d and back.stride == stride and torch.equal(back.weight, conv.weight)
    assert list(layer.state_dict()) == list(conv.state_dict())
    assert torch.equal(layer.state_dict()["weight"], conv.weight)


def test_a_sparse_conv1d_is_the_masked_conv1d() -> None:
    transformers = pytest.importorskip("transformers")
    from sparseflow.methods.sparse_linear import SparseTrainConv1D

    torch.manual_seed(0)
    conv = transformers.pytorch_utils.Conv1D(10, 12).double()  # nf=10 outputs, nx=12 inputs: weight (12, 10)
    with torch.no_grad():
        conv.bias.normal_()
    mask = torch.rand(12, 10) < 0.3
    layer = SparseTrainConv1D.from_conv1d(conv, mask)
    assert layer.weight_shape == (12, 10) and torch.equal(layer.mask, mask) and layer.nnz == int(mask.sum())
    with torch.no_grad():
        conv.weight.mul_(mask)
    x = torch.randn(3, 5, 12, dtype=torch.double, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, want = layer(x), conv(x2)
    torch.testing.assert_close(y, want)
    g = torch.randn_like(want)
    y.backward(g)
    want.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(layer.scatter(layer.values.grad), conv.weight.grad * mask)
    assert list(layer.state_dict()) == ["weight", "bias"] and torch.equal(layer.state_dict()["weight"], conv.weight)
    back = layer.to_module()
    assert type(back) is type(conv) and torch.equal(back.weight, conv.weight) and torch.equal(back.bias, conv.bias)
    fresh = SparseTrainConv1D(mask, bias=torch.zeros(10))
    fresh.load_state_dict(conv.state_dict())
    torch.testing.assert_close(fresh.double()(x), want)


def _convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 1), nn.ReLU(),
                         nn.Conv2d(32, 32, 1, stride=2, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4 * 4, 5))


@pytest.mark.parametrize("name", ["rigl", "set"])
def test_a_convolutional_net_trains_the_same_with_its_1x1_convolutions_sparse(name: str) -> None:
    g0 = torch.Generator().manual_seed(2)
    data = [(torch.randn(8, 3, 8, 8, generator=g0), torch.randint(0, 5, (8,), generator=g0)) for _ in range(40)]
    runs = {}
    for execution in ("dense", "sparse", "auto"):
        model = _convnet()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        method = METHODS[name]()
        method.prepare(model, opt, execution=execution)
        losses = []
        for x, y in data:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            method.step()
            opt.zero_grad()
            losses.append(loss.item())
        runs[execution] = (model, method, losses, opt)
    sparse = runs["sparse"]
    assert set(sparse[1].sparse_layers) == {"2.weight", "4.weight", "7.weight"}  # the 3x3 stays dense
    assert isinstance(sparse[0][2], SparseTrainConv1x1) and sparse[0][4].stride == (2, 2)
    assert sparse[1].mask_version > 1
    _assert_same(runs["dense"], sparse)
    auto = runs["auto"][1]
    rows = {"2.weight": 8 * 8 * 8, "4.weight": 8 * 4 * 4, "7.weight": 8}  # output positions of the batch
    assert {n: c["rows"] for n, c in auto._exec.choices.items()} == rows
    maps = {n: c.get("feature_map") for n, c in auto._exec.choices.items()}  # convs timed at their own layout
    assert maps == {"2.weight": (8, 8, 8), "4.weight": (8, 4, 4), "7.weight": None}
    _assert_same(runs["dense"], runs["auto"])
    sparse[1].set_execution("dense")
    assert [type(sparse[0][i]) for i in (2, 4, 7)] == [nn.Conv2d, nn.Conv2d, nn.Linear]
    assert sparse[0][4].stride == (2, 2) and sparse[0][4].bias is None
    x = data[0][0]
    torch.testing.assert_close(sparse[0](x), runs["dense"][0](x), rtol=1e-4, atol=1e-5)


def test_state_dict_save_and_load() -> None:
    model, method, _, _ = _train("sparse", METHODS["rigl"](), "sgd", steps=25)
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    plain = _mlp(5)
    plain.load_state_dict(sd)
    x = torch.randn(3, 20)
    torch.testing.assert_close(plain(x), model(x))
    again = _mlp(5)
    m2 = METHODS["rigl"]()
    m2.prepare(again, execution="sparse")
    with pytest.raises(RuntimeError, match="outside the layer's mask"):
        again.load_state_dict(sd)  # another mask: refused, not silently cut
    m2.load_state_dict(method.state_dict())
    again.load_state_dict(sd)
    torch.testing.assert_close(again(x), model(x))


def test_sfz_is_the_same_file_in_either_execution(tmp_path: Path) -> None:
    dense, m_d, _, _ = _train("dense", METHODS["random-erk"](), "sgd", steps=0)
    sparse, m_s, _, _ = _train("sparse", METHODS["random-erk"](), "sgd", steps=0)
    sf.save(tmp_path / "d.sfz", dense, mask=m_d.mask)
    sf.save(tmp_path / "s.sfz", sparse, mask=m_s.mask)
    assert (tmp_path / "d.sfz").read_bytes() == (tmp_path / "s.sfz").read_bytes()


def test_auto_records_its_choice_and_keeps_the_results() -> None:
    dense = _train("dense", METHODS["rigl"](), "sgd", steps=30)
    auto = _train("auto", METHODS["rigl"](), "sgd", steps=30)
    choices = auto[1]._exec.choices
    assert set(choices) == {"0.weight", "2.weight", "4.weight"}
    for name, c in choices.items():  # each choice follows its own measurement
        assert c["rows"] == 16
        assert c["execution"] == ("sparse" if c["dense_s"] >= SPARSE_EDGE * c["sparse_s"] else "dense"), name
        assert (name in auto[1].sparse_layers) == (c["execution"] == "sparse")
    _assert_same(dense, auto)


def test_bad_execution_is_refused() -> None:
    with pytest.raises(sf.SparseflowError, match="execution must be one of dense, sparse, auto, got 'fast'"):
        sf.RigL(0.8, until=200).prepare(_mlp(), execution="fast")
    with pytest.raises(sf.SparseflowError, match="execution"):
        TrainConfig(execution="fast")


# --- fit: checkpoints and resume -------------------------------------------------------------------
class _Crash(Callback):
    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch == 2:
            raise KeyboardInterrupt


def _loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 20, generator=g), torch.randint(0, 5, (256,), generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    return train, DataLoader(TensorDataset(x[:64], y[:64]), batch_size=64)


@pytest.mark.parametrize("execution", ["sparse", "auto"])
def test_fit_resumes_a_sparse_run_and_hands_back_linear_layers(tmp_path: Path, execution: str) -> None:
    cfg = TrainConfig(epochs=3, execution=execution, lr=0.05)
    make = lambda: sf.RigL(0.8, update_every=5, until=18, seed=0)  # noqa: E731
    full_model = _mlp()
    full = fit(full_model, *_loaders(), cfg, method=make(), run_dir=tmp_path / "a", progress=False)
    assert all(type(full_model[i]) is nn.Linear for i in (0, 2, 4))
    with pytest.raises(KeyboardInterrupt):
        fit(_mlp(), *_loaders(), cfg, method=make(), run_dir=tmp_path / "b", callbacks=[_Crash()], progress=False)
    model_b = _mlp()
    resumed = fit(model_b, *_loaders(), cfg, method=make(), run_dir=tmp_path / "b", resume=True, progress=False)
    for (name, a), b in zip(full_model.state_dict().items(), model_b.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed.history[-1]["density"] == pytest.approx(full.history[-1]["density"])
    reference_model = _mlp()
    reference = fit(reference_model, *_loaders(), TrainConfig(epochs=3, lr=0.05), method=make(), progress=False)
    assert [r["train_loss"] for r in full.history] == pytest.approx([r["train_loss"] for r in reference.history],
                                                                    rel=1e-4)
    assert full.history[-1]["density"] == pytest.approx(reference.history[-1]["density"])


def test_fit_refuses_a_resume_in_another_execution(tmp_path: Path) -> None:
    make = lambda: sf.RandomSparse(0.8, seed=0)  # noqa: E731
    fit(_mlp(), *_loaders(), TrainConfig(epochs=1), method=make(), run_dir=tmp_path, progress=False)
    with pytest.raises(sf.SparseflowError, match="execution: 'dense' in the run directory, 'sparse' now"):
        fit(_mlp(), *_loaders(), TrainConfig(epochs=1, execution="sparse"), method=make(), run_dir=tmp_path,
            resume=True, progress=False)


def _train_lm(make: Callable[[], nn.Module], execution: str) -> tuple[list[float], sf.Method, dict, nn.Module]:
    """16 steps of RigL (AdamW) on random token batches: losses, the method, a copy of the state_dict, the model."""
    torch.manual_seed(0)
    model = make()
    method = sf.RigL(0.75, update_every=4, until=12, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    method.prepare(model, opt, execution=execution)
    g, losses = torch.Generator().manual_seed(2), []
    for _ in range(16):
        ids = torch.randint(0, 64, (2, 12), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        method.step()
        losses.append(loss.item())
    return losses, method, copy.deepcopy(model.state_dict()), model


def test_a_model_from_a_config_trains_the_same_in_sparse_execution() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    (loss_d, m_d, sd_d, _), (loss_s, m_s, sd_s, _) = (_train_lm(lambda: transformers.LlamaForCausalLM(cfg), e)
                                                      for e in ("dense", "sparse"))
    assert len(m_s.sparse_layers) == 15  # q, k, v, o, gate, up, down in both layers, and lm_head
    assert loss_s == pytest.approx(loss_d, rel=1e-4)
    assert all(torch.equal(m_s.mask[n], m_d.mask[n]) for n in m_d.mask)
    for k in sd_d:
        torch.testing.assert_close(sd_s[k], sd_d[k], rtol=1e-4, atol=1e-5)


def test_gpt2_trains_the_same_with_its_conv1d_projections_sparse() -> None:
    transformers = pytest.importorskip("transformers")
    from sparseflow.methods.sparse_linear import SparseTrainConv1D

    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    (loss_d, m_d, sd_d, _), (loss_s, m_s, sd_s, model) = (_train_lm(lambda: transformers.GPT2LMHeadModel(cfg), e)
                                                          for e in ("dense", "sparse"))
    # c_attn, attn.c_proj, c_fc, mlp.c_proj in both blocks (lm_head, the embedding's matrix, is no target)
    assert len(m_s.sparse_layers) == len(m_s.mask) == 8 and model.lm_head.weight is model.transformer.wte.weight
    attn = model.transformer.h[0].attn.c_attn
    assert isinstance(attn, SparseTrainConv1D) and attn.weight_shape == (32, 96)  # Conv1D's (in, out)
    assert loss_s == pytest.approx(loss_d, rel=1e-4)
    assert all(torch.equal(m_s.mask[n], m_d.mask[n]) for n in m_d.mask)
    assert list(sd_s) == list(sd_d)
    for k in sd_d:  # AdamW divides by the gradient's own scale: on the biases, whose gradients are tiny, the
        # order of float sums moves a few entries by up to a few 1e-5 (16 steps of lr 3e-3)
        torch.testing.assert_close(sd_s[k], sd_d[k], rtol=1e-4, atol=5e-5)
    m_s.set_execution("dense")
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    torch.testing.assert_close(model.transformer.h[0].attn.c_attn.weight, sd_d["transformer.h.0.attn.c_attn.weight"],
                               rtol=1e-4, atol=1e-5)


def test_a_tied_linear_head_stays_dense_and_tied() -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 16)
            self.hidden = nn.Linear(16, 16)
            self.head = nn.Linear(16, 20, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.hidden(self.emb(ids))))

    torch.manual_seed(0)
    model = Tiny()
    method = sf.RandomSparse(0.7, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method.prepare(model, opt, execution="sparse")
    assert list(method.sparse_layers) == ["hidden.weight"] and model.head.weight is model.emb.weight
