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

#include <cooperative_groups.h>
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

// The same dot with the codes masked in place: acc.x .. acc.w collect sum(code * a) of the four 2-bit fields
// times 1, 4, 16, 64 (unsigned code bytes x signed activations), so a word costs four AND and four dp4a instead
// of three shifts more; dot16m_sum gives the exact sum (each acc is a multiple of its factor; |acc.w| <= K * 6144).
__device__ __forceinline__ int dp4a_us(uint32_t a, int b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
__device__ __forceinline__ void dot16m(uint32_t w, int4 a, int4& acc) {
    acc.x = dp4a_us(w & 0x03030303u, a.x, acc.x);
    acc.y = dp4a_us(w & 0x0c0c0c0cu, a.y, acc.y);
    acc.z = dp4a_us(w & 0x30303030u, a.z, acc.z);
    acc.w = dp4a_us(w & 0xc0c0c0c0u, a.w, acc.w);
}
__device__ __forceinline__ int dot16m_sum(int4 acc) { return acc.x + (acc.y >> 2) + (acc.z >> 4) + (acc.w >> 6); }
// One 16-byte load of weights (64: words w.x .. w.w) against their 64 int8 activations a0 .. a3.
__device__ __forceinline__ int dot64(uint4 w, int4 a0, int4 a1, int4 a2, int4 a3, int acc) {
    acc = dot16(w.x, a0, acc);
    acc = dot16(w.y, a1, acc);
    acc = dot16(w.z, a2, acc);
    return dot16(w.w, a3, acc);
}
__device__ __forceinline__ void dot64m(uint4 w, int4 a0, int4 a1, int4 a2, int4 a3, int4& acc) {
    dot16m(w.x, a0, acc);
    dot16m(w.y, a1, acc);
    dot16m(w.z, a2, acc);
    dot16m(w.w, a3, acc);
}

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
// Step kt of n of a two-buffer cp.async pipeline: queue tile kt + 1 into buffer (kt + 1) & 1 (load(tile, buf)
// commits its group), wait until tile kt has landed, and make it visible to the block.
template <typename Load>
__device__ __forceinline__ void pipe_step(int kt, int n, Load&& load) {
    if (kt + 1 < n) {
        load(kt + 1, (kt + 1) & 1);
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
    __syncthreads();
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

// One-barrier variants: every warp reduces the per-warp partials itself (lane i reads sh[i]), so the result needs
// no second barrier and broadcast; the same butterfly as block_sum's warp 0, so the same bits. sh must not be
// reused by the block before every thread has read it (each call site here uses its own array once).
template <typename T>
__device__ __forceinline__ T block_sum1(T v, T* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    return warp_sum(lane < nw ? sh[lane] : (T)0);
}

__device__ __forceinline__ float block_max1(float v, float* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    return warp_max(lane < nw ? sh[lane] : 0.0f);
}

// The same with redux.sync (sm_80+): one instruction a warp instead of five shuffles. Exact for integers; the max
// of non-negative, non-NaN floats taken on their bits (the order of such floats is that of their bit patterns),
// so both give the bits of block_sum1 / block_max1 (the kernels' maxima of |t| start at +0 and fmaxf drops NaN).
__device__ __forceinline__ int block_sum1_rx(int v, int* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = __reduce_add_sync(0xffffffffu, v);
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    return __reduce_add_sync(0xffffffffu, lane < nw ? sh[lane] : 0);
}

__device__ __forceinline__ float block_max1_rx(float v, float* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const unsigned u = __reduce_max_sync(0xffffffffu, __float_as_uint(v));
    if (lane == 0) sh[wid] = __uint_as_float(u);
    __syncthreads();
    return __uint_as_float(__reduce_max_sync(0xffffffffu, lane < nw ? __float_as_uint(sh[lane]) : 0u));
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

// RoPE'd q to out (row tok), RoPE'd k and v to the f16 cache at position pos; pair = row0 / 2 of the fused
// QKV matrix (Q and K rows in RoPE pairs (i, i + D/2), then V in order).
// The RoPE angle index of a pair (-1 for V pairs).
__device__ __forceinline__ int qkv_rope_index(int pair, const QKVArgs& qa) {
    const int half = qa.head_dim >> 1, pq = qa.n_head * half, pk = qa.n_kv * half;
    return pair < pq + pk ? (pair < pq ? pair : pair - pq) % half : -1;
}

__device__ __forceinline__ void qkv_store_cs(int tok, int pair, float y0, float y1, float c, float sn, float* out,
                                             int ldo, int pos, const QKVArgs& qa) {
    const int D = qa.head_dim, half = D >> 1;
    const int pq = qa.n_head * half, pk = qa.n_kv * half;
    if (pair < pq + pk) {
        int p = pair < pq ? pair : pair - pq;
        int h = p / half, i = p % half;
        float o0 = __fsub_rn(__fmul_rn(y0, c), __fmul_rn(y1, sn));
        float o1 = __fadd_rn(__fmul_rn(y0, sn), __fmul_rn(y1, c));
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
        vr[d] = __float2half_rn(y0);
        vr[d + 1] = __float2half_rn(y1);
    }
}

__device__ __forceinline__ void qkv_store(int tok, int pair, float y0, float y1, float* out, int ldo, int pos,
                                          const QKVArgs& qa) {
    const int i = qkv_rope_index(pair, qa), half = qa.head_dim >> 1;
    float c = 0.0f, sn = 0.0f;
    if (i >= 0) {
        c = qa.cos_tab[(size_t)pos * half + i];
        sn = qa.sin_tab[(size_t)pos * half + i];
    }
    qkv_store_cs(tok, pair, y0, y1, c, sn, out, ldo, pos, qa);
}

// The epilogue of one row (R = 1) or one pair of rows (R = 2: a0 row0, a1 row0 + 1) of token tok: integer dots
// (codes, so minus qsum) to float, then the mode's store.
template <int R, int EPI>
__device__ __forceinline__ void epi_store(int tok, int row0, int a0, int a1, const int* __restrict__ qsum,
                                          const float* __restrict__ s, const float* __restrict__ ws,
                                          const float* __restrict__ os, float* out, int* out_i32, int ldo,
                                          const int* __restrict__ pos0p, const QKVArgs& qa) {
    const int acc[2] = {a0, a1};
    if (EPI == EPI_I32) {
#pragma unroll
        for (int r = 0; r < R; r++) out_i32[(size_t)tok * ldo + row0 + r] = acc[r] - qsum[tok];
        return;
    }
    float y[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        float d = (float)(acc[r] - qsum[tok]);
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
        qkv_store(tok, row0 >> 1, y[0], y[R - 1], out, ldo, *pos0p + tok, qa);
    }
}

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
                        acc[r][t] = dot64(w[u][r], a0, a1, a2, a3, acc[r][t]);
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
        epi_store<R, EPI>(tok, row0, acc[0][t], acc[R - 1][t], qsum, s, ws, os, out, out_i32, ldo, pos0p, qa);
    }
}

// Stage timestamps (%globaltimer, ns) of one launch for tools/gpu_profile_step.py: trace[block * 8 + stage],
// written by thread 0 of each block when the kernel gets a trace buffer (nullptr in normal runs). Compiled in only
// with BITNET_TRACE (the runtime defines it under BITNET_GPU_TRACE=1): in the decode step even its untaken branches
// cost instruction fetches, 26 us a step on an H100 (the thirteenth session, docs/gpu.md).
__device__ __forceinline__ void stamp(unsigned long long* trace, int stage) {
#ifdef BITNET_TRACE
    if (trace != nullptr && threadIdx.x == 0) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        trace[blockIdx.x * 8 + stage] = t;
    }
#endif
}

// Programmatic dependent launch: let the next kernel's blocks start (they wait in pdl_wait), and wait for the
// kernel before to complete (its writes visible). Both do nothing in a kernel launched plainly or followed by one.
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

__device__ __forceinline__ void prefetch_l2(const void* p, unsigned bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
}

// Lane 0 of a warp: cp.async of what its epilogue reads (rows' weight and output scales, residual rows, the
// position and the pair's RoPE cos/sin from the step's rope row) into the per-warp shared slots; the lane waits
// for them (cp.async.wait_group 0) only before the epilogue.
// PART: 1 the constants (the scales), 2 what the step writes (residual rows, position, RoPE row), 3 both.
template <int R, int EPI, int PART = 3>
__device__ __forceinline__ void epi_issue(int row0, int warp, const float* ws, const float* os, const float* out,
                                          const int* pos0p, const float* rope, const QKVArgs& qa, float* e_ws,
                                          float* e_os, float* e_res, float* e_c, float* e_s, int* e_pos) {
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (PART & 1) {
            cp_async4(e_ws + warp * R + r, ws + row0 + r);
            cp_async4(e_os + warp * R + r, os + row0 + r);
        }
        if ((PART & 2) && EPI == EPI_RESID) cp_async4(e_res + warp * R + r, out + row0 + r);
    }
    if ((PART & 2) && EPI == EPI_QKV) {
        cp_async4(e_pos + warp, pos0p);
        const int i = qkv_rope_index(row0 >> 1, qa);
        if (i >= 0) {
            cp_async4(e_c + warp, rope + i);
            cp_async4(e_s + warp, rope + (qa.head_dim >> 1) + i);
        } else {
            e_c[warp] = 0.0f;
            e_s[warp] = 0.0f;
        }
    }
}

// Thread 0 of QKV blocks 0 .. 2 n_kv - 1 at their end: this layer's K (even blocks) or V cache rows 0..pos of one
// kv head into L2 for the attention launch that follows.
__device__ __forceinline__ void kv_prefetch(const QKVArgs& qa, int pos) {
    const int b = blockIdx.x;
    if (b >= 2 * qa.n_kv) return;
    const __half* base = ((b & 1) ? qa.vc : qa.kc) + (size_t)(b >> 1) * qa.n_ctx * qa.head_dim;
    prefetch_l2(base, (unsigned)(pos + 1) * (unsigned)qa.head_dim * 2u);
}


// Decode (T = 1) with the RMSNorm + int8 quantization fused in: every block normalizes and quantizes the input
// row into shared memory (the dynamic shared memory laid out below), then each warp computes its row (or pair).
// HOIST (the tdech_* kernels): the prologue's row and norm weight come into shared memory in one round of
// cp.async; the first lane of each warp asks for what its epilogue reads (epi_issue) and waits for it only at the
// epilogue; the QKV kernel asks for this layer's K/V cache rows in L2 at its end (kv_prefetch); flags & 1: one
// thread also asks for the block's weight rows in L2 at the start; PV, the prologue's variant (the same bits each):
// 1 (tdech_*) the integer sum and maximum and the dots' warp sums with redux.sync; 0 (tdechs_*) with shuffles.
// ST (tdechw_*, tdechsw_*): the lanes copy their warp's weight rows into shared memory (after the planes, the row
// and the norm weight) before the prologue, and a warp takes flags >> 8 (1 or 2) rows or pairs.
// PDL (ST only; the tdechp_* kernels, launched as programmatic dependents of the kernel before): every block
// triggers its dependents at its start, so the next kernel's blocks become resident beside this kernel's; while
// the kernel before runs, a block copies what no kernel of the step writes (the norm weight, the rows' scales)
// and asks for its weight rows in L2; then griddepcontrol.wait (the kernel before has completed, its writes are
// visible), then the row, the residual rows, position and RoPE row, then the weight rows from L2 into shared
// memory behind them. (Weight copies into shared memory before the wait held the wait back until they landed:
// gate/up's 69 KB a block, 2 us a layer.) The grid is one block an SM, the rows spread evenly over it (a block
// with none waits and leaves), so that each SM holds one block of each of two consecutive kernels (the launch
// pads the shared memory so that two blocks of one kernel never fit an SM). UMX: units a warp at most.
template <int R, int EPI, bool HOIST, int PV, bool ST, bool PDL = false, int UMX = 2>
__device__ __forceinline__ void ternary_decode(const uint4* __restrict__ W, int N, int K, const float* __restrict__ x,
                                               const float* __restrict__ nw, const float* __restrict__ ws,
                                               const float* __restrict__ os, float* out,
                                               const int* __restrict__ pos0p, const float* __restrict__ rope,
                                               int ldo, float eps, QKVArgs qa, unsigned long long* trace,
                                               int flags) {
    // The dynamic shared memory starts on a 128-byte line (it follows the static arrays): where they ended 16 bytes
    // past one (a 260-byte static array added), the programmatic-dependent kernels took 1.1-2.5 us longer each,
    // their row copies and weight rows straddling lines (an H100, the eleventh session).
    extern __shared__ __align__(128) int4 qsm_raw[];
    int* qsm = reinterpret_cast<int*>(qsm_raw);
    // HOIST: the int8 row in four planes, plane j holding the j-th 16 bytes of every 64-byte chunk (PL int4 a
    // plane, two of padding), so that a warp's lanes read consecutive 16 bytes (no bank conflicts) and the
    // quantization's writes land on distinct banks; K + 128 bytes. Otherwise the row as is (K bytes).
    const int PL = (K >> 6) + 2;
    // the input row (K floats) in shared memory after the int8 row: x, then x * scale * nw
    float4* xs = reinterpret_cast<float4*>(reinterpret_cast<char*>(qsm_raw) + K + (HOIST ? 128 : 0));
    __shared__ double shd[32];
    __shared__ float shf[32];
    __shared__ int shi[32];
    __shared__ float s_sh;
    __shared__ int qsum_sh;
    __shared__ float e_ws[128], e_os[128], e_res[128], e_cos[64], e_sin[64];  // up to 64 units of 2 rows
    __shared__ int e_pos[64];
    constexpr bool RX = HOIST && PV >= 1;
    stamp(trace, 0);
    const int nw_ = blockDim.x >> 5;
    // ST: units (rows or pairs) a warp, flags >> 8 (1 or 2): unit k of the block is warp k % nw_'s (k / nw_)-th
    const int upw = ST ? min(max(flags >> 8, 1), UMX) : 1;
    int brow = blockIdx.x * nw_ * R * upw;  // the block's first row
    if (PDL) {  // the units spread evenly over the grid (one block an SM): units [b U / G, (b + 1) U / G)
        const int units = N / R, G = gridDim.x;
        brow = (int)((long long)blockIdx.x * units / G) * R;
        N = (int)((long long)(blockIdx.x + 1) * units / G) * R;  // the block's end row from here on
    }
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const float4* w4 = reinterpret_cast<const float4*>(nw);
    const int K4 = K >> 2;
    float4* wsm = xs + K4;  // HOIST: the norm weight in shared memory too (9 K + 128 bytes of dynamic shared memory)
    uint4* wst = reinterpret_cast<uint4*>(wsm + K4);  // ST: then the block's weight rows (K / 4 bytes a row)
    if (HOIST) {
        if (PDL) {
            pdl_trigger();
            if (brow >= N) {  // a block with no rows: holds its SM's slot until the kernel before is done
                pdl_wait();
                return;
            }
        }
        // one round of loads for the prologue: the row and the norm weight into shared memory (PDL: the row
        // after the wait)
#pragma unroll 1
        for (int i = threadIdx.x; i < K4; i += blockDim.x) {
            if (!PDL) cp_async16(xs + i, x4 + i);
            cp_async16(wsm + i, w4 + i);
        }
        cp_async_commit();
        const int nrows = min(nw_ * R * upw, N - brow);
        if ((PDL || (flags & 1)) && threadIdx.x == 0 && nrows > 0)
            prefetch_l2(W + (size_t)brow * (K >> 6), (unsigned)nrows * (unsigned)(K >> 2));
#pragma unroll 1
        for (int u = 0; u < upw; u++) {
            const int k = (threadIdx.x >> 5) + u * nw_, r0 = brow + k * R;
            if ((threadIdx.x & 31) == 0 && r0 < N)
                epi_issue<R, EPI, PDL ? 1 : 3>(r0, k, ws, os, out, pos0p, rope, qa, e_ws, e_os, e_res, e_cos, e_sin,
                                               e_pos);
        }
        cp_async_commit();
        // ST: the warp's weight rows into shared memory, each lane copying the chunks it will use (one group)
        auto stage_weights = [&]() {
            const int nch = K >> 6;
#pragma unroll 1
            for (int u = 0; u < upw; u++) {
                const int k = (threadIdx.x >> 5) + u * nw_, wr0 = brow + k * R;
                if (wr0 < N) {
                    const uint4* src = W + (size_t)wr0 * nch;
                    uint4* dst = wst + (size_t)k * R * nch;
#pragma unroll 1
                    for (int c = threadIdx.x & 31; c < nch; c += WARP)
#pragma unroll
                        for (int r = 0; r < R; r++) cp_async16(dst + r * nch + c, src + r * nch + c);
                }
            }
            cp_async_commit();
        };
        if (ST && PDL) {
            pdl_wait();
            stamp(trace, 7);
#pragma unroll 1
            for (int i = threadIdx.x; i < K4; i += blockDim.x) cp_async16(xs + i, x4 + i);
            cp_async_commit();
#pragma unroll 1
            for (int u = 0; u < upw; u++) {
                const int k = (threadIdx.x >> 5) + u * nw_, r0 = brow + k * R;
                if ((threadIdx.x & 31) == 0 && r0 < N)
                    epi_issue<R, EPI, 2>(r0, k, ws, os, out, pos0p, rope, qa, e_ws, e_os, e_res, e_cos, e_sin,
                                         e_pos);
            }
            cp_async_commit();
            stage_weights();     // (from L2: asked for at the block's start)
            cp_async_wait<2>();  // the norm weight and the row
        } else if (ST) {
            stage_weights();
            cp_async_wait<2>();  // the row and the norm weight
        } else {
            cp_async_wait<1>();  // the row and the norm weight
        }
        __syncthreads();
        stamp(trace, 4);
    }
    double ss = 0.0;
#pragma unroll 1
    for (int i = threadIdx.x; i < K4; i += blockDim.x) {
        float4 v;
        if (HOIST) {
            v = xs[i];
        } else {
            v = x4[i];
            xs[i] = v;
        }
        ss += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
    }
    ss = HOIST ? block_sum1<double>(ss, shd) : block_sum<double>(ss, shd);
    if (HOIST) stamp(trace, 5);
    const float scale = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn((float)(ss / (double)K), eps)));
    float amax = 0.0f;
