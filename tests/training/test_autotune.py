"""The per-layer choice of execution (:mod:`sparseflow.methods.autotune`).

Behaviour only, never a timing: the choice agrees with the medians it returns (and, with the samples fixed, with
medians computed by hand); the two timed paths train the same weights (so they time the same work); the thread
count is used and restored; bad inputs are refused with one clear error.
"""

from __future__ import annotations

import time

import pytest
import torch

from sparseflow.errors import SparseflowError
from sparseflow.methods import autotune
from sparseflow.methods.autotune import choose, interleaved, masked_execution, sparse_execution, time_linear


def _mask(shape: tuple[int, int], density: float, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < density


def test_a_99_percent_sparse_big_layer_chooses_what_measured_faster() -> None:
    mask = _mask((4096, 4096), 0.01)
    t = time_linear(mask, 64, repeats=3, margin=autotune.CHOOSE_MARGIN)
    assert 2 <= t["repeats"] <= 3 and len(t["dense_samples"]) == len(t["sparse_samples"]) == t["repeats"]
    assert t["dense"] > 0 and t["sparse"] > 0
    assert t["choice"] == ("sparse" if t["sparse"] < t["dense"] else "dense")
    assert t["density"] == pytest.approx(0.01, abs=1e-3) and t["batch"] == 64 and t["optimizer"] == "sgd"
    assert choose(mask, 64) in ("sparse", "dense")


@pytest.mark.parametrize("dense, sparse, want", [
    ([3.0, 1.0, 2.0], [2.0, 2.0, 2.0], "dense"),  # equal medians (2 = 2): sparse only when faster
    ([3.0, 3.0, 3.0], [1.0, 5.0, 2.0], "sparse"),  # medians 3 and 2, despite the slowest sparse sample
    ([1.0, 1.0, 9.0], [2.0, 2.0, 0.5], "dense"),  # medians 1 and 2
])
def test_the_choice_follows_the_medians(monkeypatch: pytest.MonkeyPatch, dense, sparse, want) -> None:  # noqa: ANN001
    def fixed(steps, repeats, **kw):  # noqa: ANN001, ANN003, ANN202
        assert set(steps) == {"dense", "sparse"}
        return {"dense": list(dense), "sparse": list(sparse)}

    monkeypatch.setattr(autotune, "interleaved", fixed)
    mask = _mask((8, 16), 0.5)
    t = time_linear(mask, 4)
    assert (t["dense"], t["sparse"], t["choice"]) == (sorted(dense)[1], sorted(sparse)[1], want)
    assert choose(mask, 4) == want


@pytest.mark.parametrize("dense, want", [(1.03, "dense"), (1.10, "sparse")])
def test_a_close_call_is_timed_again_and_sparse_must_win_by_the_edge(monkeypatch: pytest.MonkeyPatch, dense,
                                                                      want) -> None:  # noqa: ANN001
    calls = []

    def fixed(steps, repeats, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append((repeats, kw.get("margin")))
        return {"dense": [dense] * repeats, "sparse": [1.0] * repeats}

    monkeypatch.setattr(autotune, "interleaved", fixed)
    t = autotune.decide(_mask((8, 16), 0.5), 4)
    # within CLOSE of each other: CLOSE_REPEATS more rounds, every round, joined to the first ones
    assert calls == [(autotune.CHOOSE_REPEATS, autotune.CHOOSE_MARGIN), (autotune.CLOSE_REPEATS, None)]
    assert t["repeats"] == autotune.CHOOSE_REPEATS + autotune.CLOSE_REPEATS == len(t["sparse_samples"])
    assert t["choice"] == want == ("sparse" if dense >= autotune.SPARSE_EDGE * 1.0 else "dense")


def test_a_plain_answer_is_not_timed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fixed(steps, repeats, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append(repeats)
        return {"dense": [3.0, 3.0], "sparse": [1.0, 1.0]}

    monkeypatch.setattr(autotune, "interleaved", fixed)
    assert autotune.decide(_mask((8, 16), 0.5), 4)["choice"] == "sparse" and calls == [autotune.CHOOSE_REPEATS]


def test_the_two_paths_train_the_same_weights() -> None:
    mask = _mask((12, 20), 0.3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 20, generator=g).requires_grad_()
    grad_y = torch.randn(5, 12, generator=g)
    for optimizer in autotune.OPTIMIZERS:
        dense, sparse = masked_execution(mask, optimizer=optimizer), sparse_execution(mask, optimizer=optimizer)
        steps = [dense.step(x, grad_y), sparse.step(x, grad_y)]
        for _ in range(4):
            for step in steps:
                step()
        w = dense.model[0].weight.detach()
        assert not w[~mask].any(), optimizer  # the masked path keeps the pruned weights at zero
        torch.testing.assert_close(w[mask], sparse.model.values.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dense.model[0].bias.detach(), sparse.model.bias.detach(), rtol=1e-5, atol=1e-6)
        assert x.grad is None  # every step leaves no gradient behind


def test_a_1x1_convolution_mask_times_the_convolution_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    mask = _mask((12, 20), 0.3).reshape(12, 20, 1, 1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 20, 3, 3, generator=g).requires_grad_()
    grad_y = torch.randn(2, 12, 3, 3, generator=g)
    dense, sparse = masked_execution(mask), sparse_execution(mask)
    assert type(dense.model[0]) is torch.nn.Conv2d and type(sparse.model).__name__ == "SparseTrainConv1x1"
    for _ in range(3):
        dense.step(x, grad_y)()
        sparse.step(x, grad_y)()
    w = dense.model[0].weight.detach()
    torch.testing.assert_close(w[mask], sparse.model.values.detach(), rtol=1e-5, atol=1e-6)
    t = time_linear(mask, 18, repeats=2)
    assert t["batch"] == 18 and t["dense"] > 0 and t["sparse"] > 0 and t["density"] == pytest.approx(float(mask.float().mean()))
    seen = []
    step = autotune.Execution.step
    monkeypatch.setattr(autotune.Execution, "step", lambda self, x, gy: (seen.append(tuple(x.shape)), step(self, x, gy))[1])
    time_linear(mask, 18, repeats=1, feature_map=(2, 3, 3))  # the layout asked for: 2 images of 3 x 3
    time_linear(mask, 18, repeats=1)  # else one image of 18 x 1
    assert seen == [(2, 20, 3, 3)] * 2 + [(1, 20, 18, 1)] * 2
    with pytest.raises(SparseflowError, match="holds 12 positions but batch is 18"):
        time_linear(mask, 18, feature_map=(3, 2, 2))
    with pytest.raises(SparseflowError, match="three integers >= 1"):
        time_linear(mask, 18, feature_map=(18, 1))
    with pytest.raises(SparseflowError, match="for 1x1 convolutions"):
        time_linear(_mask((12, 20), 0.3), 18, feature_map=(2, 3, 3))
    with pytest.raises(SparseflowError, match="out, in, 1, 1"):
        time_linear(_mask((12, 20), 0.3).reshape(12, 20, 1, 1).expand(12, 20, 3, 3), 4)


def test_the_timed_layers_are_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The masked path's gradient hook (held by autograd, out of reach of the cycle collector) would keep the
    # method, the layer and its optimizer state alive after every measurement unless it is detached.
    import weakref

    alive: list[weakref.ref] = []
    build = autotune.masked_execution

    def tracked(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        e = build(*a, **kw)
        alive.append(weakref.ref(e.model[0].weight))
        return e

    monkeypatch.setattr(autotune, "masked_execution", tracked)
    for _ in range(2):
        time_linear(_mask((32, 48), 0.2), 4, repeats=1)
    assert len(alive) == 2 and all(r() is None for r in alive)


def test_threads_are_used_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        t = time_linear(_mask((16, 32), 0.2), 8, threads=1, repeats=2, optimizer="adamw", bias=False)
        assert t["threads"] == 1 and t["repeats"] == 2 and t["optimizer"] == "adamw"
        assert torch.get_num_threads() == 2

        def broken(*a, **kw):  # noqa: ANN002, ANN003, ANN202
            raise RuntimeError("interrupted")

        monkeypatch.setattr(autotune, "interleaved", broken)
        with pytest.raises(RuntimeError):
            time_linear(_mask((16, 32), 0.2), 8, threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_interleaved_stops_when_settled_and_within_its_budget() -> None:
    calls: list[str] = []

    def fast() -> None:
        calls.append("fast")

    def slow() -> None:
        calls.append("slow")
        time.sleep(0.005)

    samples = interleaved({"fast": fast, "slow": slow}, 5, margin=2.0)
    assert len(samples["fast"]) == len(samples["slow"]) == 2  # settled after two rounds, not one
    assert calls == ["fast", "slow"] * 3  # warm-up round, then two timed rounds, in the given order
    samples = interleaved({"slow": slow}, 50, budget_s=0.001, min_repeats=2)
    assert len(samples["slow"]) == 2  # the warm-up says 50 rounds would pass the budget: the minimum
    samples = interleaved({"fast": fast}, 4, budget_s=10.0)
    assert len(samples["fast"]) == 4


@pytest.mark.parametrize("kw, needle", [
    ({"mask": torch.ones(3, 4)}, "2-D bool tensor"),
    ({"mask": torch.ones(4, dtype=torch.bool)}, r"shape \(4,\)"),
    ({"mask": [[True]]}, "got list"),
    ({"mask": torch.zeros(3, 4, dtype=torch.bool)}, "keeps no weight"),
    ({"batch": 0}, "batch must be an integer >= 1, got 0"),
    ({"batch": True}, "got True"),
    ({"optimizer": "adam"}, "'adam'.*choose one of sgd, adamw"),
    ({"threads": 0}, "threads must be an integer >= 1, got 0"),
    ({"repeats": 0}, "repeats must be an integer >= 1, got 0"),
    ({"margin": 1.0}, "margin must be a number > 1"),
])
def test_bad_inputs_are_one_clear_error(kw: dict, needle: str) -> None:
    args = {"mask": _mask((3, 4), 0.5, seed=2) | torch.eye(3, 4, dtype=torch.bool), "batch": 2, **kw}
    mask, batch = args.pop("mask"), args.pop("batch")
    with pytest.raises(SparseflowError, match=needle):
        time_linear(mask, batch, **args)
    with pytest.raises(SparseflowError, match=needle):
        choose(mask, batch, **args)
