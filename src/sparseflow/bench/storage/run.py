"""Measurements of ``sparseflow bench storage``: file bytes of a sparse model, ours against common formats.

Four measurements, all on seeded random data (i.i.d. Bernoulli masks, standard-normal fp32 values):

1. One 4096 x 4096 fp32 layer at sparsities 50 ... 99 %: the ``.sfz`` file (``container.save``) next to
   ``torch.save`` dense and as a CSR tensor, raw CSR with int32 indices, safetensors dense, scipy's
   ``save_npz`` (compressed) and zstd of a bitmap (``np.packbits``) plus the values; the bound is
   ``nnz·32 + log2 C(N, nnz)`` bits.
2. Mask coding alone against ``log2 C(N, nnz)`` over densities 0.005 ... 0.95, plus a random 2:4 mask
   against ``log2 C(4, 2) / 4`` bits per position.
3. Encode and decode throughput of the mask codec (median over repeats, one thread).
4. ResNet-50 (torchvision's tensor shapes, random weights) with uniform and ERK masks on the conv and fc
   weights, in the 1-bit-mask accounting of RigL's size table (Evci et al. 2020, google-research/rigl
   README; first layer dense for uniform, and for ERK at 99 %) next to our file in fp32 and fp16.
"""

from __future__ import annotations

import io
import math
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sparseflow.analysis.size import size_report
from sparseflow.bench.storage.config import StorageConfig
from sparseflow.bench.storage.result import MB, CodeRow, LayerRow, ResNetRow, SpeedRow, StorageBench
from sparseflow.distributions import erk, uniform
from sparseflow.experiments.protocol import Tick, no_progress
from sparseflow.storage.codec import CODEC_NAMES, decode_mask, encode_mask, iid_bound_bits
from sparseflow.storage.container import save

# RigL README, "Model Size (Bytes)" column (MB): 32-bit values, 1-bit masks, a 32-bit bias per output channel.
RIGL_MB = {("dense", 0.0): 102.122, ("erk", 0.8): 23.683, ("uniform", 0.8): 23.685, ("erk", 0.9): 13.499,
           ("uniform", 0.9): 13.532, ("erk", 0.99): 4.354}


def resnet50_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of torchvision's ``resnet50()`` (bottleneck blocks 3, 4, 6, 3)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7), "bn1.weight": (64,), "bn1.bias": (64,)}
    inp = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            pre = f"layer{stage}.{b}."
            convs = ((width, inp, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1))
            for i, sh in enumerate(convs, start=1):
                shapes[f"{pre}conv{i}.weight"] = sh
                shapes[f"{pre}bn{i}.weight"] = shapes[f"{pre}bn{i}.bias"] = (sh[0],)
            if b == 0:  # projection shortcut: channels (and stride) change
                shapes[f"{pre}downsample.0.weight"] = (4 * width, inp, 1, 1)
                shapes[f"{pre}downsample.1.weight"] = shapes[f"{pre}downsample.1.bias"] = (4 * width,)
            inp = 4 * width
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 2048), (1000,)
    return shapes


def _file_bytes(state: dict[str, Tensor], mask: dict[str, Tensor] | None, dtype: str,
                compress_values: bool = False) -> int:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.sfz"
        save(path, state, mask=mask, dtype=dtype, compress_values=compress_values)
        return path.stat().st_size


def _torch_bytes(obj: object) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def _bernoulli(numel: int, density: float, g: torch.Generator) -> np.ndarray:
    return (torch.rand(numel, generator=g) < density).numpy()


def _layer_row(side: int, sparsity: float, level: int, g: torch.Generator) -> LayerRow:
    import scipy.sparse
    import zstandard
    from safetensors.torch import save as st_save

    numel = side * side
    m = _bernoulli(numel, 1.0 - sparsity, g).reshape(side, side)
    pos = np.flatnonzero(m)
    vals = torch.randn(pos.size, generator=g).numpy()
    dense = torch.zeros(numel)
    dense[torch.from_numpy(pos)] = torch.from_numpy(vals)
    dense = dense.reshape(side, side)
    out: dict[str, float] = {}
    out["ours (.sfz)"] = _file_bytes({"weight": dense}, {"weight": torch.from_numpy(m)}, "fp32")
    out["ours, values coded"] = _file_bytes({"weight": dense}, {"weight": torch.from_numpy(m)}, "fp32", True)
    out["bound"] = pos.size * 4 + iid_bound_bits(numel, pos.size) / 8
    out["torch.save dense"] = _torch_bytes(dense)
    out["safetensors dense"] = len(st_save({"weight": dense}))
    with warnings.catch_warnings():  # "sparse CSR support is in beta": true, and not this benchmark's news
        warnings.simplefilter("ignore", UserWarning)
        out["torch.save CSR"] = _torch_bytes(dense.to_sparse_csr())
    rows = pos // side  # pos is sorted, so row pointers are where each row's first position would go
    indptr = np.searchsorted(rows, np.arange(side + 1)).astype(np.int32)
    csr = scipy.sparse.csr_matrix((vals, (pos % side).astype(np.int32), indptr), shape=(side, side))
    out["CSR int32 raw"] = csr.data.nbytes + csr.indices.nbytes + csr.indptr.nbytes
    buf = io.BytesIO()
    scipy.sparse.save_npz(buf, csr, compressed=True)
    out["scipy save_npz"] = buf.getbuffer().nbytes
    zc = zstandard.ZstdCompressor(level=level)
    t0 = time.perf_counter()
    bitmap = len(zc.compress(np.packbits(m).tobytes()))
    values = len(zc.compress(vals.tobytes()))
    zstd_s = time.perf_counter() - t0
    out["zstd bitmap+values"] = bitmap + values
    out["zstd bitmap, raw values"] = bitmap + vals.nbytes
    return LayerRow(sparsity, numel, int(pos.size), out, zstd_s)


