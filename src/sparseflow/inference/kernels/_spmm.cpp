// sparseflow._spmm: CSR sparse x dense products Y = X @ W^T (+ bias) for CPU inference.
//
// One source, three instruction sets chosen at run time (no -march=native): AVX-512 (F/BW/VL),
// AVX2+FMA, and a portable baseline that the compiler vectorises for SSE2. Each ISA variant is
// impl.h compiled inside a `#pragma GCC target` region; the caller picks the variant with
// best_isa() (cpuid + OS support via __builtin_cpu_supports) or asks for a lower one (tests).
// Threads: std::thread over row ranges balanced by nonzero count; the GIL is released.
// Arguments are raw addresses: the Python loader (sparseflow/kernels/__init__.py) checks dtypes,
// contiguity and shapes before calling, so nothing here validates memory.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <immintrin.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
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
#undef ROW_DOT
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
static inline __m256i idx8(const uint16_t* c) { return _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)c)); }
static inline __m256i idx8(const int32_t* c) { return _mm256_loadu_si256((const __m256i*)c); }
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
#undef ROW_DOT
}  // namespace avx2
#pragma GCC pop_options

// ---------------------------------------------------------------- AVX-512 F/BW/VL
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma")
namespace avx512 {
typedef __m512 V;
constexpr int VW = 16;
static inline V vzero() { return _mm512_setzero_ps(); }
static inline V vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, V a) { _mm512_storeu_ps(p, a); }
static inline V vset1(float a) { return _mm512_set1_ps(a); }
static inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
static inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
static inline __m512i idx16(const uint16_t* c) { return _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)c)); }
static inline __m512i idx16(const int32_t* c) { return _mm512_loadu_si512(c); }
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
#undef ROW_DOT
}  // namespace avx512
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
};

template <typename IT>
static void rows_job(const Call& c, int32_t r0, int32_t r1) {
    const IT* ci = (const IT*)c.ci;
    if (c.K == 0) {  // row-at-a-time: one pass over W per batch row
        for (int32_t b = 0; b < c.B; ++b) {
            const float* x = c.X + (int64_t)b * c.ncols;
            float* y = c.Y + (int64_t)b * c.nrows;
            if (c.isa == ISA_AVX512) avx512::spmv_rows<IT>(c.rp, ci, c.va, r0, r1, x, y, c.bias);
            else if (c.isa == ISA_AVX2) avx2::spmv_rows<IT>(c.rp, ci, c.va, r0, r1, x, y, c.bias);
            else base::spmv_rows<IT>(c.rp, ci, c.va, r0, r1, x, y, c.bias);
        }
        return;
    }
    if (c.isa == ISA_AVX512) avx512::panels_rows<IT>(c.rp, ci, c.va, r0, r1, c.Xp, c.B, c.ncols, c.K, c.Y, c.nrows, c.bias);
    else if (c.isa == ISA_AVX2) avx2::panels_rows<IT>(c.rp, ci, c.va, r0, r1, c.Xp, c.B, c.ncols, c.K, c.Y, c.nrows, c.bias);
    else base::panels_rows<IT>(c.rp, ci, c.va, r0, r1, c.Xp, c.B, c.ncols, c.K, c.Y, c.nrows, c.bias);
}

static void pack_job(const Call& c, int32_t k0, int32_t k1) {
    base::pack_panels(c.X, c.B, c.ncols, c.K * vector_width(c.isa), k0, k1, c.Xp);
}

// Run fn(lo, hi) over `nt` ranges of [0, n); bounds[t] give the split points.
template <typename F>
static void parallel(int nt, const std::vector<int32_t>& bounds, F fn) {
    if (nt == 1) { fn(bounds[0], bounds[1]); return; }
    std::vector<std::thread> ts;
    for (int t = 1; t < nt; ++t) ts.emplace_back(fn, bounds[t], bounds[t + 1]);
    fn(bounds[0], bounds[1]);
    for (auto& t : ts) t.join();
}

static void run(const Call& c, int threads) {
    int nt = threads < 1 ? 1 : threads;
    if (nt > c.nrows) nt = c.nrows > 0 ? c.nrows : 1;
    // a thread costs tens of microseconds to start: give each at least ~128k multiply-adds
    const int64_t work = (int64_t)c.rp[c.nrows] * (c.B > 0 ? c.B : 1);
    if (nt > 1 && work / nt < (1 << 17)) nt = (int)(work >> 17) > 1 ? (int)(work >> 17) : 1;
    // rows split so that every thread gets about the same number of nonzeros
    std::vector<int32_t> rows(nt + 1);
    const int64_t nnz = c.rp[c.nrows];
    rows[0] = 0;
    int32_t r = 0;
    for (int t = 1; t < nt; ++t) {
        const int64_t goal = nnz * t / nt;
        while (r < c.nrows && c.rp[r] < goal) ++r;
        rows[t] = r;
    }
    rows[nt] = c.nrows;
    if (c.K > 0) {
        std::vector<int32_t> cols(nt + 1);
        for (int t = 0; t <= nt; ++t) cols[t] = (int32_t)((int64_t)c.ncols * t / nt);
        parallel(nt, cols, [&](int32_t a, int32_t b) { pack_job(c, a, b); });
    }
    if (c.wide) parallel(nt, rows, [&](int32_t a, int32_t b) { rows_job<int32_t>(c, a, b); });
    else parallel(nt, rows, [&](int32_t a, int32_t b) { rows_job<uint16_t>(c, a, b); });
}

static PyObject* py_spmm(PyObject*, PyObject* args) {
    int isa, wide, nrows, ncols, B, threads, K;
    unsigned long long rp, ci, va, x, y, bias;
    if (!PyArg_ParseTuple(args, "iiKKKiiKiKKii", &isa, &wide, &rp, &ci, &va, &nrows, &ncols, &x, &B, &y, &bias,
                          &threads, &K))
        return nullptr;
    if (isa < ISA_BASE || isa > best_isa()) { PyErr_Format(PyExc_ValueError, "isa %d not supported here", isa); return nullptr; }
    if (K != 0 && K != 1 && K != 2 && K != 4 && K != 8) { PyErr_Format(PyExc_ValueError, "tile K=%d not in 0,1,2,4,8", K); return nullptr; }
    Call c{isa, wide, (const int32_t*)rp, (const void*)ci, (const float*)va, nrows, ncols, B, K,
           (const float*)x, (float*)y, bias ? (const float*)bias : nullptr, nullptr};
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

static PyObject* py_best_isa(PyObject*, PyObject*) { return PyLong_FromLong(best_isa()); }

static PyMethodDef methods[] = {
    {"spmm", py_spmm, METH_VARARGS, "spmm(isa, wide, rowptr, col, val, nrows, ncols, x, B, y, bias, threads, K)"},
    {"best_isa", py_best_isa, METH_NOARGS, "0 baseline, 1 AVX2+FMA, 2 AVX-512"},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_spmm", "CSR sparse x dense kernels", -1, methods};

PyMODINIT_FUNC PyInit__spmm(void) { return PyModule_Create(&module); }
