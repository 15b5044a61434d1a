"""Python-visible CPU kernels: argument checks, then one call into the Cython kernels (GIL released there).

Every array is numpy, C-contiguous, of the exact dtype named; nothing is converted silently (a silent copy of
a 0.66 GB head per token would be a performance bug). Outputs can be preallocated with `out=`.
Ternary weights are used in place: an I2_S tensor is its raw bytes (N*K/4 + 32, the f32 scale in the tail),
a TQ2_0/TQ1_0 tensor its raw blocks; both can be zero-copy views into a memory-mapped GGUF file.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

import numpy as np

from bitnet_kernels.errors import KernelError

try:
    from bitnet_kernels import _cpu
except ImportError as exc:  # a source checkout whose extension was never compiled
    raise ImportError(
        "bitnet_kernels._cpu is not built: install the package with `pip install -e packages/bitnet-kernels` "
        "(needs a C compiler with OpenMP) or rebuild in place with `python packages/bitnet-kernels/hatch_build.py`"
    ) from exc

ISA_PATHS = ("avx512vnni", "avx2", "portable")
TQ_BLOCK_BYTES = {"TQ2_0": 66, "TQ1_0": 54}


class QuantizedActivations(NamedTuple):
    q: np.ndarray  # (T, K) int8
    scale: np.ndarray  # (T,) float32, x ~ q / scale
    qsum: np.ndarray  # (T,) int32


class Q8KActivations(NamedTuple):
    q: np.ndarray  # (T, K) int8
    d: np.ndarray  # (T, K/256) float32, x ~ q * d
    bsums: np.ndarray  # (T, K/16) int16


# --- machine, ISA path and threads ------------------------------------------------------------------------------

def cpu_info() -> dict:
    """Detected CPU features, the ISA path in use, the best one available and the thread count."""
    return {
        "features": _cpu.features(),
        "isa": _cpu.get_isa(),
        "best_isa": _cpu.best_isa(),
        "available_isa": _available_isas(),
        "num_threads": _cpu.get_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
    }


def _available_isas() -> list[str]:
    best = ISA_PATHS.index(_cpu.best_isa())
    return list(ISA_PATHS[best:])


def force_isa(name: str | None) -> str:
    """Use ISA path `name` ("avx512vnni", "avx2", "portable"; None = the best this CPU has). Returns the old one."""
    old = _cpu.get_isa()
    if name is None:
        name = _cpu.best_isa()
    if name not in ISA_PATHS:
        raise KernelError(f"unknown ISA path {name!r}: choose one of {', '.join(ISA_PATHS)}")
    if name not in _available_isas():
        raise KernelError(
            f"this CPU cannot run the {name} path (it supports {', '.join(_available_isas())}); "
            "pick one of those"
        )
    _cpu.set_isa(name)
    return old


def set_num_threads(n: int) -> None:
    """Threads used by every kernel from now on (OpenMP parallel regions)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise KernelError(f"number of threads must be a positive integer, got {n!r}")
    _cpu.set_threads(int(n))


def get_num_threads() -> int:
    return _cpu.get_threads()


def set_decode_streams(n: int) -> int:
    """How the one-token GEMVs (I2_S, TQ2_0, F16 and int8 heads) read the weights: 2 (the default) walks two row
    ranges far apart in lockstep, 1 one range at a time, as before. Results are bit-identical; 1 exists for
    side-by-side benchmarks. Returns the previous setting."""
    if n not in (1, 2):
        raise KernelError(f"decode streams must be 1 or 2, got {n!r}")
    old = _cpu.get_decode_streams()
    _cpu.set_decode_streams(int(n))
    return old


set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


# --- argument checks --------------------------------------------------------------------------------------------

def _check(name: str, a, dtype, shape: tuple | None = None, ndim: int | None = None, writable: bool = False):
    dt = np.dtype(dtype)
    if not isinstance(a, np.ndarray):
        raise KernelError(f"{name} must be a numpy array of {dt}, got {type(a).__name__}")
    if a.dtype != dt:
        raise KernelError(f"{name} must have dtype {dt}, got {a.dtype}: convert it once with .astype(np.{dt})")
    if ndim is not None and a.ndim != ndim:
        raise KernelError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if shape is not None and a.shape != tuple(shape):
        raise KernelError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise KernelError(f"{name} must be C-contiguous: pass np.ascontiguousarray({name})")
    if writable and not a.flags.writeable:
        raise KernelError(f"{name} is read-only but the kernel writes into it: pass a writable array")
    return a


