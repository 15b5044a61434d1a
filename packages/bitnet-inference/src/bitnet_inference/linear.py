"""Ternary and float linear layers behind one interface: `layer(x (T, K) f32) -> (T, N) f32`.

The numerics of a ternary layer follow its weight type, as the C++ engines do:
- I2_S  -> `i2s`: bitnet.cpp's per-token int8 activations, exact integer dots, float(dot) / s * w_scale.
- TQ1_0/TQ2_0 -> `q8k`: llama.cpp's Q8_K activations (per 256-value block), block dots scaled and summed.
- F32/F16/BF16 -> `f32`: float weights, float activations (no activation quantization).

The integer dot products are exact in every implementation: the numpy path multiplies small integers held
in float32 (every partial sum stays below 2^24), and the Cython kernels accumulate in int32.
"""

from __future__ import annotations

import numpy as np

from bitnet_quantization import (
    i2s_scale,
    i2s_unpack_codes,
    quantize_act_i8,
    quantize_q8_k,
    ternary_codes_from_tq1_0,
    ternary_codes_from_tq2_0,
)

F32 = np.float32

try:  # the optional Cython kernels (the `cpu` extra)
    import bitnet_kernels as _kernels
except ImportError:  # pragma: no cover - exercised when the extra is not installed
    _kernels = None


def kernels_available() -> bool:
    return _kernels is not None


class Linear:
    numerics_kind = "?"

    def __init__(self, name: str, n_out: int, n_in: int):
        self.name = name
        self.n_out = n_out
        self.n_in = n_in
        self.out_scale: np.float32 | None = None  # arch `bitnet`: the optional 1-element .scale tensor

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self.forward(x)
        if self.out_scale is not None:
            y = (y * self.out_scale).astype(F32)
        return y

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def rebind(self, weights) -> None:
        """Read the weights from `weights` from now on (the same bytes elsewhere: see weights.ResidentWeights)."""
        if hasattr(self, "raw"):
            self.raw = weights.raw(self.name)


class I2SLinear(Linear):
    numerics_kind = "i2s"

    def __init__(self, name: str, raw: np.ndarray, n_out: int, n_in: int, use_kernels: bool):
        super().__init__(name, n_out, n_in)
        self.raw = raw  # uint8 view into the memory map: N*K/4 packed bytes + 32-byte tail
        self.scale = F32(i2s_scale(raw, n_out * n_in))
        self.use_kernels = use_kernels and _kernels is not None
        self._w: np.ndarray | None = None

    @property
    def w(self) -> np.ndarray:
        """Ternary values as float32 (N, K), unpacked on first use (numpy path only)."""
        if self._w is None:
            self._w = i2s_unpack_codes(self.raw, self.n_out * self.n_in).reshape(self.n_out, self.n_in).astype(F32)
        return self._w

    def int_dot(self, q: np.ndarray) -> np.ndarray:
        """Exact integer dots (T, N) as int32, for layer-by-layer checks."""
        if self.use_kernels:
            return _kernels.i2s_gemm_i32(self.raw, self.n_out, self.n_in, q)
        return (q.astype(F32) @ self.w.T).astype(np.int32)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.use_kernels:
            return _kernels.i2s_linear(self.raw, self.n_out, self.n_in, np.ascontiguousarray(x, F32))
        a = quantize_act_i8(x)
        dot = (a.q.astype(F32) @ self.w.T).astype(F32)
        return ((dot / a.scale[:, None]).astype(F32) * self.scale).astype(F32)


