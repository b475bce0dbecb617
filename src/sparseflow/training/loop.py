"""A small training loop with callbacks, checkpoints and exact resume, read top to bottom.

This is the loop the CLI and the experiments use; users with their own loop never need it (they call
``method.prepare(model, optimizer)`` once and ``method.step()`` after every ``optimizer.step()``).

Per batch: forward, cross-entropy, backward (the method's gradient hooks hand each target's dense gradient
to the method, which is what RigL grows from, and mask it), ``optimizer.step()``, ``method.step()``,
``scheduler.step()``, ``zero_grad(set_to_none=True)``. :func:`fit` is the loop itself; the helpers below it
set up distributed training (:func:`_setup_distributed`, :func:`_loss`, :func:`_check_masks`) and show
progress (:class:`_Display`); :class:`sparseflow.training.resume.RunDir` keeps the run directory and the
position within an epoch. So the loop fits on one screen.

A run directory holds::

    config.json                     what the run was started with (``config``, default ``cfg``)
    metrics.jsonl                   one line per finished epoch (rewritten from the checkpoint on resume)
    checkpoint.safetensors          the newest checkpoint
    checkpoint.prev.safetensors     the one before it (see :mod:`sparseflow.training.checkpoints`)

A checkpoint (:mod:`sparseflow.training.resume`) is written every ``cfg.checkpoint_every`` steps (if set), at
the end of every epoch and so at the end of training; atomically, with a SHA-256 checksum, keeping the
previous one. ``resume=True`` restores it (the previous one, with a warning, if the newest is damaged) and
continues from the very next batch; the result equals the uninterrupted run bit-for-bit, wherever the run
was stopped. A finished run resumes to its result without training. Resuming with another configuration is
refused, naming the settings that differ (``checkpoint_every``, ``log_every`` and the display options may
change).

Under torch.distributed (:mod:`sparseflow.training.distributed`) the model is wrapped in
DistributedDataParallel, the loss is scaled so that its average is the global batch's mean, masks are
compared across ranks after every update, and only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader

from sparseflow.errors import SparseflowError, first_line
from sparseflow.layouts import batch_size, call, default_loss, predictions, sequence_output, split_batch, to_device
from sparseflow.training import distributed
from sparseflow.training.checkpoints import CHECKPOINT_FILE, rng_snapshot
from sparseflow.training.hparams import LR_SCHEDULES, OPTIMIZERS, TrainConfig, make_optimizer, make_scheduler
from sparseflow.training.resume import EpochPosition, RunDir
from sparseflow.methods.sparse_linear import SparseTrainLinear
from sparseflow.training.state import Callback, SparsityMethod, TrainResult, TrainState

__all__ = ["CHECKPOINT_FILE", "LR_SCHEDULES", "OPTIMIZERS", "Callback", "SparsityMethod", "TrainConfig",
           "TrainResult", "TrainState", "evaluate", "fit", "make_optimizer", "make_scheduler"]


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, method: SparsityMethod | None = None) -> float:
    """One step of a hand-written loop: zero the gradients, backward, ``optimizer.step()``, then ``method.step()``
    (which re-applies the mask); returns the loss as a float."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if method is not None:
        method.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, *, device: str | torch.device | None = None
) -> tuple[float, float]:
    """(accuracy, mean loss) over ``loader``; restores the model's train/eval mode.

    Batches are ``(x, y)`` pairs or dicts of model inputs; the loss is :func:`~sparseflow.layouts.default_loss`
    (cross-entropy, or the model's own loss). For a language model's ``(B, T, V)`` logits against ``(B, T)``
    targets both are per position: the mean token cross-entropy (whose exp is the perplexity) and the
    fraction of next tokens predicted. Accuracy is NaN when the model is not a classifier (a model that
    computes its own loss from labels it shifts)."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    correct, predicted, loss_sum, n, classified = 0, 0, 0.0, 0, True
    for batch in loader:
        inputs, y = (to_device(v, device) for v in split_batch(batch))
        with batch_errors("evaluate on", inputs, y, first=n == 0):
            out = call(model, inputs)
            k = batch_size(inputs)
            loss_sum += _summed_loss(out, y, k).item()
        pred = predictions(out, y)
        classified = classified and pred is not None
        if pred is not None:
            correct += int((pred == y).sum().item())
            predicted += pred.numel()
        n += k
    model.train(was_training)
    if n == 0:
        raise SparseflowError("evaluate() got a loader that yields no samples; pass a non-empty test loader")
    return (correct / predicted if classified else math.nan), loss_sum / n


def _describe(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"{str(v.dtype).removeprefix('torch.')} {tuple(v.shape)}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {_describe(t)}" for k, t in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_describe(t) for t in v) + ")"
    return type(v).__name__


@contextmanager
def batch_errors(doing: str, x: Any, y: Any, *, first: bool) -> Iterator[None]:
    """Turn torch's error on the *first* batch (the model or the loss cannot take what the loader yields: a
    wrong shape, dtype or number of classes) into one :class:`SparseflowError` naming the batch. Later batches
    are not wrapped: an error there is not about the loader's format."""
    if not first:
        yield
        return
    try:
        yield
    except SparseflowError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise SparseflowError(
            f"cannot {doing} the first batch (inputs {_describe(x)}, targets {_describe(y)}): {first_line(e)}; "
            "the loader must yield (inputs, targets) the model takes, with targets of class indices (or dicts of "
            "the model's keyword inputs)") from e


