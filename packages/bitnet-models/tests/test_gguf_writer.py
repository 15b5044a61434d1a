"""write_gguf -> read_gguf round trips for every quant type and metadata value type; atomic on failure."""

from __future__ import annotations

import numpy as np
import pytest

from bitnet_models.errors import GGUFError
from bitnet_models.gguf import RawTensor, read_gguf, write_gguf
from bitnet_models.gguf.reader import ValueType
from bitnet_models.gguf.writer import DeferredTensor
from bitnet_quantization import QUANT_TYPES, quant_type

pytestmark = pytest.mark.fast

SHAPE = (4, 512)  # numpy order; 2048 values: whole blocks of every type


def _ternary(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1, 2, size=SHAPE).astype(np.float32) * np.float32(127 / 128)  # exact in Q8_0 too


@pytest.mark.parametrize("qt", QUANT_TYPES, ids=lambda q: q.name)
def test_float_path_round_trip(tmp_path, qt):
    x = _ternary()
    p = write_gguf(tmp_path / "m.gguf", "bitnet", {}, [("w", x, qt.name)])
    with read_gguf(p) as f:
        t = f.tensors["w"]
        assert t.qtype is qt and t.shape == SHAPE and t.nbytes == qt.nbytes(x.size)
        assert np.array_equal(f.dequantize("w"), x)  # exact in every type at this scale
        assert f.raw("w").tobytes() == qt.encode(x).tobytes()


@pytest.mark.parametrize("qt", QUANT_TYPES, ids=lambda q: q.name)
def test_raw_tensor_round_trip_is_byte_exact(tmp_path, qt):
    raw = np.random.default_rng(1).integers(0, 256, qt.nbytes(SHAPE[0] * SHAPE[1]), dtype=np.uint8)
    p = write_gguf(tmp_path / "m.gguf", "bitnet", {}, [("w", RawTensor(raw, SHAPE), qt.name)])
    with read_gguf(p) as f:
        assert f.tensors["w"].qtype is qt and f.tensors["w"].shape == SHAPE
        assert f.raw("w").tobytes() == raw.tobytes()


def test_deferred_tensors_are_made_in_order_one_at_a_time(tmp_path):
    made = []

    def maker(i):
        def make():
            made.append(i)
            return _ternary(i)

        return make

    tensors = [(f"t{i}", DeferredTensor(SHAPE, maker(i)), "I2_S" if i % 2 else "TQ2_0") for i in range(4)]
    p = write_gguf(tmp_path / "m.gguf", "bitnet", {}, tensors)
    assert made == [0, 1, 2, 3]
    with read_gguf(p) as f:
        for i in range(4):
            assert np.array_equal(f.dequantize(f"t{i}"), _ternary(i))


def test_mixed_model_file_and_alignment(tmp_path):
    x = _ternary()
    tensors = [
        ("a", np.ones(7, np.float32), "F32"),  # odd byte size: the next tensor must still be aligned
        ("b", x, "I2_S"),
        ("c", np.arange(3, dtype=np.float32), "F16"),
        ("d", x, "TQ1_0"),
    ]
    p = write_gguf(tmp_path / "m.gguf", "bitnet-b1.58", {"general.name": "t"}, tensors)
    with read_gguf(p) as f:
        assert f.architecture == "bitnet-b1.58" and f.metadata["general.name"] == "t"
        assert all(t.offset % f.alignment == 0 for t in f.tensors.values())
        assert f.array("c").tolist() == [0, 1, 2]


