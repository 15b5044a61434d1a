// BitNet b1.58 CUDA kernels (loaded by pycuda.compiler.SourceModule, compiled once and cached).
//
// Ternary weight layout ("T2" layout, made on the device from I2_S by repack_i2s):
//   row-major, K/16 uint32 words a row; word j holds weights 16j .. 16j+15, weight 16j + 4s + b in byte b,
//   bits 2s..2s+1, as the code w + 1 (0, 1, 2). (word >> 2s) & 0x03030303 is then four codes that meet one
//   int32 word of int8 activations in a dp4a, and one 16-byte load gives 64 weights.
// The integer dot is exact: sum(code * a) - sum(a) = sum(w * a).
//
// Numerics follow bitnet_inference's `fast` mode: per-token int8 activations s = 127 / max(max|x|, 1e-5),
// round half to even, y = float(dot) / s * w_scale; RMSNorm with the mean square summed in double.

#include <cuda_fp16.h>
#include <stdint.h>

#define WARP 32

__device__ __forceinline__ int dot16(uint32_t w, int4 a, int acc) {
    acc = __dp4a((int)(w & 0x03030303u), a.x, acc);
    acc = __dp4a((int)((w >> 2) & 0x03030303u), a.y, acc);
    acc = __dp4a((int)((w >> 4) & 0x03030303u), a.z, acc);
    acc = __dp4a((int)((w >> 6) & 0x03030303u), a.w, acc);
    return acc;
}

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide reductions (blockDim.x a multiple of 32, at most 1024).
template <typename T>
__device__ T block_sum(T v, T* sh) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    T r = (threadIdx.x < nw) ? sh[threadIdx.x] : (T)0;
    if (wid == 0) r = warp_sum(r);
    if (threadIdx.x == 0) sh[0] = r;
    __syncthreads();
    return sh[0];
}

__device__ float block_max(float v, float* sh) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    float r = (threadIdx.x < nw) ? sh[threadIdx.x] : 0.0f;
    if (wid == 0) r = warp_max(r);
    if (threadIdx.x == 0) sh[0] = r;
    __syncthreads();
    return sh[0];
}

// Epilogue modes of the ternary matmul.
#define EPI_I32 0    // out_i32[t, n] = exact integer dot
#define EPI_F32 1    // out[t, n] = dot / s * ws[n] * os[n]
#define EPI_RESID 2  // out[t, n] += dot / s * ws[n] * os[n]   (the residual add)
#define EPI_RELU2 3  // rows in pairs (gate, up): out[t, p] = relu(g)^2 * u
#define EPI_SILU 4   // rows in pairs (gate, up): out[t, p] = silu(g) * u
#define EPI_QKV 5    // rows in pairs: RoPE'd q to out, RoPE'd k and v to the f16 cache at position pos0 + t

struct QKVArgs {
    int n_head, n_kv, head_dim, n_ctx;
    const float* cos_tab;  // (n_ctx, head_dim / 2)
    const float* sin_tab;
    __half* kc;  // this layer's cache (n_kv, n_ctx, head_dim)
    __half* vc;
};

// One warp computes R rows (R = 2: a pair) for TT tokens t0 .. t0+TT-1 (clamped to T).
// W: T2 words (N, K/16); q int8 (T, K); qsum (T,).
template <int R, int TT, int EPI, bool SM = false>
__device__ __forceinline__ void ternary_warp(const uint4* __restrict__ W, int row0, int N, int K,
                                             const int8_t* __restrict__ q, const int* __restrict__ qsum,
                                             const float* __restrict__ s, const float* __restrict__ ws,
                                             const float* __restrict__ os, float* out, int* out_i32, int ldo,
                                             int t0, int T, const int* __restrict__ pos0p, QKVArgs qa) {
    const int lane = threadIdx.x & 31;
    const int nchunk = K >> 6;  // 64 weights a 16-byte chunk
    int acc[R][TT];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < TT; t++) acc[r][t] = 0;

    const int4* qrow[TT];
#pragma unroll
    for (int t = 0; t < TT; t++) {
        int tt = min(t0 + t, T - 1);
        qrow[t] = reinterpret_cast<const int4*>(q + (size_t)tt * K);
    }
    const uint4* wrow[R];
