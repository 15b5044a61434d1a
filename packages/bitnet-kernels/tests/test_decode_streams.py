"""The one-token GEMVs read two row ranges in lockstep (job c = chunks c and c + P of 16-row chunks). Every row
count that changes the pairing (one chunk, an odd chunk count with an unpaired last job, a short last chunk,
pairs that span two matrices) must give the oracle's result exactly, on every ISA and at 1 and 2 threads."""

import numpy as np
import pytest

import bitnet_kernels as bk
from bitnet_quantization import i2s_pack, quantize_act_i8, tq2_0_encode, ternary_codes_from_tq2_0
from bitnet_quantization.matmul import i2s_linear, q8k_linear, ternary_dot_i32

pytestmark = pytest.mark.fast

ROWS = [1, 15, 16, 17, 31, 32, 33, 47, 48, 49, 64, 71, 83, 96, 130]


def _ternary(rng, n, k):
    return rng.choice(np.array([-1, 0, 1], np.int8), size=(n, k))


@pytest.mark.parametrize("k", [256, 384, 640])  # the VNNI kernel takes 128-weight blocks in pairs: 3 and 5 leave one
def test_i2s_decode_every_pairing(isa, threads, k):
    rng = np.random.default_rng(11)
    for n in ROWS:
        w = _ternary(rng, n, k)
        q = rng.integers(-128, 128, size=(1, k), dtype=np.int8)
        np.testing.assert_array_equal(bk.i2s_gemm_i32(i2s_pack(w, 0.5), n, k, q), ternary_dot_i32(w, q),
                                      err_msg=f"N={n} K={k}")
        x = rng.standard_normal((1, k)).astype(np.float32)
        np.testing.assert_array_equal(bk.i2s_linear(i2s_pack(w, 0.75), n, k, x), i2s_linear(w, np.float32(0.75), x))


def test_i2s_decode_pairs_across_matrices(isa, threads):
    # 3 + 1 + 6 = 10 chunks: job c pairs chunk c with chunk c + 5, from another matrix for most c
    rng = np.random.default_rng(12)
    k = 128
    mats = []
    for n, scale in [(40, 0.5), (9, 1.5), (83, 2.0)]:
        w = _ternary(rng, n, k)
        mats.append((w, np.float32(scale), i2s_pack(w, scale), n))
    x = rng.standard_normal((1, k)).astype(np.float32)
    ys = bk.i2s_linear_multi([(raw, n) for _, _, raw, n in mats], k, x)
    for (w, scale, _, n), y in zip(mats, ys):
        np.testing.assert_array_equal(y, i2s_linear(w, scale, x), err_msg=f"N={n}")


def test_f16_head_decode_every_pairing(isa, threads):
    rng = np.random.default_rng(13)
    k = 160  # a 64-step body, a 16-step tail and no scalar tail; k = 131 below has a scalar tail
    for kk in (k, 131):
        for n in ROWS:
            w = (rng.standard_normal((n, kk)) * 0.05).astype(np.float16)
            x = rng.standard_normal((1, kk)).astype(np.float32)
            got = bk.f16_gemv(w, x)
            # each row alone (a one-row matrix has no partner stream) must give the same bits
            one = np.concatenate([bk.f16_gemv(w[i : i + 1], x) for i in range(n)], axis=1)
            np.testing.assert_array_equal(got.view(np.uint32), one.view(np.uint32), err_msg=f"N={n} K={kk}")
            wd, xd = w.astype(np.float64), x.astype(np.float64)
            assert np.all(np.abs(got - xd @ wd.T) <= 2e-6 * (np.abs(xd) @ np.abs(wd).T) + 1e-30)


def test_q8_head_decode_every_pairing(isa, threads):
    rng = np.random.default_rng(14)
    k = 192
    for n in ROWS:
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float16)
        q, scale = bk.q8_head_prepare(w)
        x = rng.standard_normal((1, k)).astype(np.float32)
        a = quantize_act_i8(x)
        dot = a.q.astype(np.int64) @ q.astype(np.int64).T
        ref = (dot.astype(np.float32) / a.scale[:, None]).astype(np.float32) * scale[None, :]
        got = bk.q8_head_gemv(q, scale, x)
        np.testing.assert_array_equal(got.view(np.uint32), ref.astype(np.float32).view(np.uint32), err_msg=f"N={n}")


def test_tq2_decode_every_pairing(isa, threads):
    rng = np.random.default_rng(15)
    k = 512
    for n in ROWS:
        wf = rng.standard_normal((n, k)).astype(np.float32)
        raw = tq2_0_encode(wf)
        wq, d = ternary_codes_from_tq2_0(raw)
        x = rng.standard_normal((1, k)).astype(np.float32)
        got = bk.tq_linear(raw, "TQ2_0", n, k, x)
        ref = q8k_linear(wq.reshape(n, k), d.reshape(n, k // 256), x)
        np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32), err_msg=f"N={n}")


@pytest.mark.parametrize("threads_", [1, 2])
def test_stream_read_bandwidth_two_streams(threads_):
    assert bk.stream_read_bandwidth(1 << 23, threads=threads_, reps=1) > 0


def test_one_stream_setting_gives_the_same_bits(threads):
    rng = np.random.default_rng(16)
    k, n = 256, 83
    raw = i2s_pack(_ternary(rng, n, k), 0.5)
    wh = (rng.standard_normal((n, k)) * 0.05).astype(np.float16)
    x = rng.standard_normal((1, k)).astype(np.float32)
    two = (bk.i2s_linear(raw, n, k, x), bk.f16_gemv(wh, x))
    old = bk.set_decode_streams(1)
    try:
        one = (bk.i2s_linear(raw, n, k, x), bk.f16_gemv(wh, x))
    finally:
        bk.set_decode_streams(old)
    for a, b in zip(two, one):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    with pytest.raises(bk.KernelError):
        bk.set_decode_streams(3)
