/* SIMD helpers of bitnet_kernels, included by _cpu.pyx.
 *
 * Portable build: the file is compiled WITHOUT -march flags. Each ISA-specific function carries its own
 * __attribute__((target(...))) and is only called after __builtin_cpu_supports said yes (bk_detect), or
 * after the caller forced that path on a CPU that has it (force_isa in Python checks this).
 *
 * Paths: BK_VNNI (AVX-512F/BW/VL + VNNI), BK_AVX2 (AVX2 + FMA + F16C), BK_PORTABLE (plain C).
 * Every function here works on one unit (a row, a block of rows, a token); the threading is in _cpu.pyx.
 * The build uses -ffp-contract=off: float results must not depend on whether the compiler fused a*b+c.
 */
#ifndef BK_SIMD_H
#define BK_SIMD_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <immintrin.h>

enum { BK_PORTABLE = 0, BK_AVX2 = 1, BK_VNNI = 2 };

#define BK_T512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define BK_T256 __attribute__((target("avx2,fma,f16c")))

typedef int32_t bk_i32u __attribute__((may_alias, aligned(1)));

/* ---------------------------------------------------------------------------------------------------------- */
/* CPU features                                                                                               */

static void bk_detect(int *f) {
    __builtin_cpu_init();
    f[0] = __builtin_cpu_supports("avx2") != 0;
    f[1] = __builtin_cpu_supports("fma") != 0;
    f[2] = __builtin_cpu_supports("f16c") != 0;
    f[3] = __builtin_cpu_supports("avx512f") != 0;
    f[4] = __builtin_cpu_supports("avx512bw") != 0;
    f[5] = __builtin_cpu_supports("avx512vl") != 0;
    f[6] = __builtin_cpu_supports("avx512dq") != 0;
    f[7] = __builtin_cpu_supports("avx512vnni") != 0;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* fp16 <-> fp32 without F16C (exact)                                                                          */

static inline float bk_h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, f;
    if (exp == 0) {
        if (man == 0) {
            f = sign;
        } else {
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400u));
            man &= 0x3ffu;
            f = sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13);
        }
    } else if (exp == 31) {
        f = sign | 0x7f800000u | (man << 13);
    } else {
        f = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float r;
    memcpy(&r, &f, 4);
    return r;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* exp for softmax / SiLU: Cody-Waite range reduction + degree-6 polynomial, about 2 ulp                        */

BK_T512 static inline __m512 bk_exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7f)), _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

BK_T256 static inline __m256 bk_exp256(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.7f)), _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^n: n in [-126, 128] after the clamp; build the exponent bits (n = 128 only for x near 88.7) */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126)), 23);
    return _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), _mm256_set1_ps(2.0f));
}

/* ---------------------------------------------------------------------------------------------------------- */
/* per-token int8 activation quantization (bitnet.cpp): s = 127 / max(max|x|, 1e-5); q = rint(x * s)            */

static void bk_quant_row_c(const float *x, int64_t K, int8_t *q, float *s_out, int32_t *qsum_out) {
    float amax = 0.0f;
    for (int64_t k = 0; k < K; k++) {
        float a = fabsf(x[k]);
        amax = a > amax ? a : amax;
    }
    if (amax < 1e-5f) amax = 1e-5f;
    const float s = 127.0f / amax;
    int32_t sum = 0;
    for (int64_t k = 0; k < K; k++) {
        float v = nearbyintf(x[k] * s);
        v = v > 127.0f ? 127.0f : (v < -128.0f ? -128.0f : v);
        q[k] = (int8_t)v;
        sum += q[k];
    }
    *s_out = s;
    *qsum_out = sum;
}

BK_T256 static void bk_quant_row_256(const float *x, int64_t K, int8_t *q, float *s_out, int32_t *qsum_out) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 vmax = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(x + k), absmask));
    float tmp[8];
    _mm256_storeu_ps(tmp, vmax);
    float amax = 0.0f;
    for (int i = 0; i < 8; i++) amax = tmp[i] > amax ? tmp[i] : amax;
    for (; k < K; k++) { float a = fabsf(x[k]); amax = a > amax ? a : amax; }
    if (amax < 1e-5f) amax = 1e-5f;
    const float s = 127.0f / amax;
    const __m256 vs = _mm256_set1_ps(s);
    __m256i vsum = _mm256_setzero_si256();
    const __m256i lo = _mm256_set1_epi32(-128), hi = _mm256_set1_epi32(127);
    int32_t it[8];
    for (k = 0; k + 8 <= K; k += 8) {
        __m256i i = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), vs));
        i = _mm256_max_epi32(_mm256_min_epi32(i, hi), lo);
        vsum = _mm256_add_epi32(vsum, i);
        _mm256_storeu_si256((__m256i *)it, i);
        for (int j = 0; j < 8; j++) q[k + j] = (int8_t)it[j];
    }
    _mm256_storeu_si256((__m256i *)it, vsum);
    int32_t sum = it[0] + it[1] + it[2] + it[3] + it[4] + it[5] + it[6] + it[7];
    for (; k < K; k++) {
        float v = nearbyintf(x[k] * s);
        v = v > 127.0f ? 127.0f : (v < -128.0f ? -128.0f : v);
        q[k] = (int8_t)v;
        sum += q[k];
    }
    *s_out = s;
    *qsum_out = sum;
}

BK_T512 static void bk_quant_row_512(const float *x, int64_t K, int8_t *q, float *s_out, int32_t *qsum_out) {
    __m512 vmax = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    float amax = _mm512_reduce_max_ps(vmax);
    for (; k < K; k++) { float a = fabsf(x[k]); amax = a > amax ? a : amax; }
    if (amax < 1e-5f) amax = 1e-5f;
    const float s = 127.0f / amax;
    const __m512 vs = _mm512_set1_ps(s);
    const __m512i lo = _mm512_set1_epi32(-128), hi = _mm512_set1_epi32(127);
    __m512i vsum = _mm512_setzero_si512();
    for (k = 0; k + 16 <= K; k += 16) {
        __m512i i = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), vs));
        i = _mm512_max_epi32(_mm512_min_epi32(i, hi), lo);
        vsum = _mm512_add_epi32(vsum, i);
        _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtepi32_epi8(i));
    }
    int32_t sum = _mm512_reduce_add_epi32(vsum);
    for (; k < K; k++) {
        float v = nearbyintf(x[k] * s);
        v = v > 127.0f ? 127.0f : (v < -128.0f ? -128.0f : v);
        q[k] = (int8_t)v;
        sum += q[k];
    }
    *s_out = s;
    *qsum_out = sum;
}

static void bk_quant_row(int isa, const float *x, int64_t K, int8_t *q, float *s, int32_t *qsum) {
    if (isa == BK_VNNI) bk_quant_row_512(x, K, q, s, qsum);
    else if (isa == BK_AVX2) bk_quant_row_256(x, K, q, s, qsum);
    else bk_quant_row_c(x, K, q, s, qsum);
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Q8_K quantization (llama.cpp): per 256 values, d = mx / -127 where mx is the first value of largest |x|      */

static inline int bk_nearest_int(float v) {
    float f = v + 12582912.0f;
    int32_t i;
    memcpy(&i, &f, 4);
    return (i & 0x007fffff) - 0x00400000;
}

static void bk_q8k_row(const float *x, int64_t K, int8_t *q, float *d, int16_t *bsums) {
    for (int64_t b = 0; b < K / 256; b++) {
        const float *xb = x + b * 256;
        int8_t *qb = q + b * 256;
        float amax = 0.0f, mx = 0.0f;
        for (int j = 0; j < 256; j++) {
            float a = fabsf(xb[j]);
            if (a > amax) { amax = a; mx = xb[j]; }
        }
        if (amax == 0.0f) {
            d[b] = 0.0f;
            memset(qb, 0, 256);
        } else {
            const float iscale = -127.0f / mx;
            for (int j = 0; j < 256; j++) {
                int v = bk_nearest_int(iscale * xb[j]);
                qb[j] = (int8_t)(v < 127 ? v : 127);
            }
            d[b] = 1.0f / iscale;
        }
        for (int j = 0; j < 16; j++) {
            int s = 0;
            for (int i = 0; i < 16; i++) s += qb[j * 16 + i];
            bsums[b * 16 + j] = (int16_t)s;
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* I2_S: 128-weight blocks of 32 bytes; byte p holds weights p, p+32, p+64, p+96 in bits 7:6, 5:4, 3:2, 1:0;     */
/* code = w + 1. Kernels compute sum(code * q) and subtract sum(q). Code 3 (never written) counts as +2, as in  */
/* bitnet.cpp's own kernels.                                                                                  */

/* Masks instead of shifts: (b & 0xC0) = 64 * code of group 0, etc. Four accumulators hold exact multiples of  */
/* 64, 16, 4, 1; they are shifted back once per row.                                                          */

BK_T256 static inline int32_t bk_hsum256(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* One row at a time (one sequential stream per thread), 256-bit VNNI, four blocks (128 bytes) per iteration */
/* into two accumulator sets. Measured on Zen 4 from DRAM, this beat 512-bit loads over two blocks, two rows  */
/* interleaved (much slower), one or two blocks per iteration, and software prefetch. Activations in natural */
/* order.                                                                                                    */
#define BK_I2S_BLK(c0, c1, c2, c3, jj)                                                                             \
    {                                                                                                               \
        const __m256i v = _mm256_loadu_si256((const __m256i *)(wa + (jj) * 32));                                    \
        const int8_t *a = q + (jj) * 128;                                                                           \
        c0 = _mm256_dpbusd_epi32(c0, _mm256_and_si256(v, m0), _mm256_loadu_si256((const __m256i *)a));              \
        c1 = _mm256_dpbusd_epi32(c1, _mm256_and_si256(v, m1), _mm256_loadu_si256((const __m256i *)(a + 32)));       \
        c2 = _mm256_dpbusd_epi32(c2, _mm256_and_si256(v, m2), _mm256_loadu_si256((const __m256i *)(a + 64)));       \
        c3 = _mm256_dpbusd_epi32(c3, _mm256_and_si256(v, m3), _mm256_loadu_si256((const __m256i *)(a + 96)));       \
    }
BK_T512 static void bk_i2s_gemv_rows_512(const uint8_t *w, int64_t K, const int8_t *q, int64_t n0, int64_t n1,
                                         int32_t *dot) {
    const __m256i m0 = _mm256_set1_epi8((char)0xC0), m1 = _mm256_set1_epi8(0x30);
    const __m256i m2 = _mm256_set1_epi8(0x0C), m3 = _mm256_set1_epi8(0x03);
    const int64_t nb = K / 128, rb = K / 4;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *wa = w + n * rb;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        int64_t j = 0;
        for (; j + 3 < nb; j += 4) {
            BK_I2S_BLK(a0, a1, a2, a3, j)
            BK_I2S_BLK(b0, b1, b2, b3, j + 1)
            BK_I2S_BLK(a0, a1, a2, a3, j + 2)
            BK_I2S_BLK(b0, b1, b2, b3, j + 3)
        }
        for (; j < nb; j++) BK_I2S_BLK(a0, a1, a2, a3, j)
        a0 = _mm256_add_epi32(a0, b0);
        a1 = _mm256_add_epi32(a1, b1);
        a2 = _mm256_add_epi32(a2, b2);
        a3 = _mm256_add_epi32(a3, b3);
        dot[n - n0] = bk_hsum256(_mm256_add_epi32(_mm256_add_epi32(_mm256_srai_epi32(a0, 6), _mm256_srai_epi32(a1, 4)),
                                                  _mm256_add_epi32(_mm256_srai_epi32(a2, 2), a3)));
    }
}

/* AVX2: no VNNI; maddubs(u8 code, s8 q) pairs never saturate (|2 * 3 * 128| < 32767). Natural act order.   */

BK_T256 static void bk_i2s_gemv_rows_256(const uint8_t *w, int64_t K, const int8_t *q, int64_t n0, int64_t n1,
                                         int32_t *dot) {
    const __m256i m3 = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    const int64_t nb = K / 128, rb = K / 4;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *wa = w + n * rb;
        __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0;
        for (int64_t j = 0; j < nb; j++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(wa + j * 32));
            const int8_t *a = q + j * 128;
            __m256i p0 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 6), m3), _mm256_loadu_si256((const __m256i *)a));
            __m256i p1 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m3), _mm256_loadu_si256((const __m256i *)(a + 32)));
            __m256i p2 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 2), m3), _mm256_loadu_si256((const __m256i *)(a + 64)));
            __m256i p3 = _mm256_maddubs_epi16(_mm256_and_si256(v, m3), _mm256_loadu_si256((const __m256i *)(a + 96)));
            /* int16 sums of two pairs stay below 4 * 768 */
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(_mm256_add_epi16(p2, p3), ones));
        }
        dot[n - n0] = bk_hsum256(_mm256_add_epi32(acc0, acc1));
    }
}

