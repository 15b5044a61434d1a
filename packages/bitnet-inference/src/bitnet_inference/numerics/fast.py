"""Float32 numpy numerics: the same mathematics as bitnet.cpp without its operation order."""

from __future__ import annotations

import numpy as np

from bitnet_inference.numerics.base import Numerics

F32 = np.float32


class FastNumerics(Numerics):
    name = "fast"

    def rmsnorm(self, x, w, eps):
        ms = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
        scale = (F32(1.0) / np.sqrt(ms.astype(F32) + F32(eps))).astype(F32)
        return (x * scale) * w

    def rope(self, x, cos, sin):
        half = cos.shape[-1]
        out = x.copy()
        x0 = x[..., :half]
        x1 = x[..., half : 2 * half]
        c = cos[:, None, :]
        s = sin[:, None, :]
        out[..., :half] = x0 * c - x1 * s
        out[..., half : 2 * half] = x0 * s + x1 * c
        return out

    def attention(self, q, k_cache, v_cache, pos0, n_ctx):
        t, h, d = q.shape
        hkv = k_cache.shape[0]
        g = h // hkv
        n_kv = pos0 + t
        k = k_cache[:, :n_kv].astype(F32)  # (Hkv, n_kv, D)
        v = v_cache[:, :n_kv].astype(F32)
        # the same precision choices as ggml: q meets an F16 cache as F16, and a single token's P is F16
        half = k_cache.dtype == np.float16
        if half:
            q = q.astype(np.float16).astype(F32)
        qg = q.reshape(t, hkv, g, d).transpose(1, 2, 0, 3)  # (Hkv, G, T, D)
        scores = np.matmul(qg, k[:, None].transpose(0, 1, 3, 2)) * F32(1.0 / np.sqrt(d))  # (Hkv, G, T, n_kv)
        if t > 1:
            qpos = pos0 + np.arange(t)
            mask = np.arange(n_kv)[None, :] > qpos[:, None]
            scores = np.where(mask, -np.inf, scores)
        scores = scores - scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        if t == 1 and half:
            p = p.astype(np.float16)
        out = np.matmul(p.astype(F32), v[:, None])  # (Hkv, G, T, D)
        return out.transpose(2, 0, 1, 3).reshape(t, h * d).astype(F32)

    def lm_head(self, x, emb, f16_activations):
        if f16_activations:
            x = x.astype(np.float16).astype(F32)
        return x @ emb.T.astype(F32)

    def dense(self, x, w):
        return x @ w.T
