"""GPU kernels against the numpy oracles: exact integer dots, bit-equal W2A8 linears, F16 head.

Skipped (with the reason printed) where pycuda or a CUDA device is missing; they run on the device machine
through tools/run_gpu_device.sh.
"""

import numpy as np
import pytest

from bitnet_quantization import i2s_pack, quantize_act_i8
from bitnet_quantization.matmul import i2s_linear as i2s_linear_ref
from bitnet_quantization.matmul import ternary_dot_i32

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def gpu():
    from bitnet_kernels.gpu import gpu_status

    ok, why = gpu_status()
    if not ok:
        pytest.skip(f"no GPU: {why}")
    from bitnet_kernels.gpu import get_runtime

    return get_runtime()


def ternary(rng, n, k):
    return rng.integers(-1, 2, size=(n, k), dtype=np.int8)


@pytest.mark.parametrize("mma", [True, False], ids=["mma", "dp4a"])
@pytest.mark.parametrize("n,k", [(64, 256), (640, 2560), (96, 6912), (8, 128), (2560, 2560), (200, 192), (9, 384)])
@pytest.mark.parametrize("t", [1, 3, 8, 13, 70])
def test_ternary_gemm_exact(n, k, t, mma, monkeypatch):
    """Both batched paths (int8 tensor cores where K % 128 == 0, dp4a) and the one-token GEMV: exact."""
    from bitnet_kernels.gpu import ops

    monkeypatch.setattr(ops, "MMA", mma)
    rng = np.random.default_rng(n * 7 + k + t)
    w = ternary(rng, n, k)
    q = rng.integers(-128, 128, size=(t, k), dtype=np.int16).astype(np.int8)
    m = ops.TernaryMatrix(n, k)
    m.load_codes(w)
    m.finish()
    got = ops.ternary_gemm_i32(m, q)
    assert got.dtype == np.int32 and got.shape == (t, n)
    np.testing.assert_array_equal(got, ternary_dot_i32(w, q))


@pytest.mark.parametrize("mma", [True, False], ids=["mma", "dp4a"])
def test_ternary_gemm_extreme_activations(mma, monkeypatch):
    """All -128 / +127 activations against all -1 / +1 rows: the largest sums are still exact."""
    from bitnet_kernels.gpu import ops

    monkeypatch.setattr(ops, "MMA", mma)

    k = 6912
    w = np.stack([np.full(k, -1, np.int8), np.full(k, 1, np.int8), np.zeros(k, np.int8)] * 3)
    q = np.stack([np.full(k, -128, np.int8), np.full(k, 127, np.int8)])
    m = ops.TernaryMatrix(w.shape[0], k)
    m.load_codes(w)
    m.finish()
    np.testing.assert_array_equal(ops.ternary_gemm_i32(m, q), ternary_dot_i32(w, q))


def test_repack_row_map_places_rows():
    """load_i2s with a row map writes source row r to destination row map[r] (the fused QKV / gate-up)."""
    from bitnet_kernels.gpu import ops

    rng = np.random.default_rng(5)
    a, b = ternary(rng, 16, 256), ternary(rng, 16, 256)
    m = ops.TernaryMatrix(32, 256)
    m.load_i2s(i2s_pack(a.reshape(-1), 0.5), 16, 2 * np.arange(16), 0.5)
    m.load_i2s(i2s_pack(b.reshape(-1), 0.25), 16, 2 * np.arange(16) + 1, 0.25)
    m.finish()
    q = rng.integers(-128, 128, size=(2, 256), dtype=np.int16).astype(np.int8)
    full = np.empty((32, 256), np.int8)
    full[0::2], full[1::2] = a, b
    np.testing.assert_array_equal(ops.ternary_gemm_i32(m, q), ternary_dot_i32(full, q))
    assert m.ws_host[0] == np.float32(0.5) and m.ws_host[1] == np.float32(0.25)


