"""What a numerics mode provides: the float operations of the forward pass."""

from __future__ import annotations

import numpy as np

from bitnet_inference.numerics.libm import map_f32, powf

F32 = np.float32


class RopeTable:
    """cos/sin of NEOX RoPE angles per position, built as ggml builds them: theta starts at the position (a
    float) and is multiplied by powf(base, -2/n_rot) once per pair, in float32; cos/sin come from libm."""

    def __init__(self, n_rot: int, base: float, max_pos: int):
        self.n_rot = n_rot
        self.base = base
        self.half = n_rot // 2
        self.theta_scale = powf(base, -2.0 / n_rot)
        self.max_pos = max_pos
        self._cos = np.zeros((0, self.half), F32)
        self._sin = np.zeros((0, self.half), F32)

    def _extend(self, upto: int) -> None:
        start = self._cos.shape[0]
        upto = max(upto, min(self.max_pos, start * 2, start + 1024))
        pos = np.arange(start, upto, dtype=F32)
        theta = np.empty((upto - start, self.half), F32)
        t = pos.copy()
        for i in range(self.half):
            theta[:, i] = t
            t = (t * self.theta_scale).astype(F32)
        self._cos = np.concatenate([self._cos, map_f32("cosf", theta)])
        self._sin = np.concatenate([self._sin, map_f32("sinf", theta)])

    def get(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top = int(pos.max()) + 1
        if top > self._cos.shape[0]:
            self._extend(top)
        return self._cos[pos], self._sin[pos]


class Numerics:
    name = "?"

    def rmsnorm(self, x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        raise NotImplementedError

    def rope(self, x: np.ndarray, table: RopeTable, pos: np.ndarray) -> np.ndarray:
        """x (T, H, D) at positions pos (T,) -> rotated (NEOX: pairs i and i + n_rot/2)."""
        cos, sin = table.get(pos)
        return self.rotate(x, cos, sin)

    def rotate(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        half = cos.shape[-1]
        out = x.copy()
        x0 = x[..., :half]
        x1 = x[..., half : 2 * half]
        c = cos[:, None, :]
        s = sin[:, None, :]
        out[..., :half] = self.madd(x0, c, -(x1 * s).astype(F32))
        out[..., half : 2 * half] = self.madd(x0, s, (x1 * c).astype(F32))
        return out

    def madd(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        """a * b + c, each operation rounded (the emulation modes fuse it where ggml's compiler does)."""
        return (a * b).astype(F32) + c

    def attention(self, q, k_cache, v_cache, pos0: int, n_ctx: int) -> np.ndarray:
        """q (T, H, D) f32; k_cache/v_cache (Hkv, S, D) f16 with rows < pos0+T filled -> (T, H*D) f32."""
        raise NotImplementedError

    def lm_head(self, x: np.ndarray, emb: np.ndarray, f16_activations: bool) -> np.ndarray:
        """x (T, K) f32, emb (V, K) f16 -> logits (T, V) f32; with f16_activations x is first rounded to F16
        (what ggml does for one row, and upstream llama.cpp for every row)."""
        raise NotImplementedError

    def ffn_act(self, kind: str, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """relu2: relu(gate)^2 * up; silu: silu(gate) * up (float32, each op rounded as ggml does)."""
        if kind == "relu2":
            r = np.maximum(gate, F32(0))
            return ((r * r) * up).astype(F32)
        if kind == "silu":
            return (self.silu(gate) * up).astype(F32)
        raise ValueError(f"unknown FFN activation {kind!r}")

    def silu(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return (x / (F32(1) + np.exp(-x))).astype(F32)

    # TQ1_0/TQ2_0 matmuls: accumulate the per-block integer dots in llama.cpp's AVX2 lane order
    tq_lane_order = False

    def dense(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Float weights: x (T, K) f32, w (N, K) f32 -> (T, N)."""
        raise NotImplementedError
