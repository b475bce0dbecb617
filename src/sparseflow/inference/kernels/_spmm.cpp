// sparseflow._spmm: CSR sparse x dense products Y = X @ W^T (+ bias) for CPU inference, and the
// sampled product G = (dY^T @ X) at W's stored positions (SDDMM, the weight gradient in training).
//
// One source, three instruction sets chosen at run time (no -march=native): AVX-512 (F/BW/VL),
// AVX2+FMA, and a portable baseline that the compiler vectorises for SSE2. Each ISA variant is
// impl.h and sddmm.h compiled inside a `#pragma GCC target` region; the caller picks the variant with
// best_isa() (cpuid + OS support via __builtin_cpu_supports) or asks for a lower one (tests).
// Threads: chunks of rows balanced by nonzero count, taken as threads come free, on the OpenMP runtime that
// PyTorch loaded (built with -fopenmp; the same soname resolves to torch's libgomp, so the workers are torch's
// own and warm) or on std::threads (built without OpenMP). The GIL is released.
// Arguments are raw addresses: the Python loader (sparseflow/kernels/__init__.py) checks dtypes,
// contiguity and shapes before calling, so nothing here validates memory.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <immintrin.h>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

enum Isa { ISA_BASE = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

// ---------------------------------------------------------------- baseline (SSE2 by default)
namespace base {
typedef float V;
constexpr int VW = 1;
static inline V vzero() { return 0.0f; }
static inline V vload(const float* p) { return *p; }
static inline void vstore(float* p, V a) { *p = a; }
static inline V vset1(float a) { return a; }
static inline V vfma(V a, V b, V c) { return c + a * b; }
static inline V vadd(V a, V b) { return a + b; }
static inline V vmul(V a, V b) { return a * b; }
template <typename IT>
static inline V vgather(const float* x, const IT* c) { return x[(uint32_t)c[0]]; }
constexpr int GR = 4;  // SDDMM: nonzeros per group (independent accumulators)
// the VW x VW tile transpose of the SDDMM packing, for VW = 1: a copy
static inline void transpose_tile(const float* s, int64_t, float* d, int64_t, int nk) {
    if (nk > 0) d[0] = s[0];
}
static inline void group_out(const V* acc, float* out, int n, bool add) {
    for (int g = 0; g < n; ++g) out[g] = add ? out[g] + acc[g] : acc[g];
}
template <typename IT>
static inline float row_dot_impl(const IT* c, const float* v, int32_t n, const float* x) {
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int32_t j = 0;
    for (; j + 4 <= n; j += 4) {
        a0 += v[j] * x[(uint32_t)c[j]];
        a1 += v[j + 1] * x[(uint32_t)c[j + 1]];
        a2 += v[j + 2] * x[(uint32_t)c[j + 2]];
        a3 += v[j + 3] * x[(uint32_t)c[j + 3]];
    }
    for (; j < n; ++j) a0 += v[j] * x[(uint32_t)c[j]];
    return (a0 + a1) + (a2 + a3);
}
#define ROW_DOT row_dot_impl<IT>
#include "impl.h"
#include "sddmm.h"
#undef ROW_DOT

// SELL-8 chunks (see sell_chunks in the AVX2 section): 8 rows as 8 scalar accumulators per parity
template <typename IT, bool LOADS>
static void sell_chunks(const int32_t* cp, const IT* ci, const float* va, const int32_t* rows, int32_t c0, int32_t c1,
                        const float* x, float* y, const float* bias) {
    for (int32_t ch = c0; ch < c1; ++ch) {
        const int32_t s = cp[ch], L = cp[ch + 1] - s;
        const IT* c = ci + (int64_t)s * 8;
        const float* v = va + (int64_t)s * 8;
        float a0[8] = {0, 0, 0, 0, 0, 0, 0, 0}, a1[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int32_t j = 0;
        for (; j + 2 <= L; j += 2)
            for (int k = 0; k < 8; ++k) {
                a0[k] += v[8 * j + k] * x[(uint32_t)c[8 * j + k]];
                a1[k] += v[8 * j + 8 + k] * x[(uint32_t)c[8 * j + 8 + k]];
            }
        if (j < L)
            for (int k = 0; k < 8; ++k) a0[k] += v[8 * j + k] * x[(uint32_t)c[8 * j + k]];
        for (int k = 0; k < 8; ++k) {
            const int32_t r = rows[(int64_t)ch * 8 + k];
            if (r >= 0) y[r] = bias ? (a0[k] + a1[k]) + bias[r] : a0[k] + a1[k];
        }
    }
}
}  // namespace base

// ---------------------------------------------------------------- AVX2 + FMA
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
typedef __m256 V;
constexpr int VW = 8;
static inline V vzero() { return _mm256_setzero_ps(); }
static inline V vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore(float* p, V a) { _mm256_storeu_ps(p, a); }
static inline V vset1(float a) { return _mm256_set1_ps(a); }
static inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
static inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
static inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
static inline __m256i idx8(const uint16_t* c) { return _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)c)); }
static inline __m256i idx8(const int32_t* c) { return _mm256_loadu_si256((const __m256i*)c); }
template <typename IT>
static inline V vgather(const float* x, const IT* c) { return _mm256_i32gather_ps(x, idx8(c), 4); }
// SDDMM groups: 8 accumulators reduced to one vector of their 8 sums by a shuffle tree (128-bit
// halves, then pairs, then single floats). The tree leaves the sums in the order 0,2,1,3,4,6,5,7;
// reading the inputs in that (self-inverse) order puts them back in place.
constexpr int GR = 8;
static inline void group_out(const V* acc, float* out, int n, bool add) {
    constexpr int P[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    __m256 b[4], d[2];
    for (int i = 0; i < 4; ++i)
        b[i] = _mm256_add_ps(_mm256_permute2f128_ps(acc[P[i]], acc[P[i + 4]], 0x20),
                             _mm256_permute2f128_ps(acc[P[i]], acc[P[i + 4]], 0x31));
    for (int i = 0; i < 2; ++i)
        d[i] = _mm256_add_ps(_mm256_shuffle_ps(b[i], b[i + 2], 0x44), _mm256_shuffle_ps(b[i], b[i + 2], 0xEE));
    const __m256 e = _mm256_add_ps(_mm256_shuffle_ps(d[0], d[1], 0x88), _mm256_shuffle_ps(d[0], d[1], 0xDD));
    if (n == 8) {
        _mm256_storeu_ps(out, add ? _mm256_add_ps(e, _mm256_loadu_ps(out)) : e);
        return;
    }
    alignas(32) float t[8];
    _mm256_store_ps(t, e);
    for (int g = 0; g < n; ++g) out[g] = add ? out[g] + t[g] : t[g];
}
// 8 rows of 8 floats (s + b*lds) transposed: column k goes to d + k*ldd, for k < nk.
static inline void transpose_tile(const float* s, int64_t lds, float* d, int64_t ldd, int nk) {
    __m256 r[8], t[8], u[8];
    for (int b = 0; b < 8; ++b) r[b] = _mm256_loadu_ps(s + b * lds);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {  // u[i + m]: column 4L+m of rows i..i+3 in 128-bit lane L
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int m = 0; m < 4; ++m) {
        if (m < nk) _mm256_storeu_ps(d + m * ldd, _mm256_permute2f128_ps(u[m], u[m + 4], 0x20));
        if (m + 4 < nk) _mm256_storeu_ps(d + (m + 4) * ldd, _mm256_permute2f128_ps(u[m], u[m + 4], 0x31));
    }
}
static inline float hsum(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
template <typename IT>
static inline float row_dot_impl(const IT* c, const float* v, int32_t n, const float* x) {
    __m256 a0 = vzero(), a1 = vzero();
    int32_t j = 0;
    for (; j + 16 <= n; j += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j), _mm256_i32gather_ps(x, idx8(c + j), 4), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j + 8), _mm256_i32gather_ps(x, idx8(c + j + 8), 4), a1);
    }
    for (; j + 8 <= n; j += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j), _mm256_i32gather_ps(x, idx8(c + j), 4), a0);
    float s = hsum(_mm256_add_ps(a0, a1));
    for (; j < n; ++j) s += v[j] * x[(uint32_t)c[j]];
    return s;
}
#define ROW_DOT row_dot_impl<IT>
#include "impl.h"
#include "sddmm.h"
#undef ROW_DOT