#pragma unroll
    for (int r = 0; r < R; r++) wrow[r] = W + (size_t)(row0 + r) * nchunk;

    constexpr int U = (R == 1) ? 4 : 2;  // independent 16-byte loads in flight a lane
    for (int c0 = lane; c0 < nchunk; c0 += WARP * U) {
        uint4 w[U][R];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + u * WARP;
#pragma unroll
            for (int r = 0; r < R; r++) w[u][r] = (c < nchunk) ? ld_stream(wrow[r] + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + u * WARP;
            if (c < nchunk) {
#pragma unroll
                for (int t = 0; t < TT; t++) {
                    const int4* a = qrow[t] + c * 4;
                    int4 a0, a1, a2, a3;
                    if (SM) {
                        a0 = a[0]; a1 = a[1]; a2 = a[2]; a3 = a[3];
                    } else {
                        a0 = __ldg(a); a1 = __ldg(a + 1); a2 = __ldg(a + 2); a3 = __ldg(a + 3);
                    }
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        int v = acc[r][t];
                        v = dot16(w[u][r].x, a0, v);
                        v = dot16(w[u][r].y, a1, v);
                        v = dot16(w[u][r].z, a2, v);
                        v = dot16(w[u][r].w, a3, v);
                        acc[r][t] = v;
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < TT; t++) acc[r][t] = warp_sum(acc[r][t]);

    // lane t writes token t0 + t
#pragma unroll
    for (int t = 0; t < TT; t++) {
        int tok = t0 + t;
        if (lane != (t & 31) || tok >= T) continue;
        if (EPI == EPI_I32) {
#pragma unroll
            for (int r = 0; r < R; r++) out_i32[(size_t)tok * ldo + row0 + r] = acc[r][t] - qsum[tok];
        } else {
        float y[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            float d = (float)(acc[r][t] - qsum[tok]);
            y[r] = (__fdiv_rn(d, s[tok]) * ws[row0 + r]) * os[row0 + r];
        }
        if (EPI == EPI_F32) {
#pragma unroll
            for (int r = 0; r < R; r++) out[(size_t)tok * ldo + row0 + r] = y[r];
        } else if (EPI == EPI_RESID) {
#pragma unroll
            for (int r = 0; r < R; r++) out[(size_t)tok * ldo + row0 + r] += y[r];
        } else if (EPI == EPI_RELU2) {
            float g = fmaxf(y[0], 0.0f);
            out[(size_t)tok * ldo + (row0 >> 1)] = __fmul_rn(__fmul_rn(g, g), y[R - 1]);
        } else if (EPI == EPI_SILU) {
            float g = y[0];
            out[(size_t)tok * ldo + (row0 >> 1)] = __fmul_rn(__fdiv_rn(g, 1.0f + expf(-g)), y[R - 1]);
        } else if (EPI == EPI_QKV) {
            const int D = qa.head_dim, half = D >> 1;
            const int pair = row0 >> 1;
            const int pq = qa.n_head * half, pk = qa.n_kv * half;
            const int pos = *pos0p + tok;
            if (pair < pq + pk) {
                int p = pair < pq ? pair : pair - pq;
                int h = p / half, i = p % half;
                float c = qa.cos_tab[(size_t)pos * half + i], sn = qa.sin_tab[(size_t)pos * half + i];
                float o0 = __fsub_rn(__fmul_rn(y[0], c), __fmul_rn(y[R - 1], sn));
                float o1 = __fadd_rn(__fmul_rn(y[0], sn), __fmul_rn(y[R - 1], c));
                if (pair < pq) {
                    float* qo = out + (size_t)tok * ldo + h * D;
                    qo[i] = o0;
                    qo[i + half] = o1;
                } else {
                    __half* kr = qa.kc + ((size_t)h * qa.n_ctx + pos) * D;
                    kr[i] = __float2half_rn(o0);
                    kr[i + half] = __float2half_rn(o1);
                }
            } else {
                int j = (pair - pq - pk) * 2;  // flat index into v (n_kv * D)
                int h = j / D, d = j % D;
                __half* vr = qa.vc + ((size_t)h * qa.n_ctx + pos) * D;
                vr[d] = __float2half_rn(y[0]);
                vr[d + 1] = __float2half_rn(y[R - 1]);
            }
        }
        }
    }
}

// Decode (T = 1) with the RMSNorm + int8 quantization fused in: every block normalizes and quantizes the input
// row into shared memory (K bytes of dynamic shared memory), then its 8 warps compute 8 rows (or pairs).
template <int R, int EPI>
__device__ __forceinline__ void ternary_decode(const uint4* __restrict__ W, int N, int K, const float* __restrict__ x,
                                               const float* __restrict__ nw, const float* __restrict__ ws,
                                               const float* __restrict__ os, float* out,
                                               const int* __restrict__ pos0p, int ldo, float eps, QKVArgs qa) {
    extern __shared__ int4 qsm_raw[];
    int* qsm = reinterpret_cast<int*>(qsm_raw);
    __shared__ double shd[32];
    __shared__ float shf[32];
    __shared__ int shi[32];
    __shared__ float s_sh;
    __shared__ int qsum_sh;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const float4* w4 = reinterpret_cast<const float4*>(nw);
    const int K4 = K >> 2;
    double ss = 0.0;
    for (int i = threadIdx.x; i < K4; i += blockDim.x) {
        float4 v = x4[i];
        ss += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
    }
    ss = block_sum<double>(ss, shd);
    const float scale = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn((float)(ss / (double)K), eps)));
    float amax = 0.0f;
    for (int i = threadIdx.x; i < K4; i += blockDim.x) {
        float4 v = x4[i], w = w4[i];
        amax = fmaxf(amax, fabsf(__fmul_rn(__fmul_rn(v.x, scale), w.x)));
        amax = fmaxf(amax, fabsf(__fmul_rn(__fmul_rn(v.y, scale), w.y)));
        amax = fmaxf(amax, fabsf(__fmul_rn(__fmul_rn(v.z, scale), w.z)));
        amax = fmaxf(amax, fabsf(__fmul_rn(__fmul_rn(v.w, scale), w.w)));
    }
    amax = block_max(amax, shf);
    const float sc = __fdiv_rn(127.0f, fmaxf(amax, 1e-5f));
    int sum = 0;
    for (int i = threadIdx.x; i < K4; i += blockDim.x) {
        float4 v = x4[i], w = w4[i];
        int q0 = (int)fminf(fmaxf(rintf(__fmul_rn(__fmul_rn(__fmul_rn(v.x, scale), w.x), sc)), -128.0f), 127.0f);
        int q1 = (int)fminf(fmaxf(rintf(__fmul_rn(__fmul_rn(__fmul_rn(v.y, scale), w.y), sc)), -128.0f), 127.0f);
        int q2 = (int)fminf(fmaxf(rintf(__fmul_rn(__fmul_rn(__fmul_rn(v.z, scale), w.z), sc)), -128.0f), 127.0f);
        int q3 = (int)fminf(fmaxf(rintf(__fmul_rn(__fmul_rn(__fmul_rn(v.w, scale), w.w), sc)), -128.0f), 127.0f);
        qsm[i] = (q0 & 0xff) | ((q1 & 0xff) << 8) | ((q2 & 0xff) << 16) | ((q3 & 0xff) << 24);
        sum += q0 + q1 + q2 + q3;
    }
    sum = block_sum<int>(sum, shi);
    if (threadIdx.x == 0) {
        s_sh = sc;
        qsum_sh = sum;
    }
    __syncthreads();
    const int row0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R;
    if (row0 >= N) return;
    ternary_warp<R, 1, EPI, true>(W, row0, N, K, reinterpret_cast<const int8_t*>(qsm), &qsum_sh, &s_sh, ws, os, out,
                                  nullptr, ldo, 0, 1, pos0p, qa);
}

