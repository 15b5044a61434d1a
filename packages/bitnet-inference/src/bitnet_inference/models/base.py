"""The BitNet transformer shared by every architecture; arch modules choose the FFN activation.

Reads top to bottom: weights attached from the memory-mapped GGUF, a static KV cache, one forward pass.
"""

from __future__ import annotations

import numpy as np

from bitnet_inference.args import ModelArgs
from bitnet_inference.errors import ContextOverflowError, EngineError
from bitnet_inference.kv_cache import KVCache
from bitnet_inference.linear import I2SLinear, Linear, TQLinear, make_linear
from bitnet_inference.numerics import Numerics, RopeTable

F32 = np.float32
KV_TYPES = {"f16": np.float16, "f32": np.float32}  # llama.cpp's default cache is F16
PROJ = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


class Layer:
    def __init__(self, gguf, i: int, numerics: Numerics, use_kernels: bool, uses_scales: bool, f16_always: bool):
        p = f"blk.{i}."
        self.attn_norm = gguf.array(p + "attn_norm.weight").astype(F32)  # (n_embd,)
        self.attn_sub_norm = gguf.array(p + "attn_sub_norm.weight").astype(F32)  # (n_embd,)
        self.ffn_norm = gguf.array(p + "ffn_norm.weight").astype(F32)  # (n_embd,)
        self.ffn_sub_norm = gguf.array(p + "ffn_sub_norm.weight").astype(F32)  # (n_ff,)
        self.proj: dict[str, Linear] = {}
        for name in PROJ:
            lin = make_linear(gguf, p + name + ".weight", numerics, use_kernels, f16_always)
            scale_name = p + name + ".scale"
            if uses_scales and scale_name in gguf.tensors:
                lin.out_scale = F32(gguf.dequantize(scale_name).reshape(-1)[0])
            self.proj[name] = lin


