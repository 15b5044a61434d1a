"""BitNet GGUF models: reading, writing, configs."""

from bitnet_models.config import ModelConfig
from bitnet_models.errors import BitNetModelError, GGUFError, ModelConfigError, ModelNotFoundError
from bitnet_models.gguf import GGUFFile, RawTensor, TensorInfo, read_gguf, write_gguf

__all__ = [
    "BitNetModelError",
    "GGUFError",
    "GGUFFile",
    "ModelConfig",
    "ModelConfigError",
    "ModelNotFoundError",
    "RawTensor",
    "TensorInfo",
    "read_gguf",
    "write_gguf",
]
