"""``sparseflow bench inference``: the criteria are computed from the measured cells (no timing asserted)."""

from __future__ import annotations

from sparseflow.bench.inference import Cell, METHODS, criteria, erk_mlp


def cell(d, b, t, ours, dense=10.0, scipy=5.0):
    ms = {m: None for m in METHODS} | {"dense_mm": dense, "dense_linear": dense, "scipy_csr": scipy, "ours": ours}
    return Cell(4096, 4096, d, b, t, ms, 6.4, "csr")


def test_criteria_follow_the_measurements():
    cells = [cell(0.1, 1, 1, 2.0), cell(0.1, 16, 1, 1.0), cell(0.1, 16, 2, 0.5), cell(0.05, 1, 1, 1.25)]
    crit = criteria(cells, [], [{"max_rel_err": 2e-7}])
    assert crit["4096x4096 90% sparse batch 1 1 thread warm: ours vs dense"] == {"value": 5.0, "target": ">= 4.5x", "pass": True}
    assert crit["4096x4096 90% sparse batch 1 1 thread warm: ours vs scipy"]["value"] == 2.5
    assert crit["4096x4096 95% sparse batch 1 1 thread warm: ours vs dense"]["pass"] is False  # 8x < 9x
    assert crit["4096x4096 90% sparse batch 16: 2 threads vs 1 thread (ours)"]["value"] == 2.0
    assert crit["every cell: ours vs the faster dense (worst cell)"]["value"] == 5.0
    assert crit["MLP 784-4096-4096-10 90% ERK: max relative error vs dense"]["pass"] is True


def test_erk_mlp_is_90_percent_sparse():
    m = erk_mlp()
    ws = [m[i].weight for i in (0, 2, 4)]
    kept = sum(int((w != 0).sum()) for w in ws)
    total = sum(w.numel() for w in ws)
    assert abs(kept / total - 0.1) < 0.002
