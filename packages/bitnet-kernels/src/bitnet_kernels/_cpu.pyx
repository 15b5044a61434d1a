# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""CPU kernels: `cdef noexcept nogil` functions with OpenMP threads over rows (or tokens / heads).

The SIMD inner loops live in bk_simd.h (per-function target attributes, runtime dispatch on `_isa`).
The def functions at the bottom are raw entry points for bitnet_kernels.cpu, which checks every argument
first; they take flat C-contiguous buffers and trust their sizes.
"""
from libc.stdint cimport int8_t, uint8_t, int16_t, uint16_t, int32_t, int64_t, uint64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcpy
from libc.math cimport powf, sqrtf
from cython.parallel cimport prange, parallel

import numpy as np

cdef extern from "bk_simd.h" nogil:
    int BK_PORTABLE, BK_AVX2, BK_VNNI
    int BK_R512, BK_TW512, BK_R256, BK_TW256
    void bk_detect(int* f)
    uint64_t bk_stream_sum(int isa, const uint8_t* p, int64_t n)
    void bk_quant_row(int isa, const float* x, int64_t K, int8_t* q, float* s, int32_t* qsum)
    void bk_q8k_row(const float* x, int64_t K, int8_t* q, float* d, int16_t* bsums)
    void bk_i2s_gemv_rows_512(const uint8_t* w, int64_t K, const int8_t* q, int64_t n0, int64_t n1, int32_t* dot)
    void bk_i2s_gemv_rows_256(const uint8_t* w, int64_t K, const int8_t* q, int64_t n0, int64_t n1, int32_t* dot)
    void bk_i2s_gemv_rows_c(const uint8_t* w, int64_t K, const int8_t* q, int64_t n0, int64_t n1, int32_t* dot,
                            uint8_t* codes)
    void bk_i2s_perm_act(const int8_t* q, int64_t K, int8_t* qp)
    void bk_i2s_emit_512(const int32_t* d, int64_t n, int32_t qsum, float s, float ws, float* y)
    void bk_i2s_gemv2_512(const uint8_t* wa, const uint8_t* wb, int64_t K, const int8_t* qp, int64_t n, int32_t* da,
                          int32_t* db)
    void bk_i2s_gemv2_256(const uint8_t* wa, const uint8_t* wb, int64_t K, const int8_t* q, int64_t n, int32_t* da,
                          int32_t* db)
    void bk_tq2_rows2_512(const uint8_t* wa, const uint8_t* wb, int64_t K, const int8_t* q, const float* da,
                          const int32_t* bq, int64_t n, float* ya, float* yb)
    void bk_f16_gemv2_512(const uint16_t* wa, const uint16_t* wb, int64_t K, const float* x, int64_t n, float* ya,
                          float* yb)
    void bk_f16_gemv2_256(const uint16_t* wa, const uint16_t* wb, int64_t K, const float* x, int64_t n, float* ya,
                          float* yb)
    void bk_q8_gemv2_512(const int8_t* w, const float* wscale, int64_t K, const uint8_t* xu, float s, int64_t na0,
                         int64_t nb0, int64_t n, float* y)
    void bk_q8_gemv2_256(const int8_t* w, const float* wscale, int64_t K, const int8_t* xq, float s, int64_t na0,
                         int64_t nb0, int64_t n, float* y)
    uint64_t bk_stream_sum2_512(const uint8_t* p, const uint8_t* q, int64_t n)
    void bk_f2h_row(int isa, const float* x, uint16_t* out, int64_t n)
    void bk_round_f16_row(int isa, float* x, int64_t n)
    void bk_prep_act_tiles(const int8_t* q, int64_t T, int64_t K, int64_t tw, int64_t vw, int32_t* at)
    void bk_i2s_gemm_block_512(const uint8_t* w, int64_t N, int64_t K, int64_t n0, int64_t T, const int32_t* at,
                               const int32_t* qsum, const float* s, float ws, int32_t* yi, float* yf, uint8_t* wu)
    void bk_i2s_gemm_block_256(const uint8_t* w, int64_t N, int64_t K, int64_t n0, int64_t T, const int32_t* at,
                               const int32_t* qsum, const float* s, float ws, int32_t* yi, float* yf, uint8_t* wu)
    void bk_i2s_gemm_block_c(const uint8_t* w, int64_t N, int64_t K, int64_t n0, int64_t n1, int64_t T,
                             const int8_t* q, const int32_t* qsum, const float* s, float ws, int32_t* yi,
                             float* yf, uint8_t* codes)
    void bk_tq2_unpack_row(const uint8_t* w, int64_t K, uint8_t* codes)
    void bk_tq2_unpack_row_256(const uint8_t* w, int64_t K, uint8_t* codes)
    void bk_tq1_unpack_row(const uint8_t* w, int64_t K, uint8_t* codes)
    void bk_tq1_unpack_row_256(const uint8_t* w, int64_t K, uint8_t* codes)
    float bk_tq_block_scale(const uint8_t* w, int qtype, int64_t b)
    void bk_tq_scales_256(const uint8_t* w, int qtype, int64_t nb, float* dw)
    void bk_tq_lanes_row_c(const uint8_t* codes, const float* dw, int64_t K, const int8_t* q, const float* da,
                           const int32_t* lb, float* y)
    void bk_tq_lanes_row_256(const uint8_t* codes, const float* dw, int64_t K, const int8_t* q, const float* da,
                             const int32_t* lb, float* y)
    void bk_tq_lanes_row_512(const uint8_t* codes, const float* dw, int64_t K, const int8_t* q, const float* da,
                             const int32_t* lb, float* y)
    void bk_tq_gemm_block_512(const uint8_t* w, int qtype, int64_t N, int64_t K, int64_t n0, int64_t T, int64_t Tpad,
                              const int32_t* at, const float* daT, const int32_t* bqT, float* y, uint8_t* wu)
    void bk_tq2_rows_512(const uint8_t* w, int64_t K, const int8_t* q, const float* da, const int32_t* bq,
                         int64_t n0, int64_t n1, float* y)
    void bk_tq_row_c(const uint8_t* codes, const float* dw, int64_t K, const int8_t* q, const float* da,
                     const int32_t* bq, float* y)
    void bk_tq_row_256(const uint8_t* codes, const float* dw, int64_t K, const int8_t* q, const float* da,
                       const int32_t* bq, float* y)
    void bk_tq_row_512(const uint8_t* codes, const float* dw, int64_t K, const int8_t* q, const float* da,
                       const int32_t* bq, float* y)
    void bk_f16_rows_512(const uint16_t* w, int64_t K, const float* x, int64_t T, int64_t N, int64_t n0,
                         int64_t n1, float* y)
    void bk_f16_rows_256(const uint16_t* w, int64_t K, const float* x, int64_t T, int64_t N, int64_t n0,
                         int64_t n1, float* y)
    void bk_f16_rows_c(const uint16_t* w, int64_t K, const float* x, int64_t T, int64_t N, int64_t n0,
                       int64_t n1, float* y, float* wf)
    void bk_q8_prepare_rows(int isa, const uint16_t* w, int64_t K, int64_t n0, int64_t n1, int8_t* q,
                            float* scale, float* wf)
    void bk_q8_rows_512(const int8_t* w, const float* wscale, int64_t K, const uint8_t* xu, const float* s,
                        int64_t T, int64_t N, int64_t n0, int64_t n1, float* y)
    void bk_q8_rows_256(const int8_t* w, const float* wscale, int64_t K, const int8_t* xq, const float* s,
                        int64_t T, int64_t N, int64_t n0, int64_t n1, float* y)
    void bk_q8_rows_c(const int8_t* w, const float* wscale, int64_t K, const int8_t* xq, const float* s,
                      int64_t T, int64_t N, int64_t n0, int64_t n1, float* y)
    void bk_rmsnorm_row_c(const float* x, const float* w, int64_t K, float eps, float* y)
    void bk_rmsnorm_row_256(const float* x, const float* w, int64_t K, float eps, float* y)
    void bk_rmsnorm_row_512(const float* x, const float* w, int64_t K, float eps, float* y)
    void bk_rope_cache(float pos, float theta_scale, int64_t half, float* c, float* s)
    void bk_rope_apply_c(float* x, int64_t H, int64_t D, int64_t half, const float* c, const float* s)
    void bk_rope_apply_256(float* x, int64_t H, int64_t D, int64_t half, const float* c, const float* s)
    void bk_rope_apply_512(float* x, int64_t H, int64_t D, int64_t half, const float* c, const float* s)
    void bk_relu2_mul_c(const float* g, const float* u, float* y, int64_t n)
    void bk_relu2_mul_256(const float* g, const float* u, float* y, int64_t n)
    void bk_relu2_mul_512(const float* g, const float* u, float* y, int64_t n)
    void bk_silu_mul_c(const float* g, const float* u, float* y, int64_t n)
    void bk_silu_mul_256(const float* g, const float* u, float* y, int64_t n)
    void bk_silu_mul_512(const float* g, const float* u, float* y, int64_t n)
    void bk_softmax_row_c(float* x, int64_t n)
    void bk_softmax_row_256(float* x, int64_t n)
    void bk_softmax_row_512(float* x, int64_t n)
    void bk_attn_one_c(const float* q, const uint16_t* k, const uint16_t* v, int64_t D, int64_t n, float scale,
                       float* sc, float* out)
    void bk_attn_one_256(const float* q, const uint16_t* k, const uint16_t* v, int64_t D, int64_t n, float scale,
                         float* sc, float* out)
    void bk_attn_one_512(const float* q, const uint16_t* k, const uint16_t* v, int64_t D, int64_t n, float scale,
                         float* sc, float* out)
    void bk_attn_g4_512(const float* q, const uint16_t* k, const uint16_t* v, int64_t D, int64_t n, float scale,
                        float* sc, float* out)

cdef extern from "bk_pool.h" nogil:
    ctypedef void (*bk_task_fn)(void* ctx, int64_t chunk) noexcept nogil
    void bk_pool_run(int nthreads, bk_task_fn fn, void* ctx, int64_t nchunks)

cdef extern from "omp.h" nogil:
    int omp_get_max_threads()

cdef int _features[8]
bk_detect(_features)
cdef int _isa
cdef int _threads = 1

DEF GEMV_CHUNK = 16  # rows per scheduling unit of the GEMVs


# Decode GEMVs read two streams at once: job c of a GEMV over C chunks is the pair (chunk c, chunk c + P), P =
# ceil(C / 2), walked row by row in lockstep by the *2 kernels of bk_simd.h. The pool hands each thread a
# contiguous run of jobs, so at 1 thread the two streams are the two halves of the rows, each read front to
# back; one stream alone leaves a Zen 4 core far below its memory bandwidth (see bk_i2s_gemv2_512).

cdef int _streams = 2  # 1: the one-stream scheduling (one chunk a job), kept for side-by-side benchmarks


def set_decode_streams(int n):
    global _streams
    if n not in (1, 2):
        raise ValueError("decode streams must be 1 or 2")
    _streams = n


def get_decode_streams():
    return _streams


cdef inline int64_t _npairs(int64_t nchunks) noexcept nogil:
    return (nchunks + 1) // 2


cdef inline void _pair_rows(int64_t c, int64_t N, int64_t* a0, int64_t* a1, int64_t* b0, int64_t* b1) noexcept nogil:
    """Rows of job c over one matrix of N rows: [a0, a1) and [b0, b1) (empty when chunk c + P does not exist)."""
    cdef int64_t nchunks = (N + GEMV_CHUNK - 1) // GEMV_CHUNK
    cdef int64_t cb = c + _npairs(nchunks)
    a0[0] = c * GEMV_CHUNK
    a1[0] = _min(N, a0[0] + GEMV_CHUNK)
    if cb < nchunks:
        b0[0] = cb * GEMV_CHUNK
        b1[0] = _min(N, b0[0] + GEMV_CHUNK)
    else:
        b0[0] = a1[0]
        b1[0] = a1[0]

FEATURE_NAMES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni")
ISA_NAMES = ("portable", "avx2", "avx512vnni")


def features():
    return {name: bool(_features[i]) for i, name in enumerate(FEATURE_NAMES)}


def best_isa():
    if all(_features[i] for i in range(8)):
        return "avx512vnni"
    if _features[0] and _features[1] and _features[2]:
        return "avx2"
    return "portable"


_isa = ISA_NAMES.index(best_isa())


def get_isa():
    return ISA_NAMES[_isa]


def set_isa(str name):
    global _isa
    _isa = ISA_NAMES.index(name)


def set_threads(int n):
    global _threads
    _threads = n


def get_threads():
    return _threads


def omp_max_threads():
    return omp_get_max_threads()


cdef inline int64_t _min(int64_t a, int64_t b) noexcept nogil:
    return a if a < b else b


# ---------------------------------------------------------------------------------------------------------------
# int8 activations

cdef void quantize_act_k(const float* x, int64_t T, int64_t K, int8_t* q, float* s, int32_t* qsum) noexcept nogil:
    cdef int64_t t
    cdef int isa = _isa
    if T == 1:
        bk_quant_row(isa, x, K, q, s, qsum)
        return
    for t in prange(T, num_threads=_threads, schedule='static'):
        bk_quant_row(isa, x + t * K, K, q + t * K, s + t, qsum + t)


cdef void q8k_quantize_k(const float* x, int64_t T, int64_t K, int8_t* q, float* d, int16_t* bsums) noexcept nogil:
    cdef int64_t t
    if T == 1:  # decode: no parallel region (its closing barrier is what hurts on shared cores)
        bk_q8k_row(x, K, q, d, bsums)
        return
    for t in prange(T, num_threads=_threads, schedule='static'):
        bk_q8k_row(x + t * K, K, q + t * K, d + t * (K // 256), bsums + t * (K // 16))


# ---------------------------------------------------------------------------------------------------------------
# I2_S

DEF MAX_MATS = 8  # matrices sharing one input in i2s_linear_multi


cdef struct GemvCtx:
    int isa
    int m
    const uint8_t** w
    const int64_t* N
    const int64_t* first
    int64_t K
    const int8_t* q
    const int8_t* qp  # q in pair order, for the VNNI two-stream kernel (bk_i2s_perm_act)
    int32_t qsum
    float s
    const float* ws
    int32_t* yi
    float** yf


cdef inline void _i2s_locate(GemvCtx* g, int64_t c, int* mat, int64_t* n0, int64_t* n1) noexcept nogil:
    cdef int m = 0
    while c >= g.first[m + 1]:
        m += 1
    mat[0] = m
    n0[0] = (c - g.first[m]) * GEMV_CHUNK
    n1[0] = _min(g.N[m], n0[0] + GEMV_CHUNK)


cdef inline void _i2s_rows(GemvCtx* g, int mat, int64_t n0, int64_t n1, int32_t* dots) noexcept nogil:
    cdef uint8_t* codes
    if g.isa == BK_VNNI:
        bk_i2s_gemv_rows_512(g.w[mat], g.K, g.q, n0, n1, dots)
    elif g.isa == BK_AVX2:
        bk_i2s_gemv_rows_256(g.w[mat], g.K, g.q, n0, n1, dots)
    else:
        codes = <uint8_t*>malloc(g.K)
        bk_i2s_gemv_rows_c(g.w[mat], g.K, g.q, n0, n1, dots, codes)
        free(codes)


cdef inline void _i2s_emit(GemvCtx* g, int mat, int64_t n0, int64_t n1, const int32_t* dots) noexcept nogil:
    cdef int64_t i
    if g.yi == NULL and g.isa == BK_VNNI:
        bk_i2s_emit_512(dots, n1 - n0, g.qsum, g.s, g.ws[mat], g.yf[mat] + n0)
        return
    for i in range(n0, n1):
        if g.yi != NULL:
            g.yi[i] = dots[i - n0] - g.qsum
        else:
            g.yf[mat][i] = (<float>(dots[i - n0] - g.qsum) / g.s) * g.ws[mat]


cdef void _i2s_gemv_one(void* ctxp, int64_t c) noexcept nogil:
    cdef GemvCtx* g = <GemvCtx*>ctxp
    cdef int32_t da[GEMV_CHUNK]
    cdef int ma
    cdef int64_t a0, a1
    _i2s_locate(g, c, &ma, &a0, &a1)
    _i2s_rows(g, ma, a0, a1, da)
    _i2s_emit(g, ma, a0, a1, da)


cdef void _i2s_gemv_chunk(void* ctxp, int64_t c) noexcept nogil:
    """Job c: chunks c and c + P (see _npairs), two streams in lockstep where the ISA has a two-stream kernel."""
    cdef GemvCtx* g = <GemvCtx*>ctxp
    cdef int32_t da[GEMV_CHUNK]
    cdef int32_t db[GEMV_CHUNK]
    cdef int ma, mb
    cdef int64_t a0, a1, b0, b1, n
    cdef int64_t cb = c + _npairs(g.first[g.m])
    cdef int64_t rb = g.K // 4
    _i2s_locate(g, c, &ma, &a0, &a1)
    if cb >= g.first[g.m] or g.isa == BK_PORTABLE:
        _i2s_rows(g, ma, a0, a1, da)
        _i2s_emit(g, ma, a0, a1, da)
        if cb < g.first[g.m]:
            _i2s_locate(g, cb, &mb, &b0, &b1)
            _i2s_rows(g, mb, b0, b1, db)
            _i2s_emit(g, mb, b0, b1, db)
        return
    _i2s_locate(g, cb, &mb, &b0, &b1)
    n = _min(a1 - a0, b1 - b0)
    if g.isa == BK_VNNI:
        bk_i2s_gemv2_512(g.w[ma] + a0 * rb, g.w[mb] + b0 * rb, g.K, g.qp, n, da, db)
    else:
        bk_i2s_gemv2_256(g.w[ma] + a0 * rb, g.w[mb] + b0 * rb, g.K, g.q, n, da, db)
    if a0 + n < a1:
        _i2s_rows(g, ma, a0 + n, a1, da + n)
    if b0 + n < b1:
        _i2s_rows(g, mb, b0 + n, b1, db + n)
    _i2s_emit(g, ma, a0, a1, da)
    _i2s_emit(g, mb, b0, b1, db)


cdef void _i2s_gemv(int m, const uint8_t** w, const int64_t* N, int64_t K, const int8_t* q, int32_t qsum, float s,
                    const float* ws, int32_t* yi, float** yf) noexcept nogil:
    """One token through m matrices that share it, as one job of the thread pool (bk_pool.h): rows in chunks
    of GEMV_CHUNK that never cross matrices, claimed in order, so each thread streams forward through memory."""
    cdef int64_t first[MAX_MATS + 1]
    cdef int64_t nchunks = 0
    cdef int j
    cdef GemvCtx g
    cdef int8_t* qp
    for j in range(m):
        first[j] = nchunks
        nchunks += (N[j] + GEMV_CHUNK - 1) // GEMV_CHUNK
    first[m] = nchunks
    g.isa = _isa
    g.m = m
    g.w = w
    g.N = N
    g.first = first
    g.K = K
    g.q = q
    g.qsum = qsum
    g.s = s
    g.ws = ws
    g.yi = yi
    g.yf = yf
    g.qp = NULL
    if _streams == 1:
        bk_pool_run(_threads, _i2s_gemv_one, &g, nchunks)
    elif _isa == BK_VNNI:
        qp = <int8_t*>malloc(K)
        if qp == NULL:  # no memory for K bytes: the one-stream kernel needs none
            bk_pool_run(_threads, _i2s_gemv_one, &g, nchunks)
            return
        bk_i2s_perm_act(q, K, qp)
        g.qp = qp
        bk_pool_run(_threads, _i2s_gemv_chunk, &g, _npairs(nchunks))
        free(qp)
    else:
        bk_pool_run(_threads, _i2s_gemv_chunk, &g, _npairs(nchunks))


cdef void _i2s_gemm(const uint8_t* w, int64_t N, int64_t K, const int8_t* q, const int32_t* qsum, const float* s,
                    float ws, int64_t T, int32_t* yi, float* yf) noexcept nogil:
    """Several tokens: activations transposed into tiles once, each unpacked row block reused by all tokens."""
    cdef int isa = _isa
    cdef int64_t R, TW, VW, nblk, b, ntile
    cdef int32_t* at = NULL
    cdef uint8_t* wu = NULL
    if isa == BK_VNNI:
        R = BK_R512
        TW = BK_TW512
        VW = 16
    elif isa == BK_AVX2:
        R = BK_R256
        TW = BK_TW256
        VW = 8
    else:
        R = 1
        TW = 1
        VW = 1
    nblk = (N + R - 1) // R
    if isa != BK_PORTABLE:
        ntile = (T + TW - 1) // TW
        at = <int32_t*>malloc(ntile * TW * K)
        bk_prep_act_tiles(q, T, K, TW, VW, at)
    with parallel(num_threads=_threads):
        wu = <uint8_t*>malloc(R * K + 64)
        for b in prange(nblk, schedule='guided'):
            if isa == BK_VNNI:
                bk_i2s_gemm_block_512(w, N, K, b * R, T, at, qsum, s, ws, yi, yf, wu)
            elif isa == BK_AVX2:
                bk_i2s_gemm_block_256(w, N, K, b * R, T, at, qsum, s, ws, yi, yf, wu)
            else:
                bk_i2s_gemm_block_c(w, N, K, b, b + 1, T, q, qsum, s, ws, yi, yf, wu)
        free(wu)
    free(at)


cdef void i2s_dot_k(const uint8_t* w, int64_t N, int64_t K, const int8_t* q, const int32_t* qsum,
                    const float* s, float ws, int64_t T, int32_t* yi, float* yf) noexcept nogil:
    if T == 1:
        _i2s_gemv(1, &w, &N, K, q, qsum[0], s[0], &ws, yi, &yf)
    else:
        _i2s_gemm(w, N, K, q, qsum, s, ws, T, yi, yf)


cdef inline float _i2s_scale(const uint8_t* w, int64_t N, int64_t K) noexcept nogil:
    cdef float ws
    memcpy(&ws, w + N * K // 4, sizeof(float))
    return ws


cdef void i2s_linear_k(const uint8_t* w, int64_t N, int64_t K, const float* x, int64_t T, float* y) noexcept nogil:
    i2s_linear_multi_k(1, &w, &N, K, x, T, &y)


cdef void i2s_linear_multi_k(int m, const uint8_t** w, const int64_t* N, int64_t K, const float* x, int64_t T,
                             float** y) noexcept nogil:
    """m I2_S matrices applied to the same x (e.g. q/k/v, gate/up): x is quantized once; one token runs all
    matrices in a single parallel region."""
    cdef int8_t* q = <int8_t*>malloc(T * K)
    cdef float* s = <float*>malloc(T * sizeof(float))
    cdef int32_t* qsum = <int32_t*>malloc(T * sizeof(int32_t))
    cdef float ws[MAX_MATS]
    cdef int j
    for j in range(m):
        ws[j] = _i2s_scale(w[j], N[j], K)
    quantize_act_k(x, T, K, q, s, qsum)
    if T == 1:
        _i2s_gemv(m, w, N, K, q, qsum[0], s[0], ws, NULL, y)
    else:
        for j in range(m):
            _i2s_gemm(w[j], N[j], K, q, qsum, s, ws[j], T, NULL, y[j])
    free(q)
    free(s)
    free(qsum)


# ---------------------------------------------------------------------------------------------------------------
# TQ2_0 / TQ1_0 with Q8_K activations

cdef struct Tq2Ctx:
    const uint8_t* w
    int64_t K
    int64_t N
    const int8_t* q
    const float* da
    const int32_t* bq
    float* y


cdef void _tq2_one(void* ctxp, int64_t c) noexcept nogil:
    cdef Tq2Ctx* g = <Tq2Ctx*>ctxp
    cdef int64_t n0 = c * GEMV_CHUNK
    bk_tq2_rows_512(g.w, g.K, g.q, g.da, g.bq, n0, _min(g.N, n0 + GEMV_CHUNK), g.y + n0)


cdef void _tq2_chunk(void* ctxp, int64_t c) noexcept nogil:
    """Job c: chunks c and c + P in lockstep (see _npairs)."""
    cdef Tq2Ctx* g = <Tq2Ctx*>ctxp
    cdef int64_t a0, a1, b0, b1, n
    cdef int64_t rb = (g.K // 256) * 66
    _pair_rows(c, g.N, &a0, &a1, &b0, &b1)
    n = _min(a1 - a0, b1 - b0)
    if n > 0:
        bk_tq2_rows2_512(g.w + a0 * rb, g.w + b0 * rb, g.K, g.q, g.da, g.bq, n, g.y + a0, g.y + b0)
    if a0 + n < a1:
        bk_tq2_rows_512(g.w, g.K, g.q, g.da, g.bq, a0 + n, a1, g.y + a0 + n)
    if b0 + n < b1:
        bk_tq2_rows_512(g.w, g.K, g.q, g.da, g.bq, b0 + n, b1, g.y + b0 + n)


cdef struct TqRowsCtx:
    int isa
    int qtype
    bint lanes
    const uint8_t* w
    int64_t N
    int64_t K
    const int8_t* q
    const float* da
    const int32_t* bq  # block sums (T, nb), or lane sums (T, nb, 8) when lanes
    int64_t T
    float* y


cdef void _tq_rows_chunk(void* ctxp, int64_t c) noexcept nogil:
    """GEMV_CHUNK rows: each row unpacked to codes once (stays in L1), then dotted with every token."""
    cdef TqRowsCtx* g = <TqRowsCtx*>ctxp
    cdef int64_t nb = g.K // 256
    cdef int64_t bpb = 66 if g.qtype == 2 else 54
    cdef int64_t n, t, b, n0 = c * GEMV_CHUNK
    cdef int64_t n1 = _min(g.N, n0 + GEMV_CHUNK)
    cdef int64_t stride = nb * 8 if g.lanes else nb
    cdef uint8_t* codes = <uint8_t*>malloc(g.K + 64)
    cdef float* dw = <float*>malloc(nb * sizeof(float))
    cdef const uint8_t* wr
    for n in range(n0, n1):
        wr = g.w + n * nb * bpb
        if g.isa == BK_PORTABLE:
            for b in range(nb):
                dw[b] = bk_tq_block_scale(wr, g.qtype, b)
            if g.qtype == 2:
                bk_tq2_unpack_row(wr, g.K, codes)
            else:
                bk_tq1_unpack_row(wr, g.K, codes)
        else:
            bk_tq_scales_256(wr, g.qtype, nb, dw)
            if g.qtype == 2:
                bk_tq2_unpack_row_256(wr, g.K, codes)
            else:
                bk_tq1_unpack_row_256(wr, g.K, codes)
        for t in range(g.T):
            if g.lanes:
                if g.isa == BK_VNNI:
                    bk_tq_lanes_row_512(codes, dw, g.K, g.q + t * g.K, g.da + t * nb, g.bq + t * stride, g.y + t * g.N + n)
                elif g.isa == BK_AVX2:
                    bk_tq_lanes_row_256(codes, dw, g.K, g.q + t * g.K, g.da + t * nb, g.bq + t * stride, g.y + t * g.N + n)
                else:
                    bk_tq_lanes_row_c(codes, dw, g.K, g.q + t * g.K, g.da + t * nb, g.bq + t * stride, g.y + t * g.N + n)
            elif g.isa == BK_VNNI:
                bk_tq_row_512(codes, dw, g.K, g.q + t * g.K, g.da + t * nb, g.bq + t * stride, g.y + t * g.N + n)
            elif g.isa == BK_AVX2:
                bk_tq_row_256(codes, dw, g.K, g.q + t * g.K, g.da + t * nb, g.bq + t * stride, g.y + t * g.N + n)
            else:
                bk_tq_row_c(codes, dw, g.K, g.q + t * g.K, g.da + t * nb, g.bq + t * stride, g.y + t * g.N + n)
    free(codes)
    free(dw)


cdef void _tq_lanes(const uint8_t* w, int qtype, int64_t N, int64_t K, const int8_t* q, const float* da,
                    const int16_t* bs16, int64_t T, float* y) noexcept nogil:
    """llama.cpp's AVX2 lane order (bitnet_inference's `llama` numerics), on the thread pool."""
    cdef int64_t nb = K // 256
    cdef int32_t* lb = <int32_t*>malloc(T * nb * 8 * sizeof(int32_t))
    cdef int64_t t, i
    cdef TqRowsCtx g
    for t in range(T):
        for i in range(nb * 8):  # lane m of block b: activations 32m .. 32m+31 = two 16-value sums
            lb[t * nb * 8 + i] = bs16[t * (K // 16) + 2 * i] + bs16[t * (K // 16) + 2 * i + 1]
    g.isa = _isa
    g.qtype = qtype
    g.lanes = True
    g.w = w
    g.N = N
    g.K = K
    g.q = q
    g.da = da
    g.bq = lb
    g.T = T
    g.y = y
    bk_pool_run(_threads, _tq_rows_chunk, &g, (N + GEMV_CHUNK - 1) // GEMV_CHUNK)
    free(lb)


cdef void tq_linear_k(const uint8_t* w, int qtype, int64_t N, int64_t K, const float* x, int64_t T,
                      float* y, bint lane_order=False) noexcept nogil:
    cdef int isa = _isa
    cdef int64_t nb = K // 256
    cdef int64_t bpb = 66 if qtype == 2 else 54
    cdef int8_t* q = <int8_t*>malloc(T * K)
    cdef float* da = <float*>malloc(T * nb * sizeof(float))
    cdef int16_t* bs16 = <int16_t*>malloc(T * (K // 16) * sizeof(int16_t))
    cdef int32_t* bq = <int32_t*>malloc(T * nb * sizeof(int32_t))
    cdef int64_t t, b, j, n
    cdef uint8_t* codes = NULL
    cdef float* dw = NULL
    cdef const uint8_t* wr
    q8k_quantize_k(x, T, K, q, da, bs16)
    if lane_order:
        _tq_lanes(w, qtype, N, K, q, da, bs16, T, y)
        free(q)
        free(da)
        free(bs16)
        free(bq)
        return
    for t in range(T):
        for b in range(nb):
            bq[t * nb + b] = 0
            for j in range(16):
                bq[t * nb + b] += bs16[t * (K // 16) + b * 16 + j]
    cdef int64_t c, nchunks = (N + GEMV_CHUNK - 1) // GEMV_CHUNK
    cdef Tq2Ctx tq
    if T == 1 and qtype == 2 and isa == BK_VNNI:
        # decode: codes straight from the blocks
        tq.w = w
        tq.K = K
        tq.N = N
        tq.q = q
        tq.da = da
        tq.bq = bq
        tq.y = y
        if _streams == 1:
            bk_pool_run(_threads, _tq2_one, &tq, nchunks)
        else:
            bk_pool_run(_threads, _tq2_chunk, &tq, _npairs(nchunks))
        free(q)
        free(da)
        free(bs16)
        free(bq)
        return
    cdef int64_t Tpad, nblk
    cdef int32_t* at = NULL
    cdef float* daT = NULL
    cdef int32_t* bqT = NULL
    if T >= 2 and isa == BK_VNNI and nb <= 64:
        # prefill: the register-tiled microkernel, flushed to float after every 256-weight block
        Tpad = ((T + BK_TW512 - 1) // BK_TW512) * BK_TW512
        at = <int32_t*>malloc(Tpad * K)
        bk_prep_act_tiles(q, T, K, BK_TW512, 16, at)
        daT = <float*>malloc(nb * Tpad * sizeof(float))
        bqT = <int32_t*>malloc(nb * Tpad * sizeof(int32_t))
        memset(daT, 0, nb * Tpad * sizeof(float))
        memset(bqT, 0, nb * Tpad * sizeof(int32_t))
        for t in range(T):
            for b in range(nb):
                daT[b * Tpad + t] = da[t * nb + b]
                bqT[b * Tpad + t] = bq[t * nb + b]
        nblk = (N + BK_R512 - 1) // BK_R512
        with parallel(num_threads=_threads):
            codes = <uint8_t*>malloc(BK_R512 * K + 64)
            for c in prange(nblk, schedule='guided'):
                bk_tq_gemm_block_512(w, qtype, N, K, c * BK_R512, T, Tpad, at, daT, bqT, y, codes)
            free(codes)
        free(at)
        free(daT)
        free(bqT)
        free(q)
        free(da)
        free(bs16)
        free(bq)
        return
    # the other paths (TQ1_0 decode, AVX2 and portable): rows unpacked once per row, on the thread pool
    cdef TqRowsCtx g
    g.isa = isa
    g.qtype = qtype
    g.lanes = False
    g.w = w
    g.N = N
    g.K = K
    g.q = q
    g.da = da
    g.bq = bq
    g.T = T
    g.y = y
    bk_pool_run(_threads, _tq_rows_chunk, &g, nchunks)
    free(q)
    free(da)
    free(bs16)
    free(bq)


# ---------------------------------------------------------------------------------------------------------------
# LM head: F16 and int8

cdef struct HeadCtx:
    int isa
    const void* w
    const float* scale
    int64_t N
    int64_t K
    const void* x
    const float* s
    int64_t T
    float* y


cdef void _f16_pair(void* ctxp, int64_t c) noexcept nogil:
    """One token, job c: chunks c and c + P in lockstep (see _npairs)."""
    cdef HeadCtx* h = <HeadCtx*>ctxp
    cdef const uint16_t* w = <const uint16_t*>h.w
    cdef int64_t a0, a1, b0, b1, n
    _pair_rows(c, h.N, &a0, &a1, &b0, &b1)
    n = _min(a1 - a0, b1 - b0)
    if n > 0:
        if h.isa == BK_VNNI:
            bk_f16_gemv2_512(w + a0 * h.K, w + b0 * h.K, h.K, <const float*>h.x, n, h.y + a0, h.y + b0)
        else:
            bk_f16_gemv2_256(w + a0 * h.K, w + b0 * h.K, h.K, <const float*>h.x, n, h.y + a0, h.y + b0)
    if a0 + n < a1:
        _f16_rows(h, a0 + n, a1)
    if b0 + n < b1:
        _f16_rows(h, b0 + n, b1)


cdef void _f16_chunk(void* ctxp, int64_t c) noexcept nogil:
    cdef HeadCtx* h = <HeadCtx*>ctxp
    cdef int64_t n0 = c * GEMV_CHUNK
    _f16_rows(h, n0, _min(h.N, n0 + GEMV_CHUNK))


cdef void _f16_rows(HeadCtx* h, int64_t n0, int64_t n1) noexcept nogil:
    cdef float* wf
    if h.isa == BK_VNNI:
        bk_f16_rows_512(<const uint16_t*>h.w, h.K, <const float*>h.x, h.T, h.N, n0, n1, h.y)
    elif h.isa == BK_AVX2:
        bk_f16_rows_256(<const uint16_t*>h.w, h.K, <const float*>h.x, h.T, h.N, n0, n1, h.y)
    else:
        wf = <float*>malloc(h.K * sizeof(float))
        bk_f16_rows_c(<const uint16_t*>h.w, h.K, <const float*>h.x, h.T, h.N, n0, n1, h.y, wf)
        free(wf)


cdef void f16_gemv_k(const uint16_t* w, int64_t N, int64_t K, const float* x, int64_t T, float* y) noexcept nogil:
    cdef HeadCtx h
    h.isa = _isa
    h.w = w
    h.N = N
    h.K = K
    h.x = x
    h.T = T
    h.y = y
    if T == 1 and h.isa != BK_PORTABLE and _streams == 2:
        bk_pool_run(_threads, _f16_pair, &h, _npairs((N + GEMV_CHUNK - 1) // GEMV_CHUNK))
    else:
        bk_pool_run(_threads, _f16_chunk, &h, (N + GEMV_CHUNK - 1) // GEMV_CHUNK)


cdef void q8_head_prepare_k(const uint16_t* w, int64_t N, int64_t K, int8_t* q, float* scale) noexcept nogil:
    cdef int isa = _isa
    cdef int64_t nchunks = (N + GEMV_CHUNK - 1) // GEMV_CHUNK
    cdef int64_t c, n0
    cdef float* wf = NULL
    with parallel(num_threads=_threads):
        wf = <float*>malloc(K * sizeof(float))
        for c in prange(nchunks, schedule='static'):
            n0 = c * GEMV_CHUNK
            bk_q8_prepare_rows(isa, w, K, n0, _min(N, n0 + GEMV_CHUNK), q, scale, wf)
        free(wf)


cdef void _q8_pair(void* ctxp, int64_t c) noexcept nogil:
    """One token, job c: chunks c and c + P in lockstep (see _npairs)."""
    cdef HeadCtx* h = <HeadCtx*>ctxp
    cdef int64_t a0, a1, b0, b1, n
    _pair_rows(c, h.N, &a0, &a1, &b0, &b1)
    n = _min(a1 - a0, b1 - b0)
    if n > 0:
        if h.isa == BK_VNNI:
            bk_q8_gemv2_512(<const int8_t*>h.w, h.scale, h.K, <const uint8_t*>h.x, h.s[0], a0, b0, n, h.y)
        else:
            bk_q8_gemv2_256(<const int8_t*>h.w, h.scale, h.K, <const int8_t*>h.x, h.s[0], a0, b0, n, h.y)
    if a0 + n < a1:
        _q8_rows(h, a0 + n, a1)
    if b0 + n < b1:
        _q8_rows(h, b0 + n, b1)


cdef void _q8_chunk(void* ctxp, int64_t c) noexcept nogil:
    cdef HeadCtx* h = <HeadCtx*>ctxp
    cdef int64_t n0 = c * GEMV_CHUNK
    _q8_rows(h, n0, _min(h.N, n0 + GEMV_CHUNK))


cdef void _q8_rows(HeadCtx* h, int64_t n0, int64_t n1) noexcept nogil:
    if h.isa == BK_VNNI:
        bk_q8_rows_512(<const int8_t*>h.w, h.scale, h.K, <const uint8_t*>h.x, h.s, h.T, h.N, n0, n1, h.y)
    elif h.isa == BK_AVX2:
        bk_q8_rows_256(<const int8_t*>h.w, h.scale, h.K, <const int8_t*>h.x, h.s, h.T, h.N, n0, n1, h.y)
    else:
        bk_q8_rows_c(<const int8_t*>h.w, h.scale, h.K, <const int8_t*>h.x, h.s, h.T, h.N, n0, n1, h.y)


cdef void q8_head_gemv_k(const int8_t* w, const float* scale, int64_t N, int64_t K, const float* x, int64_t T,
                         float* y) noexcept nogil:
    cdef int isa = _isa
    cdef int64_t i
    cdef int8_t* xq = <int8_t*>malloc(T * K)
    cdef float* s = <float*>malloc(T * sizeof(float))
    cdef int32_t* qsum = <int32_t*>malloc(T * sizeof(int32_t))
    cdef HeadCtx h
    quantize_act_k(x, T, K, xq, s, qsum)
    if isa == BK_VNNI:
        for i in range(T * K):
            xq[i] = <int8_t>(<uint8_t>xq[i] ^ 0x80)  # q + 128 as unsigned
    h.isa = isa
    h.w = w
    h.scale = scale
    h.N = N
    h.K = K
    h.x = xq
    h.s = s
    h.T = T
    h.y = y
    if T == 1 and isa != BK_PORTABLE and _streams == 2:
        bk_pool_run(_threads, _q8_pair, &h, _npairs((N + GEMV_CHUNK - 1) // GEMV_CHUNK))
    else:
        bk_pool_run(_threads, _q8_chunk, &h, (N + GEMV_CHUNK - 1) // GEMV_CHUNK)
    free(xq)
    free(s)
    free(qsum)


# ---------------------------------------------------------------------------------------------------------------
# float parts

cdef void rmsnorm_k(const float* x, const float* w, int64_t T, int64_t K, float eps, float* y) noexcept nogil:
    cdef int isa = _isa
    cdef int64_t t
    cdef int nt = _threads if T > 1 else 1
    for t in prange(T, num_threads=nt, schedule='static'):
        if isa == BK_VNNI:
            bk_rmsnorm_row_512(x + t * K, w, K, eps, y + t * K)
        elif isa == BK_AVX2:
            bk_rmsnorm_row_256(x + t * K, w, K, eps, y + t * K)
        else:
            bk_rmsnorm_row_c(x + t * K, w, K, eps, y + t * K)


cdef void rope_neox_k(float* x, const int32_t* pos, int64_t T, int64_t H, int64_t D, float base,
                      int64_t n_rot) noexcept nogil:
    cdef int isa = _isa
    cdef int64_t t, half = n_rot // 2
    cdef float theta_scale = powf(base, <float>-2.0 / <float>n_rot)
    cdef float* cs = NULL
    cdef int nt = _threads if T > 1 else 1
    with parallel(num_threads=nt):
        cs = <float*>malloc(2 * half * sizeof(float) + 16)
        for t in prange(T, schedule='static'):
            bk_rope_cache(<float>pos[t], theta_scale, half, cs, cs + half)
            if isa == BK_VNNI:
                bk_rope_apply_512(x + t * H * D, H, D, half, cs, cs + half)
            elif isa == BK_AVX2:
                bk_rope_apply_256(x + t * H * D, H, D, half, cs, cs + half)
            else:
                bk_rope_apply_c(x + t * H * D, H, D, half, cs, cs + half)
        free(cs)


cdef struct AttnCtx:
    int isa
    const float* q
    const uint16_t* k
    const uint16_t* v
    int64_t H
    int64_t group
    int64_t hj  # heads a job: 4 where four heads share a KV head on the VNNI path (bk_attn_g4_512), else 1
    int64_t S
    int64_t D
    int64_t pos0
    int64_t n_kv
    float scale
    float* out


cdef void _attn_chunk(void* ctxp, int64_t i) noexcept nogil:
    """Heads h0 .. h0 + hj - 1 of token t, where i = t * (H / hj) + h0 / hj; four at once share each K / V row's
    conversion (the same bits as one head at a time)."""
    cdef AttnCtx* a = <AttnCtx*>ctxp
    cdef int64_t jobs = a.H // a.hj
    cdef int64_t t = i // jobs
    cdef int64_t h = (i % jobs) * a.hj
    cdef int64_t kvh = h // a.group
    cdef int64_t n = _min(a.pos0 + t + 1, a.n_kv)
    cdef const float* q = a.q + (t * a.H + h) * a.D
    cdef float* out = a.out + (t * a.H + h) * a.D
    cdef const uint16_t* k = a.k + kvh * a.S * a.D
    cdef const uint16_t* v = a.v + kvh * a.S * a.D
    cdef float* sc
    if n <= 0:
        memset(out, 0, a.hj * a.D * sizeof(float))
        return
    sc = <float*>malloc(a.hj * (n + 16) * sizeof(float))
    if a.hj == 4:
        bk_attn_g4_512(q, k, v, a.D, n, a.scale, sc, out)
    elif a.isa == BK_VNNI:
        bk_attn_one_512(q, k, v, a.D, n, a.scale, sc, out)
    elif a.isa == BK_AVX2:
        bk_attn_one_256(q, k, v, a.D, n, a.scale, sc, out)
    else:
        bk_attn_one_c(q, k, v, a.D, n, a.scale, sc, out)
    free(sc)


cdef void attention_k(const float* q, const uint16_t* k, const uint16_t* v, int64_t T, int64_t H, int64_t Hkv,
                      int64_t S, int64_t D, int64_t pos0, int64_t n_kv, float* out) noexcept nogil:
    """(token, head) pairs as jobs of the thread pool (decode calls this once per layer); (token, KV head) pairs
    where four heads share a KV head on the VNNI path."""
    cdef AttnCtx a
    a.isa = _isa
    a.q = q
    a.k = k
    a.v = v
    a.H = H
    a.group = H // Hkv
    a.hj = 4 if _isa == BK_VNNI and a.group == 4 else 1
    a.S = S
    a.D = D
    a.pos0 = pos0
    a.n_kv = n_kv
    a.scale = <float>1.0 / sqrtf(<float>D)
    a.out = out
    bk_pool_run(_threads, _attn_chunk, &a, T * (H // a.hj))


cdef void softmax_k(float* x, int64_t T, int64_t N) noexcept nogil:
    cdef int isa = _isa
    cdef int64_t t
    cdef int nt = _threads if T > 1 else 1
    for t in prange(T, num_threads=nt, schedule='static'):
        if isa == BK_VNNI:
            bk_softmax_row_512(x + t * N, N)
        elif isa == BK_AVX2:
            bk_softmax_row_256(x + t * N, N)
        else:
            bk_softmax_row_c(x + t * N, N)


cdef void relu2_mul_k(const float* g, const float* u, float* y, int64_t n) noexcept nogil:
    if _isa == BK_VNNI:
        bk_relu2_mul_512(g, u, y, n)
    elif _isa == BK_AVX2:
        bk_relu2_mul_256(g, u, y, n)
    else:
        bk_relu2_mul_c(g, u, y, n)


cdef void silu_mul_k(const float* g, const float* u, float* y, int64_t n) noexcept nogil:
    if _isa == BK_VNNI:
        bk_silu_mul_512(g, u, y, n)
    elif _isa == BK_AVX2:
        bk_silu_mul_256(g, u, y, n)
    else:
        bk_silu_mul_c(g, u, y, n)


# ---------------------------------------------------------------------------------------------------------------
# fast entry points for the decode hot path: typed 2-D/3-D memoryviews check dtype, rank and C-contiguity
# during acquisition; shapes are compared here. Any failure raises ValueError/TypeError and bitnet_kernels.cpu
# then re-checks in Python to raise a KernelError that names the problem.

def fast_i2s_linear(const uint8_t[::1] w, int64_t N, int64_t K, const float[:, ::1] x, float[:, ::1] y):
    cdef int64_t T = x.shape[0]
    if K % 128 or N < 1 or w.shape[0] != N * K // 4 + 32 or x.shape[1] != K or T < 1 or y.shape[0] != T or y.shape[1] != N:
        raise ValueError("i2s_linear: shape mismatch")
    with nogil:
        i2s_linear_k(&w[0], N, K, &x[0, 0], T, &y[0, 0])


def fast_rmsnorm(const float[:, ::1] x, const float[::1] w, float eps, float[:, ::1] y):
    cdef int64_t T = x.shape[0], K = x.shape[1]
    if w.shape[0] != K or y.shape[0] != T or y.shape[1] != K or T < 1 or K < 1 or not eps >= 0:
        raise ValueError("rmsnorm: shape mismatch")
    with nogil:
        rmsnorm_k(&x[0, 0], &w[0], T, K, eps, &y[0, 0])


def fast_rope_neox(float[:, :, ::1] x, const int32_t[::1] pos, float base, int64_t n_rot):
    cdef int64_t T = x.shape[0]
    if pos.shape[0] != T or T < 1 or n_rot < 2 or n_rot % 2 or n_rot > x.shape[2] or x.shape[1] < 1 or not base > 0:
        raise ValueError("rope_neox: shape mismatch")
    with nogil:
        rope_neox_k(&x[0, 0, 0], &pos[0], T, x.shape[1], x.shape[2], base, n_rot)


def fast_attention(const float[:, :, ::1] q, const uint16_t[:, :, ::1] k, const uint16_t[:, :, ::1] v, int64_t pos0,
                   int64_t n_kv, float[:, :, ::1] out):
    cdef int64_t T = q.shape[0], H = q.shape[1], D = q.shape[2], Hkv = k.shape[0], S = k.shape[1]
    if (T < 1 or H < 1 or D < 1 or Hkv < 1 or H % Hkv or k.shape[2] != D or v.shape[0] != Hkv or v.shape[1] != S
            or v.shape[2] != D or pos0 < 0 or n_kv < 1 or n_kv > S or out.shape[0] != T or out.shape[1] != H
            or out.shape[2] != D):
        raise ValueError("attention: shape mismatch")
    with nogil:
        attention_k(&q[0, 0, 0], &k[0, 0, 0], &v[0, 0, 0], T, H, Hkv, S, D, pos0, n_kv, &out[0, 0, 0])


def fast_f16_gemv(const uint16_t[:, ::1] w, const float[:, ::1] x, float[:, ::1] y):
    cdef int64_t N = w.shape[0], K = w.shape[1], T = x.shape[0]
    if N < 1 or K < 1 or T < 1 or x.shape[1] != K or y.shape[0] != T or y.shape[1] != N:
        raise ValueError("f16_gemv: shape mismatch")
    with nogil:
        f16_gemv_k(&w[0, 0], N, K, &x[0, 0], T, &y[0, 0])


def fast_q8_head_gemv(const int8_t[:, ::1] w, const float[::1] scale, const float[:, ::1] x, float[:, ::1] y):
    cdef int64_t N = w.shape[0], K = w.shape[1], T = x.shape[0]
    if N < 1 or K < 1 or T < 1 or scale.shape[0] != N or x.shape[1] != K or y.shape[0] != T or y.shape[1] != N:
        raise ValueError("q8_head_gemv: shape mismatch")
    with nogil:
        q8_head_gemv_k(&w[0, 0], &scale[0], N, K, &x[0, 0], T, &y[0, 0])


# ---------------------------------------------------------------------------------------------------------------
# raw entry points (flat C-contiguous buffers; bitnet_kernels.cpu validates shapes before calling)

def quantize_act_i8(const float[::1] x, int64_t T, int64_t K, int8_t[::1] q, float[::1] s, int32_t[::1] qsum):
    with nogil:
        quantize_act_k(&x[0], T, K, &q[0], &s[0], &qsum[0])


def quantize_q8_k(const float[::1] x, int64_t T, int64_t K, int8_t[::1] q, float[::1] d, int16_t[::1] bsums):
    with nogil:
        q8k_quantize_k(&x[0], T, K, &q[0], &d[0], &bsums[0])


def i2s_gemm_i32(const uint8_t[::1] w, int64_t N, int64_t K, const int8_t[::1] q, int64_t T, int32_t[::1] y):
    cdef int32_t* qsum = <int32_t*>malloc(T * sizeof(int32_t))
    cdef float* s = <float*>malloc(T * sizeof(float))
    cdef int64_t t, k
    with nogil:
        for t in range(T):
            qsum[t] = 0
            s[t] = 1.0
            for k in range(K):
                qsum[t] += q[t * K + k]
        i2s_dot_k(&w[0], N, K, &q[0], qsum, s, 1.0, T, &y[0], NULL)
    free(qsum)
    free(s)


def i2s_linear(const uint8_t[::1] w, int64_t N, int64_t K, const float[::1] x, int64_t T, float[::1] y):
    with nogil:
        i2s_linear_k(&w[0], N, K, &x[0], T, &y[0])


def i2s_linear_multi(list ws, list ns, int64_t K, const float[::1] x, int64_t T, list ys):
    cdef const uint8_t* wp[MAX_MATS]
    cdef float* yp[MAX_MATS]
    cdef int64_t np_[MAX_MATS]
    cdef const uint8_t[::1] wv
    cdef float[::1] yv
    cdef int j, m = len(ws)
    for j in range(m):
        wv = ws[j]
        yv = ys[j]
        wp[j] = &wv[0]
        yp[j] = &yv[0]
        np_[j] = ns[j]
    with nogil:
        i2s_linear_multi_k(m, wp, np_, K, &x[0], T, yp)


def tq_linear(const uint8_t[::1] w, int qtype, int64_t N, int64_t K, const float[::1] x, int64_t T, float[::1] y,
              bint lane_order=False):
    with nogil:
        tq_linear_k(&w[0], qtype, N, K, &x[0], T, &y[0], lane_order)


def f16_gemv(const uint16_t[::1] w, int64_t N, int64_t K, const float[::1] x, int64_t T, float[::1] y):
    with nogil:
        f16_gemv_k(&w[0], N, K, &x[0], T, &y[0])


def q8_head_prepare(const uint16_t[::1] w, int64_t N, int64_t K, int8_t[::1] q, float[::1] scale):
    with nogil:
        q8_head_prepare_k(&w[0], N, K, &q[0], &scale[0])


def q8_head_gemv(const int8_t[::1] w, const float[::1] scale, int64_t N, int64_t K, const float[::1] x, int64_t T,
                 float[::1] y):
    with nogil:
        q8_head_gemv_k(&w[0], &scale[0], N, K, &x[0], T, &y[0])


def rmsnorm(const float[::1] x, const float[::1] w, int64_t T, int64_t K, float eps, float[::1] y):
    with nogil:
        rmsnorm_k(&x[0], &w[0], T, K, eps, &y[0])


def rope_neox(float[::1] x, const int32_t[::1] pos, int64_t T, int64_t H, int64_t D, float base, int64_t n_rot):
    with nogil:
        rope_neox_k(&x[0], &pos[0], T, H, D, base, n_rot)


def attention(const float[::1] q, const uint16_t[::1] k, const uint16_t[::1] v, int64_t T, int64_t H, int64_t Hkv,
              int64_t S, int64_t D, int64_t pos0, int64_t n_kv, float[::1] out):
    with nogil:
        attention_k(&q[0], &k[0], &v[0], T, H, Hkv, S, D, pos0, n_kv, &out[0])


def softmax(float[::1] x, int64_t T, int64_t N):
    with nogil:
        softmax_k(&x[0], T, N)


def relu2_mul(const float[::1] g, const float[::1] u, float[::1] y, int64_t n):
    with nogil:
        relu2_mul_k(&g[0], &u[0], &y[0], n)


def silu_mul(const float[::1] g, const float[::1] u, float[::1] y, int64_t n):
    with nogil:
        silu_mul_k(&g[0], &u[0], &y[0], n)


def stream_read(const uint8_t[::1] buf, int nthreads, int reps, int streams=1):
    """Bandwidth probe: sums the 64-bit words of buf (the result defeats dead-code elimination). streams=1: each
    thread a contiguous share in 1 MiB pieces; streams=2: each thread's share as two halves read in lockstep."""
    cdef int64_t chunk = 1 << 20
    cdef int64_t nchunks = buf.shape[0] // chunk
    cdef const uint8_t* p = &buf[0]
    cdef uint64_t total = 0
    cdef int isa = _isa
    cdef int r, t
    cdef int64_t c, c0, c1, half
    with nogil:
        for r in range(reps):
            if streams == 1:
                for c in prange(nchunks, num_threads=nthreads, schedule='static'):
                    total += bk_stream_sum(isa, p + c * chunk, chunk)
            else:
                for t in prange(nthreads, num_threads=nthreads, schedule='static'):
                    c0 = nchunks * t // nthreads
                    c1 = nchunks * (t + 1) // nthreads
                    half = (c1 - c0) * chunk // 2 // 128 * 128
                    if isa == BK_VNNI:
                        total += bk_stream_sum2_512(p + c0 * chunk, p + c0 * chunk + half, half)
                    else:
                        total += bk_stream_sum(isa, p + c0 * chunk, 2 * half)
    return total