// SELL-8 (sliced ELLPACK, Kreutzer et al. 2014, "A unified sparse matrix data format for efficient general
// sparse matrix-vector multiplication on modern processors with wide SIMD units"): rows in chunks of 8, each
// chunk stored column-major and padded to its longest row (rows sorted by length within windows, so the padding
// is small), so that one vector holds one nonzero of each of 8 rows: no horizontal sums and no per-row tails or
// loop exits. Slot j of chunk ch is entries [8*(cp[ch]+j), +8); rows[8*ch + k] is the output row of lane k (-1:
// none). Padding entries are value 0 at a column of their own row. The 8 values of x are fetched by the gather
// instruction or, with LOADS, by 8 scalar loads inserted into the vector: AMD Zen 2/3 run vgatherdps at a
// fraction of the rate of scalar loads; Intel cores the other way round, so convert measures both.
// x[p] inserted into lane `imm >> 4` of a: vinsertps with a memory operand, one instruction where the
// intrinsics (_mm_insert_ps of _mm_load_ss) compile to a load and a shuffle: 5-8 % faster on Zen 3.
#if defined(__GNUC__)
#define INSERT_LANE(a, p, imm) \
    ({ __m128 r_; asm("vinsertps %3, %2, %1, %0" : "=x"(r_) : "x"(a), "m"(*(p)), "i"(imm)); r_; })
