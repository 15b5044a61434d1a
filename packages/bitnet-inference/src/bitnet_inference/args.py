"""ModelArgs: the hyper-parameters of a BitNet model, built from GGUF metadata (unknown keys are ignored)."""

from __future__ import annotations

from bitnet_models.config import ModelConfig


class ModelArgs(ModelConfig):
    """The engine's name for bitnet_models.ModelConfig (same fields; `from_gguf(file)` builds it)."""


__all__ = ["ModelArgs"]
