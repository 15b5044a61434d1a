// Micro-benchmarks behind the tenth session's choices for the decode step (docs/gpu.md, "Tenth session"), on the
// device:  nvcc -arch=sm_90 -std=c++17 -O3 -o /tmp/l2 tools/gpu_l2_bench.cu && /tmp/l2
//   - one block an SM (128 blocks of 640 threads) loading B bytes of an L2-resident buffer into shared memory, with
//     the threads' cp.async or with bulk copies (TMA, 8 KB each): us from the block's start, over the blocks;
//   - how many thread-block clusters of 4, 8 and 16 such blocks (160 KB of shared memory) can run at once;
//   - an all-gather through distributed shared memory in clusters of 8 (each block's share pushed to every block,
//     two cluster barriers);
//   - an empty kernel's cost in a CUDA graph, plain and with a cluster of 8.
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <cooperative_groups.h>
namespace cg = cooperative_groups;

__device__ __forceinline__ unsigned long long gt() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ void cp16(void* s, const void* g) {
    unsigned a = (unsigned)__cvta_generic_to_shared(s);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(a), "l"(g));
}

__global__ void ld_cp(const char* src, int bytes, int C, unsigned long long* out) {
    extern __shared__ __align__(16) char sm[];
    unsigned long long t0 = gt();
    const char* s = src + (size_t)(blockIdx.x % C) * bytes;
    for (int i = threadIdx.x * 16; i < bytes; i += blockDim.x * 16) cp16(sm + i, s + i);
    asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;" ::: "memory");
    __syncthreads();
    unsigned long long t1 = gt();
    if (threadIdx.x == 0) { out[blockIdx.x * 2] = t0; out[blockIdx.x * 2 + 1] = t1; }
    if (threadIdx.x == 0 && sm[5] == 123 && sm[bytes - 3] == 7) out[0] = 1;
}

__global__ void ld_tma(const char* src, int bytes, int C, unsigned long long* out) {
    extern __shared__ __align__(16) char sm[];
    __shared__ __align__(8) unsigned long long mbar;
    unsigned long long t0 = gt();
    const char* s = src + (size_t)(blockIdx.x % C) * bytes;
    unsigned mb = (unsigned)__cvta_generic_to_shared(&mbar);
    if (threadIdx.x == 0) {
        asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(mb));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" ::"r"(mb), "r"(bytes));
        const int CH = 8192;
        for (int o = 0; o < bytes; o += CH) {
            int n = min(CH, bytes - o);
            unsigned d = (unsigned)__cvta_generic_to_shared(sm + o);
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(d),
                         "l"(s + o), "r"(n), "r"(mb)
                         : "memory");
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned done = 0;
        while (!done)
            asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared.b64 p, [%1], 0; selp.u32 %0, 1, 0, p; }"
                         : "=r"(done) : "r"(mb) : "memory");
    }
    __syncthreads();
    unsigned long long t1 = gt();
    if (threadIdx.x == 0) { out[blockIdx.x * 2] = t0; out[blockIdx.x * 2 + 1] = t1; }
    if (threadIdx.x == 0 && sm[5] == 123 && sm[bytes - 3] == 7) out[0] = 1;
}

template <int CS>
__global__ void __cluster_dims__(CS, 1, 1) gather(float* res, int per, unsigned long long* out) {
    extern __shared__ __align__(16) float row[];
    cg::cluster_group cl = cg::this_cluster();
    cl.sync();
    unsigned long long t0 = gt();
    const int r = cl.block_rank();
    for (int t = 0; t < CS; t++) {
        float* dst = cl.map_shared_rank(row, t);
        for (int i = threadIdx.x; i < per; i += blockDim.x) dst[r * per + i] = (float)(r * per + i);
    }
    cl.sync();
    unsigned long long t1 = gt();
    float s = 0;
    for (int i = threadIdx.x; i < per * CS; i += blockDim.x) s += row[i];
    if (threadIdx.x == 0) { out[blockIdx.x * 2] = t0; out[blockIdx.x * 2 + 1] = t1; res[blockIdx.x] = s; }
}
__global__ void __cluster_dims__(8, 1, 1) empty8() {}
__global__ void empty1() {}