class Transformer:
    ffn_act = "?"  # set by the architecture module: "relu2" (relu(g)^2 * u) or "silu" (silu(g) * u)
    uses_scales = False
    # bitnet.cpp keeps a batch's normed hidden state in F32 for the F16 head and rounds a single row to F16;
    # upstream llama.cpp (which runs arch `bitnet`) rounds every row to F16
    head_f16_always = False

    def __init__(self, gguf, args: ModelArgs, numerics: Numerics, n_ctx: int, use_kernels: bool = True,
                 kv_type: str = "f16", n_slots: int = 1, lm_head: str = "f16"):
        if n_ctx <= 0:
            raise EngineError(f"context size must be positive, got {n_ctx}")
        if kv_type not in KV_TYPES:
            raise EngineError(f"unknown KV cache type {kv_type!r}; choose one of: {', '.join(KV_TYPES)}")
        if lm_head not in ("f16", "q8"):
            raise EngineError(f"unknown LM head {lm_head!r}; choose f16 (default) or q8")
        self.args = args
        self.numerics = numerics
        self.n_ctx = n_ctx
        self.tok_embd = _float_matrix(gguf, "token_embd.weight")  # (n_vocab, n_embd) f16/f32, zero-copy when F16/F32
        self.output = self.tok_embd if args.tied_head else _float_matrix(gguf, "output.weight")  # (n_vocab, n_embd)
        self.output_norm = gguf.array("output_norm.weight").astype(F32)  # (n_embd,)
        self.head_q8 = self._prepare_q8_head() if lm_head == "q8" else None  # ((n_vocab, n_embd) i8, (n_vocab,) f32)
        self.head_parts = self._head_parts(gguf)  # [(first row, rows)]: one part unless the copy is still on the head
        self.layers = [Layer(gguf, i, numerics, use_kernels, self.uses_scales, self.head_f16_always)
                       for i in range(args.n_layer)]
        self.rope = RopeTable(args.n_rot, args.rope_base, n_ctx)
        self.cache = KVCache(args.n_layer, args.n_head_kv, n_ctx, args.head_dim, dtype=KV_TYPES[kv_type],
                             n_slots=n_slots)
        self.plan = self._decode_plan()  # one-token steps in one kernel call, when the fast kernels can run them

    def rebind_weights(self, weights, names) -> None:
        """Read the named tensors from `weights` from now on (the same bytes, moved: weights.ResidentWeights) and
        rebuild the decode plan over them. Call between forward passes."""
        names = set(names)
        for attr, name in (("tok_embd", "token_embd.weight"), ("output", "output.weight")):
            if name in names and weights.info(name).qtype.name in ("F16", "F32"):  # zero-copy views; others converted
                setattr(self, attr, weights.array(name))
        if self.args.tied_head:
            self.output = self.tok_embd
        if names & {"token_embd.weight", "output.weight"}:
            self.head_parts = self._head_parts(weights)
        rebound = False
        for L in self.layers:
            for lin in L.proj.values():
                if lin.name in names:
                    lin.rebind(weights)
                    rebound = True
        if rebound:  # the plan holds the projections' pointers (while the copy is on the head, nothing to redo)
            self.plan = self._decode_plan()

    # -- the forward pass ----------------------------------------------------------------------------------

    def forward(self, tokens: np.ndarray, pos0: int, logits: str = "all", capture=None, slot: int = 0) -> np.ndarray:
        """Evaluate tokens (T,) of sequence `slot` at positions pos0.. and return logits (T, V) ("all") or
        (1, V) ("last").

        `capture(name, layer, array)` (optional) receives intermediate values for layer-by-layer checks.
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        t = tokens.shape[0]
        if t == 0:
            raise EngineError("no tokens to evaluate")
        if pos0 + t > self.n_ctx:
            raise ContextOverflowError(
                f"{pos0 + t} tokens do not fit the context of {self.n_ctx}; raise -c/--ctx-size or shorten the input"
            )
        self._check_tokens(tokens)
        if t == 1 and capture is None and self.plan is not None:
            x = self.tok_embd[tokens].astype(F32)  # (1, n_embd)
            self.plan.step(x[0], pos0, slot)
            self.cache.pos[slot] = pos0 + 1
            return self._head(x)
        pos = np.arange(pos0, pos0 + t)
        x = self._layers(tokens, pos, lambda i, q, k, v: self._attend_one(i, q, k, v, pos0, slot), capture)
        self.cache.pos[slot] = pos0 + t
        if logits == "last":
            x = x[-1:]
        return self._head(x)

    def forward_batch(self, tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """One decode step for several sequences: token b of slot b at position b. Every matmul runs over the
        whole batch (one pass over the weights); attention runs per sequence. Returns logits (B, V)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        slots = np.asarray(slots, dtype=np.int64)
        if not (tokens.shape == positions.shape == slots.shape) or tokens.ndim != 1 or tokens.size == 0:
            raise EngineError("forward_batch needs equal-length 1-D tokens, positions and slots")
        if len(set(slots.tolist())) != slots.size:
            raise EngineError("forward_batch: each slot may appear once per step")
        if positions.min() < 0 or positions.max() >= self.n_ctx:
            raise ContextOverflowError(f"position {positions.max()} is past the context of {self.n_ctx}")
        self._check_tokens(tokens)

        def attend(i, q, k, v):
            out = np.empty((q.shape[0], self.args.n_embd), F32)
            for b in range(q.shape[0]):
                out[b : b + 1] = self._attend_one(i, q[b : b + 1], k[b : b + 1], v[b : b + 1], int(positions[b]), int(slots[b]))
            return out

        x = self._layers(tokens, positions, attend, None)
        self.cache.pos[slots] = positions + 1
        return self._head(x)

    def _check_tokens(self, tokens: np.ndarray) -> None:
        if tokens.min() < 0 or tokens.max() >= self.args.n_vocab:
            raise EngineError(f"token id out of range 0..{self.args.n_vocab - 1}")

    def _attend_one(self, i: int, q, k, v, pos0: int, slot: int) -> np.ndarray:
        self.cache.store(i, pos0, k, v, slot)
        return self.numerics.attention(q, self.cache.k[slot, i], self.cache.v[slot, i], pos0, self.n_ctx)

    def _layers(self, tokens: np.ndarray, pos: np.ndarray, attend, capture) -> np.ndarray:
        a = self.args
        nm = self.numerics
        t = tokens.shape[0]
        x = self.tok_embd[tokens].astype(F32)  # (T, n_embd)
        for i, L in enumerate(self.layers):
            P = L.proj
            h = nm.rmsnorm(x, L.attn_norm, a.norm_eps)  # (T, n_embd)
            q = P["attn_q"](h).reshape(t, a.n_head, a.head_dim)  # (T, n_head, head_dim)
            k = P["attn_k"](h).reshape(t, a.n_head_kv, a.head_dim)  # (T, n_head_kv, head_dim)
            v = P["attn_v"](h).reshape(t, a.n_head_kv, a.head_dim)
            q = nm.rope(q, self.rope, pos)
            k = nm.rope(k, self.rope, pos)
            attn = attend(i, q, k, v)  # (T, n_embd)
            attn = nm.rmsnorm(attn, L.attn_sub_norm, a.norm_eps)
            x = (x + P["attn_output"](attn)).astype(F32)
            if capture:
                capture("attn_out", i, x)
            h = nm.rmsnorm(x, L.ffn_norm, a.norm_eps)
            f = nm.ffn_act(self.ffn_act, P["ffn_gate"](h), P["ffn_up"](h))  # (T, n_ff)
            f = nm.rmsnorm(f, L.ffn_sub_norm, a.norm_eps)
            x = (x + P["ffn_down"](f)).astype(F32)
            if capture:
                capture("layer_out", i, x)
        return x

    def _decode_plan(self):
        """bitnet_kernels' DecodePlan: the loop of `_layers` for one token in Cython, the same kernels in the same
        order (bit-identical logits, tested), none of the ~60 us of Python a layer. None where the fast kernels
        do not run every step of it (numpy or emulation numerics, float projections, an F32 cache, odd RoPE)."""
        nm, a = self.numerics, self.args
        bk = getattr(nm, "bk", None)
        if nm.name != "fast" or bk is None or not hasattr(bk, "DecodePlan") or self.cache.k.dtype != np.float16:
            return None
        if self.ffn_act not in ("relu2", "silu") or a.n_rot % 2 or a.n_head * a.head_dim != a.n_embd:
            return None
        layers, lane_order = [], False
        for L in self.layers:
            projs = []
            for name in PROJ:
                lin = L.proj[name]
                if isinstance(lin, I2SLinear) and lin.use_kernels:
                    qt = 0
                elif isinstance(lin, TQLinear) and lin.use_kernels:
                    qt, lane_order = (2 if lin.qtype == "TQ2_0" else 1), lin.lane_order
                else:
                    return None
                projs.append((lin.raw, qt, None if lin.out_scale is None else float(lin.out_scale)))
            layers.append((L.attn_norm, L.attn_sub_norm, L.ffn_norm, L.ffn_sub_norm, projs))
        return bk.DecodePlan(layers, self.cache.k, self.cache.v, a.n_embd, a.n_ff, a.n_head, a.n_head_kv,
                             a.head_dim, a.n_rot, float(a.norm_eps), float(self.rope.base), self.ffn_act, lane_order)

    def _prepare_q8_head(self):
        """The optional int8 head (`--lm-head q8`): per-row absmax int8 of the F16 head, converted once at load;
        decode then reads half the bytes (0.33 GB instead of 0.66 GB at the 2B-4T shape)."""
        if self.numerics.name != "fast" or getattr(self.numerics, "bk", None) is None:
            raise EngineError("--lm-head q8 needs the Cython kernels (pip install 'bitnet[cpu]') and --numerics fast")
        if self.output.dtype != np.float16:
            raise EngineError(f"--lm-head q8 converts an F16 head; this file's head is {self.output.dtype}")
        return self.numerics.bk.q8_head_prepare(self.output)

    def _head_parts(self, weights) -> list:
        name = "token_embd.weight" if self.args.tied_head else "output.weight"
        split = getattr(weights, "row_parts", None)
        if split is None or weights.info(name).qtype.name not in ("F16", "F32"):
            return [(0, self.output)]
        return split(name)

    def _head(self, x: np.ndarray) -> np.ndarray:
        nm = self.numerics
        h = nm.rmsnorm(x, self.output_norm, self.args.norm_eps)
        if self.head_q8 is not None:
            return nm.bk.q8_head_gemv(self.head_q8[0], self.head_q8[1], np.ascontiguousarray(h, F32))
        f16 = self.output.dtype == np.float16 and (self.head_f16_always or h.shape[0] == 1)
        if len(self.head_parts) > 1:  # the copied rows from the arena, the rest from the map: the same logits
            out = np.empty((h.shape[0], self.output.shape[0]), F32)
            for r0, rows in self.head_parts:
                out[:, r0 : r0 + rows.shape[0]] = nm.lm_head(h, rows, f16)
            return out
        return nm.lm_head(h, self.output, f16).astype(F32)


def _float_matrix(gguf, name: str) -> np.ndarray:
    arr = gguf.array(name)
    if arr.dtype in (np.float16, np.float32):
        return arr
    return gguf.dequantize(name).astype(F32)
