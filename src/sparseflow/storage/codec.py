"""Mask codecs: a boolean mask coded at its information content.

A mask of ``N`` positions with ``n`` kept carries ``log2 C(N, n) ≈ N·H(n/N)`` bits. Each codec turns a numpy
bool array into a payload whose first byte names the codec, and back; the decoder is also told the shape and
``n`` (both stored in the file's metadata), so no codec spends bits on them.

* ``IID`` (geometric gaps). Under an i.i.d. model with keep fraction ``p = n/N`` the gaps between kept
  positions are geometric, ``P(g) = p·(1-p)^g``. Each gap is one symbol of a categorical model over
  ``0 .. K-2`` plus an escape symbol ``K-1`` meaning "add K-1 and read another symbol"; by memorylessness
  the escape's probability is exactly the tail mass ``(1-p)^(K-1)``, so the code is exact for every gap.
  Coded with ANS (``constriction``): ``-log2 P(mask) = N·H(p)`` bits plus a few words of coder state.
  Above ``p = 1/2`` the zeros are coded instead.
* ``NM`` (N:M semi-structured): every group of ``m`` consecutive weights along the input dimension keeps
  exactly ``n``; each group is the index of its pattern among the ``C(m, n)``, coded uniformly:
  ``log2 C(m, n) / m`` bits per position (0.646 for 2:4).
* ``BLOCK``: every ``r x c`` tile of the ``(out, in)`` matrix view is all kept or all pruned; the tile grid is
  coded with ``IID``.
* ``CONTEXT``: adaptive per-row/per-column model for trained masks (:mod:`sparseflow.storage.context`).

The matrix view takes the first axis as the outputs and the second as the inputs. A weight stored another
way (HF ``Conv1D`` is ``(in, out)``, a transposed convolution ``(in, out, *k)``) is offered to the N:M and
block coders in its ``(out, in, *rest)`` view as well by :func:`sparseflow.save`, which reads the weight's
:class:`~sparseflow.Layout` and records the axes in the file's header when that view codes smaller.

:func:`encode_mask` tries every codec that applies and keeps the smallest payload, so a structured or trained
mask never costs more than the i.i.d. code. Model probabilities are computed with ``+ - * /`` only (IEEE
exact on every platform), so a file decodes identically everywhere.

Decoders validate as they go and raise :class:`~sparseflow.errors.StorageError` naming the failed check; a
payload cannot make them decode more symbols than its length can hold (every coded symbol costs at least
one bit), nor allocate more than the given shape.
"""

from __future__ import annotations

import math

import numpy as np
from constriction import stream

from sparseflow.errors import StorageError

__all__ = ["IID", "NM", "BLOCK", "CONTEXT", "CODEC_NAMES", "encode_mask", "encode_structured", "decode_mask",
           "encode_iid", "decode_iid", "matrix_view", "from_matrix_view", "iid_bound_bits", "binary_entropy"]

IID, NM, BLOCK, CONTEXT = 1, 2, 3, 4
CODEC_NAMES = {IID: "iid", NM: "nm", BLOCK: "block", CONTEXT: "context"}
_TAIL = 2.0**-20  # escape probability target: small enough to cost nothing, large enough to quantise well
_MAX_K = 1 << 16  # alphabet cap (reached only below p ≈ 2e-4, where escapes then carry the long gaps)
_MAX_NM_M = 16  # N:M pattern tables have 2**m entries


