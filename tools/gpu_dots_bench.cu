// Micro-benchmark of the decode dots (docs/gpu.md, seventh session): gate/up's staged dots for one block (108 rows
// x 2560, the weights and the int8 row in shared memory, 132 blocks) with dp4a (kernels.cu's dot16m, lane-strided
// chunks) against mma.sync m16n8k32 u8 x s8 with the 2-bit fields masked in place (one accumulator set a field).
// Both exact; the results are compared. On the device: nvcc -arch=sm_90 -O3 -std=c++17 -o /tmp/b tools/gpu_dots_bench.cu && /tmp/b
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <vector>
// dp4a_us, dot16m, dot64m and dot16m_sum: the shipped helpers
#include "../packages/bitnet-kernels/src/bitnet_kernels/gpu/kernels.cu"
#define BK 2560
#define NCH (BK / 64)
#define BPL (NCH + 2)
#define ROWS 108
#define NREP 200

// shared layout: int8 row in planes (4 * BPL int4), then weight rows with pitch RP bytes
#define RP (BK / 4 + 16)
__device__ void fill(const uint32_t* gw, const int* ga, char* sm) {
    int4* a4 = (int4*)sm;
    for (int i = threadIdx.x; i < 4 * BPL * 4; i += blockDim.x) ((int*)a4)[i] = ga[i];
    char* ws = sm + 4 * BPL * 16;
    for (int i = threadIdx.x; i < 112 * (BK / 16); i += blockDim.x) {
        const int r = i / (BK / 16), w = i % (BK / 16);
        *(uint32_t*)(ws + r * RP + 4 * w) = gw[i];
    }
    __syncthreads();
}

// A: 27 warps, 4 rows a warp (two (gate, up) pairs), lane-strided chunks (as the shipped staged dots)
extern "C" __global__ void __launch_bounds__(1024, 1) dots_dp4a(const uint32_t* gw, const int* ga, int* out) {
    extern __shared__ __align__(16) char sm[];
    fill(gw, ga, sm);
    const int4* a4 = (const int4*)sm;
    const char* ws = sm + 4 * BPL * 16;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int tot[4] = {0, 0, 0, 0};
    for (int rep = 0; rep < NREP; rep++) {
        asm volatile("" ::: "memory");
        int4 am[4];
        for (int r = 0; r < 4; r++) am[r] = make_int4(0, 0, 0, 0);
        for (int c = lane; c < NCH; c += 32) {
            const int4 a0 = a4[c], a1 = a4[BPL + c], a2 = a4[2 * BPL + c], a3 = a4[3 * BPL + c];
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const uint4 w = *(const uint4*)(ws + (warp * 4 + r) * RP + 16 * c);
                dot64m(w, a0, a1, a2, a3, am[r]);
            }
        }
#pragma unroll
        for (int r = 0; r < 4; r++) tot[r] += __reduce_add_sync(0xffffffffu, dot16m_sum(am[r]));
    }
    if (lane == 0)
        for (int r = 0; r < 4; r++) out[blockIdx.x * 112 + warp * 4 + r] = tot[r];
}

