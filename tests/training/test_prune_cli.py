"""``sparseflow prune`` on a local Hugging Face GPT-2 folder built from a config (nothing downloaded).

Oracles: the pruned folder reloads with ``from_pretrained``; every Conv1D keeps exactly 2 of every 4 weights along
its input axis; the perplexity the command reports equals the one recomputed from the reloaded model on the same
validation windows; the .sfz holds the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import sparseflow as sf
from sparseflow.training.prune import perplexity, windows

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare"
pytestmark = pytest.mark.skipif(not (DATA / "input.txt").is_file(), reason="needs ../shared/data/tinyshakespeare")


def _folder(path: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=65, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
def test_prune_a_local_gpt2_folder_at_two_four(method: str, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    from transformers import GPT2LMHeadModel

    src = _folder(tmp_path / "gpt2")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["prune", str(src), "--method", method, "--pattern", "2:4", "--data-dir", str(DATA),
                                 "--calibration", "8", "--eval-windows", "8", "--out", str(out), "--json"])
    assert code == 0, err
    obj = json.loads(stdout.strip().splitlines()[-1])
    assert obj["density"] == 0.5 and obj["files"] == ["model.sfz", "hf"]
    pruned = GPT2LMHeadModel.from_pretrained(out / "hf", local_files_only=True).eval()
    for name in sf.Targets().select(pruned):
        w = pruned.get_parameter(name)  # Conv1D (in, out): groups of 4 inputs down each column
        assert ((w != 0).reshape(w.shape[0] // 4, 4, w.shape[1]).sum(1) <= 2).all(), name
    text = sf.load_dataset("tinyshakespeare", data_dir=DATA)
    val = windows(text.val_tokens, 32, 8, None)
    assert perplexity(pruned, *val) == pytest.approx(obj["perplexity_after"], rel=1e-5)
    fresh = GPT2LMHeadModel.from_pretrained(src, local_files_only=True)
    assert perplexity(fresh, *val) == pytest.approx(obj["perplexity_before"], rel=1e-5)
    sf.load(out / "model.sfz", fresh)
    for (n, a), b in zip(fresh.state_dict().items(), pruned.state_dict().values()):
        assert torch.equal(a, b), n


def test_prune_refuses_what_it_cannot_read(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    code, _, err = run_cli(["prune", str(tmp_path / "nope"), "--data-dir", str(DATA)])
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(["prune", str(_folder(tmp_path / "g")), "--pattern", "2-4", "--data-dir", str(DATA)])
    assert code == 2 and "N:M such as 2:4" in err
