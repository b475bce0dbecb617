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
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from sparseflow.training.data import load_dataset
from sparseflow.distributions import GLOBAL
from sparseflow.methods import MagnitudePruning
from sparseflow.training.models import build_model
from sparseflow.storage.codec import CODEC_NAMES, decode_mask, encode_mask, iid_bound_bits
from sparseflow.storage.codec import binary_entropy

SPARSITIES = (0.9, 0.964)
GOAL = 0.90


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
        return {"epochs": self.epochs, "train_examples": self.train_examples, "accuracy": self.accuracy,
                "threads": self.threads, "seconds": self.seconds,
                "totals": {f"{k}_{s:.1%}": self.total(k, s) for k in ("trained", "random") for s in SPARSITIES},
                "rows": [asdict(r) | {"ratio": r.ratio} for r in self.rows], "criteria": self.criteria()}


def _train(data_dir: Path, epochs: int, subset: int | None, tick: Callable[[str], None]) -> tuple[torch.nn.Module, int, float]:
    ds = load_dataset("mnist", data_dir, subset=subset)
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
        tick(f"epoch {epoch + 1}/{epochs}")
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


def bench_masks(data_dir: Path, *, quick: bool = False, epochs: int = 5,
                tick: Callable[[str], None] = lambda _: None) -> MasksBench:
    """Train, prune and code; quick: 2 epochs (the masks already carry the structure)."""
    t0 = time.perf_counter()
    epochs, subset = (2, None) if quick else (epochs, None)
    model, n_train, acc = _train(Path(data_dir), epochs, subset, tick)
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
        tick(f"coded the masks at {s:.1%}")
    return MasksBench(epochs, n_train, acc, torch.get_num_threads(), tuple(rows), time.perf_counter() - t0)