#pragma unroll 1
    for (int i = threadIdx.x; i < K4; i += blockDim.x) {
        float4 v = xs[i], w = HOIST ? wsm[i] : __ldg(w4 + i), t;
        t.x = __fmul_rn(__fmul_rn(v.x, scale), w.x);
        t.y = __fmul_rn(__fmul_rn(v.y, scale), w.y);
        t.z = __fmul_rn(__fmul_rn(v.z, scale), w.z);
        t.w = __fmul_rn(__fmul_rn(v.w, scale), w.w);
        xs[i] = t;
        amax = fmaxf(fmaxf(fmaxf(fmaxf(amax, fabsf(t.x)), fabsf(t.y)), fabsf(t.z)), fabsf(t.w));
    }
    amax = HOIST ? (RX ? block_max1_rx(amax, shf) : block_max1(amax, shf)) : block_max(amax, shf);
    if (HOIST) stamp(trace, 6);
    const float sc = __fdiv_rn(127.0f, fmaxf(amax, 1e-5f));
    int sum = 0;
#pragma unroll 1
    for (int i = threadIdx.x; i < K4; i += blockDim.x) {
        float4 t = xs[i];
        int q0, q1, q2, q3;
        if (HOIST) {  // round half to even by adding 1.5 * 2^23 (the float add rounds; exact for |v| < 2^22, here
                      // |v| <= 127.5: the values of __float2int_rn, without the conversion unit), clamp in integers
            q0 = max(-128, min(127, __float_as_int(__fadd_rn(__fmul_rn(t.x, sc), 12582912.0f)) - 0x4b400000));
            q1 = max(-128, min(127, __float_as_int(__fadd_rn(__fmul_rn(t.y, sc), 12582912.0f)) - 0x4b400000));
            q2 = max(-128, min(127, __float_as_int(__fadd_rn(__fmul_rn(t.z, sc), 12582912.0f)) - 0x4b400000));
            q3 = max(-128, min(127, __float_as_int(__fadd_rn(__fmul_rn(t.w, sc), 12582912.0f)) - 0x4b400000));
        } else {
            q0 = (int)fminf(fmaxf(rintf(__fmul_rn(t.x, sc)), -128.0f), 127.0f);
            q1 = (int)fminf(fmaxf(rintf(__fmul_rn(t.y, sc)), -128.0f), 127.0f);
            q2 = (int)fminf(fmaxf(rintf(__fmul_rn(t.z, sc)), -128.0f), 127.0f);
            q3 = (int)fminf(fmaxf(rintf(__fmul_rn(t.w, sc)), -128.0f), 127.0f);
        }
        const int qi = HOIST ? (((((i >> 2) & 3) * PL + (i >> 4)) << 2) | (i & 3)) : i;
        qsm[qi] = (q0 & 0xff) | ((q1 & 0xff) << 8) | ((q2 & 0xff) << 16) | ((q3 & 0xff) << 24);
        sum += q0 + q1 + q2 + q3;
    }
    if (HOIST) {
        sum = RX ? block_sum1_rx(sum, shi) : block_sum1<int>(sum, shi);  // its barrier publishes qsm
    } else {
        sum = block_sum<int>(sum, shi);
        if (threadIdx.x == 0) {
            s_sh = sc;
            qsum_sh = sum;
        }
        __syncthreads();
    }
    stamp(trace, 1);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row0 = brow + warp * R;
    if (row0 >= N) return;
    if (!HOIST) {
        ternary_warp<R, 1, EPI, true>(W, row0, N, K, reinterpret_cast<const int8_t*>(qsm), &qsum_sh, &s_sh, ws, os,
                                      out, nullptr, ldo, 0, 1, pos0p, qa);
        if (warp == 0) stamp(trace, 3);
        return;
    }
    // the GEMV as in ternary_warp (one token, activations in shared memory), epilogue from the hoisted values
    const int nchunk = K >> 6;
    const int4* a4 = reinterpret_cast<const int4*>(qsm);
    // the warp's units (rows or pairs): unit u is the block's unit warp + u * nw_ (ST: up to 2; else 1)
    constexpr int UM = ST ? UMX : 1;
    int nu = 0;
#pragma unroll 1
    for (int u = 0; u < upw; u++)
        if (brow + (warp + u * nw_) * R < N) nu = u + 1;
    int acc[UM][R];
#pragma unroll
    for (int u = 0; u < UM; u++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[u][r] = 0;
    if (ST) {
        // the rows from shared memory, copied by the lanes that read them (their own wait suffices); each chunk of
        // activations is read once for all the warp's units; the codes masked in place (dot16m)
        cp_async_wait<0>();
        const uint4* wb = wst + (size_t)warp * R * nchunk;
        const size_t ustride = (size_t)nw_ * R * nchunk;
        int4 am[UM][R];
#pragma unroll
        for (int u = 0; u < UM; u++)
#pragma unroll
            for (int r = 0; r < R; r++) am[u][r] = make_int4(0, 0, 0, 0);
        const int cend = nchunk - nchunk % WARP;
#pragma unroll 1
        for (int c = lane; c < cend; c += WARP) {
            const int4 a0 = a4[c], a1 = a4[PL + c], a2 = a4[2 * PL + c], a3 = a4[3 * PL + c];
#pragma unroll
            for (int u = 0; u < UM; u++) {
                if (u < nu) {
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        dot64m(wb[u * ustride + r * nchunk + c], a0, a1, a2, a3, am[u][r]);
                    }
                }
            }
        }
        // the last nchunk % 32 chunks of every row spread over the lanes as (row, chunk) items, so a pass keeps
        // all 32 lanes busy where a warp has several rows (gate/up: 4 rows x 8 chunks at K = 2560)
        const int rem = nchunk - cend;
#pragma unroll 1
        for (int t = lane; t < nu * R * rem; t += WARP) {
            const int q = t / rem, c = cend + t % rem;
            const int4 a0 = a4[c], a1 = a4[PL + c], a2 = a4[2 * PL + c], a3 = a4[3 * PL + c];
            int4 tt = make_int4(0, 0, 0, 0);
            dot64m(wb[(q / R) * ustride + (q % R) * nchunk + c], a0, a1, a2, a3, tt);
#pragma unroll
            for (int u = 0; u < UM; u++)
#pragma unroll
                for (int r = 0; r < R; r++)
                    if (q == u * R + r) {
                        am[u][r].x += tt.x;
                        am[u][r].y += tt.y;
                        am[u][r].z += tt.z;
                        am[u][r].w += tt.w;
                    }
        }
#pragma unroll
        for (int u = 0; u < UM; u++)
#pragma unroll
            for (int r = 0; r < R; r++) acc[u][r] = dot16m_sum(am[u][r]);
    } else {
    const uint4* wrow = W + (size_t)row0 * nchunk;
    constexpr int U = (R == 1) ? 4 : 2;
#pragma unroll 1
    for (int c0 = lane; c0 < nchunk; c0 += WARP * U) {
        uint4 w[U][R];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = c0 + u * WARP;
#pragma unroll
            for (int r = 0; r < R; r++) w[u][r] = c < nchunk ? ld_stream(wrow + r * nchunk + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = c0 + u * WARP;
            if (c < nchunk) {
                const int4 a0 = a4[c], a1 = a4[PL + c], a2 = a4[2 * PL + c], a3 = a4[3 * PL + c];
#pragma unroll
                for (int r = 0; r < R; r++) {
                    acc[0][r] = dot64(w[u][r], a0, a1, a2, a3, acc[0][r]);
                }
            }
        }
    }
    }
    if (warp == 0) stamp(trace, 2);
#pragma unroll
    for (int u = 0; u < UM; u++) {
    if (u >= nu) break;
    const int k = warp + u * nw_, row0 = brow + k * R;  // the unit, its first row
    if (RX) {
#pragma unroll
        for (int r = 0; r < R; r++) acc[u][r] = __reduce_add_sync(0xffffffffu, acc[u][r]);
    } else {
#pragma unroll
        for (int r = 0; r < R; r++) acc[u][r] = warp_sum(acc[u][r]);
    }
    if (lane == 0) {
        cp_async_wait<0>();
        const int lr = k * R;  // the unit's first row in the block
        float y[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float d = (float)(acc[u][r] - sum);
            y[r] = (__fdiv_rn(d, sc) * e_ws[lr + r]) * e_os[lr + r];
        }
        if (EPI == EPI_F32) {
#pragma unroll
            for (int r = 0; r < R; r++) out[row0 + r] = y[r];
        } else if (EPI == EPI_RESID) {
#pragma unroll
            for (int r = 0; r < R; r++) out[row0 + r] = e_res[lr + r] + y[r];
        } else if (EPI == EPI_RELU2) {
            const float g = fmaxf(y[0], 0.0f);
            out[row0 >> 1] = __fmul_rn(__fmul_rn(g, g), y[R - 1]);
        } else if (EPI == EPI_SILU) {
            const float g = y[0];
            out[row0 >> 1] = __fmul_rn(__fdiv_rn(g, 1.0f + expf(-g)), y[R - 1]);
        } else if (EPI == EPI_QKV) {
            qkv_store_cs(0, row0 >> 1, y[0], y[R - 1], e_cos[k], e_sin[k], out, ldo, e_pos[k], qa);
        }
        // (PDL: the attention's blocks copy their K/V rows themselves while this kernel runs)
        if (EPI == EPI_QKV && !PDL && threadIdx.x == 0 && u == 0) kv_prefetch(qa, e_pos[0]);
    }
    }
    if (warp == 0) stamp(trace, 3);
}

// ST (weights staged in shared memory, the matrices of one block an SM): up to 64 registers, no spills
#define DECODE_KERNEL(NAME, R, EPI, HOIST, PV, ST)                                                                \
    extern "C" __global__ void __launch_bounds__(1024, ST ? 1 : 2) NAME(                                    \
        const uint4* __restrict__ W, int N, int K, const float* __restrict__ x, const float* __restrict__ nw, \
        const float* __restrict__ ws, const float* __restrict__ os, float* out, const int* __restrict__ pos0p, \
        const float* __restrict__ rope, int ldo, float eps, QKVArgs qa, unsigned long long* trace,            \
        int flags) {                                                                                          \
        ternary_decode<R, EPI, HOIST, PV, ST>(W, N, K, x, nw, ws, os, out, pos0p, rope, ldo, eps, qa, trace, flags); \
    }

DECODE_KERNEL(tdec_f32, 1, EPI_F32, false, 0, false)
DECODE_KERNEL(tdec_resid, 1, EPI_RESID, false, 0, false)
DECODE_KERNEL(tdec_relu2, 2, EPI_RELU2, false, 0, false)
DECODE_KERNEL(tdec_silu, 2, EPI_SILU, false, 0, false)
DECODE_KERNEL(tdec_qkv, 2, EPI_QKV, false, 0, false)
DECODE_KERNEL(tdech_f32, 1, EPI_F32, true, 1, false)
DECODE_KERNEL(tdech_resid, 1, EPI_RESID, true, 1, false)
DECODE_KERNEL(tdech_relu2, 2, EPI_RELU2, true, 1, false)
DECODE_KERNEL(tdech_silu, 2, EPI_SILU, true, 1, false)
DECODE_KERNEL(tdech_qkv, 2, EPI_QKV, true, 1, false)
DECODE_KERNEL(tdechs_f32, 1, EPI_F32, true, 0, false)
DECODE_KERNEL(tdechs_resid, 1, EPI_RESID, true, 0, false)
DECODE_KERNEL(tdechs_relu2, 2, EPI_RELU2, true, 0, false)
DECODE_KERNEL(tdechs_silu, 2, EPI_SILU, true, 0, false)
DECODE_KERNEL(tdechs_qkv, 2, EPI_QKV, true, 0, false)
DECODE_KERNEL(tdechw_f32, 1, EPI_F32, true, 1, true)
DECODE_KERNEL(tdechw_resid, 1, EPI_RESID, true, 1, true)
DECODE_KERNEL(tdechw_relu2, 2, EPI_RELU2, true, 1, true)
DECODE_KERNEL(tdechw_silu, 2, EPI_SILU, true, 1, true)
DECODE_KERNEL(tdechw_qkv, 2, EPI_QKV, true, 1, true)
DECODE_KERNEL(tdechsw_f32, 1, EPI_F32, true, 0, true)
DECODE_KERNEL(tdechsw_resid, 1, EPI_RESID, true, 0, true)
DECODE_KERNEL(tdechsw_relu2, 2, EPI_RELU2, true, 0, true)
DECODE_KERNEL(tdechsw_silu, 2, EPI_SILU, true, 0, true)
DECODE_KERNEL(tdechsw_qkv, 2, EPI_QKV, true, 0, true)

