"""`sparseflow analyze` and `sparseflow bench connectivity`: output equals the library's, repair round trip,
MLP inference from a bare state dict, and exit status 2 with one error line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sparseflow.analysis.connectivity import connectivity
from sparseflow.io import load_state, save_state
from sparseflow.training.job import TrainJob
from sparseflow.mask import Mask
from sparseflow.training.models import build_model
from conftest import RunCli




def make_run(path: Path, model_name: str, density: float, hidden: tuple[int, ...] | None = None) -> torch.nn.Module:
    """A run directory laid out as `sparseflow train` writes it (config.json + checkpoint with the method mask)."""
    job = TrainJob(method="random", model=model_name, hidden=hidden, dataset="digits", epochs=1)
    model = build_model(model_name, (1, 8, 8), 10, hidden=hidden, seed=0)
    g = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(p.shape, generator=g) < density for n, p in model.named_parameters() if n.endswith("weight")})
    mask.apply_(model)
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"job": job.to_dict(), "schedule": {}}))
    save_state(path / "checkpoint.safetensors", {"model": model.state_dict(), "method": {"mask": dict(mask), "step": 0}})
    return model


def test_analyze_run_dir_json_equals_library(tmp_path: Path, run_cli: RunCli) -> None:
    model = make_run(tmp_path / "run", "conv2", 0.05)
    code, out, _ = run_cli(["analyze", str(tmp_path / "run"), "--json", "--quick"])
    assert code == 0
    got = json.loads(out.strip().splitlines()[-1])
    want = connectivity(model).to_json()
    assert got["layers"] == want["layers"] and got["effective_sparsity"] == pytest.approx(want["effective_sparsity"])
    assert got["collapsed"] == want["collapsed"]


def test_analyze_repair_round_trip(tmp_path: Path, run_cli: RunCli) -> None:
    make_run(tmp_path / "run", "mlp", 0.02, hidden=(32, 16))
    out_file = tmp_path / "fixed.safetensors"
    code, out, _ = run_cli(["analyze", str(tmp_path / "run"), "--repair", str(out_file), "--json"])
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["repair"]["moved"] > 0
    code, out, _ = run_cli(["analyze", str(out_file), "--json"])
    after = json.loads(out.strip().splitlines()[-1])
    before_counts = [r["nonzeros"] for r in result["layers"]]
    assert [r["nonzeros"] for r in after["layers"]] == before_counts  # same count per layer, in the weights
    if result["repair"]["unfixed"] == 0:
        assert all(r["no_incoming"] == 0 and r["no_outgoing"] == 0 for r in after["layers"][:-1])
    state, meta = load_state(out_file)
    assert meta["kind"] == "repaired-weights" and set(state["mask"]) == {r["name"] for r in after["layers"]}


def test_bare_state_dict_is_read_as_an_mlp_chain(tmp_path: Path, run_cli: RunCli) -> None:
    w1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    w2 = torch.tensor([[2.0, 0.0]])
    save_file({"fc1.weight": w1, "fc2.weight": w2}, str(tmp_path / "w.safetensors"))
    code, out, _ = run_cli(["analyze", str(tmp_path / "w.safetensors"), "--json"])
    assert code == 0
    got = json.loads(out.strip().splitlines()[-1])
    assert [r["name"] for r in got["layers"]] == ["fc1.weight", "fc2.weight"]
    assert got["effective"] == 2 and got["inputs_reaching_output"] == 1 and got["layers"][0]["no_incoming"] == 1


def test_bad_input_exits_2(tmp_path: Path, run_cli: RunCli) -> None:
    save_file({"a.weight": torch.ones(3, 2), "b.weight": torch.ones(1, 4)}, str(tmp_path / "nochain.safetensors"))
    save_file({"conv.weight": torch.ones(3, 2, 3, 3)}, str(tmp_path / "conv.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    (tmp_path / "emptydir").mkdir()
    cases = {
        str(tmp_path / "missing"): "does not exist",
        str(tmp_path / "junk.safetensors"): "not a checkpoint",
        str(tmp_path / "nochain.safetensors"): "do not chain",
        str(tmp_path / "conv.safetensors"): "cannot be inferred",
        str(tmp_path / "emptydir"): "no checkpoint.safetensors",
    }
    for path, words in cases.items():
        code, out, err = run_cli(["analyze", path])
        assert code == 2 and "error:" in err and words in " ".join(err.split()), (path, err)
        assert "Traceback" not in err


def test_bench_connectivity_quick_criteria(run_cli: RunCli) -> None:
    code, out, _ = run_cli(["bench", "connectivity", "--quick", "--json", "--threads", "1"])
    assert code == 0
    got = json.loads(out.strip().splitlines()[-1])
    crit = got["criteria"]["connectivity of a 100M-weight MLP"]
    assert crit["value"] == pytest.approx(round(got["seconds"] * 1e8 / got["weights"], 3))
    assert crit["pass"] == (crit["value"] <= 30)
    # 10 % random density: about a tenth of the weights are nonzero (binomial, 10M draws).
    assert got["nonzeros"] == pytest.approx(0.1 * got["weights"], rel=0.01) and got["threads"] == 1


def test_analyze_shows_a_layer_local_result_without_crashing(tmp_path, run_cli, monkeypatch) -> None:  # noqa: ANN001
    # A model the tracer cannot follow gets the layer-local analysis, whose path counts are None: shown as "-".
    import sparseflow.analysis.connectivity as conn_module

    real = conn_module.connectivity
    monkeypatch.setattr(conn_module, "connectivity", lambda model, mask=None, **kw: real(model, mask,
                                                                                          analysis="layer-local"))
    run = tmp_path / "r"
    assert run_cli(["train", "--quick", "--epochs", "1", "--no-baseline", "--no-progress", "--out", str(run)])[0] == 0
    code, out, err = run_cli(["analyze", str(run)])
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.strip().startswith("│")]
    assert rows and all("-" in line for line in rows)
