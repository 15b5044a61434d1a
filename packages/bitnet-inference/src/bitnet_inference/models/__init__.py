"""Architecture registry: GGUF `general.architecture` -> the module that builds the model."""

from __future__ import annotations

from bitnet_inference.models import bitnet, bitnet_b158

ARCHS = {
    "bitnet-b1.58": bitnet_b158,
    "bitnet-25": bitnet_b158,
    "bitnet": bitnet,
}

__all__ = ["ARCHS"]
