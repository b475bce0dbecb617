"""``sparseflow bench masks``: its totals and criteria follow from its own rows (needs the MNIST files)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import RunCli, criteria_exit

MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


@pytest.mark.slow
@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="MNIST files not present")
def test_bench_masks_quick(run_cli: RunCli, tmp_path: Path) -> None:
    code, out, err = run_cli(["bench", "masks", "--data-dir", str(MNIST), "--quick", "--out", str(tmp_path), "--json"])
    result = json.loads(out.strip().splitlines()[-1])
    assert code == criteria_exit(result), err
    rows = result["rows"]
    assert len(rows) == 2 * 2 * 3  # trained + random, two sparsities, three layers
    for r in rows:
        n, p = math.prod(r["shape"]), r["density"]
        assert r["entropy_bits"] == pytest.approx(-n * (p * math.log2(p) + (1 - p) * math.log2(1 - p)))
        assert r["ratio"] == pytest.approx(r["bits"] / r["entropy_bits"])
    for s in ("90.0%", "96.4%"):
        for kind in ("trained", "random"):
            sel = [r for r in rows if r["kind"] == kind and f"{r['sparsity']:.1%}" == s]
            total = sum(r["bits"] for r in sel) / sum(r["entropy_bits"] for r in sel)
            assert result["totals"][f"{kind}_{s}"] == pytest.approx(total)
        crit = result["criteria"][f"trained_masks_{s}"]
        assert crit["value"] == pytest.approx(result["totals"][f"trained_{s}"])
        assert crit["pass"] == (crit["value"] <= 0.90)
        # magnitude-pruned masks have structure an i.i.d. code cannot use; random ones do not
        assert result["totals"][f"trained_{s}"] < 1.0 < result["totals"][f"random_{s}"] + 0.01
    assert (tmp_path / "report.md").is_file() and json.loads((tmp_path / "result.json").read_text())["rows"] == rows


def test_bench_masks_needs_data_dir(run_cli: RunCli) -> None:
    code, _, err = run_cli(["bench", "masks", "--quick"])
    assert code == 2 and "--data-dir" in err
