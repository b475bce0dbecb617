"""`sparseflow train` on Tiny Shakespeare with the GPT: validation loss and perplexity by hand, the sample, the
Hugging Face folder, the refusals."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import RunCli
from sparseflow.errors import SparseflowError
from sparseflow.io import load_state
from sparseflow.targets import prunable
from sparseflow.training.build import build_method, first_batch
from sparseflow.training.data import load_dataset, loaders
from sparseflow.training.gpt import GPT, generate
from sparseflow.training.job import METHODS, TrainJob
from sparseflow.methods import RigL
from sparseflow.training.loop import Callback, TrainConfig, fit
from sparseflow.training.models import build_model

TEXT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare"
needs_text = pytest.mark.skipif(not (TEXT_DIR / "input.txt").is_file(), reason=f"no input.txt in {TEXT_DIR}")


@pytest.fixture(autouse=True)
def one_thread():  # noqa: ANN201
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: a second thread only waits on a shared, loaded machine
    yield
    torch.set_num_threads(threads)


def _trained(run_dir: Path) -> torch.nn.Module:
    state, _ = load_state(run_dir / "checkpoint.safetensors")
    model = build_model("gpt", (128,), 65)
    model.load_state_dict(state["model"])
    return model.eval()


@needs_text
def test_train_reports_perplexity_and_a_sample(tmp_path: Path, run_cli: RunCli) -> None:
    pytest.importorskip("transformers")
    out, hf = tmp_path / "run", tmp_path / "hf"
    code, stdout, err = run_cli([
        "train", "--dataset", "tinyshakespeare", "--model", "gpt", "--data-dir", str(TEXT_DIR), "--method", "rigl",
        "--sparsity", "0.5", "--subset", "48", "--test-subset", "3", "--batch-size", "16", "--epochs", "1",
        "--optimizer", "adamw", "--lr", "0.003", "--json", "--no-progress", "--out", str(out),
        "--save-pretrained", str(hf)])
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    ds = load_dataset("tinyshakespeare", TEXT_DIR)
    x, y = ds.x_test[:3], ds.y_test[:3]
    for run, key in ((out, ""), (out / "dense", "dense_")):
        model = _trained(run)
        with torch.no_grad():  # by hand: mean cross-entropy over the 3 x 128 validation characters
            logp = torch.log_softmax(model(x), dim=-1)
        loss = -logp.gather(-1, y[..., None]).mean().item()
        assert result[f"{key}test_loss"] == pytest.approx(loss, rel=1e-5)
        assert result[f"{key}perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
        acc = (logp.argmax(-1) == y).float().mean().item()
        assert result["accuracy" if not key else "dense_accuracy"] == pytest.approx(acc)
    model = _trained(out)
    assert result["sparsity"] == pytest.approx(0.5, abs=1e-5)
    assert [layer["name"] for layer in result["layers"]] == [f"{n}.weight" for n, m in model.named_modules()
                                                             if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    assert (model.transformer.wte.weight != 0).all()  # the tied embedding / head stays dense
    # the sample: 200 characters the saved model writes after a newline with the job's seed
    sample = result["sample"]
    assert len(sample) == 200 and sample == ds.decode(generate(model, ds.encode("\n")[None], 200, context=128,
                                                                seed=0)[0, 1:])
    report = (out / "report.md").read_text()
    assert "perplexity" in report and sample in report
    assert "perplexity" in err and "next-char accuracy" in err  # (the tables go to stderr under --json)
    # the Hugging Face folder: the same network
    from transformers import GPT2LMHeadModel

    again = GPT2LMHeadModel.from_pretrained(hf).eval()
    with torch.no_grad():
        assert torch.allclose(again(x).logits, model(x), atol=1e-5)
    assert result["pretrained"] == str(hf)
    # the run directory rebuilds the model for analysis (and anything else that reads run directories)
    from sparseflow.analysis.loader import load_for_analysis

    with torch.no_grad():
        assert torch.equal(load_for_analysis(out).model(x), model(x))


@needs_text
@pytest.mark.parametrize("method", METHODS)
def test_every_method_prunes_the_gpt(method: str) -> None:
    ds = load_dataset("tinyshakespeare", TEXT_DIR, context=16, subset=64, seed=0)
    ds = dataclasses.replace(ds, x_test=ds.x_test[:8], y_test=ds.y_test[:8])
    job = TrainJob(method=method, sparsity=0.5, model="gpt", dataset="tinyshakespeare", batch_size=16)
    torch.manual_seed(0)
    model = GPT(65, block_size=16, n_layer=2, n_head=2, n_embd=16)
    train, test = loaders(ds, 16, seed=0)
    fit(model, train, test, TrainConfig(epochs=2), progress=False,
        method=build_method(job, 2 * len(train), batch=first_batch(ds, job), input_shape=ds.input_shape))
    weights = [dict(model.named_parameters())[name] for name in prunable(model)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.0 if method == "dense" else 0.5, abs=1e-3)
    assert (model.transformer.wte.weight != 0).all()


class CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state) -> None:  # noqa: ANN001
        if state.step == self.step:
            raise KeyboardInterrupt


@needs_text
def test_random_windows_resume_mid_epoch_bit_exact(tmp_path: Path) -> None:
    full = load_dataset("tinyshakespeare", TEXT_DIR, context=16)
    tokens = full.train_tokens[:2000]  # 1,984 windows, 125 per epoch: an epoch draws a part of them
    ds = dataclasses.replace(full, x_train=tokens[:-1].unfold(0, 16, 1), y_train=tokens[1:].unfold(0, 16, 1),
                             train_tokens=tokens, x_test=full.x_test[:4], y_test=full.y_test[:4])
    assert (len(ds.x_train), ds.epoch_windows) == (1984, 125)
    cfg = TrainConfig(epochs=2, seed=3, checkpoint_every=3)

    def run(run_dir: Path, **kw):  # noqa: ANN003, ANN202
        torch.manual_seed(0)
        model = GPT(65, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.1)  # dropout: the RNG is restored
        method = RigL(sparsity=0.5, update_every=4, until=12)
        return model, fit(model, *loaders(ds, 16, seed=0), cfg, method=method, run_dir=run_dir, progress=False, **kw)

    model_a, result_a = run(tmp_path / "a")
    assert result_a.steps == 16
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", callbacks=[CrashAt(11)])  # in epoch 2, two steps after the checkpoint at step 9
    model_b, result_b = run(tmp_path / "b", resume=True)
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
    assert result_b.test_loss == result_a.test_loss


def test_mismatched_model_and_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SparseflowError, match="does not fit dataset 'tinyshakespeare'.*--model gpt"):
        TrainJob(dataset="tinyshakespeare")
    with pytest.raises(SparseflowError, match="does not fit dataset 'digits'"):
        TrainJob(model="gpt")
    from sparseflow.training.run import run_train_job

    with pytest.raises(SparseflowError, match="--save-pretrained writes a Hugging Face language model"):
        run_train_job(TrainJob(epochs=1), tmp_path / "r", progress=False, save_pretrained=tmp_path / "hf")
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_quick_scale_for_text() -> None:
    from sparseflow.training.options import build

    job = build(TrainJob, {"dataset": "tinyshakespeare", "model": "gpt"}, quick=True)
    assert (job.epochs, job.subset, job.test_subset, job.batch_size) == (1, 2560, 128, 16)
    assert build(TrainJob, {}, quick=True).batch_size == 64  # other datasets keep theirs


def test_perplexity_of_a_loss_by_hand() -> None:
    logits = torch.randn(2, 4, 65, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 65, (2, 4), generator=torch.Generator().manual_seed(1))
    from sparseflow.layouts import default_loss

    loss = default_loss(logits, y)
    probs = torch.softmax(logits, -1).gather(-1, y[..., None]).squeeze(-1)
    assert math.exp(loss.item()) == pytest.approx(torch.prod(probs).item() ** (-1 / 8), rel=1e-5)  # geometric mean
    assert loss.item() == pytest.approx(F.cross_entropy(logits.reshape(8, 65), y.reshape(8)).item())
