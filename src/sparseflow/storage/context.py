"""Context-model coder for trained masks: adaptive row/column densities and neighbouring-row contexts.

A mask pruned by magnitude is not i.i.d.: some inputs (pixels, channels) and some units keep far more
weights than others, and neighbouring inputs behave alike. The rank-1 picture ``p_ij ∝ r_i·c_j`` (Mao et
al. 2017 and Han et al. 2016 observe the per-unit structure; here it is exploited by the entropy coder, as in
context-based image coding, JBIG / CALIC) is learned causally, so no table of densities is stored:

* the matrix is coded row by row (or transposed, whichever the encoder estimates smaller: the first byte
  says which). Column ``j``'s odds ``o_ij = (ones_j + a·p0) / (i + a - ones_j - a·p0)`` come from the rows
  already coded, with prior ``p0 = nnz / numel`` (the decoder knows ``nnz``);
* up to two *lag rows* ``i - d`` give each position a context (the bits above it at those lags); a context's
  odds ratio against the global odds, counted over the rows already coded, multiplies ``o_ij`` (naive Bayes).
  Lags are found by the encoder (autocorrelation of the rank-1 residual) and stored in the header: on a
  pixel-input layer coded transposed, lag 1 and the image width are the left and upper neighbours;
* each row's density is one symbol ``q`` on a geometric grid of odds multipliers ``λ_q = 2^((q-48)/4)``,
  plus "empty row" / "full row", coded with an adaptive categorical (absolute or as a step from the previous
  row), or not at all (``λ = 1``). ``p_ij = λ_q·o_ij·μ / (1 + λ_q·o_ij·μ)``.

All row symbols come first in the stream (their model depends only on earlier row symbols), then the bits.
Probabilities use only ``+ - * /`` on float64 from integer counts and constants built by multiplication,
so they are bit-identical at encode and decode on every IEEE platform. Payload: one flag byte
(bit 0 transposed, bits 1-2 number of lags, bits 3-4 row-symbol mode), the lags as uint32, then ANS words.
"""

from __future__ import annotations

import numpy as np
from constriction import stream

from sparseflow.errors import StorageError

__all__ = ["encode", "decode"]

_A_COL = 4.0  # prior strength (pseudo-rows) of each column's density
_A_CTX = 2.0  # prior strength of each context's odds
_Q = 96  # odds-multiplier levels; symbols _Q and _Q + 1 mean an empty / a full row
_EMPTY, _FULL = _Q, _Q + 1
_NONE, _ABS, _DELTA = 0, 1, 2  # row-symbol modes
_MAX_LAGS = 2


