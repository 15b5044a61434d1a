"""Round trips and layouts of the ternary weight codecs (I2_S, TQ1_0, TQ2_0) and absmean ternarization."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bitnet_quantization import ternary as t

pytestmark = pytest.mark.fast

FAST = settings(max_examples=60, deadline=None)


def ternary_arrays(block: int, max_blocks: int = 8):
    return st.integers(1, max_blocks).flatmap(
        lambda nb: hnp.arrays(np.int8, nb * block, elements=st.integers(-1, 1))
    )


finite_scales = st.floats(min_value=2.0**-100, max_value=2.0**100, width=32)


# --- I2_S ---------------------------------------------------------------------------------------------------


@FAST
@given(q=ternary_arrays(128), scale=finite_scales)
def test_i2s_pack_unpack_round_trip(q, scale):
    raw = t.i2s_pack(q, scale)
    assert raw.dtype == np.uint8 and raw.size == q.size // 4 + 32
    np.testing.assert_array_equal(t.i2s_unpack_codes(raw, q.size), q)
    assert t.i2s_scale(raw, q.size) == np.float32(scale)
    assert not raw[q.size // 4 + 4 :].any()  # the 28 unused tail bytes are written as zeros
    np.testing.assert_array_equal(t.i2s_decode(raw, q.size), q.astype(np.float32) * np.float32(scale))


@FAST
@given(q=ternary_arrays(128), scale=st.floats(min_value=2.0**-20, max_value=2.0**20, width=32))
def test_i2s_encode_of_decoded_values_is_identity(q, scale):
    raw = t.i2s_pack(q, scale)
    again = t.i2s_encode(t.i2s_decode(raw, q.size))
    if q.any():
        np.testing.assert_array_equal(again, raw)
    else:  # an all-zero tensor has no scale to recover: it is stored with scale 0
        np.testing.assert_array_equal(again[: q.size // 4], raw[: q.size // 4])


def test_i2s_byte_layout_is_msb_first_with_stride_32():
    # byte p of a 128-weight block holds weights p, p+32, p+64, p+96 in bits 7:6, 5:4, 3:2, 1:0
    q = np.zeros(128, dtype=np.int8)
    q[5] = 1  # code 2 in bits 7:6 of byte 5
    q[32 + 5] = -1  # code 0 in bits 5:4
    q[96 + 7] = 1  # code 2 in bits 1:0 of byte 7
    raw = t.i2s_pack(q, 0.5)
    expect = np.full(32, 0x55, dtype=np.uint8)
    expect[5] = (2 << 6) | (0 << 4) | (1 << 2) | 1
    expect[7] = (1 << 6) | (1 << 4) | (1 << 2) | 2
    np.testing.assert_array_equal(raw[:32], expect)
    assert raw[32:36].tobytes() == np.float32(0.5).tobytes()


def test_i2s_all_zero_packs_to_0x55():
    raw = t.i2s_pack(np.zeros(256, dtype=np.int8), 0.0)
    assert (raw[:64] == 0x55).all()


def test_i2s_unused_code_3_decodes_to_zero():
    raw = np.zeros(32 + 32, dtype=np.uint8)
    raw[:32] = 0xFF  # every code is 3
    raw[32:36] = np.frombuffer(np.float32(2.0).tobytes(), np.uint8)
    assert (t.i2s_unpack_codes(raw, 128) == 0).all()


def test_i2s_rejects_non_ternary_and_bad_sizes():
    with pytest.raises(ValueError, match="multiple of 128"):
        t.i2s_pack(np.zeros(100, np.int8), 1.0)
    with pytest.raises(ValueError, match="ternary"):
        t.i2s_pack(np.full(128, 2, np.int8), 1.0)
    with pytest.raises(ValueError, match="needs 64 bytes"):
        t.i2s_unpack_codes(np.zeros(63, np.uint8), 128)
    with pytest.raises(ValueError, match="not ternary"):
        t.i2s_encode(np.linspace(-1, 1, 128, dtype=np.float32))


# --- absmean ------------------------------------------------------------------------------------------------


@FAST
@given(w=hnp.arrays(np.float32, st.integers(1, 512), elements=st.floats(-100, 100, width=32)))
def test_absmean_ternarize(w):
    q, scale = t.absmean_ternarize(w)
    assert q.dtype == np.int8 and set(np.unique(q)) <= {-1, 0, 1}
    assert scale == np.float32(max(float(np.mean(np.abs(w), dtype=np.float64)), 1e-5))
    expect = np.clip(np.rint(w / scale), -1, 1)
    np.testing.assert_array_equal(q, expect)


# --- TQ1_0 / TQ2_0 ------------------------------------------------------------------------------------------

CODECS = {
    "TQ1_0": (t.tq1_0_encode, t.tq1_0_decode, t.ternary_codes_from_tq1_0, 54),
    "TQ2_0": (t.tq2_0_encode, t.tq2_0_decode, t.ternary_codes_from_tq2_0, 66),
}


@pytest.mark.parametrize("name", CODECS)
@FAST
@given(q=ternary_arrays(256), d=hnp.arrays(np.float16, 8, elements=st.floats(2.0**-10, 2.0**10, width=16)))
def test_tq_ternary_round_trip(name, q, d):
    enc, dec, codes, bpb = CODECS[name]
    nb = q.size // 256
    scales = d[:nb].astype(np.float32)
    x = (q.reshape(nb, 256).astype(np.float32) * scales[:, None]).reshape(-1)
    raw = enc(x)
    assert raw.size == nb * bpb
    q2, d2 = codes(raw)
    # a block without a nonzero value has scale 0, its codes are all 0 either way
    nz = q.reshape(nb, 256).any(axis=1)
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_array_equal(d2[nz], scales[nz])
    np.testing.assert_array_equal(dec(raw), x)


@pytest.mark.parametrize("name", CODECS)
@FAST
@given(x=st.integers(1, 4).flatmap(lambda nb: hnp.arrays(np.float32, nb * 256, elements=st.floats(-(2.0**13), 2.0**13, width=32))))
def test_tq_encode_decode_of_any_floats_is_stable(name, x):
    enc, dec, _, _ = CODECS[name]
    x = x.copy()
    x[::256] = 2.0**-8  # keep every block's scale a normal fp16 (a subnormal-only block decodes to zeros)
    raw = enc(x)
    y = dec(raw)
    # decoded values are ternary times the block's fp16 scale, and re-encoding them changes nothing
    np.testing.assert_array_equal(enc(y), raw)
