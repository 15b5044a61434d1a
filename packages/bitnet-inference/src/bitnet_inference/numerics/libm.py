"""The C library's float functions (cosf, sinf, powf, expf), called through ctypes.

ggml builds RoPE tables with libm's cosf/sinf, which are not correctly rounded for every input and differ from
numpy's own float32 implementations; a bit-faithful emulation must call the very same functions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def _libm() -> ctypes.CDLL:
    name = ctypes.util.find_library("m") or "libm.so.6"
    lib = ctypes.CDLL(name)
    for fn in ("cosf", "sinf", "expf", "logf"):
        getattr(lib, fn).restype = ctypes.c_float
        getattr(lib, fn).argtypes = [ctypes.c_float]
    lib.powf.restype = ctypes.c_float
    lib.powf.argtypes = [ctypes.c_float, ctypes.c_float]
    return lib


def powf(x: float, y: float) -> np.float32:
    return np.float32(_libm().powf(np.float32(x), np.float32(y)))


def map_f32(fn_name: str, x: np.ndarray) -> np.ndarray:
    """Apply a libm float function element-wise (slow: used for small tables that are cached)."""
    fn = getattr(_libm(), fn_name)
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    out = np.fromiter((fn(float(v)) for v in flat), dtype=np.float32, count=flat.size)
    return out.reshape(np.shape(x))
