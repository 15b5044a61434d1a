"""The two float modes of the engine.

- `fast` (default): plain float32 numpy (and the Cython kernels when installed), the fastest way to the same
  mathematics. Integer parts of the ternary matmuls are exact in both modes.
- `ggml`: a bit-faithful emulation of bitnet.cpp's x86 (AVX-512) float path, operation order included
  (spec §5b). Slow; it exists so that cross-validation can compare token for token, because int8 activation
  rounding turns any float difference into a different answer a few layers later.
"""

from __future__ import annotations

from bitnet_inference.numerics.base import Numerics, RopeTable
from bitnet_inference.numerics.fast import FastNumerics
from bitnet_inference.numerics.ggml import GgmlNumerics, LlamaNumerics

NUMERICS = {"fast": FastNumerics, "ggml": GgmlNumerics, "llama": LlamaNumerics}


def get_numerics(name: str, use_kernels: bool = True) -> Numerics:
    from bitnet_inference.errors import EngineError

    if name not in NUMERICS:
        raise EngineError(f"unknown numerics mode {name!r}; choose one of: {', '.join(NUMERICS)}")
    return FastNumerics(use_kernels) if name == "fast" else NUMERICS[name]()


__all__ = ["NUMERICS", "Numerics", "RopeTable", "get_numerics"]
