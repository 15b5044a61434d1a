"""Our TQ1_0 / TQ2_0 / Q8_0 / BF16 codecs are byte-identical to the `gguf` package's (gguf-py 0.19.0)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bitnet_quantization import quant_type

from gguf import GGMLQuantizationType, quants

pytestmark = pytest.mark.fast

# The ternary matrices of BitNet b1.58 2B-4T, numpy shape (out, in)
SHAPES_2B4T = [(2560, 2560), (6912, 2560), (2560, 6912), (640, 2560)]


def _ternary_matrix(shape, seed):
    """Ternary values times one fp16-exact scale per 256-block, as a ternarized weight looks."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-1, 2, size=shape, dtype=np.int8)
    scales = rng.uniform(0.005, 0.05, size=(shape[0], shape[1] // 256, 1)).astype(np.float16).astype(np.float32)
    return (q.reshape(shape[0], -1, 256) * scales).reshape(shape).astype(np.float32)


@pytest.mark.parametrize("name", ["TQ1_0", "TQ2_0"])
@pytest.mark.parametrize("shape", SHAPES_2B4T, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tq_byte_identical_to_gguf_quants_at_2b4t_shapes(name, shape):
    x = _ternary_matrix(shape, seed=shape[0] + shape[1])
    qt = quant_type(name)
    ggml = GGMLQuantizationType[name]
    ref = quants.quantize(x, ggml)
    ours = qt.encode(x)
    assert ref.dtype == np.uint8 and ref.size == ours.size == qt.nbytes(x.size)
    assert np.array_equal(ref.reshape(-1), ours)
    ref_dec = quants.dequantize(ref, ggml)
    ours_dec = qt.decode(ours, x.size)
    assert np.array_equal(ref_dec.reshape(-1), ours_dec)
    assert np.array_equal(ours_dec, x.reshape(-1))


floats_blocks = st.integers(1, 3).flatmap(
    lambda nb: hnp.arrays(np.float32, nb * 256, elements=st.floats(-65000, 65000, width=32))
)


@pytest.mark.parametrize("name", ["TQ1_0", "TQ2_0", "Q8_0", "BF16"])
@settings(max_examples=80, deadline=None)
@given(x=floats_blocks)
def test_encode_decode_identical_to_gguf_quants_on_any_floats(name, x):
    # not only ternary input: rounding of arbitrary values (ties away from zero) must agree too
    qt = quant_type(name)
    ggml = GGMLQuantizationType[name]
    with np.errstate(all="ignore"):  # gguf-py itself overflows 1/d on subnormal blocks
        ref = quants.quantize(x.reshape(-1, 256), ggml)
        ref_dec = quants.dequantize(ref, ggml).reshape(-1)
    ours = qt.encode(x)
    assert np.array_equal(ref.reshape(-1).view(np.uint8), ours)
    assert np.array_equal(ref_dec, qt.decode(ours, x.size), equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, st.integers(1, 300), elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
def test_bf16_identical_to_gguf_including_nan_and_inf(x):
    qt = quant_type("BF16")
    with np.errstate(all="ignore"):
        ref = quants.quantize(x, GGMLQuantizationType.BF16)
    ours = qt.encode(x)
    assert np.array_equal(ref.reshape(-1).view(np.uint8), ours)


def test_ties_round_away_from_zero_like_ggml():
    # x / d = +-0.5 exactly: ggml's roundf gives +-1 (not 0 as round-half-to-even would)
    x = np.zeros(256, np.float32)
    x[0], x[1], x[2] = 1.0, 0.5, -0.5
    for name in ("TQ1_0", "TQ2_0"):
        qt = quant_type(name)
        y = qt.decode(qt.encode(x), 256)
        assert (y[1], y[2]) == (1.0, -1.0)
        assert np.array_equal(quants.quantize(x, GGMLQuantizationType[name]).reshape(-1), qt.encode(x))
