"""One-shot pruning of a trained model with calibration data: Wanda and SparseGPT.

Both prune once, in ``prepare``, block by block with sequential calibration (:mod:`sparseflow.methods.calibration`):
each block's calibration inputs are the outputs of the blocks already pruned. Neither needs gradients.

- :class:`Wanda` (Sun, Liu, Bair & Kolter 2023, "A Simple and Effective Pruning Approach for Large Language
  Models"): score |W_ij| · ‖X_j‖₂, the norm of input feature j over all calibration tokens, compared within each
  output row (``per="row"``, the paper's choice) or over the layer (``per="layer"``); no weight update.
- :class:`SparseGPT` (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
  One-Shot"): with H = 2XXᵀ/n + λI (λ = ``damp`` × mean diag), columns are processed in blocks of
  ``blocksize``; inside a block the mask is chosen by w²/[H⁻¹]²_qq, and every pruned weight's error is
  propagated to the columns not yet processed through the Cholesky factor of H⁻¹ (the optimal-brain-surgeon
  update δw = −(w_q/[H⁻¹]_qq)·H⁻¹_{:,q}), lazily across blocks. An H that is not positive definite gets ten
  times more damping, up to six times, then a clear error; never NaNs.

Both keep the project's allocation: exact per-layer counts from the distribution (uniform by default), N:M
along the input axis, any :class:`~sparseflow.Targets`. ``method.report`` lists every layer's relative
reconstruction error ‖(W − W')X‖² / ‖WX‖², its time and the process's peak memory after it.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sparseflow.distributions import Global, allocate, kept_total
from sparseflow.errors import SparseflowError
from sparseflow.layouts import call
from sparseflow.methods.base import Method
from sparseflow.methods.calibration import (
    Site, block_output, capture_inputs, find_blocks, from_matrix_view, matrix_view, observing, sites_of,
    with_hidden)
from sparseflow.patterns import NM, Unstructured, topk_mask


@dataclass(frozen=True)
class LayerPruning:
    """What pruning one layer did: kept fraction, relative reconstruction error on the calibration inputs
    (‖(W − W')X‖² / ‖WX‖²), seconds, the process's peak resident memory after it (MiB), extra damping used."""

    name: str
    block: int
    density: float
    error: float
    seconds: float
    peak_mib: float
    damping: float = 0.0


def _relative_error(w: Tensor, new: Tensor, h: Tensor) -> float:
    """‖(W − W')X‖² / ‖WX‖² from H ∝ XᵀX: tr(D H Dᵀ) / tr(W H Wᵀ)."""
    h = h.to(w.device)
    w64, d = w.to(h.dtype), (w - new).to(h.dtype)
    base = float(((w64 @ h) * w64).sum())
    return float(((d @ h) * d).sum()) / base if base > 0 else 0.0


def peak_mib() -> float:
    """The process's peak resident memory so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check_batches(who: str, data: Any, n: int, device: torch.device) -> list[Any]:
    from sparseflow.methods.saliency import _batches  # one reader of user batches

    return [x for x, _ in _batches(who, data, n, device)]  # the inputs, on the weights' device


@dataclass(eq=False)
class Calibrated(Method):
    """Base of the calibrated one-shot methods: ``data`` (a batch, or an iterable of batches: ``(x, y)`` pairs or
    dicts of model inputs; ``batches`` of them are used), sequential calibration and the per-layer report.

    ``on_layer``: called with each :class:`LayerPruning` as it is done (a progress bar)."""

    data: Any = field(default=None, repr=False)
    batches: int = 8
    on_layer: Callable[[LayerPruning], None] | None = field(default=None, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        who = type(self).__name__
        if self.data is None:
            raise SparseflowError(f"{who} needs calibration data: {who}(sparsity, data=batch or DataLoader)")
        if isinstance(self.batches, bool) or not isinstance(self.batches, int) or self.batches < 1:
            raise SparseflowError(f"{who}: batches must be an integer >= 1, got {self.batches!r}")
        if isinstance(self.distribution, Global):
            raise SparseflowError(f"{who} prunes layer by layer: use a per-layer distribution (uniform, er, erk), "
                                  "not GLOBAL")
        if not isinstance(self.pattern, (Unstructured, NM)):
            raise SparseflowError(f"{who} supports Unstructured() and NM(n, m) patterns, got {self.pattern!r}")
        self.report: list[LayerPruning] = []

    # the statistics of a layer's inputs X (tokens, features): XᵀX and the token count, in float64
    stats_dtype: torch.dtype = field(default=torch.float64, init=False, repr=False)

    # --- what subclasses define ---------------------------------------------------------------------
    def _prune_layer(self, w: Tensor, h: Tensor, keep: int) -> tuple[Tensor, Tensor, float]:
        """(kept mask, new weight, damping λ) of the matrix view ``w`` (out, features) keeping ``keep`` weights,
        given H = 2XᵀX/n of its calibration inputs."""
        raise NotImplementedError

    # --- the sequential procedure -------------------------------------------------------------------
    def target_sparsity(self, step: int) -> float | None:
        return None  # the mask is built in _setup, block by block

    def _setup(self) -> None:
        self.report = []
        if self.sparsity == 0:
            return
        model = self.model
        names = list(self._params)
        sites = sites_of(model, names, self._layouts)
        keep = self._counts()
        device = next(iter(self._params.values())).device
        batches = _check_batches(type(self).__name__, self.data, self.batches, device)
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            # Gradients on (never used) keep torch's fused encoder fast path, which bypasses the hooks, off.
            with torch.enable_grad():
                self._calibrate(model, names, sites, keep, batches)
        finally:
            for m, training in modes:
                m.training = training
        self._refresh()

    def _calibrate(self, model: nn.Module, names: list[str], sites: dict[str, Site], keep: dict[str, int],
                   batches: list[Any]) -> None:
        path, blocks = find_blocks(model, names)
        done: set[str] = set()
        if blocks:
            states = capture_inputs(model, blocks[0], batches)
            for i, block in enumerate(blocks):
                inside = [n for n in names if n.startswith(f"{path}.{i}.")]
                self._prune_sites([sites[n] for n in inside], keep, i,
                                  lambda: [block(*a, **k) for a, k in states])
                done.update(inside)
                with torch.no_grad():
                    states = [with_hidden(a, k, block_output(block(*a, **k)).detach()) for a, k in states]
        rest = [n for n in names if n not in done]
        if rest:  # outside the blocks (or no blocks): one pass of the whole (pruned) model
            self._prune_sites([sites[n] for n in rest], keep, len(blocks), lambda: [call(model, x) for x in batches])

    def _prune_sites(self, sites: list[Site], keep: dict[str, int], block: int, run: Callable[[], Any]) -> None:
        if not sites:
            return
        stats: dict[str, Any] = {}

        def consume(name: str, x: Tensor) -> None:
            x = x.to(self.stats_dtype).cpu()
            if name not in stats:
                stats[name] = [torch.zeros(x.shape[1], x.shape[1], dtype=self.stats_dtype), 0]
            stats[name][0] += x.T @ x
            stats[name][1] += x.shape[0]

        with observing(sites, consume), torch.no_grad():
            run()
        for s in sites:
            if s.name not in stats:
                raise SparseflowError(f"{type(self).__name__}: the calibration pass never reached {s.name!r}; the "
                                      "model does not use it, or calls it in a way hooks cannot see: leave it out "
                                      "with Targets(exclude=...)")
            t0 = time.perf_counter()
            p = self._params[s.name]
            w = matrix_view(p.detach(), s.layout).to(torch.float32)
            gram, n = stats.pop(s.name)
            h = 2 * gram / max(n, 1)
            mask, new, damping = self._prune_layer(w, h, keep[s.name])
            error = _relative_error(w, new * mask, h)
            with torch.no_grad():
                p.copy_(from_matrix_view(new * mask, s.layout, p.shape).to(p.dtype))
            self._mask[s.name] = from_matrix_view(mask, s.layout, p.shape).bool()
            row = LayerPruning(s.name, block, float(mask.float().mean()), error, time.perf_counter() - t0,
                               peak_mib(), damping)
            self.report.append(row)
            if self.on_layer is not None:
                self.on_layer(row)

    def _counts(self) -> dict[str, int]:
        """Kept weights per layer: n of every m for N:M, else the distribution's exact counts."""
        shapes = {n: self._canonical_shape(n) for n in self._params}
        units = {n: math.prod(sh) for n, sh in shapes.items()}
        if isinstance(self.pattern, NM):
            return {n: u * self.pattern.n // self.pattern.m for n, u in units.items()}
        densities = self.distribution(shapes, self.sparsity)
        return allocate(units, densities, kept_total(sum(units.values()), self.sparsity))

    def _select(self, scores: Tensor, keep: int, per_row: bool) -> Tensor:
        """Boolean mask of the matrix view keeping ``keep`` by ``scores``: N:M groups, per row, or per layer."""
        if isinstance(self.pattern, NM) or not per_row:  # the pattern's own selection on the (out, in) matrix
            return self.pattern.topk(scores, keep)
        rows = scores.shape[0]
        per, extra = divmod(keep, rows)
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        counts = torch.full((rows,), per, dtype=torch.long, device=scores.device)
        counts[:extra] += 1
        ranks = torch.arange(scores.shape[1], device=scores.device).expand(rows, -1)
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask.scatter_(1, order, ranks < counts[:, None])
        return mask


@dataclass(eq=False)
class Wanda(Calibrated):
    """Wanda: keep the largest |W_ij|·‖X_j‖₂ per output row (``per="row"``) or per layer; no weight update.

    Args:
        sparsity: fraction of target weights pruned (0.5 for ``NM(2, 4)``).
        data: calibration batches (a batch, or a DataLoader); ``batches`` of them are used.
        per: ``"row"`` (the paper: each output unit keeps the same count) or ``"layer"``.
    """

    per: str = "row"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.per not in ("row", "layer"):
            raise SparseflowError(f"Wanda: per must be 'row' or 'layer', got {self.per!r}")

    def _prune_layer(self, w: Tensor, h: Tensor, keep: int) -> tuple[Tensor, Tensor, float]:
        norm = torch.diag(h).sqrt().to(w.device, torch.float32)  # ∝ ‖X_j‖₂: the same ranking
        scores = w.abs() * norm[None, :]
        return self._select(scores, keep, self.per == "row"), w, 0.0


@dataclass(eq=False)
class SparseGPT(Calibrated):
    """SparseGPT: mask selection and optimal-brain-surgeon reconstruction per column block (module docstring).

    Args:
        sparsity: fraction of target weights pruned (0.5 for ``NM(2, 4)``).
        data: calibration batches (a batch, or a DataLoader); ``batches`` of them are used.
        blocksize: columns per lazy-update block (128 in the paper).
        damp: λ as a fraction of the mean diagonal of H (0.01 in the paper).
        dtype: precision of H and its inverse (``torch.float64`` or ``torch.float32``).
    """

    blocksize: int = 128
    damp: float = 0.01
    dtype: torch.dtype = torch.float64

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.blocksize, bool) or not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise SparseflowError(f"SparseGPT: blocksize must be an integer >= 1, got {self.blocksize!r}")
        if isinstance(self.pattern, NM) and self.blocksize % self.pattern.m:
            raise SparseflowError(f"SparseGPT: blocksize {self.blocksize} must be a multiple of m={self.pattern.m}")
        if not (isinstance(self.damp, (int, float)) and not isinstance(self.damp, bool) and 0 < self.damp < 1):
            raise SparseflowError(f"SparseGPT: damp must be in (0, 1) (the paper uses 0.01), got {self.damp!r}")
        if self.dtype not in (torch.float32, torch.float64):
            raise SparseflowError(f"SparseGPT: dtype must be torch.float64 or torch.float32, got {self.dtype!r}")

    def _prune_layer(self, w: Tensor, h: Tensor, keep: int) -> tuple[Tensor, Tensor, float]:
        return sparsegpt(w, h.to(self.dtype), keep, self.pattern, blocksize=self.blocksize, damp=self.damp)


def _inverse_cholesky(h: Tensor, damp: float, name: str = "layer") -> tuple[Tensor, float]:
    """Upper Cholesky factor of (H + λI)⁻¹ and the λ used; ten times more damping until H + λI is definite."""
    mean = float(torch.diag(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    lam = damp * mean if mean > 0 else damp
    for _ in range(7):
        chol, info = torch.linalg.cholesky_ex(h + lam * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                return upper, lam
        lam *= 10
    raise SparseflowError(f"SparseGPT: the Hessian of {name} stays singular after damping up to {lam / 10:.3g}: "
                          "its calibration inputs are degenerate; use more calibration data or leave it out")


def sparsegpt(w: Tensor, h: Tensor, keep: int, pattern: Unstructured | NM = Unstructured(), *, blocksize: int = 128,
              damp: float = 0.01) -> tuple[Tensor, Tensor, float]:
    """Prune the matrix ``w`` (out, in) to ``keep`` weights given H = 2XXᵀ/n (in, in): (mask, new weights, λ).

    Dead inputs (H_jj = 0) are pruned first. Unstructured: in each column block, the block's share of the
    weights to prune (exact in total) with the smallest w²/[H⁻¹]²_qq; N:M: the n largest of every m columns.
    """
    rows, cols = w.shape
    h = h.to(w.device, copy=True)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    work = w.to(h.dtype).clone()
    work[:, dead] = 0
    hinv, lam = _inverse_cholesky(h, damp)
    pruned_total = rows * cols - keep
    bounds = list(range(0, cols, blocksize)) + [cols]
    # the pruned count of each block: proportional to its columns, exact in total (largest remainder)
    share = [pruned_total * (b - a) / cols for a, b in zip(bounds[:-1], bounds[1:])]
    quota = [math.floor(s) for s in share]
    for i in sorted(range(len(share)), key=lambda i: quota[i] - share[i])[: pruned_total - sum(quota)]:
        quota[i] += 1
    mask = torch.ones(rows, cols, dtype=torch.bool, device=w.device)
    for b, (i1, i2) in enumerate(zip(bounds[:-1], bounds[1:])):
        w1 = work[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        d = torch.diag(h1)
        pruned1 = torch.zeros_like(w1, dtype=torch.bool)
        if isinstance(pattern, Unstructured):
            score = (w1.square() / d.square()[None, :]).reshape(-1)
            pruned1 = topk_mask(-score.to(torch.float64), quota[b]).reshape(w1.shape)
        for i in range(i2 - i1):
            if isinstance(pattern, NM) and i % pattern.m == 0:
                tmp = w1[:, i:i + pattern.m].square() / d[i:i + pattern.m].square()[None, :]
                drop = torch.topk(tmp, pattern.m - pattern.n, dim=1, largest=False).indices
                pruned1[:, i:i + pattern.m].scatter_(1, drop, True)
            q = w1[:, i].clone()
            q[pruned1[:, i]] = 0
            e = (w1[:, i] - q) / h1[i, i]
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]
            w1[:, i] = q
            err1[:, i] = e
        work[:, i1:i2] = w1
        work[:, i2:] -= err1 @ hinv[i1:i2, i2:]
        mask[:, i1:i2] = ~pruned1
    return mask.to(w.device), (work * mask).to(w.dtype).to(w.device), lam
