"""GGUF writing for the project's own exports, on top of the `gguf` package's writer.

Tensors are given as (name, data, qtype): float arrays are encoded with the quant-type table, raw uint8 bytes
are written as they are (I2_S goes through gguf-py as a raw dtype id, which it writes without knowing it).
The file appears under its final name only when complete (written to a temporary name, then renamed).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from bitnet_quantization import QuantType, quant_type


@dataclass(frozen=True)
class RawTensor:
    """Bytes already in a quant type's layout (for example I2_S packed by bitnet_quantization.i2s_pack)."""

    data: np.ndarray  # uint8
    shape: tuple[int, ...]  # numpy order, (out, in) for a matrix


def _value_type(value: Any):
    from gguf import GGUFValueType as V

    if isinstance(value, bool):
        return V.BOOL, None
    if isinstance(value, int):
        if value < 0:
            return (V.INT32 if value >= -(1 << 31) else V.INT64), None
        return (V.UINT32 if value < 1 << 32 else V.UINT64), None
    if isinstance(value, float):
        return V.FLOAT32, None
    if isinstance(value, str):
        return V.STRING, None
    if isinstance(value, np.ndarray):
        sub = {
            np.dtype(np.float32): V.FLOAT32,
            np.dtype(np.int32): V.INT32,
            np.dtype(np.uint32): V.UINT32,
            np.dtype(np.int64): V.INT64,
            np.dtype(np.bool_): V.BOOL,
            np.dtype(np.uint8): V.UINT8,
            np.dtype(np.int8): V.INT8,
        }[value.dtype]
        return V.ARRAY, sub
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value):
            return V.ARRAY, V.STRING
        raise TypeError("metadata lists must be lists of strings; pass numeric arrays as numpy arrays")
    raise TypeError(f"cannot store a {type(value).__name__} in GGUF metadata")


def write_gguf(
    path: str | os.PathLike,
    arch: str,
    metadata: Mapping[str, Any],
    tensors: Iterable[tuple[str, "np.ndarray | RawTensor", str | QuantType]],
) -> Path:
    """Write a GGUF file atomically. `metadata` excludes general.architecture (given as `arch`)."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        for key, value in metadata.items():
            if key == "general.architecture":
                continue
            vtype, sub = _value_type(value)
            if isinstance(value, np.ndarray):
                value = value.tolist()
            w.add_key_value(key, value, vtype, sub_type=sub)
        for name, data, qt in tensors:
            qt = quant_type(qt) if isinstance(qt, str) else qt
            if isinstance(data, RawTensor):
                n = int(np.prod(data.shape))
                if data.data.size != qt.nbytes(n):
                    raise ValueError(f"{name}: {qt.name} of shape {data.shape} is {qt.nbytes(n)} bytes, got {data.data.size}")
                w.add_tensor(name, np.ascontiguousarray(data.data, np.uint8).view(np.int8), raw_shape=data.shape, raw_dtype=qt.ggml_id)
                continue
            data = np.asarray(data)
            if qt.name in ("F32", "F16"):
                w.add_tensor(name, np.ascontiguousarray(data, dtype=qt.numpy_dtype))
            else:
                raw = qt.encode(np.ascontiguousarray(data, dtype=np.float32))
                w.add_tensor(name, raw.view(np.int8), raw_shape=data.shape, raw_dtype=qt.ggml_id)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
