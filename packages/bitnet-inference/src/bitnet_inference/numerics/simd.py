"""Numpy emulation of the float reductions ggml's x86 AVX-512 kernels perform, operation for operation.

Float32 FMA is emulated in float64: a*b is exact in float64 when a has 24 and b 11 or 24 significant bits,
and the one rounding to float32 at the end gives the fused result except in vanishingly rare double-rounding
cases.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
F64 = np.float64


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return (np.asarray(a, F64) * np.asarray(b, F64) + np.asarray(c, F64)).astype(F32)


def hsum16(v: np.ndarray) -> np.ndarray:
    """_mm512_reduce_add_ps: halving tree over the last axis of 16 lanes (8, 4, 2, 1), in float32."""
    v = v.astype(F32, copy=False)
    while v.shape[-1] > 1:
        h = v.shape[-1] // 2
        v = v[..., :h] + v[..., h:]
    return v[..., 0]


def vec_dot_f16(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ggml_vec_dot_f16 (AVX-512) over the last axis of two float16-valued arrays (broadcasting).

    Four accumulators of 16 lanes step through 64 elements at a time (products of two halves are exact in
    float32, so the FMA is an add); they are combined (a0+a2)+(a1+a3), reduced by a halving tree, widened to
    double, and the leftover elements (n % 64) are added one by one in double. Returns float32.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    n = x.shape[-1]
    nfull = n - n % 64
    shape = np.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    acc = np.zeros(shape + (4, 16), dtype=F32)
    if nfull:
        xs = x[..., :nfull].astype(F32).reshape(x.shape[:-1] + (nfull // 64, 4, 16))
        ys = y[..., :nfull].astype(F32).reshape(y.shape[:-1] + (nfull // 64, 4, 16))
        prods = xs * ys  # exact
        for s in range(nfull // 64):
            acc = acc + prods[..., s, :, :]
    t = (acc[..., 0, :] + acc[..., 2, :]) + (acc[..., 1, :] + acc[..., 3, :])
    res = hsum16(t).astype(F64)
    for i in range(nfull, n):
        res = res + (x[..., i].astype(F32) * y[..., i].astype(F32)).astype(F64)
    return res.astype(F32)


def vec_dot_f32(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ggml_vec_dot_f32 (AVX-512): four 16-lane FMA accumulators over steps of 64, combined (a0+a2)+(a1+a3),
    the halving tree, then leftovers added one by one in float."""
    n = x.shape[-1]
    nfull = n - n % 64
    shape = np.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    acc = np.zeros(shape + (4, 16), dtype=F32)
    xs = x[..., :nfull].astype(F32).reshape(x.shape[:-1] + (nfull // 64, 4, 16))
    ys = y[..., :nfull].astype(F32).reshape(y.shape[:-1] + (nfull // 64, 4, 16))
    for s in range(nfull // 64):
        acc = fma32(xs[..., s, :, :], ys[..., s, :, :], acc)
    t = (acc[..., 0, :] + acc[..., 2, :]) + (acc[..., 1, :] + acc[..., 3, :])
    res = hsum16(t)
    for i in range(nfull, n):
        res = (res + (x[..., i].astype(F32) * y[..., i].astype(F32))).astype(F32)
    return res


def tinyblas_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """llamafile tinyBLAS (AVX-512) dot of float32-valued rows: one 16-lane accumulator, sequential FMA over
    steps of 16, then the halving tree. The length must be a multiple of 16 (tinyBLAS refuses otherwise)."""
    n = a.shape[-1]
    if n % 16:
        raise ValueError(f"tinyBLAS needs a multiple of 16 elements, got {n}")
    shape = np.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    acc = np.zeros(shape + (16,), dtype=F64)
    a64 = a.astype(F64).reshape(a.shape[:-1] + (n // 16, 16))
    b64 = b.astype(F64).reshape(b.shape[:-1] + (n // 16, 16))
    for s in range(n // 16):
        acc = (a64[..., s, :] * b64[..., s, :] + acc).astype(F32).astype(F64)
    return hsum16(acc.astype(F32))


# --- ggml_v_expf (AVX-512), emulated lane-wise -----------------------------------------------------------

_C = {k: F32(float.fromhex(v)) for k, v in {
    "r": "0x1.8p23", "log2e": "0x1.715476p+0", "ln2hi": "0x1.62e4p-1", "ln2lo": "0x1.7f7d1cp-20",
    "c4": "0x1.0e4020p-7", "c3": "0x1.573e2ep-5", "c2": "0x1.555e66p-3", "c1": "0x1.fffdb6p-2",
    "c0": "0x1.ffffecp-1",
}.items()}


def v_expf(x: np.ndarray) -> np.ndarray:
    """ggml_v_expf (AVX-512 build): exp(x) = 2^n * p(b) with b = x - n ln2, scaled exactly (vscalefps).

    Measured on the fixtures: this variant (polynomial including the leading 1, then an exact scale by 2^n)
    matches bitnet.cpp; the older fma(j, k, k) formulation of the same routine does not.
    """
    x = np.asarray(x, dtype=F32)
    c = _C
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        z = fma32(x, c["log2e"], c["r"])
        n = (z - c["r"]).astype(F32)
        b = fma32(-n, c["ln2lo"], fma32(-n, c["ln2hi"], x))
        u = (b * b).astype(F32)
        j = fma32(fma32(fma32(c["c4"], b, c["c3"]), u, fma32(c["c2"], b, c["c1"])), u, fma32(c["c0"], b, F32(1.0)))
        res = (j.astype(F64) * np.exp2(n.astype(F64))).astype(F32)
        # |n| > 126: the result over- or underflows (softmax only ever feeds x <= 0 here)
        return np.where(np.abs(n) > 126, np.where(n < 0, F32(0), F32(np.inf)), res).astype(F32)