/* Two streams in lockstep: n rows at wa and n rows at wb (far apart in memory, e.g. the two halves of a      */
/* matrix), block by block. One Zen 4 core keeps too few lines in flight on one sequential stream while it also */
/* computes: on the 2B-4T decode this kernel read 2.5-2.9x faster from DRAM than the one-stream loop above      */
/* (28 vs 10 GB/s in one run, where a plain streaming read gave 26), and as fast from L2. Interleaving the two  */
/* streams chunk by chunk instead of block by block gained nothing. The integer sums are the one-stream       */
/* kernel's (exact), so results are bit-identical.                                                             */
/* The activations of a two-stream GEMV in pair order (bk_i2s_perm_act): for each pair of 128-weight blocks
 * (2i, 2i+1) and each field f, the 32 activations field f of block 2i meets, then the 32 of block 2i+1, so one
 * 64-byte load feeds a 512-bit vpdpbusd over 64 consecutive weight bytes of a row; an odd last block keeps its
 * natural order. */
static void bk_i2s_perm_act(const int8_t *q, int64_t K, int8_t *qp) {
    const int64_t nb = K / 128;
    int64_t j = 0;
    for (; j + 1 < nb; j += 2)
        for (int f = 0; f < 4; f++) {
            memcpy(qp + j * 128 + f * 64, q + j * 128 + f * 32, 32);
            memcpy(qp + j * 128 + f * 64 + 32, q + (j + 1) * 128 + f * 32, 32);
        }
    if (j < nb) memcpy(qp + j * 128, q + j * 128, 128);
}

/* Two rows far apart in lockstep, 64 weight bytes of each per step in 512-bit registers, the four activation
 * vectors loaded once for both rows (the empty asm keeps GCC from folding each load into both rows' vpdpbusd).
 * Against the same loop on 256-bit registers this issues half the instructions per byte, so the out-of-order
 * window spans twice the bytes and keeps more DRAM lines in flight: from DRAM at one thread 27.0 -> 29.8 GB/s
 * (medians of four C-harness runs over 530 MB; 41-42 -> 42-44 from L2, bound by vpdpbusd). qp in pair order. */
#define BK_ZPIN(x) __asm__("" : "+v"(x))
/* Each stream also asks for the line 512 bytes ahead into L2 (prefetcht1 never faults, so running past the last
 * row is harmless). In one process alternating distances on the 2B-4T layers (huge-page arena, one thread):
 * 0 -> 512 bytes moved the decode step's matrices from 22.0 to 23.3, 23.5 to 23.8 and 31.2 to 31.7 GB/s (two
 * threads); 1024 was as good, 1536 and 2048 slower, a 2 KiB burst at each call's start did nothing. */
#define BK_I2S_PF 512
#define BK_I2S_FIN512(c0, c1, c2, c3)                                                                             \
    _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(_mm512_srai_epi32(c0, 6), _mm512_srai_epi32(c1, 4)), \
                                             _mm512_add_epi32(_mm512_srai_epi32(c2, 2), c3)))
/* rows a and b, fields 0-3: weight vectors v (row a) and w (row b), activation vectors x0-x3 */
#define BK_I2S_DP8                                                                                                \
    {                                                                                                             \
        a0 = _mm512_dpbusd_epi32(a0, _mm512_and_si512(v, m0), x0);                                                \
        b0 = _mm512_dpbusd_epi32(b0, _mm512_and_si512(w, m0), x0);                                                \
        a1 = _mm512_dpbusd_epi32(a1, _mm512_and_si512(v, m1), x1);                                                \
        b1 = _mm512_dpbusd_epi32(b1, _mm512_and_si512(w, m1), x1);                                                \
        a2 = _mm512_dpbusd_epi32(a2, _mm512_and_si512(v, m2), x2);                                                \
        b2 = _mm512_dpbusd_epi32(b2, _mm512_and_si512(w, m2), x2);                                                \
        a3 = _mm512_dpbusd_epi32(a3, _mm512_and_si512(v, m3), x3);                                                \
        b3 = _mm512_dpbusd_epi32(b3, _mm512_and_si512(w, m3), x3);                                                \
    }
BK_T512 static void bk_i2s_gemv2_512(const uint8_t *wa0, const uint8_t *wb0, int64_t K, const int8_t *qp, int64_t n,
                                     int32_t *da, int32_t *db) {
    const __m512i m0 = _mm512_set1_epi8((char)0xC0), m1 = _mm512_set1_epi8(0x30);
    const __m512i m2 = _mm512_set1_epi8(0x0C), m3 = _mm512_set1_epi8(0x03);
    const int64_t nb = K / 128, rb = K / 4;
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *wa = wa0 + i * rb, *wb = wb0 + i * rb;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        int64_t j = 0;
        for (; j + 1 < nb; j += 2) {
            const int8_t *a = qp + j * 128;
            __m512i x0 = _mm512_loadu_si512(a), x1 = _mm512_loadu_si512(a + 64);
            __m512i x2 = _mm512_loadu_si512(a + 128), x3 = _mm512_loadu_si512(a + 192);
            BK_ZPIN(x0);
            BK_ZPIN(x1);
            BK_ZPIN(x2);
            BK_ZPIN(x3);
            _mm_prefetch((const char *)(wa + j * 32 + BK_I2S_PF), _MM_HINT_T1);
            _mm_prefetch((const char *)(wb + j * 32 + BK_I2S_PF), _MM_HINT_T1);
            const __m512i v = _mm512_loadu_si512(wa + j * 32), w = _mm512_loadu_si512(wb + j * 32);
            BK_I2S_DP8
        }
        if (j < nb) { /* an odd last block, natural order, in the low halves */
            const int8_t *a = qp + j * 128;
            const __m512i x0 = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a));
            const __m512i x1 = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(a + 32)));
            const __m512i x2 = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(a + 64)));
            const __m512i x3 = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(a + 96)));
            const __m512i v = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(wa + j * 32)));
            const __m512i w = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(wb + j * 32)));
            BK_I2S_DP8
        }
        da[i] = BK_I2S_FIN512(a0, a1, a2, a3);
        db[i] = BK_I2S_FIN512(b0, b1, b2, b3);
    }
}

/* The GEMVs' epilogue for n rows of one matrix: y[i] = ((float)(d[i] - qsum) / s) * ws, the scalar loop's IEEE
 * operations lane by lane (so the same bits), 16 rows a step; n <= 16 is the usual chunk. */
BK_T512 static void bk_i2s_emit_512(const int32_t *d, int64_t n, int32_t qsum, float s, float ws, float *y) {
    const __m512i vq = _mm512_set1_epi32(qsum);
    const __m512 vs = _mm512_set1_ps(s), vw = _mm512_set1_ps(ws);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_loadu_si512(d + i), vq));
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_div_ps(f, vs), vw));
    }
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_maskz_loadu_epi32(m, d + i), vq));
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_div_ps(f, vs), vw));
    }
}

BK_T256 static void bk_i2s_gemv2_256(const uint8_t *wa0, const uint8_t *wb0, int64_t K, const int8_t *q, int64_t n,
                                     int32_t *da, int32_t *db) {
    const __m256i m3 = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    const int64_t nb = K / 128, rb = K / 4;
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *wa = wa0 + i * rb, *wb = wb0 + i * rb;
        __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, bcc0 = acc0, bcc1 = acc0;
        for (int64_t j = 0; j < nb; j++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(wa + j * 32));
            const __m256i w = _mm256_loadu_si256((const __m256i *)(wb + j * 32));
            const int8_t *a = q + j * 128;
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)a), x1 = _mm256_loadu_si256((const __m256i *)(a + 32));
            const __m256i x2 = _mm256_loadu_si256((const __m256i *)(a + 64)), x3 = _mm256_loadu_si256((const __m256i *)(a + 96));
            __m256i p0 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 6), m3), x0);
            __m256i p1 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m3), x1);
            __m256i p2 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 2), m3), x2);
            __m256i p3 = _mm256_maddubs_epi16(_mm256_and_si256(v, m3), x3);
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(_mm256_add_epi16(p2, p3), ones));
            p0 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w, 6), m3), x0);
            p1 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w, 4), m3), x1);
            p2 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w, 2), m3), x2);
            p3 = _mm256_maddubs_epi16(_mm256_and_si256(w, m3), x3);
            bcc0 = _mm256_add_epi32(bcc0, _mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones));
            bcc1 = _mm256_add_epi32(bcc1, _mm256_madd_epi16(_mm256_add_epi16(p2, p3), ones));
        }
        da[i] = bk_hsum256(_mm256_add_epi32(acc0, acc1));
        db[i] = bk_hsum256(_mm256_add_epi32(bcc0, bcc1));
    }
}

static void bk_i2s_unpack_row_c(const uint8_t *w, int64_t K, uint8_t *codes) {
    for (int64_t j = 0; j < K / 128; j++)
        for (int p = 0; p < 32; p++) {
            const uint8_t b = w[j * 32 + p];
            codes[j * 128 + p] = (b >> 6) & 3;
            codes[j * 128 + 32 + p] = (b >> 4) & 3;
            codes[j * 128 + 64 + p] = (b >> 2) & 3;
            codes[j * 128 + 96 + p] = b & 3;
        }
}

static void bk_i2s_gemv_rows_c(const uint8_t *w, int64_t K, const int8_t *q, int64_t n0, int64_t n1, int32_t *dot,
                               uint8_t *codes) {
    for (int64_t n = n0; n < n1; n++) {
        bk_i2s_unpack_row_c(w + n * (K / 4), K, codes);
        int32_t s = 0;
        for (int64_t k = 0; k < K; k++) s += (int32_t)codes[k] * q[k];
        dot[n - n0] = s;
    }
}