#else
#define INSERT_LANE(a, p, imm) _mm_insert_ps((a), _mm_load_ss(p), (imm))
#endif
static inline __m256 gather_loads(const float* x, const uint16_t* p) {
    uint32_t q[4];  // two indices per 32-bit load: fewer loads, and one shift or mask per index
    std::memcpy(q, p, 16);
    __m128 lo = _mm_load_ss(x + (q[0] & 0xffff));
    lo = INSERT_LANE(lo, x + (q[0] >> 16), 0x10);
    lo = INSERT_LANE(lo, x + (q[1] & 0xffff), 0x20);
    lo = INSERT_LANE(lo, x + (q[1] >> 16), 0x30);
    __m128 hi = _mm_load_ss(x + (q[2] & 0xffff));
    hi = INSERT_LANE(hi, x + (q[2] >> 16), 0x10);
    hi = INSERT_LANE(hi, x + (q[3] & 0xffff), 0x20);
    hi = INSERT_LANE(hi, x + (q[3] >> 16), 0x30);
    return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}
static inline __m256 gather_loads(const float* x, const int32_t* p) {
    __m128 lo = _mm_load_ss(x + (uint32_t)p[0]);
    lo = INSERT_LANE(lo, x + (uint32_t)p[1], 0x10);
    lo = INSERT_LANE(lo, x + (uint32_t)p[2], 0x20);
    lo = INSERT_LANE(lo, x + (uint32_t)p[3], 0x30);
    __m128 hi = _mm_load_ss(x + (uint32_t)p[4]);
    hi = INSERT_LANE(hi, x + (uint32_t)p[5], 0x10);
    hi = INSERT_LANE(hi, x + (uint32_t)p[6], 0x20);
    hi = INSERT_LANE(hi, x + (uint32_t)p[7], 0x30);
    return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}
#undef INSERT_LANE
template <typename IT, bool LOADS>
static inline __m256 gather8(const float* x, const IT* p) {
    if (LOADS) return gather_loads(x, p);
    return _mm256_i32gather_ps(x, idx8(p), 4);
}
template <typename IT, bool LOADS>
static void sell_chunks(const int32_t* cp, const IT* ci, const float* va, const int32_t* rows, int32_t c0, int32_t c1,
                        const float* x, float* y, const float* bias) {
    for (int32_t ch = c0; ch < c1; ++ch) {
        const int32_t s = cp[ch], L = cp[ch + 1] - s;
        const IT* c = ci + (int64_t)s * 8;
        const float* v = va + (int64_t)s * 8;
        // slot j always adds into accumulator j % 4 (the tail too), so a row sums in the same order whatever
        // the length of its chunk: padding only adds exact zeros
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int32_t j = 0;
        for (; j + 4 <= L; j += 4) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * j), gather8<IT, LOADS>(x, c + 8 * j), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * j + 8), gather8<IT, LOADS>(x, c + 8 * j + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * j + 16), gather8<IT, LOADS>(x, c + 8 * j + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * j + 24), gather8<IT, LOADS>(x, c + 8 * j + 24), a3);
        }
        if (j < L) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * j), gather8<IT, LOADS>(x, c + 8 * j), a0);
        if (j + 1 < L) a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * j + 8), gather8<IT, LOADS>(x, c + 8 * j + 8), a1);
        if (j + 2 < L) a2 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * j + 16), gather8<IT, LOADS>(x, c + 8 * j + 16), a2);
        alignas(32) float t[8];
        _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        for (int k = 0; k < 8; ++k) {
            const int32_t r = rows[(int64_t)ch * 8 + k];
            if (r >= 0) y[r] = bias ? t[k] + bias[r] : t[k];
        }
    }
}
}  // namespace avx2
#pragma GCC pop_options