static void stats(const char* name, std::vector<unsigned long long>& h, int nb) {
    std::vector<double> d;
    for (int b = 0; b < nb; b++) d.push_back((h[2 * b + 1] - h[2 * b]) / 1e3);
    std::sort(d.begin(), d.end());
    printf("%-34s us: min %.2f med %.2f p90 %.2f max %.2f\n", name, d[0], d[nb / 2], d[nb * 9 / 10], d[nb - 1]);
}

int main() {
    char* src;
    cudaMalloc(&src, 4 << 20);
    cudaMemset(src, 1, 4 << 20);
    unsigned long long* out;
    cudaMalloc(&out, 4096 * 16);
    std::vector<unsigned long long> h(4096 * 2);
    const int SM = 200 * 1024;
    cudaFuncSetAttribute(ld_cp, cudaFuncAttributeMaxDynamicSharedMemorySize, SM);
    cudaFuncSetAttribute(ld_tma, cudaFuncAttributeMaxDynamicSharedMemorySize, SM);
    int sizes[] = {10240, 20480, 47104, 94208, 147456};
    for (int C : {8, 16}) {
        for (int b : sizes) {
            for (int rep = 0; rep < 3; rep++) {
                ld_cp<<<128, 640, SM>>>(src, b, C, out);  // warm L2 on rep 0
                cudaDeviceSynchronize();
            }
            cudaMemcpy(h.data(), out, 128 * 16, cudaMemcpyDeviceToHost);
            char nm[64];
            snprintf(nm, 64, "cp.async C=%d %d KB", C, b / 1024);
            stats(nm, h, 128);
            for (int rep = 0; rep < 3; rep++) {
                ld_tma<<<128, 640, SM>>>(src, b, C, out);
                cudaDeviceSynchronize();
            }
            cudaMemcpy(h.data(), out, 128 * 16, cudaMemcpyDeviceToHost);
            snprintf(nm, 64, "tma C=%d %d KB", C, b / 1024);
            stats(nm, h, 128);
        }
    }
    // cluster occupancy for a 640-thread block with 160 KB of shared memory
    for (int cs : {4, 8, 16}) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(128);
        cfg.blockDim = dim3(640);
        cfg.dynamicSmemBytes = 160 * 1024;
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeClusterDimension;
        at[0].val.clusterDim.x = cs;
        at[0].val.clusterDim.y = 1;
        at[0].val.clusterDim.z = 1;
        cfg.attrs = at;
        cfg.numAttrs = 1;
        cudaFuncSetAttribute(ld_cp, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
        int n = -1;
        cudaError_t e = cudaOccupancyMaxActiveClusters(&n, (void*)ld_cp, &cfg);
        printf("max active clusters of %d (640 thr, 160 KB): %d (%s)\n", cs, n, cudaGetErrorString(e));
    }
    float* res;
    cudaMalloc(&res, 4096 * 4);
    cudaFuncSetAttribute(gather<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, 160 * 1024);
    for (int per : {320, 2560}) {
        for (int rep = 0; rep < 3; rep++) {
            gather<8><<<128, 640, 160 * 1024>>>(res, per, out);
            cudaDeviceSynchronize();
        }
        cudaMemcpy(h.data(), out, 128 * 16, cudaMemcpyDeviceToHost);
        char nm[64];
        snprintf(nm, 64, "dsmem all-gather C=8 per %d", per);
        stats(nm, h, 128);
    }
    printf("err: %s\n", cudaGetErrorString(cudaGetLastError()));
    // launch gaps: chains of 100 empty kernels (cluster 8 vs plain), 160 blocks of 128 threads, in a graph
    for (int kind = 0; kind < 2; kind++) {
        cudaStream_t st;
        cudaStreamCreate(&st);
        cudaGraph_t g;
        cudaGraphExec_t ge;
        cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal);
        for (int i = 0; i < 100; i++) {
            if (kind) empty8<<<160, 128, 0, st>>>(); else empty1<<<160, 128, 0, st>>>();
        }
        cudaStreamEndCapture(st, &g);
        cudaGraphInstantiate(&ge, g, 0);
        cudaEvent_t a, b;
        cudaEventCreate(&a);
        cudaEventCreate(&b);
        for (int w = 0; w < 3; w++) cudaGraphLaunch(ge, st);
        cudaEventRecord(a, st);
        for (int w = 0; w < 10; w++) cudaGraphLaunch(ge, st);
        cudaEventRecord(b, st);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        printf("empty kernel in graph (%s): %.3f us each\n", kind ? "cluster 8" : "plain", ms * 1e3 / 1000);
    }
    printf("err: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 0;
}