def binary_entropy(p: float) -> float:
    """``H(p) = -p log2 p - (1-p) log2 (1-p)`` in bits (0 at p = 0 or 1): an i.i.d. mask's bits per position."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def iid_bound_bits(numel: int, nnz: int) -> float:
    """``log2 C(numel, nnz)``: the size of the smallest code for a mask with this count, in bits."""
    return (math.lgamma(numel + 1) - math.lgamma(nnz + 1) - math.lgamma(numel - nnz + 1)) / math.log(2)


# ---------------------------------------------------------------------------------------------
# Matrix view shared with sparseflow.patterns: (out, in, *kernel) -> (out, prod(kernel) * in), inputs innermost.


def matrix_view(mask: np.ndarray) -> np.ndarray:
    if mask.ndim == 2:
        return mask
    if mask.ndim < 2:
        return mask.reshape(1, -1)
    return np.moveaxis(mask, 1, -1).reshape(mask.shape[0], -1)


def from_matrix_view(mat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 2:
        return mat
    if len(shape) < 2:
        return mat.reshape(shape)
    out, inp, *kernel = shape
    return np.ascontiguousarray(np.moveaxis(mat.reshape(out, *kernel, inp), -1, 1))


# ---------------------------------------------------------------------------------------------
# ANS with a sentinel. An ANS stack starts from state 0, from which the symbol at the bottom of the alphabet
# codes to nothing: without care, trailing runs of symbol 0 are free, and an empty payload "decodes" to any
# number of them. Pushing a 32-bit sentinel first (so it is popped last) keeps the state large while the
# real symbols are coded: each then costs at least -log2 P(symbol) >= 1 bit, which bounds how many a
# payload can hold, and popping the sentinel at the end checks that decoding ended where encoding began.

_SENTINEL = np.array([0xA5C3, 0x3C5A], dtype=np.int32)
_SENTINEL_MODEL = stream.model.Uniform(1 << 16)


def ans_encode(symbols: np.ndarray, model: object) -> bytes:
    """Little-endian uint32 words coding ``symbols`` (int32) under ``model``, sentinel included."""
    coder = stream.stack.AnsCoder()
    coder.encode_reverse(_SENTINEL, _SENTINEL_MODEL)
    coder.encode_reverse(symbols.astype(np.int32, copy=False), model)
    return coder.get_compressed().astype("<u4").tobytes()


def ans_words(payload: bytes | memoryview, what: str) -> np.ndarray:
    if len(payload) % 4:
        raise StorageError(f"{what} payload length {len(payload)} is not a whole number of 32-bit words")
    return np.frombuffer(payload, dtype="<u4").astype(np.uint32)


def ans_capacity(words: np.ndarray) -> int:
    """Most symbols of probability <= 1/2 that ``words`` can hold (1 % slack for quantised probabilities)."""
    return int(32 * words.size * 1.01) + 64


def ans_finish(decoder: object, what: str) -> None:
    """Pop and check the sentinel; the decoder must then be empty."""
    try:
        ok = bool((decoder.decode(_SENTINEL_MODEL, 2) == _SENTINEL).all()) and decoder.is_empty()
    except (ValueError, RuntimeError, OverflowError):
        ok = False
    if not ok:
        raise StorageError(f"{what} payload does not end where its data ends (corrupted or truncated)")


# ---------------------------------------------------------------------------------------------
# IID: geometric gaps between kept positions.


def _gap_model(numel: int, ones: int) -> tuple[int, object]:
    """Categorical over gaps 0..K-2 plus escape K-1 for keep fraction ones/numel (ones <= numel/2, ones > 0)."""
    p = ones / numel
    a = 1.0 - p
    # powers a^1 .. a^L by repeated multiplication: deterministic, unlike pow().
    length = min(_MAX_K, max(2, int(30.0 / p)))
    powers = np.cumprod(np.full(length, a))
    below = np.flatnonzero(powers < _TAIL)
    k = int(below[0]) + 2 if below.size else length + 1  # escape holds a^(K-1)
    k = max(k, 2)
    probs = np.empty(k)
    probs[0] = p
    probs[1 : k - 1] = p * powers[: k - 2]
    probs[k - 1] = powers[k - 2]
    return k, stream.model.Categorical(probs, perfect=False)


def encode_iid(flat: np.ndarray) -> bytes:
    """ANS words (little-endian uint32) for a flat bool array; empty when the mask is all False or all True."""
    numel = flat.size
    ones = int(np.count_nonzero(flat))
    if ones > numel - ones:  # code the minority symbol
        flat = ~flat
        ones = numel - ones
    if ones == 0:
        return b""
    pos = np.flatnonzero(flat)
    gaps = np.diff(pos, prepend=-1) - 1
    k, model = _gap_model(numel, ones)
    esc = k - 1
    symbols = gaps.astype(np.int32)
    long = np.flatnonzero(gaps >= esc)
    if long.size:  # rare: gap g becomes g // esc escape symbols, then g % esc
        symbols[long] = gaps[long] % esc
        symbols = np.insert(symbols, np.repeat(long, gaps[long] // esc), esc)
    return ans_encode(symbols, model)


def decode_iid(payload: bytes | memoryview, numel: int, nnz: int) -> np.ndarray:
    """Inverse of :func:`encode_iid`: a flat bool array of ``numel`` positions with ``nnz`` True."""
    if not 0 <= nnz <= numel:
        raise StorageError(f"kept count {nnz} is outside 0..{numel}")
    ones = min(nnz, numel - nnz)
    inverted = nnz != ones
    if ones == 0:
        if len(payload):
            raise StorageError(f"mask payload has {len(payload)} bytes, but an all-{'True' if inverted else 'False'} "
                               "mask codes to none")
        return np.full(numel, inverted, dtype=bool)
    words = ans_words(payload, "mask")
    capacity = ans_capacity(words)  # symbols the payload can hold: each costs >= 1 bit
    if ones > capacity:
        raise StorageError(f"mask payload of {len(payload)} bytes cannot hold {ones} kept positions")
    k, model = _gap_model(numel, ones)
    esc = k - 1
    # Each escape moves esc positions, all inside the tensor: this bounds the loop (and the list of parts)
    # where escapes cost under a bit (p near 1e-5), so a payload's length alone would allow millions.
    max_escapes = numel // esc
    parts, residuals, decoded = [], 0, 0
    try:
        decoder = stream.stack.AnsCoder(words)
        while residuals < ones and decoded < capacity and decoded - residuals <= max_escapes:
            more = decoder.decode(model, min(ones - residuals, capacity - decoded))
            decoded += more.size
            parts.append(more)
            residuals += int(np.count_nonzero(more != esc))
    except (ValueError, RuntimeError, OverflowError) as e:
        raise StorageError(f"mask payload does not decode ({e})") from None
    if residuals < ones:
        raise StorageError(f"mask payload of {len(payload)} bytes cannot hold {ones} kept positions in "
                           f"{numel} entries")
    ans_finish(decoder, "mask")
    symbols = np.concatenate(parts).astype(np.int64) if len(parts) > 1 else parts[0].astype(np.int64)
    if symbols.size and (symbols.min() < 0 or symbols.max() > esc):
        raise StorageError("mask payload decodes to an impossible gap")
    if symbols.size == ones:  # no escapes (the usual case): position = running sum of (gap + 1) - 1
        symbols += 1
        ends = np.cumsum(symbols)
        ends -= 1
    else:
        is_res = symbols != esc
        ends = np.cumsum(np.where(is_res, symbols + 1, esc))[is_res] - 1
    if ends.size != ones or (ends.size and ends[-1] >= numel):
        raise StorageError(f"mask payload decodes to positions beyond the tensor's {numel} entries")
    out = np.zeros(numel, dtype=bool)
    out[ends] = True
    if inverted:
        np.logical_not(out, out=out)
    return out


# ---------------------------------------------------------------------------------------------
# N:M: one uniform symbol per group of m along the input dimension.


def _nm_tables(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(rank of each m-bit pattern with n ones or -1, pattern of each rank) in increasing pattern order."""
    codes = np.arange(1 << m, dtype=np.int64)
    pop = np.zeros(1 << m, dtype=np.int64)
    for b in range(m):
        pop += (codes >> b) & 1
    patterns = codes[pop == n]
    rank = np.full(1 << m, -1, dtype=np.int64)
    rank[patterns] = np.arange(patterns.size)
    return rank, patterns


