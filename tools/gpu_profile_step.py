"""Run decode steps of a random 2B-4T-shaped model (for ncu / compute-sanitizer on the device):
python tools/gpu_profile_step.py [n_steps] [mode: fused | mega | unfused]."""

import sys

import numpy as np


def main() -> int:
    sys.path.insert(0, "tools")
    from bench_gpu import SHAPE_2B4T, model_args

    from bitnet_inference.gpu_model import GPUModel

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    m = GPUModel.random(model_args(SHAPE_2B4T), n_ctx=1024)
    m.cache.reset()
    m.prefill(np.arange(1, 200))
    m.set_decode_mode(sys.argv[2] if len(sys.argv) > 2 else "fused")
    tok = 5
    for i in range(n):
        tok = m.decode_greedy(tok, 199 + i)
    m.rt.sync()
    print("ok", tok)
    return 0


if __name__ == "__main__":
    sys.exit(main())
