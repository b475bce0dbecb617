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


# --- whole models (--models) ------------------------------------------------------------------------------

import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from sparseflow.bench.inference.models import ModelRow, _calls, build, model_rows, prune_  # noqa: E402


def test_model_criteria_follow_the_rows_and_quick_says_why_it_cannot_judge():
    rows = [ModelRow("gpt2", "prefill", 128, 1, 30.0, 12.0, 2e-7), ModelRow("gpt2", "decode", 1, 1, 20.0, 12.5, 3e-7),
            ModelRow("gpt2", "prefill", 128, 2, 20.0, 10.0, 2e-7)]
    crit = criteria([], [], [], rows)
    assert crit["GPT-2 small 90%: end to end vs dense, 1 x 128 tokens, 1 thread"] == {"value": 2.5, "target": ">= 2x",
                                                                                      "pass": True}
    assert crit["GPT-2 small 90%: end to end vs dense, 1 x 1 token, 1 thread"]["pass"] is False  # 1.6x
    assert crit["whole models: max relative error vs dense"]["value"] == 3e-7
    quick = criteria([], [], [], rows, quick=True)
    assert quick["GPT-2 small 90%: end to end vs dense, 1 x 128 tokens, 1 thread"]["pass"] is None


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_decode_step_equals_the_prefills_last_position_and_the_cache_is_cut_back(name):
    """Oracle: decoding the last token against the cache of the others gives the prefill's last logits; the
    cache returns to its length after each call, so repeated calls are the same work and the same output."""
    model, causal = build(name, quick=True)
    assert causal
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        calls = _calls(model, ids, causal)
        full = calls["prefill"]()
        one, again = calls["decode"](), calls["decode"]()
    assert full.shape[1] == 1  # the prefill keeps the last position's logits only, as generate() does
    torch.testing.assert_close(one[:, -1], full[:, -1], rtol=1e-4, atol=1e-5)
    assert torch.equal(one, again)


def test_model_rows_prune_convert_and_match_dense():
    rows, info = model_rows("bert", sparsity=0.9, tokens=8, threads=(1,), repeats=1, quick=True)
    # which layers run sparse is convert's measured choice (timing): only its bounds are asserted
    assert info["sparsity"] == pytest.approx(0.9, abs=1e-3) and 0 <= info["sparse_layers"] <= info["layers"]
    assert [(r.workload, r.tokens) for r in rows] == [("prefill", 8)]  # an encoder has no decode step
    assert rows[0].max_rel_err <= 1e-5 and rows[0].dense_ms > 0 and rows[0].sparse_ms > 0
    model, _ = build("gpt2", quick=True)
    assert prune_(model, 0.75) == pytest.approx(0.75, abs=1e-3)
    assert torch.count_nonzero(model.transformer.wte.weight) == model.transformer.wte.weight.numel()  # embeddings dense
    llama, _ = build("llama", quick=True)  # an untied head: a Linear, yet left dense as LLM pruning leaves it
    assert prune_(llama, 0.9) == pytest.approx(0.9, abs=1e-3)
    assert torch.count_nonzero(llama.lm_head.weight) == llama.lm_head.weight.numel()
    assert float((llama.model.layers[0].mlp.up_proj.weight == 0).float().mean()) == pytest.approx(0.9, abs=1e-3)


def test_cli_models_quick_and_bad_input(run_cli):
    code, stdout, err = run_cli(["bench", "inference", "--quick", "--no-layers", "--models", "bert", "--tokens", "8",
                                 "--json"])
    assert code == 0, err
    obj = json.loads(stdout.strip().splitlines()[-1])
    assert obj["cells"] == [] and [r["tokens"] for r in obj["models"]] == [8, 8]  # --tokens wins over --quick
    assert obj["criteria"]["whole models: max relative error vs dense"]["pass"] is True
    code, _, err = run_cli(["bench", "inference", "--quick", "--no-layers"])
    assert code == 2 and "--models" in err
    code, _, err = run_cli(["bench", "inference", "--quick", "--models", "gpt3"])
    assert code == 2 and "gpt3" in err


