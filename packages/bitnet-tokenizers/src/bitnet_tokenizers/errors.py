"""Typed errors of bitnet-tokenizers."""

from __future__ import annotations

from bitnet_quantization.errors import BitNetError


class TokenizerError(BitNetError):
    """A model file's tokenizer is missing, malformed or of a kind this project does not support."""
