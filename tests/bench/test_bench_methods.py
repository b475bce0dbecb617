"""bench methods: every variant runs on one budget, and the criteria are computed from the measurements."""

from __future__ import annotations

import pytest

from sparseflow.bench.methods import VARIANTS, MethodsConfig, criteria, methods_benchmark
from sparseflow.bench.overhead import CASES, QUICK_CASES, OverheadConfig, OverheadResult, OverheadRow
from sparseflow.training.options import build


def _result(means: dict[tuple[str, float], float], sparsities: list[float]) -> dict:
    rows = [{"method": m, "sparsity": s, "mean": v, "std": 0.0} for (m, s), v in means.items()]
    return {"config": {"sparsities": sparsities}, "rows": rows}


def test_criteria_are_computed_from_the_means() -> None:
    means = {("dense", 0.0): 0.980, ("RigL", 0.9): 0.977, ("RigL", 0.95): 0.970, ("SET", 0.95): 0.972,
             ("static ERK", 0.95): 0.960, ("static uniform", 0.95): 0.965, ("static ERK", 0.9): 0.97,
             ("static uniform", 0.9): 0.96}
    c = criteria(_result(means, [0.9, 0.95]), rigl_ratio=1.07)
    gap = c["RigL within 0.5 pp of dense at 90%"]
    assert gap["value"] == pytest.approx(0.3) and gap["pass"] is True
    order = c["RigL >= SET >= static ERK at 0.95"]
    assert order["value"] == [97.0, 97.2, 96.0] and order["pass"] is False  # SET beat RigL here
    assert c["static ERK >= uniform at 0.95"]["pass"] is False
    assert c["static ERK >= uniform at 0.9"]["value"] == pytest.approx(1.0) and c["static ERK >= uniform at 0.9"]["pass"]
    assert c["RigL amortised step overhead vs dense (dT=100)"]["pass"] is False


@pytest.mark.slow
def test_every_variant_trains_on_the_same_budget() -> None:
    cfg = MethodsConfig(dataset="digits", sparsities=(0.9,), seeds=1, epochs=2, batch_size=64, lr=0.05)
    seen = []
    result = methods_benchmark(cfg, data_dir=None, workers=1, on_result=lambda spec, acc: seen.append(spec.label))
    assert sorted(seen) == sorted(["dense", *[label for label, _, _ in VARIANTS]])
    for row in result["rows"]:
        assert 0.0 <= row["mean"] <= 1.0 and row["n"] == 1
        if row["method"] != "dense":
            # every method really is sparse at the end: no more nonzeros than the mask allows
            assert row["measured_sparsity"] >= 0.9 - 1e-3, row


def test_quick_scale_reports_what_it_cannot_test_as_null() -> None:
    """The quick run (MNIST-1D, two seeds, 5 timing repeats) cannot test the 0.5 pp gap to dense, an MNIST
    expectation, nor a 5 % timing bound: "pass" is None with the reason; the orderings are still tested."""
    means = {("dense", 0.0): 0.60, ("RigL", 0.9): 0.41, ("static ERK", 0.9): 0.40, ("static uniform", 0.9): 0.37}
    quick = _result(means, [0.9])
    quick["config"]["dataset"], quick["overhead_repeats"] = "mnist1d", 5
    c = criteria(quick, rigl_ratio=1.17)
    gap = c["RigL within 0.5 pp of dense at 90%"]
    assert gap["value"] == pytest.approx(19.0) and gap["pass"] is None and "MNIST-1D" in gap["note"]
    timing = c["RigL amortised step overhead vs dense (dT=100)"]
    assert timing["value"] == 1.17 and timing["pass"] is None and "10 repeats" in timing["note"]
    assert c["static ERK >= uniform at 0.9"]["pass"] is True  # an ordering: tested at any scale
    full = _result(means, [0.9])
    full["config"]["dataset"], full["overhead_repeats"] = "mnist", 10
    assert criteria(full, rigl_ratio=1.17)["RigL within 0.5 pp of dense at 90%"]["pass"] is False
    assert criteria(full, rigl_ratio=1.17)["RigL amortised step overhead vs dense (dT=100)"]["pass"] is False


def test_overhead_bound_is_tested_on_the_full_cases_only() -> None:
    rows = (OverheadRow("lenet300-100 b128", "dense", 1.0, None, None, 1.0),
            OverheadRow("lenet300-100 b128", "static", 1.2, None, None, 1.2))
    full = OverheadResult(rows, 2, 0.9, 10, tuple(c.name for c in CASES))
    assert full.criteria()["static overhead, lenet300-100 b128"]["pass"] is False
    quick = OverheadResult(rows, 2, 0.9, 5, tuple(c.name for c in QUICK_CASES))
    c = quick.criteria()["static overhead, lenet300-100 b128"]
    assert c["pass"] is None and c["value"] == 1.2 and "mlp 1024-1024-1024-10 b64 with 5" in c["note"]
    cfg = build(OverheadConfig, {}, quick=True)  # what --quick runs
    assert (cfg.repeats, cfg.cases) == (5, QUICK_CASES)