@pytest.mark.parametrize("t", [1, 5, 16])
def test_activation_quantization_bit_equal(t):
    from bitnet_kernels.gpu import ops

    rng = np.random.default_rng(t)
    x = (rng.standard_normal((t, 2560)) * rng.uniform(0.01, 30, size=(t, 1))).astype(np.float32)
    x[0, :7] = [0.5, 1.5, -2.5, 2.5, 126.5, -0.5, 3.5]  # exact halves: rounding must go to even
    q, s, qsum = ops.quantize_rows(x)
    ref = quantize_act_i8(x)
    np.testing.assert_array_equal(q, ref.q)
    np.testing.assert_array_equal(s, ref.scale)
    np.testing.assert_array_equal(qsum, ref.qsum)


@pytest.mark.parametrize("t", [1, 9, 100])
def test_i2s_linear_bit_equal_to_oracle(t):
    from bitnet_kernels.gpu import ops

    rng = np.random.default_rng(11 + t)
    n, k = 384, 2560
    w = ternary(rng, n, k)
    scale = np.float32(0.0371)
    x = rng.standard_normal((t, k)).astype(np.float32)
    m = ops.TernaryMatrix(n, k)
    m.load_codes(w, float(scale))
    m.finish()
    got = ops.i2s_linear(m, x)
    np.testing.assert_array_equal(got, i2s_linear_ref(w, scale, x))


@pytest.mark.parametrize("t", [1, 4, 11])
def test_f16_head_matches_float64(t):
    from bitnet_kernels.gpu import ops

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((1000, 2560)) * 0.05).astype(np.float16)
    x = rng.standard_normal((t, 2560)).astype(np.float32)
    got = ops.f16_matmul(w, x)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5


def rmsnorm_fast(x, w, eps):
    """bitnet_inference's fast-numerics RMSNorm (mean square in float64, then float32)."""
    ms = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    scale = (np.float32(1.0) / np.sqrt(ms.astype(np.float32) + np.float32(eps))).astype(np.float32)
    return (x * scale) * w


@pytest.mark.parametrize("k", [2560, 6912])
def test_fused_norm_decode_matches_oracle(k):
    """The decode matmul with RMSNorm + quantization fused into each block equals norm -> i2s_linear in numpy
    (up to the order of the float64 sum of squares) and the batched two-kernel path on the GPU."""
    from bitnet_kernels.gpu import ops

    rng = np.random.default_rng(k)
    n = 520
    w = ternary(rng, n, k)
    scale = np.float32(0.021)
    x = (rng.standard_normal(k) * 3).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, k).astype(np.float32)
    m = ops.TernaryMatrix(n, k)
    m.load_codes(w, float(scale))
    m.finish()
    got = ops.decode_linear(m, x, nw, 1e-5)
    ref = i2s_linear_ref(w, scale, rmsnorm_fast(x[None], nw, 1e-5))[0]
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()
    two = ops.norm_linear(m, x[None], nw, 1e-5)[0]
    assert np.abs(got - two).max() <= 1e-6 * np.abs(ref).max()


def _decode_case(seed, k, x_kind):
    """A 777-row random ternary matrix of width k (scale 0.03) on the device and a row of kind x_kind for it
    (_decode_row), from one seed: (matrix, x, nw)."""
    from bitnet_kernels.gpu import ops

    rng = np.random.default_rng(seed)
    w = ternary(rng, 777, k)
    x, nw = _decode_row(rng, k, x_kind)
    m = ops.TernaryMatrix(777, k)
    m.load_codes(w, 0.03)
    m.finish()
    return m, x, nw


