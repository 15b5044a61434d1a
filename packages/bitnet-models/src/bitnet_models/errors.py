"""Typed errors. Each says what was expected, what was found, and what to do next."""

from __future__ import annotations

from pathlib import Path

from bitnet_quantization.errors import BitNetError


class BitNetModelError(BitNetError):
    """Base class of the errors raised by bitnet-models."""


class GGUFError(BitNetModelError):
    """A GGUF file is malformed or uses something this project cannot read."""

    def __init__(self, path: str | Path, offset: int | None, problem: str, fix: str | None = None):
        self.path = str(path)
        self.offset = offset
        self.problem = problem
        self.fix = fix
        where = f"{self.path}" + (f" at byte {offset}" if offset is not None else "")
        msg = f"{where}: {problem}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)


class ModelConfigError(BitNetModelError):
    """The GGUF metadata does not describe a model this project can run."""


class ModelNotFoundError(BitNetModelError, FileNotFoundError):
    """No model file where one was asked for."""
