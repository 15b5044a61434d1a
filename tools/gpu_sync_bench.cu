// Micro-benchmark of the cost of one all-to-all dependency of the decode step (a norm needs every row of the
// matmul before it), on the device:
//   nvcc -arch=sm_90 -O3 -std=c++17 -diag-suppress 1556 [-DK=6912] [-DNT=864] [-DNB=132] [-DWB=20480] \
//     -o /tmp/s tools/gpu_sync_bench.cu && /tmp/s
// A phase: NB blocks (128; one an SM) of NT threads each read the whole K-float row the phase before wrote, reduce
// it over the block (one barrier), and write their share of the next row. The ways to order the phases:
//   graph: one kernel a phase, P kernels in a CUDA graph (the shipped step's way);
//   grid:  one persistent kernel, a grid barrier between phases (an atomic counter, fence, poll);
//   ll:    one persistent kernel, each entry stored as (value, epoch) in one 8-byte word (no fence, no counter):
//          the reader polls the entries not yet of this run's epoch (also with __nanosleep 64 / 200 ns between
//          polls).
//   pdl:   one kernel a phase launched as a programmatic dependent of the one before (its blocks resident beside
//          the running phase's, waiting in griddepcontrol.wait); pdl + copies: each block also copies WB bytes of
//          "weights" into shared memory before the wait; graph + copies: the same kernel, plain launches.
// Printed: us a phase for each (best of 3 rounds), and the row sums checked equal. docs/gpu.md, ninth and tenth
// sessions.
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <vector>
#ifndef K
#define K 2560
#endif
#ifndef NB
#define NB 128
#endif
#ifndef NT
#define NT 640
#endif
#define PER ((K + NB - 1) / NB)
#define SMEM (100 * 1024)

__device__ __forceinline__ float block_sum_f(float v, float* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    float r = lane < (NT / 32) ? sh[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
    return r;
}

__device__ __forceinline__ float next_val(float x, float s, int i) { return x * 0.5f + s * 1e-4f + (float)(i & 7); }

// One phase on plain floats (graph and grid): read the row through L2, sum it over the block, write this block's
// share of the next row.
__device__ __forceinline__ void phase_body(const float* in, float* out, float* sums, int p, float* sm, float* red) {
    float v = 0.0f;
    for (int i = threadIdx.x; i < K; i += NT) {
        const float x = __ldcg(in + i);
        sm[i] = x;
        v += x;
    }
    const float s = block_sum_f(v, red);
    if (threadIdx.x < PER && blockIdx.x * PER + threadIdx.x < K) {  // (NB need not divide K)
        const int i = blockIdx.x * PER + threadIdx.x;
        __stcg(out + i, next_val(sm[i], s, i));
    }
    if (threadIdx.x == 0 && blockIdx.x == 0) sums[p] = s;
}

// graph: one phase
extern "C" __global__ void __launch_bounds__(NT, 1) phase_kernel(const float* __restrict__ in, float* out,
                                                                  float* sums, int p) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    phase_body(in, out, sums, p, sm, red);
}

// pdl / pdlw: one phase a kernel as in graph, launched as a programmatic dependent of the phase before
// (cudaLaunchAttributeProgrammaticStreamSerialization): a block triggers its dependents at its start, so the next
// phase's blocks become resident beside this phase's (two fit an SM) and wait in griddepcontrol.wait; pdlw: before
// the wait each block also copies WB bytes of "weights" into shared memory (cp.async, a different slice of a
// buffer larger than L2 each phase), consumed after the phase, as the decode kernels stage theirs.
#ifndef WB
#define WB (64 * 1024)
#endif
template <bool W>
__global__ void __launch_bounds__(NT) phase_pdl(const float* __restrict__ in, float* out, float* sums, int p,
                                                const uint4* __restrict__ wts, float* wsum) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    uint4* ws = reinterpret_cast<uint4*>(sm + K);
    if (W) {
        const uint4* src = wts + (size_t)blockIdx.x * (WB / 16);
        for (int i = threadIdx.x; i < WB / 16; i += NT) {
            const unsigned a = (unsigned)__cvta_generic_to_shared(ws + i);
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(a), "l"(src + i));
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
    }
    asm volatile("griddepcontrol.wait;" ::: "memory");
    phase_body(in, out, sums, p, sm, red);
    if (W) {
        asm volatile("cp.async.wait_group 0;" ::: "memory");
        if (threadIdx.x == 0 && blockIdx.x == 0) wsum[p] = __uint_as_float(ws[p % (WB / 16)].x & 0x3fffffffu);
    }
}

// grid: persistent, grid barrier (64-bit counter that only grows)
extern "C" __global__ void __launch_bounds__(NT, 1) grid_chain(float* rows, float* sums, int P,
                                                                unsigned long long* cnt) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    __shared__ unsigned long long target;
    if (threadIdx.x == 0) target = *(volatile unsigned long long*)cnt;
    __syncthreads();
    unsigned long long tg = target;
    for (int p = 0; p < P; p++) {
        phase_body(rows + (size_t)p * K, rows + (size_t)(p + 1) * K, sums, p, sm, red);
        tg += NB;
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            atomicAdd(cnt, 1ull);
            while (*(volatile unsigned long long*)cnt < tg) {
            }
            __threadfence();
        }
        __syncthreads();
    }
}

