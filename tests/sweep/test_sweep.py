"""Sweeps: grid expansion, cells against run_train_job (the oracle), skipping finished cells, failures,
the table's statistics against a hand computation, the CLI's errors, and Ray against the local executor."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from scipy.stats import t as student_t

import sparseflow
from sparseflow.errors import SparseflowError
from sparseflow.training.rundir import read_run
from sparseflow.training.run import run_train_job
from sparseflow.sweep.config import Sweep
from sparseflow.sweep.grid import cell_dir, run_sweep
from sparseflow.sweep.executors import LocalExecutor, RayExecutor
from sparseflow.sweep.report import accuracy_figure, table

from conftest import RunCli

TINY = Sweep(methods=("gmp", "rigl"), sparsities=(0.8, 0.9), seeds=(0, 1), datasets=("digits",), epochs=2,
             baseline=False)


class Counting(LocalExecutor):
    """The local executor (2 processes, 1 torch thread each), recording which cells it was given."""

    def __init__(self) -> None:
        super().__init__(workers=2, threads=1)
        self.given: list[str] = []

    def run(self, cells, done) -> None:  # type: ignore[no-untyped-def]
        self.given += [c.job.run_name() for c in cells]
        super().run(cells, done)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("sweep") / "out"
    ex = Counting()
    return out, run_sweep(TINY, out, ex)


def _stamps(out: Path) -> dict[str, int]:
    return {p.parent.name + "/" + p.name: p.stat().st_mtime_ns
            for p in sorted((out / "cells").glob("*/*")) if p.is_file()}


def test_grid_expands_in_order_with_each_methods_distribution() -> None:
    sweep = Sweep(methods=("rigl", "dense"), sparsities=(0.8, 0.9), seeds=(3, 1), datasets=("digits", "mnist1d"),
                  epochs=4, lr=0.1, baseline=False)
    expected = []  # datasets, then methods, sparsities, seeds; dense once per seed (sparsity 0)
    for d in ("digits", "mnist1d"):
        expected += [(d, "rigl", 0.8, 3, "erk"), (d, "rigl", 0.8, 1, "erk"), (d, "rigl", 0.9, 3, "erk"),
                     (d, "rigl", 0.9, 1, "erk"), (d, "dense", 0.0, 3, "uniform"), (d, "dense", 0.0, 1, "uniform")]
    jobs = sweep.cells()
    assert [(j.dataset, j.method, j.sparsity, j.seed, j.distribution) for j in jobs] == expected
    assert all(j.epochs == 4 and j.lr == 0.1 and not j.baseline for j in jobs)
    assert [cell_dir(Path("o"), j) for j in jobs] == [Path("o/cells") / j.run_name() for j in jobs]
    assert len({j.digest() for j in jobs}) == len(jobs)
    # a distribution given for the sweep overrides every method's default
    assert {j.distribution for j in Sweep(methods=("rigl", "gmp"), distribution="er").cells()} == {"er"}


@pytest.mark.parametrize("kwargs, words", [
    (dict(methods=("gmp", "magic")), "'magic'"),
    (dict(sparsities=(0.8, 1.5)), "1.5"),
    (dict(seeds=()), "seeds is empty"),
    (dict(datasets=("cifar",)), "'cifar'"),
    (dict(sparsities=(0.9, 0.9)), "0.9 more than once"),
])
def test_bad_grid_names_the_value(kwargs: dict, words: str) -> None:
    with pytest.raises(SparseflowError, match=words):
        Sweep(**kwargs)


@pytest.mark.slow
def test_cells_equal_run_train_job(tiny, tmp_path: Path) -> None:
    out, result = tiny
    assert [r["cell"] for r in result.rows] == [j.run_name() for j in TINY.cells()]
    assert {r["status"] for r in result.rows} == {"ran"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the sweep's workers
    try:
        for job, r in zip(TINY.cells(), result.rows):
            direct = run_train_job(job, tmp_path / job.run_name(), progress=False)
            assert r["accuracy"] == direct.accuracy  # bit-identical: same seed, same config, one thread
            assert r["measured_sparsity"] == direct.sparsity
            assert r["dense_accuracy"] is None
            assert read_run(cell_dir(out, job), "train")["accuracy"] == direct.accuracy
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_rerun_skips_every_finished_cell(tiny) -> None:
    out, first = tiny
    before = _stamps(out)
    ex = Counting()
    again = run_sweep(TINY, out, ex)
    assert ex.given == []  # nothing was handed to an executor, so nothing trained
    assert _stamps(out) == before  # no cell file was rewritten
    assert [r["status"] for r in again.rows] == ["skipped"] * len(first.rows)
    assert [r["accuracy"] for r in again.rows] == [r["accuracy"] for r in first.rows]
    assert again.to_json()["cells_skipped"] == len(first.rows)


@pytest.mark.slow
def test_only_cells_without_a_valid_result_rerun(tiny, tmp_path: Path) -> None:
    src, first = tiny
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    jobs = TINY.cells()
    gone, stale, broken = jobs[2], jobs[5], jobs[7]
    (cell_dir(out, gone) / "result.json").unlink()  # interrupted after its last checkpoint: resumes from it
    path = cell_dir(out, stale) / "result.json"  # written by another version: cleared and trained again
    path.write_text(path.read_text().replace('"sparseflow_version": "', '"sparseflow_version": "0.0.0-'))
    (cell_dir(out, broken) / "result.json").unlink()  # interrupted while writing its checkpoint: starts over
    (cell_dir(out, broken) / "checkpoint.safetensors").write_bytes(b"\x00" * 100)
    before = _stamps(out)
    ex = Counting()
    again = run_sweep(TINY, out, ex)
    rerun = [gone.run_name(), stale.run_name(), broken.run_name()]
    assert sorted(ex.given) == sorted(rerun)
    assert [r["status"] for r in again.rows] == ["ran" if r["cell"] in rerun else "skipped" for r in first.rows]
    assert [r["accuracy"] for r in again.rows] == [r["accuracy"] for r in first.rows]
    assert read_run(cell_dir(out, stale), "train")["sparseflow_version"] == sparseflow.__version__
    after = _stamps(out)
    untouched = {k: v for k, v in before.items() if not k.startswith(tuple(rerun))}
    assert {k: after[k] for k in untouched} == untouched


@pytest.mark.slow
def test_table_equals_hand_computation(tiny) -> None:
    out, result = tiny
    stored = read_run(out, "sweep")
    # (a rerun test may have rewritten results.json since: statuses aside, the rows are the same)
    assert [{**r, "status": None} for r in stored["rows"]] == [{**r, "status": None} for r in result.rows]
    by_group = {}
    for r in stored["rows"]:
        by_group.setdefault((r["method"], r["sparsity"]), []).append(r["accuracy"])
    assert len(stored["table"]) == 4
    text = (out / "table.md").read_text()
    for entry in stored["table"]:
        accs = by_group[(entry["method"], entry["sparsity"])]
        mean = sum(accs) / len(accs)
        half = student_t.ppf(0.975, len(accs) - 1) * statistics.stdev(accs) / math.sqrt(len(accs))
        assert entry["n"] == 2 and entry["seeds"] == [0, 1] and entry["failed"] == 0
        assert entry["accuracy_mean"] == pytest.approx(mean, abs=1e-12)
        assert entry["accuracy_half"] == pytest.approx(half, abs=1e-12)
        assert f"| digits | {entry['method']} | {entry['sparsity']:g} | 2 | {100 * mean:.2f} ± {100 * half:.2f} |" in text


@pytest.mark.slow
def test_figure_plots_the_table(tiny) -> None:
    out, result = tiny
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = accuracy_figure(result)
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("target sparsity", "test accuracy (%)", "digits")
    rows = table(result.rows)
    for line in ax.get_lines():
        if line.get_label() in ("gmp", "rigl"):
            want = [100 * r["accuracy_mean"] for r in rows if r["method"] == line.get_label()]
            assert list(line.get_ydata()) == pytest.approx(want)
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["gmp", "rigl"]


@pytest.mark.slow
def test_failed_cell_is_reported_and_the_others_finish(tmp_path: Path, run_cli: RunCli) -> None:
    # 64 examples, 1 epoch: one step, too few for a GMP schedule; a random static mask trains fine.
    args = ["sweep", "--methods", "gmp,random", "--sparsities", "0.9", "--seeds", "0", "--subset", "64",
            "--epochs", "1", "--workers", "2", "--no-progress", "--out", str(tmp_path), "--json"]
    code, out, err = run_cli(args)
    assert code == 1
    obj = json.loads(out.strip().splitlines()[-1])
    assert (obj["cells_total"], obj["cells_finished"], obj["cells_failed"]) == (2, 1, 1)
    assert obj["criteria"]["all_cells_finished"] == {"value": 1, "target": "== 2 (cells in the grid)", "pass": False}
    (failed,) = obj["failed_cells"]
    assert "-gmp-" in failed["cell"] and "too few for a GMP schedule" in failed["error"]
    assert failed["cell"] in err
    assert (tmp_path / "cells" / failed["cell"] / "error.txt").is_file()
    random_row = next(r for r in obj["table"] if r["method"] == "random")
    assert random_row["n"] == 1 and random_row["accuracy_half"] is None
    assert "**1**" in (tmp_path / "table.md").read_text() and failed["error"] in (tmp_path / "table.md").read_text()
    # a rerun tries the failed cell again and skips the finished one
    code, out, _ = run_cli(args)
    obj = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and (obj["cells_skipped"], obj["cells_ran"], obj["cells_failed"]) == (1, 0, 1)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("flags, words", [
    (["--methods", "gmp,magic"], "unknown method 'magic'"),
    (["--sparsities", "0.8,1.5"], "got 1.5"),
    (["--seeds", ","], "--seeds needs at least one value"),
    (["--datasets", "cifar"], "unknown dataset 'cifar'"),
    (["--workers", "0"], "--workers"),
    (["--ray", "not an address"], "bad Ray address 'not an address'"),
    (["--ray", "127.0.0.1:{port}"], "no Ray cluster answers at '127.0.0.1:{port}'"),
    (["--epochs", "100000"], "pass --yes"),
])
def test_cli_bad_input_exits_2(flags: list[str], words: str, tmp_path: Path, run_cli: RunCli) -> None:
    port = str(_closed_port())
    code, _, err = run_cli(["sweep", *[f.replace("{port}", port) for f in flags], "--out", str(tmp_path)])
    assert code == 2
    assert err.startswith("error:") and words.replace("{port}", port) in " ".join(err.split())
    assert not (tmp_path / "cells").exists()


def test_cli_ray_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_cli: RunCli) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code, _, err = run_cli(["sweep", "--quick", "--ray", "127.0.0.1:6379", "--out", str(tmp_path)])
    assert code == 2 and "pip install 'sparseflow[ray]'" in err


@pytest.fixture(scope="module")
def ray_head():  # type: ignore[no-untyped-def]
    """A local Ray head (2 CPUs) in its own process group; its workers import this sparseflow."""
    pytest.importorskip("ray")
    port = _closed_port()
    src = str(Path(sparseflow.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]),
               RAY_USAGE_STATS_ENABLED="0")
    ray_cli = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen([str(ray_cli) if ray_cli.exists() else "ray", "start", "--head", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", "--block"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start --head did not come up on port {port}") from None
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the head drains for up to 30 s on SIGTERM: then the whole group goes
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.mark.slow
def test_ray_cells_equal_local_cells(ray_head: str, tiny, tmp_path: Path) -> None:
    _, local = tiny
    ex = RayExecutor(ray_head, cpus_per_cell=1)
    try:
        assert ex.parallel(8) == 2  # the head's 2 CPUs, one per cell
        result = run_sweep(TINY, tmp_path / "ray", ex)
    finally:
        ex.close()
    assert [r["status"] for r in result.rows] == ["ran"] * len(local.rows), [r["error"] for r in result.rows]
    assert [r["cell"] for r in result.rows] == [r["cell"] for r in local.rows]
    assert [r["accuracy"] for r in result.rows] == [r["accuracy"] for r in local.rows]
    assert result.executor.startswith(f"Ray cluster at {ray_head}")