def _code_row(side: int, density: float, g: torch.Generator) -> CodeRow:
    m = _bernoulli(side * side, density, g).reshape(side, side)
    nnz = int(m.sum())
    payload = encode_mask(m)
    return CodeRow(density, m.size, nnz, CODEC_NAMES[payload[0]], len(payload),
                   iid_bound_bits(m.size, nnz) / 8)


def _nm_row(side: int, g: torch.Generator) -> CodeRow:
    """A uniformly random 2:4 mask: each group of 4 along the input dimension keeps one of its 6 patterns."""
    patterns = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]], bool)
    idx = torch.randint(0, 6, (side * side // 4,), generator=g).numpy()
    m = patterns[idx].reshape(side, side)
    payload = encode_mask(m)
    return CodeRow(0.5, m.size, int(m.sum()), CODEC_NAMES[payload[0]], len(payload),
                   m.size // 4 * math.log2(6) / 8)


def _speed_row(side: int, density: float, repeats: int, g: torch.Generator) -> SpeedRow:
    m = _bernoulli(side * side, density, g).reshape(side, side)
    nnz = int(m.sum())
    enc, dec = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        payload = encode_mask(m)
        t1 = time.perf_counter()
        back = decode_mask(payload, m.shape, nnz)
        t2 = time.perf_counter()
        enc.append(t1 - t0)
        dec.append(t2 - t1)
    assert np.array_equal(back, m)  # a throughput of a wrong decoder means nothing
    return SpeedRow(density, m.size, m.size / statistics.median(enc) / 1e6, m.size / statistics.median(dec) / 1e6)


def _resnet_row(dist: str, sparsity: float, g: torch.Generator) -> ResNetRow:
    shapes = resnet50_shapes()
    state = {n: torch.randn(sh, generator=g) for n, sh in shapes.items()}
    targets = {n: sh for n, sh in shapes.items() if len(sh) >= 2}  # conv and fc weights
    mask: dict[str, Tensor] | None = None
    if dist != "dense":
        # RigL: uniform keeps the first layer dense; ERK prunes every layer except at 99 %.
        first = ("conv1.weight",) if dist == "uniform" or sparsity >= 0.99 else ()
        densities = (uniform if dist == "uniform" else erk)(targets, sparsity, dense=first)
        mask = {}
        for n, d in densities.items():
            if d >= 1.0:
                continue
            numel = math.prod(shapes[n])
            keep = torch.zeros(numel, dtype=torch.bool)
            keep[torch.randperm(numel, generator=g)[: round(d * numel)]] = True
            mask[n] = keep.reshape(shapes[n])
            state[n] = state[n] * mask[n]
    rep = size_report(state, mask=mask, dtype="fp32")
    rigl = RIGL_MB.get((dist, sparsity))
    return ResNetRow(dist, sparsity, rep.numel, rep.nnz, rep.onebit_bytes, rep.bound_bytes,
                     _file_bytes(state, mask, "fp32"), _file_bytes(state, mask, "fp16"),
                     None if rigl is None else rigl * MB)


def run(cfg: StorageConfig, out: Path | None = None, progress: Tick = no_progress) -> StorageBench:
    """All four measurements on ``cfg.threads`` torch threads; ``out`` is not used."""
    torch.set_num_threads(cfg.threads)
    g = torch.Generator().manual_seed(cfg.seed)
    progress("", advance=0, total=len(cfg.sparsities) + 1 + len(cfg.speed_densities) + len(cfg.resnet))
    layer = []
    for s in cfg.sparsities:
        layer.append(_layer_row(cfg.side, s, cfg.zstd_level, g))
        progress(f"{cfg.side}x{cfg.side} fp32 layer at sparsity {s:g}: every format")
    coding = tuple(_code_row(cfg.code_side, d, g) for d in cfg.densities)
    nm = _nm_row(cfg.code_side, g)
    progress("mask coding against log2 C(N, nnz)")
    speed = []
    for d in cfg.speed_densities:
        speed.append(_speed_row(cfg.code_side, d, cfg.repeats, g))
        progress(f"codec throughput at density {d:g}")
    resnet = []
    for dist, s in cfg.resnet:
        resnet.append(_resnet_row(dist, s, g))
        progress(f"ResNet-50, {dist} at sparsity {s:g}")
    return StorageBench(cfg, torch.get_num_threads(), tuple(layer), coding, nm, tuple(speed), tuple(resnet))
