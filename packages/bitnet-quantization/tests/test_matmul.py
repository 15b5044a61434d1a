"""Reference matmul semantics against straightforward integer loops."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnet_quantization import quantize_act_i8, quantize_q8_k
from bitnet_quantization.matmul import i2s_linear, q8k_linear, ternary_dot_i32
from bitnet_quantization.ternary import i2s_pack, i2s_unpack_codes

pytestmark = pytest.mark.fast


def _problem(seed, t, n, k):
    rng = np.random.default_rng(seed)
    w = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    x = (rng.standard_normal((t, k)) * rng.uniform(0.1, 10)).astype(np.float32)
    return w, x


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), t=st.integers(1, 4), n=st.integers(1, 12), kb=st.integers(1, 3))
def test_i2s_linear_equals_integer_loop(seed, t, n, kb):
    k = kb * 128
    w, x = _problem(seed, t, n, k)
    w_scale = np.float32(0.0123)
    y = i2s_linear(w, w_scale, x)
    a = quantize_act_i8(x)
    codes = w.astype(np.int64) + 1  # what the I2_S kernel multiplies
    for i in range(t):
        q = a.q[i].astype(np.int64)
        for j in range(n):
            dot = int(np.dot(codes[j], q)) - int(q.sum())  # sum(c*q) - sum(q), bitnet.cpp's form
            assert dot == int(np.dot(w[j].astype(np.int64), q))
            expect = np.float32(np.float32(dot) / a.scale[i]) * w_scale
            assert y[i, j] == expect, (i, j)


def test_i2s_linear_through_packed_bytes():
    w, x = _problem(7, 3, 64, 256)
    raw = i2s_pack(w, 0.5)
    w2 = i2s_unpack_codes(raw, w.size).reshape(w.shape)
    np.testing.assert_array_equal(i2s_linear(w2, np.float32(0.5), x), i2s_linear(w, np.float32(0.5), x))


def test_ternary_dot_is_exact_at_the_largest_sizes():
    k = 6912
    w = np.ones((2, k), np.int8)
    w[1] = -1
    q = np.full((1, k), 127, np.int8)
    np.testing.assert_array_equal(ternary_dot_i32(w, q), [[127 * k, -127 * k]])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), t=st.integers(1, 3), n=st.integers(1, 6), kb=st.integers(1, 3))
def test_q8k_linear_equals_blockwise_loop(seed, t, n, kb):
    k = kb * 256
    w, x = _problem(seed, t, n, k)
    rng = np.random.default_rng(seed + 1)
    d_w = rng.uniform(0.01, 0.1, size=(n, kb)).astype(np.float16).astype(np.float32)
    y = q8k_linear(w, d_w, x)
    a = quantize_q8_k(x)
    for i in range(t):
        for j in range(n):
            acc = np.float32(0)
            for b in range(kb):
                sl = slice(b * 256, (b + 1) * 256)
                isum = int(np.dot(a.q[i, sl].astype(np.int64), w[j, sl].astype(np.int64)))
                acc = np.float32(acc + np.float32(isum) * np.float32(a.d[i, b] * d_w[j, b]))
            assert y[i, j] == acc, (i, j)


def test_i2s_and_q8k_paths_approximate_the_float_product():
    w, x = _problem(3, 2, 32, 512)
    ref = x @ w.T.astype(np.float32)
    y1 = i2s_linear(w, np.float32(1), x)
    y2 = q8k_linear(w, np.ones((32, 2), np.float32), x)
    scale = np.abs(ref).max()
    assert np.abs(y1 - ref).max() < 0.05 * scale
    assert np.abs(y2 - ref).max() < 0.05 * scale
    assert not np.array_equal(y1, y2)  # different activation quantizers, different results