// The programmatic-dependent variants (PDL above), sized so that one block of each of two consecutive kernels fits
// an SM's registers, which its four schedulers hold 16 K each for the warps they run: at most NT threads and
// 65536 / (2 NT) registers a thread. At the 2B-4T shape QKV 15 warps at 64 (60 used), O and down 20 at 40, gate/up
// 18 warps of three pairs at 56: per scheduler 5 x 40 + 5 x 56 (O or down beside gate/up) and 5 x 40 + 4 x 64
// (down beside QKV) registers x 32 lanes fit in 16 K; O and down at 48 did not beside gate/up (some of its blocks
// waited for O to leave). No spills.
#define DECODE_KERNEL_P(NAME, R, EPI, UMX, NT)                                                                  \
    extern "C" __global__ void __launch_bounds__(NT, 2) NAME(                                                  \
        const uint4* __restrict__ W, int N, int K, const float* __restrict__ x, const float* __restrict__ nw, \
        const float* __restrict__ ws, const float* __restrict__ os, float* out, const int* __restrict__ pos0p, \
        const float* __restrict__ rope, int ldo, float eps, QKVArgs qa, unsigned long long* trace,            \
        int flags) {                                                                                          \
        ternary_decode<R, EPI, true, 1, true, true, UMX>(W, N, K, x, nw, ws, os, out, pos0p, rope, ldo, eps, qa,  \
                                                         trace, flags);                                       \
    }
DECODE_KERNEL_P(tdechp_f32, 1, EPI_F32, 1, 768)
DECODE_KERNEL_P(tdechp_resid, 1, EPI_RESID, 1, 768)
DECODE_KERNEL_P(tdechp_relu2, 2, EPI_RELU2, 3, 576)
DECODE_KERNEL_P(tdechp_silu, 2, EPI_SILU, 3, 576)
DECODE_KERNEL_P(tdechp_qkv, 2, EPI_QKV, 1, 512)

// One embedding row to float (x = e, K halves) by one block: every 16-byte load of the row issued before any store
// (K % 8 == 0 and K <= 64 x the block; else one half at a time): one trip to memory instead of one a load (11-13 us
// of a decode step on an H100 with the loop of halves).
__device__ __forceinline__ void embed_row(const __half* __restrict__ e, int K, float* __restrict__ x) {
    constexpr int U = 8;
    const int nch = K >> 3;
    if ((K & 7) == 0 && nch <= U * (int)blockDim.x) {
        const uint4* e8 = reinterpret_cast<const uint4*>(e);
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = threadIdx.x + u * blockDim.x;
            if (c < nch) v[u] = __ldg(e8 + c);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = threadIdx.x + u * blockDim.x;
            if (c < nch) {
                const __half2* h = reinterpret_cast<const __half2*>(&v[u]);
                const float2 f0 = __half22float2(h[0]), f1 = __half22float2(h[1]), f2 = __half22float2(h[2]),
                             f3 = __half22float2(h[3]);
                float4* o = reinterpret_cast<float4*>(x) + 2 * c;
                o[0] = make_float4(f0.x, f0.y, f1.x, f1.y);
                o[1] = make_float4(f2.x, f2.y, f3.x, f3.y);
            }
        }
    } else {
        for (int i = threadIdx.x; i < K; i += blockDim.x) x[i] = __half2float(e[i]);
    }
}

// The decode step's embedding (x = emb[tok], embed_row) and the step's RoPE row (cos, sin at the position,
// head_dim / 2 each) for the hoisted QKV decode kernel; zero (when not null): three words zeroed (the step's argmax
// and bound keys).
// The certified head's kernels and argmax_finish likewise start with pdl_trigger, pdl_wait: the step launches them
// as programmatic dependents (each one's block resident before the kernel before ends).
extern "C" __global__ void embed_rope(const __half* __restrict__ emb, const int* __restrict__ tok, int K,
                                      float* __restrict__ x, const int* __restrict__ pos0p,
                                      const float* __restrict__ cos_tab, const float* __restrict__ sin_tab, int half,
                                      float* __restrict__ rope, unsigned* __restrict__ zero) {
    pdl_trigger();  // the first layer's blocks copy what they can while this runs
    pdl_wait();
    const __half* e = emb + (size_t)tok[0] * K;
    if (zero != nullptr && threadIdx.x < 3) zero[threadIdx.x] = 0u;
    if (threadIdx.x < half) {
        const int pos = *pos0p;
        rope[threadIdx.x] = cos_tab[(size_t)pos * half + threadIdx.x];
        rope[half + threadIdx.x] = sin_tab[(size_t)pos * half + threadIdx.x];
    }
    embed_row(e, K, x);
}

// Single-token attention split over keys (flash-decoding): block (h, sp) of grid (n_head, ceil(n_ctx / AS_KEYS))
// takes split sp of the nk = pos + 1 keys in the cache (blocks past the splits leave at once): AS_KEYS keys a split,
// except from 257 to 512 keys, where a split takes ceil(nk / AS_CLUSTER) (33 .. AS_WIDE) so that there are at most
// AS_CLUSTER of them (as_split_keys). A 288-key step runs 8 blocks a head of 36 keys instead of 9 of 32 (or 8 with
// the first taking two, one after the other). The block copies its K and V rows into shared memory (cp.async, 16
// bytes a thread a step, issued before anything waits); 4 threads a key compute its score (q rounded through
// f16, a quarter of the dims each, then * 1/sqrt(D)); warp 0 takes the local max m and e_j = exp(s_j - m) (two
// keys a lane past 32); the threads take sum_j e_j v_j over (key group, 8 dims). One split: the block writes o /
// l itself. Several: (m, l, o) to part, and the last block of the head to finish (an atomic counter, reset to 0
// by that block for the next launch) combines them: M = max m_k, f_k = exp(m_k - M), out = sum_k f_k o_k /
// sum_k f_k l_k. P is not rounded to f16 (the one-block kernel rounds P = e / l when p_f16; here l is known only
// after the combine): last-bit differences, see docs/gpu.md.
// Dynamic shared memory: 2 * AS_WIDE * (D + 8) halves + 4096 bytes.
// CL (attn_splitc, thread-block clusters of AS_CLUSTER blocks along the splits; the grid's y a multiple of
// AS_CLUSTER): when 1 < nsp <= AS_CLUSTER (up to 512 keys), the splits of a head are the blocks of its first
// cluster; each writes its (m, l, o) into block 0's shared memory (distributed shared memory), arrives at a cluster
// barrier and leaves; block 0 waits and combines them (the same arithmetic in the same order: the same bits as the
// global path). No partials in global memory, no fence, no counter. Longer contexts take the global path.
__device__ __forceinline__ void cluster_arrive_relaxed() {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_arrive_release() {
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }

// Dimension d of a split's unnormalized output o: the sum of the KG key groups' partials in pv (KG, D), in
// group order.
__device__ __forceinline__ float pv_sum(const float* pv, int KG, int D, int d) {
    float r = 0.0f;
#pragma unroll 1
    for (int k = 0; k < KG; k++) r += pv[k * D + d];
    return r;
}

#define AS_KEYS 32
#define AS_WIDE 64  // keys a split at most (from 257 to 512 keys)
#define AS_THREADS 128
#define AS_MAXSPLIT 256
#define AS_CLUSTER 8
// Keys a split for nk keys: AS_KEYS, or ceil(nk / AS_CLUSTER) from AS_CLUSTER * AS_KEYS + 1 to AS_CLUSTER * AS_WIDE
__device__ __forceinline__ int as_split_keys(int nk) {
    return (nk > AS_CLUSTER * AS_KEYS && nk <= AS_CLUSTER * AS_WIDE) ? (nk + AS_CLUSTER - 1) / AS_CLUSTER : AS_KEYS;
}
// PDL (attn_splitp / attn_splitcp, launched as programmatic dependents of the QKV kernel): a block triggers its
// dependents at its start, reads the position (the previous launch's, constant over the step) and copies its
// split's K/V rows before the position (earlier steps wrote them) while QKV runs; after griddepcontrol.wait the
// position's own row and q, and (pf) its share of a later matrix's weights asked into L2. Nothing is written
// before the wait.
template <bool CL, bool PDL = false>
__device__ __forceinline__ void attn_split_body(const float* __restrict__ q, const __half* __restrict__ kc,
                                                const __half* __restrict__ vc, float* __restrict__ out,
                                                float* __restrict__ part, unsigned* __restrict__ cnt, int n_head,
                                                int n_kv, int D, int n_ctx, const int* __restrict__ pos0p,
                                                unsigned long long* trace, const char* pf = nullptr,
                                                int pf_bytes = 0) {
    extern __shared__ __align__(16) unsigned char as_smem[];
    __shared__ float qs[256];
    __shared__ float ss[AS_WIDE];
    __shared__ float ps[AS_WIDE];
    __shared__ float red[32];
    __shared__ float mk[AS_MAXSPLIT], lk[AS_MAXSPLIT];
    __shared__ int last_sh;
    const int h = blockIdx.x, sp = blockIdx.y, tid = threadIdx.x;
    if (trace != nullptr) trace += (size_t)sp * gridDim.x * 8;  // stamp() indexes by blockIdx.x
    stamp(trace, 0);
    const int kh = h / (n_head / n_kv);
    const int D8 = D >> 3, pitch = D + 8;  // halves a row in shared memory (16 bytes of padding)
    __half* ks = reinterpret_cast<__half*>(as_smem);  // (AS_WIDE, pitch) K rows, then V rows, then pv
    __half* vs = ks + AS_WIDE * pitch;
    // K and V rows j0 + jf .. j0 + jt - 1 into tile rows jf .. jt - 1 (cp.async, not committed)
    auto copy_kv = [&](int j0, int jf, int jt) {
        const __half* kb = kc + ((size_t)kh * n_ctx + j0) * D;
        const __half* vb = vc + ((size_t)kh * n_ctx + j0) * D;
#pragma unroll 1
        for (int i = jf * D8 + tid; i < jt * D8; i += AS_THREADS) {
            const int j = i / D8, cc = i % D8;
            cp_async16(ks + j * pitch + 8 * cc, kb + (size_t)j * D + 8 * cc);
            cp_async16(vs + j * pitch + 8 * cc, vb + (size_t)j * D + 8 * cc);
        }
    };
    if (PDL) pdl_trigger();
    // CL, the first AS_CLUSTER splits: the split's rows for AS_KEYS keys a split are copied before the position is
    // known (rows past the keys are never read), so the copies overlap the position's load
    const bool spec = CL && !PDL && sp < AS_CLUSTER;
    if (spec) copy_kv(sp * AS_KEYS, 0, min(AS_KEYS, n_ctx - sp * AS_KEYS));
    const int nk = *pos0p + 1;
    const int spk = as_split_keys(nk);
    const int nsp = (nk + spk - 1) / spk;
    const bool clp = CL && nsp > 1 && nsp <= AS_CLUSTER;  // the cluster path (the same for every block)
    __shared__ float cparts[CL ? AS_CLUSTER * (2 + 256) : 1];  // rank 0's: every split's (m, l, o)
    if (clp && sp < AS_CLUSTER) cluster_arrive_relaxed();  // phase 1: this block runs
    if (spec) cp_async_commit();  // the guessed rows: a group of their own (a wait covers committed groups only)
    if (sp >= nsp) {
        if (spec) cp_async_wait<0>();  // no copy outlives its block
        if (clp && sp < AS_CLUSTER) {  // a rank past the keys of the head's first cluster: its part of phase 2
            cluster_wait();
            cluster_arrive_release();
        }
        return;
    }
    float* pv = reinterpret_cast<float*>(vs + AS_WIDE * pitch);  // (groups, D)
    const int j0 = sp * spk, n = min(spk, nk - j0);
    if (PDL) {
        const int nold = max(0, min(n, nk - 1 - j0));  // rows before the position
        copy_kv(j0, 0, nold);
        cp_async_commit();
        pdl_wait();
        stamp(trace, 7);
        // a later matrix's weights (gate/up's) into L2, a share each block with keys: its own blocks become resident
        // too late to ask for its 8.8 MB in time (2B-4T), and during the attention the memory is otherwise idle
        if (pf != nullptr && tid == 32) {
            const int nb = (int)gridDim.x * nsp, b = sp * (int)gridDim.x + h;
            const int per = ((pf_bytes + nb - 1) / nb + 15) & ~15, o = b * per, nn = min(per, pf_bytes - o);
            if (nn > 0) prefetch_l2(pf + o, (unsigned)nn);
        }
        copy_kv(j0, nold, n);
    } else if (!spec || spk != AS_KEYS) {
        if (spec) cp_async_wait<0>();  // wide splits: the guessed rows land before the right ones are copied over
        copy_kv(j0, 0, n);
    }
    cp_async_commit();
#pragma unroll 1
    for (int d = tid; d < D; d += AS_THREADS) qs[d] = __half2float(__float2half_rn(q[h * D + d]));
    cp_async_wait<0>();
    __syncthreads();
    stamp(trace, 1);
    const float scale = 1.0f / sqrtf((float)D);
    const int KG = AS_THREADS / D8;  // key groups of D8 threads, 8 dims a thread
    const int g = tid / D8, c = tid % D8;
#pragma unroll 1
    for (int jb = 0; jb < n; jb += AS_THREADS / 4) {  // scores: key jb + tid / 4, chunks c = tid % 4, + 4, ...
        const int j = jb + (tid >> 2), part = tid & 3;
        float acc = 0.0f;
        if (j < n) {
            const uint4* kr = reinterpret_cast<const uint4*>(ks + j * pitch);
#pragma unroll 1
            for (int c = part; c < D8; c += 4) {
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
        }
        acc += __shfl_xor_sync(0xffffffffu, acc, 1);
        acc += __shfl_xor_sync(0xffffffffu, acc, 2);
        if (part == 0 && j < n) ss[j] = __fmul_rn(acc, scale);
    }
    __syncthreads();
    if (tid < 32) {  // keys tid and tid + 32 (up to 32 keys: the bits of one a lane)
        const float s0 = tid < n ? ss[tid] : -INFINITY, s1 = tid + 32 < n ? ss[tid + 32] : -INFINITY;
        const float m = warp_max(fmaxf(s0, s1));
        const float e0 = tid < n ? expf(s0 - m) : 0.0f, e1 = tid + 32 < n ? expf(s1 - m) : 0.0f;
        const float l = warp_sum(e0 + e1);
        ps[tid] = e0;
        ps[tid + 32] = e1;
        if (tid == 0) {
            red[0] = m;
            red[1] = l;
        }
    }
    __syncthreads();
    if (g < KG) {
        float o[8];
#pragma unroll
        for (int e = 0; e < 8; e++) o[e] = 0.0f;
#pragma unroll 1
        for (int j = g; j < n; j += KG) {
            const float p = ps[j];
            uint4 w = reinterpret_cast<const uint4*>(vs + j * pitch)[c];
            const __half2* hw = reinterpret_cast<const __half2*>(&w);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float2 f = __half22float2(hw[e]);
                o[2 * e] = fmaf(p, f.x, o[2 * e]);
                o[2 * e + 1] = fmaf(p, f.y, o[2 * e + 1]);
            }
        }
#pragma unroll
        for (int e = 0; e < 8; e++) pv[g * D + 8 * c + e] = o[e];
    }
    __syncthreads();
    stamp(trace, 2);
    const float m = red[0], l = red[1];
    float* orow = out + h * D;
    if (nsp == 1) {
#pragma unroll 1
        for (int d = tid; d < D; d += AS_THREADS) {
            orow[d] = __fdiv_rn(pv_sum(pv, KG, D, d), l);
        }
    } else if (CL && clp) {
        // push this split's (m, l, o) into rank 0's shared memory (distributed shared memory), arrive (release)
        // and leave; rank 0 waits (acquire) and combines from its own memory
        const int P = 2 + D;
        float* dst = cooperative_groups::this_cluster().map_shared_rank(cparts, 0) + sp * P;
        cluster_wait();  // phase 1 (arrived at the start): every block of the cluster is running
#pragma unroll 1
        for (int d = tid; d < D; d += AS_THREADS) {
            dst[2 + d] = pv_sum(pv, KG, D, d);
        }
        if (tid == 0) {
            dst[0] = m;
            dst[1] = l;
        }
        cluster_arrive_release();  // phase 2
        if (sp != 0) return;
        cluster_wait();
        stamp(trace, 3);
#pragma unroll 1
        for (int k = tid; k < nsp; k += AS_THREADS) {
            mk[k] = cparts[k * P];
            lk[k] = cparts[k * P + 1];
        }
        __syncthreads();
        stamp(trace, 5);
        float M = -INFINITY;
#pragma unroll 1
        for (int k = 0; k < nsp; k++) M = fmaxf(M, mk[k]);
#pragma unroll 1
        for (int d = tid; d < D; d += AS_THREADS) {  // the global path's combine, term for term
            float acc = 0.0f, L = 0.0f;
#pragma unroll 1
            for (int k = 0; k < nsp; k++) {
                const float f = expf(mk[k] - M);
                L = fmaf(lk[k], f, L);
                acc = fmaf(cparts[k * P + 2 + d], f, acc);
            }
            orow[d] = __fdiv_rn(acc, L);
        }
    } else {
        const int S = gridDim.y;
        float* pp = part + ((size_t)h * S + sp) * (D + 2);
#pragma unroll 1
        for (int d = tid; d < D; d += AS_THREADS) {
            __stcg(pp + 2 + d, pv_sum(pv, KG, D, d));
        }
        if (tid == 0) {
            __stcg(pp, m);
            __stcg(pp + 1, l);
        }
        __threadfence();
        __syncthreads();
        if (tid == 0) last_sh = atomicAdd(cnt + h, 1u) == (unsigned)(nsp - 1);
        __syncthreads();
        stamp(trace, 3);
        if (!last_sh) return;
        __threadfence();
        stamp(trace, 6);
        const float* hp = part + (size_t)h * S * (D + 2);
        // one round of loads: every split's (m, l), and this thread's o_k[tid] of the first AS_CREG splits
        constexpr int AS_CREG = 16;
#pragma unroll 1
        for (int k = tid; k < nsp; k += AS_THREADS) {
            mk[k] = __ldcg(hp + (size_t)k * (D + 2));
            lk[k] = __ldcg(hp + (size_t)k * (D + 2) + 1);
        }
        float ov[AS_CREG];
#pragma unroll
        for (int k = 0; k < AS_CREG; k++) ov[k] = (k < nsp && tid < D) ? __ldcg(hp + (size_t)k * (D + 2) + 2 + tid) : 0.0f;
        __syncthreads();
        stamp(trace, 5);
        float M = -INFINITY;
#pragma unroll 1
        for (int k = 0; k < nsp; k++) M = fmaxf(M, mk[k]);
#pragma unroll 1
        for (int d = tid; d < D; d += AS_THREADS) {
            float acc = 0.0f, L = 0.0f;
            int k = 0;
            if (d == tid) {
#pragma unroll
                for (int kr = 0; kr < AS_CREG; kr++) {
                    if (kr < nsp) {
                        const float f = expf(mk[kr] - M);
                        L = fmaf(lk[kr], f, L);
                        acc = fmaf(ov[kr], f, acc);
                    }
                }
                k = AS_CREG;
            }
#pragma unroll 1
            for (; k < nsp; k++) {
                const float f = expf(mk[k] - M);
                L = fmaf(lk[k], f, L);
                acc = fmaf(__ldcg(hp + (size_t)k * (D + 2) + 2 + d), f, acc);
            }
            orow[d] = __fdiv_rn(acc, L);
        }
        if (tid == 0) cnt[h] = 0u;
    }
    stamp(trace, 4);
}

#define ATTN_SPLIT_ARGS                                                                                          \
    const float *__restrict__ q, const __half *__restrict__ kc, const __half *__restrict__ vc,                 \
        float *__restrict__ out, float *__restrict__ part, unsigned *__restrict__ cnt, int n_head, int n_kv,    \
        int D, int n_ctx, const int *__restrict__ pos0p, unsigned long long *trace
extern "C" __global__ void __launch_bounds__(AS_THREADS) attn_split(ATTN_SPLIT_ARGS) {
    attn_split_body<false>(q, kc, vc, out, part, cnt, n_head, n_kv, D, n_ctx, pos0p, trace);
}
extern "C" __global__ void __cluster_dims__(1, AS_CLUSTER, 1) __launch_bounds__(AS_THREADS)
    attn_splitc(ATTN_SPLIT_ARGS) {
    attn_split_body<true>(q, kc, vc, out, part, cnt, n_head, n_kv, D, n_ctx, pos0p, trace);
}
extern "C" __global__ void __launch_bounds__(AS_THREADS) attn_splitp(ATTN_SPLIT_ARGS, const char* pf, int pf_bytes) {
    attn_split_body<false, true>(q, kc, vc, out, part, cnt, n_head, n_kv, D, n_ctx, pos0p, trace, pf, pf_bytes);
}
extern "C" __global__ void __cluster_dims__(1, AS_CLUSTER, 1) __launch_bounds__(AS_THREADS)
    attn_splitcp(ATTN_SPLIT_ARGS, const char* pf, int pf_bytes) {
    attn_split_body<true, true>(q, kc, vc, out, part, cnt, n_head, n_kv, D, n_ctx, pos0p, trace, pf, pf_bytes);
}

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
// The RMSNorm scale of row xr (K floats; the mean square summed in double), for a whole block.
__device__ __forceinline__ float rms_scale(const float* __restrict__ xr, int K, float eps, double* shd) {
    double ss = 0.0;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
        double v = (double)xr[i];
        ss += v * v;
    }
    ss = block_sum<double>(ss, shd);
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn((float)(ss / (double)K), eps)));
}

