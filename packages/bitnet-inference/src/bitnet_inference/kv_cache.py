"""A static, preallocated KV cache indexed by position: a decode step allocates nothing."""

from __future__ import annotations

import numpy as np


class KVCache:
    def __init__(self, n_layer: int, n_head_kv: int, n_ctx: int, head_dim: int, dtype=np.float16):
        self.n_ctx = n_ctx
        self.k = np.zeros((n_layer, n_head_kv, n_ctx, head_dim), dtype=dtype)  # (n_layer, n_kv_head, n_ctx, head_dim)
        self.v = np.zeros((n_layer, n_head_kv, n_ctx, head_dim), dtype=dtype)  # (n_layer, n_kv_head, n_ctx, head_dim)
        self.pos = 0  # number of positions filled

    def reset(self) -> None:
        self.pos = 0

    def store(self, layer: int, pos0: int, k: np.ndarray, v: np.ndarray) -> None:
        """k, v: (T, n_kv_head, head_dim) for positions pos0 .. pos0+T-1."""
        t = k.shape[0]
        self.k[layer, :, pos0 : pos0 + t] = k.transpose(1, 0, 2)  # rounded to the cache type here
        self.v[layer, :, pos0 : pos0 + t] = v.transpose(1, 0, 2)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
