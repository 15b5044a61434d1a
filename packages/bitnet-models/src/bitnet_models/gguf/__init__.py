from bitnet_models.gguf.reader import GGUFFile, TensorInfo, ValueType, read_gguf
from bitnet_models.gguf.writer import RawTensor, write_gguf

__all__ = ["GGUFFile", "TensorInfo", "ValueType", "RawTensor", "read_gguf", "write_gguf"]