extern "C" __global__ void __launch_bounds__(1024) rmsnorm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                                                int K, float eps, float* __restrict__ out, int round_f16) {
    __shared__ double shd[32];
    const float* xr = x + (size_t)blockIdx.x * K;
    const float scale = rms_scale(xr, K, eps, shd);
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
        float y = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
        if (round_f16) y = __half2float(__float2half_rn(y));
        out[(size_t)blockIdx.x * K + i] = y;
    }
}

// x[t] = emb[tok[t]] (f16 rows to float; embed_row, a block a row)
extern "C" __global__ void embed(const __half* __restrict__ emb, const int* __restrict__ tok, int K, float* __restrict__ x) {
    const int t = blockIdx.x;
    embed_row(emb + (size_t)tok[t] * K, K, x + (size_t)t * K);
}

// F16 weights (V, K) x float activations (T, K) -> logits (T, V); one warp a row, TT tokens a block column.
// U: 16-byte chunks a lane loads before it uses them (the order of the sums does not depend on it).
template <int TT, int U = 4>
__device__ __forceinline__ void f16_warp(const uint4* __restrict__ W, int row, int K, const float* __restrict__ x,
                                         float* __restrict__ out, int ldo, int t0, int T) {
    const int lane = threadIdx.x & 31;
    const int nchunk = K >> 3;  // 8 halves a 16-byte chunk
    const uint4* wr = W + (size_t)row * nchunk;
    float acc[TT];
#pragma unroll
    for (int t = 0; t < TT; t++) acc[t] = 0.0f;
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

// ---------------------------------------------------------------------------------------------------------------
// Prefill attention (T > 1) on the f16 tensor cores, flash-attention style. A block (4 warps) takes 64 rows, each a
// (query, head) pair of one KV head: row r is query q0 + r / G of head kh * G + r % G (G = n_head / n_kv query
// heads a KV head, 64 / G queries a block), so the 4 query heads of a 2B-4T KV head share every K/V tile; a warp
// owns 16 rows. The keys 0 .. pos0 + (last query of the block) go by in tiles of BN rows of the f16 cache, copied
// into shared memory with cp.async (two buffers: the next tile's copy runs during this tile's math; rows past the
// block's keys are zero, so a masked P of 0 never meets uninitialized V). S = Q.K^T with
// mma.sync.m16n8k16.f32.f16.f16.f32 (q rounded through f16 where it meets the cache, as `attention`; K fragments
// with ldmatrix), scaled by 1/sqrt(D) and the causal mask (key j visible to the query at position p when j <= p),
// the online softmax in f32 registers (running max and sum a row, base 2), O += P.V with the same mma (V fragments
// with ldmatrix.trans), O / l written as f32 (T, n_head * D). P meets the f16 mma as hi + lo, two f16 halves of the
// f32 value (flash_attn_d*: two P.V mma a fragment, ~22 bits of P: within ~1e-6 of the f32 `attention`), or
// rounded to f16 once (flash_attn_f16p_d*: the sum l adds the rounded values; up to ~1e-3 of max|v| off, which
// moved the fixture model's logits by 2.4% and its KLD to bitnet.cpp from 5.9e-5 to 4.1e-4). grid (ceil(T / (64 / G)), n_kv), the longest query tiles
// first; dynamic shared memory 4 * BN * (D + 8) * 2 bytes. D % 32 == 0.
#define FA_THREADS 128
#define FA_ROWS 64

__device__ __forceinline__ void mma_f16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void ldsm_x4(uint32_t* r, const void* p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t* r, const void* p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}
__device__ __forceinline__ uint32_t h2_bits(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }

template <int D, int BN, bool SPLIT>
__device__ __forceinline__ void flash_body(const float* __restrict__ q, const __half* __restrict__ kc,
                                           const __half* __restrict__ vc, float* __restrict__ out, int n_head,
                                           int n_kv, int n_ctx, int T, const int* __restrict__ pos0p) {
    static_assert(D % 32 == 0 && BN % 16 == 0, "flash_body: D % 32, BN % 16");
    constexpr int P = D + 8;  // halves a shared row (an odd multiple of 16 bytes: conflict-free ldmatrix)
    constexpr int CH = D / 8;  // 16-byte chunks a row
    extern __shared__ __align__(16) unsigned char fa_smem[];
    __half* Ks = reinterpret_cast<__half*>(fa_smem);  // [2][BN][P]
    __half* Vs = Ks + 2 * BN * P;                     // [2][BN][P]
    const int G = n_head / n_kv, QPB = FA_ROWS / G;
    const int kh = blockIdx.y;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * QPB;
    const int pos0 = *pos0p;
    const int q_last = min(q0 + QPB, T) - 1;
    const int nk = pos0 + q_last + 1;
    const int ntiles = (nk + BN - 1) / BN;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int HD = n_head * D;
    const __half* kb = kc + (size_t)kh * n_ctx * D;
    const __half* vb = vc + (size_t)kh * n_ctx * D;

    auto load = [&](int kt, int buf) {
        __half* kd = Ks + buf * BN * P;
        __half* vd = Vs + buf * BN * P;
#pragma unroll 4
        for (int i = tid; i < BN * CH; i += FA_THREADS) {
            const int r = i / CH, c = i % CH, j = kt * BN + r;
            if (j < nk) {
                cp_async16(kd + r * P + c * 8, kb + (size_t)j * D + c * 8);
                cp_async16(vd + r * P + c * 8, vb + (size_t)j * D + c * 8);
            } else {
                *reinterpret_cast<uint4*>(kd + r * P + c * 8) = make_uint4(0u, 0u, 0u, 0u);
                *reinterpret_cast<uint4*>(vd + r * P + c * 8) = make_uint4(0u, 0u, 0u, 0u);
            }
        }
        cp_async_commit();
    };
    load(0, 0);

    // this thread's two rows (g and g + 8 of the warp's 16): query, head, position; rows past the block's
    // queries (T or 64 / G * G) compute as its last query and are not written
    int qi[2], hh[2], pr[2];
    bool ok[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int r = warp * 16 + g + 8 * i;
        const int qq = q0 + r / G;
        ok[i] = r < QPB * G && qq < T;
        qi[i] = min(qq, q_last);
        hh[i] = kh * G + r % G;
        pr[i] = pos0 + qi[i];
    }
    uint32_t qa[D / 16][4];
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++)
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int hv = 0; hv < 2; hv++) {
                const float2 f = *reinterpret_cast<const float2*>(q + (size_t)qi[i] * HD + hh[i] * D + 16 * ks +
                                                                  8 * hv + 2 * t4);
                qa[ks][i + 2 * hv] = h2_bits(__floats2half2_rn(f.x, f.y));
            }
    const float sl2 = (1.0f / sqrtf((float)D)) * 1.4426950408889634f;
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[n][e] = 0.0f;
    float mr[2] = {-INFINITY, -INFINITY}, lr[2] = {0.0f, 0.0f};

    for (int kt = 0; kt < ntiles; kt++) {
        pipe_step(kt, ntiles, load);
        const __half* Kt = Ks + (kt & 1) * BN * P;
        const __half* Vt = Vs + (kt & 1) * BN * P;
        float s[BN / 8][4];
#pragma unroll
        for (int n = 0; n < BN / 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) s[n][e] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < D / 16; ks += 2) {
                uint32_t b[4];
                ldsm_x4(b, Kt + (n * 8 + (lane & 7)) * P + ks * 16 + (lane >> 3) * 8);
                mma_f16(s[n], qa[ks], b[0], b[1]);
                mma_f16(s[n], qa[ks + 1], b[2], b[3]);
            }
        }
        // scale, mask, running max (a row's 4 threads: the quad)
        const int j0 = kt * BN + 2 * t4;
        float mx[2] = {mr[0], mr[1]};