def test_transformer_sized_layers_have_a_criterion_each_and_count_in_the_worst_cell():
    def tcell(o, i, ours, dense=3.0):
        ms = {m: None for m in METHODS} | {"dense_mm": dense, "dense_linear": dense, "ours": ours}
        return Cell(o, i, 0.1, 1, 1, ms, 6.0, "csr")

    layers = [tcell(3072, 768, 0.75), tcell(768, 3072, 1.5), tcell(1024, 4096, 1.0, dense=2.8)]
    crit = criteria([], [], [], layers=layers)
    assert crit["3072x768 90% sparse batch 1 1 thread warm: ours vs dense"] == {"value": 4.0, "target": ">= 3x",
                                                                                "pass": True}
    assert crit["768x3072 90% sparse batch 1 1 thread warm: ours vs dense"]["pass"] is False  # 2x
    assert crit["every cell: ours vs the faster dense (worst cell)"]["value"] == 2.0


def test_isa_cap_is_honoured_recorded_and_checked(run_cli, monkeypatch):
    from sparseflow.errors import SparseflowError
    from sparseflow.inference.convert import convert
    from sparseflow.inference.kernels import ENV_MAX_ISA, Isa, best_isa, hardware_isa
    from sparseflow.inference.kernels.modules import SparseLinear

    if hardware_isa() is None:
        pytest.skip("compiled kernels not built")
    monkeypatch.setenv(ENV_MAX_ISA, "baseline")
    assert best_isa() is Isa.BASELINE
    lin = torch.nn.Linear(200, 100)
    with torch.no_grad():
        lin.weight[torch.rand(lin.weight.shape) >= 0.1] = 0
    fast = convert(lin, batch_sizes=(1, 16), repeats=1)
    if isinstance(fast, SparseLinear):  # every sparse choice stays within the cap
        assert all(c.isa in (None, Isa.BASELINE) for c in fast.plan)
    monkeypatch.setenv(ENV_MAX_ISA, "sse9")
    with pytest.raises(SparseflowError, match="sse9"):
        best_isa()
    monkeypatch.delenv(ENV_MAX_ISA)
    code, stdout, err = run_cli(["bench", "inference", "--quick", "--no-layers", "--models", "bert", "--tokens", "4",
                                 "--isa", "baseline", "--json"])
    assert code == 0, err
    obj = json.loads(stdout.strip().splitlines()[-1])
    assert obj["isa"] == "BASELINE" and obj["hardware_isa"] == hardware_isa().name and obj["cpu"]
    assert ENV_MAX_ISA not in __import__("os").environ  # the cap ends with the run
    if hardware_isa() < Isa.AVX512:
        code, _, err = run_cli(["bench", "inference", "--quick", "--isa", "avx512"])
        assert code == 2 and "avx512" in err


def test_floor_arm_frees_the_sparse_layers_and_gives_them_back():
    from sparseflow.bench.inference.models import _FreeSparseLayers
    from sparseflow.inference.kernels.modules import Choice, Kernel, SparseLinear
    from sparseflow.inference.kernels import csr_from_dense

    w = torch.randn(6, 5)
    lin = SparseLinear(csr_from_dense(w), None, (Choice(1, Kernel.TORCH_CSR),))
    model = torch.nn.Sequential(lin, torch.nn.Linear(6, 3))
    x = torch.randn(4, 2, 5)
    with torch.no_grad():
        before = model(x)
        with _FreeSparseLayers(model):
            assert torch.equal(lin(x), torch.zeros(4, 2, 6))  # the shape of the real output, no work
            assert torch.allclose(model(x), model[1].bias.expand(4, 2, 3))
        assert torch.equal(model(x), before)  # restored
    row = ModelRow("gpt2", "decode", 1, 1, 30.0, 20.0, 0.0, 12.0)
    assert row.bound == 2.5 and ModelRow("gpt2", "decode", 1, 1, 30.0, 20.0, 0.0).bound is None
