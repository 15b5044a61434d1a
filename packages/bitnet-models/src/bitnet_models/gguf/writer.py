"""GGUF writing for the project's own exports, on top of the `gguf` package's writer.

Tensors are given as (name, data, qtype): float arrays are encoded with the quant-type table, raw uint8 bytes
(`RawTensor`) are written as they are (I2_S goes through gguf-py as a raw dtype id, which it writes without
knowing it), and a `DeferredTensor` is produced only when its turn comes, so a multi-gigabyte model streams
through memory one tensor at a time. The file appears under its final name only when complete (written to a
temporary name in the same folder, then renamed); on any failure the temporary file is removed.

Metadata values map to GGUF types by their Python/numpy type: bool -> BOOL, int -> UINT32/INT32 (64-bit when
they do not fit), float -> FLOAT32, str -> STRING, numpy scalars -> their exact type (np.uint8 -> UINT8, ...,
np.float64 -> FLOAT64), numpy arrays -> arrays of their dtype, lists of str -> string arrays, lists of lists or
arrays -> nested arrays.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Union

import numpy as np

from bitnet_models.errors import GGUFError
from bitnet_quantization import QuantType, QuantTypeError, quant_type


@dataclass(frozen=True)
class RawTensor:
    """Bytes already in a quant type's layout (for example I2_S packed by bitnet_quantization.i2s_pack)."""

    data: np.ndarray  # uint8
    shape: tuple[int, ...]  # numpy order, (out, in) for a matrix


@dataclass(frozen=True)
class DeferredTensor:
    """A tensor made only when the writer reaches it: `make()` returns a float array or a RawTensor of `shape`."""

    shape: tuple[int, ...]  # numpy order
    make: Callable[[], "np.ndarray | RawTensor"]


TensorData = Union[np.ndarray, RawTensor, DeferredTensor]


def _numpy_kinds():
    from gguf import GGUFValueType as V

    return {
        np.dtype(np.uint8): V.UINT8,
        np.dtype(np.int8): V.INT8,
        np.dtype(np.uint16): V.UINT16,
        np.dtype(np.int16): V.INT16,
        np.dtype(np.uint32): V.UINT32,
        np.dtype(np.int32): V.INT32,
        np.dtype(np.float32): V.FLOAT32,
        np.dtype(np.bool_): V.BOOL,
        np.dtype(np.uint64): V.UINT64,
        np.dtype(np.int64): V.INT64,
        np.dtype(np.float64): V.FLOAT64,
    }


def _value_type(value: Any):
    """(GGUF value type, array element type or None, value as gguf-py wants it)."""
    from gguf import GGUFValueType as V

    kinds = _numpy_kinds()
    if isinstance(value, (bool, np.bool_)):
        return V.BOOL, None, bool(value)
    if isinstance(value, np.generic):
        if value.dtype not in kinds:
            raise TypeError(f"numpy {value.dtype} has no GGUF value type")
        return kinds[value.dtype], None, value.item()
    if isinstance(value, int):
        if value < 0:
            if value < -(1 << 63):
                raise TypeError(f"integer {value} does not fit in 64 bits")
            return (V.INT32 if value >= -(1 << 31) else V.INT64), None, value
        if value >= 1 << 64:
            raise TypeError(f"integer {value} does not fit in 64 bits")
        return (V.UINT32 if value < 1 << 32 else V.UINT64), None, value
    if isinstance(value, float):
        return V.FLOAT32, None, value
    if isinstance(value, str):
        return V.STRING, None, value
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype not in kinds:
            raise TypeError(f"arrays must be 1-D of a GGUF element type, got {value.dtype} of shape {value.shape}")
        return V.ARRAY, kinds[value.dtype], value.tolist()
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return V.ARRAY, V.STRING, list(value)
        if all(isinstance(v, (list, tuple, np.ndarray)) for v in value):
            return V.ARRAY, V.ARRAY, [v.tolist() if isinstance(v, np.ndarray) else list(v) for v in value]
        raise TypeError("metadata lists must hold strings or arrays; pass numeric arrays as numpy arrays")
    raise TypeError(f"cannot store a {type(value).__name__} in GGUF metadata")


