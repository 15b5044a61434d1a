"""The GGUF reader on valid files and on every kind of malformed one: a typed GGUFError naming file, offset, problem."""

from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from bitnet_models.errors import GGUFError
from bitnet_models.gguf import read_gguf
from bitnet_models.gguf.reader import StringArray, ValueType
from bitnet_quantization import BitNetError, i2s_pack

pytestmark = pytest.mark.fast


# --- a byte-level GGUF builder (independent of both our writer and gguf-py) ----------------------------------


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gstr(x: str | bytes) -> bytes:
    b = x.encode() if isinstance(x, str) else x
    return u64(len(b)) + b


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + u32(vtype) + payload


def kv_u32(key: str, v: int) -> bytes:
    return kv(key, ValueType.UINT32, u32(v))


def kv_str(key: str, v: str | bytes) -> bytes:
    return kv(key, ValueType.STRING, gstr(v))


def kv_str_array(key: str, items: list) -> bytes:
    return kv(key, ValueType.ARRAY, u32(ValueType.STRING) + u64(len(items)) + b"".join(gstr(x) for x in items))


def tinfo(name: str | bytes, ne: tuple[int, ...], type_id: int, offset: int) -> bytes:
    return gstr(name) + u32(len(ne)) + b"".join(u64(d) for d in ne) + u32(type_id) + u64(offset)


def gguf_bytes(kvs: list[bytes], tis: list[bytes], data: bytes = b"", *, version: int = 3,
               n_kv: int | None = None, n_tensors: int | None = None, align: int = 32) -> bytes:
    head = b"GGUF" + u32(version) + u64(len(tis) if n_tensors is None else n_tensors)
    head += u64(len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tis)
    body += b"\0" * (-len(body) % align)
    return body + data


F32_DATA = np.arange(8, dtype="<f4").tobytes()


def valid_parts():
    kvs = [kv_str("general.architecture", "bitnet"), kv_u32("bitnet.block_count", 1)]
    tis = [tinfo("a", (8,), 0, 0), tinfo("b", (4,), 1, 32)]
    data = F32_DATA + b"\0" * 0 + np.arange(4, dtype="<f2").tobytes()
    return kvs, tis, data


@pytest.fixture
def write(tmp_path):
    def _write(b: bytes, name: str = "m.gguf") -> Path:
        p = tmp_path / name
        p.write_bytes(b)
        return p

    return _write


def expect_error(path: Path, match: str, offset: int | None = "any") -> GGUFError:
    with pytest.raises(GGUFError) as ei:
        read_gguf(path)
    e = ei.value
    assert isinstance(e, BitNetError)
    assert e.path == str(path) and str(path) in str(e)
    assert match in e.problem, e.problem
    if offset != "any":
        assert e.offset == offset, (e.offset, offset)
    if e.offset is not None:
        assert f"at byte {e.offset}" in str(e)
    return e


# --- valid files -----------------------------------------------------------------------------------------------


def test_valid_file_and_zero_copy_views(write):
    kvs, tis, data = valid_parts()
    p = write(gguf_bytes(kvs, tis, data))
    with read_gguf(p) as f:
        assert f.version == 3 and f.architecture == "bitnet" and f.metadata["bitnet.block_count"] == 1
        assert f.metadata_types["bitnet.block_count"] == ValueType.UINT32
        a = f.array("a")
        assert a.dtype == np.float32 and a.tolist() == list(range(8)) and not a.flags.writeable
        assert f.array("b").dtype == np.float16
        assert f.tensors["b"].offset == f.data_offset + 32
        assert isinstance(f.array("a").base, (memoryview, type(f._mmap))) or f.array("a").base is not None