/* GEMM (prefill). Activations are transposed once into tiles: at[kq][lane] = the 4 bytes q[t0 + lane][4kq..] */
/* (lanes past the last token are zero). Weights: BK_R rows unpacked to codes in natural order, reused by all */
/* token tiles. Microkernel: broadcast 4 codes of a row, multiply with 16 (or 8) tokens' 4 activations.       */
#define BK_R512 6
#define BK_TW512 64 /* tokens per tile (4 vectors of 16) */
#define BK_R256 4
#define BK_TW256 16 /* tokens per tile (2 vectors of 8) */

static void bk_prep_act_tiles(const int8_t *q, int64_t T, int64_t K, int64_t tw, int64_t vw, int32_t *at) {
    const int64_t kq4 = K / 4;
    for (int64_t t0 = 0; t0 < T; t0 += tw) {
        const int64_t tn = T - t0 < tw ? T - t0 : tw;
        const int64_t lanes = (vw == 16 && tn <= 16) ? 16 : tw;
        int32_t *dst = at + t0 * kq4;
        for (int64_t kq = 0; kq < kq4; kq++)
            for (int64_t l = 0; l < lanes; l++) {
                int32_t v = 0;
                if (l < tn) memcpy(&v, q + (t0 + l) * K + kq * 4, 4);
                dst[kq * lanes + l] = v;
            }
    }
}

BK_T256 static void bk_i2s_unpack_rows_256(const uint8_t *w, int64_t K, int64_t rows, int64_t R, uint8_t *wu) {
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int64_t r = 0; r < R; r++) {
        uint8_t *dst = wu + r * K;
        if (r >= rows) { memset(dst, 0, K); continue; }
        const uint8_t *src = w + r * (K / 4);
        for (int64_t j = 0; j < K / 128; j++) {
            const __m256i b = _mm256_loadu_si256((const __m256i *)(src + j * 32));
            _mm256_storeu_si256((__m256i *)(dst + j * 128), _mm256_and_si256(_mm256_srli_epi16(b, 6), m3));
            _mm256_storeu_si256((__m256i *)(dst + j * 128 + 32), _mm256_and_si256(_mm256_srli_epi16(b, 4), m3));
            _mm256_storeu_si256((__m256i *)(dst + j * 128 + 64), _mm256_and_si256(_mm256_srli_epi16(b, 2), m3));
            _mm256_storeu_si256((__m256i *)(dst + j * 128 + 96), _mm256_and_si256(b, m3));
        }
    }
}

/* Microkernels with named accumulators (arrays of vectors made GCC spill them to the stack every step). */
#define BK_DP(c, b, a) c = _mm512_dpbusd_epi32(c, b, a)
#define BK_LD(r) ((const bk_i32u *)(wu + (r) * K))
BK_T512 static void bk_mk512_nv4_range(const uint8_t *wu, int64_t K, const int32_t *at, int64_t kq0, int64_t kq1,
                                       __m512i *out) {
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00;
    __m512i c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
    __m512i c40 = c00, c41 = c00, c42 = c00, c43 = c00, c50 = c00, c51 = c00, c52 = c00, c53 = c00;
    const bk_i32u *w0 = BK_LD(0), *w1 = BK_LD(1), *w2 = BK_LD(2), *w3 = BK_LD(3), *w4 = BK_LD(4), *w5 = BK_LD(5);
    for (int64_t kq = kq0; kq < kq1; kq++) {
        const int32_t *ap = at + kq * 64;
        const __m512i a0 = _mm512_loadu_si512(ap), a1 = _mm512_loadu_si512(ap + 16);
        const __m512i a2 = _mm512_loadu_si512(ap + 32), a3 = _mm512_loadu_si512(ap + 48);
        __m512i b;
        b = _mm512_set1_epi32(w0[kq]); BK_DP(c00, b, a0); BK_DP(c01, b, a1); BK_DP(c02, b, a2); BK_DP(c03, b, a3);
        b = _mm512_set1_epi32(w1[kq]); BK_DP(c10, b, a0); BK_DP(c11, b, a1); BK_DP(c12, b, a2); BK_DP(c13, b, a3);
        b = _mm512_set1_epi32(w2[kq]); BK_DP(c20, b, a0); BK_DP(c21, b, a1); BK_DP(c22, b, a2); BK_DP(c23, b, a3);
        b = _mm512_set1_epi32(w3[kq]); BK_DP(c30, b, a0); BK_DP(c31, b, a1); BK_DP(c32, b, a2); BK_DP(c33, b, a3);
        b = _mm512_set1_epi32(w4[kq]); BK_DP(c40, b, a0); BK_DP(c41, b, a1); BK_DP(c42, b, a2); BK_DP(c43, b, a3);
        b = _mm512_set1_epi32(w5[kq]); BK_DP(c50, b, a0); BK_DP(c51, b, a1); BK_DP(c52, b, a2); BK_DP(c53, b, a3);
    }
    out[0] = c00; out[1] = c01; out[2] = c02; out[3] = c03; out[4] = c10; out[5] = c11; out[6] = c12; out[7] = c13;
    out[8] = c20; out[9] = c21; out[10] = c22; out[11] = c23; out[12] = c30; out[13] = c31; out[14] = c32; out[15] = c33;
    out[16] = c40; out[17] = c41; out[18] = c42; out[19] = c43; out[20] = c50; out[21] = c51; out[22] = c52; out[23] = c53;
}

BK_T512 static void bk_mk512_nv1_range(const uint8_t *wu, int64_t K, const int32_t *at, int64_t kq0, int64_t kq1,
                                       __m512i *out) {
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
    const bk_i32u *w0 = BK_LD(0), *w1 = BK_LD(1), *w2 = BK_LD(2), *w3 = BK_LD(3), *w4 = BK_LD(4), *w5 = BK_LD(5);
    for (int64_t kq = kq0; kq < kq1; kq++) {
        const __m512i a = _mm512_loadu_si512(at + kq * 16);
        BK_DP(c0, _mm512_set1_epi32(w0[kq]), a);
        BK_DP(c1, _mm512_set1_epi32(w1[kq]), a);
        BK_DP(c2, _mm512_set1_epi32(w2[kq]), a);
        BK_DP(c3, _mm512_set1_epi32(w3[kq]), a);
        BK_DP(c4, _mm512_set1_epi32(w4[kq]), a);
        BK_DP(c5, _mm512_set1_epi32(w5[kq]), a);
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3; out[4] = c4; out[5] = c5;
}

#define BK_MA(c, b, a) c = _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(b, a), ones))
BK_T256 static void bk_mk256_nv2(const uint8_t *wu, int64_t K, const int32_t *at, __m256i *out) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    const bk_i32u *w0 = BK_LD(0), *w1 = BK_LD(1), *w2 = BK_LD(2), *w3 = BK_LD(3);
    const int64_t kq4 = K / 4;
    for (int64_t kq = 0; kq < kq4; kq++) {
        const __m256i a0 = _mm256_loadu_si256((const __m256i *)(at + kq * 16));
        const __m256i a1 = _mm256_loadu_si256((const __m256i *)(at + kq * 16 + 8));
        __m256i b;
        b = _mm256_set1_epi32(w0[kq]); BK_MA(c00, b, a0); BK_MA(c01, b, a1);
        b = _mm256_set1_epi32(w1[kq]); BK_MA(c10, b, a0); BK_MA(c11, b, a1);
        b = _mm256_set1_epi32(w2[kq]); BK_MA(c20, b, a0); BK_MA(c21, b, a1);
        b = _mm256_set1_epi32(w3[kq]); BK_MA(c30, b, a0); BK_MA(c31, b, a1);
    }
    out[0] = c00; out[1] = c01; out[2] = c10; out[3] = c11; out[4] = c20; out[5] = c21; out[6] = c30; out[7] = c31;
}

/* Epilogue shared by the paths: dot = acc - qsum; either int32 out or y = (float)dot / s * ws.              */
static inline void bk_store_dots(const int32_t *acc, int64_t nl, int64_t t0, int64_t n, int64_t N,
                                 const int32_t *qsum, const float *s, float ws, int32_t *yi, float *yf) {
    for (int64_t l = 0; l < nl; l++) {
        const int64_t t = t0 + l;
        const int32_t d = acc[l] - qsum[t];
        if (yi) yi[t * N + n] = d;
        else yf[t * N + n] = ((float)d / s[t]) * ws;
    }
}

BK_T512 static void bk_i2s_gemm_block_512(const uint8_t *w, int64_t N, int64_t K, int64_t n0, int64_t T,
                                          const int32_t *at, const int32_t *qsum, const float *s, float ws,
                                          int32_t *yi, float *yf, uint8_t *wu) {
    const int64_t rows = N - n0 < BK_R512 ? N - n0 : BK_R512;
    bk_i2s_unpack_rows_256(w + n0 * (K / 4), K, rows, BK_R512, wu);
    __m512i acc[BK_R512 * 4];
    int32_t tmp[16];
    for (int64_t t0 = 0; t0 < T; t0 += BK_TW512) {
        const int64_t tn = T - t0 < BK_TW512 ? T - t0 : BK_TW512;
        const int nv = tn <= 16 ? 1 : 4;
        const int32_t *a = at + t0 * (K / 4);
        if (nv == 1) bk_mk512_nv1_range(wu, K, a, 0, K / 4, acc);
        else bk_mk512_nv4_range(wu, K, a, 0, K / 4, acc);
        for (int64_t r = 0; r < rows; r++)
            for (int v = 0; v < nv; v++) {
                _mm512_storeu_si512(tmp, acc[r * nv + v]);
                const int64_t nl = tn - v * 16 < 16 ? (tn - v * 16 > 0 ? tn - v * 16 : 0) : 16;
                bk_store_dots(tmp, nl, t0 + v * 16, n0 + r, N, qsum, s, ws, yi, yf);
            }
    }
}

BK_T256 static void bk_i2s_gemm_block_256(const uint8_t *w, int64_t N, int64_t K, int64_t n0, int64_t T,
                                          const int32_t *at, const int32_t *qsum, const float *s, float ws,
                                          int32_t *yi, float *yf, uint8_t *wu) {
    const int64_t rows = N - n0 < BK_R256 ? N - n0 : BK_R256;
    bk_i2s_unpack_rows_256(w + n0 * (K / 4), K, rows, BK_R256, wu);
    __m256i acc[BK_R256 * 2];
    int32_t tmp[8];
    for (int64_t t0 = 0; t0 < T; t0 += BK_TW256) {
        const int64_t tn = T - t0 < BK_TW256 ? T - t0 : BK_TW256;
        const int nv = 2;
        const int32_t *a = at + t0 * (K / 4);
        bk_mk256_nv2(wu, K, a, acc);
        for (int64_t r = 0; r < rows; r++)
            for (int v = 0; v < nv; v++) {
                _mm256_storeu_si256((__m256i *)tmp, acc[r * nv + v]);
                const int64_t nl = tn - v * 8 < 8 ? (tn - v * 8 > 0 ? tn - v * 8 : 0) : 8;
                bk_store_dots(tmp, nl, t0 + v * 8, n0 + r, N, qsum, s, ws, yi, yf);
            }
    }
}

