"""Reference codecs for ternary weights: absmean ternarization, I2_S (bitnet.cpp, x86 layout), TQ1_0 and TQ2_0.

These are the slow, bit-exact oracles. Every SIMD or CUDA kernel is tested against them. Layouts are in the
project spec (`docs/formats.md`): ternary value q in {-1, 0, +1} is stored as the code c = q + 1.
"""

from __future__ import annotations

import numpy as np

QK_K = 256  # TQ1_0 / TQ2_0 super-block
I2S_BLOCK = 128  # weights per I2_S block (x86 layout)
I2S_TAIL = 32  # bytes after the packed codes; the first 4 hold the f32 scale

_POW3_ENC5 = np.array([81, 27, 9, 3, 1], dtype=np.uint8)
_POW3_ENC4 = np.array([81, 27, 9, 3], dtype=np.uint8)
_POW3_DEC5 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)
_POW3_DEC4 = np.array([1, 3, 9, 27], dtype=np.uint8)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf: halves go away from zero (what ggml's reference quantizers use)."""
    a = np.abs(x)
    fl = np.floor(a)
    return np.sign(x) * (fl + np.floor(2 * (a - fl)))


def _as_blocks(x: np.ndarray, block: int, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size % block:
        raise ValueError(f"{what}: {x.size} values is not a multiple of the block size {block}")
    return x.reshape(-1, block)


def absmean_ternarize(w: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.float32]:
    """BitNet b1.58 weight quantizer: q = clamp(round(w / mean|w|), -1, 1).

    Returns the int8 ternary values and the per-tensor scale mean|w| (so w ~ q * scale).
    """
    w = np.asarray(w, dtype=np.float32)
    scale = np.float32(max(float(np.mean(np.abs(w), dtype=np.float64)), eps))
    q = np.clip(np.rint(w / scale), -1, 1).astype(np.int8)
    return q, scale


# --- I2_S ------------------------------------------------------------------------------------------------------

def i2s_nbytes(n: int) -> int:
    return n // 4 + I2S_TAIL


def i2s_pack(q: np.ndarray, scale: float) -> np.ndarray:
    """Pack ternary values (any shape, row-major, size divisible by 128) and a scale into I2_S bytes."""
    q = np.asarray(q)
    if q.size % I2S_BLOCK:
        raise ValueError(f"I2_S needs a multiple of {I2S_BLOCK} weights, got {q.size}")
    if q.size and (q.min() < -1 or q.max() > 1):
        raise ValueError("I2_S can only store ternary values in {-1, 0, +1}")
    codes = (q.reshape(-1, 4, 32).astype(np.uint8) + 1)  # (n_blocks, group, byte)
    packed = (codes[:, 0] << 6) | (codes[:, 1] << 4) | (codes[:, 2] << 2) | codes[:, 3]
    out = np.zeros(q.size // 4 + I2S_TAIL, dtype=np.uint8)
    out[: q.size // 4] = packed.reshape(-1)
    out[q.size // 4 : q.size // 4 + 4] = np.array([scale], dtype="<f4").view(np.uint8)
    return out


def i2s_unpack_codes(raw: np.ndarray, n: int) -> np.ndarray:
    """The n ternary values of an I2_S tensor as int8 (code 3, never written, decodes to 0 as in bitnet.cpp)."""
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size != i2s_nbytes(n):
        raise ValueError(f"I2_S tensor of {n} weights needs {i2s_nbytes(n)} bytes, got {raw.size}")
    b = raw[: n // 4].reshape(-1, 1, 32)
    codes = (b >> np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 4, 1)) & 3
    q = codes.astype(np.int8) - 1
    q[codes == 3] = 0
    return q.reshape(-1)


def i2s_scale(raw: np.ndarray, n: int) -> np.float32:
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    return raw[n // 4 : n // 4 + 4].view("<f4")[0]


def i2s_decode(raw: np.ndarray, n: int) -> np.ndarray:
    return i2s_unpack_codes(raw, n).astype(np.float32) * i2s_scale(raw, n)


def i2s_encode(w: np.ndarray) -> np.ndarray:
    """Encode values that are already ternary times one scale (as dequantized I2_S is): scale = max|w|."""
    w = np.asarray(w, dtype=np.float32).reshape(-1)
    scale = np.float32(np.max(np.abs(w))) if w.size else np.float32(0)
    q = np.zeros(w.size, dtype=np.int8) if scale == 0 else np.rint(w / scale).astype(np.int8)
    if scale != 0 and not np.array_equal(q.astype(np.float32) * scale, w):
        raise ValueError("values are not ternary times one scale: ternarize them first (absmean_ternarize)")
    return i2s_pack(q, scale)


# --- TQ2_0 ----------------------------------------------------------------------------------------------------

@np.errstate(all="ignore")  # subnormal blocks overflow 1/d exactly as in ggml; no warnings
def tq2_0_encode(x: np.ndarray) -> np.ndarray:
    """llama.cpp's TQ2_0 quantizer (per-256 absmax scale, values rounded to the nearest of -1, 0, +1)."""
    blocks = _as_blocks(x, QK_K, "TQ2_0")
    d = np.abs(blocks).max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    codes = (round_half_away(blocks * inv).astype(np.int8) + 1).astype(np.uint8)
    codes = codes.reshape(-1, 2, 4, 32)  # (block, half, shift group, byte)
    qs = codes[:, :, 0] | (codes[:, :, 1] << 2) | (codes[:, :, 2] << 4) | (codes[:, :, 3] << 6)
    out = np.concatenate([qs.reshape(-1, 64), d.astype(np.float16).view(np.uint8)], axis=1)
    return out.reshape(-1)


def ternary_codes_from_tq2_0(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ternary values (int8, n) and per-block fp16 scales as float32 (n / 256)."""
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, 66)
    qs = blocks[:, :64].reshape(-1, 2, 1, 32)
    codes = (qs >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
    d = blocks[:, 64:66].copy().view(np.float16).astype(np.float32).reshape(-1)
    return (codes.astype(np.int8) - 1).reshape(-1), d


def tq2_0_decode(raw: np.ndarray) -> np.ndarray:
    q, d = ternary_codes_from_tq2_0(raw)
    return (q.reshape(-1, QK_K).astype(np.float32) * d[:, None]).reshape(-1)


# --- TQ1_0 ----------------------------------------------------------------------------------------------------

def _trits_to_byte(codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    # codes: (..., k, m) base-3 digits; returns ceil(v * 256 / 243) as a byte (base-3 fixed point)
    v = np.sum(codes * weights.reshape(-1, 1), axis=-2, dtype=np.uint16)
    return ((v * 256 + 242) // 243).astype(np.uint8)


@np.errstate(all="ignore")  # subnormal blocks overflow 1/d exactly as in ggml; no warnings
def tq1_0_encode(x: np.ndarray) -> np.ndarray:
    """llama.cpp's TQ1_0 quantizer: 5 trits a byte (qs[48]), 4 trits a byte (qh[4]), fp16 scale."""
    blocks = _as_blocks(x, QK_K, "TQ1_0")
    n = blocks.shape[0]
    d = np.abs(blocks).max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    codes = (round_half_away(blocks * inv).astype(np.int8) + 1).astype(np.uint8)
    qs0 = _trits_to_byte(codes[:, :160].reshape(n, 5, 32), _POW3_ENC5)
    qs1 = _trits_to_byte(codes[:, 160:240].reshape(n, 5, 16), _POW3_ENC5)
    qh = _trits_to_byte(codes[:, 240:].reshape(n, 4, 4), _POW3_ENC4)
    out = np.concatenate([qs0, qs1, qh, d.astype(np.float16).view(np.uint8)], axis=1)
    return out.reshape(-1)


def _byte_to_trits(b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    # b: (n, m) bytes -> (n, k, m) digits; uint8 products wrap on purpose (that is the decoding trick)
    t = (b[:, None, :] * weights.reshape(1, -1, 1)).astype(np.uint8)
    return ((t.astype(np.uint16) * 3) >> 8).astype(np.int8)


def ternary_codes_from_tq1_0(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, 54)
    n = blocks.shape[0]
    c0 = _byte_to_trits(blocks[:, :32], _POW3_DEC5).reshape(n, 160)
    c1 = _byte_to_trits(blocks[:, 32:48], _POW3_DEC5).reshape(n, 80)
    c2 = _byte_to_trits(blocks[:, 48:52], _POW3_DEC4).reshape(n, 16)
    q = np.concatenate([c0, c1, c2], axis=1) - np.int8(1)
    d = blocks[:, 52:54].copy().view(np.float16).astype(np.float32).reshape(-1)
    return q.reshape(-1), d


def tq1_0_decode(raw: np.ndarray) -> np.ndarray:
    q, d = ternary_codes_from_tq1_0(raw)
    return (q.reshape(-1, QK_K).astype(np.float32) * d[:, None]).reshape(-1)
