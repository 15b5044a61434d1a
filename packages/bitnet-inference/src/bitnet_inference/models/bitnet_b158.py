"""Microsoft's BitNet b1.58 graph (`bitnet-b1.58`, `bitnet-25`): squared-ReLU FFN, attention and FFN sub-norms."""

from __future__ import annotations

from bitnet_inference.models.base import Transformer


class Model(Transformer):
    ffn_act = "relu2"
