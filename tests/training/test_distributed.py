"""Data-parallel training on 2 CPU processes (gloo), against oracles.

- Both ranks hold bit-identical masks after every mask update and bit-identical final weights.
- 2 ranks x batch B equal 1 rank x batch 2B (the reference is the plain single-process loop): the same masks
  after every update and final weights within TOL = 1e-5 (max abs difference after 24 SGD steps; measured:
  below 1e-7). Only the floating-point summation order differs.
- A mask that differs on one rank, and RigL growing from each rank's local gradient (the drift bug), stop
  both ranks with an error naming the layer; a rank that dies or hangs stops the other with a clear error
  (at once, or after the collective timeout), the last checkpoint stays loadable and resuming from it ends
  exactly where the uninterrupted run ends.

The ranks run tests/ddp_worker.py; the processes are started here with torchrun's environment variables.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ddp_worker as w
from sparseflow.training import distributed
from sparseflow.errors import SparseflowError
from sparseflow.io import load_state

TOL = 1e-5
ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(w.__file__).resolve()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    for v in distributed.ENV_VARS:
        env.pop(v, None)
    env.update(extra)
    return env


def launch(scenario: str, out: Path, *, timeout: float = 90, wait_for: tuple[int, ...] = (0, 1),
           timeout_s: float = 20) -> list[subprocess.Popen]:
    """Start ranks 0 and 1 of ``scenario``; wait for the ranks in ``wait_for``, kill any still running."""
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), scenario, str(out)],
            env=_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                     SF_TEST_TIMEOUT=str(timeout_s)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for r in (0, 1)
    ]
    try:
        for r in wait_for:
            procs[r].wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return procs


def _stderr(procs: list[subprocess.Popen]) -> str:
    return "\n".join(f"--- rank {r}\n{p.stderr.read()[-3000:]}" for r, p in enumerate(procs))  # type: ignore[union-attr]


# --- no processes: sharding, loss scale, checksums ----------------------------------------------


@pytest.mark.parametrize(("n", "batch", "world"), [(100, 16, 2), (52, 4, 3), (37, 8, 2), (50, 4, 3)])
def test_sharded_batches_partition_the_single_process_batches(n: int, batch: int, world: int) -> None:
    # Oracle: the loader one process would use with the global batch world * batch, same seed.
    ds = TensorDataset(torch.arange(n))
    ref = DataLoader(ds, batch_size=world * batch, shuffle=True, generator=torch.Generator().manual_seed(5))
    gens = [torch.Generator().manual_seed(5) for _ in range(world)]
    parts = [distributed.ShardedBatches(n, batch, g, rank=r, world=world) for r, g in enumerate(gens)]
    shards = [DataLoader(ds, batch_sampler=p, generator=g) for p, g in zip(parts, gens)]
    for _epoch in range(3):  # reshuffled each epoch with the same draws
        expected = [b[0] for b in ref]
        if len(expected[-1]) < world:  # 50 = 4 x 12 + 2: the last 2 examples cannot feed 3 ranks
            expected = expected[:-1]
        got = list(zip(*[[b[0] for b in s] for s in shards]))
        assert len(got) == len(expected) == len(parts[0])
        for whole, pieces in zip(expected, got):
            assert torch.equal(torch.cat(pieces), whole)
            assert max(len(p) for p in pieces) - min(len(p) for p in pieces) <= 1


def test_loss_scale_makes_the_rank_average_the_global_mean() -> None:
    ds = TensorDataset(torch.arange(100))
    loader = DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert distributed.loss_scale(loader, 0) is None  # not sharded: the plain mean
    g = torch.Generator().manual_seed(0)
    sharded = DataLoader(ds, batch_sampler=distributed.ShardedBatches(100, 16, g, rank=0, world=2), generator=g)
    assert [distributed.loss_scale(sharded, i) for i in range(4)] == [2 / 32, 2 / 32, 2 / 32, 2 / 4]


def test_shard_refuses_a_loader_it_cannot_split_like_one_process() -> None:
    ds = TensorDataset(torch.arange(10))
    with pytest.raises(SparseflowError, match="shuffling DataLoader"):
        distributed.shard(DataLoader(ds, batch_size=2))
    with pytest.raises(SparseflowError, match="drop_last"):
        distributed.shard(DataLoader(ds, batch_size=3, shuffle=True, drop_last=True,
                                     generator=torch.Generator()))


def test_mask_checksums_are_crc32_of_the_mask_bytes() -> None:
    m = {"a": torch.tensor([[True, False], [False, True]]), "b": torch.ones(3, dtype=torch.bool)}
    sums = distributed.mask_checksums(m)
    assert sums == {"a": zlib.crc32(bytes([1, 0, 0, 1])), "b": zlib.crc32(bytes([1, 1, 1]))}
    m["a"][0, 1] = True
    assert distributed.mask_checksums(m)["a"] != sums["a"]


def test_bad_distributed_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SparseflowError, match="backend"):
        distributed.resolve_backend("mpi")
    with pytest.raises(SparseflowError, match="dist-timeout"):
        distributed.check_timeout(0)
    if not torch.cuda.is_available():
        with pytest.raises(SparseflowError, match="needs CUDA"):
            distributed.resolve_backend("nccl")
    for v in distributed.ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SparseflowError, match="MASTER_ADDR"):
        distributed.init(backend="gloo")


def test_world_size_keeps_single_process_run_names_and_must_match_the_processes(tmp_path: Path) -> None:
    from sparseflow.training.job import TrainJob
    from sparseflow.training.run import run_train_job

    assert "world_size" not in TrainJob().to_dict()  # run names of single-process runs are unchanged
    assert TrainJob(world_size=2).digest() != TrainJob().digest()
    with pytest.raises(SparseflowError, match="world_size"):
        TrainJob(world_size=0)
    with pytest.raises(SparseflowError, match="world_size=2 processes, but 1 are running"):
        run_train_job(TrainJob(world_size=2, epochs=1), tmp_path / "run", progress=False)


@pytest.mark.parametrize(("args", "message"), [
    (["--nproc", "0"], "--nproc must be an integer >= 1"),
    (["--dist-timeout", "-1"], "--dist-timeout must be a positive"),
    (["--backend", "mpi"], "unknown backend"),
])
def test_cli_refuses_bad_distributed_options(run_cli, args: list[str], message: str) -> None:
    code, _, err = run_cli(["train", *args, "--quick"])
    assert code == 2
    assert message in " ".join(err.split())


def test_cli_refuses_nccl_without_cuda_and_nproc_under_torchrun(run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    if not torch.cuda.is_available():
        code, _, err = run_cli(["train", "--backend", "nccl", "--quick"])
        assert code == 2 and "needs CUDA" in err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_cli(["train", "--nproc", "2", "--quick"])
    assert code == 2 and "under torchrun" in err


# --- 2 processes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp-methods")
    procs = launch("methods", out)
    assert [p.returncode for p in procs] == [0, 0], _stderr(procs)
    return out


def _load(out: Path, rank: int, name: str) -> dict:
    return torch.load(out / f"rank{rank}-{name}.pt", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", w.METHODS)
def test_masks_are_bit_identical_on_both_ranks_after_every_update(methods_run: Path, method: str) -> None:
    a, b = _load(methods_run, 0, method), _load(methods_run, 1, method)
    assert a["log"] == b["log"]  # (step, {layer: CRC32}) after prepare and after every change
    if method in ("set", "rigl"):  # ΔT = 4 up to T_end = 18 of 24 steps
        assert [step for step, _ in a["log"]] == [0, 4, 8, 12, 16]
    if method == "gmp":
        assert len(a["log"]) >= 10
    for name in a["mask"]:
        assert torch.equal(a["mask"][name], b["mask"][name])
    for name in a["state"]:
        assert torch.equal(a["state"][name], b["state"][name]), name


@pytest.fixture
def one_thread():
    # The ranks run with one thread each; so does the reference (and it is faster on 2 cores).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("method", w.METHODS)
def test_two_ranks_with_batch_b_match_one_rank_with_batch_2b(methods_run: Path, method: str, one_thread) -> None:
    log = w.MaskLog()
    model, m, result = w.train(method, batch=2 * w.BATCH, callbacks=[log])  # plain single-process loop
    got = _load(methods_run, 0, method)
    assert got["log"] == log.log  # the same masks after every update (RigL: grown from the averaged gradient)
    ref = model.state_dict()
    diff = max((got["state"][k] - ref[k]).abs().max().item() for k in ref)
    assert diff < TOL, f"{method}: max |w_2ranks - w_1rank| = {diff:.3g}"
    for mine, theirs in zip(got["history"], result.history):
        assert mine["step"] == theirs["step"]
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
        assert mine["test_acc"] == pytest.approx(theirs["test_acc"], abs=1 / 360 + 1e-9)  # at most one example


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp-sparse")
    procs = launch("sparse", out)
    assert [p.returncode for p in procs] == [0, 0], _stderr(procs)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", w.SPARSE_METHODS)
def test_two_ranks_in_sparse_execution_match_one_rank_in_dense_execution(sparse_run: Path, method: str,
                                                                          one_thread) -> None:
    log = w.MaskLog()
    model, m, result = w.train(method, batch=2 * w.BATCH, callbacks=[log])  # one process, masked dense
    a, b = _load(sparse_run, 0, f"sparse-{method}"), _load(sparse_run, 1, f"sparse-{method}")
    assert a["log"] == b["log"] == log.log  # the same masks after every update on both ranks and in one
    ref = model.state_dict()
    assert list(a["state"]) == list(ref)  # fit hands back nn.Linear layers: the same names and shapes
    for k in ref:
        assert torch.equal(a["state"][k], b["state"][k]), k
    diff = max((a["state"][k] - ref[k]).abs().max().item() for k in ref)
    assert diff < TOL, f"{method}: max |w_2ranks,sparse - w_1rank,dense| = {diff:.3g}"
    for mine, theirs in zip(a["history"], result.history):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)


@pytest.mark.slow
def test_a_mask_that_differs_between_ranks_stops_both_naming_the_layer(tmp_path: Path) -> None:
    procs = launch("mismatch", tmp_path)
    assert [p.returncode for p in procs] == [0, 0], _stderr(procs)
    for r in (0, 1):
        report = json.loads((tmp_path / f"rank{r}-mismatch.json").read_text())
        # (a) one entry of the last layer flipped on rank 1 at step 2: found at SET's first update (step 4)
        assert report["perturb"] is not None
        assert "masks of layer 'layers.2.weight' differ between ranks after the mask update at step 4" in report["perturb"]
        assert "rank 0 has CRC32" in report["perturb"] and "rank 1 has" in report["perturb"]
        # (b) RigL growing from each rank's local gradient drifts at its first update
        assert report["local_gradient"] is not None
        assert "differ between ranks after the mask update at step 4" in report["local_gradient"]


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_other_and_the_checkpoint_resumes_exactly(
    tmp_path: Path, methods_run: Path
) -> None:
    t0 = time.perf_counter()
    procs = launch("die", tmp_path, timeout_s=20)
    assert procs[1].returncode == 7  # os._exit(7) during step 10 (epoch 2)
    assert time.perf_counter() - t0 < 60
    report = json.loads((tmp_path / "rank0-die.json").read_text())
    assert report["error"] is not None, _stderr(procs)
    assert "rank 0 of 2: a collective operation failed at step 11 (epoch 2)" in report["error"]
    assert "the last checkpoint written stays valid" in report["error"]
    ckpt, meta = load_state(tmp_path / "run" / "checkpoint.safetensors")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 8)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1

    procs = launch("resume", tmp_path)
    assert [p.returncode for p in procs] == [0, 0], _stderr(procs)
    done, whole = _load(tmp_path, 0, "resume"), _load(methods_run, 0, "rigl")  # uninterrupted
    for k in whole["state"]:
        assert torch.equal(done["state"][k], whole["state"][k]), k
    for k in whole["mask"]:
        assert torch.equal(done["mask"][k], whole["mask"][k]), k


@pytest.mark.slow
def test_a_damaged_checkpoint_is_renamed_by_rank_0_alone_and_both_resume_from_the_previous(
    tmp_path: Path, methods_run: Path
) -> None:
    procs = launch("quarantine", tmp_path)
    errs = [p.stderr.read() for p in procs]  # type: ignore[union-attr]
    assert [p.returncode for p in procs] == [0, 0], errs
    run = tmp_path / "quarantine"
    assert (run / "checkpoint.safetensors.damaged").is_file()  # renamed aside once
    warnings = [[line for line in err.splitlines() if "renamed to" in line] for err in errs]
    assert len(warnings[0]) == 1 and warnings[1] == [], warnings  # rank 0 alone renames and says so
    assert "using the previous checkpoint" in warnings[0][0]
    ranks, whole = [_load(tmp_path, r, "quarantine") for r in (0, 1)], _load(methods_run, 0, "rigl")
    assert "renamed to" in ranks[0]["notes"][0]  # the run's report carries the note
    for done in ranks:  # resumed from epoch 1 on both ranks: exactly the uninterrupted run
        for k in whole["state"]:
            assert torch.equal(done["state"][k], whole["state"][k]), k
        for k in whole["mask"]:
            assert torch.equal(done["mask"][k], whole["mask"][k]), k


@pytest.mark.slow
def test_a_rank_that_hangs_stops_the_other_after_the_timeout(tmp_path: Path) -> None:
    procs = launch("hang", tmp_path, wait_for=(0,), timeout_s=3, timeout=60)
    report = json.loads((tmp_path / "rank0-hang.json").read_text())
    assert report["error"] is not None, _stderr(procs)
    assert "rank 0 of 2: a collective operation failed at step 11 (epoch 2)" in report["error"]
    assert report["seconds"] < 30  # 3 s timeout (plus the run before it), not rank 1's 120 s sleep
    assert load_state(tmp_path / "run" / "checkpoint.safetensors")[0]["epoch"] == 1


@pytest.mark.slow
def test_cli_nproc_2_trains_end_to_end(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sparseflow.storage import load as load_sfz

    out = tmp_path / "run"
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])  # the torchrun processes import this checkout
    code, stdout, err = run_cli(["train", "--nproc", "2", "--quick", "--json", "--method", "rigl", "--no-baseline",
                                 "--no-progress", "--out", str(out)])
    assert code == 0, err
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # rank 0 alone prints
    result = json.loads(lines[0])
    assert 0.5 < result["accuracy"] <= 1.0  # digits, 10 classes: chance is 0.1
    assert result["steps"] == 10 * 12  # 10 epochs of ceil(1437 / (2 * 64)) global batches
    for f in ("config.json", "metrics.jsonl", "checkpoint.safetensors", "model.sfz", "report.md", "result.json"):
        assert (out / f).exists(), f
    config = json.loads((out / "config.json").read_text())
    assert config["job"]["world_size"] == 2
    # Oracle for the accuracy: the stored model, evaluated here in one process.
    from sparseflow.training.data import load_dataset, loaders
    from sparseflow.training.models import build_model
    from sparseflow.training.loop import evaluate

    ds = load_dataset("digits")
    model = build_model("mlp", ds.input_shape, ds.num_classes)
    load_sfz(out / "model.sfz", model)
    acc, _ = evaluate(model, loaders(ds, 64, seed=0)[1])
    assert acc == pytest.approx(result["accuracy"], abs=1e-12)
