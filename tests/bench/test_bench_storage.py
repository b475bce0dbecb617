"""bench storage: ResNet-50 shapes against torchvision's counts and RigL's table; the --quick JSON's
criteria recomputed from its own rows."""

from __future__ import annotations

import json
import math

import pytest

from sparseflow.bench.storage.result import LAYER_FORMATS
from sparseflow.bench.storage.run import RIGL_MB, resnet50_shapes
from conftest import criteria_exit

RESNET50_PARAMS = 25_557_032  # sum(p.numel() for p in torchvision.models.resnet50().parameters())


def test_resnet50_shapes_match_torchvision_counts() -> None:
    shapes = resnet50_shapes()
    assert sum(math.prod(s) for s in shapes.values()) == RESNET50_PARAMS
    convs = [n for n, s in shapes.items() if len(s) == 4]
    bns = [n[: -len(".weight")] for n, s in shapes.items() if len(s) == 1 and n.endswith(".weight")]
    assert len(convs) == 53 and len(bns) == 53 and len(shapes) == 53 + 2 * 53 + 2
    assert shapes["fc.weight"] == (1000, 2048) and shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert shapes["layer2.0.downsample.0.weight"] == (512, 256, 1, 1)
    # Each batch norm follows the conv of the same block position and has its output width.
    for bn in bns:
        conv = "conv1" if bn == "bn1" else bn.replace(".bn", ".conv").replace("downsample.1", "downsample.0")
        assert shapes[bn + ".weight"] == shapes[bn + ".bias"] == (shapes[conv + ".weight"][0],)


def test_rigl_dense_size_from_the_shapes() -> None:
    # RigL's counting: 32-bit kernel values plus a 32-bit bias per output channel of every conv/fc layer.
    shapes = resnet50_shapes()
    kernels = [s for s in shapes.values() if len(s) >= 2]
    bits = 32 * sum(math.prod(s) for s in kernels) + 32 * sum(s[0] for s in kernels)
    assert round(bits / 8e6, 3) == RIGL_MB[("dense", 0.0)]


def _log2_binom(n: int, k: int) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


@pytest.mark.slow
def test_bench_storage_quick_json_is_consistent(run_cli, tmp_path) -> None:
    code, out, _ = run_cli(["bench", "storage", "--quick", "--json", "--out", str(tmp_path)])
    got = json.loads(out.strip().splitlines()[-1])
    assert code == criteria_exit(got)
    assert got["command"] == "bench storage" and got["quick"] and got["threads"] == 1
    assert json.loads((tmp_path / "result.json").read_text())["criteria"] == got["criteria"]
    assert (tmp_path / "storage.png").stat().st_size > 0
    assert "## Criteria" in (tmp_path / "report.md").read_text()
    crit = got["criteria"]

    side = got["config"]["side"]
    n = side * side
    assert [r["sparsity"] for r in got["layer"]] == got["config"]["sparsities"]
    for r in got["layer"]:
        b = r["bytes"]
        assert set(b) == set(LAYER_FORMATS) and r["numel"] == n
        assert b["bound"] == pytest.approx(4 * r["nnz"] + _log2_binom(n, r["nnz"]) / 8)
        assert b["CSR int32 raw"] == 8 * r["nnz"] + 4 * (side + 1)
        assert b["safetensors dense"] >= 4 * n and b["torch.save dense"] >= 4 * n
        assert b["zstd bitmap, raw values"] >= 4 * r["nnz"]
        assert b["ours (.sfz)"] >= b["bound"] - 64  # nothing codes below the information content
        if r["sparsity"] == 0.9:
            c = crit[f"file, {side}^2 fp32 at 90 % (MB)"]
            assert c["value"] == pytest.approx(b["ours (.sfz)"] / 1e6)
            assert c["pass"] == (c["value"] <= 7.72 * n / 4096**2)

    low = [c for c in got["coding"] if c["density"] <= 0.5]
    for c in got["coding"]:
        assert c["bound_bytes"] == pytest.approx(_log2_binom(c["numel"], c["nnz"]) / 8)
    worst = max(low, key=lambda c: c["payload_bytes"] - (1.002 * c["bound_bytes"] + 64))
    c = crit["mask bytes / log2 C(N,nnz), densities 0.005-0.5 (worst)"]
    assert c["value"] == pytest.approx(worst["payload_bytes"] / worst["bound_bytes"], abs=1e-6)
    assert c["pass"] == all(r["payload_bytes"] <= 1.002 * r["bound_bytes"] + 64 for r in low)

    nm = got["nm"]
    assert nm["codec"] == "nm" and nm["nnz"] * 2 == nm["numel"]
    assert nm["bound_bytes"] == pytest.approx(nm["numel"] / 4 * math.log2(6) / 8)
    c = crit["2:4 mask (bits per position)"]
    assert c["value"] == pytest.approx(8 * nm["payload_bytes"] / nm["numel"], abs=1e-6)
    assert c["pass"] == (c["value"] <= 1.002 * math.log2(6) / 4)

    c = crit["mask encode (M positions/s, slowest)"]
    assert c["value"] == pytest.approx(min(s["encode_mps"] for s in got["speed"]), abs=1e-5)

    rows = {(r["distribution"], r["sparsity"]): r for r in got["resnet"]}
    dense = rows[("dense", 0.0)]
    assert dense["numel"] == RESNET50_PARAMS and dense["onebit_bytes"] == 4 * RESNET50_PARAMS
    for (dist, s), r in rows.items():
        if dist != "dense":  # uniform and ERK keep the same total: sparsity over the conv and fc weights
            kernels = sum(math.prod(sh) for sh in resnet50_shapes().values() if len(sh) >= 2)
            assert r["nnz"] == pytest.approx(RESNET50_PARAMS - kernels + (1 - s) * kernels, abs=60)
            assert r["file_fp16"] < r["file_fp32"]
        c = crit[f"ResNet-50 {dist} {s:g}, 1-bit-mask accounting vs RigL"]
        assert c["value"] == pytest.approx(r["onebit_bytes"] / (RIGL_MB[(dist, s)] * 1e6) - 1, abs=1e-6)
        assert c["pass"] == (abs(c["value"]) <= 0.04)