// ---------------------------------------------------------------- AVX-512 F/BW/VL
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma")
// GCC 12 reports the undefined pass-through operand inside the _mm512 intrinsics as uninitialized
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace avx512 {
typedef __m512 V;
constexpr int VW = 16;
static inline V vzero() { return _mm512_setzero_ps(); }
static inline V vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, V a) { _mm512_storeu_ps(p, a); }
static inline V vset1(float a) { return _mm512_set1_ps(a); }
static inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
static inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
static inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
static inline __m512i idx16(const uint16_t* c) { return _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)c)); }
static inline __m512i idx16(const int32_t* c) { return _mm512_loadu_si512(c); }
template <typename IT>
static inline V vgather(const float* x, const IT* c) { return _mm512_i32gather_ps(idx16(c), x, 4); }
// SDDMM groups: 16 accumulators reduced to one vector of their 16 sums by a shuffle tree (256-bit
// halves, 128-bit lanes, pairs, single floats: 15 adds, 30 shuffles). The tree leaves sum m in
// position P[m]; P is self-inverse, so reading the inputs in order P puts every sum in place.
constexpr int GR = 16;
static inline void group_out(const V* acc, float* out, int n, bool add) {
    constexpr int P[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};
    __m512 b[8], c[4], d[2];
    for (int i = 0; i < 8; ++i)
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(acc[P[i]], acc[P[i + 8]], 0x44),
                             _mm512_shuffle_f32x4(acc[P[i]], acc[P[i + 8]], 0xEE));
    for (int i = 0; i < 4; ++i)
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[i], b[i + 4], 0x88), _mm512_shuffle_f32x4(b[i], b[i + 4], 0xDD));
    for (int i = 0; i < 2; ++i)
        d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[i], c[i + 2], 0x44), _mm512_shuffle_ps(c[i], c[i + 2], 0xEE));
    __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
    const __mmask16 m = n == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
    if (add) e = _mm512_add_ps(e, _mm512_maskz_loadu_ps(m, out));
    _mm512_mask_storeu_ps(out, m, e);
}
// 16 rows of 16 floats (s + b*lds) transposed: column k goes to d + k*ldd, for k < nk.
static inline void transpose_tile(const float* s, int64_t lds, float* d, int64_t ldd, int nk) {
    __m512 r[16], t[16], u[16], v[16];
    for (int b = 0; b < 16; ++b) r[b] = _mm512_loadu_ps(s + b * lds);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // u[i + m]: column 4L+m of rows i..i+3 in 128-bit lane L
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int h = 0; h < 16; h += 8)  // v[h + m]: columns m, m+8 (v[h+m+4]: m+4, m+12) of rows h..h+7
        for (int m = 0; m < 4; ++m) {
            v[h + m] = _mm512_shuffle_f32x4(u[h + m], u[h + m + 4], 0x88);
            v[h + m + 4] = _mm512_shuffle_f32x4(u[h + m], u[h + m + 4], 0xDD);
        }
    for (int m = 0; m < 8; ++m) {
        if (m < nk) _mm512_storeu_ps(d + m * ldd, _mm512_shuffle_f32x4(v[m], v[m + 8], 0x88));
        if (m + 8 < nk) _mm512_storeu_ps(d + (m + 8) * ldd, _mm512_shuffle_f32x4(v[m], v[m + 8], 0xDD));
    }
}
// masked loads do not touch memory outside the mask, so the row tail never reads past the arrays
static inline __m512i idx16m(const uint16_t* c, __mmask16 m) { return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, c)); }
static inline __m512i idx16m(const int32_t* c, __mmask16 m) { return _mm512_maskz_loadu_epi32(m, c); }
template <typename IT>
static inline float row_dot_impl(const IT* c, const float* v, int32_t n, const float* x) {
    __m512 a0 = vzero(), a1 = vzero();
    int32_t j = 0;
    for (; j + 32 <= n; j += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + j), _mm512_i32gather_ps(idx16(c + j), x, 4), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(v + j + 16), _mm512_i32gather_ps(idx16(c + j + 16), x, 4), a1);
    }
    for (; j + 16 <= n; j += 16)
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + j), _mm512_i32gather_ps(idx16(c + j), x, 4), a0);
    if (j < n) {
        const __mmask16 m = (__mmask16)((1u << (n - j)) - 1u);
        const __m512 g = _mm512_mask_i32gather_ps(vzero(), m, idx16m(c + j, m), x, 4);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, v + j), g, a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}
#define ROW_DOT row_dot_impl<IT>
#include "impl.h"
#include "sddmm.h"
#undef ROW_DOT
}  // namespace avx512
#pragma GCC diagnostic pop
#pragma GCC pop_options

// ---------------------------------------------------------------- dispatch and threads
static int best_isa() {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ISA_AVX2;
    return ISA_BASE;
}

static int vector_width(int isa) { return isa == ISA_AVX512 ? 16 : isa == ISA_AVX2 ? 8 : 1; }

struct Call {
    int isa, wide;  // wide: int32 column indices, else uint16
    const int32_t* rp; const void* ci; const float* va;
    int32_t nrows, ncols, B, K;
    const float* X; float* Y; const float* bias; float* Xp;
    const int32_t* pm;  // null, or the value of stored position j is va[pm[j]]
};

