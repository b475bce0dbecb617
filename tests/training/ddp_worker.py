"""One rank of the distributed tests (tests/test_distributed.py starts two of these with torchrun's variables).

``python tests/ddp_worker.py SCENARIO OUT_DIR`` joins the gloo group, runs the scenario and writes what the
test compares to ``OUT_DIR/rank<r>-<name>.pt`` (or ``.json``). :func:`train` is also imported by the test,
which runs it in one process with the doubled batch as the reference.

Scenarios:
  methods   each method in METHODS: checksums after every mask update, final weights and mask
  sparse    the same for SPARSE_METHODS in sparse execution (nnz-sized parameters under DDP)
  mismatch  (a) rank 1 flips one mask entry of the last layer before the first SET update; (b) RigL with its
            gradient hooks left on, so it grows from each rank's local gradient (the drift bug): the check
            must stop both ranks each time
  die       rank 1 exits abruptly during epoch 2 (RigL, run directory OUT/run): rank 0 must stop with a clear
            error; the checkpoint of epoch 1 stays
  resume    continue OUT/run on both ranks: must end exactly where the uninterrupted run ends
  quarantine  both ranks stop after epoch 2 (RigL, OUT/quarantine), rank 0 damages the newest checkpoint, both
            resume: rank 0 alone renames the damaged file aside, both continue from the previous one (epoch 1)
  hang      rank 1 stops answering during epoch 2 (sleeps): rank 0 must stop after the collective timeout
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from pathlib import Path

import torch

from sparseflow.training import distributed
from sparseflow.training.data import load_dataset, loaders
from sparseflow.errors import SparseflowError
from sparseflow.training.build import build_method, first_batch
from sparseflow.training.job import TrainJob
from sparseflow.methods.base import Method
from sparseflow.training.models import build_model
from sparseflow.training.loop import Callback, TrainConfig, TrainState, fit

METHODS = ("gmp", "magnitude", "random", "snip", "grasp", "synflow", "set", "rigl")
SPARSE_METHODS = ("random", "set", "rigl")  # trained in sparse execution by the "sparse" scenario
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
          optimizer: str = "sgd", resume: bool = False, execution: str = "dense"):
    """Train a small MLP on ``SUBSET`` digits with ``method``; under torch.distributed each rank takes its
    ``batch`` of every global batch of ``world * batch``. Returns (model, method, result)."""
    job = TrainJob(method=method, sparsity=0.8, dataset="digits", subset=SUBSET, epochs=epochs, batch_size=batch,
                   lr=0.05, optimizer=optimizer, seed=3, hidden=(32, 16), world_size=distributed.world_size(),
                   execution=execution)
    ds = load_dataset("digits", subset=SUBSET, seed=job.seed)
    train_loader, test_loader = loaders(ds, batch, seed=job.seed)
    if distributed.active():
        train_loader = distributed.shard(train_loader)
    model = build_model("mlp", ds.input_shape, ds.num_classes, hidden=job.hidden, seed=job.seed)
    cfg = TrainConfig(**job.train_config_kwargs())
    m = build_method(job, cfg.epochs * len(train_loader), batch=first_batch(ds, job), input_shape=ds.input_shape)
    result = fit(model, train_loader, test_loader, cfg, method=m, callbacks=callbacks, run_dir=run_dir,
                 progress=False, resume=resume)
    return model, m, result


class Crash(Exception):
    pass


class AtStep(Callback):
    def __init__(self, step: int, action) -> None:
        self.step, self.action = step, action

    def on_step_end(self, state: TrainState) -> None:
        if state.step == self.step:
            self.action(state)


def _error_of(run) -> str | None:
    try:
        run()
    except SparseflowError as e:
        return str(e)
    return None


def main(scenario: str, out: Path) -> None:
    distributed.init(backend="gloo", timeout_s=float(os.environ.get("SF_TEST_TIMEOUT", "20")))
    r = distributed.rank()
    if scenario == "methods":
        for method in METHODS:
            log = MaskLog()
            model, m, result = train(method, batch=BATCH, callbacks=[log])
            torch.save({"log": log.log, "state": model.state_dict(), "mask": dict(m.mask),
                        "history": result.history}, out / f"rank{r}-{method}.pt")
    elif scenario == "sparse":
        for method in SPARSE_METHODS:
            log = MaskLog()
            model, m, result = train(method, batch=BATCH, callbacks=[log], execution="sparse")
            torch.save({"log": log.log, "state": model.state_dict(), "mask": dict(m.mask),
                        "history": result.history}, out / f"rank{r}-sparse-{method}.pt")
    elif scenario == "mismatch":
        def flip(state: TrainState) -> None:
            if distributed.rank() == 1:  # in place: the check must catch what a buggy update would do
                name = list(state.method.mask)[-1]  # type: ignore[union-attr]
                state.method.mask[name].view(-1)[0] ^= True  # type: ignore[union-attr]

        report = {"perturb": _error_of(lambda: train("set", batch=BATCH, callbacks=[AtStep(2, flip)]))}
        saved = Method.mask_grads_
        del Method.mask_grads_  # fit then keeps the hooks, which see the local gradient before DDP averages it
        try:
            report["local_gradient"] = _error_of(lambda: train("rigl", batch=BATCH))
        finally:
            Method.mask_grads_ = saved  # type: ignore[method-assign]
        (out / f"rank{r}-mismatch.json").write_text(json.dumps(report))
    elif scenario in ("die", "hang"):
        def stop(state: TrainState) -> None:
            if distributed.rank() == 1:
                if scenario == "die":
                    os._exit(7)
                time.sleep(120)  # the test kills this rank once rank 0 has given up

        t0 = time.perf_counter()
        report = {"error": _error_of(lambda: train("rigl", batch=BATCH, callbacks=[AtStep(10, stop)],
                                                   run_dir=out / "run"))}
        report["seconds"] = time.perf_counter() - t0
        (out / f"rank{r}-{scenario}.json").write_text(json.dumps(report))
        if scenario == "hang":
            os._exit(0)  # leaving the group (or exiting normally) would wait for the sleeping rank
    elif scenario == "resume":
        model, m, _ = train("rigl", batch=BATCH, run_dir=out / "run", resume=True)
        torch.save({"state": model.state_dict(), "mask": dict(m.mask)}, out / f"rank{r}-resume.pt")
    elif scenario == "quarantine":
        run_dir = out / "quarantine"

        def stop(state: TrainState) -> None:
            raise Crash  # on both ranks, at the same step: after epoch 2's checkpoint (8 steps per epoch)

        try:
            train("rigl", batch=BATCH, run_dir=run_dir, callbacks=[AtStep(17, stop)])
        except Crash:
            pass
        distributed.barrier()
        if r == 0:  # one bit in the middle of the newest checkpoint's tensor data: its checksum fails
            data = bytearray((run_dir / "checkpoint.safetensors").read_bytes())
            (header_len,) = struct.unpack("<Q", data[:8])
            data[8 + header_len + (len(data) - 8 - header_len) // 2] ^= 0x01
            (run_dir / "checkpoint.safetensors").write_bytes(bytes(data))
        distributed.barrier()
        model, m, result = train("rigl", batch=BATCH, run_dir=run_dir, resume=True)
        torch.save({"state": model.state_dict(), "mask": dict(m.mask), "notes": result.notes},
                   out / f"rank{r}-quarantine.pt")
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    distributed.shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], Path(sys.argv[2]))
