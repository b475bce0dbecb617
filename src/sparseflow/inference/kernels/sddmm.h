// Sampled dense x dense product (SDDMM) for one instruction set: the weight gradient of a CSR
// Linear layer at its stored positions,
//     G[k] = sum_b dY[b][row(k)] * X[b][col(k)]     for every nonzero k (CSR order),
// with dY [B, nrows] and X [B, ncols] row-major (autograd's layout). Included once per ISA by
// _spmm.cpp after impl.h, inside the ISA's namespace, with V/VW/vzero/vload/vstore/vset1/vfma/vmul,
// the gather vgather(x, c) (VW floats x[c[0..VW)]), the group size GR, group_out(acc, out, n, add)
// (out[g] (+)= sum of the lanes of acc[g] for g < n) and transpose_tile defined before inclusion.
//
// Batch >= 3 (see sddmm_tile_for in __init__.py): dY and X are packed into panels of TW = K*VW
// batch columns, Dp[p][nrows][TW] and Xp[p][ncols][TW], zero padded (the layout of pack_panels in
// impl.h), so that every nonzero is a dot product of two contiguous TW-float rows. The row's slice
// of dY stays in K registers while its nonzeros go by in groups of GR: GR independent FMA chains of
// K steps, then one transposing reduction turns the GR accumulators into GR consecutive outputs
// (one vector store). Panels after the first add into the output, so one panel of X (ncols*TW
// floats, 1 MiB for 4096 x 64) is the working set of a pass over the rows; the loads of X rows
// from L2 bound the loop. Column blocking (X rows from L1) is left out: with X resident in L1 the
// loop is only ~25 % faster, and short row segments per column block would leave partial groups.
// Batch 1-2: no packing; VW nonzeros at a time, sum over b of dY[b][r] * gather of X[b].

// The panels of pack_panels (impl.h), P[p][k][TW] = X[p*TW + b][k] zero padded, for columns
// [k0, k1), built a VW x VW tile at a time with transpose_tile: each tile is VW rows of VW
// contiguous floats in and VW vector stores out. Edge tiles go through a zeroed copy.
[[maybe_unused]] static void pack_panels_t(const float* X, int32_t B, int32_t ncols, int32_t TW, int32_t k0, int32_t k1,
                                           float* Xp) {
    const int32_t np = (B + TW - 1) / TW;
    alignas(64) float tmp[VW * VW];
    for (int32_t p = 0; p < np; ++p) {
        float* P = Xp + (int64_t)p * ncols * TW;
        const int32_t b0 = p * TW, bw = B - b0 < TW ? B - b0 : TW;
        for (int32_t bb = 0; bb < TW; bb += VW) {  // VW rows of X read as VW sequential streams
            const int32_t nb = bw - bb < VW ? bw - bb : VW;
            for (int32_t k = k0; k < k1; k += VW) {
                const int32_t nk = k1 - k < VW ? k1 - k : VW;
                float* dst = P + (int64_t)k * TW + bb;
                const float* src = X + (int64_t)(b0 + bb) * ncols + k;
                if (nb <= 0) {
                    for (int32_t i = 0; i < nk; ++i) vstore(dst + (int64_t)i * TW, vzero());
                } else if (nb == VW && nk == VW) {
                    transpose_tile(src, ncols, dst, TW, VW);
                } else {
                    for (int i = 0; i < VW * VW; ++i) tmp[i] = 0.0f;
                    for (int32_t b = 0; b < nb; ++b)
                        for (int32_t i = 0; i < nk; ++i) tmp[b * VW + i] = src[(int64_t)b * ncols + i];
                    transpose_tile(tmp, VW, dst, TW, nk);
                }
            }
        }
    }
}