template <typename IT>
static void rows_job(const Call& c, int32_t r0, int32_t r1) {
    const IT* ci = (const IT*)c.ci;
    if (c.K == 0) {  // row-at-a-time: one pass over W per batch row
        for (int32_t b = 0; b < c.B; ++b) {
            const float* x = c.X + (int64_t)b * c.ncols;
            float* y = c.Y + (int64_t)b * c.nrows;
            if (c.isa == ISA_AVX512) avx512::spmv_rows<IT>(c.rp, ci, c.va, c.pm, r0, r1, x, y, c.bias);
            else if (c.isa == ISA_AVX2) avx2::spmv_rows<IT>(c.rp, ci, c.va, c.pm, r0, r1, x, y, c.bias);
            else base::spmv_rows<IT>(c.rp, ci, c.va, c.pm, r0, r1, x, y, c.bias);
        }
        return;
    }
    if (c.isa == ISA_AVX512) avx512::panels_rows<IT>(c.rp, ci, c.va, c.pm, r0, r1, c.Xp, c.B, c.ncols, c.K, c.Y, c.nrows, c.bias);
    else if (c.isa == ISA_AVX2) avx2::panels_rows<IT>(c.rp, ci, c.va, c.pm, r0, r1, c.Xp, c.B, c.ncols, c.K, c.Y, c.nrows, c.bias);
    else base::panels_rows<IT>(c.rp, ci, c.va, c.pm, r0, r1, c.Xp, c.B, c.ncols, c.K, c.Y, c.nrows, c.bias);
}

static void pack_job(const Call& c, int32_t k0, int32_t k1) {
    base::pack_panels(c.X, c.B, c.ncols, c.K * vector_width(c.isa), k0, k1, c.Xp);
}

// Run fn(lo, hi) over the chunks [bounds[i], bounds[i+1]) on `nt` threads (this one included), each taking the
// next chunk not yet taken. With OpenMP the team is PyTorch's pool: its workers spin for a while after each of
// torch's parallel ops, so they start at once (a fresh std::thread on a 2-core machine would wait for the core
// such a spinning worker holds: 2-thread steps of small layers ran no faster than 1-thread ones). Without
// OpenMP the helpers are detached std::threads and this thread waits only for the chunks they took: a helper
// that starts late finds the work done and ends. The shared state lives as long as its last holder.
struct Chunks {
    std::atomic<int> next{0}, done{0};
    int n = 0;
    std::vector<int32_t> bounds;
    std::function<void(int32_t, int32_t)> fn;
    void work() {
        for (int i = next.fetch_add(1, std::memory_order_relaxed); i < n; i = next.fetch_add(1, std::memory_order_relaxed)) {
            fn(bounds[i], bounds[i + 1]);
            done.fetch_add(1, std::memory_order_release);
        }
    }
};

