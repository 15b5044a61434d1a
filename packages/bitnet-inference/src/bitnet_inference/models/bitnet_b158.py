"""Microsoft's BitNet b1.58 graph (`bitnet-b1.58`, `bitnet-25`): squared-ReLU FFN, attention and FFN sub-norms."""

from __future__ import annotations

import numpy as np

from bitnet_inference.models.base import Transformer


def relu2_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    r = np.maximum(gate, np.float32(0))
    return ((r * r) * up).astype(np.float32)


class Model(Transformer):
    ffn_act = staticmethod(relu2_mul)
