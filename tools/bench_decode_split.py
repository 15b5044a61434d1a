"""Where one decoded token's time goes against the read bandwidth of the same seconds: the whole token
(`Model.forward`, greedy), the 30 layers alone (`DecodePlan.step`) and the LM head alone, each as a share of the
streaming-read probe measured just before and after (the higher of the two; each probe the best of one and two
sequential streams a thread).

    python tools/bench_decode_split.py [--threads 1] [--rounds 5] [--pos 128]

One process, rounds in a row, so the machine's drift lands on every part of a round alike. The model is the
2B-4T-shaped I2_S file that tools/bench_vs_llamacpp.py writes (models/synthetic-2b4t-i2_s.gguf).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from bench_decode_steps import model_missing

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "synthetic-2b4t-i2_s.gguf"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pos", type=int, default=128, help="prompt length before the decoded tokens (default 128)")
    ap.add_argument("-n", type=int, default=16, help="tokens decoded a round (default 16)")
    args = ap.parse_args()
    if model_missing(args.model):
        return 2

    import bitnet_kernels as bk

    from bitnet_inference.bench import pp_ns
    from bitnet_inference.generate import Model

    bk.set_num_threads(args.threads)
    m = Model(args.model, n_ctx=args.pos + args.n + 8, weights="resident")
    net = m.net
    if net.plan is None:
        print("this model has no fused decode step (DecodePlan): nothing to split", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    vocab = m.args.n_vocab
    pp_ns(m, rng.integers(0, vocab, args.pos))
    time.sleep(3)  # the background copy onto huge pages
    layer_bytes = sum(t.nbytes for n, t in m.gguf.tensors.items() if n.startswith("blk."))
    head_bytes = net.output.nbytes
    x = rng.standard_normal((1, m.args.n_embd)).astype(np.float32) * 0.1

    def probe() -> float:
        return bk.stream_read_bandwidth(256 << 20, threads=args.threads, reps=3)

    def median_s(fn, reps: int = 8) -> float:
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    print(f"# {args.model}: layers {layer_bytes / 1e9:.3f} GB, head {head_bytes / 1e9:.3f} GB a token; "
          f"{args.threads} thread(s), positions {args.pos}..{args.pos + args.n - 1}")
    print("| round | probe GB/s (before / after) | token ms | tok/s | token % | layers ms | layers GB/s | layers % "
          "| head ms | head GB/s | head % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in range(args.rounds):
        p0 = probe()
        m.cache.reset()
        pp_ns(m, rng.integers(0, vocab, args.pos))
        tok, t = 1, time.perf_counter()
        for i in range(args.n):
            tok = int(np.argmax(m.forward([tok], args.pos + i, logits="last")[0]))
        token_s = (time.perf_counter() - t) / args.n
        step_s = median_s(lambda: net.plan.step(x[0].copy(), args.pos, 0))
        head_s = median_s(lambda: net._head(x))
        p1 = probe()
        p = max(p0, p1)
        tb = layer_bytes + head_bytes
        print(f"| {r + 1} | {p0:.1f} / {p1:.1f} | {token_s * 1e3:.2f} | {1 / token_s:.1f} | "
              f"{tb / token_s / 1e9 / p * 100:.0f}% | {step_s * 1e3:.2f} | {layer_bytes / step_s / 1e9:.1f} | "
              f"{layer_bytes / step_s / 1e9 / p * 100:.0f}% | {head_s * 1e3:.2f} | {head_bytes / head_s / 1e9:.1f} | "
              f"{head_bytes / head_s / 1e9 / p * 100:.0f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
