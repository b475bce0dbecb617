"""SNIP, GraSP and SynFlow on Hugging Face and attention models, and fit on dict batches.

Oracles: SNIP's mask equals the global top-k of |w · ∂L/∂w| computed by hand with plain autograd on the
model's own loss; GraSP on attention runs (its double backward needs the math attention kernel) and keeps
the exact count; SynFlow's example input equals an all-ones batch; fit on dict batches ends where the
same loop written by hand ends.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import realmodels as rm
import sparseflow as sf
from sparseflow.patterns import topk_mask


def _hand_snip(model: torch.nn.Module, batch: dict, names: list[str], sparsity: float) -> dict[str, torch.Tensor]:
    model.eval()
    model.zero_grad()
    model(**batch).loss.backward()
    scores = {n: (model.get_parameter(n).grad * model.get_parameter(n)).abs().detach() for n in names}
    model.zero_grad()
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep = topk_mask(flat, flat.numel() - round(sparsity * flat.numel()))
    out, i = {}, 0
    for n, s in scores.items():
        out[n] = keep[i: i + s.numel()].reshape(s.shape)
        i += s.numel()
    return out


@pytest.mark.parametrize("arch", ["gpt2", "t5", "hf_resnet"])
def test_snip_on_a_hugging_face_batch_equals_the_hand_computed_saliency(arch: str) -> None:
    model, batch, _ = rm.ARCHS[arch]()
    names = list(sf.Targets().select(model))
    expected = _hand_snip(model, batch, names, 0.8)
    model, batch, _ = rm.ARCHS[arch]()
    snip = sf.SNIP(0.8, data=batch, sparse_init=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the global floor warning, not under test here
        snip.prepare(model)
    for n in names:
        assert torch.equal(snip.mask[n], expected[n]), n


def test_grasp_refuses_a_model_computing_its_own_loss_with_a_temperature_and_runs_with_a_loss() -> None:
    model, batch, _ = rm.gpt2()
    with pytest.raises(sf.SparseflowError, match=r"temperature=200.*pass loss=\(output, labels\)"):
        sf.GraSP(0.5, data=batch).prepare(model)

    def lm_loss(out, labels):  # noqa: ANN001, ANN202 - the shifted next-token loss, as the model computes it
        return torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1))

    grasp = sf.GraSP(0.5, data=batch, loss=lm_loss)
    grasp.prepare(model)
    assert grasp.mask.count() == grasp.mask.numel() - round(0.5 * grasp.mask.numel())


@pytest.mark.parametrize("arch", ["mha", "transformer_encoder"])
def test_grasp_runs_through_attention(arch: str) -> None:
    model, batch, _ = rm.ARCHS[arch]()
    grasp = sf.GraSP(0.7, data=batch)
    grasp.prepare(model)
    assert grasp.mask.count() == grasp.mask.numel() - round(0.7 * grasp.mask.numel())
    for n, m in grasp.mask.items():
        assert torch.equal(model.get_parameter(n) != 0, m)


def test_synflow_example_batch_is_the_all_ones_input() -> None:
    model, (x, y), _ = rm.conv1d()
    a = sf.SynFlow(0.8, rounds=3, input_shape=tuple(x.shape[1:]))
    a.prepare(model)
    model, (x, y), _ = rm.conv1d()
    b = sf.SynFlow(0.8, rounds=3, example=(x, y))
    b.prepare(model)
    assert a.mask == b.mask
    model, batch, _ = rm.gpt2()  # token ids are kept, not replaced by ones
    c = sf.SynFlow(0.8, rounds=3, example=batch)
    c.prepare(model)
    assert c.mask.count() == c.mask.numel() - round(0.8 * c.mask.numel())
    with pytest.raises(sf.SparseflowError, match="example= a batch from your loader"):
        sf.SynFlow(0.8, rounds=3).prepare(rm.gpt2()[0])


class _Tokens(Dataset):
    def __init__(self) -> None:
        self.ids = torch.randint(1, rm.VOCAB, (16, rm.SEQ), generator=torch.Generator().manual_seed(3))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_fit_on_dict_batches_ends_where_the_hand_written_loop_ends() -> None:
    cfg = sf.TrainConfig(epochs=2, lr=0.05, momentum=0.0, weight_decay=0.0, seed=0, lr_schedule="constant")
    loader = lambda: DataLoader(_Tokens(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))  # noqa: E731
    model, _, _ = rm.gpt2()
    result = sf.fit(model, loader(), loader(), cfg, method=sf.GMP(0.5, end=4, every=2), progress=False)
    assert result.test_acc != result.test_acc  # NaN: a language model has no per-example accuracy
    ref, _, _ = rm.gpt2()
    torch.manual_seed(0)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    gmp = sf.GMP(0.5, end=4, every=2)
    gmp.prepare(ref, opt)
    train = loader()
    for _epoch in range(2):
        for batch in train:
            ref(**batch).loss.backward()
            opt.step(); gmp.step(); opt.zero_grad()
    for (n, p), q in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), n
    with torch.no_grad():
        test_loss = sum(float(ref.eval()(**b).loss) * len(b["input_ids"]) for b in loader()) / 16
    assert result.test_loss == pytest.approx(test_loss, rel=1e-5)
