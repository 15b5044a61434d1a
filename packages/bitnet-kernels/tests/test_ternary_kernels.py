"""Integer and fused ternary kernels against the numpy oracles of bitnet_quantization: exact equality."""

import numpy as np
import pytest

import bitnet_kernels as bk
from bitnet_quantization import i2s_pack, quantize_act_i8, quantize_q8_k, tq1_0_encode, tq2_0_encode
from bitnet_quantization import ternary_codes_from_tq1_0, ternary_codes_from_tq2_0
from bitnet_quantization.matmul import i2s_linear, q8k_linear, ternary_dot_i32

pytestmark = pytest.mark.fast

# (T, N, K): ragged T, N not a multiple of any SIMD width or row block, K with odd and even block counts
I2S_SHAPES = [(1, 7, 128), (1, 33, 384), (1, 64, 2560), (3, 13, 256), (17, 29, 640), (70, 11, 128), (2, 5, 1152)]
TQ_SHAPES = [(1, 7, 256), (1, 31, 512), (3, 13, 768), (17, 9, 1536), (2, 5, 256)]


def _ternary(rng, n, k, p0=0.4):
    return rng.choice(np.array([-1, 0, 1], np.int8), size=(n, k), p=[(1 - p0) / 2, p0, (1 - p0) / 2])


def _acts(rng, t, k):
    x = rng.standard_normal((t, k)).astype(np.float32)
    x[:, rng.integers(0, k)] *= 30  # an outlier column, as real activations have
    return x


def test_quantize_act_i8_matches_oracle(isa, threads):
    rng = np.random.default_rng(1)
    for t, k in [(1, 1), (1, 17), (3, 2560), (17, 100), (5, 6912)]:
        x = _acts(rng, t, k)
        x[0, :] *= 1e-9  # a row below the 1e-5 floor
        got = bk.quantize_act_i8(x)
        ref = quantize_act_i8(x)
        np.testing.assert_array_equal(got.q, ref.q)
        np.testing.assert_array_equal(got.scale, ref.scale)
        np.testing.assert_array_equal(got.qsum, ref.qsum)


def test_quantize_act_i8_rounds_half_to_even(isa):
    # max 127 -> s = 1: x * s is x itself, so halves are visible
    x = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5] + [0.0] * 24], np.float32)
    q = bk.quantize_act_i8(x).q[0, :8]
    np.testing.assert_array_equal(q, [127, 0, 2, 2, 0, -2, -2, 4])


@pytest.mark.parametrize("t,n,k", I2S_SHAPES)
def test_i2s_gemm_i32_exact(isa, threads, t, n, k):
    rng = np.random.default_rng(t * 1000 + n + k)
    w = _ternary(rng, n, k)
    raw = i2s_pack(w, 0.5)
    q = rng.integers(-128, 128, size=(t, k), dtype=np.int8)
    got = bk.i2s_gemm_i32(raw, n, k, q)
    np.testing.assert_array_equal(got, ternary_dot_i32(w, q))


def test_i2s_gemm_i32_extreme_values(isa):
    # all +1 / all -1 weights with all -128 activations: the largest magnitudes an int32 path must hold
    k = 6912
    w = np.stack([np.ones(k, np.int8), -np.ones(k, np.int8), np.zeros(k, np.int8)])
    raw = i2s_pack(w, 1.0)
    for t in (1, 3):
        q = np.full((t, k), -128, np.int8)
        np.testing.assert_array_equal(bk.i2s_gemm_i32(raw, 3, k, q), ternary_dot_i32(w, q))


@pytest.mark.parametrize("t,n,k", I2S_SHAPES)
def test_i2s_linear_bitwise(isa, threads, t, n, k):
    rng = np.random.default_rng(t * 7 + n * 3 + k)
    w = _ternary(rng, n, k)
    scale = np.float32(rng.uniform(0.1, 3.0))
    raw = i2s_pack(w, scale)
    x = _acts(rng, t, k)
    got = bk.i2s_linear(raw, n, k, x)
    ref = i2s_linear(w, scale, x)
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


def test_i2s_linear_out_and_readonly_weights(isa):
    rng = np.random.default_rng(5)
    w = _ternary(rng, 9, 256)
    raw = i2s_pack(w, 1.25)
    raw.flags.writeable = False  # a memory-mapped tensor is read-only
    x = _acts(rng, 2, 256)
    out = np.full((2, 9), np.nan, np.float32)
    y = bk.i2s_linear(raw, 9, 256, x, out=out)
    assert y is out
    np.testing.assert_array_equal(out, i2s_linear(w, np.float32(1.25), x))


