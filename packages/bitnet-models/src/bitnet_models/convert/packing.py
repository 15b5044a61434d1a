"""Ternary weights from a checkpoint: absmean ternarization of float master weights, unpacking of transformers'
offline 2-bit packing, and the output encodings.

A ternary matrix is carried as (q, scale): q int8 in {-1, 0, +1} of shape (out, in) and a float32 scale with
W ~ q * scale. Every output type is built from that pair, so one checkpoint gives the same weights in every type.
"""

from __future__ import annotations

import numpy as np

from bitnet_models.convert.errors import QuantizationError
from bitnet_models.gguf.writer import RawTensor
from bitnet_quantization import i2s_pack

# output type -> (GGUF type of the ternary matrices, weights per block along a row, general.file_type)
OUTTYPES = {
    "i2_s": ("I2_S", 128, 40),
    "tq2_0": ("TQ2_0", 256, 37),
    "tq1_0": ("TQ1_0", 256, 36),
    "f16": ("F16", 1, 1),
    "f32": ("F32", 1, 0),
}
PACK = 4  # transformers' offline packing: 4 ternary values per byte along the output dimension
F16_MAX = 65504.0


def ternarize(w: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.float32]:
    """transformers' WeightQuant in float32: s = 1 / max(mean|W|, eps); q = clamp(round(W * s), -1, 1).

    Returns q (int8) and the dequantization scale 1/s (what W_q = q / s is multiplied back by), so that the
    GGUF holds exactly the weights transformers' online mode computes with.
    """
    w = np.asarray(w, dtype=np.float32)
    mean = np.float32(np.mean(np.abs(w), dtype=np.float64))
    s = np.float32(1.0) / np.maximum(mean, np.float32(eps))
    q = np.clip(np.rint(w * s), -1, 1).astype(np.int8)
    return q, np.float32(np.float32(1.0) / s)


def unpack_offline(packed: np.ndarray, name: str) -> np.ndarray:
    """transformers' pack_weights inverted: packed (out/4, in) uint8 -> q (out, in) int8.

    Row r, bit pair i (bits 2i..2i+1) holds output row i*(out/4) + r as code = q + 1.
    """
    packed = np.asarray(packed, dtype=np.uint8)
    rows = packed.shape[0]
    codes = np.empty((PACK * rows, *packed.shape[1:]), dtype=np.uint8)
    for i in range(PACK):
        codes[i * rows : (i + 1) * rows] = (packed >> (2 * i)) & 3
    if (codes == 3).any():
        raise QuantizationError(
            f"{name}: packed weights hold the code 3, which is not a ternary value (codes are q + 1 in {{0, 1, 2}}); "
            "the checkpoint is not transformers' BitNet offline packing")
    return codes.astype(np.int8) - 1


def check_ternary_float(w: np.ndarray, name: str) -> np.ndarray:
    """Offline weights stored as floats must already be ternary: return them as int8 or refuse."""
    q = np.rint(w)
    bad = (q != w) | (np.abs(q) > 1)
    if bad.any():
        v = w[bad].flat[0]
        raise QuantizationError(
            f"{name}: quantization_mode is offline but the weights are not ternary (found {v!r}); an offline "
            "checkpoint holds values in {-1, 0, +1} (or packed uint8). Set quantization_mode to online in "
            "config.json if these are float master weights")
    return q.astype(np.int8)


def check_scale(scale: float, name: str) -> np.float32:
    s = np.float32(scale)
    if not np.isfinite(s) or s <= 0:
        raise QuantizationError(f"{name}: weight scale {float(s)!r} is not a positive finite number; "
                                "the checkpoint's weight_scale is missing or corrupt")
    return s


def check_block(outtype: str, name: str, shape: tuple[int, ...]) -> None:
    gtype, block, _ = OUTTYPES[outtype]
    if shape[-1] % block:
        raise QuantizationError(
            f"{name}: rows of {shape[-1]} weights (shape {shape}) do not fit {gtype}'s {block}-weight blocks; "
            f"choose an output type whose block divides {shape[-1]} (f16 or f32 always fit)")


def encode_ternary(q: np.ndarray, scale: np.float32, outtype: str):
    """The writer's input for a ternary matrix in `outtype`: I2_S as packed bytes, the others as floats that the
    quant-type table encodes (TQ blocks then hold d = fp16(scale), F16 holds fp16(q * scale))."""
    if outtype == "i2_s":
        return RawTensor(i2s_pack(q, scale), tuple(q.shape))
    w = q.astype(np.float32) * scale
    if outtype == "f16" and scale > F16_MAX:
        raise QuantizationError(f"weight scale {float(scale)} overflows F16; use --outtype f32")
    return w
