"""Float32 numerics: the same mathematics as bitnet.cpp without its operation order.

With the Cython kernels installed (the `cpu` extra) every operation runs in them; otherwise numpy does the same
work. Precision choices follow the C++ engines either way: the query meets an F16 cache as F16, a single
token's probabilities are F16 (numpy path), and a single row meets the F16 head as F16.
"""

from __future__ import annotations

import numpy as np

from bitnet_inference.numerics.base import Numerics

F32 = np.float32
F16 = np.float16
HEAD_CHUNK = 8192  # vocabulary rows converted at a time on the numpy path (no full float32 copy of the head)

try:
    import bitnet_kernels as _bk
except ImportError:  # pragma: no cover - exercised when the `cpu` extra is not installed
    _bk = None


class FastNumerics(Numerics):
    name = "fast"

    def __init__(self, use_kernels: bool = True):
        self.bk = _bk if use_kernels else None

    def rmsnorm(self, x, w, eps):
        if self.bk is not None:
            return self.bk.rmsnorm(np.ascontiguousarray(x, F32), w, float(eps))
        ms = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
        scale = (F32(1.0) / np.sqrt(ms.astype(F32) + F32(eps))).astype(F32)
        return (x * scale) * w

    def rope(self, x, table, pos):
        if self.bk is not None and table.n_rot % 2 == 0:
            out = np.array(x, dtype=F32, order="C")
            return self.bk.rope_neox(out, pos.astype(np.int32), float(table.base), int(table.n_rot))
        return super().rope(x, table, pos)

    def attention(self, q, k_cache, v_cache, pos0, n_ctx):
        t, h, d = q.shape
        half = k_cache.dtype == F16
        if half:  # the same precision choice as ggml: q meets an F16 cache as F16
            q = q.astype(F16).astype(F32)
        if self.bk is not None and half:
            return self.bk.attention(np.ascontiguousarray(q, F32), k_cache, v_cache, pos0, pos0 + t).reshape(t, h * d)
        hkv = k_cache.shape[0]
        g = h // hkv
        n_kv = pos0 + t
        k = k_cache[:, :n_kv].astype(F32)  # (Hkv, n_kv, D)
        v = v_cache[:, :n_kv].astype(F32)
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
            p = p.astype(F16)
        out = np.matmul(p.astype(F32), v[:, None])  # (Hkv, G, T, D)
        return out.transpose(2, 0, 1, 3).reshape(t, h * d).astype(F32)

    def lm_head(self, x, emb, f16_activations):
        if f16_activations:
            x = x.astype(F16).astype(F32)
        x = np.ascontiguousarray(x, F32)
        if self.bk is not None and emb.dtype == F16:
            return self.bk.f16_gemv(emb, x)
        out = np.empty((x.shape[0], emb.shape[0]), F32)
        for r in range(0, emb.shape[0], HEAD_CHUNK):
            out[:, r : r + HEAD_CHUNK] = x @ emb[r : r + HEAD_CHUNK].astype(F32).T
        return out

    def ffn_act(self, kind, gate, up):
        if self.bk is not None and kind in ("relu2", "silu"):
            fn = self.bk.relu2_mul if kind == "relu2" else self.bk.silu_mul
            return fn(np.ascontiguousarray(gate, F32), np.ascontiguousarray(up, F32))
        return super().ffn_act(kind, gate, up)

    def dense(self, x, w):
        return x @ w.T
