"""GPU: the real-model paths on a CUDA device agree with the CPU (skipped without CUDA).

Oracles: the CPU run of the same seeded model. Masks chosen by ranking may differ at near-ties between
devices, so the checks are exact counts, zeros held, and agreement of masks and outputs within tolerances.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import realmodels as rm
import sparseflow as sf
from sparseflow.layouts import call, output_tensor, split_batch, to_device

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _on(arch: str, device: str):  # noqa: ANN202
    model, batch, loss = rm.ARCHS[arch]()
    return model.to(device), to_device(batch, device), loss


@pytest.mark.parametrize("arch", ["gpt2", "transformer_encoder", "llama"])
def test_rigl_with_adamw_on_cuda_holds_its_mask(arch: str) -> None:
    model, batch, loss = _on(arch, "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rigl = sf.RigL(0.8, update_every=5, until=15)
    rigl.prepare(model, opt)
    counts = rigl.mask.counts()
    for _ in range(20):
        loss(model, batch).backward()
        opt.step(); rigl.step(); opt.zero_grad()
        for n, m in rigl.mask.items():
            assert not bool((model.get_parameter(n)[~m] != 0).any()), n
    assert rigl.mask.counts() == counts


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_saliency_through_attention_on_cuda_matches_the_cpu(method: str) -> None:
    masks = {}
    for device in ("cpu", "cuda"):
        model, batch, _ = _on("transformer_encoder", device)
        make = sf.SNIP if method == "snip" else sf.GraSP
        m = make(0.7, data=batch)
        m.prepare(model)
        masks[device] = {n: t.cpu() for n, t in m.mask.items()}
    agree = sum(int((masks["cpu"][n] == masks["cuda"][n]).sum()) for n in masks["cpu"])
    total = sum(t.numel() for t in masks["cpu"].values())
    assert agree / total > 0.99


@pytest.mark.parametrize("method", [sf.Wanda, sf.SparseGPT])
def test_oneshot_on_cuda_matches_the_cpu(method: type) -> None:
    out = {}
    for device in ("cpu", "cuda"):
        model, batch, _ = _on("gpt2", device)
        pruner = method(0.5, data=batch, pattern=sf.NM(2, 4))
        pruner.prepare(model)
        x, _ = split_batch(batch)
        with torch.no_grad():
            out[device] = output_tensor(call(model.eval(), x)).cpu()
        for n, m in pruner.mask.items():
            assert (m.reshape(m.shape[0] // 4, 4, m.shape[1]).sum(1) == 2).all(), n
    assert float((out["cpu"] - out["cuda"]).abs().max()) <= 1e-3 * float(out["cpu"].abs().max())


@pytest.mark.parametrize("arch", ["lstm", "gru", "gpt2"])
def test_signal_on_cuda_matches_the_cpu(arch: str) -> None:
    reports = {}
    for device in ("cpu", "cuda"):
        model, batch, _ = _on(arch, device)
        reports[device] = sf.signal(model, batch)
    for a, b in zip(reports["cpu"].layers, reports["cuda"].layers):
        assert a.name == b.name
        if a.q is not None:
            assert b.q == pytest.approx(a.q, rel=1e-3), a.name


def test_save_from_cuda_and_convert_on_the_cpu(tmp_path) -> None:  # noqa: ANN001
    model, batch, _ = _on("gpt2", "cuda")
    gmp = sf.MagnitudePruning(0.9)
    gmp.prepare(model)
    sf.save(tmp_path / "m.sfz", model, mask=gmp.mask)
    cpu, batch_cpu, _ = rm.gpt2()
    sf.load(tmp_path / "m.sfz", cpu)
    loaded = sf.load_mask(tmp_path / "m.sfz")
    assert set(loaded) == set(gmp.mask) and all(torch.equal(loaded[n], gmp.mask[n].cpu()) for n in gmp.mask)
    x, _ = split_batch(batch_cpu)
    with torch.no_grad():
        dense = output_tensor(call(cpu.eval(), x))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = sf.convert(cpu, measure=False)
        assert float((output_tensor(call(fast, x)) - dense).abs().max()) <= 1e-5 * float(dense.abs().max())
