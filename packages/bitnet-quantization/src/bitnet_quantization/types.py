"""The one table of GGML quant types. Loaders, writers and kernel dispatch all derive from it.

Adding a type adds one entry. Never branch on raw type numbers elsewhere: look the type up here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from bitnet_quantization import ternary as t
from bitnet_quantization.errors import BitNetError


class QuantTypeError(BitNetError, ValueError):
    """A type id or name this project does not know, or an ambiguous one."""


def _f32_dec(raw: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(raw).view("<f4")[:n].astype(np.float32)


def _f16_dec(raw: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(raw).view("<f2")[:n].astype(np.float32)


def _bf16_dec(raw: np.ndarray, n: int) -> np.ndarray:
    return (np.asarray(raw).view("<u2")[:n].astype(np.uint32) << 16).view(np.float32)


@np.errstate(all="ignore")
def _bf16_enc(x: np.ndarray) -> np.ndarray:
    # round to nearest even, quiet NaNs kept NaN (what gguf-py and ggml do)
    u = np.ascontiguousarray(x, dtype=np.float32).reshape(-1).view(np.uint32)
    u = np.where((u & 0x7FFFFFFF) > 0x7F800000, (u & 0xFFFF0000) | (64 << 16), u)
    u = (u.astype(np.uint64) + (0x7FFF + ((u >> 16) & 1))) >> 16
    return u.astype(np.uint16).view(np.uint8)


@np.errstate(all="ignore")  # subnormal blocks overflow 1/d exactly as in ggml
def _q8_0_enc(x: np.ndarray) -> np.ndarray:
    blocks = t._as_blocks(x, 32, "Q8_0")
    d = (np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = t.round_half_away(blocks * inv).astype(np.int8)
    return np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1).reshape(-1)


def _q8_0_dec(raw: np.ndarray, n: int) -> np.ndarray:
    b = np.asarray(raw, dtype=np.uint8).reshape(-1, 34)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    return (b[:, 2:].view(np.int8).astype(np.float32) * d).reshape(-1)[:n]


@dataclass(frozen=True)
class QuantType:
    name: str
    ggml_id: int
    block_size: int  # weights per block
    type_size: int  # bytes per block
    ternary: bool  # holds {-1, 0, +1} times scales (goes through the ternary matmul)
    decode: Callable[[np.ndarray, int], np.ndarray]  # (raw uint8, n elements) -> float32 (n,)
    encode: Callable[[np.ndarray], np.ndarray]  # float32 values -> raw uint8
    tail_bytes: int = 0  # bytes after the blocks (I2_S keeps its scale there)

    def nbytes(self, n_elements: int) -> int:
        if n_elements % self.block_size:
            raise QuantTypeError(
                f"{self.name} stores blocks of {self.block_size} values; {n_elements} is not a multiple"
            )
        return n_elements // self.block_size * self.type_size + self.tail_bytes

    @property
    def numpy_dtype(self) -> np.dtype | None:
        """The numpy dtype a tensor of this type can be viewed as element by element, if any."""
        return {"F32": np.dtype("<f4"), "F16": np.dtype("<f2")}.get(self.name)


QUANT_TYPES: tuple[QuantType, ...] = (
    QuantType("F32", 0, 1, 4, False, _f32_dec, lambda x: np.ascontiguousarray(x, "<f4").reshape(-1).view(np.uint8)),
    QuantType("F16", 1, 1, 2, False, _f16_dec, lambda x: np.asarray(x, "<f4").astype("<f2").reshape(-1).view(np.uint8)),
    QuantType("Q8_0", 8, 32, 34, False, _q8_0_dec, _q8_0_enc),
    QuantType("BF16", 30, 1, 2, False, _bf16_dec, _bf16_enc),
    QuantType("TQ1_0", 34, 256, 54, True, lambda raw, n: t.tq1_0_decode(raw)[:n], t.tq1_0_encode),
    QuantType("TQ2_0", 35, 256, 66, True, lambda raw, n: t.tq2_0_decode(raw)[:n], t.tq2_0_encode),
    # bitnet.cpp's fork only: 128-weight blocks of 32 bytes, then a 32-byte tail holding the f32 scale
    QuantType("I2_S", 36, 128, 32, True, t.i2s_decode, t.i2s_encode, tail_bytes=t.I2S_TAIL),
)

_BY_NAME = {q.name: q for q in QUANT_TYPES}
_BY_ID = {q.ggml_id: q for q in QUANT_TYPES}

# Ids that mean different things in bitnet.cpp's fork and in upstream ggml: refuse rather than guess.
AMBIGUOUS_IDS = {
    37: "I8_S (bitnet.cpp fork) / retired upstream",
    38: "TL1 (bitnet.cpp fork; layout tied to a generated per-shape kernel)",
    39: "TL2 (bitnet.cpp fork) or MXFP4 (upstream ggml)",
    40: "NVFP4 (upstream ggml)",
    41: "Q1_0 (upstream ggml)",
    42: "Q2_0 (upstream ggml)",
}


def quant_type(name: str) -> QuantType:
    try:
        return _BY_NAME[name.upper()]
    except KeyError:
        raise QuantTypeError(f"unknown quant type {name!r}; supported: {', '.join(_BY_NAME)}") from None


def quant_type_by_id(ggml_id: int) -> QuantType:
    if ggml_id in _BY_ID:
        return _BY_ID[ggml_id]
    if ggml_id in AMBIGUOUS_IDS:
        raise QuantTypeError(
            f"ggml type id {ggml_id} ({AMBIGUOUS_IDS[ggml_id]}) is not supported: re-quantize the model to "
            "I2_S, TQ1_0 or TQ2_0"
        )
    raise QuantTypeError(
        f"unknown ggml type id {ggml_id}; supported: "
        + ", ".join(f"{q.name}={q.ggml_id}" for q in QUANT_TYPES)
    )
