"""Activation quantizers of the two C++ engines (reference semantics, float32 arithmetic as they do it).

- bitnet.cpp (I2_S path): one int8 scale per token (row), s = 127 / max(max|x|, 1e-5), round half to even.
- llama.cpp (TQ1_0/TQ2_0 path): Q8_K, one scale per 256-value block, d = max / -127 with the sign of the
  element of largest magnitude, nearest-int rounding (half to even), clamp at 127.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACT_EPS = np.float32(1e-5)


@dataclass(frozen=True)
class ActI8:
    q: np.ndarray  # (T, K) int8
    scale: np.ndarray  # (T,) float32, the multiplier s (x ~ q / s)
    qsum: np.ndarray  # (T,) int32, sum of q per row (used to undo the +1 weight-code offset)


def quantize_act_i8(x: np.ndarray) -> ActI8:
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    amax = np.maximum(np.abs(x).max(axis=1), ACT_EPS).astype(np.float32)
    s = (np.float32(127) / amax).astype(np.float32)
    q = np.clip(np.rint(x * s[:, None]), -128, 127).astype(np.int8)
    return ActI8(q=q, scale=s, qsum=q.sum(axis=1, dtype=np.int32))


def dequantize_act_i8(a: ActI8) -> np.ndarray:
    return a.q.astype(np.float32) / a.scale[:, None]


@dataclass(frozen=True)
class Q8K:
    q: np.ndarray  # (T, K) int8
    d: np.ndarray  # (T, K/256) float32
    bsums: np.ndarray  # (T, K/16) int16


def _nearest_int(v: np.ndarray) -> np.ndarray:
    # ggml's nearest_int: add 1.5 * 2^23 in float32 and read the mantissa (round half to even)
    f = (v.astype(np.float32) + np.float32(12582912.0)).astype(np.float32)
    return (f.view(np.int32) & 0x007FFFFF) - 0x00400000


@np.errstate(over="ignore", invalid="ignore")  # an all-subnormal block overflows -127/max as in ggml: q = 0
def quantize_q8_k(x: np.ndarray) -> Q8K:
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    t, k = x.shape
    if k % 256:
        raise ValueError(f"Q8_K needs rows that are a multiple of 256 values, got {k}")
    b = x.reshape(t, k // 256, 256)
    idx = np.abs(b).argmax(axis=2)  # first element of largest magnitude, as the C loop keeps it
    mx = np.take_along_axis(b, idx[..., None], axis=2)[..., 0]
    zero = mx == 0
    with np.errstate(divide="ignore"):
        iscale = np.where(zero, np.float32(0), np.float32(-127.0) / np.where(zero, 1, mx)).astype(np.float32)
    q = np.minimum(127, _nearest_int(b * iscale[..., None])).astype(np.int8)
    with np.errstate(divide="ignore"):
        d = np.where(zero, np.float32(0), np.float32(1) / np.where(zero, 1, iscale)).astype(np.float32)
    bsums = q.reshape(t, k // 16, 16).sum(axis=2, dtype=np.int32).astype(np.int16)
    return Q8K(q=q.reshape(t, k), d=d, bsums=bsums)