#pragma unroll
        for (int n = 0; n < BN / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = e >> 1, j = j0 + n * 8 + (e & 1);
                const float v = j <= pr[i] ? s[n][e] * sl2 : -INFINITY;
                s[n][e] = v;
                mx[i] = fmaxf(mx[i], v);
            }
        float cf[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            cf[i] = exp2f(mr[i] - mx[i]);  // key 0 is in tile 0 for every row: mx is finite from the start
            mr[i] = mx[i];
            lr[i] *= cf[i];
        }
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            o[n][0] *= cf[0]; o[n][1] *= cf[0];
            o[n][2] *= cf[1]; o[n][3] *= cf[1];
        }
        // P = exp2(s - m) as f16 A fragments of P.V, straight from the S accumulators: SPLIT, P = hi + lo (two f16,
        // ~22 bits; two mma a fragment) and l sums P in f32; else P rounded to f16 and l sums the rounded values
        uint32_t pa[BN / 16][4], pl[BN / 16][4];
#pragma unroll
        for (int n = 0; n < BN / 8; n++)
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const float p0 = exp2f(s[n][2 * i] - mr[i]), p1 = exp2f(s[n][2 * i + 1] - mr[i]);
                const __half2 h = __floats2half2_rn(p0, p1);
                const float2 f = __half22float2(h);
                pa[n >> 1][i + 2 * (n & 1)] = h2_bits(h);
                if (SPLIT) {
                    pl[n >> 1][i + 2 * (n & 1)] = h2_bits(__floats2half2_rn(p0 - f.x, p1 - f.y));
                    lr[i] += p0 + p1;
                } else {
                    lr[i] += f.x + f.y;
                }
            }
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++)
#pragma unroll
            for (int n = 0; n < D / 8; n += 2) {
                uint32_t b[4];
                ldsm_x4_t(b, Vt + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * P + n * 8 + (lane >> 4) * 8);
                mma_f16(o[n], pa[kk], b[0], b[1]);
                mma_f16(o[n + 1], pa[kk], b[2], b[3]);
                if (SPLIT) {
                    mma_f16(o[n], pl[kk], b[0], b[1]);
                    mma_f16(o[n + 1], pl[kk], b[2], b[3]);
                }
            }
        __syncthreads();  // the buffer is refilled by the next iteration's copy
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        lr[i] += __shfl_xor_sync(0xffffffffu, lr[i], 1);
        lr[i] += __shfl_xor_sync(0xffffffffu, lr[i], 2);
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (!ok[i]) continue;
        const float inv = 1.0f / lr[i];
        float* orow = out + (size_t)qi[i] * HD + hh[i] * D + 2 * t4;
#pragma unroll
        for (int n = 0; n < D / 8; n++)
            *reinterpret_cast<float2*>(orow + n * 8) = make_float2(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
    }
}

#define FLASH_KERNEL(NAME, D, BN, SPLIT)                                                                       \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) NAME(                                           \
        const float* __restrict__ q, const __half* __restrict__ kc, const __half* __restrict__ vc,            \
        float* __restrict__ out, int n_head, int n_kv, int n_ctx, int T, const int* __restrict__ pos0p) {     \
        flash_body<D, BN, SPLIT>(q, kc, vc, out, n_head, n_kv, n_ctx, T, pos0p);                              \
    }
FLASH_KERNEL(flash_attn_d64, 64, 64, true)
FLASH_KERNEL(flash_attn_d128, 128, 64, true)
FLASH_KERNEL(flash_attn_d256, 256, 32, true)
FLASH_KERNEL(flash_attn_f16p_d64, 64, 64, false)
FLASH_KERNEL(flash_attn_f16p_d128, 128, 64, false)
FLASH_KERNEL(flash_attn_f16p_d256, 256, 32, false)

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

// ---------------------------------------------------------------------------------------------------------------
// Prefill: ternary x int8 GEMM on the int8 tensor cores (mma.sync m16n8k32 s8 x s8 -> s32, exact).
// C[t, n] = sum_k q[t, k] * code[n, k] (codes 0..2 straight from the T2 words: (word >> 2s) & 0x03030303 is the
// B fragment of 4 consecutive k), minus qsum[t] in the epilogue, as the dp4a kernels do. Block tile: 64 tokens x
// 128 rows, K in steps of 128 through double-buffered shared memory (cp.async); 8 warps of 32 tokens x 32 rows.
// Needs K % 128 == 0.

__device__ __forceinline__ void mma_s8(int* c, const uint32_t* a, const uint32_t* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

#define GM 64
#define GN 128
#define GK 128
#define APITCH 144  // bytes a token row in shared memory (128 + 16: conflict-free fragment loads)
#define BPITCH 48   // bytes a weight row (32 + 16)

template <int R, int EPI>
__device__ __forceinline__ void tern_mma_body(const uint32_t* __restrict__ W, int N, int K,
                                              const int8_t* __restrict__ q, const int* __restrict__ qsum,
                                              const float* __restrict__ s, const float* __restrict__ ws,
                                              const float* __restrict__ os, float* out, int* out_i32, int ldo, int T,
                                              const int* __restrict__ pos0p, const QKVArgs& qa) {
    __shared__ __align__(16) int8_t As[2][GM * APITCH];
    __shared__ __align__(16) uint8_t Bs[2][GN * BPITCH];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n0 = blockIdx.x * GN, m0 = blockIdx.y * GM;
    const int wm = (warp >> 2) * 32, wn = (warp & 3) * 32;
    const int g = lane >> 2, t4 = lane & 3;
    const int wpr = K >> 4;
    int acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0;
    const int nk = K / GK;
    auto load = [&](int kt, int buf) {
#pragma unroll
        for (int i = tid; i < GM * 8; i += 256) {
            int r = i >> 3, c = i & 7;
            int tok = min(m0 + r, T - 1);
            cp_async16(&As[buf][r * APITCH + c * 16], q + (size_t)tok * K + kt * GK + c * 16);
        }
        {
            int r = tid >> 1, c = tid & 1;
            int row = min(n0 + r, N - 1);
            cp_async16(&Bs[buf][r * BPITCH + c * 16], W + (size_t)row * wpr + kt * 8 + c * 4);
        }
        cp_async_commit();
    };
    load(0, 0);
    for (int kt = 0; kt < nk; kt++) {
        pipe_step(kt, nk, load);
        const int8_t* Ab = As[kt & 1];
        const uint8_t* Bb = Bs[kt & 1];
#pragma unroll
        for (int ks = 0; ks < 4; ks++) {
            uint32_t a[2][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int8_t* base = Ab + (wm + 16 * i + g) * APITCH + ks * 32 + 4 * t4;
                a[i][0] = *reinterpret_cast<const uint32_t*>(base);
                a[i][1] = *reinterpret_cast<const uint32_t*>(base + 8 * APITCH);
                a[i][2] = *reinterpret_cast<const uint32_t*>(base + 16);
                a[i][3] = *reinterpret_cast<const uint32_t*>(base + 8 * APITCH + 16);
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const uint2 w = *reinterpret_cast<const uint2*>(Bb + (wn + 8 * j + g) * BPITCH + 8 * ks);
                b[j][0] = (w.x >> (2 * t4)) & 0x03030303u;
                b[j][1] = (w.y >> (2 * t4)) & 0x03030303u;
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) mma_s8(acc[i][j], a[i], b[j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int tok = m0 + wm + 16 * i + g + 8 * h;
                const int row = n0 + wn + 8 * j + 2 * t4;
                if (tok >= T || row >= N) continue;
                const int c0 = acc[i][j][2 * h], c1 = acc[i][j][2 * h + 1];
                if (R == 2) {
                    epi_store<2, EPI>(tok, row, c0, c1, qsum, s, ws, os, out, out_i32, ldo, pos0p, qa);
                } else {
                    epi_store<1, EPI>(tok, row, c0, c0, qsum, s, ws, os, out, out_i32, ldo, pos0p, qa);
                    if (row + 1 < N)
                        epi_store<1, EPI>(tok, row + 1, c1, c1, qsum, s, ws, os, out, out_i32, ldo, pos0p, qa);
                }
            }
}

// grid.x: row tiles of 128, grid.y: token tiles of 64; 256 threads.
#define MMA_KERNEL(NAME, R, EPI)                                                                              \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                                  \
        const uint32_t* __restrict__ W, int N, int K, const int8_t* __restrict__ q, const int* __restrict__ qsum, \
        const float* __restrict__ s, const float* __restrict__ ws, const float* __restrict__ os, float* out,  \
        int* out_i32, int ldo, int T, const int* __restrict__ pos0p, QKVArgs qa) {                            \
        tern_mma_body<R, EPI>(W, N, K, q, qsum, s, ws, os, out, out_i32, ldo, T, pos0p, qa);                  \
    }

MMA_KERNEL(tmma_i32, 1, EPI_I32)
MMA_KERNEL(tmma_f32, 1, EPI_F32)
MMA_KERNEL(tmma_resid, 1, EPI_RESID)
MMA_KERNEL(tmma_relu2, 2, EPI_RELU2)
MMA_KERNEL(tmma_silu, 2, EPI_SILU)
MMA_KERNEL(tmma_qkv, 2, EPI_QKV)

// ---------------------------------------------------------------------------------------------------------------
// The whole single-token step (all layers) as one persistent kernel: one 512-thread block an SM, grid-wide
// barriers between the stages. Each block owns a contiguous slice of rows of every ternary matrix and streams
// the slices, stage after stage, into a ring of shared-memory buffers with cp.async, NBUF - 1 stages ahead of the
// compute, so the weight bytes flow while the blocks wait at barriers and normalize their inputs.
// Per layer: QKV (norm + quant of x in every block, RoPE, K/V store) | attention, split over keys
// (flash-decoding; the last split of a head to finish combines) | O (+ residual) | gate/up (relu^2 or silu) |
// down (+ residual). Then block 0 writes the head's RMSNorm. Data written inside the kernel is read with
// ld.global.cg (L2), never through the non-coherent L1.

struct LayerDev {
    const uint4* w[4];  // qkv, o, gate/up, down (T2 words)
    const float* ws[4];
    const float* os[4];
    const float* nw[4];  // attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm
    __half* kc;
    __half* vc;
};

struct StepArgs {
    const LayerDev* layers;
    float* x;
    float* qb;
    float* att;
    float* fb;
    float* part;
    const float* cos_tab;
    const float* sin_tab;
    const int* pos;
    unsigned* sync;  // [0]: barrier count; [64 + h]: attention splits done of head h
    const float* out_norm;
    float* hn;
    unsigned long long* trace;  // optional: %globaltimer at each stage point, (block, layer, 24)
    int n_layer, E, F, HD, n_head, n_kv, D, n_ctx, act, round_f16, nsplit, buf_bytes;
    int units[4];  // rows (R = 1) or pairs (R = 2) a block, per matrix
    float eps;
    int nbuf;
    int sc_off;  // byte offset of the per-row weight and output scales in a buffer (after the words)
    int maxrows;  // rows a block, at most (the scale areas hold that many floats each)
};

#define MK_THREADS 512
#define MK_WARPS 16

__device__ __forceinline__ void grid_bar(unsigned* cnt, unsigned& target) {
    target += gridDim.x;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        asm volatile("red.relaxed.gpu.global.add.u32 [%0], 1;" ::"l"(cnt) : "memory");
        unsigned v;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(cnt) : "memory");
        } while (v < target);
    }
    __syncthreads();
}

struct MkShared {
    double shd[32];
    float shf[32];
    float shg[32];
    int shi[32];
    float s;
    int qsum;
    int last;
};

// Block-wide sum / max with one barrier: every warp reduces the warp partials itself (sh: 16 slots, not reused
// by the next reduction before another barrier).
template <typename T>
__device__ __forceinline__ T mk_sum(T v, T* sh) {
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    T r = (threadIdx.x & 31) < MK_WARPS ? sh[threadIdx.x & 31] : (T)0;
    return warp_sum(r);
}
__device__ __forceinline__ float mk_max(float v, float* sh) {
    v = warp_max(v);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = (threadIdx.x & 31) < MK_WARPS ? sh[threadIdx.x & 31] : 0.0f;
    return warp_max(r);
}

// RMSNorm(x) * nw then int8 quantization of one row of K (<= 8192) floats into shared memory (as bitnet.cpp).
__device__ __noinline__ void mk_norm_quant(const float* x, const float* __restrict__ nw, int K, float eps, int* qsm, MkShared& sh) {
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const float4* w4 = reinterpret_cast<const float4*>(nw);
    const int K4 = K >> 2;
    float4 xv[4], wv[4];
    double ss = 0.0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        int i = threadIdx.x + k * MK_THREADS;
        if (i < K4) {
            xv[k] = __ldcg(x4 + i);
            wv[k] = __ldg(w4 + i);
            float4 v = xv[k];
            ss += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
        }
    }
    ss = mk_sum<double>(ss, sh.shd);
    const float scale = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn((float)(ss / (double)K), eps)));
    float amax = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        int i = threadIdx.x + k * MK_THREADS;
        if (i < K4) {
            float4 v = xv[k], w = wv[k];
            amax = fmaxf(amax, fabsf(__fmul_rn(__fmul_rn(v.x, scale), w.x)));
            amax = fmaxf(amax, fabsf(__fmul_rn(__fmul_rn(v.y, scale), w.y)));
            amax = fmaxf(amax, fabsf(__fmul_rn(__fmul_rn(v.z, scale), w.z)));
            amax = fmaxf(amax, fabsf(__fmul_rn(__fmul_rn(v.w, scale), w.w)));
        }
    }
    amax = mk_max(amax, sh.shf);
    const float sc = __fdiv_rn(127.0f, fmaxf(amax, 1e-5f));
    int sum = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        int i = threadIdx.x + k * MK_THREADS;
        if (i < K4) {
            float4 v = xv[k], w = wv[k];
            int q0 = (int)fminf(fmaxf(rintf(__fmul_rn(__fmul_rn(__fmul_rn(v.x, scale), w.x), sc)), -128.0f), 127.0f);
            int q1 = (int)fminf(fmaxf(rintf(__fmul_rn(__fmul_rn(__fmul_rn(v.y, scale), w.y), sc)), -128.0f), 127.0f);
            int q2 = (int)fminf(fmaxf(rintf(__fmul_rn(__fmul_rn(__fmul_rn(v.z, scale), w.z), sc)), -128.0f), 127.0f);
            int q3 = (int)fminf(fmaxf(rintf(__fmul_rn(__fmul_rn(__fmul_rn(v.w, scale), w.w), sc)), -128.0f), 127.0f);
            qsm[i] = (q0 & 0xff) | ((q1 & 0xff) << 8) | ((q2 & 0xff) << 16) | ((q3 & 0xff) << 24);
            sum += q0 + q1 + q2 + q3;
        }
    }
    sum = mk_sum<int>(sum, sh.shi);
    if (threadIdx.x == 0) {
        sh.s = sc;
        sh.qsum = sum;
    }
    __syncthreads();
}

