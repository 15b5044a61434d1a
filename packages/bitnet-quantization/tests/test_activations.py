"""Activation quantizers: bitnet.cpp's per-token int8 (round half to even) and llama.cpp's Q8_K."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bitnet_quantization import dequantize_act_i8, quantize_act_i8, quantize_q8_k

pytestmark = pytest.mark.fast

FAST = settings(max_examples=80, deadline=None)
acts = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
    elements=st.floats(-1e4, 1e4, width=32),
)


def _i8_scalar(row: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """One token, written as bitnet.cpp's loop reads: float32 ops, nearbyint (ties to even), clamp."""
    amax = np.float32(0)
    for v in row:
        amax = max(amax, np.float32(abs(v)))
    s = np.float32(127) / max(amax, np.float32(1e-5))
    q = np.empty(row.size, np.int8)
    for i, v in enumerate(row):
        q[i] = min(127, max(-128, round(float(np.float32(v * s)))))  # Python round(): half to even
    return q, s


@FAST
@given(x=acts)
def test_act_i8_matches_scalar_definition(x):
    a = quantize_act_i8(x)
    assert a.q.dtype == np.int8 and a.scale.dtype == np.float32 and a.qsum.dtype == np.int32
    for t in range(x.shape[0]):
        q, s = _i8_scalar(x[t])
        np.testing.assert_array_equal(a.q[t], q)
        assert a.scale[t] == s
        assert a.qsum[t] == int(q.astype(np.int64).sum())


@FAST
@given(x=acts)
def test_act_i8_round_trip_error_is_half_a_step(x):
    a = quantize_act_i8(x)
    err = np.abs(dequantize_act_i8(a) - x)
    step = 1 / a.scale[:, None]
    assert (err <= 0.5 * step * (1 + 1e-5) + 1e-30).all()
    assert np.abs(a.q).max(initial=0) <= 127  # symmetric: -128 never appears


def test_act_i8_ties_round_half_to_even():
    # amax 127 makes s exactly 1, so x * s is the value itself
    x = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 126.5]], np.float32)
    a = quantize_act_i8(x)
    assert a.scale[0] == 1.0
    assert a.q[0].tolist() == [127, 0, 2, 2, 0, -2, -2, 4, 126]  # half away from zero would give 1, 3, -1, ...


def test_act_i8_zero_row_uses_eps():
    a = quantize_act_i8(np.zeros((2, 8), np.float32))
    assert (a.q == 0).all() and (a.scale == np.float32(127) / np.float32(1e-5)).all()


# --- Q8_K --------------------------------------------------------------------------------------------------


def _nearest_int(v: np.float32) -> int:
    # ggml's float trick, one value at a time: ties to even for |v| < 2^22 (and what C gets for inf)
    if np.isfinite(v) and abs(v) < 2**22:
        return int(round(float(v)))
    f = np.array(np.float32(v) + np.float32(12582912.0), np.float32)
    return int((f.view(np.int32) & 0x007FFFFF) - 0x00400000)


def _q8k_scalar(row: np.ndarray):
    qs, ds = [], []
    for b in row.reshape(-1, 256):
        amax, mx = np.float32(0), np.float32(0)
        for v in b:  # first element of the largest magnitude wins
            if abs(v) > amax:
                amax, mx = np.float32(abs(v)), v
        if amax == 0:
            qs.append(np.zeros(256, np.int8))
            ds.append(np.float32(0))
            continue
        with np.errstate(over="ignore", invalid="ignore"):  # -127 / tiny overflows in float32, as in C
            iscale = np.float32(-127.0) / mx
            qs.append(np.array([min(127, _nearest_int(np.float32(iscale * v))) for v in b], np.int64).astype(np.int8))
            ds.append(np.float32(1) / iscale)
    return np.concatenate(qs), np.array(ds, np.float32)


@settings(max_examples=40, deadline=None)
@given(
    x=st.integers(1, 3).flatmap(
        lambda t: st.integers(1, 2).flatmap(
            lambda nb: hnp.arrays(
                np.float32, (t, nb * 256), elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False)
            )
        )
    )
)
def test_q8k_matches_ggml_reference_loop(x):
    a = quantize_q8_k(x)
    for t in range(x.shape[0]):
        q, d = _q8k_scalar(x[t])
        np.testing.assert_array_equal(a.q[t], q)
        np.testing.assert_array_equal(a.d[t], d)
        np.testing.assert_array_equal(a.bsums[t], q.reshape(-1, 16).astype(np.int32).sum(axis=1))


def test_q8k_uses_minus_128_for_the_extreme_of_the_opposite_sign():
    x = np.zeros((1, 256), np.float32)
    x[0, 0] = 2.0  # largest magnitude, positive: d = -2/127, so 2.0 -> -127
    x[0, 1] = -2.0  # same magnitude later in the block: +127
    a = quantize_q8_k(x)
    assert a.q[0, 0] == -127 and a.q[0, 1] == 127
    assert a.d[0, 0] == np.float32(1) / (np.float32(-127) / np.float32(2))
    # dequantized values come back
    np.testing.assert_allclose(a.q[0, :2] * a.d[0, 0], [2.0, -2.0], rtol=1e-6)


def test_q8k_block_of_subnormals_quantizes_to_zero_like_ggml():
    # -127 / 1e-45 overflows to -inf in float32; ggml's nearest_int then yields a value whose int8 is 0
    x = np.full((1, 256), 1e-45, np.float32)
    a = quantize_q8_k(x)
    assert (a.q == 0).all() and a.d[0, 0] == 0 and (a.bsums == 0).all()


def test_q8k_block_at_the_smallest_normal_matches_the_scalar_loop():
    # found by hypothesis in CI: -127 / 1.1754944e-38 overflows float32 in the reference loop too
    x = np.full((1, 256), np.float32(1.1754944e-38), np.float32)
    a = quantize_q8_k(x)
    q, d = _q8k_scalar(x[0])
    np.testing.assert_array_equal(a.q[0], q)
    np.testing.assert_array_equal(a.d[0], d)


def test_q8k_rejects_rows_not_a_multiple_of_256():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_q8_k(np.zeros((1, 100), np.float32))
