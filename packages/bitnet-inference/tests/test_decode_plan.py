"""The fused one-token step (bitnet_kernels.DecodePlan) gives the Python layer loop's bits: logits and KV cache,
on every ISA path, at 1 and 2 threads, for I2_S, TQ2_0 and the SiLU `bitnet` arch with its output scales."""

from pathlib import Path

import numpy as np
import pytest

import bitnet_kernels as bk
from bitnet_inference import Model
from bitnet_kernels.cpu import _available_isas

pytestmark = pytest.mark.fast

DATA = Path(__file__).resolve().parents[2] / "bitnet-models" / "src" / "bitnet_models" / "data"
MODELS = ["b158-a-i2s.gguf", DATA / "variants" / "bitnet-b1.58-tiny-tq2_0.gguf", DATA / "variants" / "bitnet-tiny-silu-tq2_0.gguf"]


@pytest.fixture(params=_available_isas())
def isa(request):
    old = bk.force_isa(request.param)
    yield request.param
    bk.force_isa(old)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", MODELS, ids=lambda p: Path(p).stem)
def test_plan_equals_python_loop(fixtures, isa, threads, name):
    path = fixtures / name if isinstance(name, str) else name
    old = bk.get_num_threads()
    bk.set_num_threads(threads)
    try:
        fused = Model(path, n_ctx=32)
        loop = Model(path, n_ctx=32)
        assert fused.net.plan is not None
        loop.net.plan = None
        toks = [1, 7, 3, 9, 4, 2, 11, 5, 6]
        np.testing.assert_array_equal(fused.forward(toks[:3], 0), loop.forward(toks[:3], 0))  # prefill: no plan
        for i, t in enumerate(toks[3:]):
            a, b = fused.forward([t], 3 + i), loop.forward([t], 3 + i)
            np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32), err_msg=f"step {i}")
        np.testing.assert_array_equal(fused.cache.k.view(np.uint16), loop.cache.k.view(np.uint16))
        np.testing.assert_array_equal(fused.cache.v.view(np.uint16), loop.cache.v.view(np.uint16))
    finally:
        bk.set_num_threads(old)


def test_plan_only_where_every_step_runs_in_kernels(fixtures):
    path = fixtures / "b158-a-i2s.gguf"
    assert Model(path, n_ctx=16, numerics="ggml").net.plan is None  # bit-faithful emulation stays in Python
    assert Model(path, n_ctx=16, kv_type="f32").net.plan is None
    assert Model(path, n_ctx=16, use_kernels=False).net.plan is None


def test_plan_checks_its_inputs(fixtures):
    m = Model(fixtures / "b158-a-i2s.gguf", n_ctx=16)
    a = m.args
    with pytest.raises(ValueError, match="position"):
        m.net.plan.step(np.zeros(a.n_embd, np.float32), 16, 0)
    with pytest.raises(ValueError):
        m.net.plan.step(np.zeros(a.n_embd + 1, np.float32), 0, 0)
    bad = [(L.attn_norm, L.attn_sub_norm, L.ffn_norm, L.ffn_sub_norm,
            [(L.proj[p].raw[:-1], 0, None) for p in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")])
           for L in m.net.layers]
    with pytest.raises(ValueError, match="bytes, expected"):
        bk.DecodePlan(bad, m.cache.k, m.cache.v, a.n_embd, a.n_ff, a.n_head, a.n_head_kv, a.head_dim, a.n_rot,
                      a.norm_eps, 10000.0, "relu2", False)


def test_f16_round_matches_numpy(isa):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal(20000).astype(np.float32) * s for s in (1e-8, 3e-6, 6e-5, 1.0, 3e4, 7e4)]
                       + [np.array([65504, 65519.99, 65520, 2.0**-25, 2.0**-24, 0.0, -0.0, np.inf, -np.inf], np.float32)])
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16)
    np.testing.assert_array_equal(bk.f16_round(x).view(np.uint16), ref.view(np.uint16))
    assert np.isnan(bk.f16_round(np.array([np.nan], np.float32))[0])