// The block's slice of matrix m: rows [row0, row0 + nrows) (R rows a unit).
__device__ __forceinline__ void mk_slice(const StepArgs& A, int m, int& row0, int& nrows, int& K) {
    const int R = (m == 0 || m == 2) ? 2 : 1;
    const int N = m == 0 ? A.HD + 2 * A.n_kv * A.D : (m == 2 ? 2 * A.F : A.E);
    K = m == 1 ? A.HD : (m == 3 ? A.F : A.E);
    const int u0 = blockIdx.x * A.units[m];
    const int u1 = min(u0 + A.units[m], N / R);
    row0 = u0 * R;
    nrows = max(u1 - u0, 0) * R;
}

__device__ __noinline__ void mk_issue(const StepArgs& A, int idx, char* buf, unsigned long long* mbar) {
    const int l = idx >> 2, m = idx & 3;
    int row0, nrows, K;
    mk_slice(A, m, row0, nrows, K);
    const LayerDev& L = A.layers[l];
    const char* src = reinterpret_cast<const char*>(L.w[m]) + (size_t)row0 * (K >> 2);
    const unsigned bytes = (unsigned)nrows * (K >> 2);
    if (threadIdx.x == 0) {  // one bulk copy (the TMA engine) of the whole slice
        const unsigned mb = (unsigned)__cvta_generic_to_shared(mbar);
        const unsigned dst = (unsigned)__cvta_generic_to_shared(buf);
        unsigned long long state;
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 %0, [%1], %2;"
                     : "=l"(state) : "r"(mb), "r"(bytes) : "memory");
        if (bytes)
            asm volatile(
                "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
                "l"(src), "r"(bytes), "r"(mb) : "memory");
    }
    float* scl = reinterpret_cast<float*>(buf + A.sc_off);
    for (int i = threadIdx.x; i < 2 * nrows; i += MK_THREADS) {
        if (i < nrows) cp_async4(scl + i, L.ws[m] + row0 + i);
        else cp_async4(scl + A.maxrows + i - nrows, L.os[m] + row0 + i - nrows);
    }
    cp_async_commit();
}

__device__ __forceinline__ void mbar_wait(unsigned long long* mbar, unsigned parity) {
    const unsigned mb = (unsigned)__cvta_generic_to_shared(mbar);
    unsigned ok = 0;
    while (!ok)
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
            : "=r"(ok) : "r"(mb), "r"(parity) : "memory");
}

__device__ __forceinline__ void mk_wait(int newer) {
    switch (newer) {
        case 0: cp_async_wait<0>(); break;
        case 1: cp_async_wait<1>(); break;
        case 2: cp_async_wait<2>(); break;
        default: cp_async_wait<3>(); break;
    }
    __syncthreads();
}

// One block's rows of matrix m from shared memory: warp w takes units w, w + 16, ...; lane l holds the
// activation chunks l, l + 32, ... (64 int8 each) in registers. Epilogue by lane 0 of the warp.
#define MK_MAXU 256  // rows (pairs) of x (of QKV) a block at most: the residual rows and RoPE angles it keeps

struct MkRows {
    float xs[MK_MAXU];  // the block's rows of the residual stream x (O and down own the same rows)
    float cs[MK_MAXU];  // cos / sin of the block's QKV pairs at this step's position
    float sn[MK_MAXU];
};

__device__ __noinline__ void mk_epilogue(const StepArgs& A, const LayerDev& L, int m, int u, int row, int acc0,
                                         int acc1, const float* wss, const float* oss, float sv, int qs, int pos,
                                         MkRows& rows);

template <int CPL, int R>
__device__ void mk_gemv(const StepArgs& A, const LayerDev& L, int m, const uint4* wb, const int4* q8, int li,
                        const MkShared& sh, MkRows& rows) {
    const float* wss = reinterpret_cast<const float*>(reinterpret_cast<const char*>(wb) + A.sc_off);
    const float* oss = wss + A.maxrows;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int row0, nrows, K;
    mk_slice(A, m, row0, nrows, K);
    const int C = K >> 6;
    constexpr bool REG = CPL <= 2;  // activations held in registers (else read from shared memory each row)
    int4 a[REG ? CPL : 1][4];
#pragma unroll
    for (int i = 0; i < (REG ? CPL : 0); i++) {
        int c = lane + 32 * i;
        if (c < C) {
            a[i][0] = q8[4 * c]; a[i][1] = q8[4 * c + 1]; a[i][2] = q8[4 * c + 2]; a[i][3] = q8[4 * c + 3];
        } else {
            a[i][0] = a[i][1] = a[i][2] = a[i][3] = make_int4(0, 0, 0, 0);
        }
    }
    const int nunits = nrows / R;
    const float sv = sh.s;
    const int qs = sh.qsum;
    const int pos = m == 0 ? __ldcg(A.pos) : 0;
#pragma unroll 1
    for (int u = warp; u < nunits; u += MK_WARPS) {
        int acc0 = 0, acc1 = 0;
        const uint4* w0 = wb + (size_t)(u * R) * C;
#pragma unroll
        for (int i = 0; i < CPL; i++) {
            int c = lane + 32 * i;
            if (c < C) {
                int4 b0, b1, b2, b3;
                if (REG) {
                    b0 = a[REG ? i : 0][0]; b1 = a[REG ? i : 0][1]; b2 = a[REG ? i : 0][2]; b3 = a[REG ? i : 0][3];
                } else {
                    b0 = q8[4 * c]; b1 = q8[4 * c + 1]; b2 = q8[4 * c + 2]; b3 = q8[4 * c + 3];
                }
                uint4 w = w0[c];
                acc0 = dot64(w, b0, b1, b2, b3, acc0);
                if (R == 2) {
                    uint4 v = w0[C + c];
                    acc1 = dot64(v, b0, b1, b2, b3, acc1);
                }
            }
        }
        acc0 = warp_sum(acc0);
        if (R == 2) acc1 = warp_sum(acc1);
        if (lane == 0) mk_epilogue(A, L, m, u, row0 + u * R, acc0, acc1, wss, oss, sv, qs, pos, rows);
    }
}

// The epilogue of one unit (row or pair) of the block's slice (lane 0), out of line: it runs once a unit.
__device__ __noinline__ void mk_epilogue(const StepArgs& A, const LayerDev& L, int m, int u, int row, int acc0,
                                         int acc1, const float* wss, const float* oss, float sv, int qs, int pos,
                                         MkRows& rows) {
    {
        const int R = (m == 0 || m == 2) ? 2 : 1;
        const int lr = u * R;
        float y0 = (__fdiv_rn((float)(acc0 - qs), sv) * wss[lr]) * oss[lr];
        if (m == 1 || m == 3) {
            const float v = rows.xs[u] + y0;
            rows.xs[u] = v;
            __stcg(A.x + row, v);
        } else {
            float y1 = (__fdiv_rn((float)(acc1 - qs), sv) * wss[lr + 1]) * oss[lr + 1];
            if (m == 2) {
                float r;
                if (A.act == 0) {
                    float g = fmaxf(y0, 0.0f);
                    r = __fmul_rn(__fmul_rn(g, g), y1);
                } else {
                    r = __fmul_rn(__fdiv_rn(y0, 1.0f + expf(-y0)), y1);
                }
                __stcg(A.fb + (row >> 1), r);
            } else {
                QKVArgs qa;
                qa.n_head = A.n_head; qa.n_kv = A.n_kv; qa.head_dim = A.D; qa.n_ctx = A.n_ctx;
                qa.cos_tab = A.cos_tab; qa.sin_tab = A.sin_tab; qa.kc = L.kc; qa.vc = L.vc;
                qkv_store_cs(0, row >> 1, y0, y1, rows.cs[u], rows.sn[u], A.qb, 0, pos, qa);
            }
        }
    }
}

__device__ __noinline__ void mk_gemv_any(const StepArgs& A, const LayerDev& L, int m, const uint4* wb, const int4* q8, int li,
                            const MkShared& sh, MkRows& rows) {
    const int K = m == 1 ? A.HD : (m == 3 ? A.F : A.E);
    const int cpl = ((K >> 6) + 31) >> 5;
    const bool pair = m == 0 || m == 2;
    switch (cpl * 2 + pair) {
        case 2: mk_gemv<1, 1>(A, L, m, wb, q8, li, sh, rows); break;
        case 3: mk_gemv<1, 2>(A, L, m, wb, q8, li, sh, rows); break;
        case 4: mk_gemv<2, 1>(A, L, m, wb, q8, li, sh, rows); break;
        case 5: mk_gemv<2, 2>(A, L, m, wb, q8, li, sh, rows); break;
        case 6: mk_gemv<3, 1>(A, L, m, wb, q8, li, sh, rows); break;
        case 7: mk_gemv<3, 2>(A, L, m, wb, q8, li, sh, rows); break;
        case 8: mk_gemv<4, 1>(A, L, m, wb, q8, li, sh, rows); break;
        default: mk_gemv<4, 2>(A, L, m, wb, q8, li, sh, rows); break;  // K <= 8192
    }
}

// Attention of one (head, key split): scores (LK = D/8 lanes a key, one 16-byte load of K a lane), local
// softmax, P.V unnormalized; partial (max, sum, o[D]) to A.part; the last split of the head combines into att.
__device__ __noinline__ void mk_attention(const StepArgs& A, const LayerDev& L, int li, float* sc, float* red, MkShared& sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int D = A.D, D8 = D >> 3, LK = D8, KPW = 32 / LK, KPR = MK_WARPS * KPW;
    const int nsplit = A.nsplit;
    const int pos = __ldcg(A.pos), nk = pos + 1;
    const int chunk = (nk + nsplit - 1) / nsplit;
    const float scale = 1.0f / sqrtf((float)D);
    for (int it = blockIdx.x; it < A.n_head * nsplit; it += gridDim.x) {
        const int h = it / nsplit, sp = it % nsplit, kh = h / (A.n_head / A.n_kv);
        const int j0 = min(sp * chunk, nk), j1 = min(j0 + chunk, nk), n = j1 - j0;
        const __half* kb = L.kc + (size_t)kh * A.n_ctx * D;
        const __half* vb = L.vc + (size_t)kh * A.n_ctx * D;
        const int c = lane % LK;
        float qv[8];
        {
            const float* qp = A.qb + h * D + 8 * c;
#pragma unroll
            for (int e = 0; e < 8; e++) qv[e] = __half2float(__float2half_rn(__ldcg(qp + e)));
        }
#pragma unroll 1
        for (int jb = 0; jb < n; jb += 2 * KPR) {
            uint4 w[2];
#pragma unroll
            for (int u = 0; u < 2; u++) {
                const int j = jb + u * KPR + warp * KPW + lane / LK;
                w[u] = j < n ? __ldcg(reinterpret_cast<const uint4*>(kb + (size_t)(j0 + j) * D) + c)
                             : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < 2; u++) {
                const int j = jb + u * KPR + warp * KPW + lane / LK;
                const __half2* hw = reinterpret_cast<const __half2*>(&w[u]);
                float2 f0 = __half22float2(hw[0]), f1 = __half22float2(hw[1]), f2 = __half22float2(hw[2]),
                       f3 = __half22float2(hw[3]);
                float acc = 0.0f;
                acc = fmaf(qv[0], f0.x, acc); acc = fmaf(qv[1], f0.y, acc);
                acc = fmaf(qv[2], f1.x, acc); acc = fmaf(qv[3], f1.y, acc);
                acc = fmaf(qv[4], f2.x, acc); acc = fmaf(qv[5], f2.y, acc);
                acc = fmaf(qv[6], f3.x, acc); acc = fmaf(qv[7], f3.y, acc);
                for (int o = LK >> 1; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
                if (c == 0 && j < n) sc[j] = __fmul_rn(acc, scale);
            }
        }
        __syncthreads();
        float mx = -INFINITY;
        for (int j = threadIdx.x; j < n; j += MK_THREADS) mx = fmaxf(mx, sc[j]);
        mx = mk_max(mx, sh.shf);
        float sum = 0.0f;
        for (int j = threadIdx.x; j < n; j += MK_THREADS) {
            float e = expf(sc[j] - mx);
            sc[j] = e;
            sum += e;
        }
        sum = mk_sum<float>(sum, sh.shg);  // its barrier follows the writes: sc complete
        // P.V: warp w takes keys w, w + 16, ...; lane covers dims 4 lane .. 4 lane + 3 (and + 128)
        float o[8];
#pragma unroll
        for (int e = 0; e < 8; e++) o[e] = 0.0f;
#pragma unroll 2
        for (int j = warp; j < n; j += MK_WARPS) {
            const float p = sc[j];
            const uint2* vr = reinterpret_cast<const uint2*>(vb + (size_t)(j0 + j) * D);
#pragma unroll
            for (int hlf = 0; hlf < 2; hlf++) {
                const int qd = lane + 32 * hlf;
                if (4 * qd < D) {
                    uint2 v = __ldcg(vr + qd);
                    const __half2* hv = reinterpret_cast<const __half2*>(&v);
                    float2 a0 = __half22float2(hv[0]), a1 = __half22float2(hv[1]);
                    o[4 * hlf + 0] = fmaf(p, a0.x, o[4 * hlf + 0]);
                    o[4 * hlf + 1] = fmaf(p, a0.y, o[4 * hlf + 1]);
                    o[4 * hlf + 2] = fmaf(p, a1.x, o[4 * hlf + 2]);
                    o[4 * hlf + 3] = fmaf(p, a1.y, o[4 * hlf + 3]);
                }
            }
        }
#pragma unroll
        for (int hlf = 0; hlf < 2; hlf++) {
            const int qd = lane + 32 * hlf;
            if (4 * qd < D) {
#pragma unroll
                for (int e = 0; e < 4; e++) red[warp * D + 4 * qd + e] = o[4 * hlf + e];
            }
        }
        __syncthreads();
        float* pp = A.part + (size_t)(h * nsplit + sp) * (D + 2);
        for (int d = threadIdx.x; d < D; d += MK_THREADS) {
            float r = 0.0f;
#pragma unroll 4
            for (int w = 0; w < MK_WARPS; w++) r += red[w * D + d];
            __stcg(pp + 2 + d, r);
        }
        if (threadIdx.x == 0) {
            __stcg(pp, mx);
            __stcg(pp + 1, sum);
        }
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned old = atomicAdd(A.sync + 64 + h, 1u);
            sh.last = (old == (unsigned)((li + 1) * nsplit - 1));
        }
        __syncthreads();
        if (sh.last) {  // combine: every split's (max, sum) to shared memory, then o over the splits
            __threadfence();
            const float* hp = A.part + (size_t)h * nsplit * (D + 2);
            float* ml = red;  // 2 * nsplit floats (the P.V scratch is free again)
            if (threadIdx.x < 2 * nsplit) ml[threadIdx.x] = __ldcg(hp + (threadIdx.x >> 1) * (D + 2) + (threadIdx.x & 1));
            __syncthreads();
            float M = -INFINITY;
            for (int k = 0; k < nsplit; k++) M = fmaxf(M, ml[2 * k]);
            for (int d = threadIdx.x; d < D; d += MK_THREADS) {
                float Ls = 0.0f, acc = 0.0f;
#pragma unroll 4
                for (int k = 0; k < nsplit; k++) {
                    float f = expf(ml[2 * k] - M);
                    Ls = fmaf(ml[2 * k + 1], f, Ls);
                    acc = fmaf(__ldcg(hp + k * (D + 2) + 2 + d), f, acc);
                }
                __stcg(A.att + h * D + d, __fdiv_rn(acc, Ls));
            }
        }
        __syncthreads();
    }
}