def test_every_metadata_value_type(write):
    kvs = [
        kv("u8", 0, b"\xff"), kv("i8", 1, b"\xff"), kv("u16", 2, struct.pack("<H", 65535)),
        kv("i16", 3, struct.pack("<h", -2)), kv("u32", 4, u32(7)), kv("i32", 5, struct.pack("<i", -7)),
        kv("f32", 6, struct.pack("<f", 1.5)), kv("bool", 7, b"\x01"), kv_str("str", "héllo ▁"),
        kv("u64", 10, u64(1 << 60)), kv("i64", 11, struct.pack("<q", -(1 << 60))), kv("f64", 12, struct.pack("<d", 0.1)),
        kv("arr_i16", 9, u32(3) + u64(3) + struct.pack("<3h", -1, 0, 1)),
        kv("nested", 9, u32(9) + u64(2) + u32(4) + u64(1) + u32(5) + u32(0) + u64(0)),
        kv_str_array("strs", ["", "a", "é", "▁t", ""]),
    ]
    p = write(gguf_bytes(kvs, []))
    with read_gguf(p) as f:
        m = f.metadata
        assert (m["u8"], m["i8"], m["u16"], m["i16"], m["u32"], m["i32"]) == (255, -1, 65535, -2, 7, -7)
        assert m["f32"] == 1.5 and m["bool"] is True and m["str"] == "héllo ▁"
        assert m["u64"] == 1 << 60 and m["i64"] == -(1 << 60) and m["f64"] == 0.1
        assert m["arr_i16"].dtype == np.int16 and m["arr_i16"].tolist() == [-1, 0, 1]
        assert [x.tolist() for x in m["nested"]] == [[5], []]
        assert isinstance(m["strs"], StringArray) and list(m["strs"]) == ["", "a", "é", "▁t", ""]
        assert m["strs"][2] == "é" and m["strs"][-2] == "▁t" and m["strs"][1:3] == ["a", "é"]


@pytest.mark.parametrize("items", [["ab", "", "c", ""], ["", ""], ["é", "x", "▁▁", "Ġthe", ""], []])
def test_string_arrays_ascii_and_not(write, items):
    p = write(gguf_bytes([kv_str_array("t", [s.encode() for s in items])], []))
    with read_gguf(p) as f:
        t = f.metadata["t"]
        assert len(t) == len(items) and list(t) == items and [t[i] for i in range(len(items))] == items
        assert t == items and t[::-1] == items[::-1]


def test_string_array_outlives_the_file(write):
    p = write(gguf_bytes([kv_str_array("t", ["x", "yé"])], []))
    with read_gguf(p) as f:
        t = f.metadata["t"]
    assert t == ["x", "yé"] and len(t) == 2


def test_i2s_tensor_size_is_n_over_4_plus_32(write):
    raw = i2s_pack(np.ones((2, 128), np.int8), 0.25).tobytes()
    p = write(gguf_bytes([], [tinfo("w", (128, 2), 36, 0)], raw))
    with read_gguf(p) as f:
        assert f.tensors["w"].nbytes == 256 // 4 + 32 and f.tensors["w"].shape == (2, 128)
        assert (f.dequantize("w") == 0.25).all()


# --- malformed files -------------------------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(GGUFError, match="no such file"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(GGUFError, match="directory"):
        read_gguf(tmp_path)


def test_bad_magic(write):
    kvs, tis, data = valid_parts()
    expect_error(write(b"GGML" + gguf_bytes(kvs, tis, data)[4:]), "bad magic", 0)
    expect_error(write(b"PK\x03\x04"), "bad magic", 0)


def test_too_small_and_empty(write):
    expect_error(write(b""), "truncated", 0)
    expect_error(write(b"GGUF" + u32(3)), "truncated", 8)


@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFFFFFF])
def test_unknown_version(write, version):
    kvs, tis, data = valid_parts()
    expect_error(write(gguf_bytes(kvs, tis, data, version=version)), f"unsupported GGUF version {version}", 4)


def test_big_endian(write):
    b = b"GGUF" + struct.pack(">I", 3) + struct.pack(">Q", 0) + struct.pack(">Q", 0)
    expect_error(write(b), "big-endian", 4)