/* portable GEMM: one row at a time, codes reused by every token */
static void bk_i2s_gemm_block_c(const uint8_t *w, int64_t N, int64_t K, int64_t n0, int64_t n1, int64_t T,
                                const int8_t *q, const int32_t *qsum, const float *s, float ws, int32_t *yi,
                                float *yf, uint8_t *codes) {
    for (int64_t n = n0; n < n1; n++) {
        bk_i2s_unpack_row_c(w + n * (K / 4), K, codes);
        for (int64_t t = 0; t < T; t++) {
            const int8_t *qt = q + t * K;
            int32_t acc = 0;
            for (int64_t k = 0; k < K; k++) acc += (int32_t)codes[k] * qt[k];
            bk_store_dots(&acc, 1, t, n, N, qsum, s, ws, yi, yf);
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* TQ2_0 / TQ1_0 (llama.cpp) with Q8_K activations: per 256-block integer dot, float sum block by block.      */
/* Each row is unpacked to codes 0..2 in natural order (tiny, stays in L1), then dotted with every token.     */

static void bk_tq2_unpack_row(const uint8_t *w, int64_t K, uint8_t *codes) {
    for (int64_t b = 0; b < K / 256; b++) {
        const uint8_t *qs = w + b * 66;
        uint8_t *c = codes + b * 256;
        for (int h = 0; h < 2; h++)
            for (int j = 0; j < 4; j++)
                for (int m = 0; m < 32; m++) c[h * 128 + j * 32 + m] = (qs[h * 32 + m] >> (2 * j)) & 3;
    }
}

BK_T256 static void bk_tq2_unpack_row_256(const uint8_t *w, int64_t K, uint8_t *codes) {
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int64_t b = 0; b < K / 256; b++) {
        const uint8_t *qs = w + b * 66;
        uint8_t *c = codes + b * 256;
        for (int h = 0; h < 2; h++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + h * 32));
            _mm256_storeu_si256((__m256i *)(c + h * 128), _mm256_and_si256(v, m3));
            _mm256_storeu_si256((__m256i *)(c + h * 128 + 32), _mm256_and_si256(_mm256_srli_epi16(v, 2), m3));
            _mm256_storeu_si256((__m256i *)(c + h * 128 + 64), _mm256_and_si256(_mm256_srli_epi16(v, 4), m3));
            _mm256_storeu_si256((__m256i *)(c + h * 128 + 96), _mm256_and_si256(_mm256_srli_epi16(v, 6), m3));
        }
    }
}

static inline uint8_t bk_trit(uint8_t b, uint8_t pw) {
    const uint8_t t = (uint8_t)(b * pw);
    return (uint8_t)(((uint16_t)t * 3) >> 8);
}

static void bk_tq1_unpack_row(const uint8_t *w, int64_t K, uint8_t *codes) {
    static const uint8_t pw[5] = {1, 3, 9, 27, 81};
    for (int64_t b = 0; b < K / 256; b++) {
        const uint8_t *blk = w + b * 54;
        uint8_t *c = codes + b * 256;
        for (int n = 0; n < 5; n++)
            for (int m = 0; m < 32; m++) c[n * 32 + m] = bk_trit(blk[m], pw[n]);
        for (int n = 0; n < 5; n++)
            for (int m = 0; m < 16; m++) c[160 + n * 16 + m] = bk_trit(blk[32 + m], pw[n]);
        for (int n = 0; n < 4; n++)
            for (int m = 0; m < 4; m++) c[240 + n * 4 + m] = bk_trit(blk[48 + m], pw[n]);
    }
}

/* AVX2: digit n of byte b is ((uint8)(b * 3^n) * 3) >> 8; bytes are handled as even/odd halves of 16-bit    */
/* words so that no carry crosses a byte.                                                                      */
BK_T256 static inline __m256i bk_trits32(__m256i b, int pw) {
    const __m256i lo = _mm256_set1_epi16(0x00ff), p = _mm256_set1_epi16((short)pw), three = _mm256_set1_epi16(3);
    __m256i e = _mm256_and_si256(_mm256_mullo_epi16(_mm256_and_si256(b, lo), p), lo);
    __m256i o = _mm256_and_si256(_mm256_mullo_epi16(_mm256_srli_epi16(b, 8), p), lo);
    e = _mm256_srli_epi16(_mm256_mullo_epi16(e, three), 8);
    o = _mm256_srli_epi16(_mm256_mullo_epi16(o, three), 8);
    return _mm256_or_si256(e, _mm256_slli_epi16(o, 8));
}

BK_T256 static void bk_tq1_unpack_row_256(const uint8_t *w, int64_t K, uint8_t *codes) {
    static const uint8_t pw[5] = {1, 3, 9, 27, 81};
    for (int64_t b = 0; b < K / 256; b++) {
        const uint8_t *blk = w + b * 54;
        uint8_t *c = codes + b * 256;
        const __m256i q0 = _mm256_loadu_si256((const __m256i *)blk);
        const __m256i q1 = _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(blk + 32)));
        for (int n = 0; n < 5; n++) {
            _mm256_storeu_si256((__m256i *)(c + n * 32), bk_trits32(q0, pw[n]));
            _mm_storeu_si128((__m128i *)(c + 160 + n * 16), _mm256_castsi256_si128(bk_trits32(q1, pw[n])));
        }
        for (int n = 0; n < 4; n++)
            for (int m = 0; m < 4; m++) c[240 + n * 4 + m] = bk_trit(blk[48 + m], pw[n]);
    }
}

static inline float bk_tq_block_scale(const uint8_t *w, int qtype, int64_t b) {
    uint16_t h;
    memcpy(&h, w + (qtype == 2 ? b * 66 + 64 : b * 54 + 52), 2);
    return bk_h2f(h);
}

/* y[n] for one token: sum over blocks of (float)isum * (d_act * d_w), in block order */
static void bk_tq_row_c(const uint8_t *codes, const float *dw, int64_t K, const int8_t *q, const float *da,
                        const int32_t *bq, float *y) {
    float acc = 0.0f;
    for (int64_t b = 0; b < K / 256; b++) {
        int32_t s = 0;
        for (int k = 0; k < 256; k++) s += (int32_t)codes[b * 256 + k] * q[b * 256 + k];
        const float d = da[b] * dw[b];
        acc = acc + (float)(s - bq[b]) * d;
    }
    *y = acc;
}

BK_T256 static void bk_tq_row_256(const uint8_t *codes, const float *dw, int64_t K, const int8_t *q,
                                  const float *da, const int32_t *bq, float *y) {
    const __m256i ones = _mm256_set1_epi16(1);
    float acc = 0.0f;
    for (int64_t b = 0; b < K / 256; b++) {
        __m256i s = _mm256_setzero_si256();
        for (int i = 0; i < 8; i += 2) {
            __m256i p0 = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(codes + b * 256 + i * 32)),
                                              _mm256_loadu_si256((const __m256i *)(q + b * 256 + i * 32)));
            __m256i p1 = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(codes + b * 256 + i * 32 + 32)),
                                              _mm256_loadu_si256((const __m256i *)(q + b * 256 + i * 32 + 32)));
            s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones));
        }
        const float d = da[b] * dw[b];
        acc = acc + (float)(bk_hsum256(s) - bq[b]) * d;
    }
    *y = acc;
}

BK_T512 static void bk_tq_row_512(const uint8_t *codes, const float *dw, int64_t K, const int8_t *q,
                                  const float *da, const int32_t *bq, float *y) {
    float acc = 0.0f;
    const int64_t nb = K / 256;
    int64_t b = 0;
    /* two blocks per reduction: lane halves of one 512-bit vector hold the two block sums */
    for (; b + 2 <= nb; b += 2) {
        const uint8_t *c = codes + b * 256;
        const int8_t *a = q + b * 256;
        __m512i s0 = _mm512_setzero_si512(), s1 = s0;
        for (int i = 0; i < 4; i++) {
            s0 = _mm512_dpbusd_epi32(s0, _mm512_loadu_si512(c + i * 64), _mm512_loadu_si512(a + i * 64));
            s1 = _mm512_dpbusd_epi32(s1, _mm512_loadu_si512(c + 256 + i * 64), _mm512_loadu_si512(a + 256 + i * 64));
        }
        const int32_t i0 = _mm512_reduce_add_epi32(s0), i1 = _mm512_reduce_add_epi32(s1);
        const float d0 = da[b] * dw[b], d1 = da[b + 1] * dw[b + 1];
        acc = acc + (float)(i0 - bq[b]) * d0;
        acc = acc + (float)(i1 - bq[b + 1]) * d1;
    }
    for (; b < nb; b++) {
        __m512i s0 = _mm512_setzero_si512();
        for (int i = 0; i < 4; i++)
            s0 = _mm512_dpbusd_epi32(s0, _mm512_loadu_si512(codes + b * 256 + i * 64), _mm512_loadu_si512(q + b * 256 + i * 64));
        const float d = da[b] * dw[b];
        acc = acc + (float)(_mm512_reduce_add_epi32(s0) - bq[b]) * d;
    }
    *y = acc;
}

/* TQ2_0 decode on VNNI: codes extracted in registers straight from the 66-byte blocks (no codes buffer); */
/* group j of half h holds x[h*128 + j*32 + m], so the activations stay in natural order.                    */
/* one 256-weight block's integer dot (codes 0..2 against int8 activations) */
BK_T512 static inline int32_t bk_tq2_block_512(const uint8_t *blk, const int8_t *a, __m256i m3) {
    const __m256i v0 = _mm256_loadu_si256((const __m256i *)blk), v1 = _mm256_loadu_si256((const __m256i *)(blk + 32));
    __m256i s0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_and_si256(v0, m3), _mm256_loadu_si256((const __m256i *)a));
    __m256i s1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_and_si256(v1, m3), _mm256_loadu_si256((const __m256i *)(a + 128)));
    s0 = _mm256_dpbusd_epi32(s0, _mm256_and_si256(_mm256_srli_epi16(v0, 2), m3), _mm256_loadu_si256((const __m256i *)(a + 32)));
    s1 = _mm256_dpbusd_epi32(s1, _mm256_and_si256(_mm256_srli_epi16(v1, 2), m3), _mm256_loadu_si256((const __m256i *)(a + 160)));
    s0 = _mm256_dpbusd_epi32(s0, _mm256_and_si256(_mm256_srli_epi16(v0, 4), m3), _mm256_loadu_si256((const __m256i *)(a + 64)));
    s1 = _mm256_dpbusd_epi32(s1, _mm256_and_si256(_mm256_srli_epi16(v1, 4), m3), _mm256_loadu_si256((const __m256i *)(a + 192)));
    s0 = _mm256_dpbusd_epi32(s0, _mm256_and_si256(_mm256_srli_epi16(v0, 6), m3), _mm256_loadu_si256((const __m256i *)(a + 96)));
    s1 = _mm256_dpbusd_epi32(s1, _mm256_and_si256(_mm256_srli_epi16(v1, 6), m3), _mm256_loadu_si256((const __m256i *)(a + 224)));
    return bk_hsum256(_mm256_add_epi32(s0, s1));
}
BK_T512 static void bk_tq2_rows_512(const uint8_t *w, int64_t K, const int8_t *q, const float *da,
                                    const int32_t *bq, int64_t n0, int64_t n1, float *y) {
    const int64_t nb = K / 256;
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *wr = w + n * nb * 66;
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = wr + b * 66;
            const int8_t *a = q + b * 256;
            uint16_t h;
            memcpy(&h, blk + 64, 2);
            const float d = da[b] * _cvtsh_ss(h);
            acc = acc + (float)(bk_tq2_block_512(blk, a, m3) - bq[b]) * d;
        }
        y[n - n0] = acc;
    }
}

