"""Kernel-level benchmarks of bitnet-kernels at the BitNet b1.58 2B-4T shape (random ternary weights in memory).

Prints one table: streaming read bandwidth, then per thread count the I2_S decode GEMV through all 30 layers'
7 matrices (one token; also grouped as the engine calls them), the F16 and int8 LM heads (vocab 128256 x 2560),
the prefill GEMM (T tokens through all 210 matrices) in tokens/s, and with --tq2 the same for TQ2_0 weights.
Weights sit on transparent huge pages, as the engine keeps them (--no-hugepages: numpy's own pages). Decode
rows give GB/s, the share of the measured bandwidth and the process CPU time: on a shared machine the CPU time
at 1 thread is what the kernel took while it held the core.

    python tools/bench_kernels.py [--threads 1 2] [--reps 5] [--prefill 128] [--isa avx512vnni] [--tq2]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

import bitnet_kernels as bk

HIDDEN, FFN, LAYERS, VOCAB, HEADS, KV_HEADS, HEAD_DIM = 2560, 6912, 30, 128256, 20, 5, 128
KV = KV_HEADS * HEAD_DIM
# (N, K) of the 7 ternary matrices of one layer: q, k, v, o, gate, up, down
LAYER_SHAPES = [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN), (FFN, HIDDEN), (FFN, HIDDEN), (HIDDEN, FFN)]


def valid_i2s_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random I2_S payload bytes: four 2-bit codes in {0, 1, 2} each (code 3 is never written)."""
    table = np.array([a << 6 | b << 4 | c << 2 | d for a, b, c, d in itertools.product(range(3), repeat=4)], np.uint8)
    return table[rng.integers(0, len(table), size=n, dtype=np.uint8)]


_ARENAS: list = []


def huge_copy(a: np.ndarray) -> np.ndarray:
    """a copied into anonymous memory advised MADV_HUGEPAGE, where bitnet-inference's fast path keeps its
    weights (bitnet_inference.weights.huge_page_buffer); --no-hugepages leaves numpy's own allocation."""
    from bitnet_inference.weights import huge_page_buffer

    if not HUGEPAGES:
        return a
    buf, m = huge_page_buffer(a.nbytes)
    _ARENAS.append(m)
    out = buf.view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


HUGEPAGES = True


