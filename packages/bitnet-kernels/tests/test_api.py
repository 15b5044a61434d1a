"""Bad input gets a KernelError naming the problem; the ISA and thread controls do what they say."""

import numpy as np
import pytest

import bitnet_kernels as bk
from bitnet_kernels import KernelError
from bitnet_quantization import BitNetError, i2s_pack

pytestmark = pytest.mark.fast


def test_kernel_error_is_a_bitnet_error_and_value_error():
    assert issubclass(KernelError, BitNetError) and issubclass(KernelError, ValueError)


def test_cpu_info_reports_features_and_path():
    info = bk.cpu_info()
    assert info["isa"] in ("avx512vnni", "avx2", "portable")
    assert info["isa"] in info["available_isa"] and "portable" in info["available_isa"]
    assert set(info["features"]) >= {"avx2", "avx512vnni", "f16c"}


def test_force_isa_switches_and_rejects_unknown():
    old = bk.force_isa("portable")
    try:
        assert bk.cpu_info()["isa"] == "portable"
        with pytest.raises(KernelError, match="unknown ISA path"):
            bk.force_isa("neon")
    finally:
        bk.force_isa(old)
    assert bk.cpu_info()["isa"] == old


def test_threads():
    old = bk.get_num_threads()
    try:
        bk.set_num_threads(3)
        assert bk.get_num_threads() == 3
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(KernelError, match="positive integer"):
                bk.set_num_threads(bad)
    finally:
        bk.set_num_threads(old)


def test_i2s_linear_rejects_bad_arguments():
    w = i2s_pack(np.zeros((4, 128), np.int8), 1.0)
    x = np.zeros((1, 128), np.float32)
    with pytest.raises(KernelError, match="multiple of 128"):
        bk.i2s_linear(w, 4, 100, x)
    with pytest.raises(KernelError, match="bytes"):
        bk.i2s_linear(w[:-1], 4, 128, x)
    with pytest.raises(KernelError, match="dtype float32"):
        bk.i2s_linear(w, 4, 128, x.astype(np.float64))
    with pytest.raises(KernelError, match="C-contiguous"):
        bk.i2s_linear(w, 4, 128, np.zeros((128, 2), np.float32).T[:1])
    with pytest.raises(KernelError, match=r"shape \(T, 128\)"):
        bk.i2s_linear(w, 4, 128, np.zeros((1, 256), np.float32))
    with pytest.raises(KernelError, match="shape"):
        bk.i2s_linear(w, 4, 128, x, out=np.zeros((1, 5), np.float32))
    with pytest.raises(KernelError, match="read-only"):
        out = np.zeros((1, 4), np.float32)
        out.flags.writeable = False
        bk.i2s_linear(w, 4, 128, x, out=out)


def test_tq_and_head_reject_bad_arguments():
    x = np.zeros((1, 256), np.float32)
    with pytest.raises(KernelError, match="qtype"):
        bk.tq_linear(np.zeros(66, np.uint8), "Q4_0", 1, 256, x)
    with pytest.raises(KernelError, match="66 bytes"):
        bk.tq_linear(np.zeros(54, np.uint8), "TQ2_0", 1, 256, x)
    with pytest.raises(KernelError, match="dtype float16"):
        bk.f16_gemv(np.zeros((3, 256), np.float32), x)
    with pytest.raises(KernelError, match="KV heads"):
        bk.attention(np.zeros((1, 3, 8), np.float32), np.zeros((2, 4, 8), np.float16), np.zeros((2, 4, 8), np.float16), 0, 1)
    with pytest.raises(KernelError, match="n_rot"):
        bk.rope_neox(np.zeros((1, 2, 8), np.float32), np.zeros(1, np.int32), 10000.0, 3)


def test_stream_read_bandwidth_is_positive():
    assert bk.stream_read_bandwidth(1 << 22, threads=1, reps=1) > 0


def test_concurrent_callers_get_correct_results():
    """Kernels release the GIL; the decode thread pool serializes concurrent jobs instead of mixing them."""
    import threading

    from bitnet_quantization.matmul import i2s_linear as ref_linear

    rng = np.random.default_rng(0)
    w = rng.integers(-1, 2, size=(300, 512)).astype(np.int8)
    raw = i2s_pack(w, 0.5)
    xs = [rng.standard_normal((1, 512)).astype(np.float32) for _ in range(4)]
    refs = [ref_linear(w, np.float32(0.5), x) for x in xs]
    old = bk.get_num_threads()
    bk.set_num_threads(2)
    errors = []

    def worker(i):
        for _ in range(50):
            if not np.array_equal(bk.i2s_linear(raw, 300, 512, xs[i]), refs[i]):
                errors.append(i)

    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        bk.set_num_threads(old)
    assert errors == []
