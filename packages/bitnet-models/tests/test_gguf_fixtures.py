"""bitnet.cpp's own I2_S file against its F32 twin: our I2_S codec is bit-exact both ways."""

from pathlib import Path

import numpy as np
import pytest

from bitnet_models.gguf import read_gguf
from bitnet_quantization import i2s_pack, i2s_scale, i2s_unpack_codes, quant_type
from bitnet_quantization.ternary import i2s_encode

pytestmark = pytest.mark.fast

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures"
I2S = FIXTURES / "b158-a-i2s.gguf"
F32 = FIXTURES / "b158-a-f32.gguf"


@pytest.fixture(scope="module")
def pair():
    with read_gguf(I2S) as a, read_gguf(F32) as b:
        yield a, b


def _i2s_names(f):
    return [n for n, t in f.tensors.items() if t.qtype.name == "I2_S"]


def test_fixture_layout(pair):
    a, b = pair
    assert a.architecture == b.architecture == "bitnet-b1.58"
    assert a.tensors.keys() == b.tensors.keys()
    names = _i2s_names(a)
    assert len(names) == 4 * 7  # seven ternary matrices in each of 4 layers
    for n in names:
        ta, tb = a.tensors[n], b.tensors[n]
        assert tb.qtype.name == "F32" and ta.shape == tb.shape
        assert ta.nbytes == ta.n_elements // 4 + 32


def test_dequantized_i2s_equals_the_f32_file_exactly(pair):
    a, b = pair
    scales = set()
    for n in _i2s_names(a):
        ours = a.dequantize(n)
        theirs = b.array(n)
        assert ours.dtype == np.float32 and ours.shape == theirs.shape
        assert np.array_equal(ours, theirs), n
        scales.add(float(i2s_scale(a.raw(n), a.tensors[n].n_elements)))
    assert len(scales) == len(_i2s_names(a))  # per-tensor scales, all different


def test_repacking_the_f32_values_reproduces_the_i2s_bytes(pair):
    a, b = pair
    for n in _i2s_names(a):
        raw = a.raw(n)
        w = b.array(n)
        again = i2s_encode(w)  # scale = max|w|, codes = w / scale
        assert again.tobytes() == raw.tobytes(), n  # packed codes, the scale and the 28-byte tail
        assert quant_type("I2_S").encode(w).tobytes() == raw.tobytes()


def test_codes_and_scale_separately(pair):
    a, b = pair
    n = "blk.2.ffn_down.weight"
    t = a.tensors[n]
    q = i2s_unpack_codes(a.raw(n), t.n_elements)
    s = i2s_scale(a.raw(n), t.n_elements)
    assert set(np.unique(q)) == {-1, 0, 1}
    assert s == np.abs(b.array(n)).max()
    assert i2s_pack(q.reshape(t.shape), s).tobytes() == a.raw(n).tobytes()