extern "C" __global__ void __launch_bounds__(MK_THREADS, 1) decode_step(const StepArgs* __restrict__ Ap) {
    extern __shared__ __align__(16) char mk_smem[];
    __shared__ StepArgs A;
    __shared__ MkShared sh;
    __shared__ LayerDev Ls;
    __shared__ MkRows rows;
    __shared__ __align__(8) unsigned long long mbar[4];
    if (threadIdx.x == 0) {
        A = *Ap;
        for (int b = 0; b < 4; b++) {
            unsigned mb = (unsigned)__cvta_generic_to_shared(mbar + b);
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(mb) : "memory");
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    {  // the block's residual rows and RoPE angles, kept in shared memory for the whole step
        const int pos = __ldcg(A.pos);
        const int r0 = blockIdx.x * A.units[1], nr = max(min(A.units[1], A.E - r0), 0);
        for (int i = threadIdx.x; i < nr; i += MK_THREADS) rows.xs[i] = __ldcg(A.x + r0 + i);
        QKVArgs qa;
        qa.n_head = A.n_head; qa.n_kv = A.n_kv; qa.head_dim = A.D;
        const int half = A.D >> 1;
        for (int i = threadIdx.x; i < A.units[0]; i += MK_THREADS) {
            const int ri = qkv_rope_index(blockIdx.x * A.units[0] + i, qa);
            rows.cs[i] = ri >= 0 ? __ldg(A.cos_tab + (size_t)pos * half + ri) : 0.0f;
            rows.sn[i] = ri >= 0 ? __ldg(A.sin_tab + (size_t)pos * half + ri) : 0.0f;
        }
    }
    // L2 prefetch of what a layer's critical path reads from memory (norm weights, the K/V cache up to pos),
    // one layer ahead; item k by block k % grid.
    auto l2_prefetch = [&](int l) {
        if (l >= A.n_layer || threadIdx.x != 0) return;
        const LayerDev& P = A.layers[l];
        const int pos = __ldcg(A.pos);
        const int nitems = 4 + 2 * A.n_kv;
        for (int k = blockIdx.x; k < nitems; k += gridDim.x) {
            const void* p;
            unsigned bytes;
            if (k < 4) {
                p = P.nw[k];
                bytes = 4u * (k == 1 ? A.HD : (k == 3 ? A.F : A.E));
            } else {
                const int kh = (k - 4) >> 1;
                const __half* base = ((k - 4) & 1) ? P.vc : P.kc;
                p = base + (size_t)kh * A.n_ctx * A.D;
                bytes = (unsigned)pos * A.D * 2u;
            }
            if (bytes) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
        }
    };
    l2_prefetch(0);
    const int maxk = max(max(A.E, A.F), A.HD);
    char* wbuf = mk_smem;
    int* q8 = reinterpret_cast<int*>(mk_smem + (size_t)A.nbuf * A.buf_bytes);
    float* sc = reinterpret_cast<float*>(reinterpret_cast<char*>(q8) + ((maxk + 15) & ~15));
    const int sc_len = (A.n_ctx + A.nsplit - 1) / A.nsplit;
    float* red = sc + ((sc_len + 3) & ~3);
    unsigned target = 0;
    int issued = 0, done = 0;
    const int total = 4 * A.n_layer;
    auto pump = [&]() {
        while (issued < total && issued < done + A.nbuf) {
            mk_issue(A, issued, wbuf + (size_t)(issued % A.nbuf) * A.buf_bytes, mbar + issued % A.nbuf);
            issued++;
        }
    };
    auto compute = [&](int li, int m, const LayerDev& L) {
        const int idx = 4 * li + m;
        mbar_wait(mbar + idx % A.nbuf, (unsigned)(idx / A.nbuf) & 1u);
        mk_wait(issued - idx - 1);
        if (A.trace != nullptr && threadIdx.x == 0) {
            unsigned long long t;
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
            A.trace[((size_t)blockIdx.x * A.n_layer + li) * 24 + 16 + m] = t;
        }
        mk_gemv_any(A, L, m, reinterpret_cast<const uint4*>(wbuf + (size_t)(idx % A.nbuf) * A.buf_bytes),
                    reinterpret_cast<const int4*>(q8), li, sh, rows);
        __syncthreads();
        done = idx + 1;
    };
    int li = 0;
    auto mark = [&](int ev) {
        if (A.trace != nullptr && threadIdx.x == 0) {
            unsigned long long t;
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
            A.trace[((size_t)blockIdx.x * A.n_layer + li) * 24 + ev] = t;
            if (ev == 0 || ev == 14) A.trace[((size_t)blockIdx.x * A.n_layer + li) * 24 + 20 + (ev != 0)] = clock64();
        }
    };
    for (li = 0; li < A.n_layer; li++) {
        __syncthreads();
        if (threadIdx.x < sizeof(LayerDev) / 8)
            reinterpret_cast<unsigned long long*>(&Ls)[threadIdx.x] =
                reinterpret_cast<const unsigned long long*>(A.layers + li)[threadIdx.x];
        __syncthreads();
        const LayerDev& L = Ls;
        mark(0);
        l2_prefetch(li + 1);
        pump();
        if (li > 0) grid_bar(A.sync, target);
        mark(1);
        mk_norm_quant(A.x, L.nw[0], A.E, A.eps, q8, sh);
        mark(2);
        compute(li, 0, L);
        mark(3);
        pump();
        grid_bar(A.sync, target);
        mark(4);
        mk_attention(A, L, li, sc, red, sh);
        mark(5);
        pump();
        grid_bar(A.sync, target);
        mark(6);
        mk_norm_quant(A.att, L.nw[1], A.HD, A.eps, q8, sh);
        mark(7);
        compute(li, 1, L);
        mark(8);
        pump();
        grid_bar(A.sync, target);
        mark(9);
        mk_norm_quant(A.x, L.nw[2], A.E, A.eps, q8, sh);
        mark(10);
        compute(li, 2, L);
        mark(11);
        pump();
        grid_bar(A.sync, target);
        mark(12);
        mk_norm_quant(A.fb, L.nw[3], A.F, A.eps, q8, sh);
        mark(13);
        compute(li, 3, L);
        mark(14);
    }
    grid_bar(A.sync, target);
    if (blockIdx.x != 0) return;
    // the head's RMSNorm (as rmsnorm_f32)
    const int E = A.E;
    double ss = 0.0;
    for (int i = threadIdx.x; i < E; i += MK_THREADS) {
        double v = (double)__ldcg(A.x + i);
        ss += v * v;
    }
    ss = block_sum<double>(ss, sh.shd);
    float scale = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn((float)(ss / (double)E), A.eps)));
    for (int i = threadIdx.x; i < E; i += MK_THREADS) {
        float y = __fmul_rn(__fmul_rn(__ldcg(A.x + i), scale), __ldg(A.out_norm + i));
        if (A.round_f16) y = __half2float(__float2half_rn(y));
        A.hn[i] = y;
    }
}

// The F16 head for one token with the argmax folded in: every block (8 warps, one row a warp) offers its best
// row to a 64-bit atomicMax on key = (order-preserving bits of the logit) << 32 | ~index, so ties go to the
// first index as in block_argmax. key must be 0 before the launch.
__device__ __forceinline__ unsigned long long argmax_key(float v, int idx) {
    unsigned u = __float_as_uint(v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)u << 32) | (unsigned)(0xffffffffu - (unsigned)idx);
}

// The largest of a 256-thread block's 8 warp keys (lane 0 of each holds its warp's; 0 is none) into *key: one
// atomicMax a block (the heads' argmax keys, the certified head's bound key).
template <typename T>
__device__ __forceinline__ void block_key_max(T k, T* key) {
    __shared__ T best[8];
    if ((threadIdx.x & 31) == 0) best[threadIdx.x >> 5] = k;
    __syncthreads();
    if (threadIdx.x == 0) {
        T b = best[0];
        for (int w = 1; w < 8; w++) b = max(b, best[w]);
        if (b) atomicMax(key, b);
    }
}

extern "C" __global__ void __launch_bounds__(256) f16_head_argmax(const uint4* __restrict__ W, int V, int K,
                                                                  const float* __restrict__ x,
                                                                  float* __restrict__ out,
                                                                  unsigned long long* key) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * 8 + warp;
    unsigned long long k = 0;
    if (row < V) {
        f16_warp<1>(W, row, K, x, out, V, 0, 1);
        if (lane == 0) {
            __threadfence_block();
            k = argmax_key(out[row], row);
        }
    }
    block_key_max(k, key);
}

// After the head: the argmax index out of key; step != 0 also feeds it to the next replay (tok, hist, pos).
extern "C" __global__ void argmax_finish(const unsigned long long* key, int* out, int* tok, int* pos, int* hist,
                                         int step) {
    pdl_trigger();
    pdl_wait();
    if (threadIdx.x != 0) return;
    int idx = (int)(0xffffffffu - (unsigned)(*key & 0xffffffffull));
    out[0] = idx;
    if (step) {
        int p = *pos;
        tok[0] = idx;
        hist[p + 1] = idx;
        *pos = p + 1;
    }
}

// The optional int8 LM head (the CPU path's `--lm-head q8`, bitnet_kernels.cpu.q8_head_prepare / q8_head_gemv):
// per row scale = max|w| / 127 and q = round-half-even(w * 127 / max|w|) (a zero row: q = 0, scale 0), made on
// the device at load; logits y[t, v] = (float)(int8 dot of q[v] and x quantized per token) / s[t] * scale[v],
// exact integer dots (dp4a), the same float expression as the CPU kernels. One warp a row.
extern "C" __global__ void __launch_bounds__(256) q8_head_prepare(const __half* __restrict__ w, int V, int K,
                                                                  int8_t* __restrict__ q, float* __restrict__ scale) {
    const int lane = threadIdx.x & 31, row = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (row >= V) return;
    const __half* wr = w + (size_t)row * K;
    int8_t* qr = q + (size_t)row * K;
    float amax = 0.0f;
    for (int k = lane; k < K; k += WARP) amax = fmaxf(amax, fabsf(__half2float(wr[k])));
    amax = warp_max(amax);
    if (amax == 0.0f) {
        for (int k = lane; k < K; k += WARP) qr[k] = 0;
        if (lane == 0) scale[row] = 0.0f;
        return;
    }
    const float s = __fdiv_rn(127.0f, amax);
    for (int k = lane; k < K; k += WARP) qr[k] = (int8_t)(int)rintf(__fmul_rn(__half2float(wr[k]), s));
    if (lane == 0) scale[row] = __fdiv_rn(amax, 127.0f);
}

