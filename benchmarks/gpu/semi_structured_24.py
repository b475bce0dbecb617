"""Semi-structured 2:4 sparsity on a GPU against dense, one layer (Mishra et al. 2021, "Accelerating
sparse deep neural networks": 2:4 sparse tensor cores on Ampere and later).

    python benchmarks/gpu/semi_structured_24.py [--size 4096] [--batch 256]

Prints one JSON line {size, batch, dense_ms, sparse_ms, speedup, max_abs_err}; exits 0 with
{"skipped": reason} when there is no CUDA device or the GPU lacks 2:4 support.
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=50)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return
    from torch.sparse import to_sparse_semi_structured

    dev, dt = "cuda", torch.float16
    w = torch.randn(a.size, a.size, device=dev, dtype=dt)
    w = w * torch.tensor([0, 1, 1, 0], device=dev, dtype=dt).repeat(a.size, a.size // 4)
    x = torch.randn(a.size, a.batch, device=dev, dtype=dt)
    try:
        ws = to_sparse_semi_structured(w)
    except (RuntimeError, NotImplementedError) as e:
        print(json.dumps({"skipped": f"2:4 not supported here: {e}"}))
        return

    def ms(f) -> float:
        for _ in range(5):
            f()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(a.repeats):
            f()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / a.repeats

    dense_ms, sparse_ms = ms(lambda: torch.mm(w, x)), ms(lambda: torch.mm(ws, x))
    err = (torch.mm(ws, x) - torch.mm(w, x)).abs().max().item()
    print(json.dumps({"size": a.size, "batch": a.batch, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                      "speedup": dense_ms / sparse_ms, "max_abs_err": err}))


if __name__ == "__main__":
    main()