def _levels() -> np.ndarray:
    """λ_q = G^(q - Q/2), G = 2^(1/4), by repeated multiplication (no pow: identical on every platform)."""
    g = 1.189207115002721
    up, down = [1.0], [1.0]
    for _ in range(_Q // 2):
        up.append(up[-1] * g)
        down.append(down[-1] / g)
    return np.array(down[:0:-1] + up[: _Q // 2], dtype=np.float64)


def _prior_counts() -> np.ndarray:
    """Initial row-symbol counts: peaked at the centre level (absolute) or at a zero step (delta)."""
    dist = np.abs(np.arange(_Q) - _Q // 2).astype(np.float64)
    return np.concatenate([4.0 / (4.0 + dist), [1.0, 1.0]])


def _update(counts: np.ndarray, sym: int) -> None:
    counts[sym] += 1.0
    if sym < _Q:  # spread to the neighbouring levels: densities vary smoothly
        counts[(sym + 1) % _Q] += 0.5
        counts[(sym - 1) % _Q] += 0.5


def _to_symbol(q: int, prev: int, mode: int) -> int:
    return q if mode == _ABS or q >= _Q else (q - prev + _Q // 2) % _Q


def _from_symbol(sym: int, prev: int, mode: int) -> int:
    return sym if mode == _ABS or sym >= _Q else (sym + prev - _Q // 2) % _Q


# ---------------------------------------------------------------------------------------------
# Model terms shared by encoder (whole matrix at once) and decoder (one row): same elementwise formulas.


def _col_odds(ones: np.ndarray, seen: np.ndarray | float, p0: float) -> np.ndarray:
    ap = _A_COL * p0
    return (ones + ap) / ((seen + _A_COL) - (ones + ap))


def _ctx_ratio(n1: np.ndarray, n0: np.ndarray, tot1: np.ndarray, tot0: np.ndarray, p0: float) -> np.ndarray:
    ap, aq = _A_CTX * p0, _A_CTX * (1.0 - p0)
    return ((n1 + ap) / (n0 + aq)) * ((tot0 + aq) / (tot1 + ap))


def _contexts(mat: np.ndarray, lags: tuple[int, ...]) -> np.ndarray:
    """Context index per position: bit t is the value ``lags[t]`` rows above (0 above the first row)."""
    ctx = np.zeros(mat.shape, dtype=np.int64)
    for t, d in enumerate(lags):
        ctx[d:] |= mat[:-d].astype(np.int64) << t
    return ctx


def _base_odds(mat: np.ndarray, lags: tuple[int, ...], p0: float) -> np.ndarray:
    """Odds of every position from the rows above it (encoder side, the whole matrix at once)."""
    rows, cols = mat.shape
    ones = np.zeros((rows, cols), dtype=np.float64)
    np.cumsum(mat[:-1], axis=0, out=ones[1:])
    seen = np.arange(rows, dtype=np.float64)[:, None]
    odds = _col_odds(ones, seen, p0)
    if not lags:
        return odds
    k = 1 << len(lags)
    ctx = _contexts(mat, lags)
    flat = (np.arange(rows)[:, None] * k + ctx).reshape(-1)
    n1 = np.bincount(flat, weights=mat.reshape(-1), minlength=rows * k).reshape(rows, k)
    n_all = np.bincount(flat, minlength=rows * k).reshape(rows, k).astype(np.float64)
    n1c = np.zeros((rows, k))
    n0c = np.zeros((rows, k))
    np.cumsum(n1[:-1], axis=0, out=n1c[1:])
    np.cumsum((n_all - n1)[:-1], axis=0, out=n0c[1:])
    ratio = _ctx_ratio(n1c, n0c, n1c.sum(1, keepdims=True), n0c.sum(1, keepdims=True), p0)
    return odds * np.take_along_axis(ratio, ctx, axis=1)


def _row_levels(mat: np.ndarray, odds: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the two grid levels around the count-matching multiplier, their bit costs, and the cost at λ=1.

    Encoder only, so exp/log are fine here: they steer choices, never the decoder's probabilities.
    """
    rows, cols = mat.shape
    k = mat.sum(1).astype(np.float64)
    ones_logodds = np.where(mat, np.log2(odds), 0.0).sum(1)
    cost_one = np.log2(1.0 + odds).sum(1) - ones_logodds
    # Newton on u = ln λ for sum_j sigmoid(u + ln o_ij) = k (rows that are neither empty nor full).
    lo = np.log(odds)
    kk = np.clip(k, 0.5, cols - 0.5)
    u = np.log(kk / odds.sum(1))
    for _ in range(6):
        p = 1.0 / (1.0 + np.exp(-(u[:, None] + lo)))
        u = u - (p.sum(1) - kk) / np.maximum((p * (1.0 - p)).sum(1), 1e-9)
        u = np.clip(u, -40.0, 40.0)
    q_lo = np.clip(np.floor(u / np.log(2.0) * 4.0).astype(np.int64) + _Q // 2, 0, _Q - 2)
    qs = np.stack([q_lo, q_lo + 1], axis=1)
    costs = np.empty((rows, 2))
    for t in range(2):
        lam = levels[qs[:, t]]
        costs[:, t] = np.log2(1.0 + lam[:, None] * odds).sum(1) - k * np.log2(lam) - ones_logodds
    return qs, costs, cost_one


def _choose_symbols(k: np.ndarray, cols: int, qs: np.ndarray, costs: np.ndarray, mode: int
                    ) -> tuple[float, list[int], np.ndarray]:
    """Greedy row symbols under the adaptive symbol model: (estimated bits, levels, symbol probabilities)."""
    counts = _prior_counts()
    total, chosen, table, prev = 0.0, [], np.empty((k.size, _Q + 2)), _Q // 2
    for i in range(k.size):
        table[i] = counts
        norm = counts.sum()
        if k[i] == 0 or k[i] == cols:
            q = sym = _EMPTY if k[i] == 0 else _FULL
            total -= np.log2(counts[sym] / norm)
        else:
            opts = []
            for t in range(2):
                s = _to_symbol(int(qs[i, t]), prev, mode)
                opts.append((costs[i, t] - np.log2(counts[s] / norm), int(qs[i, t]), s))
            cost, q, sym = min(opts)
            total += cost
            prev = q
        chosen.append(q)
        _update(counts, sym)
    return total, chosen, table


def _lag_candidates(mat: np.ndarray) -> list[int]:
    """Up to two lags d whose rows i-d best predict row i beyond the rank-1 densities (autocorrelation)."""
    rows, cols = mat.shape
    if rows < 3:
        return [1] if rows == 2 else []
    sub = mat[:, :: max(1, cols // 256)].astype(np.float64)
    r = sub.mean(1, keepdims=True)
    c = sub.mean(0, keepdims=True)
    resid = sub - r * c / max(sub.mean(), 1e-12)
    spec = np.fft.rfft(resid, n=2 * rows, axis=0)
    auto = np.fft.irfft((spec * spec.conj()).sum(1), n=2 * rows)[1:rows]
    order = np.argsort(-auto)[:_MAX_LAGS]
    return [int(d) + 1 for d in order if auto[d] > 0]


def encode(mask: np.ndarray) -> bytes:
    """Payload for a 2-D bool mask: flag byte, lags, ANS words (see the module docstring)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise StorageError(f"context coder takes a 2-D bool array, got {mask.dtype} of shape {mask.shape}")
    numel, nnz = mask.size, int(np.count_nonzero(mask))
    if nnz in (0, numel):
        return bytes([0])
    p0 = nnz / numel
    levels = _levels()
    best = None
    for transposed in (False, True):
        mat = np.ascontiguousarray(mask.T if transposed else mask)
        k = mat.sum(1)
        lags = _lag_candidates(mat)
        for lag_set in [()] + [tuple(lags[:n]) for n in range(1, len(lags) + 1)]:
            odds = _base_odds(mat, lag_set, p0)
            qs, costs, cost_one = _row_levels(mat, odds, levels)
            options = [(float(cost_one.sum()), _NONE, None, None)]
            for mode in (_ABS, _DELTA):
                total, chosen, table = _choose_symbols(k, mat.shape[1], qs, costs, mode)
                options.append((total, mode, chosen, table))
            for total, mode, chosen, table in options:
                if best is None or total < best[0]:
                    best = (total, transposed, lag_set, mode, chosen, table, odds, mat)
    _, transposed, lag_set, mode, chosen, table, odds, mat = best
    rows = mat.shape[0]
    q = np.full(rows, _Q // 2) if mode == _NONE else np.asarray(chosen)
    coded = q < _Q
    lam = levels[np.minimum(q, _Q - 1)][coded, None]
    odds = lam * odds[coded]
    coder = stream.stack.AnsCoder()
    coder.encode_reverse(mat[coded].reshape(-1).astype(np.int32), stream.model.Bernoulli(perfect=False),
                         (odds / (1.0 + odds)).reshape(-1))
    if mode != _NONE:
        syms, prev = [], _Q // 2
        for qi in q:
            syms.append(_to_symbol(int(qi), prev, mode))
            prev = int(qi) if qi < _Q else prev
        coder.encode_reverse(np.asarray(syms, dtype=np.int32), stream.model.Categorical(perfect=False), table)
    head = bytes([int(transposed) | len(lag_set) << 1 | mode << 3])
    return head + np.asarray(lag_set, dtype="<u4").tobytes() + coder.get_compressed().astype("<u4").tobytes()


def decode(payload: bytes, rows: int, cols: int, nnz: int) -> np.ndarray:
    """Inverse of :func:`encode` for a ``rows x cols`` mask with ``nnz`` kept (from the file's metadata)."""
    for name, v in (("rows", rows), ("cols", cols), ("nnz", nnz)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise StorageError(f"context payload: {name} must be a non-negative integer, got {v!r}")
    numel = rows * cols
    if nnz > numel:
        raise StorageError(f"context payload: {nnz} kept weights do not fit a {rows}x{cols} mask")
    payload = bytes(payload)
    if not payload:
        raise StorageError("context payload truncated (no flag byte)")
    flags = payload[0]
    transposed, n_lags, mode = flags & 1, (flags >> 1) & 3, (flags >> 3) & 3
    if flags >> 5 or n_lags > _MAX_LAGS or mode > _DELTA:
        raise StorageError(f"context payload has unknown flags {flags:#04x} (written by a newer version?)")
    if nnz in (0, numel):
        if len(payload) != 1 or flags:
            raise StorageError(f"context payload has {len(payload)} bytes, but an all-{bool(nnz)} mask codes to 1")
        return np.full((rows, cols), bool(nnz))
    r, c = (cols, rows) if transposed else (rows, cols)
    if len(payload) < 1 + 4 * n_lags:
        raise StorageError("context payload truncated (lags missing)")
    lags = tuple(int(d) for d in np.frombuffer(payload[1 : 1 + 4 * n_lags], dtype="<u4"))
    if any(not 1 <= d < r for d in lags) or len(set(lags)) != len(lags):
        raise StorageError(f"context payload names lags {lags}, which do not fit {r} coded rows")
    words = payload[1 + 4 * n_lags :]
    if len(words) % 4:
        raise StorageError(f"context payload truncated ({len(words)} word bytes is not a multiple of 4)")
    try:
        mat = _decode_rows(np.frombuffer(words, dtype="<u4").astype(np.uint32), r, c, nnz, lags, mode)
    except (ValueError, RuntimeError, OverflowError, TypeError, AssertionError) as e:
        if isinstance(e, StorageError):
            raise
        raise StorageError(f"context payload does not decode ({e})") from None
    got = int(np.count_nonzero(mat))
    if got != nnz:
        raise StorageError(f"context payload decoded {got} kept weights, header says {nnz}")
    return np.ascontiguousarray(mat.T) if transposed else mat


def _decode_rows(words: np.ndarray, rows: int, cols: int, nnz: int, lags: tuple[int, ...], mode: int) -> np.ndarray:
    p0 = nnz / (rows * cols)
    levels = _levels()
    decoder = stream.stack.AnsCoder(words)
    q = np.full(rows, _Q // 2, dtype=np.int64)
    if mode != _NONE:
        counts, prev = _prior_counts(), _Q // 2
        for i in range(rows):
            sym = int(decoder.decode(stream.model.Categorical(counts, perfect=False)))
            if not 0 <= sym < _Q + 2:
                raise StorageError(f"context payload decodes to an impossible row symbol {sym}")
            q[i] = _from_symbol(sym, prev, mode)
            prev = int(q[i]) if q[i] < _Q else prev
            _update(counts, sym)
    mat = np.zeros((rows, cols), dtype=bool)
    ones = np.zeros(cols, dtype=np.float64)
    k = 1 << len(lags)
    n1 = np.zeros(k)
    n0 = np.zeros(k)
    bern = stream.model.Bernoulli(perfect=False)
    for i in range(rows):
        if q[i] >= _Q:
            mat[i] = q[i] == _FULL
        else:
            odds = _col_odds(ones, float(i), p0)
            if lags:
                ctx = np.zeros(cols, dtype=np.int64)
                for t, d in enumerate(lags):
                    if i >= d:
                        ctx |= mat[i - d].astype(np.int64) << t
                odds = odds * _ctx_ratio(n1, n0, n1.sum(), n0.sum(), p0)[ctx]
            odds = levels[q[i]] * odds
            mat[i] = decoder.decode(bern, odds / (1.0 + odds)) != 0
        ones += mat[i]
        if lags:
            ctx = np.zeros(cols, dtype=np.int64)
            for t, d in enumerate(lags):
                if i >= d:
                    ctx |= mat[i - d].astype(np.int64) << t
            hit = np.bincount(ctx[mat[i]], minlength=k)
            n1 += hit
            n0 += np.bincount(ctx, minlength=k) - hit
    if not decoder.is_empty():
        raise StorageError("context payload has data left over after the last row (corrupted)")
    return mat