@pytest.mark.parametrize("t,n,k", TQ_SHAPES)
@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
def test_tq_linear_bitwise(isa, threads, qtype, t, n, k):
    rng = np.random.default_rng(t + n + k + len(qtype))
    wf = rng.standard_normal((n, k)).astype(np.float32) * rng.uniform(0.01, 2.0, size=(n, 1)).astype(np.float32)
    enc, dec = (tq2_0_encode, ternary_codes_from_tq2_0) if qtype == "TQ2_0" else (tq1_0_encode, ternary_codes_from_tq1_0)
    raw = enc(wf)
    wq, d = dec(raw)
    x = _acts(rng, t, k)
    got = bk.tq_linear(raw, qtype, n, k, x)
    ref = q8k_linear(wq.reshape(n, k), d.reshape(n, k // 256), x)
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


def test_quantize_q8_k_matches_oracle(threads):
    rng = np.random.default_rng(3)
    x = _acts(rng, 5, 1024)
    x[1, :256] = 0.0  # an all-zero block
    x[2, 5], x[2, 9] = -4.0, 4.0  # ties in |x|: the first one sets the sign
    x[2, :256] = np.clip(x[2, :256], -3, 3)
    x[2, 5], x[2, 9] = -4.0, 4.0
    got = bk.quantize_q8_k(x)
    ref = quantize_q8_k(x)
    np.testing.assert_array_equal(got.q, ref.q)
    np.testing.assert_array_equal(got.d, ref.d)
    np.testing.assert_array_equal(got.bsums, ref.bsums)


@pytest.mark.parametrize("t", [1, 3, 17])
def test_i2s_linear_multi_equals_separate_calls(isa, threads, t):
    rng = np.random.default_rng(t)
    k = 384
    mats = []
    for n, scale in [(33, 0.5), (7, 1.5), (64, 2.0)]:
        w = _ternary(rng, n, k)
        mats.append((w, np.float32(scale), i2s_pack(w, scale), n))
    x = _acts(rng, t, k)
    ys = bk.i2s_linear_multi([(raw, n) for _, _, raw, n in mats], k, x)
    for (w, scale, raw, n), y in zip(mats, ys):
        np.testing.assert_array_equal(y, i2s_linear(w, scale, x))
    outs = [np.empty((t, n), np.float32) for *_, n in mats]
    ys2 = bk.i2s_linear_multi([(raw, n) for _, _, raw, n in mats], k, x, outs=outs)
    assert all(a is b for a, b in zip(ys2, outs))


def _q8k_lanes_oracle(wq, d_w, x):
    """llama.cpp's AVX2 TQ lane order in numpy (fma emulated in float64, exact for these magnitudes)."""
    n, k = wq.shape
    a = quantize_q8_k(x)
    t, nb = x.shape[0], k // 256
    m, j, p = np.ogrid[:8, :8, :4]
    lanes = (32 * j + 4 * m + p).reshape(8, 32)
    qa = a.q.reshape(t, nb, 256)[:, :, lanes].astype(np.int64)
    codes = (wq.reshape(n, nb, 256)[:, :, lanes] + 1).astype(np.int64)
    bsums = a.q.reshape(t, nb, 8, 32).sum(axis=3, dtype=np.int64)
    part = (np.einsum("tbmk,nbmk->tnbm", qa, codes) - bsums[:, None]).astype(np.float32)
    d = (a.d[:, None, :] * d_w[None, :, :]).astype(np.float32)
    acc = np.zeros((t, n, 8), np.float32)
    for b in range(nb):
        acc = (part[:, :, b, :].astype(np.float64) * d[:, :, b, None] + acc).astype(np.float32)
    r = (acc[..., 4:] + acc[..., :4]).astype(np.float32)
    return ((r[..., 0] + r[..., 2]) + (r[..., 1] + r[..., 3])).astype(np.float32)


@pytest.mark.parametrize("t,n,k", [(1, 7, 256), (3, 13, 768), (17, 5, 512)])
@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
def test_tq_linear_llama_lane_order_bitwise(isa, qtype, t, n, k):
    rng = np.random.default_rng(t * 31 + n + k)
    wf = rng.standard_normal((n, k)).astype(np.float32)
    enc, dec = (tq2_0_encode, ternary_codes_from_tq2_0) if qtype == "TQ2_0" else (tq1_0_encode, ternary_codes_from_tq1_0)
    raw = enc(wf)
    wq, d = dec(raw)
    x = _acts(rng, t, k)
    got = bk.tq_linear(raw, qtype, n, k, x, lane_order=True)
    ref = _q8k_lanes_oracle(wq.reshape(n, k), d.reshape(n, k // 256), x)
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))
