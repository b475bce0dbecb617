// Sparse x dense kernels for one instruction set; included once per ISA by _spmm.cpp inside a
// namespace and a `#pragma GCC target` region, with the vector type V of VW floats and the helpers
// vzero/vload/vstore/vset1/vfma/vsum defined before inclusion.
//
// Weights are CSR (rowptr int32, column indices IT = uint16_t or int32_t, values fp32), shape
// [nrows, ncols]; with a permutation pm (int32, or null) the value of stored position j is va[pm[j]].
// Inputs X are [B, ncols] row-major (torch's Linear layout), outputs Y [B, nrows].
//
// Batch 1 (and tiny batches): one pass over each row, dot product with a gather of x; the loop is
// bound by the bytes of (index + value) per nonzero, which is why indices are as narrow as fit.
// Batch > 1: X is packed into panels Xp[p][ncols][TW] (TW = K*VW batch columns, zero padded) so that
// one nonzero multiplies a whole register tile of K vectors: one broadcast, K loads, K FMAs. The
// tile stays in registers for the row; U independent accumulator sets hide the FMA latency.

template <typename IT>
static float row_dot(const IT* c, const float* v, int32_t n, const float* x) {
    return ROW_DOT(c, v, n, x);
}

// The value of stored position j read through a permutation: va[pm[j]] (the transpose of a matrix whose
// values stay in the other order, e.g. the input gradient of a sparse training layer).
template <typename IT>
static float row_dot_perm(const IT* c, const int32_t* pm, const float* va, int32_t n, const float* x) {
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int32_t j = 0;
    for (; j + 4 <= n; j += 4) {
        a0 += va[pm[j]] * x[(uint32_t)c[j]];
        a1 += va[pm[j + 1]] * x[(uint32_t)c[j + 1]];
        a2 += va[pm[j + 2]] * x[(uint32_t)c[j + 2]];
        a3 += va[pm[j + 3]] * x[(uint32_t)c[j + 3]];
    }
    for (; j < n; ++j) a0 += va[pm[j]] * x[(uint32_t)c[j]];
    return (a0 + a1) + (a2 + a3);
}

template <typename IT>
static void spmv_rows(const int32_t* rp, const IT* ci, const float* va, const int32_t* pm, int32_t r0, int32_t r1,
                      const float* x, float* y, const float* bias) {
    for (int32_t r = r0; r < r1; ++r) {
        const int32_t s = rp[r], n = rp[r + 1] - s;
        float acc = pm ? row_dot_perm<IT>(ci + s, pm + s, va, n, x) : row_dot<IT>(ci + s, va + s, n, x);
        y[r] = bias ? acc + bias[r] : acc;
    }
}

// Rows [r0, r1) against one packed panel (TW = K*VW columns, `bw` of them real), written to
// Y[b0 + b][r] through a row block buffer so that the stores to Y are contiguous runs of rows.
template <typename IT, int K, bool PERM>
static void panel_rows(const int32_t* rp, const IT* ci, const float* va, const int32_t* pm, int32_t r0, int32_t r1,
                       const float* Xp, int32_t b0, int32_t bw, float* Y, int64_t ldy, const float* bias) {
    constexpr int TW = K * VW;
    constexpr int U = K >= 4 ? 1 : 4 / K;  // accumulator sets: ~4 independent FMA chains
    constexpr int RB = 16;                  // rows per output block
    alignas(64) float buf[RB][TW];
    for (int32_t rb = r0; rb < r1; rb += RB) {
        const int32_t re = rb + RB < r1 ? rb + RB : r1;
        for (int32_t r = rb; r < re; ++r) {
            V acc[U][K];
            for (int u = 0; u < U; ++u)
                for (int k = 0; k < K; ++k) acc[u][k] = vzero();
            int32_t j = rp[r];
            const int32_t e = rp[r + 1];
            for (; j + U <= e; j += U) {
                for (int u = 0; u < U; ++u) {
                    const V w = vset1(va[PERM ? pm[j + u] : j + u]);
                    const float* p = Xp + (int64_t)(uint32_t)ci[j + u] * TW;
                    for (int k = 0; k < K; ++k) acc[u][k] = vfma(w, vload(p + k * VW), acc[u][k]);
                }
            }
            for (; j < e; ++j) {
                const V w = vset1(va[PERM ? pm[j] : j]);
                const float* p = Xp + (int64_t)(uint32_t)ci[j] * TW;
                for (int k = 0; k < K; ++k) acc[0][k] = vfma(w, vload(p + k * VW), acc[0][k]);
            }
            for (int u = 1; u < U; ++u)
                for (int k = 0; k < K; ++k) acc[0][k] = vadd(acc[0][k], acc[u][k]);
            for (int k = 0; k < K; ++k) vstore(&buf[r - rb][k * VW], acc[0][k]);
        }
        const int32_t nr = re - rb;
        for (int32_t b = 0; b < bw; ++b) {
            float* yo = Y + (int64_t)(b0 + b) * ldy + rb;
            if (bias)
                for (int32_t i = 0; i < nr; ++i) yo[i] = buf[i][b] + bias[rb + i];
            else
                for (int32_t i = 0; i < nr; ++i) yo[i] = buf[i][b];
        }
    }
}