def _decode_row(rng, k, x_kind):
    """A decode kernel's input row x and norm weight nw (K floats each) of one kind: "normal" (random); "ties" (every
    |x * nw| the same: each warp has many candidates for the maximum); "zeros" (but a few); "spike", "pair", "spread"
    (two values within 2^-20 of each other after * nw, in one thread, two threads of one warp, two warps); "inverted"
    (see _inverted_pair); "nan", "inf" (one element)."""
    x = (rng.standard_normal(k) * 2).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, k).astype(np.float32)
    if x_kind == "ties":
        x = np.where(rng.random(k) < 0.5, -1.0, 1.0).astype(np.float32)
        nw = np.full(k, 0.75, np.float32)
    elif x_kind == "zeros":
        x[rng.random(k) < 0.99] = 0.0
    elif x_kind in ("spike", "pair", "spread"):
        i, j = {"spike": (k // 3, k // 3 + 1), "pair": (4, 8), "spread": (4, k - 1)}[x_kind]
        x[i], x[j] = 1e4, -9999.999
        nw[j] = nw[i]
    elif x_kind == "inverted":
        _inverted_pair(x, nw, 1e-5, rng)
    elif x_kind == "nan":
        x[k // 2] = np.nan
    elif x_kind == "inf":
        x[k // 2] = -np.inf
    return x, nw


@pytest.mark.parametrize("k", [256, 2560, 6912])
@pytest.mark.parametrize("x_kind", ["normal", "ties", "zeros", "spike", "pair", "spread"])
def test_decode_hoisted_loads_bit_equal(k, x_kind, monkeypatch):
    """The decode matmul that issues its prologue-independent loads first (tdech_*: redux.sync reductions;
    tdechs_*: shuffles) gives the same bits as the one that loads them after the prologue (tdec_*), with the weight
    rows copied into shared memory first (tdechw_*, tdechsw_*), asked into L2 first or neither, with 8, 16, 27 and
    32 warps a block (the int8 row in planes: K / 64 chunks of 16 bytes a plane, 256 .. 6912). Inputs: random; every |x * w|
    the same; zeros but a few; two near-equal largest |x * w| in one thread, in two threads of one warp, in two
    warps (ties for the redux.sync maximum on the bits)."""
    from bitnet_kernels.gpu import ops

    m, x, nw = _decode_case(k + 1, k, x_kind)
    outs = []
    for hoist, prologue, ahead in ((True, "redux", None), (False, "redux", None), (True, "shfl", None),
                                   (True, "redux", "smem"), (True, "redux", "l2"), (True, "shfl", "smem"),
                                   (True, "redux", "none"), (True, "shfl", "l2"), (True, "redux", "smem")):
        monkeypatch.setattr(ops, "DEC_HOIST", hoist)
        monkeypatch.setattr(ops, "DEC_PROLOGUE", prologue)
        outs.append(ops.decode_linear(m, x, nw, 1e-5, warps=(8, 16, 27, 32)[len(outs) % 4], ahead=ahead))
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    for warps in (5, 16, 27):  # two rows (pairs) a warp, the weights copied into shared memory first
        for prologue in ("redux", "shfl"):
            monkeypatch.setattr(ops, "DEC_PROLOGUE", prologue)
            np.testing.assert_array_equal(ops.decode_linear(m, x, nw, 1e-5, warps=warps, ahead="smem", upw=2),
                                          outs[0])


def _inverted_pair(x, nw, eps, rng):
    """Make elements i and j of the row the two largest, with |fl(x_i nw_i)| > |fl(x_j nw_j)| but, normalized,
    |fl(fl(x_j s) nw_j)| > |fl(fl(x_i s) nw_i)| (s the row's RMS scale): a prologue that took the maximum before
    the normalization would pick the wrong element. Returns (i, j)."""
    k = len(x)
    i, j = k // 5, k - 3
    f = np.float32
    for _ in range(100000):  # x_j nw_j within a few ulp below x_i nw_i: about 1 try in 300 inverts
        x[i], nw[i], x[j] = f(rng.uniform(900, 1100)), f(rng.uniform(0.8, 1.2)), f(rng.uniform(900, 1100))
        nw[j] = np.nextafter(f(float(x[i]) * float(nw[i]) / float(x[j])), f(0))
        for _ in range(int(rng.integers(0, 3))):
            nw[j] = np.nextafter(nw[j], f(2))
        s = f(1.0) / np.sqrt(f(np.mean(np.square(x, dtype=np.float64))) + f(eps))
        gi, gj = abs(f(x[i] * nw[i])), abs(f(x[j] * nw[j]))
        ti, tj = abs(f(f(x[i] * s) * nw[i])), abs(f(f(x[j] * s) * nw[j]))
        if gi > gj and tj > ti:
            return i, j
    raise AssertionError("no inverted pair found")


@pytest.mark.parametrize("k", [256, 2560, 6912])
@pytest.mark.parametrize("x_kind", ["normal", "ties", "zeros", "spike", "pair", "spread", "inverted", "nan", "inf"])
def test_decode_programmatic_kernel_bit_equal(k, x_kind):
    """The programmatic-dependent decode kernel (tdechp_*, launched alone: its wait returns at once) gives the
    bits of the plain hoisted kernel: on random rows, ties, zeros, near-equal largest elements, a pair whose order
    the normalization inverts, and rows with a NaN or an infinity."""
    from bitnet_kernels.gpu import ops

    m, x, nw = _decode_case(k + 3, k, x_kind)
    warps = ops.pdl_warps(ops.get_runtime(), m, "f32")
    ref = ops.decode_linear(m, x, nw, 1e-5, warps=8, hoist=True)
    np.testing.assert_array_equal(ops.decode_linear(m, x, nw, 1e-5, warps=warps, pdl=True), ref)


def test_decode_staged_rows_past_shared_memory_fall_back():
    """A block whose weight rows would not fit in shared memory next to its 9 K bytes (K = 9344, 32 warps of two
    rows: 234 KB) asks them into L2 with a row a warp instead, with the same bits."""
    from bitnet_kernels.gpu import ops

    rng = np.random.default_rng(7)
    n, k = 200, 9344
    w = ternary(rng, n, k)
    x = (rng.standard_normal(k) * 2).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, k).astype(np.float32)
    m = ops.TernaryMatrix(n, k)
    m.load_codes(w, 0.03)
    m.finish()
    np.testing.assert_array_equal(ops.decode_linear(m, x, nw, 1e-5, warps=32, ahead="smem", upw=2),
                                  ops.decode_linear(m, x, nw, 1e-5, warps=8, ahead="none"))


def test_decode_two_rows_a_warp_needs_smem():
    from bitnet_kernels.gpu import ops
    from bitnet_kernels.gpu.errors import GPUError

    m = ops.TernaryMatrix(64, 256)
    m.load_codes(np.zeros((64, 256), np.int8), 1.0)
    m.finish()
    with pytest.raises(GPUError, match="shared memory"):
        ops.decode_linear(m, np.ones(256, np.float32), np.ones(256, np.float32), 1e-5, ahead="l2", upw=2)
    with pytest.raises(GPUError, match="1 or 2"):
        ops.decode_linear(m, np.ones(256, np.float32), np.ones(256, np.float32), 1e-5, ahead="smem", upw=3)


def attention_ref(q, kc, vc, nk, n_head, n_kv):
    """One token's attention in float64 over keys 0..nk-1 (q (n_head, d) rounded through f16 as the kernels do):
    the causal reference for the token at position nk - 1."""
    return causal_attention_ref(q[None], kc, vc, nk - 1, n_head, n_kv)[0]


@pytest.mark.parametrize("d", [64, 128, 256])
def test_split_attention_matches_float64(d):
    """The one-token attention split over key blocks (attn_split: partials, the last block of a head combines
    and resets its counter) against float64, at key counts around the block size, several times in a row (the
    counter must be back at 0), and against the one-block kernel; the cluster kernel (attn_splitc: the splits of
    up to 512 keys, from 257 keys one split of ceil(keys / 8) a block, combined through distributed shared memory) gives
    the same bits."""
    from bitnet_kernels.gpu import get_runtime, ops

    rt = get_runtime()
    rng = np.random.default_rng(d)
    n_head, n_kv, n_ctx = 8, 2, 1100
    splits = -(-n_ctx // 256) * 8  # whole clusters of 8 (attn_splitc)
    kc = (rng.standard_normal((n_kv, n_ctx, d)) * 0.5).astype(np.float16)
    vc = rng.standard_normal((n_kv, n_ctx, d)).astype(np.float16)
    dk, dv = ops.to_gpu(kc), ops.to_gpu(vc)
    part = ops.gpu_empty((n_head * splits * (d + 2),), np.float32)
    cnt = ops.to_gpu(np.zeros(n_head, np.uint32))
    out = ops.gpu_empty((n_head * d,), np.float32)
    out1 = ops.gpu_empty((n_head * d,), np.float32)
    p = ops.ptr
    smem = {"attn_split": 2 * 64 * (d + 8) * 2 + 4096, "attn_splitc": 2 * 64 * (d + 8) * 2 + 4096}
    sig = ops.SIG_ATTN_SPLIT
    for name in smem:  # static + dynamic > 48 KB (attn_split too at head_dim 256)
        ops._allow_smem(rt, name, sig, smem[name])
    for nk in (1, 31, 32, 33, 64, 100, 256, 257, 289, 480, 512, 513, 1100):
        q = rng.standard_normal((n_head, d)).astype(np.float32)
        dq, dpos = ops.to_gpu(q), ops.to_gpu(np.array([nk - 1], np.int32))
        ref = attention_ref(q, kc, vc, nk, n_head, n_kv)
        got = []
        # global partials (twice: the counters are back at 0), then clusters (attn_splitc, up to 512 keys)
        for name in ("attn_split", "attn_split", "attn_splitc"):
            out.fill(np.float32(np.nan))
            rt.launch(name, sig, (n_head, splits), (128, 1, 1), p(dq), p(dk), p(dv), p(out),
                      p(part), p(cnt), np.int32(n_head), np.int32(n_kv), np.int32(d), np.int32(n_ctx), p(dpos),
                      np.intp(0), shared=smem[name])
            rt.sync()
            got.append(out.get().reshape(n_head, d))
        for g in got[1:]:
            np.testing.assert_array_equal(g, got[0])
        assert (cnt.get() == 0).all()
        err = np.linalg.norm(got[0] - ref) / np.linalg.norm(ref)
        assert err < 1e-5, (nk, err)
        ops.attention_launch(rt, dq, dk, dv, out1, n_head, n_kv, d, n_ctx, 1, dpos)
        rt.sync()
        one = out1.get().reshape(n_head, d)
        assert np.linalg.norm(got[0] - one) / np.linalg.norm(one) < 1e-5


def causal_attention_ref(q, kc, vc, pos0, n_head, n_kv):
    """Prompt attention in float64: query i (position pos0 + i) over keys 0 .. pos0 + i (q rounded through f16
    as the kernels do); q (T, n_head, d) -> (T, n_head, d)."""
    t, _, d = q.shape
    nk = pos0 + t
    out = np.zeros(q.shape)
    mask = np.arange(nk)[None, :] > (pos0 + np.arange(t))[:, None]
    for h in range(n_head):
        kh = h // (n_head // n_kv)
        s = q[:, h].astype(np.float16).astype(np.float64) @ kc[kh, :nk].astype(np.float64).T / np.sqrt(d)
        s[mask] = -np.inf
        p = np.exp(s - s.max(1, keepdims=True))
        out[:, h] = (p / p.sum(1, keepdims=True)) @ vc[kh, :nk].astype(np.float64)
    return out


@pytest.mark.parametrize("f16_p", [False, True], ids=["split_p", "f16_p"])
@pytest.mark.parametrize("d,n_head,n_kv,t,pos0", [
    (128, 8, 2, 77, 0), (128, 20, 5, 512, 0), (128, 20, 5, 100, 300), (128, 4, 4, 2, 0), (128, 4, 4, 130, 37),
    (64, 4, 4, 33, 100), (64, 8, 2, 70, 0), (64, 16, 2, 19, 5), (64, 12, 4, 65, 64), (256, 4, 2, 50, 9)])
def test_flash_prefill_attention(d, n_head, n_kv, t, pos0, f16_p):
    """The tiled tensor-core prompt attention (flash_attn_d*) against float64 and the one-block-a-(head, query)
    `attention` kernel: ragged T, pos0 > 0, GQA 8:1 / 4:1 / 3:1 / 2:1 / 1:1. Bounds, as multiples of max|v|: the
    old kernel (f32 P) 1e-5 of float64 (measured <= 1.7e-6). The default (P as hi + lo f16 halves: ~22 bits, each
    weight off by at most 2^-22 relative or 2^-25 absolute in f16's subnormal range, so at most ~1e-5 over 600 keys
    in the worst case; f32 dots and sums ~1e-6): 2e-5. With P rounded to f16 once (f16_p: relative error at most
    2^-11 a weight, normalized by the sum of the rounded weights, so the output moves by at most
    ~2 * 2^-11 * max|v| ~ 1e-3 * max|v|): 1e-3. The cache past the prompt holds NaN (never read: the block's rows
    past its keys are zero in shared memory); rows of out past T stay untouched."""
    from bitnet_kernels.gpu import get_runtime, ops

    assert ops.flash_supported(n_head, n_kv, d)
    rt = get_runtime()
    rng = np.random.default_rng(d * 1000 + t + pos0)
    n_ctx = pos0 + t + 40
    kc = (rng.standard_normal((n_kv, n_ctx, d)) * 1.5).astype(np.float16)
    vc = rng.standard_normal((n_kv, n_ctx, d)).astype(np.float16)
    kc[:, pos0 + t :] = np.nan
    vc[:, pos0 + t :] = np.nan
    q = rng.standard_normal((t, n_head, d)).astype(np.float32)
    q[t // 2, 0] *= 8  # a peaked row: one key takes most of the weight
    dq, dk, dv = ops.to_gpu(q), ops.to_gpu(kc), ops.to_gpu(vc)
    dpos = ops.to_gpu(np.array([pos0], np.int32))
    out = ops.to_gpu(np.full((t + 3, n_head * d), np.nan, np.float32))
    ops.flash_attention_launch(rt, dq, dk, dv, out, n_head, n_kv, d, n_ctx, t, dpos, f16_p=f16_p)
    rt.sync()
    res = out.get()
    assert np.isnan(res[t:]).all()
    got = res[:t].reshape(t, n_head, d)
    ref = causal_attention_ref(q, kc, vc, pos0, n_head, n_kv)
    vmax = float(np.abs(vc[:, : pos0 + t].astype(np.float32)).max())
    err = float(np.abs(got - ref).max())
    out1 = ops.gpu_empty((t * n_head * d,), np.float32)
    ops.attention_launch(rt, dq, dk, dv, out1, n_head, n_kv, d, n_ctx, t, dpos)
    rt.sync()
    old = out1.get().reshape(t, n_head, d)
    err_old = float(np.abs(old - ref).max())
    diff = float(np.abs(got - old).max())
    print(f"flash attention{' f16 P' if f16_p else ''} d {d} heads {n_head}/{n_kv} T {t} pos0 {pos0}: max |flash - "
          f"f64| {err:.2e}, |flash - attention| {diff:.2e}, |attention - f64| {err_old:.2e}, max|v| {vmax:.2f}")
    bound = (1e-3 if f16_p else 2e-5) * vmax
    assert err_old <= 1e-5 * vmax
    assert err <= bound
    assert diff <= bound
    # the same bits again (no state between launches)
    ops.flash_attention_launch(rt, dq, dk, dv, out, n_head, n_kv, d, n_ctx, t, dpos, f16_p=f16_p)
    rt.sync()
    np.testing.assert_array_equal(out.get()[:t].reshape(t, n_head, d), got)


@pytest.mark.parametrize("t", [1, 5, 9])
def test_q8_head_matches_cpu_q8_head(t):
    """The int8 LM head on the device: the same int8 rows and scales as bitnet_kernels.cpu.q8_head_prepare and
    the same logits as the CPU q8 head (exact integer dots, the same float expression)."""
    from bitnet_kernels import cpu
    from bitnet_kernels.gpu import ops

    rng = np.random.default_rng(t + 40)
    w = (rng.standard_normal((1003, 2560)) * 0.05).astype(np.float16)
    w[7] = 0  # a zero row: q 0, scale 0
    x = rng.standard_normal((t, 2560)).astype(np.float32)
    got, q, scale = ops.q8_head_matmul(w, x)
    q_ref, scale_ref = cpu.q8_head_prepare(w)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(scale, scale_ref)
    ref = cpu.q8_head_gemv(q_ref, scale_ref, x)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("v,k", [(6001, 256), (20000, 2560)])
def test_certified_head_argmax_is_the_f16_argmax(v, k):
    """The certified greedy head (head_norm_q8c, q8c_head, q8c_rescore) gives the argmax key of the F16 head
    (rmsnorm_f32 with f16 rounding, then f16_head_argmax), bit for bit, on random rows, rows tied exactly (the
    first index wins), rows a few f16 ulps apart, a zero row, and inputs from flat to one spike; it rescored far
    fewer rows than the head has (the count is printed). The top-k head's candidates (k = 1, 40, 300) hold every
    row at or above the k-th largest F16 logit, with the F16 head's bits."""
    from bitnet_kernels.gpu import get_runtime, ops

    rt = get_runtime()
    rng = np.random.default_rng(v + k)
    w = (rng.standard_normal((v, k)) * 0.05).astype(np.float16)
    w[v // 2] = w[v // 3]  # an exact tie: index v // 3 must win where they lead
    w[v // 4] = w[100]
    w[v // 4, :8] += np.float16(0.001)  # nearly tied
    w[17] = 0
    nw = rng.uniform(0.5, 1.5, k).astype(np.float32)
    dw, dnw = ops.to_gpu(w), ops.to_gpu(nw)
    q, scale = ops.q8_head_prepare(rt, dw, v, k)
    wn, ewn = ops.q8c_prepare(rt, dw, q, scale, v, k)
    p = ops.ptr
    hn, hn2 = ops.gpu_empty((k,), np.float32), ops.gpu_empty((k,), np.float32)
    xq, s, hx = ops.gpu_empty((k,), np.int8), ops.gpu_empty((1,), np.float32), ops.gpu_empty((2,), np.float32)
    ub, logits, logits2 = (ops.gpu_empty((v,), np.float32) for _ in range(3))
    keys = ops.gpu_empty((6,), np.uint32)  # the F16 head's argmax key, the certified one's, its bound key
    ncand = ops.gpu_empty((1,), np.uint32)
    lo, hist = ops.gpu_empty((v,), np.float32), ops.gpu_empty((2048,), np.uint32)
    maxc = v  # room for every row
    lst = ops.gpu_empty((1 + 2 * maxc,), np.uint32)
    counts, counts_k = [], []
    for trial in range(13):
        x = (rng.standard_normal(k) * (0.1 if trial % 3 == 0 else 3.0)).astype(np.float32)
        if trial % 4 == 1:  # steer towards the tied rows
            x = (w[v // 3].astype(np.float32) * 40 + x * 0.1).astype(np.float32)
        if trial % 4 == 2:
            x = (w[100].astype(np.float32) * 40).astype(np.float32)
        if trial == 11:
            x[:] = 0
            x[5] = 1e3
        if trial == 12:  # a broken hidden state: NaN logits; every row is rescored, the key is still the F16 one
            x[3] = np.inf
        dx = ops.to_gpu(x)
        rt.cuda.memset_d32(keys.gpudata, 0, 6)
        rt.cuda.memset_d32(ncand.gpudata, 0, 1)
        rt.launch("rmsnorm_f32", "PPifPi", (1, 1), (1024, 1, 1), p(dx), p(dnw), np.int32(k), np.float32(1e-5),
                  p(hn), np.int32(1))
        rt.launch("f16_head_argmax", "PiiPPP", ((v + 7) // 8, 1), (256, 1, 1), p(dw), np.int32(v), np.int32(k),
                  p(hn), p(logits), p(keys))
        key2 = np.intp(int(keys.gpudata) + 8)
        rt.launch("head_norm_q8c", "PPifPPPP", (1, 1), (1024, 1, 1), p(dx), p(dnw), np.int32(k), np.float32(1e-5),
                  p(hn2), p(xq), p(s), p(hx))
        rt.launch("q8c_head", "PiiPPPPPPPPP", ((v + 7) // 8, 1), (256, 1, 1), p(q), np.int32(v), np.int32(k),
                  p(xq), p(s), p(scale), p(wn), p(ewn), p(hx), p(ub), np.intp(int(keys.gpudata) + 16), np.intp(0))
        rt.launch("q8c_rescore", "PiiPPPPPP", ((v + 255) // 256, 1), (256, 1, 1), p(dw), np.int32(v), np.int32(k),
                  p(hn2), p(ub), np.intp(int(keys.gpudata) + 16), p(logits2), key2, p(ncand))
        rt.sync()
        np.testing.assert_array_equal(hn2.get(), hn.get())
        kk = keys.get()
        assert kk[0] or kk[1]
        assert (kk[0], kk[1]) == (kk[2], kk[3]), trial
        if trial == 12:
            assert int(ncand.get()[0]) == v
            continue
        full = logits.get()
        top = int(np.argmax(full))
        assert 0xFFFFFFFF - int(kk[0]) == top  # the key's index: the first of the largest logits
        # the top-k head (q8c_head's lower bounds, q8c_hist, q8c_thresh, q8c_collect): every row at or above the
        # k-th largest F16 logit is a candidate, with the F16 head's bits
        for kk_ in (1, 40, 300):
            rt.cuda.memset_d32(keys.gpudata, 0, 6)
            rt.cuda.memset_d32(hist.gpudata, 0, hist.size)
            rt.cuda.memset_d32(lst.gpudata, 0, 1)
            dk = ops.to_gpu(np.array([kk_], np.int32))
            rt.launch("q8c_head", "PiiPPPPPPPPP", ((v + 7) // 8, 1), (256, 1, 1), p(q), np.int32(v), np.int32(k),
                      p(xq), p(s), p(scale), p(wn), p(ewn), p(hx), p(ub), np.intp(int(keys.gpudata) + 16), p(lo))
            rt.launch("q8c_hist", "PiP", (min(132, (v + 1023) // 1024), 1), (1024, 1, 1), p(lo), np.int32(v), p(hist))
            rt.launch("q8c_thresh", "PPP", (1, 1), (32, 1, 1), p(hist), p(dk), np.intp(int(keys.gpudata) + 20))
            rt.launch("q8c_collect", "PiiPPPPPi", ((v + 255) // 256, 1), (256, 1, 1), p(dw), np.int32(v), np.int32(k),
                      p(hn2), p(ub), np.intp(int(keys.gpudata) + 20), p(logits2), p(lst), np.int32(maxc))
            rt.sync()
            got = lst.get()
            n = int(got[0])
            assert kk_ <= n <= maxc, (trial, kk_, n)
            rows, bits = got[1 : 1 + 2 * n : 2].astype(np.int64), got[2 : 2 + 2 * n : 2]
            assert len(set(rows.tolist())) == n
            np.testing.assert_array_equal(bits.view(np.float32), full[rows])
            kth = np.sort(full)[-kk_]
            assert set(np.flatnonzero(full >= kth).tolist()) <= set(rows.tolist())
            counts_k.append(n)
        if trial % 4 == 1 and full[v // 3] == full.max():
            assert top == v // 3
        counts.append(int(ncand.get()[0]))
    print(f"V={v} K={k}: rows rescored {counts}; top-k candidates (k = 1, 40, 300) {counts_k}")
    assert max(counts) < v // 4
