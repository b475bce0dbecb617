"""Lottery tickets: config hash, level schedule, pruning masks and the fixed-mask method, against oracles."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from sparseflow.errors import MaskError, SparseflowError
from sparseflow.lottery import LotteryJob, level_counts, next_mask, random_mask
from sparseflow.mask import Mask
from sparseflow.methods.fixed import FixedMask


def test_run_directory_hash_is_pinned() -> None:
    # Pinned: changing these values renames every existing run directory, so it must be deliberate.
    assert LotteryJob().digest() == LotteryJob(seeds=(0, 1, 2)).digest()  # replicates share one run
    assert LotteryJob().non_default() == {}
    assert LotteryJob().run_name() == "lottery-mnist1d-mlp-44136fa355"
    job = LotteryJob(dataset="mnist", model="lenet300-100", prune_fraction=0.3, rewind_step=100)
    assert job.non_default() == {"dataset": "mnist", "model": "lenet300-100", "hidden": None,
                                 "prune_fraction": 0.3, "rewind_step": 100}
    assert job.run_name() == "lottery-mnist-lenet300-100-" + job.digest()
    text = '{"dataset":"mnist","hidden":null,"model":"lenet300-100","prune_fraction":0.3,"rewind_step":100}'
    assert job.digest() == hashlib.sha256(text.encode()).hexdigest()[:10] == "b61848570f"


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.2, float("nan")])
def test_prune_fraction_outside_open_interval_is_refused(fraction: float) -> None:
    with pytest.raises(SparseflowError, match=r"prune_fraction must be in \(0, 1\)"):
        LotteryJob(prune_fraction=fraction)


def test_rewind_step_beyond_training_is_refused() -> None:
    with pytest.raises(SparseflowError, match="beyond the training length"):
        LotteryJob(iterations=100, rewind_step=100)
    LotteryJob(iterations=100, rewind_step=99)  # the last step is still inside


def test_level_schedule_by_hand() -> None:
    # 20 % of the remaining, rounded half up; the output layer at 10 %: 100 -> 80 -> 64 -> 51, 10 -> 9 -> 8 -> 7.
    job = LotteryJob(target_density=None, levels=3)
    assert level_counts(job, {"a": 100, "out": 10}) == [
        {"a": 100, "out": 10}, {"a": 80, "out": 9}, {"a": 64, "out": 8}, {"a": 51, "out": 7}]
    # Target density: stop at the first level at or below it: (64 + 8) / 110 = 0.6545 <= 0.66.
    assert len(level_counts(LotteryJob(target_density=0.66), {"a": 100, "out": 10})) == 3
    # Global: the hidden layers share one count.
    glob = LotteryJob(target_density=None, levels=1, scope="global")
    assert level_counts(glob, {"a": 60, "b": 40, "out": 10}) == [{"hidden": 100, "out": 10}, {"hidden": 80, "out": 9}]


def test_unreachable_target_density_is_refused() -> None:
    with pytest.raises(SparseflowError, match="not reachable in 2 levels"):
        level_counts(LotteryJob(target_density=0.036, levels=2), {"a": 1000, "out": 100})
    # 0.8^15 * 266,200 weights: LeNet-300-100 reaches 3.6 % at level 15, as in Frankle & Carbin.
    sizes = {"l0": 784 * 300, "l1": 300 * 100, "l2": 100 * 10}
    counts = level_counts(LotteryJob(target_density=0.036), sizes)
    assert len(counts) == 16 and sum(counts[-1].values()) / sum(sizes.values()) == pytest.approx(0.0358, abs=5e-4)


def test_next_mask_layerwise_keeps_largest_surviving_magnitudes() -> None:
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(6, 5, generator=g), "out": torch.randn(3, 6, generator=g)}
    cur = Mask({"a": torch.rand(6, 5, generator=g) > 0.3, "out": torch.ones(3, 6, dtype=torch.bool)})
    new = next_mask(cur, w, {"a": 10, "out": 15})
    for n, k in (("a", 10), ("out", 15)):
        # Oracle: sort the surviving |w| and keep the k largest.
        alive = w[n].abs()[cur[n]]
        threshold = alive.sort(descending=True).values[k - 1]
        want = cur[n] & (w[n].abs() >= threshold)
        assert torch.equal(new[n], want)
        assert not (new[n] & ~cur[n]).any()  # nested


def test_next_mask_global_ranks_hidden_layers_together() -> None:
    g = torch.Generator().manual_seed(1)
    w = {"a": torch.randn(4, 5, generator=g) * 3, "b": torch.randn(5, 4, generator=g), "out": torch.randn(2, 5, generator=g)}
    cur = Mask.ones(w)
    new = next_mask(cur, w, {"hidden": 12, "out": 9})
    flat = torch.cat([w["a"].abs().flatten(), w["b"].abs().flatten()])
    threshold = flat.sort(descending=True).values[11]
    assert torch.equal(new["a"], w["a"].abs() >= threshold) and torch.equal(new["b"], w["b"].abs() >= threshold)
    assert new.counts()["out"] == 9
    assert new.counts()["a"] > new.counts()["b"]  # the larger-scaled layer keeps more


def test_random_mask_keeps_per_layer_counts() -> None:
    cur = Mask({"a": torch.arange(40).reshape(8, 5) % 3 == 0, "out": torch.arange(12).reshape(3, 4) < 5})
    r1, r2 = random_mask(cur, 7), random_mask(cur, 7)
    assert r1.counts() == cur.counts() and r1 == r2
    assert random_mask(cur, 8) != r1


def test_fixed_mask_zeroes_outside_and_never_rescales(make_tiny_mlp) -> None:
    model = make_tiny_mlp()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    keep = {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters() if n.endswith("weight")}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    method = FixedMask(keep=keep)
    method.prepare(model, opt)
    assert method.sparsity == pytest.approx(1 - Mask(keep).density())
    for n, p in model.named_parameters():
        if n in keep:  # kept values unchanged (no sparse-init rescale), the rest exactly zero
            assert torch.equal(p.detach(), before[n] * keep[n])
    for _ in range(5):
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        method.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if n in keep:
            assert not p.detach()[~keep[n]].any()
    with pytest.raises(SparseflowError, match="sparse_init"):
        FixedMask(keep=keep, sparse_init=True)
    bad = dict(keep)
    bad.pop(next(iter(bad)))
    with pytest.raises(MaskError, match="targets of this model"):
        FixedMask(keep=bad).prepare(make_tiny_mlp(), None)
    assert math.isclose(FixedMask(keep=keep).density(), 1.0)  # not prepared yet: the all-ones start


def test_lottery_offers_no_language_models() -> None:
    # its loop reads one label per example: the GPTs and the text set belong to `sparseflow train`
    for kw in ({"model": "gpt"}, {"model": "hf-gpt2"}, {"dataset": "tinyshakespeare"}):
        with pytest.raises(SparseflowError, match="must be one of"):
            LotteryJob(**kw)
