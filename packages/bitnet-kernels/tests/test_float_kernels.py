"""Float kernels against numpy oracles, on every ISA path. Tolerances (the table the README repeats):

| kernel            | oracle                                             | tolerance                                |
|-------------------|----------------------------------------------------|------------------------------------------|
| f16_gemv          | float64 x @ w.T                                    | abs 2e-6 * sum_k |w x| (float32 sums)    |
| q8_head_prepare   | numpy float32 absmax/rint                          | bitwise                                  |
| q8_head_gemv      | exact int dot, (float)dot / s_x * scale            | bitwise                                  |
| rmsnorm           | ggml order in numpy (float64 sum of float32 x*x)   | 1 ulp (rtol 2.4e-7)                      |
| rope_neox         | float32 theta recurrence, float64 cos/sin/rotation | abs 1e-6 * max|x|                        |
| attention         | float64 softmax(q k^T / sqrt(D)) v                 | abs 2e-6 (values O(1))                   |
| softmax           | float64                                            | rel 2e-6 + abs 1e-12                     |
| relu2_mul         | numpy float32 (r * r) * u                          | bitwise                                  |
| silu_mul          | float64 g / (1 + exp(-g)) * u                      | rel 2e-6 + abs 1e-30                     |
"""

import numpy as np
import pytest

import bitnet_kernels as bk

pytestmark = pytest.mark.fast


def _rng(*key):
    return np.random.default_rng(abs(hash(key)) % (2**32))


@pytest.mark.parametrize("t,v,k", [(1, 7, 16), (1, 100, 2560), (3, 33, 200), (17, 5, 64), (5, 19, 129)])
def test_f16_gemv(isa, threads, t, v, k):
    rng = _rng(t, v, k)
    w = (rng.standard_normal((v, k)) * 0.05).astype(np.float16)
    x = rng.standard_normal((t, k)).astype(np.float32)
    got = bk.f16_gemv(w, x)
    wd, xd = w.astype(np.float64), x.astype(np.float64)
    ref = xd @ wd.T
    bound = 2e-6 * (np.abs(xd) @ np.abs(wd).T) + 1e-30
    assert got.shape == (t, v) and got.dtype == np.float32
    assert np.all(np.abs(got - ref) <= bound)


def _q8_prepare_ref(w):
    wf = w.astype(np.float32)
    amax = np.abs(wf).max(axis=1)
    with np.errstate(divide="ignore"):
        s = np.where(amax == 0, np.float32(0), np.float32(127) / np.where(amax == 0, 1, amax)).astype(np.float32)
    q = np.rint(wf * s[:, None]).astype(np.int8)
    return q, (amax / np.float32(127)).astype(np.float32)


def test_q8_head_prepare_and_gemv_bitwise(isa, threads):
    from bitnet_quantization import quantize_act_i8

    rng = _rng("q8")
    for t, v, k in [(1, 37, 2560), (3, 9, 130), (6, 65, 64)]:
        w = (rng.standard_normal((v, k)) * 0.05).astype(np.float16)
        w[0] = 0  # an all-zero row
        q, scale = bk.q8_head_prepare(w)
        q_ref, s_ref = _q8_prepare_ref(w)
        np.testing.assert_array_equal(q, q_ref)
        np.testing.assert_array_equal(scale, s_ref)
        x = rng.standard_normal((t, k)).astype(np.float32)
        a = quantize_act_i8(x)
        dot = a.q.astype(np.int64) @ q.astype(np.int64).T
        ref = (dot.astype(np.float32) / a.scale[:, None]).astype(np.float32) * scale[None, :]
        got = bk.q8_head_gemv(q, scale, x)
        np.testing.assert_array_equal(got.view(np.uint32), ref.astype(np.float32).view(np.uint32))


def test_q8_head_gemv_extreme_int8(isa):
    # -128 weights and 127 activations: the AVX2 sign trick and the VNNI +128 offset must both stay exact
    k = 4096
    q = np.full((2, k), -128, np.int8)
    q[1] = 127
    scale = np.ones(2, np.float32)
    x = np.full((1, k), 3.0, np.float32)  # quantizes to 127 everywhere
    got = bk.q8_head_gemv(q, scale, x)
    s = np.float32(127) / np.float32(3.0)
    ref = np.array([[-128 * 127 * k, 127 * 127 * k]], np.float32) / s
    np.testing.assert_array_equal(got, ref.astype(np.float32))


def _rmsnorm_ref(x, w, eps):
    sq = (x * x).astype(np.float32).astype(np.float64).sum(axis=1)
    mean = (sq / x.shape[1]).astype(np.float32)
    sc = (np.float32(1) / np.sqrt(mean + np.float32(eps))).astype(np.float32)
    return ((x * sc[:, None]).astype(np.float32) * w).astype(np.float32)


@pytest.mark.parametrize("t,k", [(1, 2560), (3, 6912), (17, 7), (2, 1)])
def test_rmsnorm(isa, threads, t, k):
    rng = _rng("rms", t, k)
    x = (rng.standard_normal((t, k)) * 3).astype(np.float32)
    w = rng.standard_normal(k).astype(np.float32)
    got = bk.rmsnorm(x, w, 1e-5)
    np.testing.assert_allclose(got, _rmsnorm_ref(x, w, 1e-5), rtol=2.4e-7, atol=1e-37)


