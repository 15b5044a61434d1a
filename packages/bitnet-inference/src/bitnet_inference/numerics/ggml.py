"""Bit-faithful emulation of bitnet.cpp's x86 AVX-512 float path (spec §5b), for cross-validation.

Every detail below was read from ggml and confirmed against bitnet.cpp's recorded outputs:
- RMSNorm: float squares summed one by one in double; mean cast to float; y = x * (1/sqrtf(mean + eps)).
- RoPE: libm cosf/sinf of iteratively built float angles; the rotation contracted to FMA.
- Q K^T: q rounded to F16 against the F16 K cache with ggml_vec_dot_f16's accumulation order.
- Softmax: ggml_v_expf; 16-lane float tree sums, chunks added in double; one multiply by (float)(1/sum).
- P V: a batch of 2+ tokens keeps P in F32 (tinyBLAS: one 16-lane FMA accumulator, then the tree); a single
  token rounds P to F16 and uses ggml_vec_dot_f16. The KV length is padded to a multiple of 32 (masked).
- LM head and F32 weights: tinyBLAS with F32 activations for 2+ rows; one row is rounded to F16 and goes
  through ggml_vec_dot_f16 (LM head).
"""

from __future__ import annotations

import numpy as np

from bitnet_inference.numerics.base import Numerics
from bitnet_inference.numerics.simd import fma32, hsum16, tinyblas_dot, v_expf, vec_dot_f16, vec_dot_f32

F32 = np.float32
F64 = np.float64
F16 = np.float16
KV_PAD = 32  # bitnet.cpp pads the KV length to 32 without flash attention
LLAMA_KV_PAD = 256  # upstream llama.cpp pads it to 256