# ---------------------------------------------------------------------------------------------------------------
# One decoded token through every layer in one call (no Python between the kernels)

DEF N_PROJ = 7  # q, k, v, o, gate, up, down

cdef struct LayerPlan:
    const float* attn_norm
    const float* attn_sub_norm
    const float* ffn_norm
    const float* ffn_sub_norm
    const uint8_t* w[N_PROJ]
    int qtype[N_PROJ]  # 0: I2_S, 1: TQ1_0, 2: TQ2_0
    float out_scale[N_PROJ]
    bint has_scale[N_PROJ]


cdef class DecodePlan:
    """The fast numerics' decode step for one token, layer by layer with the same kernels in the same order as
    bitnet_inference's Python loop (so the same bits), without returning to Python between them. Built once
    per model from its weights and KV cache, which the caller keeps alive (the plan holds references)."""
    cdef LayerPlan* L
    cdef int n_layer
    cdef int64_t E, F, H, Hkv, D, S, n_slots, n_rot
    cdef float eps, base
    cdef bint silu, lane_order
    cdef uint16_t* kc
    cdef uint16_t* vc
    cdef float* buf
    cdef list keep

    def __cinit__(self):
        self.L = NULL
        self.buf = NULL

    def __init__(self, list layers, k_cache, v_cache, int64_t n_embd, int64_t n_ff, int64_t n_head, int64_t n_head_kv,
                 int64_t head_dim, int64_t n_rot, float eps, float rope_base, str act, bint lane_order):
        """layers: per layer (attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm, [(raw uint8, qtype, out_scale or
        None)] * 7); k_cache / v_cache: float16 (n_slots, n_layer, n_head_kv, n_ctx, head_dim), C-contiguous."""
        cdef int i, j
        cdef const float[::1] f32v
        cdef const uint8_t[::1] u8v
        cdef uint16_t[:, :, :, :, ::1] kv
        if act not in ("relu2", "silu"):
            raise ValueError(f"unknown activation {act!r}")
        if n_rot < 2 or n_rot % 2 or n_rot > head_dim or n_head % n_head_kv:
            raise ValueError("decode plan: unsupported head layout")
        self.n_layer = len(layers)
        self.E, self.F, self.H, self.Hkv, self.D, self.n_rot = n_embd, n_ff, n_head, n_head_kv, head_dim, n_rot
        self.eps, self.base, self.silu, self.lane_order = eps, rope_base, act == "silu", lane_order
        self.keep = [layers, k_cache, v_cache]
        kv = k_cache.view(np.uint16)
        if kv.shape[1] != self.n_layer or kv.shape[2] != n_head_kv or kv.shape[4] != head_dim:
            raise ValueError("decode plan: KV cache shape does not match the model")
        self.n_slots, self.S = kv.shape[0], kv.shape[3]
        self.kc = &kv[0, 0, 0, 0, 0]
        kv = v_cache.view(np.uint16)
        if kv.shape[0] != self.n_slots or kv.shape[1] != self.n_layer or kv.shape[3] != self.S:
            raise ValueError("decode plan: V cache shape does not match the K cache")
        self.vc = &kv[0, 0, 0, 0, 0]
        self.L = <LayerPlan*>calloc(self.n_layer, sizeof(LayerPlan))
        self.buf = <float*>malloc((4 * n_embd + 2 * n_head * head_dim + 2 * n_head_kv * head_dim + 3 * n_ff + 64)
                                  * sizeof(float))
        if self.L == NULL or self.buf == NULL:
            raise MemoryError()
        dims = [(n_head * head_dim, n_embd), (n_head_kv * head_dim, n_embd), (n_head_kv * head_dim, n_embd),
                (n_embd, n_head * head_dim), (n_ff, n_embd), (n_ff, n_embd), (n_embd, n_ff)]
        for i, layer in enumerate(layers):
            norms, projs = layer[:4], layer[4]
            for j, nw in enumerate(norms):
                f32v = nw
                if f32v.shape[0] != (n_ff if j == 3 else n_embd):
                    raise ValueError(f"decode plan: layer {i} norm {j} has {f32v.shape[0]} weights")
            f32v = norms[0]
            self.L[i].attn_norm = &f32v[0]
            f32v = norms[1]
            self.L[i].attn_sub_norm = &f32v[0]
            f32v = norms[2]
            self.L[i].ffn_norm = &f32v[0]
            f32v = norms[3]
            self.L[i].ffn_sub_norm = &f32v[0]
            if len(projs) != N_PROJ:
                raise ValueError("decode plan: 7 projections per layer")
            for j, (raw, qt, sc) in enumerate(projs):
                u8v = raw
                n, k = dims[j]
                need = n * k // 4 + 32 if qt == 0 else n * (k // 256) * (54 if qt == 1 else 66)
                if qt not in (0, 1, 2) or u8v.shape[0] != need:
                    raise ValueError(f"decode plan: layer {i} projection {j}: {u8v.shape[0]} bytes, expected {need}")
                self.L[i].w[j] = &u8v[0]
                self.L[i].qtype[j] = qt
                self.L[i].has_scale[j] = sc is not None
                self.L[i].out_scale[j] = sc if sc is not None else 1.0

    def __dealloc__(self):
        free(self.L)
        free(self.buf)

    def step(self, float[::1] x, int64_t pos, int64_t slot):
        """x (n_embd,) float32: the token's embedding in, the last layer's output out (in place)."""
        if x.shape[0] != self.E or not (0 <= slot < self.n_slots) or not (0 <= pos < self.S):
            raise ValueError("decode plan: bad x, slot or position")
        with nogil:
            self._step(&x[0], pos, slot)

    cdef void _projs(self, int i, int j0, int m, const float* x, int64_t K, float* y0, int64_t N0, float* y1,
                     int64_t N1, float* y2, int64_t N2) noexcept nogil:
        """Projections j0 .. j0+m-1 of one input (q/k/v, gate/up): when all are I2_S, x is quantized once and the m
        matrices run as one job of the pool (the same kernels and rows, so the same bits as one call each)."""
        cdef LayerPlan* l = &self.L[i]
        cdef int64_t Ns[3]
        cdef float* ys[3]
        cdef int j
        Ns[0] = N0
        Ns[1] = N1
        Ns[2] = N2
        ys[0] = y0
        ys[1] = y1
        ys[2] = y2
        cdef bint all_i2s = True
        for j in range(m):
            all_i2s = all_i2s and l.qtype[j0 + j] == 0
        if not all_i2s:  # TQ weights: one call each
            for j in range(m):
                self._proj(i, j0 + j, x, Ns[j], K, ys[j])
            return
        i2s_linear_multi_k(m, &l.w[j0], Ns, K, x, 1, ys)
        for j in range(m):
            self._scale_out(l, j0 + j, ys[j], Ns[j])

    cdef void _proj(self, int i, int j, const float* x, int64_t N, int64_t K, float* y) noexcept nogil:
        cdef LayerPlan* l = &self.L[i]
        if l.qtype[j] == 0:
            i2s_linear_k(l.w[j], N, K, x, 1, y)
        else:
            tq_linear_k(l.w[j], l.qtype[j], N, K, x, 1, y, self.lane_order)
        self._scale_out(l, j, y, N)

    cdef inline void _scale_out(self, LayerPlan* l, int j, float* y, int64_t N) noexcept nogil:
        """The `bitnet` arch's per-tensor output scale of projection j, if it has one."""
        cdef int64_t r
        if l.has_scale[j]:
            for r in range(N):
                y[r] = y[r] * l.out_scale[j]

    cdef void _step(self, float* x, int64_t pos, int64_t slot) noexcept nogil:
        cdef int64_t E = self.E, F = self.F, H = self.H, Hkv = self.Hkv, D = self.D, S = self.S
        cdef int64_t QD = H * D, KD = Hkv * D, h, r
        cdef float* hb = self.buf
        cdef float* q = hb + E
        cdef float* k = q + QD
        cdef float* v = k + KD
        cdef float* att = v + KD
        cdef float* o = att + QD
        cdef float* g = o + E
        cdef float* u = g + F
        cdef float* f = u + F
        cdef float* dn = f + F
        cdef int32_t p32 = <int32_t>pos
        cdef uint16_t* kc
        cdef uint16_t* vc
        cdef int i
        for i in range(self.n_layer):
            kc = self.kc + (slot * self.n_layer + i) * Hkv * S * D
            vc = self.vc + (slot * self.n_layer + i) * Hkv * S * D
            rmsnorm_k(x, self.L[i].attn_norm, 1, E, self.eps, hb)
            self._projs(i, 0, 3, hb, E, q, QD, k, KD, v, KD)
            rope_neox_k(q, &p32, 1, H, D, self.base, self.n_rot)
            rope_neox_k(k, &p32, 1, Hkv, D, self.base, self.n_rot)
            for h in range(Hkv):  # the cache stores F16 (numpy's astype rounding)
                bk_f2h_row(_isa, k + h * D, kc + (h * S + pos) * D, D)
                bk_f2h_row(_isa, v + h * D, vc + (h * S + pos) * D, D)
            bk_round_f16_row(_isa, q, QD)  # q meets the F16 cache as F16
            attention_k(q, kc, vc, 1, H, Hkv, S, D, pos, pos + 1, att)
            rmsnorm_k(att, self.L[i].attn_sub_norm, 1, QD, self.eps, att)
            self._proj(i, 3, att, E, QD, o)
            for r in range(E):
                x[r] = x[r] + o[r]
            rmsnorm_k(x, self.L[i].ffn_norm, 1, E, self.eps, hb)
            self._projs(i, 4, 2, hb, E, g, F, u, F, NULL, 0)
            if self.silu:
                silu_mul_k(g, u, f, F)
            else:
                relu2_mul_k(g, u, f, F)
            rmsnorm_k(f, self.L[i].ffn_sub_norm, 1, F, self.eps, f)
            self._proj(i, 6, f, E, F, dn)
            for r in range(E):
                x[r] = x[r] + dn[r]


def f16_round(const float[::1] x, uint16_t[::1] out):
    """float32 -> float16 bits with the decode plan's conversion on the current ISA path (tests compare it with
    numpy)."""
    if x.shape[0]:
        bk_f2h_row(_isa, &x[0], &out[0], x.shape[0])
