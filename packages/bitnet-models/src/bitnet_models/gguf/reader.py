"""A fast, defensive GGUF reader: memory-mapped, zero-copy tensor views, typed errors.

Hand-written rather than `gguf.GGUFReader` because (1) that reader refuses bitnet.cpp's I2_S (type 36),
(2) it builds numpy objects for every metadata field, which makes a 280k-merge vocabulary slow to open, and
(3) every count and length in the header is checked here against the bytes that remain before anything is
allocated, so a forged file cannot make us allocate memory in proportion to a number it claims.
"""

from __future__ import annotations

import array
import enum
import itertools
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np

from bitnet_models.errors import GGUFError
from bitnet_quantization import QuantType, QuantTypeError, quant_type_by_id

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_NESTING = 4


class ValueType(enum.IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR = {
    ValueType.UINT8: "<B",
    ValueType.INT8: "<b",
    ValueType.UINT16: "<H",
    ValueType.INT16: "<h",
    ValueType.UINT32: "<I",
    ValueType.INT32: "<i",
    ValueType.FLOAT32: "<f",
    ValueType.BOOL: "<?",
    ValueType.UINT64: "<Q",
    ValueType.INT64: "<q",
    ValueType.FLOAT64: "<d",
}
_NUMPY = {vt: np.dtype(fmt.replace("?", "u1").replace("<B", "u1").replace("<b", "i1")) for vt, fmt in _SCALAR.items()}
_NUMPY[ValueType.BOOL] = np.dtype(np.bool_)
_STRUCTS = {vt: struct.Struct(fmt) for vt, fmt in _SCALAR.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the contiguous (input) dimension
    qtype: QuantType
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order: (out, in) for a matrix."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n


class StringArray(Sequence[str]):
    """A GGUF string array (e.g. 280k BPE merges), validated up front and decoded without a per-string loop.

    The strings' bytes are copied out of the map once (so the array outlives the file) and checked as UTF-8 in a
    single call; element i is a slice of one decoded str. Behaves as a read-only list of str.
    """

    __slots__ = ("_text", "_bounds", "_list")

    def __init__(self, items: Sequence[str] = ()):
        items = list(items)
        self._text = "".join(items)
        self._bounds = np.cumsum([0] + [len(t) for t in items], dtype=np.int64)
        self._list: list[str] | None = items

    @classmethod
    def _from_region(cls, buf, region_start: int, region_end: int, starts: list[int], c: "_Cursor", key: str):
        n = len(starts)
        size = region_end - region_start
        region = np.frombuffer(buf, dtype=np.uint8, count=size, offset=region_start)
        rel = np.frombuffer(starts, dtype=np.int64) - region_start  # first byte of each string in the region
        # keep the string bytes, drop the 8-byte length fields: +1 where a string starts, -1 where it ends
        marks = np.zeros(size + 1, dtype=np.int8)
        marks[rel] = 1
        marks[np.append(rel[1:] - 8, size)] -= 1
        data = region[np.cumsum(marks[:-1], dtype=np.int8).view(bool)] if n else region[:0]
        # where each string starts in `data`: subtract the length fields before it
        dstart = rel - 8 * np.arange(1, n + 1, dtype=np.int64)
        dend = np.append(dstart[1:], data.size)
        # A string may not start with a UTF-8 continuation byte; then the whole run is valid UTF-8 exactly when
        # every string is (no multi-byte sequence can straddle two strings).
        bad_start = np.zeros(n, dtype=bool)
        if data.size:
            bad_start = (dend > dstart) & ((data[np.minimum(dstart, data.size - 1)] & 0xC0) == 0x80)
        err_at = None
        text = ""
        if bad_start.any():
            err_at = int(np.argmax(bad_start))
            reason = "starts in the middle of a UTF-8 sequence"
        else:
            try:
                text = data.tobytes().decode("utf-8")
            except UnicodeDecodeError as e:
                err_at = int(np.searchsorted(dstart, e.start, side="right")) - 1
                reason = f"is not valid UTF-8 ({e.reason})"
        if err_at is not None:
            raise c.fail(f"string {err_at} of {key!r} {reason}", at=int(starts[err_at]) - 8)
        # character offsets of the string boundaries: byte offset minus the continuation bytes before it
        bounds = np.append(dstart, data.size)
        if len(text) != data.size:  # not pure ASCII
            cont = np.zeros(data.size + 1, dtype=np.int32)
            np.cumsum((data & 0xC0) == 0x80, out=cont[1:])
            bounds = bounds - cont[bounds]
        self = cls.__new__(cls)
        self._text = text
        self._bounds = bounds
        self._list = None
        return self

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def __getitem__(self, i):
        if self._list is not None:
            return self._list[i]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("string array index out of range")
        return self._text[self._bounds[i] : self._bounds[i + 1]]

    def tolist(self) -> list[str]:
        if self._list is None:
            t, b = self._text, self._bounds.tolist()
            self._list = [t[b[i] : b[i + 1]] for i in range(len(b) - 1)]
        return self._list

    def __iter__(self):
        return iter(self.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (StringArray, list, tuple)):
            return len(self) == len(other) and self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(self[i]) for i in range(min(3, len(self))))
        return f"StringArray([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"


class _Cursor:
    """Bounds-checked little-endian reads over the mapped header."""

    __slots__ = ("buf", "pos", "end", "path")

    def __init__(self, buf: memoryview, path: str):
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.path = path

    def fail(self, problem: str, fix: str | None = None, at: int | None = None) -> GGUFError:
        return GGUFError(self.path, self.pos if at is None else at, problem, fix)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.end:
            raise self.fail(
                f"truncated file: {what} needs {n} bytes but only {self.end - self.pos} remain",
                "the file is incomplete; download it again",
            )

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str) -> str:
        start = self.pos
        n = self.u64(f"length of {what}")
        self.need(n, f"{what} ({n} bytes)")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not valid UTF-8 ({e.reason})", at=start) from None