// int8 rows (V, K) x int8 activations (T, K) with scales s (T,): TT tokens from t0; K % 16 == 0.
template <int TT>
__device__ __forceinline__ void q8_warp(const uint4* __restrict__ W, int row, int K, const int8_t* __restrict__ xq,
                                        const float* __restrict__ s, const float* __restrict__ scale,
                                        float* __restrict__ out, int ldo, int t0, int T) {
    const int lane = threadIdx.x & 31;
    const int nchunk = K >> 4;  // 16 weights a 16-byte chunk
    const uint4* wr = W + (size_t)row * nchunk;
    int acc[TT];
#pragma unroll
    for (int t = 0; t < TT; t++) acc[t] = 0;
    constexpr int U = 4;
    for (int c0 = lane; c0 < nchunk; c0 += WARP * U) {
        uint4 w[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = c0 + u * WARP;
            w[u] = c < nchunk ? ld_stream(wr + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = c0 + u * WARP;
            if (c >= nchunk) break;
#pragma unroll
            for (int t = 0; t < TT; t++) {
                const int tt = min(t0 + t, T - 1);
                const int4 a = __ldg(reinterpret_cast<const int4*>(xq + (size_t)tt * K) + c);
                int v = acc[t];
                v = __dp4a((int)w[u].x, a.x, v);
                v = __dp4a((int)w[u].y, a.y, v);
                v = __dp4a((int)w[u].z, a.z, v);
                v = __dp4a((int)w[u].w, a.w, v);
                acc[t] = v;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < TT; t++) acc[t] = warp_sum(acc[t]);
#pragma unroll
    for (int t = 0; t < TT; t++)
        if (lane == (t & 31) && t0 + t < T)
            out[(size_t)(t0 + t) * ldo + row] = __fdiv_rn((float)acc[t], s[t0 + t]) * scale[row];
}

#define Q8_KERNEL(NAME, TT)                                                                                     \
    extern "C" __global__ void __launch_bounds__(256) NAME(const uint4* __restrict__ W, int V, int K,           \
                                                           const int8_t* __restrict__ xq, const float* __restrict__ s, \
                                                           const float* __restrict__ scale, float* __restrict__ out, \
                                                           int ldo, int T) {                                    \
        int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);                                           \
        if (row >= V) return;                                                                                    \
        q8_warp<TT>(W, row, K, xq, s, scale, out, ldo, blockIdx.y * TT, T);                                      \
    }

Q8_KERNEL(q8_gemv_t1, 1)
Q8_KERNEL(q8_gemv_t8, 8)

// The int8 head for one token with the argmax folded in (as f16_head_argmax).
extern "C" __global__ void __launch_bounds__(256) q8_head_argmax(const uint4* __restrict__ W, int V, int K,
                                                                 const int8_t* __restrict__ xq,
                                                                 const float* __restrict__ s,
                                                                 const float* __restrict__ scale,
                                                                 float* __restrict__ out, unsigned long long* key) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * 8 + warp;
    unsigned long long k = 0;
    if (row < V) {
        q8_warp<1>(W, row, K, xq, s, scale, out, V, 0, 1);
        if (lane == 0) {
            __threadfence_block();
            k = argmax_key(out[row], row);
        }
    }
    block_key_max(k, key);
}

// A kernel that does nothing (tools/gpu_profile_step.py: the launch cost of a step's grids).
// --- The certified greedy head: the F16 head's argmax from the int8 head plus a few F16 rows --------------------
// For one token, greedy: the int8 head (q8_head_prepare's rows, activations quantized here) gives every logit
// A_r with a rigorous bound B_r on |T_r - A_r|, T_r the F16 head kernel's own float result (f16_warp):
//   with w = hs_r wq + ew (hs_r the row's scale, wq its int8 codes) and x = xq / sx + ex,
//   T_r - A_r = sum(ew x) + sum(hs_r wq ex) + (T_r - sum(w x)) + (A*_r - A_r), so
//   |T_r - A_r| <= |ew_r| |x| + (|w_r| + |ew_r|) |ex| + 1e-4 |w_r| |x| + 1e-5 |A_r|
// (2-norms, Cauchy-Schwarz; |w_r|, |ew_r| per row at load and |x|, |ex| per token, all rounded up; the last two
// terms cover the float accumulation of f16_warp (~85 roundings of sum |w x| <= |w| |x|, 20x margin) and the
// rounding of A's formula (4 u)); B_r takes a further 1e-4 relative margin. Every row with A_r + B_r >= LB =
// max_r (A_r - B_r) is a candidate (the F16 argmax is: T >= LB); q8c_rescore computes the candidates' F16 logits
// with f16_warp (the bits of the F16 head) and folds them into the argmax key as f16_head_argmax does, so the
// token is the F16 head's, ties to the first index included.

// An order-preserving 32-bit key of a float (atomicMax on it is a float max; 0 is below every float).
__device__ __forceinline__ unsigned fkey(float v) {
    const unsigned u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float fkey_value(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Per row of the F16 head (a warp a row): |w_r| and |w_r - hs_r wq_r| (2-norms in double, rounded up to float).
extern "C" __global__ void __launch_bounds__(256) q8c_prepare(const __half* __restrict__ w, const int8_t* __restrict__ q,
                                                              const float* __restrict__ scale, int V, int K,
                                                              float* __restrict__ wn, float* __restrict__ ewn) {
    const int lane = threadIdx.x & 31, row = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (row >= V) return;
    const double hs = (double)scale[row];
    double sw = 0.0, se = 0.0;
    for (int k = lane; k < K; k += WARP) {
        const double wv = (double)__half2float(w[(size_t)row * K + k]);
        const double e = wv - hs * (double)q[(size_t)row * K + k];
        sw += wv * wv;
        se += e * e;
    }
    sw = warp_sum(sw);
    se = warp_sum(se);
    if (lane == 0) {
        wn[row] = __double2float_ru(sqrt(sw) * (1.0 + 1e-12));
        ewn[row] = __double2float_ru(sqrt(se) * (1.0 + 1e-12));
    }
}

#define HN_MAXR 8  // head_norm_q8c: elements a thread (K <= 8 x 1024)

// The head's input for one token (one block): hn, the bits of rmsnorm_f32 with round_f16 (what the F16 head
// reads), its int8 quantization xq with scale s (sx = 127 / max(max|hn|, 1e-5), round half to even) and
// hx = (|hn|, |hn - xq / sx|), rounded up.
extern "C" __global__ void __launch_bounds__(1024) head_norm_q8c(const float* __restrict__ x, const float* __restrict__ w,
                                                                 int K, float eps, float* __restrict__ hn,
                                                                 int8_t* __restrict__ xq, float* __restrict__ s,
                                                                 float* __restrict__ hx) {
    // the row and the norm weight read once into registers (K <= HN_MAXR x the block: the caller checks), every
    // load issued first; the sum of squares in rms_scale's order and butterfly (the bits of rmsnorm_f32); one
    // barrier a reduction (sum of squares, maximum, then the two norms together)
    __shared__ double shd[32], shy[32], she[32];
    __shared__ float shf[32];
    pdl_trigger();
    pdl_wait();
    float xv[HN_MAXR], wv[HN_MAXR];
#pragma unroll
    for (int j = 0; j < HN_MAXR; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        xv[j] = i < K ? x[i] : 0.0f;
        wv[j] = i < K ? w[i] : 0.0f;
    }
    double ss = 0.0;
#pragma unroll
    for (int j = 0; j < HN_MAXR; j++) {
        const double v = (double)xv[j];
        if (threadIdx.x + j * blockDim.x < K) ss += v * v;
    }
    ss = block_sum1<double>(ss, shd);
    const float scale = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn((float)(ss / (double)K), eps)));
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < HN_MAXR; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        const float y = __half2float(__float2half_rn(__fmul_rn(__fmul_rn(xv[j], scale), wv[j])));
        xv[j] = y;
        if (i < K) {
            hn[i] = y;
            amax = fmaxf(amax, fabsf(y));
        }
    }
    amax = block_max1(amax, shf);
    const float sx = __fdiv_rn(127.0f, fmaxf(amax, 1e-5f));
    double sy = 0.0, se = 0.0;
    const double isx = 1.0 / (double)sx;  // (qv * isx: within 2^-52 of qv / sx, far inside the bound's margin)
#pragma unroll
    for (int j = 0; j < HN_MAXR; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < K) {
            const float y = xv[j];
            const int qv = max(-128, min(127, __float2int_rn(__fmul_rn(y, sx))));
            xq[i] = (int8_t)qv;
            const double e = (double)y - (double)qv * isx;
            sy += (double)y * y;
            se += e * e;
        }
    }
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    sy = warp_sum(sy);
    se = warp_sum(se);
    if (lane == 0) {
        shy[wid] = sy;
        she[wid] = se;
    }
    __syncthreads();
    if (wid == 0) {
        sy = warp_sum(lane < nw ? shy[lane] : 0.0);
        se = warp_sum(lane < nw ? she[lane] : 0.0);
        if (lane == 0) {
            s[0] = sx;
            hx[0] = __double2float_ru(sqrt(sy) * (1.0 + 1e-12));
            hx[1] = __double2float_ru(sqrt(se) * (1.0 + 1e-12) + 1e-30);
        }
    }
}

// The int8 head over every row (a warp a row) with the bound: ub[r] = A_r + B_r, lo[r] = A_r - B_r (where lo is
// not null: the top-k path), and the key of max (A_r - B_r) into *lb (zeroed before).
extern "C" __global__ void __launch_bounds__(256) q8c_head(const uint4* __restrict__ W, int V, int K,
                                                           const int8_t* __restrict__ xq, const float* __restrict__ s,
                                                           const float* __restrict__ scale,
                                                           const float* __restrict__ wn, const float* __restrict__ ewn,
                                                           const float* __restrict__ hx, float* __restrict__ ub,
                                                           unsigned* __restrict__ lb, float* __restrict__ lo) {
    pdl_trigger();
    pdl_wait();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * 8 + warp;
    unsigned k = 0;
    if (row < V) {
        q8_warp<1>(W, row, K, xq, s, scale, ub, V, 0, 1);
        if (lane == 0) {
            __threadfence_block();
            const float a = ub[row], xn = hx[0], exn = hx[1], w2 = wn[row], e2 = ewn[row];
            const float b = (fmaf(e2, xn, (w2 + e2) * exn) + 1e-4f * w2 * xn + 1e-5f * fabsf(a)) * 1.0001f + 1e-30f;
            ub[row] = a + b;
            if (lo != nullptr) lo[row] = a - b;
            k = fkey(a - b);
        }
    }
    block_key_max(k, lb);
}

// A block's candidates among its 256 rows: those with ub[r] >= thr, or either NaN (a NaN bound - a NaN or infinite
// hidden state - makes the row a candidate, so such a step rescores every row and gives the F16 head's key, whatever
// its logits are). Each warp checks 32 rows; the block's candidates go into one list in shared memory, and the warps
// take them in turn (a warp a candidate, its F16 logit with f16_warp, the F16 head's bits, every load of the row
// issued first), so a warp whose rows hold several candidates does not keep the block waiting (~3 us a candidate
// from memory). count(n) (thread 0, the block's count) comes before any logit; then lane 0 calls each(j, r, logit)
// for the block's j-th candidate r. Every thread of the block must call it.
template <typename Count, typename Each>
__device__ __forceinline__ void q8c_candidates(const uint4* __restrict__ W16, int V, int K, const float* __restrict__ hn,
                                               const float* __restrict__ ub, float thr, float* __restrict__ out,
                                               Count&& count, Each&& each) {
    __shared__ int list[256], n_sh;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, row = blockIdx.x * 256 + threadIdx.x;
    if (threadIdx.x == 0) n_sh = 0;
    __syncthreads();
    const bool cand = row < V && !(ub[row] < thr);
    const unsigned mask = __ballot_sync(0xffffffffu, cand);
    int at = 0;
    if (lane == 0 && mask) at = atomicAdd(&n_sh, __popc(mask));
    at = __shfl_sync(0xffffffffu, at, 0);
    if (cand) list[at + __popc(mask & ((1u << lane) - 1u))] = row;
    __syncthreads();
    const int n = n_sh;
    if (n == 0) return;
    if (threadIdx.x == 0) count(n);
    __syncthreads();  // (what count wrote, for each)
    for (int j = warp; j < n; j += 8) {
        const int r = list[j];
        f16_warp<1, 12>(W16, r, K, hn, out, V, 0, 1);
        if (lane == 0) {
            __threadfence_block();
            each(j, r, out[r]);
        }
    }
}

// The candidates (ub[r] >= LB, or either NaN; a warp checks 32 rows and computes each candidate's F16 logit with f16_warp) folded
// into the argmax key (as f16_head_argmax); *ncand (when not null) counts them.
extern "C" __global__ void __launch_bounds__(256) q8c_rescore(const uint4* __restrict__ W16, int V, int K,
                                                              const float* __restrict__ hn,
                                                              const float* __restrict__ ub,
                                                              const unsigned* __restrict__ lb,
                                                              float* __restrict__ out, unsigned long long* key,
                                                              unsigned* ncand) {
    pdl_trigger();
    pdl_wait();
    unsigned long long k = 0;
    q8c_candidates(
        W16, V, K, hn, ub, fkey_value(*lb), out,
        [&](int n) {
            if (ncand != nullptr) atomicAdd(ncand, (unsigned)n);
        },
        [&](int, int r, float v) { k = max(k, argmax_key(v, r)); });
    block_key_max(k, key);
}

// --- The certified top-k head (sampling): every row whose F16 logit may be among the k largest ----------------
// A threshold tau <= the k-th largest lower bound lo (a histogram of lo's order-preserving keys, 2048 bins on their
// top 11 bits: tau is the lowest key of the bin where the count from the top reaches k) makes every row with
// ub >= tau a candidate: a row whose F16 logit T is at least the k-th largest T has ub >= T >= (k-th largest T)
// >= (k-th largest lo) >= tau, ties included. q8c_collect computes the candidates' F16 logits (f16_warp, the F16
// head's bits) into a list: list[0] the count (it may pass maxc: the caller then reads the whole F16 head), then
// (row, logit bits) pairs in no order.
#define Q8C_BINS 2048
extern "C" __global__ void __launch_bounds__(1024) q8c_hist(const float* __restrict__ lo, int V,
                                                            unsigned* __restrict__ hist) {
    __shared__ unsigned h[Q8C_BINS];
    for (int i = threadIdx.x; i < Q8C_BINS; i += blockDim.x) h[i] = 0;
    __syncthreads();
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < V; r += gridDim.x * blockDim.x)
        atomicAdd(&h[fkey(lo[r]) >> 21], 1u);
    __syncthreads();
    for (int i = threadIdx.x; i < Q8C_BINS; i += blockDim.x)
        if (h[i]) atomicAdd(&hist[i], h[i]);
}

// The repeat penalty on the certified bounds of the recent rows, before the top-k threshold: args = (k, n, penalty's
// float bits, the n distinct rows). x / p above 0 and x * p below (llama.cpp's penalty, p >= 1) is monotone, so the
// penalized bounds bound the penalized logit, and the candidates are those of the penalized top k.
extern "C" __global__ void q8c_penalize(float* __restrict__ ub, float* __restrict__ lo, const int* __restrict__ args) {
    const int n = args[1];
    const float p = __int_as_float(args[2]);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int r = args[3 + i];
        const float u = ub[r], l = lo[r];
        ub[r] = u > 0.0f ? __fdiv_rn(u, p) : __fmul_rn(u, p);
        lo[r] = l > 0.0f ? __fdiv_rn(l, p) : __fmul_rn(l, p);
    }
}

// One warp: the bin where the count from the top first reaches *kp (all rows: key 0 when the vocabulary has
// fewer than k rows), its lowest key into *tau.
extern "C" __global__ void q8c_thresh(const unsigned* __restrict__ hist, const int* __restrict__ kp,
                                      unsigned* __restrict__ tau) {
    const int lane = threadIdx.x & 31, seg = Q8C_BINS / WARP;  // lane l: bins of segment l from the top
    const unsigned k = (unsigned)max(*kp, 1);
    unsigned c = 0;
    for (int i = 0; i < seg; i++) c += hist[Q8C_BINS - 1 - lane * seg - i];
    unsigned incl = c;  // inclusive scan over the lanes (from the top)
    for (int o = 1; o < WARP; o <<= 1) {
        const unsigned v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    const unsigned hit = __ballot_sync(0xffffffffu, incl >= k);
    if (lane != 0) return;
    if (!hit) {
        *tau = 0u;
        return;
    }
    const int l = __ffs(hit) - 1;  // lane 0 alone from here: the count above segment l, then its bins one by one
    unsigned acc = 0;
    for (int i = 0; i < l * seg; i++) acc += hist[Q8C_BINS - 1 - i];
    int b = Q8C_BINS - 1 - l * seg;
    for (;; b--) {
        acc += hist[b];
        if (acc >= k || b == Q8C_BINS - 1 - (l + 1) * seg + 1) break;
    }
    *tau = (unsigned)b << 21;
}

// The candidates (ub[r] >= fkey_value(*tau), or either NaN) with their F16 logits (a warp checks 32 rows, as
// q8c_rescore) appended to list (count first; entries past maxc are counted, not written).
extern "C" __global__ void __launch_bounds__(256) q8c_collect(const uint4* __restrict__ W16, int V, int K,
                                                              const float* __restrict__ hn,
                                                              const float* __restrict__ ub,
                                                              const unsigned* __restrict__ tau,
                                                              float* __restrict__ out, unsigned* __restrict__ list,
                                                              int maxc) {
    __shared__ unsigned base_sh;  // the block's first place in the list
    q8c_candidates(
        W16, V, K, hn, ub, fkey_value(*tau), out,
        [&](int n) { base_sh = atomicAdd(list, (unsigned)n); },
        [&](int j, int r, float v) {
            const unsigned slot = base_sh + (unsigned)j;
            if (slot < (unsigned)maxc) {
                list[1 + 2 * slot] = (unsigned)r;
                list[2 + 2 * slot] = __float_as_uint(v);
            }
        });
}

extern "C" __global__ void noop() {}

// n grid-wide barriers of the persistent decode kernel in a row (a benchmark of their cost); cnt must be 0.
extern "C" __global__ void __launch_bounds__(MK_THREADS, 1) bar_test(unsigned* cnt, int n) {
    unsigned target = 0;
    for (int i = 0; i < n; i++) grid_bar(cnt, target);
}