def _rope_ref(x, pos, base, n_rot):
    t, h, d = x.shape
    half = n_rot // 2
    theta_scale = np.float32(base) ** np.float32(-2.0 / n_rot)
    out = x.astype(np.float64).copy()
    for ti in range(t):
        theta = np.float32(pos[ti])
        th = np.empty(half, np.float32)
        for i in range(half):  # float32 recurrence, as ggml builds it
            th[i] = theta
            theta = np.float32(theta * theta_scale)
        c, s = np.cos(th.astype(np.float64)), np.sin(th.astype(np.float64))
        x0, x1 = out[ti, :, :half].copy(), out[ti, :, half:n_rot].copy()
        out[ti, :, :half] = x0 * c - x1 * s
        out[ti, :, half:n_rot] = x0 * s + x1 * c
    return out


@pytest.mark.parametrize("t,h,d,n_rot", [(1, 20, 128, 128), (3, 5, 64, 32), (17, 2, 16, 16)])
def test_rope_neox(isa, threads, t, h, d, n_rot):
    rng = _rng("rope", t, h, d)
    x = rng.standard_normal((t, h, d)).astype(np.float32)
    pos = rng.integers(0, 4096, size=t).astype(np.int32)
    pos[0] = 0
    ref = _rope_ref(x, pos, 500000.0, n_rot)
    y = x.copy()
    assert bk.rope_neox(y, pos, 500000.0, n_rot) is y
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-6 * np.abs(x).max())
    if n_rot < d:  # dims past n_rot are untouched
        np.testing.assert_array_equal(y[..., n_rot:], x[..., n_rot:])


def _attention_ref(q, k, v, pos0, n_kv):
    t, h, d = q.shape
    hkv = k.shape[0]
    out = np.zeros((t, h, d))
    for ti in range(t):
        n = min(pos0 + ti + 1, n_kv)
        for hi in range(h):
            kh = hi // (h // hkv)
            s = (k[kh, :n].astype(np.float64) @ q[ti, hi].astype(np.float64)) / np.sqrt(d)
            p = np.exp(s - s.max())
            out[ti, hi] = (p / p.sum()) @ v[kh, :n].astype(np.float64)
    return out


@pytest.mark.parametrize("t,h,hkv,d,pos0", [(1, 20, 5, 128, 40), (3, 4, 4, 64, 0), (17, 6, 2, 16, 5), (1, 2, 1, 8, 0)])
def test_attention(isa, threads, t, h, hkv, d, pos0):
    rng = _rng("attn", t, h, d, pos0)
    s = pos0 + t + 3
    q = rng.standard_normal((t, h, d)).astype(np.float32)
    k = rng.standard_normal((hkv, s, d)).astype(np.float16)
    v = rng.standard_normal((hkv, s, d)).astype(np.float16)
    n_kv = pos0 + t
    got = bk.attention(q, k, v, pos0, n_kv)
    np.testing.assert_allclose(got, _attention_ref(q, k, v, pos0, n_kv), rtol=0, atol=2e-6)


@pytest.mark.parametrize("t,d,pos0", [(1, 128, 40), (1, 128, 2047), (5, 64, 3), (2, 80, 17), (1, 24, 0), (3, 256, 9)])
def test_attention_gqa4_same_bits_as_one_head_at_a_time(isa, threads, t, d, pos0):
    """Four heads a KV head run as one job that converts each K / V row once (VNNI); every head's result has
    the bits of the same head computed alone (the KV heads repeated, one head a KV head)."""
    rng = _rng("attn-g4", t, d, pos0)
    h, hkv, s = 8, 2, pos0 + t + 2
    q = rng.standard_normal((t, h, d)).astype(np.float32)
    k = rng.standard_normal((hkv, s, d)).astype(np.float16)
    v = rng.standard_normal((hkv, s, d)).astype(np.float16)
    got = bk.attention(q, k, v, pos0, pos0 + t)
    alone = bk.attention(q, np.repeat(k, 4, axis=0), np.repeat(v, 4, axis=0), pos0, pos0 + t)
    np.testing.assert_array_equal(got.view(np.uint32), alone.view(np.uint32))
    np.testing.assert_allclose(got, _attention_ref(q, k, v, pos0, pos0 + t), rtol=0, atol=2e-6)


def test_softmax(isa, threads):
    rng = _rng("softmax")
    x = (rng.standard_normal((5, 301)) * 20).astype(np.float32)
    ref = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    ref /= ref.sum(axis=1, keepdims=True)
    got = bk.softmax(x.copy())
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-12)  # tiny p: float32 (x - max) rounding


@pytest.mark.parametrize("shape", [(1, 6912), (3, 17), (5,)])
def test_relu2_and_silu_mul(isa, shape):
    rng = _rng("act", shape)
    g = (rng.standard_normal(shape) * 4).astype(np.float32)
    g.reshape(-1)[:3] = [0.0, -90.0, 90.0]  # exp over/underflow edges
    u = rng.standard_normal(shape).astype(np.float32)
    r = np.maximum(g, np.float32(0))
    np.testing.assert_array_equal(bk.relu2_mul(g, u), ((r * r).astype(np.float32) * u).astype(np.float32))
    gd = g.astype(np.float64)
    ref = gd / (1 + np.exp(-gd)) * u
    out = np.empty_like(g)
    assert bk.silu_mul(g, u, out=out) is out
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=1e-30)
