"""Typed errors of bitnet-crossval (the CLI prints them as one line and exits 2)."""

from bitnet_quantization.errors import BitNetError


class CrossValError(BitNetError):
    """Bad cross-validation input: an invalid tolerance, a missing reference output, a mismatched file."""


class ReferenceUnavailableError(CrossValError):
    """The chosen reference cannot run here: llama-cpp-python missing, no bitnet.cpp build, no recorded outputs."""


class ReferenceRunError(CrossValError):
    """A reference program failed, timed out, or printed something we could not parse."""