/* two rows far apart in lockstep (see bk_i2s_gemv2_512); per-row arithmetic as bk_tq2_rows_512 */
BK_T512 static void bk_tq2_rows2_512(const uint8_t *wa0, const uint8_t *wb0, int64_t K, const int8_t *q,
                                     const float *da, const int32_t *bq, int64_t n, float *ya, float *yb) {
    const int64_t nb = K / 256;
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *wa = wa0 + i * nb * 66, *wb = wb0 + i * nb * 66;
        float acc = 0.0f, bcc = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *ba = wa + b * 66, *bb = wb + b * 66;
            const int8_t *a = q + b * 256;
            /* the integer parts first (both streams' loads issue together), then each row's float step */
            const int32_t ia = bk_tq2_block_512(ba, a, m3), ib = bk_tq2_block_512(bb, a, m3);
            uint16_t ha, hb;
            memcpy(&ha, ba + 64, 2);
            memcpy(&hb, bb + 64, 2);
            acc = acc + (float)(ia - bq[b]) * (da[b] * _cvtsh_ss(ha));
            bcc = bcc + (float)(ib - bq[b]) * (da[b] * _cvtsh_ss(hb));
        }
        ya[i] = acc;
        yb[i] = bcc;
    }
}

BK_T256 static void bk_tq_scales_256(const uint8_t *w, int qtype, int64_t nb, float *dw) {
    for (int64_t b = 0; b < nb; b++) {
        uint16_t h;
        memcpy(&h, w + (qtype == 2 ? b * 66 + 64 : b * 54 + 52), 2);
        dw[b] = _cvtsh_ss(h);
    }
}

/* TQ in llama.cpp's AVX2 lane order (the engine's `llama` numerics): per 256-block, eight int32 lanes; lane m */
/* sums code*q over weights 32j + 4m + p (j < 8, p < 4) minus the sum of activations 32m .. 32m+31 (lb);      */
/* acc[m] = fma((float)lane, d_act * d_w, acc[m]) across blocks; y = ((r0 + r2) + (r1 + r3)), r = acc_hi + acc_lo. */
static void bk_tq_lanes_row_c(const uint8_t *codes, const float *dw, int64_t K, const int8_t *q, const float *da,
                              const int32_t *lb, float *y) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t b = 0; b < K / 256; b++) {
        const float d = da[b] * dw[b];
        for (int m = 0; m < 8; m++) {
            int32_t s = 0;
            for (int j = 0; j < 8; j++)
                for (int p = 0; p < 4; p++) {
                    const int64_t k = b * 256 + 32 * j + 4 * m + p;
                    s += (int32_t)codes[k] * q[k];
                }
            acc[m] = fmaf((float)(s - lb[b * 8 + m]), d, acc[m]);
        }
    }
    float r[4];
    for (int i = 0; i < 4; i++) r[i] = acc[4 + i] + acc[i];
    *y = (r[0] + r[2]) + (r[1] + r[3]);
}

BK_T256 static inline float bk_hsum8_llama(__m256 acc) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

BK_T256 static void bk_tq_lanes_row_256(const uint8_t *codes, const float *dw, int64_t K, const int8_t *q,
                                        const float *da, const int32_t *lb, float *y) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < K / 256; b++) {
        __m256i s = _mm256_setzero_si256();
        for (int j = 0; j < 8; j++)
            s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(
                    _mm256_loadu_si256((const __m256i *)(codes + b * 256 + 32 * j)),
                    _mm256_loadu_si256((const __m256i *)(q + b * 256 + 32 * j))), ones));
        s = _mm256_sub_epi32(s, _mm256_loadu_si256((const __m256i *)(lb + b * 8)));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(da[b] * dw[b]), acc);
    }
    *y = bk_hsum8_llama(acc);
}

BK_T512 static void bk_tq_lanes_row_512(const uint8_t *codes, const float *dw, int64_t K, const int8_t *q,
                                        const float *da, const int32_t *lb, float *y) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < K / 256; b++) {
        __m256i s0 = _mm256_setzero_si256(), s1 = s0;
        for (int j = 0; j < 8; j += 2) {
            s0 = _mm256_dpbusd_epi32(s0, _mm256_loadu_si256((const __m256i *)(codes + b * 256 + 32 * j)),
                                     _mm256_loadu_si256((const __m256i *)(q + b * 256 + 32 * j)));
            s1 = _mm256_dpbusd_epi32(s1, _mm256_loadu_si256((const __m256i *)(codes + b * 256 + 32 * j + 32)),
                                     _mm256_loadu_si256((const __m256i *)(q + b * 256 + 32 * j + 32)));
        }
        const __m256i s = _mm256_sub_epi32(_mm256_add_epi32(s0, s1), _mm256_loadu_si256((const __m256i *)(lb + b * 8)));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(da[b] * dw[b]), acc);
    }
    *y = bk_hsum8_llama(acc);
}

/* TQ GEMM (VNNI, T >= 2): the I2_S microkernel run one 256-weight block at a time; after each block the      */
/* integer sums are turned into y += (float)(isum - bsum) * (d_act * d_w), per token lane, in block order     */
/* (bitwise the scalar order). daT/bqT: (nb, Tpad) block scales and sums per token, zero past the last token. */
BK_T512 static void bk_tq_gemm_block_512(const uint8_t *w, int qtype, int64_t N, int64_t K, int64_t n0, int64_t T,
                                         int64_t Tpad, const int32_t *at, const float *daT, const int32_t *bqT,
                                         float *y, uint8_t *wu) {
    const int64_t nb = K / 256, bpb = qtype == 2 ? 66 : 54;
    const int64_t rows = N - n0 < BK_R512 ? N - n0 : BK_R512;
    float dw[BK_R512][64];  /* nb <= 64 (K <= 16384), checked by the caller */
    for (int64_t r = 0; r < BK_R512; r++) {
        uint8_t *dst = wu + r * K;
        if (r >= rows) { memset(dst, 0, K); for (int64_t b = 0; b < nb; b++) dw[r][b] = 0.0f; continue; }
        const uint8_t *src = w + (n0 + r) * nb * bpb;
        if (qtype == 2) bk_tq2_unpack_row_256(src, K, dst);
        else bk_tq1_unpack_row_256(src, K, dst);
        bk_tq_scales_256(src, qtype, nb, dw[r]);
    }
    __m512i acc[BK_R512 * 4];
    __m512 yv[BK_R512 * 4];
    float tmp[16];
    for (int64_t t0 = 0; t0 < T; t0 += BK_TW512) {
        const int64_t tn = T - t0 < BK_TW512 ? T - t0 : BK_TW512;
        const int nv = tn <= 16 ? 1 : 4;
        const int32_t *a = at + t0 * (K / 4);
        for (int i = 0; i < BK_R512 * nv; i++) yv[i] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            if (nv == 1) bk_mk512_nv1_range(wu, K, a, b * 64, b * 64 + 64, acc);
            else bk_mk512_nv4_range(wu, K, a, b * 64, b * 64 + 64, acc);
            for (int v = 0; v < nv; v++) {
                const __m512 da = _mm512_loadu_ps(daT + b * Tpad + t0 + v * 16);
                const __m512i bq = _mm512_loadu_si512(bqT + b * Tpad + t0 + v * 16);
                for (int64_t r = 0; r < BK_R512; r++) {
                    const __m512 d = _mm512_mul_ps(da, _mm512_set1_ps(dw[r][b]));
                    const __m512 s = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r * nv + v], bq));
                    yv[r * nv + v] = _mm512_add_ps(yv[r * nv + v], _mm512_mul_ps(s, d));
                }
            }
        }
        for (int64_t r = 0; r < rows; r++)
            for (int v = 0; v < nv; v++) {
                _mm512_storeu_ps(tmp, yv[r * nv + v]);
                for (int64_t l = 0; l < 16 && v * 16 + l < tn; l++) y[(t0 + v * 16 + l) * N + n0 + r] = tmp[l];
            }
    }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* F16 GEMV (LM head): rows of w (f16) dotted with up to 4 tokens at a time, float32 accumulation            */

BK_T512 static inline float bk_hadd512(__m512 v) { return _mm512_reduce_add_ps(v); }

BK_T512 static void bk_f16_rows_512(const uint16_t *w, int64_t K, const float *x, int64_t T, int64_t N,
                                    int64_t n0, int64_t n1, float *y) {
    for (int64_t n = n0; n < n1; n++) {
        const uint16_t *wr = w + n * K;
        if (T == 1) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int64_t k = 0;
            for (; k + 64 <= K; k += 64) {
                a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wr + k))), _mm512_loadu_ps(x + k), a0);
                a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wr + k + 16))), _mm512_loadu_ps(x + k + 16), a1);
                a2 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wr + k + 32))), _mm512_loadu_ps(x + k + 32), a2);
                a3 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wr + k + 48))), _mm512_loadu_ps(x + k + 48), a3);
            }
            for (; k + 16 <= K; k += 16)
                a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wr + k))), _mm512_loadu_ps(x + k), a0);
            float s = bk_hadd512(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
            for (; k < K; k++) s += _cvtsh_ss(wr[k]) * x[k];
            y[n] = s;
            continue;
        }
        for (int64_t t0 = 0; t0 < T; t0 += 4) {
            const int64_t tn = T - t0 < 4 ? T - t0 : 4;
            const float *x0 = x + t0 * K, *x1 = x0 + (tn > 1 ? K : 0), *x2 = x0 + (tn > 2 ? 2 * K : 0), *x3 = x0 + (tn > 3 ? 3 * K : 0);
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int64_t k = 0;
            for (; k + 16 <= K; k += 16) {
                const __m512 wv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wr + k)));
                a0 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x0 + k), a0);
                a1 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x1 + k), a1);
                a2 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x2 + k), a2);
                a3 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x3 + k), a3);
            }
            float s[4] = {bk_hadd512(a0), bk_hadd512(a1), bk_hadd512(a2), bk_hadd512(a3)};
            const float *xs[4] = {x0, x1, x2, x3};
            for (; k < K; k++) {
                const float wk = _cvtsh_ss(wr[k]);
                for (int i = 0; i < 4; i++) s[i] += wk * xs[i][k];
            }
            for (int64_t i = 0; i < tn; i++) y[(t0 + i) * N + n] = s[i];
        }
    }
}

BK_T256 static inline float bk_hadd256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