#define DECODE_KERNEL(NAME, R, EPI)                                                                          \
    extern "C" __global__ void __launch_bounds__(512) NAME(                                                 \
        const uint4* __restrict__ W, int N, int K, const float* __restrict__ x, const float* __restrict__ nw, \
        const float* __restrict__ ws, const float* __restrict__ os, float* out, const int* __restrict__ pos0p, \
        int ldo, float eps, QKVArgs qa) {                                                                    \
        ternary_decode<R, EPI>(W, N, K, x, nw, ws, os, out, pos0p, ldo, eps, qa);                            \
    }

DECODE_KERNEL(tdec_f32, 1, EPI_F32)
DECODE_KERNEL(tdec_resid, 1, EPI_RESID)
DECODE_KERNEL(tdec_relu2, 2, EPI_RELU2)
DECODE_KERNEL(tdec_silu, 2, EPI_SILU)
DECODE_KERNEL(tdec_qkv, 2, EPI_QKV)

// grid.x: row groups (8 warps a block, one row or pair a warp); grid.y: token tiles of TT.
#define TERNARY_KERNEL(NAME, R, TT, EPI)                                                                      \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                                  \
        const uint4* __restrict__ W, int N, int K, const int8_t* __restrict__ q, const int* __restrict__ qsum, \
        const float* __restrict__ s, const float* __restrict__ ws, const float* __restrict__ os, float* out,  \
        int* out_i32, int ldo, int T, const int* __restrict__ pos0p, QKVArgs qa) {                            \
        int warp = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);                                        \
        int row0 = warp * R;                                                                                  \
        if (row0 >= N) return;                                                                                \
        ternary_warp<R, TT, EPI>(W, row0, N, K, q, qsum, s, ws, os, out, out_i32, ldo, blockIdx.y * TT, T,    \
                                 pos0p, qa);                                                                   \
    }

