"""Reference semantics of the ternary matmuls (numpy oracles for the SIMD and CUDA kernels).

- `i2s_linear`: bitnet.cpp's W2A8 path for I2_S weights. Activations are quantized per token to int8, the dot
  products with the ternary weights are exact integers, and each output is float(dot) / s_token * w_scale
  (float32 operations in that order).
- `q8k_linear`: llama.cpp's path for TQ1_0/TQ2_0 weights. Activations are quantized to Q8_K (one scale per
  256 values); each 256-block's integer dot is scaled by (d_act * d_weight) and summed in float32, block by block.

Integer dot products are computed in int32 here via float64 BLAS on small integers (exact: |dot| < 2^53).
"""

from __future__ import annotations

import numpy as np

from bitnet_quantization.activations import ActI8, quantize_act_i8, quantize_q8_k


def ternary_dot_i32(w: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Exact integer dots: w int8 ternary (N, K), q int8 (T, K) -> int32 (T, N)."""
    acc = q.astype(np.float64) @ w.astype(np.float64).T
    return acc.astype(np.int32)


def i2s_linear(w: np.ndarray, w_scale: np.float32, x: np.ndarray, act: ActI8 | None = None) -> np.ndarray:
    """y (T, N) float32 for ternary w (N, K), per-tensor scale, activations x (T, K)."""
    a = act if act is not None else quantize_act_i8(x)
    dot = ternary_dot_i32(w, a.q).astype(np.float32)
    return (dot / a.scale[:, None]).astype(np.float32) * np.float32(w_scale)


def q8k_linear(w: np.ndarray, d_w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y (T, N): ternary w (N, K) with per-256-block scales d_w (N, K/256) (float32 from fp16), x (T, K)."""
    n, k = w.shape
    a = quantize_q8_k(x)
    t = a.q.shape[0]
    nb = k // 256
    # (T, nb, 256) x (N, nb, 256) -> (T, N, nb) exact integer block dots
    qa = a.q.reshape(t, nb, 256).astype(np.float64)
    qw = w.reshape(n, nb, 256).astype(np.float64)
    isum = np.einsum("tbk,nbk->tnb", qa, qw).astype(np.int32).astype(np.float32)
    d = (a.d[:, None, :] * d_w[None, :, :]).astype(np.float32)  # (T, N, nb)
    y = np.zeros((t, n), dtype=np.float32)
    for b in range(nb):  # float32 accumulation block by block, as ggml's scalar loop
        y += isum[:, :, b] * d[:, :, b]
    return y
