"""One rank of the distributed tests (tests/test_distributed.py starts two of these with torchrun's variables).

``python tests/ddp_worker.py SCENARIO OUT_DIR`` joins the gloo group, runs the scenario and writes what the
test compares to ``OUT_DIR/rank<r>-<name>.pt`` (or ``.json``). :func:`train` is also imported by the test,
which runs it in one process with the doubled batch as the reference.

Scenarios:
  methods  each method in METHODS: checksums after every mask update, final weights and mask
  perturb  rank 1 flips one mask entry of the last layer before the first SET update: the check must stop both
  die      rank 1 exits abruptly during epoch 2: rank 0 must stop with a clear error; checkpoint of epoch 1 kept
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from sparseflow import distributed
from sparseflow.data import load_dataset, loaders
from sparseflow.errors import SparseflowError
from sparseflow.job import TrainJob, build_method, first_batch
from sparseflow.models import build_model
from sparseflow.train import Callback, TrainConfig, TrainState, fit

METHODS = ("gmp", "magnitude", "random", "snip", "grasp", "synflow", "set", "rigl")
SUBSET, BATCH, EPOCHS = 240, 16, 3  # 240 = 7 global batches of 32 and a short one of 16 (split 8 + 8)


class MaskLog(Callback):
    """Checksums of the method's mask after prepare and after every step that changed it."""

    def __init__(self) -> None:
        self.version = -1
        self.log: list[tuple[int, dict[str, int]]] = []

    def _record(self, state: TrainState) -> None:
        m = state.method
        if m is not None and m.mask_version != self.version:  # type: ignore[union-attr]
            self.version = m.mask_version  # type: ignore[union-attr]
            self.log.append((state.step, distributed.mask_checksums(m.mask)))  # type: ignore[union-attr]

    on_train_start = _record
    on_step_end = _record


def train(method: str, *, batch: int, callbacks=(), run_dir: Path | None = None, epochs: int = EPOCHS,
          optimizer: str = "sgd"):
    """Train a small MLP on ``SUBSET`` digits with ``method``; under torch.distributed each rank takes its
    ``batch`` of every global batch of ``world * batch``. Returns (model, method, result)."""
    job = TrainJob(method=method, sparsity=0.8, dataset="digits", subset=SUBSET, epochs=epochs, batch_size=batch,
                   lr=0.05, optimizer=optimizer, seed=3, hidden=(32, 16), world_size=distributed.world_size())
    ds = load_dataset("digits", subset=SUBSET, seed=job.seed)
    train_loader, test_loader = loaders(ds, batch, seed=job.seed)
    if distributed.active():
        train_loader = distributed.shard(train_loader)
    model = build_model("mlp", ds.input_shape, ds.num_classes, hidden=job.hidden, seed=job.seed)
    cfg = TrainConfig(**job.train_config_kwargs())
    m = build_method(job, cfg.epochs * len(train_loader), batch=first_batch(ds, job), input_shape=ds.input_shape)
    result = fit(model, train_loader, test_loader, cfg, method=m, callbacks=callbacks, run_dir=run_dir,
                 progress=False)
    return model, m, result


class AtStep(Callback):
    def __init__(self, step: int, action) -> None:
        self.step, self.action = step, action

    def on_step_end(self, state: TrainState) -> None:
        if state.step == self.step:
            self.action(state)


def main(scenario: str, out: Path) -> None:
    distributed.init(backend="gloo", timeout_s=float(os.environ.get("SF_TEST_TIMEOUT", "20")))
    r = distributed.rank()
    if scenario == "methods":
        for method in METHODS:
            log = MaskLog()
            model, m, result = train(method, batch=BATCH, callbacks=[log])
            torch.save({"log": log.log, "state": model.state_dict(), "mask": dict(m.mask),
                        "history": result.history}, out / f"rank{r}-{method}.pt")
    elif scenario == "perturb":
        def flip(state: TrainState) -> None:
            if distributed.rank() == 1:  # in place: the check must catch what a buggy update would do
                name = list(state.method.mask)[-1]  # type: ignore[union-attr]
                state.method.mask[name].view(-1)[0] ^= True  # type: ignore[union-attr]

        try:
            train("set", batch=BATCH, callbacks=[AtStep(2, flip)])
            report = {"error": None}
        except SparseflowError as e:
            report = {"error": str(e)}
        (out / f"rank{r}-perturb.json").write_text(json.dumps(report))
    elif scenario == "die":
        def die(state: TrainState) -> None:
            if distributed.rank() == 1:
                os._exit(7)

        t0 = time.perf_counter()
        try:
            train("rigl", batch=BATCH, callbacks=[AtStep(10, die)], run_dir=out / "run")
            report = {"error": None}
        except SparseflowError as e:
            report = {"error": str(e)}
        report["seconds"] = time.perf_counter() - t0
        (out / f"rank{r}-die.json").write_text(json.dumps(report))
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    distributed.shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], Path(sys.argv[2]))
