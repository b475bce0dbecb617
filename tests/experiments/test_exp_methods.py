"""experiment methods: statistics against scipy and hand computation, IMP's mask against brute force and
MagnitudePruning, orderings and criteria on hand-made records, and a tiny CLI run on real MNIST files."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
from pathlib import Path

import pytest
import torch

from sparseflow.distributions import kept_total
from sparseflow.experiments.methods.config import FULL, LONG, MethodsConfig
from sparseflow.experiments.methods.grid import GRID, IMP, LABELS, LONG_GRID, ComparisonConfig, RunRecord, imp_mask
from sparseflow.experiments.methods.result import (REFERENCE, ComparisonResult, bootstrap_tau, ci95, kendall_tau_b,
                                                   t975)
from sparseflow.io import json_safe
from sparseflow.mask import Mask

DATA = Path("/work/shared/data")


def test_t_quantile_and_interval_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 80):
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3), df
    # [1, 2, 3]: mean 2, sample std 1, half-width t(2) / sqrt(3)
    assert ci95([1.0, 2.0, 3.0]) == pytest.approx(4.303 / math.sqrt(3))
    assert ci95([0.5]) is None


def test_kendall_tau_b_by_hand_and_against_scipy() -> None:
    assert kendall_tau_b([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # P = 2, Q = 1
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau_b([1, 1], [1, 2]))  # no untied pair in x: undefined
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 9)
        x, y = [rng.randint(0, 4) for _ in range(n)], [rng.randint(0, 4) for _ in range(n)]
        ref = stats.kendalltau(x, y).statistic
        got = kendall_tau_b(x, y)
        assert (math.isnan(ref) and math.isnan(got)) or got == pytest.approx(ref), (x, y)


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(30, 20, generator=g), "b.weight": torch.randn(10, 30, generator=g)}


def test_imp_mask_is_nested_layerwise_top_magnitude() -> None:
    w = _weights()
    first = imp_mask(Mask.ones(w), w, 0.5)
    w2 = {n: t * first[n] + 0.01 * torch.randn(t.shape, generator=torch.Generator().manual_seed(1)) for n, t in w.items()}
    second = imp_mask(first, w2, 0.9)  # the weights now differ, and pruned positions are nonzero again
    n = sum(t.numel() for t in w.values())
    for mask, old, weights, s in ((first, Mask.ones(w), w, 0.5), (second, first, w2, 0.9)):
        assert mask.count() == kept_total(n, s)
        for name, t in weights.items():
            keep, prev = mask[name], old[name]
            assert not (keep & ~prev).any()  # nested
            k = int(keep.sum())
            assert abs(k - (1 - s) * t.numel()) <= 1  # uniform density, within one weight
            # brute force: the k largest |w| among the positions the old mask keeps
            cand = sorted(((float(t.reshape(-1)[i].abs()), i) for i in range(t.numel()) if prev.reshape(-1)[i]), reverse=True)
            assert {i for _, i in cand[:k]} == set(torch.nonzero(keep.reshape(-1)).flatten().tolist())


def test_imp_first_level_equals_magnitude_pruning() -> None:
    from torch import nn

    from sparseflow.methods import MagnitudePruning

    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    with torch.no_grad():
        for p, t in zip((model[0].weight, model[2].weight), _weights(3).values()):
            p.copy_(t)  # (30, 20) and (10, 30)
    w = {"0.weight": model[0].weight.detach().clone(), "2.weight": model[2].weight.detach().clone()}
    method = MagnitudePruning(0.8)
    method.prepare(model)
    assert imp_mask(Mask.ones(w), w, 0.8) == method.mask


def _rec(ds: str, m: str, s: float, seed: int, acc: float, **kw) -> RunRecord:
    base = dict(measured_sparsity=s, pruned_weights=1000, steps=10, budgets=1, wall_s=0.0)
    return RunRecord(ds, m, s, seed, acc, **(base | kw))


def _result(acc: dict[str, tuple[float, float]], drop: str | None = None, **kw) -> ComparisonResult:
    setting = dataclasses.replace(FULL[0], train_size=1280, epochs=1)  # 10 steps of 128
    cfg = ComparisonConfig(quick=True, settings=(setting,), sparsities=(0.9,), seeds=(0, 1), data_dirs=(("mnist", "x"),))
    runs = [_rec("mnist", "dense", 0.0, seed, 0.98) for seed in (0, 1)]
    for m in LABELS:
        for seed in (0, 1):
            if m != drop:
                runs.append(_rec("mnist", m, 0.9, seed, acc.get(m, (0.5, 0.5))[seed], **kw.get(m, {})))
    return ComparisonResult(cfg, tuple(runs), 1.0)


def test_orderings_tau_and_flipped_pairs_by_hand() -> None:
    # Reference order static ERK < SNIP < SET < RigL < GMP; measured: SNIP and SET swapped.
    acc = {"static ERK": (0.90, 0.92), "SNIP": (0.96, 0.95), "SET": (0.94, 0.94), "RigL": (0.97, 0.97),
           "GMP": (0.99, 0.98)}
    cell = _result(acc).orderings()[0]
    assert cell["ascending"][-5:] == ["static ERK", "SET", "SNIP", "RigL", "GMP"]
    assert cell["tau_b"] == pytest.approx((9 - 1) / 10)  # 10 pairs, one discordant
    (flip,) = cell["flipped"]
    assert flip["measured"] == "SNIP > SET"
    # paired differences 2 pp and 1 pp: mean 1.5, half-width t(1) * 0.7071 / sqrt(2) = 6.353
    assert flip["diff_pp"] == pytest.approx(1.5) and flip["ci95_pp"] == pytest.approx(12.706 * 0.5)
    assert flip["resolved"] is False
    same = _result({m: (v / 100, v / 100) for m, v in REFERENCE.items()}).orderings()[0]
    assert same["tau_b"] == 1.0 and same["flipped"] == []


def test_tau_per_seed_and_its_interval_by_hand() -> None:
    # seed 0 in the reference order (tau 1); seed 1 with SNIP and SET swapped (tau 8/10): mean 0.9,
    # sample std 0.1414, half-width t(1) * 0.1414 / sqrt(2) = 12.706 * 0.1
    acc = {"static ERK": (0.90, 0.90), "SNIP": (0.91, 0.935), "SET": (0.92, 0.93), "RigL": (0.95, 0.95),
           "GMP": (0.96, 0.96)}
    cell = _result(acc).orderings()[0]
    assert cell["tau_b_seeds"] == {0: 1.0, 1: pytest.approx(0.8)}
    assert cell["tau_b_seed_mean"] == pytest.approx(0.9) and cell["tau_b_ci95"] == pytest.approx(1.2706)
    assert cell["tau_b"] == 1.0  # the means keep the order: SNIP 0.9225 < SET 0.925
    at = _result(acc).agreement()["at_90"]["mnist"]
    assert at["measured"] == "static ERK < SNIP < SET < RigL < GMP" and at["tau_b_ci95"] == pytest.approx(1.2706)


def test_criteria_are_computed_from_the_records() -> None:
    ok = _result({}).criteria()
    assert all(c["pass"] for c in ok.values()), ok
    assert ok["equal budget"]["value"] == {"mnist": [10]}
    missing = _result({}, drop="SNIP").criteria()["table complete"]
    assert missing["pass"] is False and missing["value"] == pytest.approx(18 / 20)
    short = _result({}, SET={"steps": 9}).criteria()["equal budget"]
    assert short["pass"] is False and short["value"] == {"mnist": [9, 10]}
    dense_weights = _result({}, RigL={"measured_sparsity": 0.9 - 2 / 1000}).criteria()["sparsity reached"]
    assert dense_weights["pass"] is False and dense_weights["value"] == pytest.approx(-2.0)


def test_grid_size_and_equal_step_budget_of_the_defaults() -> None:
    cfg = ComparisonConfig.of(MethodsConfig())
    assert [label for label, _, _ in GRID] == [m for m in LABELS if m != IMP]
    assert cfg.imp_levels() == (0.5, 0.8, 0.9, 0.95, 0.98)
    # per dataset and seed: 8 grid methods x 4 sparsities + dense + 5 IMP levels
    assert cfg.units() == 2 * 3 * (8 * 4 + 1 + 5)
    assert FULL[0].steps() == 2 * math.ceil(60000 / 128)
    assert FULL[1].steps() == 5120 // 32


def test_bootstrap_tau_against_enumerating_every_resample() -> None:
    # 3 seeds: the 27 equally likely resamples, enumerated, give the exact bootstrap distribution.
    import itertools

    rng = random.Random(3)
    cells = {m: {k: rng.random() for k in range(3)} for m in REFERENCE}
    taus = sorted(kendall_tau_b([statistics.fmean(cells[m][k] for k in pick) for m in REFERENCE],
                                list(REFERENCE.values())) for pick in itertools.product(range(3), repeat=3))
    lo, hi = bootstrap_tau(cells, REFERENCE, n=4000)
    assert lo in taus and hi in taus
    # percentile bounds of 4,000 draws fall within the exact 1st-5th and 95th-99th percentiles
    assert taus[0] <= lo <= taus[1] and taus[-2] <= hi <= taus[-1]
    same = {m: {k: v + k / 1000 for k in range(3)} for m, v in REFERENCE.items()}
    assert bootstrap_tau(same, REFERENCE) == (1.0, 1.0)  # every resample keeps the reference order
    assert bootstrap_tau({m: {0: 1.0} for m in REFERENCE}, REFERENCE) is None  # one seed: nothing to resample


def _long(acc: dict[str, tuple[float, float]], dense2: tuple[float, float] = (0.981, 0.982), quick: bool = False,
          **kw) -> ComparisonResult:
    setting = dataclasses.replace(LONG[0], train_size=1280, epochs=1)  # 10 steps of 128
    cfg = ComparisonConfig(quick=quick, settings=(setting,), sparsities=(0.9,), seeds=(0, 1),
                           data_dirs=(("mnist", "x"),), budget="long")
    runs = [_rec("mnist", "dense", 0.0, seed, 0.98) for seed in (0, 1)]
    runs += [_rec("mnist", "dense 2x", 0.0, seed, dense2[seed], steps=20, budgets=2) for seed in (0, 1)]
    for label, _, _, k in LONG_GRID:
        for seed in (0, 1):
            runs.append(_rec("mnist", label, 0.9, seed, acc.get(label, (0.5, 0.5))[seed],
                             **({"steps": 10 * k, "budgets": k} | kw.get(label, {}))))
    return ComparisonResult(cfg, tuple(runs), 1.0)


def test_long_budget_grid_criteria_and_multiples() -> None:
    cfg = ComparisonConfig.of(MethodsConfig(budget="long"))
    assert cfg.sparsities == (0.9,) and cfg.imp_levels() == () and [s.epochs for s in cfg.settings] == [20, 20]
    assert {s.model for s in cfg.settings} == {"lenet300-100"} and all(s.train_size is None for s in cfg.settings)
    assert cfg.units() == 2 * 3 * (9 + 2)  # per dataset and seed: 9 sparse runs, dense at 1x and 2x
    assert cfg.multiple("RigL 5x") == 5 and cfg.multiple("dense 2x") == 2 and cfg.multiple("GMP") == 1
    assert ComparisonConfig.of(MethodsConfig(budget="long", sparsities=(0.8,))).sparsities == (0.8,)  # explicit wins
    ok = {m: (v / 100, v / 100 + 0.001) for m, v in REFERENCE.items()}
    crit = _long(ok).criteria()
    assert crit["ordering vs the RigL paper, mnist"]["value"] == 1.0
    assert crit["ordering vs the RigL paper, mnist"]["pass"] is True
    assert crit["equal budget"]["pass"] and crit["equal budget"]["value"] == {"mnist": [10, 20, 50]}
    conv = crit["dense converged, mnist"]  # gains 0.1 and 0.2 pp: mean 0.15
    assert conv["value"] == pytest.approx(0.15) and conv["pass"] is True
    assert _long(ok, dense2=(0.99, 0.99)).criteria()["dense converged, mnist"]["pass"] is False
    swapped = dict(ok, SNIP=ok["RigL"], RigL=ok["SNIP"])  # two adjacent swaps would be 0.6; this one is 0.4
    worse = _long(swapped).criteria()["ordering vs the RigL paper, mnist"]
    assert worse["value"] == pytest.approx(kendall_tau_b([65.8, 73.0, 69.6, 67.2, 73.9], list(REFERENCE.values())))
    assert worse["pass"] is False
    bad_5x = _long(ok, **{"RigL 5x": {"steps": 10}}).criteria()["equal budget"]  # a 5x run with 1x steps
    assert bad_5x["pass"] is False
    quick = _long(ok, quick=True).criteria()
    assert quick["ordering vs the RigL paper, mnist"]["pass"] is None and "quick" in quick["dense converged, mnist"]["note"]
    assert ComparisonConfig(quick=True, settings=(), sparsities=(0.9,), seeds=(0,)).long is False


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="needs the MNIST files in /work/shared/data")
def test_journal_resumes_finished_tasks_and_sets_another_grid_aside(tmp_path: Path) -> None:
    from sparseflow.experiments.methods import train as mt

    setting = dataclasses.replace(FULL[0], train_size=1280, epochs=1, test_size=300)
    cfg = ComparisonConfig(quick=True, settings=(setting,), sparsities=(0.9,), seeds=(0,),
                           data_dirs=(("mnist", str(DATA / "mnist")),), workers=1)
    tasks = mt._tasks(cfg)
    fake = {mt._key(t): tuple(_rec("mnist", m, sp, 0, 0.1 + i / 100, steps=10)
                              for m, sp in ([("dense", 0.0), (IMP, 0.5), (IMP, 0.9)] if t.spec is None
                                            else [(t.spec.label, 0.9)]))
            for i, t in enumerate(tasks)}
    journal = tmp_path / "j.jsonl"
    rows = [mt._head(dataclasses.replace(cfg, workers=2))]  # the worker count does not change the records
    rows += [{"task": k, "records": [dataclasses.asdict(r) for r in v]} for k, v in fake.items()]
    journal.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"task": "torn')  # killed mid-line
    seen = []
    result = mt.run_methods(cfg, lambda what, n: seen.append(n), journal=journal)  # trains nothing
    assert sorted(result.runs, key=str) == sorted((r for v in fake.values() for r in v), key=str)
    assert sum(seen) == cfg.units() == len(result.runs)
    other = dataclasses.replace(cfg, sparsities=(0.8,))
    assert mt._read_journal(journal, other) == {} and (tmp_path / "j.jsonl.old").is_file() and not journal.exists()


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="needs the MNIST files in /work/shared/data")
def test_cli_tiny_run_writes_a_complete_run(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "m"
    code, stdout, err = run_cli(["experiment", "methods", "--mnist-dir", str(DATA / "mnist"),
                                 "--sparsities", "0.9", "--seeds", "1", "--epochs", "1", "--train-size", "1280",
                                 "--test-size", "300", "--workers", "1", "--out", str(out), "--json"])
    assert code == 0, err
    obj = json.loads(stdout.strip().splitlines()[-1])
    assert all(c["pass"] for c in obj["criteria"].values()), obj["criteria"]
    assert obj["skipped"] == ["fashion-mnist"] and "fashion-mnist skipped" in err  # no --fashion-dir: a note
    assert list(obj["settings"]) == ["mnist"] and not (out / "runs.partial.jsonl").exists()
    rows = {r["method"]: r for r in obj["summary"]}
    assert set(rows) == {"dense", *LABELS}
    assert rows[IMP]["budgets"] == 3 and rows["RigL"]["budgets"] == 1  # IMP: dense, 0.5, 0.9
    for r in obj["summary"]:
        assert 0.0 <= r["mean"] <= 1.0 and r["n"] == 1 and r["steps"] == 10
        if r["method"] != "dense":
            assert r["measured_sparsity"] >= 0.9 - 1 / 1000
    (cell,) = obj["orderings"]
    assert sorted(cell["ascending"]) == sorted(LABELS) and -1.0 <= cell["tau_b"] <= 1.0
    from sparseflow.training.rundir import read_run

    stamped = read_run(out, "methods")
    again = ComparisonResult.from_json(stamped)  # the report can be rebuilt from results.json alone
    rebuilt = json.loads(json.dumps(json_safe(again.to_json())))
    assert rebuilt == {k: v for k, v in stamped.items() if k in rebuilt}
    assert stamped["orderings"] == obj["orderings"] and len(stamped["runs"]) == 10 + 1  # dense + 9 + IMP's 0.5
    report = (out / "report.md").read_text()
    assert "measured, worst to best" in report and "accuracy.png" in report
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="needs the MNIST files in /work/shared/data")
def test_cli_long_budget_quick_run(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "long"
    code, stdout, err = run_cli(["experiment", "methods", "--budget", "long", "--quick", "--mnist-dir",
                                 str(DATA / "mnist"), "--workers", "1", "--out", str(out), "--json"])
    assert code == 0, err
    obj = json.loads(stdout.strip().splitlines()[-1])
    rows = {r["method"]: r for r in obj["summary"]}
    assert set(rows) == {"dense", "dense 2x", *(g[0] for g in LONG_GRID)}
    assert rows["RigL 5x"]["steps"] == 5 * rows["RigL"]["steps"] and rows["dense 2x"]["budgets"] == 2
    crit = obj["criteria"]
    assert crit["equal budget"]["pass"] and crit["table complete"]["pass"]
    assert crit["ordering vs the RigL paper, mnist"]["pass"] is None  # one seed, 3 epochs: says so
    assert (out / "budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "budget.png" in (out / "report.md").read_text()


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="needs the MNIST files in /work/shared/data")
@pytest.mark.parametrize("args, words", [
    (["--sparsities", "0.9,1.5"], "sparsity"),
    (["--datasets", "cifar10"], "--datasets"),
    (["--seeds", "0"], "--seeds"),
    (["--epochs", "1", "--train-size", "100"], "too few"),
    (["--budget", "longer"], "--budget"),
])
def test_cli_bad_input_exits_2_with_a_message(run_cli, args: list[str], words: str) -> None:
    code, _, err = run_cli(["experiment", "methods", "--data-dir", str(DATA), *args])
    assert code == 2 and "error:" in err and words in err, err


def test_cli_without_data_says_which_flag(run_cli, tmp_path: Path) -> None:
    code, _, err = run_cli(["experiment", "methods", "--datasets", "mnist"])
    assert code == 2 and "--data-dir" in err and "--mnist-dir" in err
    code, _, err = run_cli(["experiment", "methods"])  # nothing given: an error naming every flag
    assert code == 2 and "--mnist-dir" in err and "--fashion-dir" in err and "--data-dir" in err
    code, _, err = run_cli(["experiment", "methods", "--mnist-dir", str(tmp_path / "none"), "--datasets", "mnist"])
    assert code == 2 and "is not a folder" in err