template <typename F>
static void parallel(int nt, const std::vector<int32_t>& bounds, F fn) {
    const int n = (int)bounds.size() - 1;
    if (nt <= 1 || n <= 1) {
        if (n >= 1) fn(bounds[0], bounds[n]);
        return;
    }
    auto st = std::make_shared<Chunks>();
    st->n = n;
    st->bounds = bounds;
    st->fn = fn;
#ifdef _OPENMP
    // the OpenMP runtime PyTorch loaded (same soname, so one pool): its workers are warm after torch's own ops
#pragma omp parallel num_threads(nt)
    st->work();
#else
    for (int t = 1; t < nt; ++t) std::thread([st]() { st->work(); }).detach();
    st->work();
    while (st->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
#endif
}

static const int CHUNKS_PER_THREAD = 8;

// Chunks for nt threads: CHUNKS_PER_THREAD each, fewer where a chunk would hold under 2^min_log2 units of work.
static int chunk_count(int nt, int64_t work, int min_log2) {
    if (nt <= 1) return 1;
    int64_t n = (int64_t)nt * CHUNKS_PER_THREAD;
    const int64_t most = work >> min_log2;
    if (n > most) n = most;
    return n < nt ? nt : (int)n;
}

// Threads for nnz*B multiply-adds: at most `threads`, and at least 2^min_log2 of them per thread
// (a thread costs tens of microseconds to start).
static int thread_count(int threads, const int32_t* rp, int32_t nrows, int32_t B, int min_log2) {
    int nt = threads < 1 ? 1 : threads;
    if (nt > nrows) nt = nrows > 0 ? nrows : 1;
    const int64_t work = (int64_t)rp[nrows] * (B > 0 ? B : 1);
    if (nt > 1 && work / nt < ((int64_t)1 << min_log2)) nt = (work >> min_log2) > 1 ? (int)(work >> min_log2) : 1;
    return nt;
}

// Rows split into nt ranges so that every thread gets about the same number of nonzeros.
static std::vector<int32_t> split_rows(const int32_t* rp, int32_t nrows, int nt) {
    std::vector<int32_t> rows(nt + 1);
    const int64_t nnz = rp[nrows];
    rows[0] = 0;
    int32_t r = 0;
    for (int t = 1; t < nt; ++t) {
        const int64_t goal = nnz * t / nt;
        while (r < nrows && rp[r] < goal) ++r;
        rows[t] = r;
    }
    rows[nt] = nrows;
    return rows;
}

static void run(const Call& c, int threads) {
    const int nt = thread_count(threads, c.rp, c.nrows, c.B, 17);  // ~128k multiply-adds per thread
    const int nc = chunk_count(nt, (int64_t)c.rp[c.nrows] * c.B, 15);
    const std::vector<int32_t> rows = split_rows(c.rp, c.nrows, nc < c.nrows ? nc : c.nrows);
    if (c.K > 0) {
        const int np = nc < c.ncols ? nc : c.ncols;
        std::vector<int32_t> cols(np + 1);
        for (int t = 0; t <= np; ++t) cols[t] = (int32_t)((int64_t)c.ncols * t / np);
        parallel(nt, cols, [&](int32_t a, int32_t b) { pack_job(c, a, b); });
    }
    if (c.wide) parallel(nt, rows, [&](int32_t a, int32_t b) { rows_job<int32_t>(c, a, b); });
    else parallel(nt, rows, [&](int32_t a, int32_t b) { rows_job<uint16_t>(c, a, b); });
}

static PyObject* py_spmm(PyObject*, PyObject* args) {
    int isa, wide, nrows, ncols, B, threads, K;
    unsigned long long rp, ci, va, x, y, bias, pm = 0;
    if (!PyArg_ParseTuple(args, "iiKKKiiKiKKii|K", &isa, &wide, &rp, &ci, &va, &nrows, &ncols, &x, &B, &y, &bias,
                          &threads, &K, &pm))
        return nullptr;
    if (isa < ISA_BASE || isa > best_isa()) { PyErr_Format(PyExc_ValueError, "isa %d not supported here", isa); return nullptr; }
    if (K != 0 && K != 1 && K != 2 && K != 4 && K != 8) { PyErr_Format(PyExc_ValueError, "tile K=%d not in 0,1,2,4,8", K); return nullptr; }
    Call c{isa, wide, (const int32_t*)rp, (const void*)ci, (const float*)va, nrows, ncols, B, K,
           (const float*)x, (float*)y, bias ? (const float*)bias : nullptr, nullptr, pm ? (const int32_t*)pm : nullptr};
    if (B == 0 || nrows == 0) Py_RETURN_NONE;
    if (K > 0) {
        const int64_t tw = (int64_t)K * vector_width(isa), np = (B + tw - 1) / tw;
        const size_t bytes = (size_t)((np * ncols * tw * 4 + 63) / 64 * 64) + 64;
        c.Xp = (float*)std::aligned_alloc(64, bytes);
        if (!c.Xp) return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    run(c, threads);
    Py_END_ALLOW_THREADS
    std::free(c.Xp);
    Py_RETURN_NONE;
}

// ---------------------------------------------------------------- SELL-8 (batch 1)
struct SellCall {
    int isa, wide, loads;
    const int32_t* cp; const void* ci; const float* va; const int32_t* rows;
    int32_t nch, nrows, ncols, B;
    const float* X; float* Y; const float* bias;
};

template <typename IT>
static void sell_job(const SellCall& c, int32_t c0, int32_t c1) {
    const IT* ci = (const IT*)c.ci;
    for (int32_t b = 0; b < c.B; ++b) {
        const float* x = c.X + (int64_t)b * c.ncols;
        float* y = c.Y + (int64_t)b * c.nrows;
        if (c.isa >= ISA_AVX2) {  // 8 lanes: AVX2 code, which AVX-512 CPUs run as well
            if (c.loads) avx2::sell_chunks<IT, true>(c.cp, ci, c.va, c.rows, c0, c1, x, y, c.bias);
            else avx2::sell_chunks<IT, false>(c.cp, ci, c.va, c.rows, c0, c1, x, y, c.bias);
        } else {
            base::sell_chunks<IT, true>(c.cp, ci, c.va, c.rows, c0, c1, x, y, c.bias);
        }
    }
}

static PyObject* py_spmv_sell(PyObject*, PyObject* args) {
    int isa, wide, loads, nch, nrows, ncols, B, threads;
    unsigned long long cp, ci, va, rows, x, y, bias;
    if (!PyArg_ParseTuple(args, "iiiKKKKiiiKiKKi", &isa, &wide, &loads, &cp, &ci, &va, &rows, &nch, &nrows, &ncols, &x,
                          &B, &y, &bias, &threads))
        return nullptr;
    if (isa < ISA_BASE || isa > best_isa()) { PyErr_Format(PyExc_ValueError, "isa %d not supported here", isa); return nullptr; }
    SellCall c{isa, wide, loads, (const int32_t*)cp, (const void*)ci, (const float*)va, (const int32_t*)rows,
               nch, nrows, ncols, B, (const float*)x, (float*)y, bias ? (const float*)bias : nullptr};
    if (B == 0 || nch == 0) Py_RETURN_NONE;
    Py_BEGIN_ALLOW_THREADS
    const int nt = thread_count(threads, c.cp, c.nch, (int32_t)8 * c.B, 17);  // slots of 8 entries
    const int nc = chunk_count(nt, (int64_t)c.cp[c.nch] * 8 * c.B, 15);
    const std::vector<int32_t> bounds = split_rows(c.cp, c.nch, nc < c.nch ? nc : c.nch);
    if (c.wide) parallel(nt, bounds, [&](int32_t a, int32_t b) { sell_job<int32_t>(c, a, b); });
    else parallel(nt, bounds, [&](int32_t a, int32_t b) { sell_job<uint16_t>(c, a, b); });
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

// ---------------------------------------------------------------- SDDMM
struct SddCall {
    int isa, wide;
    const int32_t* rp; const void* ci;
    int32_t nrows, ncols, B, K;  // K = 0: unpacked (gathers), else panels of K vectors
    const float* dY; const float* X; float* G;
    float* Dp; float* Xp;        // packed panels of dY and X (K > 0)
};

template <typename IT>
static void sddmm_job(const SddCall& c, int32_t r0, int32_t r1) {
    const IT* ci = (const IT*)c.ci;
    if (c.K == 0) {
        if (c.isa == ISA_AVX512) avx512::sddmm_direct_rows<IT>(c.rp, ci, r0, r1, c.dY, c.X, c.B, c.nrows, c.ncols, c.G);
        else if (c.isa == ISA_AVX2) avx2::sddmm_direct_rows<IT>(c.rp, ci, r0, r1, c.dY, c.X, c.B, c.nrows, c.ncols, c.G);
        else base::sddmm_direct_rows<IT>(c.rp, ci, r0, r1, c.dY, c.X, c.B, c.nrows, c.ncols, c.G);
        return;
    }
    if (c.isa == ISA_AVX512) avx512::sddmm_panels_rows<IT>(c.rp, ci, r0, r1, c.Dp, c.Xp, c.B, c.nrows, c.ncols, c.K, c.G);
    else if (c.isa == ISA_AVX2) avx2::sddmm_panels_rows<IT>(c.rp, ci, r0, r1, c.Dp, c.Xp, c.B, c.nrows, c.ncols, c.K, c.G);
    else base::sddmm_panels_rows<IT>(c.rp, ci, r0, r1, c.Dp, c.Xp, c.B, c.nrows, c.ncols, c.K, c.G);
}

static void sddmm_pack(const SddCall& c, const float* X, int32_t ncols, int32_t tw, int32_t k0, int32_t k1, float* P) {
    if (c.isa == ISA_AVX512) avx512::pack_panels_t(X, c.B, ncols, tw, k0, k1, P);
    else if (c.isa == ISA_AVX2) avx2::pack_panels_t(X, c.B, ncols, tw, k0, k1, P);
    else base::pack_panels(X, c.B, ncols, tw, k0, k1, P);
}

// Two parallel regions: the panels of dY and X (every row reads all of them), then the rows; both in chunks
// taken as threads come free (see parallel()). A second thread pays off from ~4M multiply-adds (0.3 ms) on:
// 2M per thread at least.
static void run_sddmm(const SddCall& c, int threads) {
    const int nt = thread_count(threads, c.rp, c.nrows, c.B, 21);
    const int nc = chunk_count(nt, (int64_t)c.rp[c.nrows] * c.B, 18);
    const std::vector<int32_t> rows = split_rows(c.rp, c.nrows, nc < c.nrows ? nc : c.nrows);
    if (c.K > 0) {
        const int32_t tw = c.K * vector_width(c.isa);
        // chunks over the rows of dY (ids 0 .. nrows) and then the columns of X (ids nrows .. nrows + ncols)
        const int64_t total = (int64_t)c.nrows + c.ncols;
        const int np = (int)(nc < total ? nc : total);
        std::vector<int32_t> ids(np + 1);
        for (int t = 0; t <= np; ++t) ids[t] = (int32_t)(total * t / np);
        parallel(nt, ids, [&](int32_t a, int32_t b) {
            if (a < c.nrows) sddmm_pack(c, c.dY, c.nrows, tw, a, b < c.nrows ? b : c.nrows, c.Dp);
            if (b > c.nrows) sddmm_pack(c, c.X, c.ncols, tw, (a > c.nrows ? a : c.nrows) - c.nrows, b - c.nrows, c.Xp);
        });
    }
    if (c.wide) parallel(nt, rows, [&](int32_t a, int32_t b) { sddmm_job<int32_t>(c, a, b); });
    else parallel(nt, rows, [&](int32_t a, int32_t b) { sddmm_job<uint16_t>(c, a, b); });
}

static PyObject* py_sddmm(PyObject*, PyObject* args) {
    int isa, wide, nrows, ncols, B, threads, K;
    unsigned long long rp, ci, dy, x, g;
    if (!PyArg_ParseTuple(args, "iiKKiiKKiKii", &isa, &wide, &rp, &ci, &nrows, &ncols, &dy, &x, &B, &g, &threads, &K))
        return nullptr;
    if (isa < ISA_BASE || isa > best_isa()) { PyErr_Format(PyExc_ValueError, "isa %d not supported here", isa); return nullptr; }
    if (K != 0 && K != 1 && K != 2 && K != 4 && K != 8) { PyErr_Format(PyExc_ValueError, "tile K=%d not in 0,1,2,4,8", K); return nullptr; }
    SddCall c{isa, wide, (const int32_t*)rp, (const void*)ci, nrows, ncols, B, K,
              (const float*)dy, (const float*)x, (float*)g, nullptr, nullptr};
    if (nrows == 0 || c.rp[nrows] == 0) Py_RETURN_NONE;
    if (B == 0) {  // an empty sum
        std::memset(c.G, 0, (size_t)c.rp[nrows] * sizeof(float));
        Py_RETURN_NONE;
    }
    float* buf = nullptr;
    if (K > 0) {
        const int64_t tw = (int64_t)K * vector_width(isa), np = (B + tw - 1) / tw;
        const int64_t nd = (np * nrows * tw + 15) / 16 * 16;  // Xp starts 64-byte aligned
        const size_t bytes = (size_t)((nd + np * ncols * tw) * 4 + 63) / 64 * 64 + 64;
        buf = (float*)std::aligned_alloc(64, bytes);
        if (!buf) return PyErr_NoMemory();
        c.Dp = buf;
        c.Xp = buf + nd;
    }
    Py_BEGIN_ALLOW_THREADS
    run_sddmm(c, threads);
    Py_END_ALLOW_THREADS
    std::free(buf);
    Py_RETURN_NONE;
}

// A CSR structure that the kernels can read safely: rowptr starts at 0, never decreases and ends at
// nnz; every column index is below ncols. Returns None or a message naming the first fault.
template <typename IT>
static int64_t first_bad_col(const IT* ci, int64_t nnz, int64_t ncols) {
    const int isa = best_isa();
    const uint32_t hi = isa == ISA_AVX512 ? avx512::max_col(ci, nnz) : isa == ISA_AVX2 ? avx2::max_col(ci, nnz)
                                                                                      : base::max_col(ci, nnz);
    if ((int64_t)hi < ncols) return -1;
    for (int64_t j = 0; j < nnz; ++j)
        if ((int64_t)(uint32_t)ci[j] >= ncols) return j;
    return -1;
}

static PyObject* py_csr_check(PyObject*, PyObject* args) {
    int wide, nrows, ncols;
    long long nnz;
    unsigned long long rpa, cia;
    if (!PyArg_ParseTuple(args, "iKKiiL", &wide, &rpa, &cia, &nrows, &ncols, &nnz)) return nullptr;
    const int32_t* rp = (const int32_t*)rpa;
    if (rp[0] != 0) return PyUnicode_FromFormat("rowptr[0] is %d, not 0", (int)rp[0]);
    for (int32_t r = 0; r < nrows; ++r)
        if (rp[r + 1] < rp[r])
            return PyUnicode_FromFormat("rowptr decreases at row %d (%d -> %d)", (int)r, (int)rp[r], (int)rp[r + 1]);
    if ((long long)rp[nrows] != nnz)
        return PyUnicode_FromFormat("rowptr[-1] is %d but there are %lld column indices", (int)rp[nrows], nnz);
    int64_t bad;
    Py_BEGIN_ALLOW_THREADS
    bad = wide ? first_bad_col((const int32_t*)cia, nnz, ncols) : first_bad_col((const uint16_t*)cia, nnz, ncols);
    Py_END_ALLOW_THREADS
    if (bad >= 0) {
        const long long v = wide ? ((const int32_t*)cia)[bad] : ((const uint16_t*)cia)[bad];
        return PyUnicode_FromFormat("column index %lld at position %lld is outside [0, %d)", v, (long long)bad, ncols);
    }
    Py_RETURN_NONE;
}

static PyObject* py_best_isa(PyObject*, PyObject*) { return PyLong_FromLong(best_isa()); }

static PyMethodDef methods[] = {
    {"spmm", py_spmm, METH_VARARGS, "spmm(isa, wide, rowptr, col, val, nrows, ncols, x, B, y, bias, threads, K[, perm])"},
    {"spmv_sell", py_spmv_sell, METH_VARARGS,
     "spmv_sell(isa, wide, loads, chunkptr, col, val, rows, nchunks, nrows, ncols, x, B, y, bias, threads)"},
    {"sddmm", py_sddmm, METH_VARARGS, "sddmm(isa, wide, rowptr, col, nrows, ncols, dy, x, B, out, threads, K)"},
    {"csr_check", py_csr_check, METH_VARARGS, "csr_check(wide, rowptr, col, nrows, ncols, nnz) -> None or message"},
    {"best_isa", py_best_isa, METH_NOARGS, "0 baseline, 1 AVX2+FMA, 2 AVX-512"},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_spmm", "CSR sparse x dense kernels and SDDMM", -1, methods};

PyMODINIT_FUNC PyInit__spmm(void) { return PyModule_Create(&module); }