BK_T256 static void bk_f16_rows_256(const uint16_t *w, int64_t K, const float *x, int64_t T, int64_t N,
                                    int64_t n0, int64_t n1, float *y) {
    for (int64_t n = n0; n < n1; n++) {
        const uint16_t *wr = w + n * K;
        for (int64_t t0 = 0; t0 < T; t0 += 2) {
            const int64_t tn = T - t0 < 2 ? T - t0 : 2;
            const float *x0 = x + t0 * K, *x1 = x0 + (tn > 1 ? K : 0);
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
            int64_t k = 0;
            for (; k + 16 <= K; k += 16) {
                const __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wr + k)));
                const __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wr + k + 8)));
                a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0 + k), a0);
                a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x0 + k + 8), a1);
                b0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x1 + k), b0);
                b1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x1 + k + 8), b1);
            }
            float s0 = bk_hadd256(_mm256_add_ps(a0, a1)), s1 = bk_hadd256(_mm256_add_ps(b0, b1));
            for (; k < K; k++) {
                const float wk = _cvtsh_ss(wr[k]);
                s0 += wk * x0[k];
                s1 += wk * x1[k];
            }
            y[t0 * N + n] = s0;
            if (tn > 1) y[(t0 + 1) * N + n] = s1;
        }
    }
}

/* One token, two rows far apart in lockstep (see bk_i2s_gemv2_512): n rows at wa and n rows at wb. Per row */
/* the arithmetic (accumulators, order, tails) is the one-token path's above, so results are bit-identical.  */
BK_T512 static void bk_f16_gemv2_512(const uint16_t *wa0, const uint16_t *wb0, int64_t K, const float *x, int64_t n,
                                     float *ya, float *yb) {
    /* x is read as each FMA's memory operand, once per row (from L1): 4.75 instructions per 64-byte weight line
     * instead of 5.75 with x loaded once into registers for both rows, which read the head from DRAM 3-4% slower
     * at one thread (31.3 -> 32.5 and 32.1 -> 33.1 GB/s over the 2B-4T head, same process, alternating). */
    for (int64_t i = 0; i < n; i++) {
        const uint16_t *wa = wa0 + i * K, *wb = wb0 + i * K;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        int64_t k = 0;
        for (; k + 64 <= K; k += 64) {
            a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wa + k))), _mm512_loadu_ps(x + k), a0);
            b0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wb + k))), _mm512_loadu_ps(x + k), b0);
            a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wa + k + 16))), _mm512_loadu_ps(x + k + 16), a1);
            b1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wb + k + 16))), _mm512_loadu_ps(x + k + 16), b1);
            a2 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wa + k + 32))), _mm512_loadu_ps(x + k + 32), a2);
            b2 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wb + k + 32))), _mm512_loadu_ps(x + k + 32), b2);
            a3 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wa + k + 48))), _mm512_loadu_ps(x + k + 48), a3);
            b3 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wb + k + 48))), _mm512_loadu_ps(x + k + 48), b3);
        }
        for (; k + 16 <= K; k += 16) {
            const __m512 xv = _mm512_loadu_ps(x + k);
            a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wa + k))), xv, a0);
            b0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wb + k))), xv, b0);
        }
        float sa = bk_hadd512(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        float sb = bk_hadd512(_mm512_add_ps(_mm512_add_ps(b0, b1), _mm512_add_ps(b2, b3)));
        for (; k < K; k++) {
            sa += _cvtsh_ss(wa[k]) * x[k];
            sb += _cvtsh_ss(wb[k]) * x[k];
        }
        ya[i] = sa;
        yb[i] = sb;
    }
}

BK_T256 static void bk_f16_gemv2_256(const uint16_t *wa0, const uint16_t *wb0, int64_t K, const float *x, int64_t n,
                                     float *ya, float *yb) {
    for (int64_t i = 0; i < n; i++) {
        const uint16_t *wa = wa0 + i * K, *wb = wb0 + i * K;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
        int64_t k = 0;
        for (; k + 16 <= K; k += 16) {
            const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
            a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wa + k))), x0, a0);
            b0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wb + k))), x0, b0);
            a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wa + k + 8))), x1, a1);
            b1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wb + k + 8))), x1, b1);
        }
        float sa = bk_hadd256(_mm256_add_ps(a0, a1)), sb = bk_hadd256(_mm256_add_ps(b0, b1));
        for (; k < K; k++) {
            sa += _cvtsh_ss(wa[k]) * x[k];
            sb += _cvtsh_ss(wb[k]) * x[k];
        }
        ya[i] = sa;
        yb[i] = sb;
    }
}

static void bk_f16_rows_c(const uint16_t *w, int64_t K, const float *x, int64_t T, int64_t N, int64_t n0,
                          int64_t n1, float *y, float *wf) {
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t k = 0; k < K; k++) wf[k] = bk_h2f(w[n * K + k]);
        for (int64_t t = 0; t < T; t++) {
            float s = 0.0f;
            for (int64_t k = 0; k < K; k++) s += wf[k] * x[t * K + k];
            y[t * N + n] = s;
        }
    }
}

/* int8 head: row absmax quantization of f16 rows, and int8 x int8 GEMV */
BK_T256 static void bk_h2f_row_256(const uint16_t *w, int64_t K, float *wf) {
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) _mm256_storeu_ps(wf + k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + k))));
    for (; k < K; k++) wf[k] = _cvtsh_ss(w[k]);
}

/* one row with F16C/AVX2: the same float32 operations as the portable loop (abs, max, mul, round-half-even) */
BK_T256 static void bk_q8_prepare_row_256(const uint16_t *w, int64_t K, int8_t *q, float *scale) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 vmax = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8)
        vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + k))), absmask));
    float t[8];
    _mm256_storeu_ps(t, vmax);
    float amax = 0.0f;
    for (int i = 0; i < 8; i++) amax = t[i] > amax ? t[i] : amax;
    for (; k < K; k++) { const float a = fabsf(_cvtsh_ss(w[k])); amax = a > amax ? a : amax; }
    if (amax == 0.0f) { memset(q, 0, K); *scale = 0.0f; return; }
    const float s = 127.0f / amax;
    const __m256 vs = _mm256_set1_ps(s);
    int32_t it[8];
    for (k = 0; k + 8 <= K; k += 8) {
        const __m256i i = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + k))), vs));
        _mm256_storeu_si256((__m256i *)it, i);
        for (int j = 0; j < 8; j++) q[k + j] = (int8_t)it[j];
    }
    for (; k < K; k++) q[k] = (int8_t)nearbyintf(_cvtsh_ss(w[k]) * s);
    *scale = amax / 127.0f;
}

static void bk_q8_prepare_rows(int isa, const uint16_t *w, int64_t K, int64_t n0, int64_t n1, int8_t *q,
                               float *scale, float *wf) {
    for (int64_t n = n0; n < n1; n++) {
        if (isa != BK_PORTABLE) {
            bk_q8_prepare_row_256(w + n * K, K, q + n * K, scale + n);
            continue;
        }
        for (int64_t k = 0; k < K; k++) wf[k] = bk_h2f(w[n * K + k]);
        float amax = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            const float a = fabsf(wf[k]);
            amax = a > amax ? a : amax;
        }
        int8_t *qr = q + n * K;
        if (amax == 0.0f) {
            memset(qr, 0, K);
            scale[n] = 0.0f;
            continue;
        }
        const float s = 127.0f / amax;
        for (int64_t k = 0; k < K; k++) qr[k] = (int8_t)nearbyintf(wf[k] * s);
        scale[n] = amax / 127.0f;
    }
}

/* VNNI: activations made unsigned (q + 128); the 128 * sum(w) offset is removed with a second dpbusd. */
BK_T512 static void bk_q8_rows_512(const int8_t *w, const float *wscale, int64_t K, const uint8_t *xu,
                                   const float *s, int64_t T, int64_t N, int64_t n0, int64_t n1, float *y) {
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *wr = w + n * K;
        for (int64_t t0 = 0; t0 < T; t0 += 4) {
            const int64_t tn = T - t0 < 4 ? T - t0 : 4;
            const uint8_t *x0 = xu + t0 * K, *x1 = x0 + (tn > 1 ? K : 0), *x2 = x0 + (tn > 2 ? 2 * K : 0), *x3 = x0 + (tn > 3 ? 3 * K : 0);
            __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, sw = a0;
            int64_t k = 0;
            for (; k + 64 <= K; k += 64) {
                const __m512i wv = _mm512_loadu_si512(wr + k);
                sw = _mm512_dpbusd_epi32(sw, ones, wv);
                a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(x0 + k), wv);
                if (tn > 1) a1 = _mm512_dpbusd_epi32(a1, _mm512_loadu_si512(x1 + k), wv);
                if (tn > 2) a2 = _mm512_dpbusd_epi32(a2, _mm512_loadu_si512(x2 + k), wv);
                if (tn > 3) a3 = _mm512_dpbusd_epi32(a3, _mm512_loadu_si512(x3 + k), wv);
            }
            int32_t d[4] = {_mm512_reduce_add_epi32(a0), _mm512_reduce_add_epi32(a1), _mm512_reduce_add_epi32(a2),
                            _mm512_reduce_add_epi32(a3)};
            int32_t swi = _mm512_reduce_add_epi32(sw);
            const uint8_t *xs[4] = {x0, x1, x2, x3};
            for (; k < K; k++) {
                swi += wr[k];
                for (int i = 0; i < 4; i++) d[i] += (int32_t)xs[i][k] * wr[k];
            }
            for (int64_t i = 0; i < tn; i++) {
                const int32_t dot = d[i] - 128 * swi;
                y[(t0 + i) * N + n] = ((float)dot / s[t0 + i]) * wscale[n];
            }
        }
    }
}

/* AVX2: maddubs(|w|, sign(x, w)): |w| <= 128, |x| <= 127, pairs stay below 32767 */
BK_T256 static void bk_q8_rows_256(const int8_t *w, const float *wscale, int64_t K, const int8_t *xq,
                                   const float *s, int64_t T, int64_t N, int64_t n0, int64_t n1, float *y) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *wr = w + n * K;
        for (int64_t t = 0; t < T; t++) {
            const int8_t *xt = xq + t * K;
            __m256i acc = _mm256_setzero_si256();
            int64_t k = 0;
            for (; k + 32 <= K; k += 32) {
                const __m256i wv = _mm256_loadu_si256((const __m256i *)(wr + k));
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(xt + k));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(xv, wv)), ones));
            }
            int32_t dot = bk_hsum256(acc);
            for (; k < K; k++) dot += (int32_t)xt[k] * wr[k];
            y[t * N + n] = ((float)dot / s[t]) * wscale[n];
        }
    }
}

/* int8 head, one token, two rows far apart in lockstep; per-row arithmetic as the one-token paths above */
BK_T512 static void bk_q8_gemv2_512(const int8_t *w, const float *wscale, int64_t K, const uint8_t *xu, float s,
                                    int64_t na0, int64_t nb0, int64_t n, float *y) {
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t i = 0; i < n; i++) {
        const int8_t *wa = w + (na0 + i) * K, *wb = w + (nb0 + i) * K;
        __m512i a0 = _mm512_setzero_si512(), sa = a0, b0 = a0, sb = a0;
        int64_t k = 0;
        for (; k + 64 <= K; k += 64) {
            const __m512i xv = _mm512_loadu_si512(xu + k);
            const __m512i va = _mm512_loadu_si512(wa + k), vb = _mm512_loadu_si512(wb + k);
            sa = _mm512_dpbusd_epi32(sa, ones, va);
            a0 = _mm512_dpbusd_epi32(a0, xv, va);
            sb = _mm512_dpbusd_epi32(sb, ones, vb);
            b0 = _mm512_dpbusd_epi32(b0, xv, vb);
        }
        int32_t da = _mm512_reduce_add_epi32(a0), db = _mm512_reduce_add_epi32(b0);
        int32_t swa = _mm512_reduce_add_epi32(sa), swb = _mm512_reduce_add_epi32(sb);
        for (; k < K; k++) {
            swa += wa[k];
            swb += wb[k];
            da += (int32_t)xu[k] * wa[k];
            db += (int32_t)xu[k] * wb[k];
        }
        y[na0 + i] = ((float)(da - 128 * swa) / s) * wscale[na0 + i];
        y[nb0 + i] = ((float)(db - 128 * swb) / s) * wscale[nb0 + i];
    }
}

