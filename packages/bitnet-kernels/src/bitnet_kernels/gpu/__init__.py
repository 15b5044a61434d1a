"""CUDA kernels for BitNet b1.58 through pycuda (the `gpu` extra): exact W2A8 ternary GEMV/GEMM with dp4a,
fused RMSNorm + int8 activation quantization, RoPE into an f16 KV cache, attention, F16 LM head, argmax.

Importing this package needs neither pycuda nor a GPU; the first call that touches the device compiles
kernels.cu (cached under ~/.cache/bitnet-py/cuda, or BITNET_GPU_CACHE) and raises GPUUnavailableError with
the reason when pycuda or a CUDA device is missing. `gpu_status()` asks without raising.
"""

from bitnet_kernels.gpu.errors import GPUError, GPUMemoryError, GPUUnavailableError
from bitnet_kernels.gpu.runtime import CudaGraph, Runtime, get_runtime, gpu_status

__all__ = [
    "CudaGraph",
    "GPUError",
    "GPUMemoryError",
    "GPUUnavailableError",
    "Runtime",
    "get_runtime",
    "gpu_status",
]
