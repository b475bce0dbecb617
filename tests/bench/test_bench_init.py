"""bench init: the paired statistics and the criterion on hand-made runs, He's init against its definition,
the arms against the library's own rescale_, and a quick CLI run."""

from __future__ import annotations

import json
import math

import pytest
import torch

import sparseflow as sf
from sparseflow.bench.sparse_init import (ARMS, METHODS, InitBenchConfig, InitBenchResult, Spec, _run, he_init_,
                                          specs)


def _result(diffs: dict[str, tuple[float, ...]], default: str = "on", seeds: int = 3) -> InitBenchResult:
    cfg = InitBenchConfig(seeds=seeds, depths=("lenet300-100",))
    runs = [(Spec("lenet300-100", "dense", "dense", None, "dense", k), 0.98, 0.1, None) for k in range(seeds)]
    for label, m, dist in METHODS:
        d = diffs.get(label, (0.0,) * seeds)
        for k in range(seeds):
            runs.append((Spec("lenet300-100", label, m, dist, "off", k), 0.95, 0.1, None))
            runs.append((Spec("lenet300-100", label, m, dist, "on", k), 0.95 + d[k] / 100, 0.1, "rescaled"))
        runs.append((Spec("lenet300-100", label, m, dist, "default", 0), math.nan, math.nan,
                     "rescaled" if default == "on" else None))
    return InitBenchResult(cfg, tuple(runs))


def test_paired_difference_and_interval_by_hand() -> None:
    rows = {r["method"]: r for r in _result({"SNIP": (1.0, 2.0, 3.0)}).rows()}
    snip = rows["SNIP"]
    # differences 1, 2, 3 pp: mean 2, sample std 1, half-width t(2) * 1 / sqrt(3) = 4.303 / 1.732
    assert snip["diff_pp"] == pytest.approx(2.0) and snip["ci95_pp"] == pytest.approx(4.303 / math.sqrt(3))
    assert snip["on"] == pytest.approx(0.97) and snip["off"] == pytest.approx(0.95) and snip["on_does"] == "rescaled"
    assert snip["default"] == "on" and snip["dense"] == pytest.approx(0.98) and snip["n"] == 3


def test_criterion_fails_only_when_the_default_is_resolved_worse() -> None:
    ok = _result({"SNIP": (-0.5, 0.5, -0.3)}).criteria()["default not worse, lenet300-100"]
    assert ok["pass"] is True and ok["value"] == pytest.approx(-0.1)
    bad = _result({"GraSP": (-1.0, -1.1, -0.9)}).criteria()["default not worse, lenet300-100"]
    assert bad["pass"] is False and bad["resolved_worse"] == ["GraSP"]
    # the same runs with the default off: now the "on" arm's loss is the default's gain
    flipped = _result({"GraSP": (-1.0, -1.1, -0.9)}, default="off").criteria()["default not worse, lenet300-100"]
    assert flipped["pass"] is True and flipped["value"] == pytest.approx(0.0)
    assert _result({}, seeds=1).criteria()["default not worse, lenet300-100"]["pass"] is None


def test_he_init_has_he_variance_and_zero_bias() -> None:
    model = sf.build_model("mlp", (512,), 10, hidden=(1024, 1024), seed=0)
    he_init_(model, 3)
    first = model.layers[1]
    assert float(first.weight.detach().var()) == pytest.approx(2 / 1024, rel=0.02)
    assert all(float(m.bias.abs().max()) == 0 for m in model.layers)


def test_grid_has_every_method_arm_seed_and_one_default_probe() -> None:
    cfg = InitBenchConfig(seeds=2)
    todo = specs(cfg)
    assert len(todo) == 2 * (2 + len(METHODS) * (len(ARMS) * 2 + 1))
    assert todo[0].depth == "mlp20"  # the deep runs go first
    assert {sp.label for sp in todo} == {"dense", *(m[0] for m in METHODS)}


def test_arms_differ_exactly_by_rescale(tmp_path) -> None:
    # The "on" arm's weights after prepare are the "off" arm's with every unit's dense squared norm given back.
    cfg = InitBenchConfig(seeds=1, depths=("mlp20",), dataset="mnist1d", subset=256, epochs=1, quick=True)
    _, _, _, on = _run(Spec("mlp20", "static ERK", "random", "erk", "default", 0), cfg, None, 1)
    assert on == "rescaled"  # the library's default for RandomSparse
    _, _, _, on = _run(Spec("mlp20", "SNIP", "snip", None, "default", 0), cfg, None, 1)
    assert on == "calibrated"  # SNIP has a data batch to calibrate on
    a = sf.build_model("mlp", (40,), 10, hidden=(256,) * 19, seed=0)
    b = sf.build_model("mlp", (40,), 10, hidden=(256,) * 19, seed=0)
    he_init_(a, 0)
    he_init_(b, 0)
    sf.RandomSparse(0.9, distribution=sf.erk, seed=1, sparse_init=True).prepare(a)
    norms = sf.unit_norms(b)
    sf.RandomSparse(0.9, distribution=sf.erk, seed=1, sparse_init=False).prepare(b)
    sf.rescale_(b, reference=norms)
    assert all(torch.allclose(x, y) for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.slow
def test_cli_quick_run(run_cli) -> None:
    code, stdout, err = run_cli(["bench", "init", "--quick", "--json"])
    assert code == 0, err
    obj = json.loads(stdout.strip().splitlines()[-1])
    assert len(obj["rows"]) == 2 * len(METHODS)
    for r in obj["rows"]:
        assert 0 <= r["on"] <= 1 and 0 <= r["off"] <= 1 and r["default"] in ARMS
        assert r["diff_pp"] == pytest.approx(100 * (r["on"] - r["off"]))
        assert r["on_does"] == ("calibrated" if r["method"] in ("SNIP", "GraSP") else "rescaled")
    assert all(c["pass"] is None and "one seed" in c["note"] for c in obj["criteria"].values())


def test_cli_bad_input_exits_2(run_cli) -> None:
    code, _, err = run_cli(["bench", "init"])
    assert code == 2 and "--data-dir" in err
    code, _, err = run_cli(["bench", "init", "--quick", "--sparsity", "1.5"])
    assert code == 2 and "sparsity" in err
    code, _, err = run_cli(["bench", "init", "--quick", "--depths", "resnet"])
    assert code == 2 and "--depths" in err