class GgmlNumerics(Numerics):
    name = "ggml"

    def rmsnorm(self, x, w, eps):
        sq = (x * x).astype(F32).astype(F64)
        total = np.cumsum(sq, axis=-1)[..., -1]  # sequential, as the C loop
        mean = (total / x.shape[-1]).astype(F32)
        scale = (F32(1.0) / np.sqrt((mean + F32(eps)).astype(F32))).astype(F32)
        return ((x * scale[..., None]).astype(F32) * w).astype(F32)

    def madd(self, a, b, c):
        return fma32(a, b, c)  # RoPE's rotation, contracted to FMA by ggml's compiler

    def attention(self, q, k_cache, v_cache, pos0, n_ctx):
        t, h, d = q.shape
        hkv, size, _ = k_cache.shape
        g = h // hkv
        used = pos0 + t
        n_kv = min(size, max(KV_PAD, -(-used // KV_PAD) * KV_PAD))
        k = k_cache[:, :n_kv]  # (Hkv, n_kv, D) f16
        v = v_cache[:, :n_kv]
        q16 = q.astype(F16).reshape(t, hkv, g, d)
        # (T, Hkv, G, n_kv): dot of q[t, kvh, g] with k[kvh, j]
        kq = vec_dot_f16(q16[:, :, :, None, :], k[None, :, None, :, :])
        p = _softmax(kq, d, pos0, t, n_kv)  # (T, Hkv, G, n_kv)
        vt = np.swapaxes(v, 1, 2)  # (Hkv, D, n_kv)
        if t >= 2:
            out = tinyblas_dot(vt[None, :, None, :, :].astype(F32), p[:, :, :, None, :])
        else:
            out = vec_dot_f16(vt[None, :, None, :, :], p.astype(F16)[:, :, :, None, :])
        return out.reshape(t, h * d).astype(F32)

    def lm_head(self, x, emb, f16_activations):
        if not f16_activations:
            return _rows_tinyblas(x, emb.astype(F32))
        if x.shape[0] == 1:
            return vec_dot_f16(emb[None, :, :], x.astype(F16)[:, None, :])
        return _rows_tinyblas(x.astype(F16).astype(F32), emb.astype(F32))

    def dense(self, x, w):
        return _rows_tinyblas(x, w)

    def silu(self, x):
        return (x / (F32(1) + v_expf((-x).astype(F32)))).astype(F32)


def _rows_tinyblas(x: np.ndarray, w: np.ndarray, block: int = 512) -> np.ndarray:
    """(T, K) x (N, K) -> (T, N) with tinyBLAS's per-element order, in blocks of rows to bound memory."""
    out = np.empty((x.shape[0], w.shape[0]), F32)
    for n0 in range(0, w.shape[0], block):
        out[:, n0 : n0 + block] = tinyblas_dot(w[None, n0 : n0 + block, :], x[:, None, :])
    return out


class LlamaNumerics(GgmlNumerics):
    """Bit-faithful emulation of upstream llama.cpp's x86 float path (as built by llama-cpp-python 0.3.36),
    checked against it directly (tests/test_llamacpp_parity.py: identical logits).

    Every float matmul follows one rule: llamafile's tinyBLAS (one 16-lane FMA accumulator per output) when
    2 or more tokens are evaluated, ggml's vec_dot (four 16-lane accumulators) for a single token; an F16
    operand (the F16 KV cache, the F16 head) makes the activations F16 first: upstream rounds every row to F16
    for the F16 head (the `bitnet` arch sets that). The KV length is padded to 256. TQ1_0/TQ2_0 block dots are
    accumulated in the AVX2 kernel's eight lanes (see TQLinear).
    """

    name = "llama"
    tq_lane_order = True

    def attention(self, q, k_cache, v_cache, pos0, n_ctx):
        t, h, d = q.shape
        hkv, size, _ = k_cache.shape
        g = h // hkv
        n_kv = min(size, max(LLAMA_KV_PAD, -(-(pos0 + t) // LLAMA_KV_PAD) * LLAMA_KV_PAD))
        k = k_cache[:, :n_kv]  # (Hkv, n_kv, D)
        v = v_cache[:, :n_kv]
        half = k_cache.dtype == F16
        qg = (q.astype(F16) if half else q).reshape(t, hkv, g, d)
        # q is a permuted view: tinyBLAS only sees it once converted to F16 (so an F32 cache means vec_dot_f32)
        kq = _matmul(qg[:, :, :, None, :], k[None, :, None, :, :], t if half else 1, half)  # (T, Hkv, G, n_kv)
        p = _softmax(kq, d, pos0, t, n_kv)
        if half:
            p = p.astype(F16)
        vt = np.swapaxes(v, 1, 2)  # (Hkv, D, n_kv)
        out = _matmul(vt[None, :, None, :, :], p[:, :, :, None, :], t, half)
        return out.reshape(t, h * d).astype(F32)

    def lm_head(self, x, emb, f16_activations):
        if f16_activations:
            return _matmul(emb[None, :, :], x.astype(F16)[:, None, :], x.shape[0], True)
        return self.dense(x, emb.astype(F32))

    def dense(self, x, w):
        if x.shape[0] == 1:
            return vec_dot_f32(w[None, :, :], x[:, None, :])
        return _rows_tinyblas(x, w)


def _matmul(a: np.ndarray, b: np.ndarray, n_tokens: int, half: bool) -> np.ndarray:
    """llama.cpp's choice: llamafile's tinyBLAS for 2+ tokens ("only for prompt processing"), ggml's vec_dot
    for one; F16 operands are products of halves either way."""
    if n_tokens >= 2:
        return tinyblas_dot(a.astype(F32), b.astype(F32))
    return vec_dot_f16(a, b) if half else vec_dot_f32(a, b)


def _softmax(kq: np.ndarray, d: int, pos0: int, t: int, n_kv: int) -> np.ndarray:
    """ggml_soft_max_ext with the causal mask: scale, mask, ggml_v_expf, 16-lane sums added in double."""
    scale = F32(1.0) / np.sqrt(F32(d))
    qpos = pos0 + np.arange(t)
    masked = np.arange(n_kv)[None, :] > qpos[:, None]  # (T, n_kv)
    x = (kq * scale).astype(F32)
    x = np.where(masked[:, None, None, :], F32(-np.inf), x)
    mx = x.max(axis=-1, keepdims=True)
    e = v_expf((x - mx).astype(F32))
    chunks = hsum16(e.reshape(e.shape[:-1] + (n_kv // 16, 16))).astype(F64)
    total = np.cumsum(chunks, axis=-1)[..., -1]
    return (e * (1.0 / total).astype(F32)[..., None]).astype(F32)
