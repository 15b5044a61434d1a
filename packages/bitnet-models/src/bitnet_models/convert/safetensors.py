"""Reading safetensors checkpoints one tensor at a time, with numpy only (no torch, no safetensors package).

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}} and the
raw little-endian data. A tensor is read with one positioned read into a fresh buffer when asked for, so peak
memory is one tensor (memory-mapping the whole file would leave every page read so far counted as resident).
bf16 is widened to float32 exactly (its bits are the top half of a float32).
Sharded checkpoints (`model.safetensors.index.json`) are read through their weight map.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitnet_models.convert.errors import CheckpointError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype name: BF16, F16, F32, U8, ...
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute byte offset of the data in the file
    nbytes: int


def _read_header(path: Path) -> dict[str, TensorEntry]:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER:
                raise CheckpointError(f"{path}: header length {n} is implausible; the file is not safetensors")
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    size = path.stat().st_size
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype!r}; supported: {', '.join(_DTYPES)}")
        shape = tuple(int(d) for d in info["shape"])
        start, end = (int(x) for x in info["data_offsets"])
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
        if end - start != nbytes or 8 + n + end > size:
            raise CheckpointError(f"{path}: tensor {name!r} ({dtype} {shape}) has data offsets {start}..{end} that "
                                  f"do not fit its size or the file ({size} bytes); the file is truncated or corrupt")
        out[name] = TensorEntry(name, dtype, shape, path, 8 + n + start, nbytes)
    return out


class Checkpoint:
    """The tensors of a Hugging Face checkpoint folder: names, shapes, dtypes, and reads on demand."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        single = self.folder / "model.safetensors"
        self.entries: dict[str, TensorEntry] = {}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
            for shard in sorted(set(weight_map.values())):
                self.entries.update(_read_header(self._file(shard)))
        elif single.is_file():
            self.entries = _read_header(single)
        else:
            shards = sorted(self.folder.glob("*.safetensors"))
            if not shards:
                found = ", ".join(sorted(p.name for p in self.folder.glob("*.bin"))[:3])
                hint = f" (found {found}: re-save with save_pretrained(..., safe_serialization=True))" if found else ""
                raise CheckpointError(f"{self.folder}: no model.safetensors or *.safetensors files{hint}")
            for shard in shards:
                self.entries.update(_read_header(shard))

    def _file(self, name: str) -> Path:
        p = self.folder / name
        if not p.is_file():
            raise CheckpointError(f"{self.folder}: shard {name} named by the index is missing")
        return p

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def entry(self, name: str) -> TensorEntry:
        if name not in self.entries:
            raise CheckpointError(f"{self.folder}: tensor {name!r} is missing from the checkpoint")
        return self.entries[name]

    def raw(self, name: str) -> np.ndarray:
        """The tensor in its stored dtype (bf16 as uint16 bits), read into its own buffer."""
        e = self.entry(name)
        dt = np.dtype(_DTYPES[e.dtype]).newbyteorder("<")
        buf = np.empty(e.nbytes, dtype=np.uint8)
        with open(e.path, "rb", buffering=0) as f:
            f.seek(e.offset)
            got = f.readinto(memoryview(buf))
        if got != e.nbytes:
            raise CheckpointError(f"{e.path}: tensor {name!r} is truncated ({got} of {e.nbytes} bytes)")
        return buf.view(dt).reshape(e.shape)

    def float32(self, name: str) -> np.ndarray:
        """The tensor as float32 (exact for bf16, f16 and f32)."""
        e = self.entry(name)
        a = self.raw(name)
        if e.dtype == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        if e.dtype not in ("F32", "F16", "F64"):
            raise CheckpointError(f"{e.path}: tensor {name!r} is {e.dtype}, expected a float tensor")
        return a.astype(np.float32, copy=False)

    def rows_float32(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop of a 2-D float tensor as float32 (to convert a large embedding in pieces)."""
        e = self.entry(name)
        if len(e.shape) != 2:
            raise CheckpointError(f"{e.path}: tensor {name!r} has shape {e.shape}, expected a matrix")
        itemsize = np.dtype(_DTYPES[e.dtype]).itemsize
        row = e.shape[1] * itemsize
        n = (stop - start) * row
        buf = np.empty(n, dtype=np.uint8)
        with open(e.path, "rb", buffering=0) as f:
            f.seek(e.offset + start * row)
            if f.readinto(memoryview(buf)) != n:
                raise CheckpointError(f"{e.path}: tensor {name!r} is truncated")
        a = buf.view(np.dtype(_DTYPES[e.dtype]).newbyteorder("<")).reshape(stop - start, e.shape[1])
        if e.dtype == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        return a.astype(np.float32, copy=False)