// Rows [r0, r1) against one pair of panels; `add`: accumulate into out (panels after the first).
template <typename IT, int K>
static void sddmm_panel_rows(const int32_t* rp, const IT* ci, int32_t r0, int32_t r1, const float* Dp,
                             const float* Xp, float* out, bool add) {
    constexpr int TW = K * VW;
    for (int32_t r = r0; r < r1; ++r) {
        const IT* c = ci + rp[r];
        const IT* const ce = ci + rp[r + 1];
        float* o = out + rp[r];
        if (c == ce) continue;
        V d[K];
        const float* dr = Dp + (int64_t)r * TW;
        for (int k = 0; k < K; ++k) d[k] = vload(dr + k * VW);
        for (; ce - c >= GR; c += GR, o += GR) {
            V acc[GR];
            for (int g = 0; g < GR; ++g) {
                const float* p = Xp + (size_t)(uint32_t)c[g] * TW;
                V a = vmul(d[0], vload(p));
                for (int k = 1; k < K; ++k) a = vfma(d[k], vload(p + k * VW), a);
                acc[g] = a;
            }
            group_out(acc, o, GR, add);
        }
        if (c < ce) {  // row tail: fewer than GR nonzeros, the unused accumulators stay zero
            const int n = (int)(ce - c);
            V acc[GR];
            for (int g = 0; g < GR; ++g) {
                acc[g] = vzero();
                if (g < n) {
                    const float* p = Xp + (size_t)(uint32_t)c[g] * TW;
                    for (int k = 0; k < K; ++k) acc[g] = vfma(d[k], vload(p + k * VW), acc[g]);
                }
            }
            group_out(acc, o, n, add);
        }
    }
}

template <typename IT>
static void sddmm_panels_rows(const int32_t* rp, const IT* ci, int32_t r0, int32_t r1, const float* Dp,
                              const float* Xp, int32_t B, int32_t nrows, int32_t ncols, int32_t K, float* out) {
    const int32_t TW = K * VW;
    const int32_t np = (B + TW - 1) / TW;
    for (int32_t p = 0; p < np; ++p) {
        const float* D = Dp + (int64_t)p * nrows * TW;
        const float* P = Xp + (int64_t)p * ncols * TW;
        if (K == 1) sddmm_panel_rows<IT, 1>(rp, ci, r0, r1, D, P, out, p > 0);
        else if (K == 2) sddmm_panel_rows<IT, 2>(rp, ci, r0, r1, D, P, out, p > 0);
        else if (K == 4) sddmm_panel_rows<IT, 4>(rp, ci, r0, r1, D, P, out, p > 0);
        else sddmm_panel_rows<IT, 8>(rp, ci, r0, r1, D, P, out, p > 0);
    }
}

// Unpacked rows: VW nonzeros at a time, B gathers each; for batch 1 (or a few rows of batch).
template <typename IT>
static void sddmm_direct_rows(const int32_t* rp, const IT* ci, int32_t r0, int32_t r1, const float* dY,
                              const float* X, int32_t B, int32_t nrows, int32_t ncols, float* out) {
    for (int32_t r = r0; r < r1; ++r) {
        int32_t j = rp[r];
        const int32_t e = rp[r + 1];
        for (; j + VW <= e; j += VW) {
            V acc = vzero();
            for (int32_t b = 0; b < B; ++b)
                acc = vfma(vset1(dY[(int64_t)b * nrows + r]), vgather(X + (int64_t)b * ncols, ci + j), acc);
            vstore(out + j, acc);
        }
        for (; j < e; ++j) {
            const int64_t c = (uint32_t)ci[j];
            float s = 0.0f;
            for (int32_t b = 0; b < B; ++b) s += dY[(int64_t)b * nrows + r] * X[(int64_t)b * ncols + c];
            out[j] = s;
        }
    }
}

// Largest column index, read as unsigned (a negative int32 index counts as huge): the bounds check
// of a structure before the kernels read X through it. Vectorised per ISA (unsigned max).
template <typename IT>
static uint32_t max_col(const IT* ci, int64_t nnz) {
    typedef typename std::make_unsigned<IT>::type U;
    const U* u = (const U*)ci;
    U hi = 0;
    for (int64_t j = 0; j < nnz; ++j) hi = u[j] > hi ? u[j] : hi;
    return hi;
}