def test_every_metadata_value_type_round_trips(tmp_path):
    md = {
        "k.u8": np.uint8(250), "k.i8": np.int8(-100), "k.u16": np.uint16(60000), "k.i16": np.int16(-30000),
        "k.u32": 4_000_000_000, "k.i32": -5, "k.f32": 0.25, "k.bool": True, "k.str": "héllo ▁world",
        "k.u64": 1 << 40, "k.i64": -(1 << 40), "k.f64": np.float64(0.1),
        "k.arr.u8": np.arange(3, dtype=np.uint8), "k.arr.i8": np.array([-1, 1], np.int8),
        "k.arr.u16": np.array([1, 65535], np.uint16), "k.arr.i16": np.array([-2, 2], np.int16),
        "k.arr.u32": np.array([7], np.uint32), "k.arr.i32": np.array([-7, 7], np.int32),
        "k.arr.f32": np.array([0.5, 1.5], np.float32), "k.arr.bool": np.array([True, False]),
        "k.arr.u64": np.array([1 << 63], np.uint64), "k.arr.i64": np.array([-(1 << 62)], np.int64),
        "k.arr.f64": np.array([0.1, 0.2]), "k.arr.str": ["a", "", "é", "Ġthe"],
        "k.arr.arr": [np.array([1, 2], np.int32), [3]],
    }
    expect_type = {
        "k.u8": ValueType.UINT8, "k.i8": ValueType.INT8, "k.u16": ValueType.UINT16, "k.i16": ValueType.INT16,
        "k.u32": ValueType.UINT32, "k.i32": ValueType.INT32, "k.f32": ValueType.FLOAT32, "k.bool": ValueType.BOOL,
        "k.str": ValueType.STRING, "k.u64": ValueType.UINT64, "k.i64": ValueType.INT64, "k.f64": ValueType.FLOAT64,
    }
    p = write_gguf(tmp_path / "m.gguf", "bitnet", md, [])
    with read_gguf(p) as f:
        m = f.metadata
        for k, v in md.items():
            if k in expect_type:
                assert f.metadata_types[k] == expect_type[k], k
                assert m[k] == v, k
            elif k == "k.arr.str":
                assert list(m[k]) == v
            elif k == "k.arr.arr":
                assert [a.tolist() for a in m[k]] == [[1, 2], [3]]
            else:
                assert m[k].dtype == v.dtype and m[k].tolist() == v.tolist(), k
        assert len(f.tensors) == 0


@pytest.mark.parametrize(
    "value, msg",
    [(object(), "cannot store"), (np.array([], np.int32), "empty"), (1 << 64, "64 bits"),
     (np.zeros((2, 2), np.float32), "1-D"), ([1, "a"], "strings or arrays"), (np.complex64(1), "no GGUF")],
)
def test_bad_metadata_is_a_typed_error_and_leaves_nothing(tmp_path, value, msg):
    with pytest.raises(GGUFError, match=msg) as e:
        write_gguf(tmp_path / "m.gguf", "bitnet", {"bad.key": value}, [])
    assert "'bad.key'" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_wrong_raw_size_is_a_typed_error(tmp_path):
    with pytest.raises(GGUFError, match="is 544 bytes, got 543"):
        write_gguf(tmp_path / "m.gguf", "bitnet", {}, [("w", RawTensor(np.zeros(543, np.uint8), (4, 512)), "I2_S")])
    assert list(tmp_path.iterdir()) == []


def test_unknown_type_and_bad_shape_are_typed_errors(tmp_path):
    with pytest.raises(GGUFError, match="unknown quant type 'Q4_K'"):
        write_gguf(tmp_path / "m.gguf", "bitnet", {}, [("w", np.zeros(256, np.float32), "Q4_K")])
    with pytest.raises(GGUFError, match="multiple"):
        write_gguf(tmp_path / "m.gguf", "bitnet", {}, [("w", np.zeros(100, np.float32), "TQ2_0")])
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_way_leaves_no_partial_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "m.gguf"
    target.write_bytes(b"old contents")

    def boom():
        raise RuntimeError("disk on fire")

    tensors = [("a", _ternary(), "I2_S"), ("b", DeferredTensor(SHAPE, boom), "I2_S")]
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_gguf(target, "bitnet", {"general.name": "x"}, tensors)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no .part file left behind


def test_deferred_tensor_with_wrong_shape(tmp_path):
    bad = DeferredTensor(SHAPE, lambda: np.zeros((2, 512), np.float32))
    with pytest.raises(GGUFError, match="promised shape"):
        write_gguf(tmp_path / "m.gguf", "bitnet", {}, [("w", bad, "F32")])
    assert list(tmp_path.iterdir()) == []


def test_interrupt_leaves_nothing(tmp_path):
    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_gguf(tmp_path / "m.gguf", "bitnet", {}, [("w", DeferredTensor((256,), interrupt), "F32")])
    assert list(tmp_path.iterdir()) == []


def test_i2s_via_quant_type_object(tmp_path):
    x = _ternary()
    p = write_gguf(tmp_path / "m.gguf", "bitnet", {}, [("w", x, quant_type("I2_S"))])
    with read_gguf(p) as f:
        assert f.tensors["w"].nbytes == x.size // 4 + 32


def test_written_file_gets_the_usual_permissions(tmp_path):
    import os

    p = write_gguf(tmp_path / "m.gguf", "bitnet", {}, [])
    mask = os.umask(0o022)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask
