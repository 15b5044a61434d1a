"""llama.cpp's `bitnet` graph (1bitLLM checkpoints): SiLU-gated FFN and optional per-projection .scale tensors."""

from __future__ import annotations

from bitnet_inference.models.base import Transformer


class Model(Transformer):
    ffn_act = "silu"
    uses_scales = True
    head_f16_always = True