def _out(out, shape: tuple, dtype=np.float32) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=dtype)
    return _check("out", out, dtype, shape=shape, writable=True)


def _dims(N, K, k_multiple: int, what: str) -> tuple[int, int]:
    for nm, v in (("N", N), ("K", K)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise KernelError(f"{what}: {nm} must be a positive integer, got {v!r}")
    if K % k_multiple:
        raise KernelError(f"{what}: K = {K} is not a multiple of {k_multiple} (the format's block size)")
    return int(N), int(K)


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


def _f16_bits(name: str, a, shape=None, ndim=None) -> np.ndarray:
    _check(name, a, np.float16, shape=shape, ndim=ndim)
    return a.reshape(-1).view(np.uint16)


# --- activations ------------------------------------------------------------------------------------------------

def quantize_act_i8(x: np.ndarray) -> QuantizedActivations:
    """bitnet.cpp's per-token int8 quantization: s = 127 / max(max|x|, 1e-5), q = round-half-even(x * s)."""
    _check("x", x, np.float32, ndim=2)
    t, k = x.shape
    if t == 0 or k == 0:
        raise KernelError(f"x must not be empty, got shape {x.shape}")
    q = np.empty((t, k), np.int8)
    s = np.empty(t, np.float32)
    qs = np.empty(t, np.int32)
    _cpu.quantize_act_i8(_flat(x), t, k, _flat(q), s, qs)
    return QuantizedActivations(q, s, qs)


def quantize_q8_k(x: np.ndarray) -> Q8KActivations:
    """llama.cpp's Q8_K: one scale per 256 values (d = max / -127 signed), plus int16 sums of 16 values."""
    _check("x", x, np.float32, ndim=2)
    t, k = x.shape
    if t == 0 or k == 0 or k % 256:
        raise KernelError(f"Q8_K needs x of shape (T, K) with K a positive multiple of 256, got {x.shape}")
    q = np.empty((t, k), np.int8)
    d = np.empty((t, k // 256), np.float32)
    bs = np.empty((t, k // 16), np.int16)
    _cpu.quantize_q8_k(_flat(x), t, k, _flat(q), _flat(d), _flat(bs))
    return Q8KActivations(q, d, bs)


# --- ternary matmuls --------------------------------------------------------------------------------------------

def _i2s_weights(w, N, K) -> tuple[int, int]:
    N, K = _dims(N, K, 128, "I2_S")
    _check("w", w, np.uint8, ndim=1)
    need = N * K // 4 + 32
    if w.size != need:
        raise KernelError(
            f"I2_S weights of shape ({N}, {K}) are {need} bytes (N*K/4 packed + 32-byte tail with the scale), "
            f"got {w.size}: pass the tensor's raw bytes"
        )
    return N, K


def i2s_gemm_i32(w: np.ndarray, N: int, K: int, q: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Exact integer dots (T, N): sum_k w[n, k] * q[t, k] for I2_S weights (raw bytes) and int8 activations."""
    N, K = _i2s_weights(w, N, K)
    _check("q", q, np.int8, ndim=2)
    if q.shape[1] != K or q.shape[0] == 0:
        raise KernelError(f"q must have shape (T, {K}) with T >= 1, got {q.shape}")
    y = _out(out, (q.shape[0], N), np.int32)
    _cpu.i2s_gemm_i32(w, N, K, _flat(q), q.shape[0], _flat(y))
    return y


def i2s_linear(w: np.ndarray, N: int, K: int, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """y (T, N) = I2_S weights (raw bytes, shape (N, K)) applied to x (T, K) the bitnet.cpp way, fused:
    per-token int8 quantization, exact integer dots, y = (float)dot / s[t] * w_scale."""
    try:
        y = np.empty((x.shape[0], N), np.float32) if out is None else out
        _cpu.fast_i2s_linear(w, N, K, x, y)
        return y
    except (ValueError, TypeError, AttributeError, IndexError, OverflowError):
        pass
    N, K = _i2s_weights(w, N, K)  # the slow path: find the problem and say it
    _check("x", x, np.float32, ndim=2)
    if x.shape[1] != K or x.shape[0] == 0:
        raise KernelError(f"x must have shape (T, {K}) with T >= 1, got {x.shape}")
    y = _out(out, (x.shape[0], N))
    _cpu.i2s_linear(w, N, K, _flat(x), x.shape[0], _flat(y))
    return y


def i2s_linear_multi(weights, K: int, x: np.ndarray, outs=None) -> list[np.ndarray]:
    """Several I2_S matrices applied to the same x (T, K), e.g. attention q/k/v or FFN gate/up.

    `weights` is a sequence of (raw_bytes, N). Same results as one i2s_linear per matrix, but x is quantized
    once and a single token runs every matrix in one parallel region (each region costs a thread wake-up).
    """
    weights = list(weights)
    if not 1 <= len(weights) <= 8:
        raise KernelError(f"i2s_linear_multi takes 1 to 8 matrices, got {len(weights)}")
    _check("x", x, np.float32, ndim=2)
    ws, ns = [], []
    for raw, n in weights:
        n, k = _i2s_weights(raw, n, K)
        ws.append(raw)
        ns.append(n)
    if x.shape[1] != K or x.shape[0] == 0:
        raise KernelError(f"x must have shape (T, {K}) with T >= 1, got {x.shape}")
    t = x.shape[0]
    if outs is None:
        ys = [np.empty((t, n), np.float32) for n in ns]
    else:
        if len(outs) != len(ws):
            raise KernelError(f"outs must hold one array per matrix ({len(ws)}), got {len(outs)}")
        ys = [_out(o, (t, n)) for o, n in zip(outs, ns)]
    _cpu.i2s_linear_multi(ws, ns, int(K), _flat(x), t, [_flat(y) for y in ys])
    return ys


def tq_linear(w: np.ndarray, qtype: str, N: int, K: int, x: np.ndarray, out: np.ndarray | None = None,
              lane_order: bool = False) -> np.ndarray:
    """y (T, N) for TQ2_0 / TQ1_0 weights (raw blocks) with llama.cpp's Q8_K activations; the per-256-block
    integer dots are exact and summed in float32 block by block (bitwise equal to the numpy oracle).

    lane_order=True reproduces llama.cpp's AVX2 kernel instead: eight int32 lanes per block (lane m: weights
    32j + 4m + p, minus the sum of activations 32m..32m+31), FMA-accumulated per lane across blocks, then
    ((r0 + r2) + (r1 + r3)) with r = lanes 4..7 + lanes 0..3 (bitnet_inference's `llama` numerics)."""
    if qtype not in TQ_BLOCK_BYTES:
        raise KernelError(f"qtype must be one of {', '.join(TQ_BLOCK_BYTES)}, got {qtype!r}")
    N, K = _dims(N, K, 256, qtype)
    _check("w", w, np.uint8, ndim=1)
    need = N * (K // 256) * TQ_BLOCK_BYTES[qtype]
    if w.size != need:
        raise KernelError(f"{qtype} weights of shape ({N}, {K}) are {need} bytes, got {w.size}: pass the raw blocks")
    _check("x", x, np.float32, ndim=2)
    if x.shape[1] != K or x.shape[0] == 0:
        raise KernelError(f"x must have shape (T, {K}) with T >= 1, got {x.shape}")
    y = _out(out, (x.shape[0], N))
    _cpu.tq_linear(w, 2 if qtype == "TQ2_0" else 1, N, K, _flat(x), x.shape[0], _flat(y), bool(lane_order))
    return y


# --- LM head ----------------------------------------------------------------------------------------------------

def f16_gemv(w: np.ndarray, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """y (T, V) = x (T, K) @ w (V, K, float16).T with float32 accumulation (rows split over threads)."""
    try:
        if w.dtype == np.float16:
            y = np.empty((x.shape[0], w.shape[0]), np.float32) if out is None else out
            _cpu.fast_f16_gemv(w.view(np.uint16), x, y)
            return y
    except (ValueError, TypeError, AttributeError, IndexError):
        pass
    wb = _f16_bits("w", w, ndim=2)
    v, k = w.shape
    _check("x", x, np.float32, ndim=2)
    if x.shape[1] != k or x.shape[0] == 0:
        raise KernelError(f"x must have shape (T, {k}) to match w {w.shape}, got {x.shape}")
    y = _out(out, (x.shape[0], v))
    _cpu.f16_gemv(wb, v, k, _flat(x), x.shape[0], _flat(y))
    return y


def q8_head_prepare(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 LM head from an F16 one: per row, scale = max|w| / 127 and q = round-half-even(w * 127 / max|w|)."""
    wb = _f16_bits("w", w, ndim=2)
    v, k = w.shape
    q = np.empty((v, k), np.int8)
    scale = np.empty(v, np.float32)
    _cpu.q8_head_prepare(wb, v, k, _flat(q), scale)
    return q, scale


def q8_head_gemv(q: np.ndarray, scale: np.ndarray, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """y (T, V) = (float)(int8 dot of q[v] and x quantized per token) / s_x[t] * scale[v]."""
    try:
        y = np.empty((x.shape[0], q.shape[0]), np.float32) if out is None else out
        _cpu.fast_q8_head_gemv(q, scale, x, y)
        return y
    except (ValueError, TypeError, AttributeError, IndexError):
        pass
    _check("q", q, np.int8, ndim=2)
    v, k = q.shape
    _check("scale", scale, np.float32, shape=(v,))
    _check("x", x, np.float32, ndim=2)
    if x.shape[1] != k or x.shape[0] == 0:
        raise KernelError(f"x must have shape (T, {k}) to match q {q.shape}, got {x.shape}")
    y = _out(out, (x.shape[0], v))
    _cpu.q8_head_gemv(_flat(q), scale, v, k, _flat(x), x.shape[0], _flat(y))
    return y


# --- float parts ------------------------------------------------------------------------------------------------

def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray | None = None) -> np.ndarray:
    """ggml's RMSNorm times the weight: y = x * (1 / sqrtf(mean(x^2) + eps)) * w, the sum of squares in double."""
    try:
        y = np.empty_like(x) if out is None else out
        _cpu.fast_rmsnorm(x, w, eps, y)
        return y
    except (ValueError, TypeError, AttributeError, IndexError):
        pass
    _check("x", x, np.float32, ndim=2)
    t, k = x.shape
    _check("w", w, np.float32, shape=(k,))
    if not (eps >= 0):
        raise KernelError(f"eps must be a non-negative number, got {eps!r}")
    y = _out(out, (t, k))
    if t:
        _cpu.rmsnorm(_flat(x), w, t, k, float(eps), _flat(y))
    return y


def rope_neox(x: np.ndarray, pos: np.ndarray, base: float, n_rot: int) -> np.ndarray:
    """NEOX rotary embedding in place on x (T, H, D): pairs (i, i + n_rot/2), theta = pos * base^(-2i/n_rot)."""
    try:
        if not isinstance(n_rot, bool):
            _cpu.fast_rope_neox(x, pos, base, n_rot)
            return x
    except (ValueError, TypeError, AttributeError, IndexError, OverflowError):
        pass
    _check("x", x, np.float32, ndim=3, writable=True)
    t, h, d = x.shape
    _check("pos", pos, np.int32, shape=(t,))
    if isinstance(n_rot, bool) or not isinstance(n_rot, (int, np.integer)) or n_rot < 2 or n_rot % 2 or n_rot > d:
        raise KernelError(f"n_rot must be an even integer in [2, head_dim={d}], got {n_rot!r}")
    if not (base > 0):
        raise KernelError(f"rope base must be positive, got {base!r}")
    if t:
        _cpu.rope_neox(_flat(x), pos, t, h, d, float(base), int(n_rot))
    return x


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos0: int, n_kv: int,
              out: np.ndarray | None = None) -> np.ndarray:
    """Causal GQA attention over an F16 cache: token t (at position pos0 + t) sees cache positions
    < min(pos0 + t + 1, n_kv); head h reads KV head h // (H / Hkv); scale 1/sqrt(D); softmax in float32."""
    try:
        if k_cache.dtype == np.float16 and v_cache.dtype == np.float16:
            y = np.empty_like(q) if out is None else out
            _cpu.fast_attention(q, k_cache.view(np.uint16), v_cache.view(np.uint16), pos0, n_kv, y)
            return y
    except (ValueError, TypeError, AttributeError, IndexError, OverflowError):
        pass
    _check("q", q, np.float32, ndim=3)
    t, h, d = q.shape
    kb = _f16_bits("k_cache", k_cache, ndim=3)
    hkv, s, dk = k_cache.shape
    vb = _f16_bits("v_cache", v_cache, shape=k_cache.shape)
    if dk != d:
        raise KernelError(f"k_cache head size {dk} does not match q head size {d}")
    if hkv < 1 or h % hkv:
        raise KernelError(f"query heads ({h}) must be a multiple of KV heads ({hkv})")
    if not (0 <= pos0) or not (1 <= n_kv <= s):
        raise KernelError(f"need pos0 >= 0 and 1 <= n_kv <= cache size {s}, got pos0={pos0}, n_kv={n_kv}")
    y = _out(out, (t, h, d))
    if t:
        _cpu.attention(_flat(q), kb, vb, t, h, hkv, s, d, int(pos0), int(n_kv), _flat(y))
    return y


def softmax(x: np.ndarray) -> np.ndarray:
    """Row softmax in place on x (T, N) float32."""
    _check("x", x, np.float32, ndim=2, writable=True)
    if x.size:
        _cpu.softmax(_flat(x), x.shape[0], x.shape[1])
    return x


def _elementwise(kernel, gate: np.ndarray, up: np.ndarray, out) -> np.ndarray:
    _check("gate", gate, np.float32)
    _check("up", up, np.float32, shape=gate.shape)
    y = _out(out, gate.shape)
    if gate.size:
        kernel(_flat(gate), _flat(up), _flat(y), gate.size)
    return y


def relu2_mul(gate: np.ndarray, up: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """relu(gate)^2 * up (BitNet b1.58's FFN activation)."""
    return _elementwise(_cpu.relu2_mul, gate, up, out)


def silu_mul(gate: np.ndarray, up: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """silu(gate) * up = gate / (1 + exp(-gate)) * up (arch `bitnet`)."""
    return _elementwise(_cpu.silu_mul, gate, up, out)


# --- the fused decode step ---------------------------------------------------------------------------------------

# DecodePlan(layers, k_cache, v_cache, n_embd, n_ff, n_head, n_head_kv, head_dim, n_rot, eps, rope_base, act,
# lane_order): a model's one-token pass through every layer in one call (its docstring says more).
DecodePlan = _cpu.DecodePlan



def f16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> float16 as the decode plan rounds (round to nearest even, as numpy's astype)."""
    _check("x", x, np.float32, ndim=1)
    out = np.empty(x.shape[0], np.uint16)
    _cpu.f16_round(x, out)
    return out.view(np.float16)


# --- machine probe ----------------------------------------------------------------------------------------------

def stream_read_bandwidth(nbytes: int = 1 << 30, threads: int = 1, reps: int = 5) -> float:
    """Streaming read bandwidth in GB/s over a buffer of nbytes with `threads` threads: the best of reps, over two
    access patterns, one sequential stream per thread and two in lockstep (the decode GEMVs' pattern, which one
    Zen 4 core reads faster)."""
    if threads < 1 or reps < 1 or nbytes < (1 << 20):
        raise KernelError("stream_read_bandwidth needs threads >= 1, reps >= 1 and at least 1 MiB")
    buf = np.ones(nbytes - nbytes % (1 << 20), dtype=np.uint8)
    _cpu.stream_read(buf, threads, 1)  # fault pages in, warm up
    best = float("inf")
    for _ in range(reps):
        for streams in (1, 2):
            t0 = time.perf_counter()
            _cpu.stream_read(buf, threads, 1, streams)
            best = min(best, time.perf_counter() - t0)
    return buf.size / best / 1e9