def make_i2s_model(rng) -> list[tuple[np.ndarray, int, int]]:
    mats = []
    for _ in range(LAYERS):
        for n, k in LAYER_SHAPES:
            raw = np.empty(n * k // 4 + 32, np.uint8)
            raw[: n * k // 4] = valid_i2s_bytes(rng, n * k // 4)
            raw[n * k // 4 :] = 0
            raw[n * k // 4 : n * k // 4 + 4] = np.array([0.75], "<f4").view(np.uint8)
            mats.append((huge_copy(raw), n, k))
    return mats


CPU_TIMES: dict = {}


def make_tq2_model(rng) -> list[tuple[np.ndarray, int, int]]:
    """Random TQ2_0 tensors of the same shapes: 66-byte blocks, 64 bytes of 2-bit codes + an fp16 scale."""
    mats = []
    for _ in range(LAYERS):
        for n, k in LAYER_SHAPES:
            nblk = n * k // 256
            raw = np.empty((nblk, 66), np.uint8)
            raw[:, :64] = valid_i2s_bytes(rng, nblk * 64).reshape(nblk, 64)
            raw[:, 64:] = np.full(nblk, 0.01, np.float16).view(np.uint8).reshape(nblk, 2)
            mats.append((huge_copy(raw.reshape(-1)), n, k))
    return mats


def best_time(fn, reps: int) -> float:
    """Best wall time of reps runs; the best process CPU time goes to CPU_TIMES[fn] (on a shared machine,
    CPU time at 1 thread shows what the kernel does while it holds the core)."""
    fn()  # warm-up
    best = cbest = float("inf")
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        cbest = min(cbest, time.process_time() - c0)
    CPU_TIMES[fn] = cbest
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prefill", type=int, default=128, help="tokens in the prefill GEMM (default 128)")
    ap.add_argument("--isa", default=None, help="force an ISA path (avx512vnni, avx2, portable)")
    ap.add_argument("--no-hugepages", action="store_true", help="leave the weights in numpy's 4 KiB pages")
    ap.add_argument("--skip-head", action="store_true", help="skip the LM-head rows (saves 1 GB of memory)")
    ap.add_argument("--tq2", action="store_true", help="also time TQ2_0 weights of the same shapes (0.55 GB more)")
    args = ap.parse_args()
    if args.isa:
        bk.force_isa(args.isa)
    info = bk.cpu_info()
    print(f"# bitnet-kernels {info['isa']} path; OMP_WAIT_POLICY={info['omp_wait_policy']} "
          f"GOMP_SPINCOUNT={info['gomp_spincount']}")

    global HUGEPAGES
    HUGEPAGES = not args.no_hugepages
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    mats = make_i2s_model(rng)
    i2s_bytes = sum(m[0].nbytes for m in mats)
    head = head_q = head_s = None
    if not args.skip_head:
        head = huge_copy((rng.standard_normal((VOCAB, HIDDEN), dtype=np.float32) * 0.02).astype(np.float16))
    print(f"# generated {i2s_bytes / 1e9:.3f} GB of I2_S weights"
          + ("" if head is None else f" + {head.nbytes / 1e9:.3f} GB F16 head") + f" in {time.perf_counter() - t0:.1f} s")
    tq_mats = make_tq2_model(rng) if args.tq2 else None
    tq_bytes = sum(m[0].nbytes for m in tq_mats) if tq_mats else 0
    xs = {k: rng.standard_normal((1, k)).astype(np.float32) for k in (HIDDEN, FFN)}
    outs = {n: np.empty((1, n), np.float32) for n in {n for n, _ in LAYER_SHAPES}}
    outs_kv2, outs_ffn2 = np.empty((1, KV), np.float32), np.empty((1, FFN), np.float32)
    xp = {k: rng.standard_normal((args.prefill, k)).astype(np.float32) for k in (HIDDEN, FFN)}
    outp = {n: np.empty((args.prefill, n), np.float32) for n in {n for n, _ in LAYER_SHAPES}}

    rows = []
    for nt in args.threads:
        bw = bk.stream_read_bandwidth(1 << 29, threads=nt, reps=args.reps)
        rows.append((nt, "stream read (512 MiB)", f"{bw:.1f} GB/s", ""))

        bk.set_num_threads(nt)

        def decode():
            for raw, n, k in mats:
                bk.i2s_linear(raw, n, k, xs[k], out=outs[n])

        t = best_time(decode, args.reps)
        gbs = i2s_bytes / t / 1e9
        rows.append((nt, "I2_S decode, 210 matrices (1 token)", f"{t * 1e3:.2f} ms",
                     f"{gbs:.1f} GB/s = {100 * gbs / bw:.0f}% of stream; process CPU {CPU_TIMES[decode] * 1e3:.1f} ms"))

        # the engine's grouping: q/k/v share one input, gate/up another -> 4 calls per layer instead of 7
        def decode_grouped():
            for layer in range(LAYERS):
                m = mats[layer * 7 : layer * 7 + 7]
                bk.i2s_linear_multi([(m[0][0], m[0][1]), (m[1][0], m[1][1]), (m[2][0], m[2][1])], HIDDEN, xs[HIDDEN],
                                    outs=[outs[HIDDEN], outs[KV], outs_kv2])
                bk.i2s_linear(m[3][0], m[3][1], m[3][2], xs[HIDDEN], out=outs[HIDDEN])
                bk.i2s_linear_multi([(m[4][0], m[4][1]), (m[5][0], m[5][1])], HIDDEN, xs[HIDDEN],
                                    outs=[outs[FFN], outs_ffn2])
                bk.i2s_linear(m[6][0], m[6][1], m[6][2], xs[FFN], out=outs[HIDDEN])

        t = best_time(decode_grouped, args.reps)
        gbs = i2s_bytes / t / 1e9
        rows.append((nt, "I2_S decode, grouped q/k/v + gate/up (120 calls)", f"{t * 1e3:.2f} ms",
                     f"{gbs:.1f} GB/s = {100 * gbs / bw:.0f}% of stream; process CPU {CPU_TIMES[decode_grouped] * 1e3:.1f} ms"))

        if head is not None:
            if head_q is None:
                t0 = time.perf_counter()
                head_q, head_s = bk.q8_head_prepare(head)
                rows.append((nt, "q8 head prepare (load-time cost)", f"{(time.perf_counter() - t0) * 1e3:.0f} ms", ""))
            x1 = xs[HIDDEN]
            yh = np.empty((1, VOCAB), np.float32)
            f16 = lambda: bk.f16_gemv(head, x1, out=yh)  # noqa: E731
            t = best_time(f16, args.reps)
            gbs = head.nbytes / t / 1e9
            rows.append((nt, "F16 head GEMV 128256x2560", f"{t * 1e3:.2f} ms",
                         f"{gbs:.1f} GB/s = {100 * gbs / bw:.0f}% of stream; process CPU {CPU_TIMES[f16] * 1e3:.1f} ms"))
            t = best_time(lambda: bk.q8_head_gemv(head_q, head_s, x1, out=yh), args.reps)
            gbs = head_q.nbytes / t / 1e9
            rows.append((nt, "q8 head GEMV 128256x2560", f"{t * 1e3:.2f} ms", f"{gbs:.1f} GB/s = {100 * gbs / bw:.0f}% of stream"))
            tot = i2s_bytes + head.nbytes
            rows.append((nt, "memory floor at this bandwidth (I2_S + F16 head)", f"{tot / bw / 1e6:.2f} ms",
                         f"{bw * 1e9 / tot:.1f} tok/s max"))

        def prefill():
            for raw, n, k in mats:
                bk.i2s_linear(raw, n, k, xp[k], out=outp[n])

        if tq_mats is not None:
            def tq_decode():
                for raw, n, k in tq_mats:
                    bk.tq_linear(raw, "TQ2_0", n, k, xs[k], out=outs[n])

            t = best_time(tq_decode, args.reps)
            gbs = tq_bytes / t / 1e9
            rows.append((nt, "TQ2_0 decode, 210 matrices (1 token)", f"{t * 1e3:.2f} ms",
                         f"{gbs:.1f} GB/s = {100 * gbs / bw:.0f}% of stream; process CPU {CPU_TIMES[tq_decode] * 1e3:.1f} ms"))

            def tq_prefill():
                for raw, n, k in tq_mats:
                    bk.tq_linear(raw, "TQ2_0", n, k, xp[k], out=outp[n])

            t = best_time(tq_prefill, max(1, args.reps // 2))
            rows.append((nt, f"TQ2_0 prefill GEMM T={args.prefill}, 210 matrices", f"{t * 1e3 / args.prefill:.2f} ms/token",
                         f"{args.prefill / t:.1f} tok/s (GEMM only)"))

        t = best_time(prefill, max(1, args.reps // 2))
        rows.append((nt, f"I2_S prefill GEMM T={args.prefill}, 210 matrices", f"{t * 1e3 / args.prefill:.2f} ms/token",
                     f"{args.prefill / t:.1f} tok/s (GEMM only); process CPU {CPU_TIMES[prefill] * 1e3 / args.prefill:.2f} ms/token"))

    w = max(len(r[1]) for r in rows)
    print(f"{'threads':>7}  {'kernel':<{w}}  {'time':>16}  note")
    for nt, name, val, note in rows:
        print(f"{nt:>7}  {name:<{w}}  {val:>16}  {note}")


if __name__ == "__main__":
    main()