def test_truncated_everywhere(write):
    kvs, tis, data = valid_parts()
    full = gguf_bytes(kvs, tis, data)
    header_end = 24
    kv_end = header_end + sum(map(len, kvs))
    ti_end = kv_end + sum(map(len, tis))
    cases = {
        "header": 20,
        "metadata key length": header_end + 3,
        "metadata key": header_end + 10,
        "metadata value": kv_end - 2,
        "tensor info": kv_end + 12,
        "tensor offset": ti_end - 3,
        "tensor data": len(full) - 1,
    }
    for where, cut in cases.items():
        e = expect_error(write(full[:cut], f"cut-{cut}.gguf"), "" if where != "tensor data" else "runs past the end")
        assert "truncated" in str(e) or "past the end" in str(e), (where, str(e))


@pytest.mark.parametrize(
    "field, n_kv, n_tensors, msg, offset",
    [("metadata count", 1 << 60, 0, "absurd metadata count", 16), ("tensor count", 0, 1 << 60, "absurd tensor count", 8),
     ("both", (1 << 64) - 1, (1 << 64) - 1, "absurd tensor count", 8)],
)
def test_absurd_counts(write, field, n_kv, n_tensors, msg, offset):
    p = write(gguf_bytes([], [], b"\0" * 64, n_kv=n_kv, n_tensors=n_tensors))
    expect_error(p, msg, offset)


FORGED = 1 << 60


@pytest.mark.parametrize(
    "payload, msg",
    [
        (u64(FORGED) + b"abc" + b"\0" * 16, "truncated"),  # key length
        (gstr("k") + u32(8) + u64(FORGED) + b"xyz", "truncated"),  # string value length
        (gstr("k") + u32(9) + u32(4) + u64(FORGED) + b"\0" * 64, "truncated"),  # u32 array count
        (gstr("k") + u32(9) + u32(8) + u64(FORGED) + b"\0" * 64, "claims"),  # string array count
        (gstr("k") + u32(9) + u32(8) + u64(2) + u64(1) + b"a" + u64(FORGED) + b"b", "claims"),  # string in array
        (gstr("k") + u32(9) + u32(9) + u64(FORGED) + b"\0" * 64, "nested arrays"),  # array of arrays count
        (gstr("k") + u32(9) + u32(12) + u64((1 << 64) - 1) + b"\0" * 64, "truncated"),  # f64 array count
    ],
    ids=["key-length", "string-length", "u32-array", "string-array", "string-in-array", "nested", "f64-array"],
)
def test_forged_lengths_fail_fast_without_allocating(write, payload, msg):
    p = write(b"GGUF" + u32(3) + u64(0) + u64(1) + payload)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        e = expect_error(p, msg)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 1 << 20, f"{peak} bytes allocated for a forged length"
    assert e.offset is not None and 24 <= e.offset <= p.stat().st_size


def test_offsets_past_the_end(write):
    kvs, _, data = valid_parts()
    p = write(gguf_bytes(kvs, [tinfo("a", (8,), 0, 0), tinfo("b", (4,), 1, 1 << 40)], data))
    expect_error(p, "runs past the end")


def test_misaligned_offset(write):
    kvs, _, data = valid_parts()
    p = write(gguf_bytes(kvs, [tinfo("a", (8,), 0, 0), tinfo("b", (4,), 1, 36)], data + b"\0" * 8))
    expect_error(p, "not aligned to 32")


@pytest.mark.parametrize("align", [0, 3, 48, 1 << 31])
def test_bad_alignment_key(write, align):
    kvs, tis, data = valid_parts()
    e = expect_error(write(gguf_bytes(kvs + [kv_u32("general.alignment", align)], tis, data)), "not a power of two")
    assert e.offset == 24 + sum(map(len, kvs))  # the key's own offset


def test_custom_alignment_is_honoured(write):
    kvs, _, _ = valid_parts()
    data = F32_DATA + b"\0" * 32 + np.arange(4, dtype="<f2").tobytes()
    b = gguf_bytes(kvs + [kv_u32("general.alignment", 64)], [tinfo("a", (8,), 0, 0), tinfo("b", (4,), 1, 64)],
                   data, align=64)
    with read_gguf(write(b)) as f:
        assert f.alignment == 64 and f.data_offset % 64 == 0
        assert f.array("b").tolist() == [0, 1, 2, 3]


