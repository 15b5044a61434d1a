"""Typed errors of the GPU backend."""

from bitnet_quantization.errors import BitNetError


class GPUError(BitNetError):
    """A CUDA call or kernel build failed (the message names the call and the CUDA error)."""


class GPUUnavailableError(GPUError):
    """pycuda or a CUDA device is missing (the message says which, and how to install the `gpu` extra)."""


class GPUMemoryError(GPUError):
    """The model does not fit the GPU memory limit (BITNET_GPU_MEMORY_LIMIT or the card's free memory)."""
