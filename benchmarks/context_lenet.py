"""Context-model mask coder vs the i.i.d. bound on magnitude-pruned trained networks.

LeNet-300-100 (784-300-100-10, LeCun et al. 1998) is trained on MNIST (Adam, 5 epochs, seed 0; weights cached
in the temp folder), globally magnitude-pruned over its three weight matrices (Han et al. 2015) to 90 % and
96.4 % sparsity, and each mask is coded with :mod:`sparseflow.storage.context`. Reported: payload bits (every
byte) / ``N·H(n/N)`` per layer and in total, the variant chosen, and the same for random masks of equal
density and for an MLP trained on the embedded ``digits`` set.

    python benchmarks/context_lenet.py [--data-dir ../shared/data] [--cache /tmp/lenet300100_mnist_w.npz]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparseflow.training.data import load_dataset
from sparseflow.storage import context

ROOT = Path(__file__).resolve().parents[1]


def entropy_bits(mask: np.ndarray) -> float:
    p = mask.mean()
    return 0.0 if p in (0.0, 1.0) else mask.size * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def train_mlp(x: torch.Tensor, y: torch.Tensor, widths: tuple[int, ...], epochs: int, seed: int = 0,
              weight_decay: float = 0.0) -> list[np.ndarray]:
    """Adam-trained ReLU MLP; returns the Linear weights (out, in)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), 1e-3, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), 128):
            idx = perm[s : s + 128]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return [m.weight.detach().numpy().copy() for m in model if isinstance(m, nn.Linear)]


def global_magnitude_masks(weights: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """Keep the round((1-sparsity)·N) largest |w| over all matrices together."""
    flat = np.concatenate([np.abs(w).ravel() for w in weights])
    keep = int(round(flat.size * (1 - sparsity)))
    order = np.argsort(-flat, kind="stable")[:keep]
    kept = np.zeros(flat.size, dtype=bool)
    kept[order] = True
    out, at = [], 0
    for w in weights:
        out.append(kept[at : at + w.size].reshape(w.shape))
        at += w.size
    return out


def measure(label: str, masks: list[np.ndarray]) -> float:
    total_bits = total_bound = 0.0
    for i, m in enumerate(masks):
        t0 = time.perf_counter()
        payload = context.encode(m)
        t1 = time.perf_counter()
        back = context.decode(payload, *m.shape, int(m.sum()))
        t2 = time.perf_counter()
        assert np.array_equal(back, m), "round trip failed"
        bound = entropy_bits(m)
        total_bits += 8 * len(payload)
        total_bound += bound
        print(f"  {label} layer {i} {m.shape} density {m.mean():.4f}: {8 * len(payload)} bits, "
              f"ratio {8 * len(payload) / bound:.3f}, flags {payload[0]:#04x}, "
              f"encode {t1 - t0:.3f}s decode {t2 - t1:.3f}s")
    ratio = total_bits / total_bound
    print(f"  {label} total: {total_bits:.0f} bits / {total_bound:.0f} = {ratio:.3f}")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "lenet300100_mnist_w.npz"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache = Path(args.cache)
    if cache.is_file():
        with np.load(cache) as f:
            weights = [f[k] for k in sorted(f.files)]
    else:
        ds = load_dataset("mnist", Path(args.data_dir) / "mnist")
        weights = train_mlp(ds.x_train.flatten(1), ds.y_train, (784, 300, 100, 10), epochs=5)
        np.savez(cache, *weights)
    rng = np.random.default_rng(0)
    for sparsity in (0.9, 0.964):
        masks = global_magnitude_masks(weights, sparsity)
        print(f"LeNet-300-100 MNIST, global magnitude pruning to {sparsity:.1%}")
        measure("trained", masks)
        measure("random", [rng.random(m.shape) < m.mean() for m in masks])
    digits = load_dataset("digits")
    dw = train_mlp(digits.x_train.flatten(1), digits.y_train, (64, 128, 64, 10), epochs=30, weight_decay=1e-4)
    for sparsity in (0.8, 0.9):
        print(f"digits MLP 64-128-64-10, global magnitude pruning to {sparsity:.0%}")
        measure("trained", global_magnitude_masks(dw, sparsity))


if __name__ == "__main__":
    main()
