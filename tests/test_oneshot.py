"""Wanda and SparseGPT against oracles.

- Wanda's mask is the per-row top-k of |W_ij|·‖X_j‖₂, with X collected by hand; on GPT-2 the calibration is
  sequential: a hand-written loop over the blocks, each calibrated on the full forward pass of the model whose
  earlier blocks are already pruned, gives the same masks.
- SparseGPT removing one weight (the first column) equals the optimal-brain-surgeon closed form
  δw = −(w_q / [H⁻¹]_qq)·H⁻¹_{:,q}; its reconstruction error is at most that of the same mask without the
  update; an H that is not positive definite gets more damping, never NaNs.
- N:M masks are valid along the input axis; pruned models save, load and convert to outputs equal to dense.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import realmodels as rm
import sparseflow as sf
from sparseflow.layouts import call, output_tensor, split_batch
from sparseflow.methods.oneshot import sparsegpt


def _row_topk(scores: torch.Tensor, keep: int) -> torch.Tensor:
    per = keep // scores.shape[0]
    idx = scores.argsort(dim=1, descending=True, stable=True)[:, :per]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)


def test_wanda_on_a_linear_is_the_per_row_top_k_of_weight_times_input_norm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8))
    x = torch.randn(32, 12) * torch.linspace(0.1, 3, 12)  # features of very different scales
    expected = _row_topk(model[0].weight.detach().abs() * x.norm(dim=0), 8 * 6)
    wanda = sf.Wanda(0.5, data=(x, torch.zeros(32, dtype=torch.long)))
    wanda.prepare(model)
    assert torch.equal(wanda.mask["0.weight"], expected)
    assert torch.equal(model[0].weight != 0, expected)


def test_wanda_on_gpt2_equals_a_hand_written_loop_over_blocks() -> None:
    model, batch, _ = rm.gpt2()
    wanda = sf.Wanda(0.5, data=batch, batches=1)
    wanda.prepare(model)
    ref, _, _ = rm.gpt2()
    ref.eval()
    names = list(sf.Targets().select(ref))
    for i in range(len(ref.transformer.h)):
        inside = [n for n in names if n.startswith(f"transformer.h.{i}.")]
        norms: dict[str, torch.Tensor] = {}
        hooks = [ref.get_submodule(n.rsplit(".", 1)[0]).register_forward_pre_hook(
            lambda m, args, n=n: norms.__setitem__(n, args[0].reshape(-1, args[0].shape[-1]).norm(dim=0)))
            for n in inside]
        with torch.no_grad():
            ref(input_ids=batch["input_ids"])  # the full model, earlier blocks already pruned
        for h in hooks:
            h.remove()
        for n in inside:
            w = ref.get_parameter(n)  # Conv1D: (in, out); a row of the (out, in) view is a column here
            mask = _row_topk(w.detach().T.abs() * norms[n], w.numel() // 2).T
            assert torch.equal(wanda.mask[n], mask), n
            with torch.no_grad():
                w.mul_(mask)


def test_sparsegpt_removing_one_weight_is_the_obs_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    h = 2 * x.T @ x / 64
    w = torch.randn(1, 6, generator=g, dtype=torch.float64)
    w[0, 0] = 1e-3  # the one weight to remove: the smallest w² / [H⁻¹]²_qq
    mask, new, lam = sparsegpt(w, h, keep=5, blocksize=6, damp=0.01)
    assert mask.tolist() == [[False, True, True, True, True, True]]
    hinv = torch.linalg.inv(h + lam * torch.eye(6, dtype=torch.float64))
    obs = w - (w[0, 0] / hinv[0, 0]) * hinv[:, 0]  # δw = -(w_q / [H⁻¹]_qq) H⁻¹_{:,q}
    assert torch.allclose(new, obs * mask, rtol=1e-9, atol=1e-12)


def test_sparsegpt_reconstructs_at_least_as_well_as_its_mask_alone() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 32, generator=g, dtype=torch.float64) @ torch.randn(32, 32, generator=g, dtype=torch.float64)
    h = 2 * x.T @ x / 256
    w = torch.randn(16, 32, generator=g, dtype=torch.float64)
    for pattern in (sf.Unstructured(), sf.NM(2, 4)):
        mask, new, _ = sparsegpt(w, h, keep=16 * 16, pattern=pattern, blocksize=8)
        assert int(mask.sum()) == 16 * 16
        err = lambda v: float(((w - v) @ h * (w - v)).sum())  # noqa: E731 - ‖(W − W')X‖² up to 2/n
        assert err(new) <= err(w * mask)
        if isinstance(pattern, sf.NM):
            assert (mask.reshape(16, 8, 4).sum(-1) == 2).all()


def test_an_indefinite_hessian_gets_more_damping_not_nans() -> None:
    h = torch.zeros(4, 4, dtype=torch.float64)
    h[0, 0], h[1, 1], h[0, 1], h[1, 0] = 1.0, 1.0, 2.0, 2.0  # eigenvalues 3 and -1
    w = torch.ones(2, 4, dtype=torch.float64)
    mask, new, lam = sparsegpt(w, h, keep=4)
    assert lam > 0.01 and bool(torch.isfinite(new).all()) and int(mask.sum()) == 4


@pytest.mark.parametrize("method", [sf.Wanda, sf.SparseGPT])
def test_two_four_on_gpt2_is_valid_and_the_pruned_model_saves_and_converts(method: type, tmp_path) -> None:  # noqa: ANN001
    model, batch, _ = rm.gpt2()
    pruner = method(0.5, data=batch, pattern=sf.NM(2, 4))
    pruner.prepare(model)
    for name, m in pruner.mask.items():
        assert (m.reshape(m.shape[0] // 4, 4, m.shape[1]).sum(1) == 2).all(), name  # Conv1D: inputs along dim 0
        assert torch.equal(model.get_parameter(name) != 0, m & (model.get_parameter(name) != 0))
        assert not bool((model.get_parameter(name)[~m] != 0).any())
    assert [r.name for r in pruner.report] == list(pruner.mask)
    assert all(0 <= r.error < 1 and r.density == 0.5 for r in pruner.report)
    model.eval()
    x, _ = split_batch(batch)
    with torch.no_grad():
        dense = output_tensor(call(model, x))
    sf.save(tmp_path / "m.sfz", model, mask=pruner.mask)
    fresh, _, _ = rm.gpt2()
    sf.load(tmp_path / "m.sfz", fresh)
    with torch.no_grad():
        assert torch.equal(output_tensor(call(fresh.eval(), x)), dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = sf.convert(model, measure=False)
    with torch.no_grad():
        out = output_tensor(call(fast, x))
    assert float((out - dense).abs().max()) <= 1e-5 * float(dense.abs().max())


def test_sparsegpt_lowers_the_output_error_of_wanda_and_magnitude_on_the_encoder() -> None:
    errors = {}
    for name, make in (("magnitude", lambda b: sf.MagnitudePruning(0.6)),
                       ("wanda", lambda b: sf.Wanda(0.6, data=b)), ("sparsegpt", lambda b: sf.SparseGPT(0.6, data=b))):
        model, (x, y), _ = rm.transformer_encoder()
        model.eval()
        with torch.no_grad():
            dense = model(x)
        make((x, y)).prepare(model)
        with torch.no_grad():
            errors[name] = float((model(x) - dense).norm() / dense.norm())
    assert errors["sparsegpt"] < errors["magnitude"]


def test_bad_arguments() -> None:
    with pytest.raises(sf.SparseflowError, match="needs calibration data"):
        sf.Wanda(0.5)
    with pytest.raises(sf.SparseflowError, match="not GLOBAL"):
        sf.SparseGPT(0.5, data=(torch.zeros(1, 2), torch.zeros(1)), distribution=sf.GLOBAL)
    with pytest.raises(sf.SparseflowError, match="per must be"):
        sf.Wanda(0.5, data=(torch.zeros(1, 2), torch.zeros(1)), per="column")
    with pytest.raises(sf.SparseflowError, match="damp must be in"):
        sf.SparseGPT(0.5, data=(torch.zeros(1, 2), torch.zeros(1)), damp=0)