TERNARY_KERNEL(tern_i32_t1, 1, 1, EPI_I32)
TERNARY_KERNEL(tern_i32_t8, 1, 8, EPI_I32)
TERNARY_KERNEL(tern_f32_t1, 1, 1, EPI_F32)
TERNARY_KERNEL(tern_f32_t8, 1, 8, EPI_F32)
TERNARY_KERNEL(tern_resid_t1, 1, 1, EPI_RESID)
TERNARY_KERNEL(tern_resid_t8, 1, 8, EPI_RESID)
TERNARY_KERNEL(tern_relu2_t1, 2, 1, EPI_RELU2)
TERNARY_KERNEL(tern_relu2_t8, 2, 8, EPI_RELU2)
TERNARY_KERNEL(tern_silu_t1, 2, 1, EPI_SILU)
TERNARY_KERNEL(tern_silu_t8, 2, 8, EPI_SILU)
TERNARY_KERNEL(tern_qkv_t1, 2, 1, EPI_QKV)
TERNARY_KERNEL(tern_qkv_t8, 2, 8, EPI_QKV)

// I2_S (128-weight blocks of 32 bytes; byte p: weights p, p+32, p+64, p+96 in bits 7:6 .. 1:0) -> T2 words.
// Source row n goes to destination row dst_rows[n]; one thread a destination word.
extern "C" __global__ void repack_i2s(const uint8_t* __restrict__ raw, int N, int K, const int* __restrict__ dst_rows,
                                      uint32_t* __restrict__ out) {
    const int wpr = K >> 4;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * wpr) return;
    int n = (int)(idx / wpr), j = (int)(idx % wpr);
    uint32_t word = 0;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        size_t flat = (size_t)n * K + 16 * j + i;
        size_t blk = flat >> 7;
        int r = (int)(flat & 127);
        uint32_t code = (raw[blk * 32 + (r & 31)] >> (6 - 2 * (r >> 5))) & 3u;
        if (code == 3u) code = 1u;  // never written; bitnet.cpp decodes it as 0
        word |= code << (8 * (i & 3) + 2 * (i >> 2));
    }
    out[(size_t)dst_rows[n] * wpr + j] = word;
}

