"""Cython SIMD CPU kernels for BitNet b1.58 inference (numpy in, numpy out, GIL released).

Threads: OpenMP, `num_threads` from `set_num_threads`. Waiting threads must not spin for long, or a second
process on the same cores makes every parallel region wait for a descheduled spinner (ggml's 2-thread decode
collapses that way). libgomp reads its wait policy once, when it is loaded, so it is set here before the
extension (and with it libgomp) is imported: GOMP_SPINCOUNT bounds the busy wait (then threads sleep on a
futex). Both are only defaults: a value already in the environment wins. If another library loaded libgomp
before this import, its settings apply instead.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from bitnet_kernels.cpu import (  # noqa: E402
    DecodePlan,
    Q8KActivations,
    QuantizedActivations,
    attention,
    cpu_info,
    f16_gemv,
    f16_round,
    force_isa,
    get_num_threads,
    i2s_gemm_i32,
    i2s_linear,
    i2s_linear_multi,
    q8_head_gemv,
    q8_head_prepare,
    quantize_act_i8,
    quantize_q8_k,
    relu2_mul,
    rmsnorm,
    rope_neox,
    set_decode_streams,
    set_num_threads,
    silu_mul,
    softmax,
    stream_read_bandwidth,
    tq_linear,
)
from bitnet_kernels.errors import KernelError  # noqa: E402

__all__ = [
    "DecodePlan",
    "KernelError",
    "Q8KActivations",
    "QuantizedActivations",
    "attention",
    "cpu_info",
    "f16_gemv",
    "f16_round",
    "force_isa",
    "get_num_threads",
    "i2s_gemm_i32",
    "i2s_linear",
    "i2s_linear_multi",
    "q8_head_gemv",
    "q8_head_prepare",
    "quantize_act_i8",
    "quantize_q8_k",
    "relu2_mul",
    "rmsnorm",
    "rope_neox",
    "set_decode_streams",
    "set_num_threads",
    "silu_mul",
    "softmax",
    "stream_read_bandwidth",
    "tq_linear",
]