def _summed_loss(out: Any, y: Any, n: int) -> torch.Tensor:
    """The loss summed over the batch's ``n`` examples, each example's loss being the mean over its positions
    (cross-entropy exactly; a model's own mean loss × n)."""
    if isinstance(out, torch.Tensor):
        if sequence_output(out, y):  # (B, T, V): B examples of T positions each
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum") / out.shape[1]
        return F.cross_entropy(out, y, reduction="sum")
    return default_loss(out, y) * n


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader,
    cfg: TrainConfig,
    *,
    method: SparsityMethod | None = None,
    callbacks: Sequence[Callback] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
    config: dict[str, Any] | None = None,
    label: str = "",
) -> TrainResult:
    """Train ``model`` for ``cfg.epochs`` epochs; see the module docstring for the loop and run dir.

    ``config`` is written to ``run_dir/config.json`` (default: ``cfg`` as a dict). Under torch.distributed
    pass a ``train_loader`` made by :func:`sparseflow.training.distributed.shard`. ``label`` names the run
    in the progress display ("sparse run", "dense baseline"); a resumed run that had already finished shows
    one line saying so instead of a progress bar.
    """
    _check_arguments(method, train_loader, run_dir, resume)
    total_steps, device = cfg.epochs * len(train_loader), torch.device(device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    if method is not None:
        _prepare(method, model, optimizer, cfg.execution)
    state = TrainState(model, optimizer, method, step=0, epoch=0, total_steps=total_steps)
    manual_grads = _setup_distributed(method)
    run = RunDir(run_dir, cfg, state, scheduler, train_loader, device)
    resume_at = run.open(resume, config)  # the position within an epoch, when the checkpoint is in one
    net = _wrap(model, method, state.step)
    show = _Display(progress and distributed.is_main(), cfg, state, label)
    run.start()
    for cb in callbacks:
        cb.on_train_start(state)
    where = lambda: f"at step {state.step + 1} (epoch {state.epoch})"  # noqa: E731 (for error messages)
    with show, distributed.collective_errors(where):
        for epoch in range(state.epoch if resume_at is not None else state.epoch + 1, cfg.epochs + 1):
            state.epoch = epoch
            model.train()
            # Where this epoch starts: at batch 0 with the RNG as it is, or where a checkpoint left it.
            pos, resume_at = resume_at or EpochPosition(rng_snapshot(train_loader, device)), None
            loss_sum, seen, lr = pos.loss_sum, pos.seen, pos.lr
            for i, batch in enumerate(pos.batches_left(train_loader, epoch, device), start=pos.batches):
                x, y = (to_device(v, device) for v in split_batch(batch))
                with batch_errors("train on", x, y, first=state.step == 0):
                    loss, value = _loss(net, x, y, train_loader, i)
                _check_finite(value, state, cfg)
                loss.backward()
                if manual_grads:
                    method.mask_grads_()  # type: ignore[union-attr]
                lr = optimizer.param_groups[0]["lr"]  # the LR this step used
                optimizer.step()
                _method_step(method, state.step)  # re-applies the mask after the optimizer moved the weights
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                state.step += 1
                loss_sum += value * batch_size(x)
                seen += batch_size(x)
                state.metrics = {"epoch": epoch, "step": state.step, "loss": value, "lr": lr}
                show.step(loss_sum / seen, value, lr)
                for cb in callbacks:
                    cb.on_step_end(state)
                pos.batches += 1
                run.checkpoint_within_epoch(pos, loss_sum, seen, lr)

            loss_sum, seen = _epoch_sums(method, epoch, loss_sum, seen)
            test_acc = test_loss = None
            if cfg.eval_every_epoch or epoch == cfg.epochs:
                test_acc, test_loss = evaluate(model, test_loader, device=device)
                show.evaluated(test_acc)
            record = {"epoch": epoch, "step": state.step, "train_loss": loss_sum / seen, "test_loss": test_loss,
                      "test_acc": test_acc, "lr": lr, "elapsed_s": run.elapsed(), "density": _density(model)}
            state.history.append(record)
            state.metrics = dict(record)
            run.checkpoint_epoch_end(record["elapsed_s"])
            show.epoch_done(record)
            for cb in callbacks:
                cb.on_epoch_end(state)
    for cb in callbacks:
        cb.on_train_end(state)
    if getattr(method, "execution", "dense") != "dense":
        method.set_execution("dense")  # type: ignore[union-attr]  # hand back the model as it came: nn.Linear layers
    last = state.history[-1]
    return TrainResult(test_acc=last["test_acc"], test_loss=last["test_loss"], train_loss=last["train_loss"],
                       history=tuple(state.history), steps=state.step, wall_s=run.elapsed(), notes=run.notes)


# --- set-up and display --------------------------------------------------------------------------------
def _check_arguments(method: Any, train_loader: DataLoader, run_dir: str | Path | None, resume: bool) -> None:
    if method is not None and not isinstance(method, SparsityMethod):
        raise SparseflowError(
            f"method {method!r} lacks prepare/step/state_dict/load_state_dict; pass a sparsity method or None"
        )
    if resume and run_dir is None:
        raise SparseflowError("resume=True needs a run_dir holding the checkpoint; pass run_dir")
    if len(train_loader) == 0:
        raise SparseflowError("train_loader yields no batches; pass a non-empty loader")


def _check_finite(value: float, state: TrainState, cfg: TrainConfig) -> None:
    if not math.isfinite(value):
        raise SparseflowError(
            f"training loss is {value} at step {state.step + 1} (epoch {state.epoch}): the run diverged; "
            f"use a smaller lr than {cfg.lr} or check the inputs for inf/NaN"
        )


class _Display:
    """The progress bar and the per-step and per-epoch lines, on stderr (stdout stays clean for --json).

    It opens with one line naming the run (its ``label``) and where it starts; a run restored at its last step
    gets that line only ("already finished"), no bar.
    """

    def __init__(self, enabled: bool, cfg: TrainConfig, state: TrainState, label: str = "") -> None:
        self.enabled, self.cfg, self.state, self.label = enabled, cfg, state, label
        self.indent = "  " if label else ""  # the lines under the label's opening line
        self.console = Console(stderr=True, soft_wrap=True)  # lines are not wrapped (logs, pipes)
        self.bar = Progress(
            TextColumn((f"{label}: " if label else "") + "epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  test acc {task.fields[acc]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=True,
        )

    def __enter__(self) -> _Display:
        s = self.state
        finished = s.step >= s.total_steps
        opening = self._opening(finished)
        if self.enabled and opening:
            self.console.print(opening, highlight=False, markup=False)
        self.bar.disable = not self.enabled or finished
        self.bar.__enter__()
        self.task = self.bar.add_task("train", total=s.total_steps, completed=s.step, epoch="-", loss="-", acc="-")
        return self

    def _opening(self, finished: bool) -> str:
        s, name = self.state, self.label or "training"
        if finished:
            last = s.history[-1] if s.history else {}
            acc = last.get("test_acc")
            return (f"{name}: already finished ({s.step} steps, {_plural(len(s.history), 'epoch')}"
                    + ("" if acc is None else f", test accuracy {acc:.4f}") + "); reported from its checkpoint, "
                    "not trained again")
        if s.step:
            return f"{name}: resuming at step {s.step} of {s.total_steps} (epoch {s.epoch} of {self.cfg.epochs})"
        return f"{name}: {s.total_steps} steps ({_plural(self.cfg.epochs, 'epoch')})" if self.label else ""

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def step(self, mean_loss: float, value: float, lr: float) -> None:
        s = self.state
        self.bar.update(self.task, advance=1, epoch=f"{s.epoch}/{self.cfg.epochs}", loss=f"{mean_loss:.4f}")
        if self.enabled and self.cfg.log_every and s.step % self.cfg.log_every == 0:
            self.console.print(f"{self.indent}step {s.step}/{s.total_steps}  loss {value:.4f}  lr {lr:.3g}",
                               highlight=False, markup=False)

    def evaluated(self, test_acc: float) -> None:
        self.bar.update(self.task, acc=f"{test_acc:.4f}")

    def epoch_done(self, record: dict[str, Any]) -> None:
        if self.enabled:
            acc = "-" if record["test_acc"] is None else f"{record['test_acc']:.4f}"
            self.console.print(f"{self.indent}epoch {record['epoch']}/{self.cfg.epochs}  train loss "
                               f"{record['train_loss']:.4f}  test acc {acc}", highlight=False, markup=False)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _density(model: nn.Module) -> float:
    """Fraction of nonzero entries over all parameters with dim > 1 (weights, not biases or norms); a layer in
    sparse execution counts as its dense weight."""
    nonzero, total = 0, 0
    sparse = {id(m.values) for m in model.modules() if isinstance(m, SparseTrainLinear)}
    for m in model.modules():
        if isinstance(m, SparseTrainLinear):
            nonzero += int(torch.count_nonzero(m.values).item())
            total += m.out_features * m.in_features
    for p in model.parameters():
        if p.dim() > 1 and id(p) not in sparse:
            nonzero += int(torch.count_nonzero(p).item())
            total += p.numel()
    return nonzero / total if total else 1.0


def _prepare(method: SparsityMethod, model: nn.Module, optimizer: torch.optim.Optimizer, execution: str) -> None:
    """``method.prepare`` in the configured execution (a method without sparse execution takes only "dense")."""
    if execution == "dense":
        method.prepare(model, optimizer)
        return
    if not hasattr(method, "set_execution"):
        raise SparseflowError(f"execution={execution!r} needs a sparseflow method (it converts the layers it masks); "
                              f"{type(method).__name__} has no set_execution: use execution='dense'")
    if execution == "auto" and distributed.active():
        raise SparseflowError("execution='auto' chooses layers after the first step, when DistributedDataParallel "
                              "already holds the parameters: under torch.distributed use execution='sparse' or 'dense'")
    method.prepare(model, optimizer, execution=execution)  # type: ignore[call-arg]


# --- distributed: a no-op in one process -------------------------------------------------------------
def _setup_distributed(method: SparsityMethod | None) -> bool:
    """Whether the loop masks gradients by hand (``method.mask_grads_()`` after backward).

    DDP averages gradients at the end of backward, after the method's gradient hooks saw the local ones; so
    under DDP the hooks are removed and the method masks the averaged gradients (and RigL reads them) instead.
    """
    manual = distributed.active() and method is not None and hasattr(method, "mask_grads_")
    if manual:
        method.remove()  # type: ignore[union-attr]
    return manual


def _wrap(model: nn.Module, method: SparsityMethod | None, step: int) -> nn.Module:
    """The model as the loop calls it: wrapped after prepare/restore (DDP broadcasts rank 0's weights), with
    the masks compared across ranks."""
    net = distributed.wrap(model) if distributed.active() else model
    with distributed.collective_errors(lambda: "before training"):
        _check_masks(method, "after prepare" if step == 0 else f"after resuming at step {step}")
    return net


def _loss(net: nn.Module, x: Any, y: Any, loader: DataLoader, i: int) -> tuple[torch.Tensor, float]:
    """(the loss to backpropagate, the batch's mean loss) for batch ``i`` of the epoch: cross-entropy, or the
    model's own loss (a Hugging Face model given labels in a dict batch).

    Under DDP the summed loss is scaled so that DDP's average over ranks is the global batch's mean.
    """
    scale = distributed.loss_scale(loader, i) if distributed.active() else None
    if scale is None:
        loss = default_loss(call(net, x), y)
        return loss, loss.item()
    n = batch_size(x)
    summed = _summed_loss(call(net, x), y, n)
    return summed * scale, summed.item() / max(n, 1)


def _method_step(method: SparsityMethod | None, step: int) -> None:
    """``method.step()`` (re-applies the mask after the optimizer moved the weights); masks compared across
    ranks whenever it changed them."""
    if method is None:
        return
    version = getattr(method, "mask_version", None)
    method.step()
    if distributed.active() and (version is None or getattr(method, "mask_version", None) != version):
        _check_masks(method, f"after the mask update at step {step + 1}")


def _epoch_sums(method: SparsityMethod | None, epoch: int, loss_sum: float, seen: int) -> tuple[float, float]:
    """The epoch's loss sums over all ranks (masks compared once more); as they are in one process."""
    if not distributed.active():
        return loss_sum, seen
    loss_sum, seen = distributed.all_reduce_sum([loss_sum, float(seen)])
    _check_masks(method, f"at the end of epoch {epoch}")
    return loss_sum, seen


def _check_masks(method: SparsityMethod | None, when: str) -> None:
    mask = getattr(method, "mask", None)
    if mask is not None and distributed.active():
        distributed.check_masks(mask, when=when)