class TQLinear(Linear):
    numerics_kind = "q8k"

    def __init__(self, name: str, raw: np.ndarray, qtype: str, n_out: int, n_in: int, use_kernels: bool,
                 lane_order: bool = False):
        super().__init__(name, n_out, n_in)
        self.raw = raw
        self.qtype = qtype
        self.lane_order = lane_order  # llama.cpp's AVX2 accumulation order (the `llama` numerics)
        self.use_kernels = use_kernels and _kernels is not None
        self._w: np.ndarray | None = None
        self._d: np.ndarray | None = None

    def _unpack(self) -> None:
        fn = ternary_codes_from_tq2_0 if self.qtype == "TQ2_0" else ternary_codes_from_tq1_0
        q, d = fn(self.raw)
        self._w = q.reshape(self.n_out, self.n_in).astype(F32)
        self._d = d.reshape(self.n_out, self.n_in // 256)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.use_kernels:
            return _kernels.tq_linear(self.raw, self.qtype, self.n_out, self.n_in, np.ascontiguousarray(x, F32),
                                      lane_order=self.lane_order)
        if self._w is None:
            self._unpack()
        a = quantize_q8_k(x)
        if self.lane_order:
            return self._forward_lanes(a)
        t = x.shape[0]
        nb = self.n_in // 256
        qa = a.q.reshape(t, nb, 256).astype(F32)
        wb = self._w.reshape(self.n_out, nb, 256)
        y = np.zeros((t, self.n_out), F32)
        for b in range(nb):  # exact block dots, float32 accumulation block by block
            isum = qa[:, b, :] @ wb[:, b, :].T
            y += isum * (a.d[:, b : b + 1] * self._d[None, :, b]).astype(F32)
        return y


    def _forward_lanes(self, a) -> np.ndarray:
        """llama.cpp's AVX2 TQ kernels: eight int32 lanes per 256-block. Lane m sums code*q over the weights
        32j + 4m + p (j < 8, p < 4) and subtracts the Q8_K block sums of activations 32m .. 32m+31 (the lane
        totals differ from a plain split, which matters once each lane is scaled in float). Each lane is
        multiplied by d_act*d_w and accumulated across blocks with FMA, then hsum_float_8."""
        t = a.q.shape[0]
        nb = self.n_in // 256
        m, j, p = np.ogrid[:8, :8, :4]
        lanes = (32 * j + 4 * m + p).reshape(8, 32)  # (lane, 32 weight indices)
        qa = a.q.reshape(t, nb, 256)[:, :, lanes].astype(F32)  # (T, nb, 8, 32)
        codes = (self._w.reshape(self.n_out, nb, 256)[:, :, lanes] + 1).astype(F32)  # (N, nb, 8, 32)
        bsums = a.q.reshape(t, nb, 8, 32).sum(axis=3, dtype=np.int32).astype(F32)  # (T, nb, 8)
        part = np.einsum("tbmk,nbmk->tnbm", qa, codes) - bsums[:, None]  # exact small integers
        d = (a.d[:, None, :] * self._d[None, :, :]).astype(F32)  # (T, N, nb)
        acc = np.zeros((t, self.n_out, 8), F32)
        for b in range(nb):
            acc = (part[:, :, b, :].astype(np.float64) * d[:, :, b, None] + acc).astype(F32)  # FMA
        r = (acc[..., 4:] + acc[..., :4]).astype(F32)
        return ((r[..., 0] + r[..., 2]) + (r[..., 1] + r[..., 3])).astype(F32)


class DenseLinear(Linear):
    """Float weights. F16 weights meet F16 activations the way the engine that runs the file does: upstream
    llama.cpp rounds every row (`f16_always`), bitnet.cpp only a single row."""

    numerics_kind = "f32"

    def __init__(self, name: str, w: np.ndarray, numerics, f16_always: bool = False):
        super().__init__(name, w.shape[0], w.shape[1])
        self.f16 = w.dtype == np.float16
        self.w = np.ascontiguousarray(w) if self.f16 else np.ascontiguousarray(w, F32)
        self.numerics = numerics
        self.f16_always = f16_always

    def rebind(self, weights) -> None:
        if self.f16:  # a zero-copy view of the file's F16 bytes (F32/quantized weights were converted at load)
            self.w = np.ascontiguousarray(weights.array(self.name))

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.f16:
            return self.numerics.lm_head(x, self.w, self.f16_always or x.shape[0] == 1).astype(F32)
        return self.numerics.dense(x, self.w).astype(F32)


def make_linear(gguf, name: str, numerics, use_kernels: bool, f16_always: bool = False) -> Linear:
    info = gguf.info(name)
    n_out, n_in = info.shape
    qt = info.qtype.name
    if qt == "I2_S":
        return I2SLinear(name, gguf.raw(name), n_out, n_in, use_kernels)
    if qt in ("TQ2_0", "TQ1_0"):
        return TQLinear(name, gguf.raw(name), qt, n_out, n_in, use_kernels, lane_order=numerics.tq_lane_order)
    if qt == "F16":
        return DenseLinear(name, gguf.array(name), numerics, f16_always)
    return DenseLinear(name, gguf.dequantize(name), numerics, f16_always)