def _plan(name: str, data: TensorData, qt: QuantType):
    """(shape, gguf-py dtype, byte count, raw dtype id) of a tensor, without producing a deferred one."""
    shape = tuple(int(d) for d in (data.shape if not isinstance(data, np.ndarray) else data.shape))
    if not shape or any(d <= 0 for d in shape) or len(shape) > 4:
        raise ValueError(f"tensor {name!r}: shape {shape} is not 1 to 4 positive dimensions")
    n = int(np.prod(shape, dtype=np.int64))
    nbytes = qt.nbytes(n)
    if qt.numpy_dtype is not None and not isinstance(data, RawTensor):
        return shape, qt.numpy_dtype, nbytes, None
    return shape, np.dtype(np.int8), nbytes, qt.ggml_id


def _materialize(name: str, data: TensorData, qt: QuantType, shape: tuple[int, ...], nbytes: int) -> np.ndarray:
    if isinstance(data, DeferredTensor):
        data = data.make()
    if isinstance(data, RawTensor):
        if tuple(data.shape) != shape:
            raise ValueError(f"tensor {name!r}: promised shape {shape}, produced {tuple(data.shape)}")
        raw = np.ascontiguousarray(data.data, np.uint8).reshape(-1)
        if raw.size != nbytes:
            raise ValueError(f"tensor {name!r}: {qt.name} of shape {shape} is {nbytes} bytes, got {raw.size}")
        return raw.view(np.int8)
    arr = np.asarray(data)
    if arr.shape != shape:
        raise ValueError(f"tensor {name!r}: promised shape {shape}, produced {arr.shape}")
    if qt.numpy_dtype is not None:
        return np.ascontiguousarray(arr, dtype=qt.numpy_dtype)
    return qt.encode(np.ascontiguousarray(arr, dtype=np.float32)).view(np.int8)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_gguf(
    path: str | os.PathLike,
    arch: str,
    metadata: Mapping[str, Any],
    tensors: Iterable[tuple[str, TensorData, str | QuantType]],
) -> Path:
    """Write a GGUF file atomically. `metadata` excludes general.architecture (given as `arch`).

    Raises GGUFError (naming the path and the key or tensor at fault) for values or tensors that cannot be
    written; nothing is left at `path` (or beside it) when it fails.
    """
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; the model should get the usual mode
    w = None
    try:
        w = gguf.GGUFWriter(tmp, arch)
        for key, value in metadata.items():
            if key == "general.architecture":
                continue
            try:
                vtype, sub, value = _value_type(value)
                if vtype == gguf.GGUFValueType.ARRAY and len(value) == 0:
                    raise ValueError("empty arrays cannot be written by gguf-py; omit the key")
                w.add_key_value(key, value, vtype, sub_type=sub)
            except (TypeError, ValueError, OverflowError) as e:
                raise GGUFError(path, None, f"metadata {key!r}: {e}") from None
        plan = []
        for name, data, qt in tensors:
            try:
                qt = quant_type(qt) if isinstance(qt, str) else qt
                shape, dtype, nbytes, raw_id = _plan(name, data, qt)
                w.add_tensor_info(name, shape, dtype, nbytes, raw_dtype=raw_id)
            except (QuantTypeError, ValueError) as e:
                raise GGUFError(path, None, f"tensor {name!r}: {e}") from None
            plan.append((name, data, qt, shape, nbytes))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for name, data, qt, shape, nbytes in plan:
            try:
                arr = _materialize(name, data, qt, shape, nbytes)
            except (QuantTypeError, ValueError) as e:
                raise GGUFError(path, None, str(e)) from None
            w.write_tensor_data(arr)
            del arr
        w.close()
        w = None
        os.replace(tmp, path)
    except BaseException:
        if w is not None:
            try:
                w.close()
            except Exception:  # the original error matters more than a failed close
                pass
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