BK_T256 static void bk_q8_gemv2_256(const int8_t *w, const float *wscale, int64_t K, const int8_t *xq, float s,
                                    int64_t na0, int64_t nb0, int64_t n, float *y) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t i = 0; i < n; i++) {
        const int8_t *wa = w + (na0 + i) * K, *wb = w + (nb0 + i) * K;
        __m256i acc = _mm256_setzero_si256(), bcc = acc;
        int64_t k = 0;
        for (; k + 32 <= K; k += 32) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + k));
            const __m256i va = _mm256_loadu_si256((const __m256i *)(wa + k)), vb = _mm256_loadu_si256((const __m256i *)(wb + k));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(va), _mm256_sign_epi8(xv, va)), ones));
            bcc = _mm256_add_epi32(bcc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(vb), _mm256_sign_epi8(xv, vb)), ones));
        }
        int32_t da = bk_hsum256(acc), db = bk_hsum256(bcc);
        for (; k < K; k++) {
            da += (int32_t)xq[k] * wa[k];
            db += (int32_t)xq[k] * wb[k];
        }
        y[na0 + i] = ((float)da / s) * wscale[na0 + i];
        y[nb0 + i] = ((float)db / s) * wscale[nb0 + i];
    }
}

static void bk_q8_rows_c(const int8_t *w, const float *wscale, int64_t K, const int8_t *xq, const float *s,
                         int64_t T, int64_t N, int64_t n0, int64_t n1, float *y) {
    for (int64_t n = n0; n < n1; n++)
        for (int64_t t = 0; t < T; t++) {
            int32_t dot = 0;
            for (int64_t k = 0; k < K; k++) dot += (int32_t)xq[t * K + k] * w[n * K + k];
            y[t * N + n] = ((float)dot / s[t]) * wscale[n];
        }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Float parts                                                                                                */

/* ggml's RMSNorm: sum of float x*x in double, mean = (float)(sum / K), y = (x * (1/sqrtf(mean + eps))) * w.   */
/* The double sum uses 8 partial sums (the result rounds to the same float as a sequential sum but for ties). */
#define BK_DEF_RMSNORM(SUF, ATTR)                                                                                 \
    ATTR static void bk_rmsnorm_row_##SUF(const float *x, const float *w, int64_t K, float eps, float *y) {       \
        double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                                 \
        int64_t k = 0;                                                                                            \
        for (; k + 8 <= K; k += 8)                                                                                \
            for (int i = 0; i < 8; i++) acc[i] += (double)(x[k + i] * x[k + i]);                                  \
        double sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));          \
        for (; k < K; k++) sum += (double)(x[k] * x[k]);                                                          \
        const float mean = (float)(sum / (double)K);                                                              \
        const float sc = 1.0f / sqrtf(mean + eps);                                                                \
        for (k = 0; k < K; k++) y[k] = (x[k] * sc) * w[k];                                                        \
    }
BK_DEF_RMSNORM(c, )
BK_DEF_RMSNORM(256, BK_T256)
BK_DEF_RMSNORM(512, BK_T512)

/* NEOX RoPE for one token, all heads: pairs (i, i + n_rot/2); theta_i = pos * base^(-2i/n_rot) built by      */
/* repeated multiplication in float (ggml), cosf/sinf from libm, rotation contracted to FMA (ggml).           */
#define BK_DEF_ROPE(SUF, ATTR)                                                                                    \
    ATTR static void bk_rope_apply_##SUF(float *x, int64_t H, int64_t D, int64_t half, const float *c,            \
                                         const float *s) {                                                        \
        for (int64_t h = 0; h < H; h++) {                                                                         \
            float *xh = x + h * D;                                                                                \
            for (int64_t i = 0; i < half; i++) {                                                                  \
                const float x0 = xh[i], x1 = xh[i + half];                                                        \
                xh[i] = fmaf(x0, c[i], -(x1 * s[i]));                                                             \
                xh[i + half] = fmaf(x0, s[i], x1 * c[i]);                                                         \
            }                                                                                                     \
        }                                                                                                         \
    }
BK_DEF_ROPE(c, )
BK_DEF_ROPE(256, BK_T256)
BK_DEF_ROPE(512, BK_T512)

static void bk_rope_cache(float pos, float theta_scale, int64_t half, float *c, float *s) {
    float theta = pos;
    for (int64_t i = 0; i < half; i++) {
        c[i] = cosf(theta);
        s[i] = sinf(theta);
        theta *= theta_scale;
    }
}

/* relu(g)^2 * u and silu(g) * u = g / (1 + exp(-g)) * u */
static void bk_relu2_mul_c(const float *g, const float *u, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float r = g[i] > 0.0f ? g[i] : 0.0f;
        y[i] = (r * r) * u[i];
    }
}
BK_T512 static void bk_relu2_mul_512(const float *g, const float *u, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 r = _mm512_max_ps(_mm512_loadu_ps(g + i), _mm512_setzero_ps());
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_mul_ps(r, r), _mm512_loadu_ps(u + i)));
    }
    bk_relu2_mul_c(g + i, u + i, y + i, n - i);
}
BK_T256 static void bk_relu2_mul_256(const float *g, const float *u, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 r = _mm256_max_ps(_mm256_loadu_ps(g + i), _mm256_setzero_ps());
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(r, r), _mm256_loadu_ps(u + i)));
    }
    bk_relu2_mul_c(g + i, u + i, y + i, n - i);
}

static void bk_silu_mul_c(const float *g, const float *u, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = (g[i] / (1.0f + expf(-g[i]))) * u[i];
}
BK_T512 static void bk_silu_mul_512(const float *g, const float *u, float *y, int64_t n) {
    int64_t i = 0;
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        const __m512 gv = _mm512_loadu_ps(g + i);
        const __m512 e = bk_exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(one, e)), _mm512_loadu_ps(u + i)));
    }
    bk_silu_mul_c(g + i, u + i, y + i, n - i);
}
BK_T256 static void bk_silu_mul_256(const float *g, const float *u, float *y, int64_t n) {
    int64_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 e = bk_exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    bk_silu_mul_c(g + i, u + i, y + i, n - i);
}

/* softmax of one row in place: max, exp(x - max), sum, scale by 1/sum */
static void bk_softmax_row_c(float *x, int64_t n) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}
BK_T512 static void bk_softmax_row_512(float *x, int64_t n) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    const __m512 vm = _mm512_set1_ps(mx);
    double sum = 0.0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 e = bk_exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
        _mm512_storeu_ps(x + i, e);
        sum += (double)_mm512_reduce_add_ps(e);
    }
    for (; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    const float inv = (float)(1.0 / sum);
    for (i = 0; i < n; i++) x[i] *= inv;
}
BK_T256 static void bk_softmax_row_256(float *x, int64_t n) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    const __m256 vm = _mm256_set1_ps(mx);
    double sum = 0.0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 e = bk_exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        sum += (double)bk_hadd256(e);
    }
    for (; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    const float inv = (float)(1.0 / sum);
    for (i = 0; i < n; i++) x[i] *= inv;
}

/* Attention of one (token, head): scores over cache positions [0, n), softmax, weighted sum of V rows.       */
/* Each score is one FMA chain over d and each output block one chain over j, in the same order as ever (so   */
/* the same bits); four keys' chains, and up to eight output blocks' chains, run side by side so that the FMA */
/* latency overlaps (one chain at a time left the core waiting 4 cycles an FMA).                              */
#define BK_KDOT(acc, kj, d) acc = _mm512_fmadd_ps(qd, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((kj) + (d)))), acc)
BK_T512 static inline float bk_attn_tail(const float *q, const uint16_t *kj, int64_t d, int64_t D, float s) {
    for (; d < D; d++) s += q[d] * _cvtsh_ss(kj[d]);
    return s;
}
BK_T512 static void bk_attn_one_512(const float *q, const uint16_t *k, const uint16_t *v, int64_t D, int64_t n,
                                    float scale, float *sc, float *out) {
    const int64_t D16 = D & ~(int64_t)15;
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        const uint16_t *k0 = k + j * D, *k1 = k0 + D, *k2 = k1 + D, *k3 = k2 + D;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t d = 0; d < D16; d += 16) {
            const __m512 qd = _mm512_loadu_ps(q + d);
            BK_KDOT(a0, k0, d);
            BK_KDOT(a1, k1, d);
            BK_KDOT(a2, k2, d);
            BK_KDOT(a3, k3, d);
        }
        sc[j] = bk_attn_tail(q, k0, D16, D, _mm512_reduce_add_ps(a0)) * scale;
        sc[j + 1] = bk_attn_tail(q, k1, D16, D, _mm512_reduce_add_ps(a1)) * scale;
        sc[j + 2] = bk_attn_tail(q, k2, D16, D, _mm512_reduce_add_ps(a2)) * scale;
        sc[j + 3] = bk_attn_tail(q, k3, D16, D, _mm512_reduce_add_ps(a3)) * scale;
    }
    for (; j < n; j++) {
        const uint16_t *kj = k + j * D;
        __m512 a = _mm512_setzero_ps();
        for (int64_t d = 0; d < D16; d += 16) {
            const __m512 qd = _mm512_loadu_ps(q + d);
            BK_KDOT(a, kj, d);
        }
        sc[j] = bk_attn_tail(q, kj, D16, D, _mm512_reduce_add_ps(a)) * scale;
    }
    bk_softmax_row_512(sc, n);
    int64_t d = 0;
    for (; d + 128 <= D16; d += 128) { /* eight output blocks at a time */
        __m512 o0 = _mm512_setzero_ps(), o1 = o0, o2 = o0, o3 = o0, o4 = o0, o5 = o0, o6 = o0, o7 = o0;
        for (j = 0; j < n; j++) {
            const __m512 p = _mm512_set1_ps(sc[j]);
            const uint16_t *vj = v + j * D + d;
            o0 = _mm512_fmadd_ps(p, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)vj)), o0);
            o1 = _mm512_fmadd_ps(p, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 16))), o1);
            o2 = _mm512_fmadd_ps(p, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 32))), o2);
            o3 = _mm512_fmadd_ps(p, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 48))), o3);
            o4 = _mm512_fmadd_ps(p, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 64))), o4);
            o5 = _mm512_fmadd_ps(p, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 80))), o5);
            o6 = _mm512_fmadd_ps(p, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 96))), o6);
            o7 = _mm512_fmadd_ps(p, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 112))), o7);
        }
        _mm512_storeu_ps(out + d, o0);
        _mm512_storeu_ps(out + d + 16, o1);
        _mm512_storeu_ps(out + d + 32, o2);
        _mm512_storeu_ps(out + d + 48, o3);
        _mm512_storeu_ps(out + d + 64, o4);
        _mm512_storeu_ps(out + d + 80, o5);
        _mm512_storeu_ps(out + d + 96, o6);
        _mm512_storeu_ps(out + d + 112, o7);
    }
    for (; d < D16; d += 16) {
        __m512 a = _mm512_setzero_ps();
        for (j = 0; j < n; j++)
            a = _mm512_fmadd_ps(_mm512_set1_ps(sc[j]), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(v + j * D + d))), a);
        _mm512_storeu_ps(out + d, a);
    }
    for (; d < D; d++) {
        float a = 0.0f;
        for (j = 0; j < n; j++) a += sc[j] * _cvtsh_ss(v[j * D + d]);
        out[d] = a;
    }
}