def test_duplicate_key(write):
    kvs, tis, data = valid_parts()
    dup_at = 24 + sum(map(len, kvs))
    expect_error(write(gguf_bytes(kvs + [kv_u32("bitnet.block_count", 2)], tis, data)),
                 "duplicate metadata key 'bitnet.block_count'", dup_at)


def test_duplicate_tensor(write):
    kvs, _, data = valid_parts()
    t1 = tinfo("a", (8,), 0, 0)
    at = 24 + sum(map(len, kvs)) + len(t1)
    expect_error(write(gguf_bytes(kvs, [t1, tinfo("a", (4,), 1, 32)], data)), "duplicate tensor 'a'", at)


def test_overlapping_tensors(write):
    kvs, _, data = valid_parts()
    expect_error(write(gguf_bytes(kvs, [tinfo("a", (8,), 0, 0), tinfo("b", (4,), 1, 0)], data)), "overlaps")


@pytest.mark.parametrize(
    "ne, type_id, msg",
    [
        ((100, 2), 35, "not whole TQ2_0 blocks of 256"),
        ((100,), 34, "not whole TQ1_0 blocks"),
        ((16, 3), 8, "not whole Q8_0 blocks of 32"),
        ((100,), 36, "not a multiple"),  # I2_S: the whole tensor is one run of 128-weight blocks
        ((0, 4), 0, "impossible shape"),
        ((1 << 41,), 0, "impossible shape"),
    ],
)
def test_shape_and_size_mismatch(write, ne, type_id, msg):
    p = write(gguf_bytes([], [tinfo("w", ne, type_id, 0)], b"\0" * 4096))
    e = expect_error(p, msg)
    assert "'w'" in e.problem


@pytest.mark.parametrize("n_dims", [0, 5])
def test_bad_dimension_count(write, n_dims):
    b = gguf_bytes([], [gstr("w") + u32(n_dims) + b"".join(u64(2) for _ in range(n_dims)) + u32(0) + u64(0)], b"\0" * 64)
    expect_error(write(b), "dimensions", 24)


def test_unknown_tensor_type(write):
    e = expect_error(write(gguf_bytes([], [tinfo("w", (256,), 99, 0)], b"\0" * 2048)), "unknown ggml type id 99", 24)
    assert "I2_S=36" in e.problem


@pytest.mark.parametrize("tid, name", [(38, "TL1"), (39, "TL2"), (39, "MXFP4"), (37, "I8_S")])
def test_ambiguous_type_ids_are_refused(write, tid, name):
    e = expect_error(write(gguf_bytes([], [tinfo("w", (256,), tid, 0)], b"\0" * 2048)), f"type id {tid}")
    assert name in e.problem and "re-quantize" in e.problem


def test_unknown_metadata_value_type(write):
    p = write(gguf_bytes([kv("k", 13, b"\0" * 8)], []))
    expect_error(p, "unknown metadata value type 13", 24 + 8 + 1)


def test_unknown_array_element_type(write):
    p = write(gguf_bytes([kv("k", 9, u32(77) + u64(1) + b"\0" * 8)], []))
    expect_error(p, "unknown metadata value type 77")


def test_arrays_nested_too_deep(write):
    payload = b"".join(u32(9) + u64(1) for _ in range(6)) + u32(4) + u64(0)
    expect_error(write(gguf_bytes([kv("k", 9, payload)], [])), "nested more than")


@pytest.mark.parametrize(
    "kvs, msg",
    [
        ([kv(b"\xff\xfe", 4, u32(1))], "metadata key is not valid UTF-8"),
        ([kv_str("k", b"ab\xc3")], "not valid UTF-8"),
        ([kv_str_array("toks", [b"ok", b"\xe2\x96"])], "string 1 of 'toks' is not valid UTF-8"),
        ([kv_str_array("toks", [b"\xc3", b"\xa9"])], "string 1 of 'toks' starts in the middle"),  # split in two
        ([kv_str_array("toks", [b"a", b"\xa9b"])], "string 1 of 'toks' starts in the middle"),
    ],
)
def test_invalid_utf8(write, kvs, msg):
    expect_error(write(gguf_bytes(kvs, [])), msg)


