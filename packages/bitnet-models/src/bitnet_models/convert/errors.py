"""Typed conversion errors: each names what was found, what was expected and what to do."""

from __future__ import annotations

from bitnet_models.errors import BitNetModelError


class ConvertError(BitNetModelError):
    """A Hugging Face checkpoint cannot be converted as asked."""


class CheckpointError(ConvertError):
    """The checkpoint folder is incomplete or malformed (config.json, safetensors, tokenizer files)."""


class UnsupportedModelError(ConvertError):
    """The checkpoint's model_type, architecture or activation is not one this converter knows."""


class QuantizationError(ConvertError):
    """The requested output type cannot represent the weights (non-ternary values, shapes off the block size)."""


class VerifyError(ConvertError):
    """`--verify` found the converted file disagreeing with transformers, or could not run it."""
