"""A static, preallocated KV cache indexed by (slot, position): a decode step allocates nothing.

A slot holds one sequence; the server decodes several slots in one batched step.
"""

from __future__ import annotations

import mmap

import numpy as np

from bitnet_inference.weights import anonymous_map


def lazy_zeros(shape: tuple, dtype) -> np.ndarray:
    """A zero array whose pages are faulted in 4 KiB at a time as positions are written, not all at the first
    token: numpy advises large allocations MADV_HUGEPAGE, so the first step (which writes position 0 of every layer
    and head) faulted in the whole cache as 2 MiB pages; on the VM of docs/benchmarks.md, where fresh memory
    can take 0.6 s a GiB to fault in, that was up to 0.7 s of the first token for a 4096-token context."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if n == 0 or not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.zeros(shape, dtype=dtype)
    m = anonymous_map(n, "MADV_NOHUGEPAGE")
    return np.frombuffer(m, dtype=dtype).reshape(shape)  # the array keeps the map alive


class KVCache:
    def __init__(self, n_layer: int, n_head_kv: int, n_ctx: int, head_dim: int, dtype=np.float16, n_slots: int = 1):
        self.n_ctx = n_ctx
        self.n_slots = n_slots
        shape = (n_slots, n_layer, n_head_kv, n_ctx, head_dim)
        self.k = lazy_zeros(shape, dtype)  # (n_slots, n_layer, n_kv_head, n_ctx, head_dim)
        self.v = lazy_zeros(shape, dtype)  # (n_slots, n_layer, n_kv_head, n_ctx, head_dim)
        self.pos = np.zeros(n_slots, dtype=np.int64)  # (n_slots,) positions filled per slot

    def reset(self, slot: int | None = None) -> None:
        if slot is None:
            self.pos[:] = 0
        else:
            self.pos[slot] = 0

    def store(self, layer: int, pos0: int, k: np.ndarray, v: np.ndarray, slot: int = 0) -> None:
        """k, v: (T, n_kv_head, head_dim) for positions pos0 .. pos0+T-1 (rounded to the cache type here)."""
        t = k.shape[0]
        self.k[slot, layer, :, pos0 : pos0 + t] = k.transpose(1, 0, 2)
        self.v[slot, layer, :, pos0 : pos0 + t] = v.transpose(1, 0, 2)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
