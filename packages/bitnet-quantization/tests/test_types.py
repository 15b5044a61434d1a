"""The quant-type table: one entry per type, sizes, lookups, and refusals."""

import numpy as np
import pytest

from bitnet_quantization import QUANT_TYPES, QuantTypeError, quant_type, quant_type_by_id
from bitnet_quantization.errors import BitNetError
from bitnet_quantization.types import AMBIGUOUS_IDS

pytestmark = pytest.mark.fast

EXPECTED = {  # name: (ggml id, block size, bytes per block, tail, ternary)
    "F32": (0, 1, 4, 0, False),
    "F16": (1, 1, 2, 0, False),
    "Q8_0": (8, 32, 34, 0, False),
    "BF16": (30, 1, 2, 0, False),
    "TQ1_0": (34, 256, 54, 0, True),
    "TQ2_0": (35, 256, 66, 0, True),
    "I2_S": (36, 128, 32, 32, True),
}


def test_table_matches_ggml_and_bitnet_cpp():
    got = {q.name: (q.ggml_id, q.block_size, q.type_size, q.tail_bytes, q.ternary) for q in QUANT_TYPES}
    assert got == EXPECTED
    assert len({q.ggml_id for q in QUANT_TYPES}) == len(QUANT_TYPES)


def test_sizes_agree_with_gguf_package():
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    for q in QUANT_TYPES:
        if q.name == "I2_S":
            continue  # not in gguf-py
        assert GGML_QUANT_SIZES[GGMLQuantizationType[q.name]] == (q.block_size, q.type_size)


def test_i2s_nbytes_is_n_over_4_plus_32():
    assert quant_type("I2_S").nbytes(2560 * 6912) == 2560 * 6912 // 4 + 32
    with pytest.raises(QuantTypeError, match="multiple"):
        quant_type("I2_S").nbytes(100)


def test_lookups():
    for q in QUANT_TYPES:
        assert quant_type(q.name) is q
        assert quant_type(q.name.lower()) is q
        assert quant_type_by_id(q.ggml_id) is q


@pytest.mark.parametrize("bad", [37, 38, 39, 40, 41, 42])
def test_ambiguous_ids_are_refused_by_name(bad):
    with pytest.raises(QuantTypeError, match=f"type id {bad}") as e:
        quant_type_by_id(bad)
    assert AMBIGUOUS_IDS[bad].split(" ")[0] in str(e.value)
    assert isinstance(e.value, BitNetError)


def test_unknown_id_and_name():
    with pytest.raises(QuantTypeError, match="unknown ggml type id 999"):
        quant_type_by_id(999)
    with pytest.raises(QuantTypeError, match="unknown quant type 'Q4_K'"):
        quant_type("Q4_K")


@pytest.mark.parametrize("q", QUANT_TYPES, ids=lambda q: q.name)
def test_every_codec_round_trips_its_own_output(q):
    rng = np.random.default_rng(1)
    n = 1024
    x = rng.integers(-1, 2, n).astype(np.float32) * np.float32(127 / 128)  # Q8_0 keeps d = 1/128 exactly in fp16
    raw = q.encode(x)
    assert raw.dtype == np.uint8 and raw.size == q.nbytes(n)
    y = q.decode(raw, n)
    assert y.dtype == np.float32 and y.shape == (n,)
    np.testing.assert_array_equal(y, x)  # exact in every type at this scale
    np.testing.assert_array_equal(q.encode(y), raw)