// RMSNorm of row t (block t) then per-token int8 quantization: q, s = 127 / max(amax, 1e-5), qsum.
// With out_f != NULL, the normalized row is also written as float (rounded through f16 when round_f16).
extern "C" __global__ void __launch_bounds__(1024) rmsnorm_quant(const float* __restrict__ x, const float* __restrict__ w,
                                                                  int K, float eps, int8_t* __restrict__ q,
                                                                  float* __restrict__ s, int* __restrict__ qsum) {
    __shared__ double shd[32];
    __shared__ float shf[32];
    __shared__ int shi[32];
    const float* xr = x + (size_t)blockIdx.x * K;
    double ss = 0.0;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
        double v = (double)xr[i];
        ss += v * v;
    }
    ss = block_sum<double>(ss, shd);
    float scale = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn((float)(ss / (double)K), eps)));
    float amax = 0.0f;
    for (int i = threadIdx.x; i < K; i += blockDim.x) amax = fmaxf(amax, fabsf(__fmul_rn(__fmul_rn(xr[i], scale), w[i])));
    amax = block_max(amax, shf);
    float sc = __fdiv_rn(127.0f, fmaxf(amax, 1e-5f));
    int sum = 0;
    int8_t* qr = q + (size_t)blockIdx.x * K;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
        float y = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
        float r = fminf(fmaxf(rintf(__fmul_rn(y, sc)), -128.0f), 127.0f);
        int v = (int)r;
        qr[i] = (int8_t)v;
        sum += v;
    }
    sum = block_sum<int>(sum, shi);
    if (threadIdx.x == 0) {
        s[blockIdx.x] = sc;
        qsum[blockIdx.x] = sum;
    }
}

// Per-token int8 quantization of float rows (no norm): for tests and for checking the GEMV alone.
extern "C" __global__ void __launch_bounds__(1024) quant_rows(const float* __restrict__ x, int K, int8_t* __restrict__ q,
                                                             float* __restrict__ s, int* __restrict__ qsum) {
    __shared__ float shf[32];
    __shared__ int shi[32];
    const float* xr = x + (size_t)blockIdx.x * K;
    float amax = 0.0f;
    for (int i = threadIdx.x; i < K; i += blockDim.x) amax = fmaxf(amax, fabsf(xr[i]));
    amax = block_max(amax, shf);
    float sc = __fdiv_rn(127.0f, fmaxf(amax, 1e-5f));
    int sum = 0;
    int8_t* qr = q + (size_t)blockIdx.x * K;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
        int v = (int)fminf(fmaxf(rintf(__fmul_rn(xr[i], sc)), -128.0f), 127.0f);
        qr[i] = (int8_t)v;
        sum += v;
    }
    sum = block_sum<int>(sum, shi);
    if (threadIdx.x == 0) {
        s[blockIdx.x] = sc;
        qsum[blockIdx.x] = sum;
    }
}

// RMSNorm to float (the head's input); round_f16: round each value through f16 (ggml's one-row F16 head).
extern "C" __global__ void __launch_bounds__(1024) rmsnorm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                                                int K, float eps, float* __restrict__ out, int round_f16) {
    __shared__ double shd[32];
    const float* xr = x + (size_t)blockIdx.x * K;
    double ss = 0.0;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
        double v = (double)xr[i];
        ss += v * v;
    }
    ss = block_sum<double>(ss, shd);
    float scale = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn((float)(ss / (double)K), eps)));
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
        float y = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
        if (round_f16) y = __half2float(__float2half_rn(y));
        out[(size_t)blockIdx.x * K + i] = y;
    }
}

// x[t] = emb[tok[t]] (f16 rows to float)
extern "C" __global__ void embed(const __half* __restrict__ emb, const int* __restrict__ tok, int K, float* __restrict__ x) {
    int t = blockIdx.x;
    const __half* e = emb + (size_t)tok[t] * K;
    for (int i = threadIdx.x; i < K; i += blockDim.x) x[(size_t)t * K + i] = __half2float(e[i]);
}

// F16 weights (V, K) x float activations (T, K) -> logits (T, V); one warp a row, TT tokens a block column.
template <int TT>
__device__ __forceinline__ void f16_warp(const uint4* __restrict__ W, int row, int K, const float* __restrict__ x,
                                         float* __restrict__ out, int ldo, int t0, int T) {
    const int lane = threadIdx.x & 31;
    const int nchunk = K >> 3;  // 8 halves a 16-byte chunk
    const uint4* wr = W + (size_t)row * nchunk;
    float acc[TT];
#pragma unroll
    for (int t = 0; t < TT; t++) acc[t] = 0.0f;
    constexpr int U = 4;
    for (int c0 = lane; c0 < nchunk; c0 += WARP * U) {
        uint4 w[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + u * WARP;
            w[u] = (c < nchunk) ? ld_stream(wr + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + u * WARP;
            if (c >= nchunk) break;
            const __half2* h = reinterpret_cast<const __half2*>(&w[u]);
            float2 f0 = __half22float2(h[0]), f1 = __half22float2(h[1]), f2 = __half22float2(h[2]),
                   f3 = __half22float2(h[3]);
#pragma unroll
            for (int t = 0; t < TT; t++) {
                int tt = min(t0 + t, T - 1);
                const float4* a = reinterpret_cast<const float4*>(x + (size_t)tt * K) + c * 2;
                float4 a0 = __ldg(a), a1 = __ldg(a + 1);
                float v = acc[t];
                v = fmaf(f0.x, a0.x, v); v = fmaf(f0.y, a0.y, v); v = fmaf(f1.x, a0.z, v); v = fmaf(f1.y, a0.w, v);
                v = fmaf(f2.x, a1.x, v); v = fmaf(f2.y, a1.y, v); v = fmaf(f3.x, a1.z, v); v = fmaf(f3.y, a1.w, v);
                acc[t] = v;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < TT; t++) acc[t] = warp_sum(acc[t]);
#pragma unroll
    for (int t = 0; t < TT; t++)
        if (lane == (t & 31) && t0 + t < T) out[(size_t)(t0 + t) * ldo + row] = acc[t];
}

#define F16_KERNEL(NAME, TT)                                                                                     \
    extern "C" __global__ void __launch_bounds__(256) NAME(const uint4* __restrict__ W, int V, int K,            \
                                                           const float* __restrict__ x, float* __restrict__ out, \
                                                           int ldo, int T) {                                    \
        int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);                                           \
        if (row >= V) return;                                                                                    \
        f16_warp<TT>(W, row, K, x, out, ldo, blockIdx.y * TT, T);                                                \
    }

F16_KERNEL(f16_gemv_t1, 1)
F16_KERNEL(f16_gemv_t8, 8)

// Causal attention over the f16 cache, one block (512 threads) a (head, token). q float (T, n_head*D) is rounded
// through f16 (it meets an f16 cache); scores in dynamic shared memory (n_ctx floats); p_f16: round P through
// f16 (ggml, single-token decode). Scores: one thread a key, its row read in 16-byte loads (many in flight);
// output: 512 / (D/8) key groups x D/8 groups of 8 dims, one 16-byte load of V a step, partial rows added.
// D must be a multiple of 8, at most 256.
#define ATT_THREADS 512
extern "C" __global__ void __launch_bounds__(ATT_THREADS) attention(const float* __restrict__ q,
                                                                     const __half* __restrict__ kc,
                                                                     const __half* __restrict__ vc,
                                                                     float* __restrict__ out, int n_head, int n_kv,
                                                                     int D, int n_ctx, const int* __restrict__ pos0p,
                                                                     int p_f16) {
    extern __shared__ float sc[];
    __shared__ float qs[256];
    __shared__ float red[32];
    __shared__ float part[ATT_THREADS * 8];
    const int h = blockIdx.x, t = blockIdx.y, kh = h / (n_head / n_kv);
    const int pos = *pos0p + t, nk = pos + 1;
    const int HD = n_head * D, D8 = D >> 3;
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        qs[d] = __half2float(__float2half_rn(q[(size_t)t * HD + h * D + d]));
    __syncthreads();
    const float scale = 1.0f / sqrtf((float)D);
    const __half* kb = kc + (size_t)kh * n_ctx * D;
    const __half* vb = vc + (size_t)kh * n_ctx * D;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < nk; j += blockDim.x) {
        const uint4* kr = reinterpret_cast<const uint4*>(kb + (size_t)j * D);
        float acc = 0.0f;
#pragma unroll 8
        for (int c = 0; c < D8; c++) {
            uint4 w = kr[c];
            const __half2* hw = reinterpret_cast<const __half2*>(&w);
            const float* qq = qs + 8 * c;
            float2 f0 = __half22float2(hw[0]), f1 = __half22float2(hw[1]), f2 = __half22float2(hw[2]),
                   f3 = __half22float2(hw[3]);
            acc = fmaf(qq[0], f0.x, acc); acc = fmaf(qq[1], f0.y, acc);
            acc = fmaf(qq[2], f1.x, acc); acc = fmaf(qq[3], f1.y, acc);
            acc = fmaf(qq[4], f2.x, acc); acc = fmaf(qq[5], f2.y, acc);
            acc = fmaf(qq[6], f3.x, acc); acc = fmaf(qq[7], f3.y, acc);
        }
        float v = __fmul_rn(acc, scale);
        sc[j] = v;
        mx = fmaxf(mx, v);
    }
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < nk; j += blockDim.x) {
        float e = expf(sc[j] - mx);
        sc[j] = e;
        sum += e;
    }
    sum = block_sum<float>(sum, red);
    for (int j = threadIdx.x; j < nk; j += blockDim.x) {
        float p = __fdiv_rn(sc[j], sum);
        if (p_f16) p = __half2float(__float2half_rn(p));
        sc[j] = p;
    }
    __syncthreads();
    const int KG = blockDim.x / D8;  // key groups
    const int g = threadIdx.x / D8, dg = threadIdx.x % D8;
    float o[8];
#pragma unroll
    for (int e = 0; e < 8; e++) o[e] = 0.0f;
    if (g < KG) {
#pragma unroll 4
        for (int j = g; j < nk; j += KG) {
            const float p = sc[j];
            uint4 w = reinterpret_cast<const uint4*>(vb + (size_t)j * D)[dg];
            const __half2* hw = reinterpret_cast<const __half2*>(&w);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float2 f = __half22float2(hw[e]);
                o[2 * e] = fmaf(p, f.x, o[2 * e]);
                o[2 * e + 1] = fmaf(p, f.y, o[2 * e + 1]);
            }
        }
#pragma unroll
        for (int e = 0; e < 8; e++) part[g * D + dg * 8 + e] = o[e];
    }
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float r = 0.0f;
        for (int k = 0; k < KG; k++) r += part[k * D + d];
        out[(size_t)t * HD + h * D + d] = r;
    }
}

// Greedy sampling on the device: index of the largest logit of row 0 (first on ties), one block of 1024.
__device__ int block_argmax(const float* __restrict__ x, int V) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    __shared__ int res;
    float best = -INFINITY;
    int idx = 0x7fffffff;
    const int V4 = V >> 2;
    const float4* x4 = reinterpret_cast<const float4*>(x);
#pragma unroll 4
    for (int i = threadIdx.x; i < V4; i += blockDim.x) {
        float4 v = x4[i];
        // strictly greater keeps the first index of a tie within a thread (indices only grow)
        if (v.x > best) { best = v.x; idx = 4 * i; }
        if (v.y > best) { best = v.y; idx = 4 * i + 1; }
        if (v.z > best) { best = v.z; idx = 4 * i + 2; }
        if (v.w > best) { best = v.w; idx = 4 * i + 3; }
    }
    for (int i = 4 * V4 + threadIdx.x; i < V; i += blockDim.x) {
        float v = x[i];
        if (v > best) { best = v; idx = i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ov > best || (ov == best && oi < idx)) { best = ov; idx = oi; }
    }
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0) { bv[wid] = best; bi[wid] = idx; }
    __syncthreads();
    if (wid == 0) {
        int nw = blockDim.x >> 5;
        best = lane < nw ? bv[lane] : -INFINITY;
        idx = lane < nw ? bi[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, best, o);
            int oi = __shfl_xor_sync(0xffffffffu, idx, o);
            if (ov > best || (ov == best && oi < idx)) { best = ov; idx = oi; }
        }
        if (lane == 0) res = idx;
    }
    __syncthreads();
    return res;
}

extern "C" __global__ void __launch_bounds__(1024) argmax_row(const float* __restrict__ x, int V, int* __restrict__ out) {
    int idx = block_argmax(x, V);
    if (threadIdx.x == 0) out[0] = idx;
}

// One greedy step that feeds the next: tok[0] = argmax, hist[pos + 1] = argmax, pos += 1 (all on the device, so
// a captured decode step can be replayed n times with no host round trip).
extern "C" __global__ void __launch_bounds__(1024) argmax_step(const float* __restrict__ x, int V, int* tok, int* pos,
                                                               int* hist) {
    int idx = block_argmax(x, V);
    if (threadIdx.x == 0) {
        int p = *pos;
        tok[0] = idx;
        hist[p + 1] = idx;
        *pos = p + 1;
    }
}
