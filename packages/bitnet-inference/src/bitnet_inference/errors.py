"""Typed errors of the inference engine (the CLI prints them as one line and exits 2)."""

from bitnet_quantization.errors import BitNetError


class EngineError(BitNetError):
    """Bad input to the engine: unknown architecture, context overflow, empty prompt, invalid settings."""


class ContextOverflowError(EngineError):
    """More tokens than the context holds."""
