"""Training across the percolation threshold: MLPs whose hidden layers are random masks of mean fan-in c.

Setting. An MLP with ``depth`` hidden layers of ``width`` ReLU units. The first Linear (input -> first hidden
layer) and the classifier (last hidden layer -> logits) stay dense; every hidden -> hidden Linear is a
uniform random mask (:class:`sparseflow.methods.RandomSparse` with :func:`sparseflow.distributions.uniform`)
of density c/width, i.e. mean fan-in c. So the first hidden layer is the fully active input layer of the
percolation model (every unit reads all pixels), the ``depth - 1`` sparse masks are its layered random graph,
and the dense readout sees exactly the units of the last hidden layer that some path reaches. Below c = 1 the
reached fraction decays like c^L (:mod:`sparseflow.experiments.percolation.theory`), the logits stop depending on the
input and test accuracy falls to chance: the accuracy of the best constant prediction, the test set's most
frequent class.

Initialisation: PyTorch's default draw, then :func:`sparseflow.init.sparse_init_` (He gain, per-unit kept
fan-in, Evci et al. 2022) on every layer once the mask is in place, so that signal variance neither explodes
nor vanishes with depth and any failure to learn is the missing paths, not the scale. (RandomSparse's own
default, :func:`sparseflow.init.rescale_`, keeps PyTorch's 1/(3·fan_in) family, whose variance shrinks
six-fold per ReLU layer: a 12-layer net would not train at any c.) Adam, cosine schedule, no weight decay.

Connectivity is measured on each trained mask: whether any input-output path exists
(:func:`sparseflow.experiments.collapse.run.has_path`) and the fraction of the last hidden layer reached from
the input, next to its wide-network prediction ρ_{depth-1}(c) (:func:`~sparseflow.experiments.percolation.theory.mean_field_fractions`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sparseflow.training.data import Dataset, load_dataset, loaders
from sparseflow.distributions import uniform
from sparseflow.errors import SparseflowError
from sparseflow.experiments.collapse.run import has_path
from sparseflow.init import sparse_init_
from sparseflow.methods import RandomSparse
from sparseflow.training.models import build_model
from sparseflow.targets import Targets, prunable
from sparseflow.training.loop import Callback, TrainConfig, TrainState, fit

HIDDEN_ONLY = Targets(first_layer=False, last_layer=False)


@dataclass(frozen=True)
class TrainPoint:
    """One trained network: mean fan-in ``c``, seed, test accuracy and the connectivity of its mask."""

    c: float
    seed: int
    accuracy: float
    connected: bool  # some input-output path through kept weights
    reached: float  # fraction of the last hidden layer reachable from the input


@dataclass(frozen=True)
class TrainSweep:
    points: tuple[TrainPoint, ...]
    chance: float
    dataset: str
    depth: int
    width: int
    epochs: int

    def cs(self) -> list[float]:
        return sorted({p.c for p in self.points})

    def at(self, c: float) -> list[TrainPoint]:
        return [p for p in self.points if p.c == c]


class _HeInit(Callback):
    """Redraw every weight from N(0, 2/kept fan-in) once the mask is in place (before the first step)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_start(self, state: TrainState) -> None:
        sparse_init_(state.model, generator=torch.Generator().manual_seed(self.seed))


def reached_fractions(masks: Sequence[torch.Tensor]) -> list[float]:
    """Fraction of units of each layer's output reachable from the input through the kept entries of
    (out, in) boolean masks in forward order (the input layer counts as fully active)."""
    reached = torch.ones(masks[0].shape[1], dtype=torch.bool)
    out = []
    for m in masks:
        reached = m.bool()[:, reached].any(1)  # (out,)
        out.append(float(reached.float().mean()))
    return out


def train_point(ds: Dataset, c: float, seed: int, *, depth: int, width: int, epochs: int) -> TrainPoint:
    """Train one MLP at mean fan-in ``c`` (see the module docstring) and measure its mask."""
    if depth < 2:
        raise SparseflowError(f"the training sweep needs >= 2 hidden layers (one sparse mask), got depth={depth}")
    if not 0 < c <= width:
        raise SparseflowError(f"mean fan-in c must be in (0, width={width}], got {c}")
    model = build_model("mlp", ds.input_shape, ds.num_classes, hidden=(width,) * depth, seed=seed)
    # sparse_init=False: the He redraw in _HeInit replaces any rescaling of the default draw.
    method = RandomSparse(1 - c / width, distribution=uniform, seed=seed, targets=HIDDEN_ONLY, sparse_init=False)
    train, test = loaders(ds, 64, seed=seed)
    cfg = TrainConfig(epochs=epochs, optimizer="adam", lr=3e-3, weight_decay=0.0, seed=seed)
    result = fit(model, train, test, cfg, method=method, callbacks=[_HeInit(seed)], progress=False)
    masks = [method.mask[n] if n in method.mask else torch.ones_like(p, dtype=torch.bool) for n, p in prunable(model).items()]
    return TrainPoint(c, seed, result.test_acc, has_path(masks), reached_fractions(masks[:-1])[-1])


def train_sweep(
    cs: Sequence[float],
    seeds: Sequence[int],
    *,
    depth: int = 12,
    width: int = 64,
    epochs: int = 30,
    data_dir: str | Path | None = None,
    subset: int | None = None,
    on_point: Callable[[TrainPoint], None] | None = None,
) -> TrainSweep:
    """Test accuracy and connectivity for every mean fan-in in ``cs`` and seed: scikit-learn digits, or MNIST
    read from ``data_dir`` (``subset`` of its training images, seeded; None: all 60,000)."""
    name = "digits" if data_dir is None else "mnist"
    ds = load_dataset(name, data_dir, subset=subset if data_dir is not None else None)
    counts = torch.bincount(ds.y_test, minlength=ds.num_classes)
    chance = float(counts.max()) / len(ds.y_test)  # best constant prediction
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 64-wide layers: thread synchronisation costs more than it saves
    try:
        points = []
        for c in cs:
            for seed in seeds:
                points.append(train_point(ds, float(c), int(seed), depth=depth, width=width, epochs=epochs))
                if on_point is not None:
                    on_point(points[-1])
    finally:
        torch.set_num_threads(threads)
    return TrainSweep(tuple(points), chance, name, depth, width, epochs)
