"""What each decode change buys, side by side in one run: the 2B-4T-shaped I2_S model decoded with the changes
switched on one at a time (every configuration's output is bit-identical; only the speed differs).

    python tools/bench_decode_steps.py [--threads 1 2] [-n 32] [-r 5]

Configurations, cumulative:
  baseline      weights used in place from the memory map, one stream per thread, the Python layer loop
  +2 streams    the one-token GEMVs read two row ranges in lockstep (bitnet_kernels.set_decode_streams(2))
  +resident     the large tensors copied onto transparent huge pages at load (Model(weights="resident"))
  +fused step   the whole layer loop in one Cython call (bitnet_kernels.DecodePlan)
Repetitions rotate through the configurations, so a busy machine hurts them alike; the table gives the median
and best decode tok/s of each and the ratio of medians to the baseline, with the streaming read bandwidth
measured before and after (the floor uses the higher).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def model_missing(path: str) -> bool:
    """True (after saying how to write it) when the 2B-4T-shaped I2_S file is not there."""
    if Path(path).exists():
        return False
    print(f"{path} is missing: write it with tools/make_synthetic_model.py --shape 2b4t --quant i2_s "
          "(or run tools/bench_vs_llamacpp.py once)", file=sys.stderr)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "synthetic-2b4t-i2_s.gguf"))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("-n", type=int, default=32, help="tokens decoded per repetition (default 32)")
    ap.add_argument("-r", type=int, default=5, help="repetitions per configuration (default 5)")
    args = ap.parse_args()
    if model_missing(args.model):
        return 2

    import bitnet_kernels as bk

    from bitnet_inference.bench import tg_ns
    from bitnet_inference.generate import Model

    mapped = Model(args.model, n_ctx=args.n + 8, weights="mmap")
    resident = Model(args.model, n_ctx=args.n + 8, weights="resident")
    plan = resident.net.plan
    configs = [  # name, model, streams, fused
        ("baseline (mmap, 1 stream, Python loop)", mapped, 1, False),
        ("+2 streams", mapped, 2, False),
        ("+resident huge pages", resident, 2, False),
        ("+fused step (DecodePlan)", resident, 2, True),
    ]
    bytes_per_token = sum(t.nbytes for t in mapped.gguf.tensors.values())

    def decode(model, n):
        model.cache.reset()
        model.forward([1], 0, logits="last")
        return n / (tg_ns(model, 5, n, pos0=1) / 1e9)

    print(f"# {args.model}: {bytes_per_token / 1e9:.3f} GB read per token; -n {args.n}, -r {args.r}")
    print("| threads | configuration | median tok/s | best tok/s | vs baseline | % of floor |")
    print("|---|---|---|---|---|---|")
    for t in args.threads:
        bk.set_num_threads(t)
        bw0 = bk.stream_read_bandwidth(1 << 30, threads=t, reps=5)
        res: dict[str, list[float]] = {c[0]: [] for c in configs}
        for name, model, streams, fused in configs:  # warm-up: page everything in once
            bk.set_decode_streams(streams)
            model.net.plan = plan if fused else None
            decode(model, 4)
        for _ in range(args.r):
            for name, model, streams, fused in configs:
                bk.set_decode_streams(streams)
                model.net.plan = plan if fused else None
                res[name].append(decode(model, args.n))
        bk.set_decode_streams(2)
        resident.net.plan = plan
        bw1 = bk.stream_read_bandwidth(1 << 30, threads=t, reps=5)
        floor = max(bw0, bw1) * 1e9 / bytes_per_token
        base = float(np.median(res[configs[0][0]]))
        for name, *_ in configs:
            med = float(np.median(res[name]))
            print(f"| {t} | {name} | {med:.2f} | {max(res[name]):.2f} | {med / base:.2f}x | {100 * med / floor:.0f}% |")
        print(f"# {t} thread(s): read bandwidth {bw0:.1f} GB/s before, {bw1:.1f} after; floor {floor:.1f} tok/s",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