class GGUFFile:
    """An open GGUF file. Tensor data are read-only views into the memory map (no copies)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        p = str(self.path)
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            raise GGUFError(p, None, "no such file", "check the path, or set BITNET_GGUF") from None
        except IsADirectoryError:
            raise GGUFError(p, None, "is a directory, not a GGUF file") from None
        except PermissionError:
            raise GGUFError(p, None, "permission denied") from None
        except OSError as e:
            raise GGUFError(p, None, f"cannot open: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise GGUFError(p, None, "is a directory or device, not a GGUF file")
            size = st.st_size
            if size < 24:
                head = os.pread(fd, 4, 0)
                if len(head) == 4 and head != GGUF_MAGIC:
                    raise GGUFError(p, 0, f"bad magic {head!r}, expected b'GGUF'", "this is not a GGUF file")
                raise GGUFError(
                    p, size, f"truncated file: {size} bytes, too small for a GGUF header (24 bytes)",
                    "the file is incomplete; download it again",
                )
            try:
                self._mmap = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except OSError as e:
                raise GGUFError(p, None, f"cannot memory-map the file: {e.strerror}") from None
        finally:
            os.close(fd)
        self.file_size = size
        self._buf = memoryview(self._mmap)
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- parsing -------------------------------------------------------------------------------------------

    def _parse(self) -> None:
        c = _Cursor(self._buf, str(self.path))
        magic = bytes(self._buf[:4])
        if magic != GGUF_MAGIC:
            raise c.fail(f"bad magic {magic!r}, expected b'GGUF'", "this is not a GGUF file", at=0)
        c.pos = 4
        version = c.u32("version")
        if version not in SUPPORTED_VERSIONS:
            if version & 0xFFFF == 0 and (version >> 24) in SUPPORTED_VERSIONS:
                raise c.fail("big-endian GGUF is not supported", "convert the file on a little-endian machine", at=4)
            raise c.fail(f"unsupported GGUF version {version}; supported: 2, 3", "re-convert with a current converter", at=4)
        self.version = version
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("metadata count")
        # every key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; every tensor info 8+4+8+4+8
        if n_tensors * 32 > c.end - c.pos:
            raise c.fail(f"absurd tensor count {n_tensors} for a file of {self.file_size} bytes", at=8)
        if n_kv * 13 + n_tensors * 32 > c.end - c.pos:
            raise c.fail(f"absurd metadata count {n_kv} for a file of {self.file_size} bytes", at=16)

        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, ValueType] = {}
        key_offsets: dict[str, int] = {}
        for _ in range(n_kv):
            key_at = c.pos
            key = c.string("metadata key")
            if key in self.metadata:
                raise c.fail(f"duplicate metadata key {key!r}", at=key_at)
            vtype = self._value_type(c, c.u32(f"type of {key!r}"), key)
            self.metadata_types[key] = vtype
            key_offsets[key] = key_at
            self.metadata[key] = self._value(c, vtype, key, 0)

        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if (
            isinstance(alignment, bool)
            or not isinstance(alignment, int)
            or not 0 < alignment <= 1 << 30
            or alignment & (alignment - 1)
        ):
            raise c.fail(f"general.alignment {alignment!r} is not a power of two (up to 2^30)", at=key_offsets.get("general.alignment"))
        self.alignment = alignment

        infos = []
        seen: set[str] = set()
        for _ in range(n_tensors):
            at = c.pos
            name = c.string("tensor name")
            if name in seen:
                raise c.fail(f"duplicate tensor {name!r}", at=at)
            seen.add(name)
            n_dims = c.u32(f"dimension count of {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise c.fail(f"tensor {name!r} has {n_dims} dimensions; GGUF allows 1 to {MAX_DIMS}", at=at)
            ne = tuple(c.u64(f"dimension of {name!r}") for _ in range(n_dims))
            if any(d == 0 or d > 1 << 40 for d in ne):
                raise c.fail(f"tensor {name!r} has an impossible shape {ne}", at=at)
            type_id = c.u32(f"type of {name!r}")
            try:
                qtype = quant_type_by_id(type_id)
            except QuantTypeError as e:
                raise c.fail(f"tensor {name!r}: {e}", at=at) from None
            if qtype.tail_bytes == 0 and ne[0] % qtype.block_size:
                raise c.fail(
                    f"tensor {name!r}: rows of {ne[0]} values are not whole {qtype.name} blocks of "
                    f"{qtype.block_size}",
                    at=at,
                )
            rel = c.u64(f"offset of {name!r}")
            infos.append((name, ne, qtype, rel, at))

        self.data_offset = -(-c.pos // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, ne, qtype, rel, at in infos:
            n = 1
            for d in ne:
                n *= d
            try:
                nbytes = qtype.nbytes(n)
            except QuantTypeError as e:
                raise GGUFError(self.path, at, f"tensor {name!r} of shape {ne}: {e}") from None
            if rel % alignment:
                raise GGUFError(self.path, at, f"tensor {name!r} offset {rel} is not aligned to {alignment}")
            start = self.data_offset + rel
            if start + nbytes > self.file_size:
                raise GGUFError(
                    self.path,
                    at,
                    f"tensor {name!r} ({qtype.name}, {nbytes} bytes at {start}) runs past the end of the "
                    f"file ({self.file_size} bytes)",
                    "the file is truncated; download it again",
                )
            self.tensors[name] = TensorInfo(name, ne, qtype, start, nbytes)
        # tensor data may not overlap (a forged offset could alias one tensor's bytes into another)
        prev = None
        for t in sorted(self.tensors.values(), key=lambda t: t.offset):
            if prev is not None and t.offset < prev.offset + prev.nbytes:
                raise GGUFError(
                    self.path,
                    t.offset,
                    f"tensor {t.name!r} overlaps tensor {prev.name!r} ({prev.nbytes} bytes at {prev.offset})",
                    "the file is corrupt",
                )
            prev = t

    def _value_type(self, c: _Cursor, raw: int, key: str) -> ValueType:
        try:
            return ValueType(raw)
        except ValueError:
            raise c.fail(f"unknown metadata value type {raw} for {key!r}", at=c.pos - 4) from None

    def _value(self, c: _Cursor, vtype: ValueType, key: str, depth: int) -> Any:
        if vtype == ValueType.STRING:
            return c.string(f"value of {key!r}")
        if vtype != ValueType.ARRAY:
            st = _STRUCTS[vtype]
            c.need(st.size, f"value of {key!r}")
            (v,) = st.unpack_from(c.buf, c.pos)
            c.pos += st.size
            return v
        if depth >= MAX_NESTING:
            raise c.fail(f"arrays nested more than {MAX_NESTING} deep in {key!r}")
        etype = self._value_type(c, c.u32(f"array type of {key!r}"), key)
        count = c.u64(f"array length of {key!r}")
        if etype == ValueType.STRING:
            return self._string_array(c, count, key)
        if etype == ValueType.ARRAY:
            if count * 12 > c.end - c.pos:
                raise c.fail(f"array {key!r} claims {count} nested arrays, more than the file can hold")
            return [self._value(c, ValueType.ARRAY, key, depth + 1) for _ in range(count)]
        dt = _NUMPY[etype]
        c.need(count * dt.itemsize, f"array {key!r} of {count} {etype.name}")
        arr = np.frombuffer(c.buf, dtype=dt, count=count, offset=c.pos).copy()
        c.pos += count * dt.itemsize
        return arr

    def _string_array(self, c: _Cursor, count: int, key: str) -> "StringArray":
        # Each string is at least its 8-byte length: check the claim before reading any of them.
        if count * 8 > c.end - c.pos:
            raise c.fail(f"array {key!r} claims {count} strings, more than the file can hold")
        # Fast walk over the length fields (280k merges take ~0.1 s). `starts` grows with strings really read,
        # 8 bytes each, never with the claimed count. A length that points past the end makes the next
        # unpack fail (or leaves pos > end): then the careful walk below finds and names the culprit.
        mm, pos, end = self._mmap, c.pos, c.end
        unpack = _U64.unpack_from
        starts = array.array("q")
        append = starts.append
        try:
            for _ in itertools.repeat(None, count):
                (n,) = unpack(mm, pos)
                pos += 8
                append(pos)
                pos += n
            ok = pos <= end
        except (struct.error, OverflowError):
            ok = False
        if not ok:
            self._string_array_error(c, count, key)
        region_start = c.pos
        c.pos = pos
        return StringArray._from_region(mm, region_start, pos, starts, c, key)

    def _string_array_error(self, c: _Cursor, count: int, key: str) -> None:
        buf, pos, end = c.buf, c.pos, c.end
        for i in range(count):
            if pos + 8 > end:
                c.pos = pos
                raise c.fail(f"truncated file: string {i} of {count} in {key!r} has no room for its length")
            (n,) = _U64.unpack_from(buf, pos)
            if n > end - pos - 8:
                c.pos = pos
                raise c.fail(
                    f"string {i} of {key!r} claims {n} bytes but only {end - pos - 8} remain",
                    "the file is truncated or corrupt",
                )
            pos += 8 + n
        raise AssertionError("unreachable: the fast walk failed but the careful one did not")  # pragma: no cover

    # -- access --------------------------------------------------------------------------------------------

    @property
    def architecture(self) -> str | None:
        v = self.metadata.get("general.architecture")
        return v if isinstance(v, str) else None

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view into the map."""
        info = self.info(name)
        return np.frombuffer(self._mmap, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def array(self, name: str) -> np.ndarray:
        """F32/F16 tensors as a typed zero-copy view in numpy shape; others as their raw bytes."""
        info = self.info(name)
        dt = info.qtype.numpy_dtype
        if dt is None:
            return self.raw(name)
        return np.frombuffer(self._mmap, dtype=dt, count=info.n_elements, offset=info.offset).reshape(info.shape)

    def dequantize(self, name: str) -> np.ndarray:
        """Any tensor as float32 in numpy shape (a copy: this is the slow reference path). A block-quantized
        tensor whose scales are not finite (inf or NaN: a damaged file) raises GGUFError naming it."""
        info = self.info(name)
        with np.errstate(over="ignore", invalid="ignore"):  # checked below, where it can happen
            out = info.qtype.decode(self.raw(name), info.n_elements).reshape(info.shape)
        if info.qtype.block_size > 1 and not np.isfinite(out).all():
            raise GGUFError(self.path, info.offset, f"tensor {name!r} ({info.qtype.name}) has non-finite block "
                            "scales (inf or NaN): the file is damaged", "download or convert it again")
        return out

    def unmap_pages(self, name: str, start: int = 0, end: int | None = None) -> None:
        """Drop this process's mappings of the whole pages within bytes start..end of the tensor (default: all of
        it; MADV_DONTNEED on the read-only map): the page cache keeps them and a later read faults them back in
        with the same bytes. For callers that copied the tensor elsewhere, so that resident memory holds one copy."""
        info = self.info(name)
        m = self._mmap
        if m is None or not hasattr(m, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        end = info.nbytes if end is None else min(end, info.nbytes)
        start = -(-(info.offset + start) // mmap.PAGESIZE) * mmap.PAGESIZE
        end = (info.offset + end) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > start:
            m.madvise(mmap.MADV_DONTNEED, start, end - start)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(self.path, None, f"no tensor named {name!r}") from None

    def close(self) -> None:
        buf = getattr(self, "_buf", None)
        if buf is not None:
            buf.release()
            self._buf = None
        m = getattr(self, "_mmap", None)
        if m is not None:
            try:
                m.close()
            except BufferError:
                # numpy views of tensors are still alive; the map is freed when they are
                pass
            self._mmap = None

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    return GGUFFile(path)
