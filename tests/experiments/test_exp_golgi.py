"""`sparseflow experiment golgi`: the random control keeps every layer's count, the reported measurements
equal their definitions recomputed here (Spearman by scipy, low-variance share by sorting, trees by
brute force), and the command writes its run directory and exits 2 for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy.stats import spearmanr

from conftest import RunCli, criteria_exit
from sparseflow.analysis.connectivity import connectivity
from sparseflow.training.data import load_dataset
from sparseflow.errors import SparseflowError
from sparseflow.experiments.golgi import GolgiConfig, matched_random, run
from sparseflow.experiments.golgi.run import LOW
from sparseflow.mask import Mask


def test_matched_random_keeps_every_count() -> None:
    g = torch.Generator().manual_seed(0)
    mask = Mask({"a": torch.rand(30, 40, generator=g) < 0.1, "b": torch.rand(8, 3, 3, 3, generator=g) < 0.5})
    r1, r2 = matched_random(mask, 1), matched_random(mask, 1)
    for n in mask:
        assert r1[n].shape == mask[n].shape and int(r1[n].sum()) == int(mask[n].sum())
        assert torch.equal(r1[n], r2[n])
    assert not torch.equal(r1["a"], mask["a"]) and not torch.equal(matched_random(mask, 2)["a"], r1["a"])


def test_measurements_equal_their_definitions() -> None:
    cfg = GolgiConfig(quick=True, methods=("gmp",), epochs=3, train_random=False)
    ticks: list[str] = []

    def tick(what: str = "", advance: float = 1, total: float | None = None) -> None:
        if advance:
            ticks.append(what)

    result = run(cfg, progress=tick)
    assert len(ticks) == 2 and len(result.arms) == 2
    x = load_dataset("digits").x_train.flatten(1)
    assert torch.allclose(result.pixel_std.flatten(), x.std(0))
    trained, control = result.arms
    for t, r in zip(trained.stain.graph.weight_links, control.stain.graph.weight_links):
        assert int(t.structure.sum()) == int(r.structure.sum())  # same count in every layer
    for arm in result.arms:
        fan = arm.stain.graph.weight_links[0].structure.sum(0).double()  # kept outputs of each pixel
        std = result.pixel_std.flatten()
        assert arm.pixel_rho == pytest.approx(spearmanr(fan.numpy(), std.numpy()).statistic)
        low = sorted(range(64), key=lambda i: (float(std[i]), i))[: round(LOW * 64)]
        assert arm.low_share == pytest.approx(float(fan[low].sum() / fan.sum()))
        masks = [l.structure for l in arm.stain.graph.weight_links]
        reach = masks[0].clone()  # (300, 64): pixels reaching each first hidden unit
        assert torch.equal(arm.in_pixels["layers.0"], reach.sum(1))
        reach2 = (masks[1].double() @ reach.double()) > 0  # (100, 64) through any first-layer unit
        assert torch.equal(arm.in_pixels["layers.1"], reach2.sum(1))
        outputs = (masks[2].double() @ masks[1].double()) > 0  # (10, 300): outputs reached by a first hidden unit
        assert torch.equal(arm.out_reached["layers.0"], outputs.sum(0))
    crit = result.criteria()
    assert crit["gmp: fewer connections on the least-varying pixels"]["pass"] == (trained.low_share < control.low_share)
    assert crit["gmp: kept pixels follow pixel variance"]["value"] == trained.pixel_rho
    assert trained.accuracy is not None and control.accuracy is None  # the control was not trained


def test_config_rejects_bad_values() -> None:
    for bad in ({"methods": ("sgd",)}, {"sparsity": 1.0}, {"epochs": 0}, {"units": 11}, {"layer": "fc1"}):
        with pytest.raises(SparseflowError):
            GolgiConfig(quick=True, **bad)


def test_cli_writes_the_run_directory(tmp_path: Path, run_cli: RunCli) -> None:
    out = tmp_path / "golgi"
    code, stdout, err = run_cli(["experiment", "golgi", "--quick", "--methods", "gmp", "--epochs", "3", "--units", "2",
                                 "--out", str(out), "--json"])
    got = json.loads(stdout.strip().splitlines()[-1])
    assert code == criteria_exit(got), err
    stored = json.loads((out / "results.json").read_text())
    assert stored["experiment"] == "golgi" and stored["criteria"] == got["criteria"]
    assert [a["name"] for a in got["arms"]] == ["gmp", "gmp random control"]
    assert all(len(a["stain"]["units"]) == 2 for a in got["arms"])
    assert len(got["criteria"]) == 3 and all(set(c) >= {"value", "target", "pass"} for c in got["criteria"].values())
    for f in got["figures"]:
        assert (out / f).stat().st_size > 0 and f"]({f})" in (out / "report.md").read_text()
    assert {"stain_gmp.png", "pixels_gmp.png", "fanout.png", "trees.png"} <= set(got["figures"])


@pytest.mark.parametrize("args, message", [
    (["--methods", "sgd"], "unknown method"), (["--sparsity", "1.5"], "sparsity must be a finite number in (0, 1)"),
    (["--data-dir", "/nonexistent/mnist"], "is not a folder"), (["--epochs", "0"], "epochs must be"),
    (["--units", "0"], "units must be"),
])
def test_cli_bad_input_exits_2(tmp_path: Path, run_cli: RunCli, args: list[str], message: str) -> None:
    code, out, err = run_cli(["experiment", "golgi", "--quick", "--out", str(tmp_path / "o"), *args])
    assert code == 2 and err.startswith("error:") and message in " ".join(err.split())
    assert not (tmp_path / "o").exists()


def test_connectivity_of_an_arm_is_the_library_value() -> None:
    cfg = GolgiConfig(quick=True, methods=("rigl",), epochs=1, train_random=False)
    arm = run(cfg).arms[1]  # the random control: an untrained model, so its mask defines the structure
    from sparseflow.training.models import build_model

    model = build_model("lenet300-100", (1, 8, 8), 10, seed=0)
    mask = Mask({f"layers.{i}.weight": l.structure for i, l in enumerate(arm.stain.graph.weight_links)})
    assert arm.input_fraction == pytest.approx(connectivity(model, mask).input_fraction)