__device__ __forceinline__ void mma_us8(int* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, int b0, int b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// B: 28 warps = 7 tiles of 16 rows x 4 k-splits of 10 chunks; per 2 chunks a thread (g, t) loads word t of both
// chunks of rows g and g + 8 and runs 4 mma (field f masked in place in all four A registers; B: lanes 0..3 the
// int32 f of plane t of both chunks, other lanes 0); D_f >> 2f summed at the end; k-split partials added in shared
// memory
extern "C" __global__ void __launch_bounds__(1024, 1) dots_mma(const uint32_t* gw, const int* ga, int* out) {
    extern __shared__ __align__(16) char sm[];
    __shared__ int part[112];
    fill(gw, ga, sm);
    for (int i = threadIdx.x; i < 112; i += blockDim.x) part[i] = 0;
    __syncthreads();
    const int* a32 = (const int*)sm;
    const char* ws = sm + 4 * BPL * 16;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int tile = warp >> 2, ks = warp & 3, g = lane >> 2, t = lane & 3;
    const char* r0 = ws + (tile * 16 + g) * RP + 4 * t;
    const char* r8 = r0 + 8 * RP;
    int tot0 = 0, tot8 = 0;
    for (int rep = 0; rep < NREP; rep++) {
        asm volatile("" ::: "memory");
        int d[4][4];
#pragma unroll
        for (int f = 0; f < 4; f++) d[f][0] = d[f][1] = d[f][2] = d[f][3] = 0;
        for (int c = ks * 10; c < ks * 10 + 10; c += 2) {
            const uint32_t w0 = *(const uint32_t*)(r0 + 16 * c), w1 = *(const uint32_t*)(r8 + 16 * c);
            const uint32_t w2 = *(const uint32_t*)(r0 + 16 * (c + 1)), w3 = *(const uint32_t*)(r8 + 16 * (c + 1));
            int b[4][2];
#pragma unroll
            for (int f = 0; f < 4; f++) {
                b[f][0] = g == 0 ? a32[((t * BPL + c) << 2) | f] : 0;
                b[f][1] = g == 0 ? a32[((t * BPL + c + 1) << 2) | f] : 0;
            }
#pragma unroll
            for (int f = 0; f < 4; f++) {
                const uint32_t m = 0x03030303u << (2 * f);
                mma_us8(d[f], w0 & m, w1 & m, w2 & m, w3 & m, b[f][0], b[f][1]);
            }
        }
        tot0 += d[0][0] + (d[1][0] >> 2) + (d[2][0] >> 4) + (d[3][0] >> 6);
        tot8 += d[0][2] + (d[1][2] >> 2) + (d[2][2] >> 4) + (d[3][2] >> 6);
    }
    if (t == 0) {
        atomicAdd(&part[tile * 16 + g], tot0);
        atomicAdd(&part[tile * 16 + g + 8], tot8);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 112; i += blockDim.x) out[blockIdx.x * 112 + i] = part[i];
}

int main() {
    const int B = 132;
    std::vector<uint32_t> hw(112 * (BK / 16));
    std::vector<int> ha(4 * BPL * 4);
    srand(1);
    for (auto& v : hw) {  // codes 0..2 only
        uint32_t x = 0;
        for (int j = 0; j < 16; j++) x |= (uint32_t)(rand() % 3) << (2 * j);
        v = x;
    }
    for (auto& v : ha) v = rand();
    uint32_t* dw; int* da; int *oa, *ob;
    cudaMalloc(&dw, hw.size() * 4); cudaMalloc(&da, ha.size() * 4);
    cudaMalloc(&oa, B * 112 * 4); cudaMalloc(&ob, B * 112 * 4);
    cudaMemcpy(dw, hw.data(), hw.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(da, ha.data(), ha.size() * 4, cudaMemcpyHostToDevice);
    const int smem = 4 * BPL * 16 + 112 * RP;
    cudaFuncSetAttribute(dots_dp4a, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    cudaFuncSetAttribute(dots_mma, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0); cudaEventCreate(&e1);
    for (int round = 0; round < 3; round++) {
        float ta, tb;
        cudaEventRecord(e0);
        dots_dp4a<<<B, 27 * 32, smem>>>(dw, da, oa);
        cudaEventRecord(e1); cudaEventSynchronize(e1); cudaEventElapsedTime(&ta, e0, e1);
        cudaEventRecord(e0);
        dots_mma<<<B, 28 * 32, smem>>>(dw, da, ob);
        cudaEventRecord(e1); cudaEventSynchronize(e1); cudaEventElapsedTime(&tb, e0, e1);
        printf("round %d: dp4a %.3f us a pass, mma %.3f us a pass (%d reps; launch included)\n", round,
               ta * 1e3 / NREP, tb * 1e3 / NREP, NREP);
    }
    std::vector<int> ra(B * 112), rb(B * 112);
    cudaMemcpy(ra.data(), oa, ra.size() * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(rb.data(), ob, rb.size() * 4, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int b = 0; b < B; b++)
        for (int r = 0; r < ROWS; r++) bad += ra[b * 112 + r] != rb[b * 112 + r];
    printf("rows differing: %d of %d (first: %d vs %d); err %s\n", bad, B * ROWS, ra[0], rb[0],
           cudaGetErrorString(cudaGetLastError()));
    return 0;
}
