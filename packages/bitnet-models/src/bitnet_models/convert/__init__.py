"""`bitnet convert`: Hugging Face BitNet checkpoints (transformers' BitNetForCausalLM, 1bitLLM) to GGUF."""

from bitnet_models.convert.converter import ConvertResult, convert, gguf_metadata
from bitnet_models.convert.errors import (
    CheckpointError,
    ConvertError,
    QuantizationError,
    UnsupportedModelError,
    VerifyError,
)
from bitnet_models.convert.hfconfig import HFConfig, read_config
from bitnet_models.convert.packing import OUTTYPES

__all__ = [
    "CheckpointError",
    "ConvertError",
    "ConvertResult",
    "HFConfig",
    "OUTTYPES",
    "QuantizationError",
    "UnsupportedModelError",
    "VerifyError",
    "convert",
    "gguf_metadata",
    "read_config",
]
