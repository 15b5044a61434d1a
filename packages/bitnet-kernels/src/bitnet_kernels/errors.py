"""Typed errors of bitnet_kernels."""

from bitnet_quantization.errors import BitNetError


class KernelError(BitNetError, ValueError):
    """A kernel was called with arrays of the wrong shape, dtype or layout (the message says which and the fix)."""
