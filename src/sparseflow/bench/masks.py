"""``sparseflow bench masks``: trained masks against the i.i.d. bound Σ_l N_l·H(p_l).

LeNet-300-100 (784-300-100-10, LeCun et al. 1998) is trained on MNIST (Adam 1e-3, batch 128, seed 0),
then globally magnitude-pruned over its three weight matrices (Han et al. 2015) to 90 % and 96.4 % sparsity.
Each mask is coded exactly as :func:`sparseflow.save` codes it (:func:`~sparseflow.storage.codec.encode_mask`:
the smallest of the i.i.d., structured and context coders, codec byte included), round-tripped, and its bits
compared with ``N·H(p)``. Random masks of the same per-layer densities are the control: there the codec must
not lose to the i.i.d. code. Goal: total trained-mask bits ≤ 0.90 × Σ N_l·H(p_l) at both sparsities.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sparseflow.bench import DataBenchOptions
from sparseflow.distributions import GLOBAL
from sparseflow.errors import SparseflowError
from sparseflow.experiments.protocol import Experiment, TableData, Tick, no_progress
from sparseflow.io import atomic_write_text
from sparseflow.methods import MagnitudePruning
from sparseflow.storage.codec import CODEC_NAMES, binary_entropy, decode_mask, encode_mask, iid_bound_bits
from sparseflow.training.data import load_dataset
from sparseflow.training.models import build_model
from sparseflow.training.options import check, option
from sparseflow.training.report import md_table
from sparseflow.training.rundir import write_results

SPARSITIES = (0.9, 0.964)
GOAL = 0.90


@dataclass(frozen=True)
class MasksConfig:
    """LeNet-300-100 trained with Adam 1e-3, batch 128, seed 0, then pruned to each of :data:`SPARSITIES`."""

    epochs: int = option(5, "Training epochs (Adam 1e-3, batch 128).", min=1, quick=2)
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class MasksOptions(DataBenchOptions):
    """Where the data is and how many threads train; the masks' bits do not depend on either."""

    threads: int = option(1, "torch.set_num_threads for training.", min=1)


@dataclass(frozen=True)
class MaskRow:
    kind: str  # "trained" or "random"
    sparsity: float
    layer: str
    shape: tuple[int, ...]
    density: float
    codec: str
    bits: int  # the whole payload, codec byte included
    entropy_bits: float  # N·H(p)
    binom_bits: float  # log2 C(N, n)

    @property
    def ratio(self) -> float:
        return self.bits / self.entropy_bits


@dataclass(frozen=True)
class MasksBench:
    quick: bool
    epochs: int
    train_examples: int
    accuracy: float
    threads: int
    rows: tuple[MaskRow, ...]
    seconds: float

    def total(self, kind: str, sparsity: float) -> float:
        rows = [r for r in self.rows if r.kind == kind and r.sparsity == sparsity]
        return sum(r.bits for r in rows) / sum(r.entropy_bits for r in rows)

    def random_vs_iid(self) -> float:
        """Largest (payload bits) / (log2 C(N, n) + 64 bytes) over the random controls (≤ 1.002 expected)."""
        return max(r.bits / (1.002 * r.binom_bits + 512) for r in self.rows if r.kind == "random")

    def criteria(self) -> dict[str, dict[str, Any]]:
        out = {}
        for s in SPARSITIES:
            v = self.total("trained", s)
            out[f"trained_masks_{s:.1%}"] = {"value": v, "target": f"<= {GOAL} x sum N_l H(p_l)", "pass": v <= GOAL}
        worst = self.random_vs_iid()
        out["random_masks_not_worse_than_iid"] = {
            "value": worst, "target": "<= 1 (bits / (1.002 log2 C(N, n) + 64 bytes), worst layer)", "pass": worst <= 1.0}
        return out

    def to_json(self) -> dict[str, Any]:
        return {"command": "bench masks", "quick": self.quick, "torch": torch.__version__, "epochs": self.epochs,
                "train_examples": self.train_examples, "accuracy": self.accuracy,
                "threads": self.threads, "seconds": self.seconds,
                "totals": {f"{k}_{s:.1%}": self.total(k, s) for k in ("trained", "random") for s in SPARSITIES},
                "rows": [asdict(r) | {"ratio": r.ratio} for r in self.rows], "criteria": self.criteria()}


