"""llama.cpp's `bitnet` graph (1bitLLM checkpoints): SiLU-gated FFN and optional per-projection .scale tensors."""

from __future__ import annotations

import numpy as np

from bitnet_inference.models.base import Transformer


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    g = gate.astype(np.float32)
    with np.errstate(over="ignore"):
        s = g / (np.float32(1) + np.exp(-g))
    return (s * up).astype(np.float32)


class Model(Transformer):
    ffn_act = staticmethod(silu_mul)
    uses_scales = True
    head_f16_always = True