def test_error_names_the_string_offset(write):
    items = [b"aa", b"bbb", b"\xff"]
    kvs = [kv_str_array("toks", items)]
    e = expect_error(write(gguf_bytes(kvs, [])), "string 2 of 'toks'")
    # header 24, key 8+4, type 4, elem type 4, count 8, then "aa" (8+2) and "bbb" (8+3)
    assert e.offset == 24 + 12 + 4 + 4 + 8 + 10 + 11


def test_no_tensor_named(write):
    kvs, tis, data = valid_parts()
    with read_gguf(write(gguf_bytes(kvs, tis, data))) as f:
        with pytest.raises(GGUFError, match="no tensor named 'zzz'"):
            f.array("zzz")


def test_bitnet_cpp_fixture_reads(tmp_path):
    fx = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "b158-a-i2s.gguf"
    with read_gguf(fx) as f:
        assert f.architecture == "bitnet-b1.58" and len(f.tensors) == 4 * 11 + 2
        types = {t.qtype.name for t in f.tensors.values()}
        assert types == {"I2_S", "F32", "F16"}
        assert len(f.metadata["tokenizer.ggml.tokens"]) == 4096


def test_agrees_with_gguf_py_reader(tmp_path):
    """Everything gguf.GGUFReader reads from a file, we read the same (types it knows: not I2_S)."""
    import gguf

    from bitnet_models.gguf import write_gguf

    rng = np.random.default_rng(5)
    md = {
        "k.u8": np.uint8(9), "k.i16": np.int16(-3), "k.u32": 70000, "k.i64": np.int64(-(1 << 40)),
        "k.f32": 0.1, "k.f64": np.float64(0.1), "k.bool": False, "k.s": "▁héllo",
        "tokenizer.ggml.tokens": ["a", "", "é", "<|eot_id|>"] * 50,
        "tokenizer.ggml.scores": rng.standard_normal(200).astype(np.float32),
    }
    tensors = [
        ("e", rng.standard_normal((3, 256)).astype(np.float32), "F16"),
        ("t2", rng.standard_normal((2, 512)).astype(np.float32), "TQ2_0"),
        ("t1", rng.standard_normal((2, 256)).astype(np.float32), "TQ1_0"),
        ("q8", rng.standard_normal((1, 64)).astype(np.float32), "Q8_0"),
        ("n", rng.standard_normal(5).astype(np.float32), "F32"),
    ]
    p = write_gguf(tmp_path / "m.gguf", "bitnet", md, tensors)
    r = gguf.GGUFReader(p)
    with read_gguf(p) as f:
        fields = {k: v for k, v in r.fields.items() if not k.startswith("GGUF.")}  # its header pseudo-fields
        assert set(f.metadata) == set(fields)
        assert r.fields["GGUF.version"].contents() == f.version
        for key, field in fields.items():
            theirs = field.contents()
            ours = f.metadata[key]
            if isinstance(ours, np.ndarray):
                assert np.array_equal(ours, np.asarray(theirs, dtype=ours.dtype)), key
            elif isinstance(ours, StringArray):
                assert list(ours) == list(theirs), key
            elif isinstance(ours, float):
                assert np.float32(ours) == np.float32(theirs) or ours == theirs, key
            else:
                assert ours == theirs, key
        assert [t.name for t in r.tensors] == list(f.tensors)
        for t in r.tensors:
            info = f.tensors[t.name]
            assert info.offset == t.data_offset  # absolute in gguf-py too
            assert info.nbytes == t.n_bytes and info.qtype.ggml_id == int(t.tensor_type)
            assert tuple(int(d) for d in t.shape) == info.ne
            assert f.raw(t.name).tobytes() == np.asarray(t.data).tobytes()