def _train(data_dir: Path, epochs: int, progress: Tick) -> tuple[torch.nn.Module, int, float]:
    ds = load_dataset("mnist", data_dir)
    model = build_model("lenet300-100", ds.input_shape, ds.num_classes, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        perm = torch.randperm(len(ds.x_train), generator=gen)
        for start in range(0, len(perm), 128):
            idx = perm[start : start + 128]
            opt.zero_grad()
            F.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx]).backward()
            opt.step()
        progress(f"epoch {epoch + 1}/{epochs}")
    with torch.no_grad():
        acc = (model(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
    return model, len(ds.x_train), acc


def _row(kind: str, sparsity: float, name: str, mask: np.ndarray) -> MaskRow:
    payload = encode_mask(mask)
    nnz = int(mask.sum())
    if not np.array_equal(decode_mask(payload, mask.shape, nnz), mask):
        raise AssertionError(f"{kind} mask of {name} does not round-trip")  # a bug, not a user mistake
    p = nnz / mask.size
    return MaskRow(kind, sparsity, name, tuple(mask.shape), p, CODEC_NAMES[payload[0]], 8 * len(payload),
                   mask.size * binary_entropy(p), iid_bound_bits(mask.size, nnz))


def check_data(config: MasksConfig, options: MasksOptions) -> None:
    if options.data_dir is None:
        raise SparseflowError("bench masks trains on MNIST: pass --data-dir, the folder holding its four IDX .gz files")


def run(config: MasksConfig, out: Path | None = None, progress: Tick = no_progress, *,
        options: MasksOptions = MasksOptions()) -> MasksBench:
    """Train on ``options.threads`` threads, prune and code (the quick run trains 2 epochs: the masks already
    carry the structure). ``out`` is not used."""
    check_data(config, options)
    torch.set_num_threads(options.threads)
    t0 = time.perf_counter()
    progress("training LeNet-300-100 on MNIST", advance=0, total=config.epochs + len(SPARSITIES))
    model, n_train, acc = _train(Path(options.data_dir), config.epochs, progress)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    rows: list[MaskRow] = []
    for s in SPARSITIES:
        model.load_state_dict(state)
        method = MagnitudePruning(sparsity=s, distribution=GLOBAL)
        method.prepare(model, torch.optim.SGD(model.parameters(), lr=0.0))
        for name, m in method.mask.items():
            mask = m.numpy()
            rows.append(_row("trained", s, name, mask))
            rows.append(_row("random", s, name, rng.random(mask.shape) < mask.mean()))
        progress(f"coded the masks at {s:.1%}")
    return MasksBench(config.quick, config.epochs, n_train, acc, torch.get_num_threads(), tuple(rows),
                      time.perf_counter() - t0)


HEADERS = ("masks", "sparsity", "layer", "shape", "density", "codec", "bits", "N·H(p)", "ratio")


def _cells(b: MasksBench) -> list[list[str]]:
    return [[r.kind, f"{r.sparsity:.1%}", r.layer, "x".join(map(str, r.shape)), f"{r.density:.4f}", r.codec,
             f"{r.bits:,}", f"{r.entropy_bits:,.0f}", f"{r.ratio:.3f}"] for r in b.rows]


def _totals(b: MasksBench) -> list[list[str]]:
    return [[k, f"{s:.1%}", f"{b.total(k, s):.4f}"] for s in SPARSITIES for k in ("trained", "random")]


def tables(b: MasksBench) -> list[TableData]:
    title = f"LeNet-300-100 masks ({b.epochs} epochs, test accuracy {b.accuracy:.4f})"
    totals = "\n".join(f"{kind} masks at {s}: total {v} x Σ N_l·H(p_l)" for kind, s, v in _totals(b))
    return [TableData(title, HEADERS, _cells(b), left=("masks", "layer", "shape", "codec"), min_width=110,
                      note=totals)]


def write_outputs(b: MasksBench, out: Path) -> dict[str, Any]:
    """OUT/result.json and OUT/report.md; returns the JSON object."""
    data = b.to_json()
    write_results(out, "bench-masks", data, "result.json")
    crit_rows = [[n, f"{c['value']:.4f}", c["target"], c["pass"]] for n, c in data["criteria"].items()]
    atomic_write_text(out / "report.md", (
        "# Trained masks against the i.i.d. bound\n\n"
        f"LeNet-300-100 on MNIST, Adam 1e-3, {b.epochs} epochs ({b.train_examples:,} examples, test accuracy "
        f"{b.accuracy:.4f}), global magnitude pruning; each mask coded as `sparseflow.save` codes it.\n\n"
        f"{md_table(list(HEADERS), _cells(b))}\n\n## Totals (bits / Σ N_l·H(p_l))\n\n"
        f"{md_table(['masks', 'sparsity', 'ratio'], _totals(b))}\n\n## Criteria\n\n"
        f"{md_table(['criterion', 'value', 'target', 'pass'], crit_rows)}\n"))
    return data


BENCHMARK = Experiment(
    "masks", "trained masks coded against the i.i.d. bound", MasksConfig, run, write_outputs,
    options=MasksOptions, tables=tables, check=check_data,
    doc=("Train LeNet-300-100 on MNIST, prune globally by magnitude to 90 % and 96.4 %, and code each mask as "
         "sparseflow.save does: bits against N·H(p) per layer and in total, random masks of equal densities as"
         " the control. Goal: trained masks ≤ 0.90 × Σ N_l·H(p_l)."))