__device__ __forceinline__ unsigned long long ld_relaxed(const unsigned long long* p) {
    unsigned long long v;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_relaxed(unsigned long long* p, unsigned long long v) {
    asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

// ll: persistent, (value, epoch) words; rows[p] holds phase p's row (row 0 written by the host with the epoch)
template <int SLEEP>
__global__ void __launch_bounds__(NT, 1) ll_chain(unsigned long long* rows, float* sums, int P,
                                                              unsigned epoch) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    for (int p = 0; p < P; p++) {
        const unsigned long long* in = rows + (size_t)p * K;
        unsigned long long* out = rows + (size_t)(p + 1) * K;
        float v = 0.0f;
        constexpr int E = (K + NT - 1) / NT;
        unsigned long long w[E];
        unsigned pend = 0;  // entries not yet of this epoch: only those are read again
#pragma unroll
        for (int e = 0; e < E; e++)
            if (threadIdx.x + e * NT < K) pend |= 1u << e;
        while (pend) {
#pragma unroll
            for (int e = 0; e < E; e++)
                if (pend & (1u << e)) w[e] = ld_relaxed(in + threadIdx.x + e * NT);
#pragma unroll
            for (int e = 0; e < E; e++)
                if ((pend & (1u << e)) && (unsigned)(w[e] >> 32) == epoch) pend &= ~(1u << e);
            if (pend && SLEEP) __nanosleep(SLEEP);
        }
#pragma unroll
        for (int e = 0; e < E; e++) {
            const int i = threadIdx.x + e * NT;
            if (i < K) {
                const float x = __uint_as_float((unsigned)w[e]);
                sm[i] = x;
                v += x;
            }
        }
        const float s = block_sum_f(v, red);
        if (threadIdx.x < PER && blockIdx.x * PER + threadIdx.x < K) {
            const int i = blockIdx.x * PER + threadIdx.x;
            const float y = next_val(sm[i], s, i);
            st_relaxed(out + i, ((unsigned long long)epoch << 32) | __float_as_uint(y));
        }
        if (threadIdx.x == 0 && blockIdx.x == 0) sums[p] = s;
        __syncthreads();  // sm reused
    }
}

extern "C" __global__ void ll_seed(unsigned long long* row, const float* x, unsigned epoch) {
    for (int i = threadIdx.x + blockIdx.x * blockDim.x; i < K; i += blockDim.x * gridDim.x)
        row[i] = ((unsigned long long)epoch << 32) | __float_as_uint(x[i]);
}

#define CK(x)                                                                         \
    do {                                                                              \
        cudaError_t e_ = (x);                                                         \
        if (e_ != cudaSuccess) {                                                      \
            printf("CUDA error %s at line %d\n", cudaGetErrorString(e_), __LINE__); \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

int main() {
    const int P = 150, REPS = 20;
    std::vector<float> hx(K);
    for (int i = 0; i < K; i++) hx[i] = (float)((i * 37) % 101) / 101.0f;
    float *x0, *rows, *sums;
    unsigned long long *llrows, *cnt;
    CK(cudaMalloc(&x0, K * 4));
    CK(cudaMalloc(&rows, (size_t)(P + 1) * K * 4));
    CK(cudaMalloc(&llrows, (size_t)(P + 1) * K * 8));
    CK(cudaMalloc(&sums, 6 * P * 4));
    CK(cudaMalloc(&cnt, 8));
    CK(cudaMemset(cnt, 0, 8));
    CK(cudaMemset(llrows, 0xff, (size_t)(P + 1) * K * 8));
    CK(cudaMemcpy(x0, hx.data(), K * 4, cudaMemcpyHostToDevice));
    CK(cudaFuncSetAttribute(phase_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM));
    CK(cudaFuncSetAttribute(grid_chain, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM));
    CK(cudaFuncSetAttribute(ll_chain<0>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM));
    CK(cudaFuncSetAttribute(ll_chain<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM));
    CK(cudaFuncSetAttribute(ll_chain<200>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    // graph of P phase kernels
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    CK(cudaMemcpyAsync(rows, x0, K * 4, cudaMemcpyDeviceToDevice, st));
    for (int p = 0; p < P; p++)
        phase_kernel<<<NB, NT, SMEM, st>>>(rows + (size_t)p * K, rows + (size_t)(p + 1) * K, sums, p);
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    float best[8] = {1e30f, 1e30f, 1e30f, 1e30f, 1e30f, 1e30f, 1e30f, 1e30f};
    unsigned epoch = 1;
    for (int round = 0; round < 3; round++) {
        // graph
        CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(a, st));
        for (int r = 0; r < REPS; r++) CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        best[0] = fminf(best[0], ms * 1e3f / (REPS * P));
        // grid barrier (the copy of row 0 before each launch, as the graph's memcpy)
        CK(cudaEventRecord(a, st));
        for (int r = 0; r < REPS; r++) {
            CK(cudaMemcpyAsync(rows, x0, K * 4, cudaMemcpyDeviceToDevice, st));
            grid_chain<<<NB, NT, SMEM, st>>>(rows, sums + P, P, cnt);
        }
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        CK(cudaEventElapsedTime(&ms, a, b));
        best[1] = fminf(best[1], ms * 1e3f / (REPS * P));
        for (int v = 0; v < 3; v++) {
            CK(cudaEventRecord(a, st));
            for (int r = 0; r < REPS; r++) {
                ll_seed<<<4, 640, 0, st>>>(llrows, x0, epoch);
                if (v == 0) ll_chain<0><<<NB, NT, SMEM, st>>>(llrows, sums + 2 * P, P, epoch);
                if (v == 1) ll_chain<64><<<NB, NT, SMEM, st>>>(llrows, sums + 2 * P, P, epoch);
                if (v == 2) ll_chain<200><<<NB, NT, SMEM, st>>>(llrows, sums + 2 * P, P, epoch);
                epoch++;
            }
            CK(cudaEventRecord(b, st));
            CK(cudaEventSynchronize(b));
            CK(cudaEventElapsedTime(&ms, a, b));
            best[2 + v] = fminf(best[2 + v], ms * 1e3f / (REPS * P));
        }
    }
    // pdl (programmatic dependents), pdlw (+ weight copies before the wait), graphw (the same kernel with the
    // weight copies, plain launches): graphs of P kernels each
    const int PSMEM = K * 4 + WB;
    const size_t WBUF = (size_t)256 << 20;  // > L2: each phase copies another 8 MiB
    uint4* wts;
    float* wsum;
    CK(cudaMalloc(&wts, WBUF));
    CK(cudaMemset(wts, 0x11, WBUF));
    CK(cudaMalloc(&wsum, P * 4));
    CK(cudaFuncSetAttribute(phase_pdl<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, PSMEM));
    CK(cudaFuncSetAttribute(phase_pdl<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, PSMEM));
    cudaGraphExec_t gx[3];
    for (int v = 0; v < 3; v++) {
        cudaGraph_t gv;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        CK(cudaMemcpyAsync(rows, x0, K * 4, cudaMemcpyDeviceToDevice, st));
        for (int p = 0; p < P; p++) {
            cudaLaunchConfig_t cfg = {};
            cfg.gridDim = dim3(NB);
            cfg.blockDim = dim3(NT);
            cfg.dynamicSmemBytes = PSMEM;
            cfg.stream = st;
            cudaLaunchAttribute at[1];
            at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
            at[0].val.programmaticStreamSerializationAllowed = 1;
            cfg.attrs = at;
            cfg.numAttrs = (v < 2 && p > 0) ? 1 : 0;
            const uint4* wp = wts + ((size_t)p * NB * (WB / 16)) % (WBUF / 16 - (size_t)NB * (WB / 16));
            float* sp = sums + (size_t)(3 + v) * P;
            if (v == 0)
                CK(cudaLaunchKernelEx(&cfg, phase_pdl<false>, (const float*)(rows + (size_t)p * K),
                                      rows + (size_t)(p + 1) * K, sp, p, wp, wsum));
            else
                CK(cudaLaunchKernelEx(&cfg, phase_pdl<true>, (const float*)(rows + (size_t)p * K),
                                      rows + (size_t)(p + 1) * K, sp, p, wp, wsum));
        }
        CK(cudaStreamEndCapture(st, &gv));
        CK(cudaGraphInstantiate(&gx[v], gv, 0));
    }
    for (int round = 0; round < 3; round++) {
        for (int v = 0; v < 3; v++) {
            CK(cudaGraphLaunch(gx[v], st));
            CK(cudaEventRecord(a, st));
            for (int r = 0; r < REPS; r++) CK(cudaGraphLaunch(gx[v], st));
            CK(cudaEventRecord(b, st));
            CK(cudaEventSynchronize(b));
            float ms;
            CK(cudaEventElapsedTime(&ms, a, b));
            best[5 + v] = fminf(best[5 + v], ms * 1e3f / (REPS * P));
        }
    }
    std::vector<float> hs(6 * P);
    CK(cudaMemcpy(hs.data(), sums, 6 * P * 4, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int p = 0; p < P; p++)
        for (int v = 1; v < 6; v++)
            if (hs[p] != hs[v * P + p]) bad++;
    printf("K %d, %d blocks of %d threads; us a phase (best of 3 rounds of %d runs of %d phases): graph %.3f  grid "
           "barrier %.3f  ll %.3f / sleep 64 %.3f / sleep 200 %.3f  pdl %.3f  pdl + %d KB copies %.3f  graph + "
           "copies %.3f (sums differ in %d; last %g)\n",
           K, NB, NT, REPS, P, best[0], best[1], best[2], best[3], best[4], best[5], WB / 1024, best[6], best[7],
           bad, hs[P - 1]);
    return bad != 0;
}