def _nm_detect(mat: np.ndarray) -> tuple[int, int] | None:
    """The finest (n, m), m in 2..16 dividing the columns, with exactly n kept in every group; else None."""
    rows, cols = mat.shape
    for m in (2, 4, 8, 16, 3, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15):
        if cols % m or mat.size == 0:
            continue
        first = mat[0].reshape(-1, m).sum(axis=1)  # one row first: random masks fail here, cheaply
        if not (0 < first[0] < m and bool((first == first[0]).all())):
            continue
        counts = mat.reshape(-1, m).sum(axis=1)
        n = int(counts[0])
        if 0 < n < m and bool((counts == n).all()):
            return n, m
    return None


def _encode_nm(mat: np.ndarray, n: int, m: int) -> bytes:
    groups = mat.reshape(-1, m).astype(np.int64)
    codes = (groups << np.arange(m, dtype=np.int64)).sum(axis=1)
    rank, patterns = _nm_tables(n, m)
    return bytes([n, m]) + ans_encode(rank[codes], stream.model.Uniform(int(patterns.size)))


def _decode_nm(body: memoryview, rows: int, cols: int, nnz: int) -> np.ndarray:
    if len(body) < 2:
        raise StorageError("N:M mask payload is truncated (no n, m)")
    n, m = body[0], body[1]
    if not (2 <= m <= _MAX_NM_M and 0 < n < m) or cols % m:
        raise StorageError(f"N:M mask payload names {n}:{m}, which does not fit a {rows}x{cols} matrix")
    groups = rows * cols // m
    if groups * n != nnz:
        raise StorageError(f"{n}:{m} over {groups} groups keeps {groups * n}, but the header says {nnz}")
    words = ans_words(body[2:], "N:M mask")
    if groups > ans_capacity(words):
        raise StorageError(f"N:M mask payload of {len(body)} bytes cannot hold {groups} groups")
    rank, patterns = _nm_tables(n, m)
    try:
        decoder = stream.stack.AnsCoder(words)
        idx = decoder.decode(stream.model.Uniform(int(patterns.size)), groups).astype(np.int64)
    except (ValueError, RuntimeError, OverflowError) as e:
        raise StorageError(f"N:M mask payload does not decode ({e})") from None
    ans_finish(decoder, "N:M mask")
    if idx.size and (idx.min() < 0 or idx.max() >= patterns.size):
        raise StorageError("N:M mask payload decodes to an impossible pattern")
    bits = (patterns[idx][:, None] >> np.arange(m, dtype=np.int64)) & 1
    return bits.astype(bool).reshape(rows, cols)