/* The four query heads of one KV head (GQA with 4 heads a group, as the 2B-4T shape), one token: each K and V
 * row is converted once for the four heads instead of once per head. Every head's score chain, softmax and
 * output chains are bk_attn_one_512's, in the same order (the same bits). q, out: 4 x D; sc: 4 x (n + 16). */
BK_T512 static void bk_attn_g4_512(const float *q, const uint16_t *k, const uint16_t *v, int64_t D, int64_t n,
                                   float scale, float *sc, float *out) {
    const int64_t D16 = D & ~(int64_t)15, ns = n + 16;
    const float *q0 = q, *q1 = q + D, *q2 = q + 2 * D, *q3 = q + 3 * D;
    float *s0 = sc, *s1 = sc + ns, *s2 = sc + 2 * ns, *s3 = sc + 3 * ns;
    for (int64_t j = 0; j < n; j++) {
        const uint16_t *kj = k + j * D;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t d = 0; d < D16; d += 16) {
            const __m512 kd = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kj + d)));
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + d), kd, a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q1 + d), kd, a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q2 + d), kd, a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q3 + d), kd, a3);
        }
        s0[j] = bk_attn_tail(q0, kj, D16, D, _mm512_reduce_add_ps(a0)) * scale;
        s1[j] = bk_attn_tail(q1, kj, D16, D, _mm512_reduce_add_ps(a1)) * scale;
        s2[j] = bk_attn_tail(q2, kj, D16, D, _mm512_reduce_add_ps(a2)) * scale;
        s3[j] = bk_attn_tail(q3, kj, D16, D, _mm512_reduce_add_ps(a3)) * scale;
    }
    bk_softmax_row_512(s0, n);
    bk_softmax_row_512(s1, n);
    bk_softmax_row_512(s2, n);
    bk_softmax_row_512(s3, n);
    float *o0 = out, *o1 = out + D, *o2 = out + 2 * D, *o3 = out + 3 * D;
    int64_t d = 0;
    for (; d + 32 <= D16; d += 32) { /* two output blocks of the four heads at a time */
        __m512 x0 = _mm512_setzero_ps(), x1 = x0, y0 = x0, y1 = x0, z0 = x0, z1 = x0, w0 = x0, w1 = x0;
        for (int64_t j = 0; j < n; j++) {
            const uint16_t *vj = v + j * D + d;
            const __m512 v0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)vj));
            const __m512 v1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 16)));
            const __m512 p0 = _mm512_set1_ps(s0[j]), p1 = _mm512_set1_ps(s1[j]);
            const __m512 p2 = _mm512_set1_ps(s2[j]), p3 = _mm512_set1_ps(s3[j]);
            x0 = _mm512_fmadd_ps(p0, v0, x0);
            x1 = _mm512_fmadd_ps(p0, v1, x1);
            y0 = _mm512_fmadd_ps(p1, v0, y0);
            y1 = _mm512_fmadd_ps(p1, v1, y1);
            z0 = _mm512_fmadd_ps(p2, v0, z0);
            z1 = _mm512_fmadd_ps(p2, v1, z1);
            w0 = _mm512_fmadd_ps(p3, v0, w0);
            w1 = _mm512_fmadd_ps(p3, v1, w1);
        }
        _mm512_storeu_ps(o0 + d, x0);
        _mm512_storeu_ps(o0 + d + 16, x1);
        _mm512_storeu_ps(o1 + d, y0);
        _mm512_storeu_ps(o1 + d + 16, y1);
        _mm512_storeu_ps(o2 + d, z0);
        _mm512_storeu_ps(o2 + d + 16, z1);
        _mm512_storeu_ps(o3 + d, w0);
        _mm512_storeu_ps(o3 + d + 16, w1);
    }
    for (; d < D16; d += 16) {
        __m512 x0 = _mm512_setzero_ps(), y0 = x0, z0 = x0, w0 = x0;
        for (int64_t j = 0; j < n; j++) {
            const __m512 v0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(v + j * D + d)));
            x0 = _mm512_fmadd_ps(_mm512_set1_ps(s0[j]), v0, x0);
            y0 = _mm512_fmadd_ps(_mm512_set1_ps(s1[j]), v0, y0);
            z0 = _mm512_fmadd_ps(_mm512_set1_ps(s2[j]), v0, z0);
            w0 = _mm512_fmadd_ps(_mm512_set1_ps(s3[j]), v0, w0);
        }
        _mm512_storeu_ps(o0 + d, x0);
        _mm512_storeu_ps(o1 + d, y0);
        _mm512_storeu_ps(o2 + d, z0);
        _mm512_storeu_ps(o3 + d, w0);
    }
    for (; d < D; d++) {
        float x = 0.0f, y = 0.0f, z = 0.0f, w = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            const float vv = _cvtsh_ss(v[j * D + d]);
            x += s0[j] * vv;
            y += s1[j] * vv;
            z += s2[j] * vv;
            w += s3[j] * vv;
        }
        o0[d] = x;
        o1[d] = y;
        o2[d] = z;
        o3[d] = w;
    }
}

BK_T256 static void bk_attn_one_256(const float *q, const uint16_t *k, const uint16_t *v, int64_t D, int64_t n,
                                    float scale, float *sc, float *out) {
    for (int64_t j = 0; j < n; j++) {
        const uint16_t *kj = k + j * D;
        __m256 a = _mm256_setzero_ps();
        int64_t d = 0;
        for (; d + 8 <= D; d += 8)
            a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kj + d))), a);
        float s = bk_hadd256(a);
        for (; d < D; d++) s += q[d] * _cvtsh_ss(kj[d]);
        sc[j] = s * scale;
    }
    bk_softmax_row_256(sc, n);
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) {
        __m256 a = _mm256_setzero_ps();
        for (int64_t j = 0; j < n; j++)
            a = _mm256_fmadd_ps(_mm256_set1_ps(sc[j]), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + j * D + d))), a);
        _mm256_storeu_ps(out + d, a);
    }
    for (; d < D; d++) {
        float a = 0.0f;
        for (int64_t j = 0; j < n; j++) a += sc[j] * _cvtsh_ss(v[j * D + d]);
        out[d] = a;
    }
}

static void bk_attn_one_c(const float *q, const uint16_t *k, const uint16_t *v, int64_t D, int64_t n, float scale,
                          float *sc, float *out) {
    for (int64_t j = 0; j < n; j++) {
        float s = 0.0f;
        for (int64_t d = 0; d < D; d++) s += q[d] * bk_h2f(k[j * D + d]);
        sc[j] = s * scale;
    }
    bk_softmax_row_c(sc, n);
    for (int64_t d = 0; d < D; d++) out[d] = 0.0f;
    for (int64_t j = 0; j < n; j++)
        for (int64_t d = 0; d < D; d++) out[d] += sc[j] * bk_h2f(v[j * D + d]);
}

/* float -> IEEE half, round to nearest even, as numpy's astype(float16) (overflow to inf, subnormals, NaN kept) */
static inline uint16_t bk_f2h(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, mag = x & 0x7fffffffu;
    if (mag >= 0x7f800000u) return (uint16_t)(mag == 0x7f800000u ? sign | 0x7c00u : sign | 0x7e00u | ((mag >> 13) & 0x3ffu));
    if (mag >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    if (mag < 0x38800000u) {                                   /* below the smallest normal half, 2^-14 */
        if (mag < 0x33000000u) return (uint16_t)sign;          /* <= 2^-25: rounds to zero */
        const uint32_t e = mag >> 23, m = (mag & 0x7fffffu) | 0x800000u, shift = 126 - e;
        uint32_t h = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = (mag - 0x38000000u) >> 13;
    const uint32_t rem = mag & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

/* n floats -> halves; F16C rounds to nearest even as bk_f2h does (differences only in NaN payloads) */
BK_T256 static void bk_f2h_row_256(const float *x, uint16_t *out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) out[i] = bk_f2h(x[i]);
}
/* x rounded through half precision in place (a query meeting an F16 cache) */
BK_T256 static void bk_round_f16_row_256(float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
    for (; i < n; i++) x[i] = bk_h2f(bk_f2h(x[i]));
}
static void bk_f2h_row(int isa, const float *x, uint16_t *out, int64_t n) {
    if (isa != BK_PORTABLE) {
        bk_f2h_row_256(x, out, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) out[i] = bk_f2h(x[i]);
}
static void bk_round_f16_row(int isa, float *x, int64_t n) {
    if (isa != BK_PORTABLE) {
        bk_round_f16_row_256(x, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) x[i] = bk_h2f(bk_f2h(x[i]));
}

/* ---------------------------------------------------------------------------------------------------------- */
/* streaming read probe (memory bandwidth): n is a multiple of 256                                            */
BK_T512 static uint64_t bk_stream_sum_512(const uint8_t *p, int64_t n) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < n; i += 256) {
        a0 = _mm512_add_epi64(a0, _mm512_loadu_si512(p + i));
        a1 = _mm512_add_epi64(a1, _mm512_loadu_si512(p + i + 64));
        a2 = _mm512_add_epi64(a2, _mm512_loadu_si512(p + i + 128));
        a3 = _mm512_add_epi64(a3, _mm512_loadu_si512(p + i + 192));
    }
    return (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
}
BK_T256 static uint64_t bk_stream_sum_256(const uint8_t *p, int64_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < n; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    uint64_t t[4];
    _mm256_storeu_si256((__m256i *)t, _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
    return t[0] + t[1] + t[2] + t[3];
}
/* two regions in lockstep (n bytes each, a multiple of 128): the access pattern of the two-stream GEMVs */
BK_T512 static uint64_t bk_stream_sum2_512(const uint8_t *p, const uint8_t *q, int64_t n) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < n; i += 128) {
        a0 = _mm512_add_epi64(a0, _mm512_loadu_si512(p + i));
        a1 = _mm512_add_epi64(a1, _mm512_loadu_si512(q + i));
        a2 = _mm512_add_epi64(a2, _mm512_loadu_si512(p + i + 64));
        a3 = _mm512_add_epi64(a3, _mm512_loadu_si512(q + i + 64));
    }
    return (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
}
static uint64_t bk_stream_sum(int isa, const uint8_t *p, int64_t n) {
    if (isa == BK_VNNI) return bk_stream_sum_512(p, n);
    if (isa == BK_AVX2) return bk_stream_sum_256(p, n);
    uint64_t s = 0;
    for (int64_t i = 0; i < n; i += 8) { uint64_t v; memcpy(&v, p + i, 8); s += v; }
    return s;
}

#endif /* BK_SIMD_H */