// Pack columns [k0, k1) of X[B][ncols] into panels of TW batch columns, zero padded.
[[maybe_unused]] static void pack_panels(const float* X, int32_t B, int32_t ncols, int32_t TW, int32_t k0, int32_t k1, float* Xp) {
    const int32_t np = (B + TW - 1) / TW;
    for (int32_t p = 0; p < np; ++p) {
        float* P = Xp + (int64_t)p * ncols * TW;
        const int32_t b0 = p * TW, bw = B - b0 < TW ? B - b0 : TW;
        // 8 columns at a time: 8 contiguous reads per row of X, then TW-strided writes within L1/L2
        for (int32_t kb = k0; kb < k1; kb += 64) {
            const int32_t ke = kb + 64 < k1 ? kb + 64 : k1;
            for (int32_t b = 0; b < bw; ++b) {
                const float* xr = X + (int64_t)(b0 + b) * ncols;
                for (int32_t k = kb; k < ke; ++k) P[(int64_t)k * TW + b] = xr[k];
            }
            for (int32_t b = bw; b < TW; ++b)
                for (int32_t k = kb; k < ke; ++k) P[(int64_t)k * TW + b] = 0.0f;
        }
    }
}

template <typename IT, bool PERM>
static void panels_rows_k(const int32_t* rp, const IT* ci, const float* va, const int32_t* pm, int32_t r0,
                          int32_t r1, const float* Xp, int32_t B, int32_t ncols, int32_t K, float* Y, int64_t ldy,
                          const float* bias) {
    const int32_t TW = K * VW;
    const int32_t np = (B + TW - 1) / TW;
    for (int32_t p = 0; p < np; ++p) {
        const int32_t b0 = p * TW, bw = B - b0 < TW ? B - b0 : TW;
        const float* P = Xp + (int64_t)p * ncols * TW;
        if (K == 1) panel_rows<IT, 1, PERM>(rp, ci, va, pm, r0, r1, P, b0, bw, Y, ldy, bias);
        else if (K == 2) panel_rows<IT, 2, PERM>(rp, ci, va, pm, r0, r1, P, b0, bw, Y, ldy, bias);
        else if (K == 4) panel_rows<IT, 4, PERM>(rp, ci, va, pm, r0, r1, P, b0, bw, Y, ldy, bias);
        else panel_rows<IT, 8, PERM>(rp, ci, va, pm, r0, r1, P, b0, bw, Y, ldy, bias);
    }
}

template <typename IT>
static void panels_rows(const int32_t* rp, const IT* ci, const float* va, const int32_t* pm, int32_t r0, int32_t r1,
                        const float* Xp, int32_t B, int32_t ncols, int32_t K, float* Y, int64_t ldy,
                        const float* bias) {
    if (pm) panels_rows_k<IT, true>(rp, ci, va, pm, r0, r1, Xp, B, ncols, K, Y, ldy, bias);
    else panels_rows_k<IT, false>(rp, ci, va, pm, r0, r1, Xp, B, ncols, K, Y, ldy, bias);
}