# ---------------------------------------------------------------------------------------------
# Block: the tile grid of an r x c block mask.


def _largest_tile(mat: np.ndarray, axis: int) -> int:
    """Largest power of two t dividing mat.shape[axis] such that runs of t rows (axis 0) / cols are equal."""
    size = mat.shape[axis]
    t = 1
    lead = mat[:2] if axis == 0 else mat[:, :2].T
    if size % 2 or size < 2 or not bool((lead[0] == lead[1]).all()):  # the first pair already differs
        return 1
    while size % (2 * t) == 0:
        groups = mat.reshape(size // (2 * t), 2 * t, -1) if axis == 0 else mat.T.reshape(size // (2 * t), 2 * t, -1)
        if not bool((groups == groups[:, :1, :]).all()):
            break
        t *= 2
    return t


def _encode_block(mat: np.ndarray) -> bytes | None:
    rows, cols = mat.shape
    r = _largest_tile(mat, 0)
    c = _largest_tile(mat, 1)
    if r * c == 1:
        return None
    grid = mat[::r, ::c]
    return np.array([r, c], dtype="<u4").tobytes() + encode_iid(grid.reshape(-1))


def _decode_block(body: memoryview, rows: int, cols: int, nnz: int) -> np.ndarray:
    if len(body) < 8:
        raise StorageError("block mask payload is truncated (no tile size)")
    r, c = (int(v) for v in np.frombuffer(body[:8], dtype="<u4"))
    if r < 1 or c < 1 or rows % r or cols % c:
        raise StorageError(f"block mask payload names {r}x{c} tiles, which do not divide a {rows}x{cols} matrix")
    if nnz % (r * c):
        raise StorageError(f"{r}x{c} tiles cannot keep {nnz} weights (not a multiple of {r * c})")
    grid = decode_iid(body[8:], (rows // r) * (cols // c), nnz // (r * c)).reshape(rows // r, cols // c)
    return np.repeat(np.repeat(grid, r, axis=0), c, axis=1)


# ---------------------------------------------------------------------------------------------
# Choosing and dispatching.


def _overdispersed(mat: np.ndarray) -> bool:
    """Whether row or column counts vary more than an i.i.d. mask's would (binomial variance), i.e. whether
    the context model has density structure to learn. Its rank-1 part is what pays on trained masks; on a
    mask without it the context coder cannot win, and trying costs ~10x the i.i.d. coding time."""
    rows, cols = mat.shape
    p = float(np.count_nonzero(mat)) / mat.size
    if rows < 2 or cols < 2 or p in (0.0, 1.0):
        return False
    for axis, n, k in ((1, cols, rows), (0, rows, cols)):  # counts per row (k of them, n positions each)
        counts = mat.sum(axis=axis, dtype=np.int64)
        dispersion = float(counts.var()) / (n * p * (1.0 - p))
        if dispersion > 1.0 + 4.0 * math.sqrt(2.0 / k):  # four standard errors above the i.i.d. value 1
            return True
    return False


def encode_structured(mask: np.ndarray) -> bytes | None:
    """The smaller of the N:M and block payloads of ``mask`` (>= 2 dims, matrix view), or None when it has
    neither structure. Cheap when it has none: both detectors stop at the first row or pair that breaks it."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    if mask.ndim < 2 or not mask.size:
        return None
    mat = matrix_view(mask)
    candidates = []
    nm = _nm_detect(mat)
    if nm is not None:
        candidates.append(bytes([NM]) + _encode_nm(mat, *nm))
    block = _encode_block(mat)
    if block is not None:
        candidates.append(bytes([BLOCK]) + block)
    return min(candidates, key=len) if candidates else None


def encode_mask(mask: np.ndarray, *, context: bool = True) -> bytes:
    """The smallest payload among the codecs that apply to ``mask`` (any shape); first byte = codec id."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    candidates = [bytes([IID]) + encode_iid(mask.reshape(-1))]
    if mask.ndim >= 2 and mask.size:
        mat = matrix_view(mask)
        structured = encode_structured(mask)
        if structured is not None:
            candidates.append(structured)
        if context and structured is None and _overdispersed(mat):
            from sparseflow.storage import context as _context  # imports codec: bound late

            coded = _context.encode(mat, budget_bits=8.0 * len(candidates[0]))
            if coded is not None:
                candidates.append(bytes([CONTEXT]) + coded)
    return min(candidates, key=len)  # stable: IID wins ties


def decode_mask(payload: bytes | memoryview, shape: tuple[int, ...], nnz: int) -> np.ndarray:
    """Inverse of :func:`encode_mask` given the tensor's shape and kept count (from the file's metadata)."""
    payload = memoryview(payload).cast("B") if not isinstance(payload, memoryview) else payload.cast("B")
    numel = math.prod(shape)
    if not 0 <= nnz <= numel:
        raise StorageError(f"kept count {nnz} is outside 0..{numel} for shape {tuple(shape)}")
    if len(payload) < 1:
        raise StorageError("mask payload is empty (no codec byte)")
    codec, body = payload[0], payload[1:]
    if codec == IID:
        return decode_iid(body, numel, nnz).reshape(shape)
    if codec not in (NM, BLOCK, CONTEXT) or len(shape) < 2 or numel == 0:
        raise StorageError(f"mask payload names codec {codec}, which is unknown or does not apply to shape "
                           f"{tuple(shape)}")
    rows = shape[0]
    cols = numel // rows
    if codec == NM:
        mat = _decode_nm(body, rows, cols, nnz)
    elif codec == BLOCK:
        mat = _decode_block(body, rows, cols, nnz)
    else:
        from sparseflow.storage import context as _context

        mat = _context.decode(bytes(body), rows, cols, nnz)
        if not isinstance(mat, np.ndarray) or mat.shape != (rows, cols) or mat.dtype != bool:
            raise StorageError("context mask payload decodes to the wrong shape")
    if int(np.count_nonzero(mat)) != nnz:
        raise StorageError(f"mask decodes to {int(np.count_nonzero(mat))} kept weights, but the header says {nnz}")
    return from_matrix_view(mat, tuple(shape))
