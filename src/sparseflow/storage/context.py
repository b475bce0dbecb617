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
  plus "empty row" / "full row", coded with an adaptive categorical, or not at all (``λ = 1``). ``p_ij = λ_q·o_ij·μ / (1 + λ_q·o_ij·μ)``.

All row symbols come first in the stream (their model depends only on earlier row symbols), then the bits.
Probabilities use only ``+ - * /`` on float64 from integer counts and constants built by multiplication,
so they are bit-identical at encode and decode on every IEEE platform. Payload: one flag byte
(bit 0 transposed, bits 1-2 number of lags, bit 3 row symbols coded), the lags as uint32, then ANS words.
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
_NONE, _ABS = 0, 1  # row symbols absent (λ = 1) / coded
_MAX_LAGS = 2
_SEARCH = 1 << 18  # positions the encoder looks at to choose its variant


def _levels() -> np.ndarray:
    """λ_q = G^(q - Q/2), G = 2^(1/4), by repeated multiplication (no pow: identical on every platform)."""
    g = 1.189207115002721
    up, down = [1.0], [1.0]
    for _ in range(_Q // 2):
        up.append(up[-1] * g)
        down.append(down[-1] / g)
    return np.array(down[:0:-1] + up[: _Q // 2], dtype=np.float64)


def _prior_counts() -> np.ndarray:
    """Initial row-symbol counts: peaked at the centre level λ = 1 (the column odds already carry p0)."""
    dist = np.abs(np.arange(_Q) - _Q // 2).astype(np.float64)
    return np.concatenate([4.0 / (4.0 + dist), [1.0, 1.0]])


def _update(counts: np.ndarray, sym: int) -> None:
    counts[sym] += 1.0
    if sym < _Q:  # spread to the neighbouring levels: densities vary smoothly
        counts[min(sym + 1, _Q - 1)] += 0.5
        counts[max(sym - 1, 0)] += 0.5


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


def _block_odds(mat: np.ndarray, lags: tuple[int, ...], p0: float, start: int, stop: int,
                state: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, tuple]:
    """Odds of rows ``start:stop`` from the rows above them (encoder side, a block of rows at once).

    ``state`` = (kept per column, kept per context, pruned per context) over rows ``:start``; the returned
    state covers rows ``:stop``. Counts stay integers in float64, so the values equal the decoder's.
    """
    ones, n1, n0 = state
    sub = mat[start:stop]
    incl = np.cumsum(sub.view(np.uint8), axis=0, dtype=np.int32)
    odds = _col_odds(ones + (incl - sub), np.arange(start, stop, dtype=np.float64)[:, None], p0)
    new_ones = ones + incl[-1]
    if not lags:
        return odds, (new_ones, n1, n0)
    k = 1 << len(lags)
    ctx = _contexts(mat[max(0, start - max(lags)) : stop], lags)[-(stop - start) :]
    n = stop - start
    flat = (np.arange(n)[:, None] * k + ctx).reshape(-1)
    hit = np.bincount(flat, weights=sub.reshape(-1), minlength=n * k).reshape(n, k)
    miss = np.bincount(flat, minlength=n * k).reshape(n, k) - hit
    c1 = n1 + (np.cumsum(hit, axis=0) - hit)
    c0 = n0 + (np.cumsum(miss, axis=0) - miss)
    ratio = _ctx_ratio(c1, c0, c1.sum(1, keepdims=True), c0.sum(1, keepdims=True), p0)
    odds *= np.take_along_axis(ratio, ctx, axis=1)
    return odds, (new_ones, c1[-1] + hit[-1], c0[-1] + miss[-1])


def _blocks(mat: np.ndarray, lags: tuple[int, ...], p0: float):
    """Yield (start, stop, odds, state at start) over blocks of about 2^16 positions."""
    rows, cols = mat.shape
    step = max(1, (1 << 16) // max(cols, 1))
    k = 1 << len(lags)
    state = (np.zeros(cols), np.zeros(k), np.zeros(k))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        odds, nxt = _block_odds(mat, lags, p0, start, stop, state)
        yield start, stop, odds, state
        state = nxt


def _row_levels(sub: np.ndarray, odds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the two grid levels around the count-matching multiplier, their bit costs, and the cost at λ=1.

    Encoder only (float32, exp/log): these steer choices, never the decoder's probabilities.
    """
    cols = sub.shape[1]
    o = odds.astype(np.float32)
    k = sub.sum(1).astype(np.float32)
    lo = np.log(o)
    ones_lo = np.where(sub, lo, np.float32(0)).sum(1)
    cost_one = (np.log1p(o).sum(1) - ones_lo) / np.log(2.0)
    kk = np.clip(k, 0.5, cols - 0.5)
    u = np.log(kk / o.sum(1))
    for _ in range(4):  # Newton on u = ln λ for sum_j sigmoid(u + ln o_ij) = k
        p = 1.0 / (1.0 + np.exp(-(u[:, None] + lo)))
        u = np.clip(u - (p.sum(1) - kk) / np.maximum((p * (1.0 - p)).sum(1), 1e-6), -30.0, 30.0)
    q_lo = np.clip(np.floor(u / np.log(2.0) * 4.0).astype(np.int64) + _Q // 2, 0, _Q - 2)
    qs = np.stack([q_lo, q_lo + 1], axis=1)
    costs = np.empty((sub.shape[0], 2))
    for t in range(2):
        lam = _levels()[qs[:, t]].astype(np.float32)
        costs[:, t] = (np.log1p(lam[:, None] * o).sum(1) - k * np.log(lam) - ones_lo) / np.log(2.0)
    return qs, costs, cost_one


def _row_stats(mat: np.ndarray, lags: tuple[int, ...], p0: float):
    parts = [(_row_levels(mat[a:b], odds)) for a, b, odds, _ in _blocks(mat, lags, p0)]
    return tuple(np.concatenate([p[t] for p in parts]) for t in range(3))


def _choose_symbols(k: np.ndarray, cols: int, qs: np.ndarray, costs: np.ndarray
                    ) -> tuple[float, np.ndarray, np.ndarray]:
    """Greedy row symbols under the adaptive symbol model: (estimated bits, symbols, their probability rows)."""
    counts = _prior_counts()
    total, chosen, table = 0.0, np.empty(k.size, dtype=np.int64), np.empty((k.size, _Q + 2))
    for i in range(k.size):
        table[i] = counts
        norm = counts.sum()
        if k[i] == 0 or k[i] == cols:
            sym = _EMPTY if k[i] == 0 else _FULL
            total -= np.log2(counts[sym] / norm)
        else:
            cost, sym = min((costs[i, t] - np.log2(counts[qs[i, t]] / norm), int(qs[i, t])) for t in range(2))
            total += cost
        chosen[i] = sym
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


def encode(mask: np.ndarray, *, budget_bits: float | None = None) -> bytes | None:
    """Payload for a 2-D bool mask: flag byte, lags, ANS words (see the module docstring).

    With ``budget_bits`` (the size of another coder's payload), returns None without coding when the
    estimate of the best variant is above it: coding is the expensive part, and it would lose anyway.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise StorageError(f"context coder takes a 2-D bool array, got {mask.dtype} of shape {mask.shape}")
    numel, nnz = mask.size, int(np.count_nonzero(mask))
    if nnz in (0, numel):
        return bytes([0])
    p0 = nnz / numel
    best = None
    mats = (np.ascontiguousarray(mask), np.ascontiguousarray(mask.T))
    for transposed in (False, True):
        mat = mats[transposed]
        # Choose the variant on at most ~2^20 positions (every s-th column); bits scale by s.
        stride = -(-numel // _SEARCH)
        sub = mat[:, ::stride] if stride > 1 else mat
        lags = _lag_candidates(mat)
        for lag_set in [()] + [tuple(lags[:n]) for n in range(1, len(lags) + 1)]:
            qs, costs, cost_one = _row_stats(sub, lag_set, p0)
            k = sub.sum(1)
            options = [(float(cost_one.sum()) * stride, _NONE),
                       (_choose_symbols(k, sub.shape[1], qs, costs * stride)[0], _ABS)]
            for total, mode in options:
                if best is None or total < best[0]:
                    best = (total, transposed, lag_set, mode)
    estimate, transposed, lag_set, mode = best
    # A subsampled estimate runs ~2 % low on random 4096x4096 masks (exact without subsampling).
    if budget_bits is not None and estimate * (1.025 if numel > _SEARCH else 1.0) > budget_bits:
        return None
    mat = mats[transposed]
    rows, cols = mat.shape
    blocks = list(_blocks(mat, lag_set, p0))
    q = np.full(rows, _Q // 2)
    if mode != _NONE:
        stats = [_row_levels(mat[a:b], odds) for a, b, odds, _ in blocks]
        qs, costs, _ = (np.concatenate([st[t] for st in stats]) for t in range(3))
        _, q, table = _choose_symbols(mat.sum(1), cols, qs, costs)
    levels = _levels()
    bern = stream.model.Bernoulli(perfect=False)
    coder = stream.stack.AnsCoder()
    for start, stop, odds, _ in reversed(blocks):  # ANS is a stack: last block first
        coded = q[start:stop] < _Q
        odds = levels[np.minimum(q[start:stop], _Q - 1)][coded, None] * odds[coded]
        coder.encode_reverse(mat[start:stop][coded].reshape(-1).astype(np.int32), bern,
                             (odds / (1.0 + odds)).reshape(-1))
    if mode != _NONE:
        coder.encode_reverse(q.astype(np.int32), stream.model.Categorical(perfect=False), table)
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
    transposed, n_lags, mode = flags & 1, (flags >> 1) & 3, (flags >> 3) & 1
    if flags >> 4 or n_lags > _MAX_LAGS:
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
        counts = _prior_counts()
        for i in range(rows):
            q[i] = int(decoder.decode(stream.model.Categorical(counts, perfect=False)))
            if not 0 <= q[i] < _Q + 2:
                raise StorageError(f"context payload decodes to an impossible row symbol {q[i]}")
            _update(counts, int(q[i]))
    mat = np.zeros((rows, cols), dtype=bool)
    ones = np.zeros(cols, dtype=np.float64)
    k = 1 << len(lags)
    n1 = np.zeros(k)
    n0 = np.zeros(k)
    bern = stream.model.Bernoulli(perfect=False)
    for i in range(rows):
        if lags:
            ctx = np.zeros(cols, dtype=np.int64)
            for t, d in enumerate(lags):
                if i >= d:
                    ctx |= mat[i - d].astype(np.int64) << t
        if q[i] >= _Q:
            mat[i] = q[i] == _FULL
        else:
            odds = _col_odds(ones, float(i), p0)
            if lags:
                odds = odds * _ctx_ratio(n1, n0, n1.sum(), n0.sum(), p0)[ctx]
            odds = levels[q[i]] * odds
            mat[i] = decoder.decode(bern, odds / (1.0 + odds)) != 0
        ones += mat[i]
        if lags:
            hit = np.bincount(ctx[mat[i]], minlength=k)
            n1 += hit
            n0 += np.bincount(ctx, minlength=k) - hit
    if not decoder.is_empty():
        raise StorageError("context payload has data left over after the last row (corrupted)")
    return mat
