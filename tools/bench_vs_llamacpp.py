"""Ours against llama.cpp (llama-cpp-python) on the 2B-4T shape, side by side in one run.

    python tools/bench_vs_llamacpp.py [--threads 1 2] [-p 128] [-n 64] [-r 5]

Models: random ternary weights in the exact 2B-4T layout, written by tools/make_synthetic_model.py if missing:
models/synthetic-2b4t-i2_s.gguf (arch bitnet-b1.58, I2_S; what bitnet.cpp runs) and
models/synthetic-2b4t-tq2_0.gguf (arch bitnet, TQ2_0, the same ternary values; what llama.cpp runs).
Per thread count, the repetitions rotate through llama.cpp and our three configurations (I2_S, TQ2_0, I2_S with
the int8 head), so that a change in what this shared machine gives us lands on all of them alike; the table
gives medians. The memory floor (streaming read bandwidth at that thread count, measured before and after its
tests, the higher of the two) bounds decode: bytes read per token / bandwidth. The bandwidth is also probed once a
round, right after the decode tests, and the share of the floor is given against the median of those probes too
(in parentheses): the machine's bandwidth drifts by 10-20% within the minutes of one thread count. "paired" is the
median over the rounds of each I2_S decode test against the mean of two short probes taken just before and just
after it (the closest to a same-moment floor this machine allows).
Prints a table; speed is never asserted by tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


def ensure(path: Path, quant: str, arch: str) -> Path:
    if not path.exists():
        print(f"writing {path} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_synthetic_model.py"), "--shape", "2b4t",
                        "--quant", quant, "--arch", arch, "--seed", "0", "-o", str(path)], check=True)
    return path


def rss_gb() -> float:
    """This process's resident memory now (VmRSS), GB; the peak where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return peak_rss_gb()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def decode_bytes(model, q8_head: bool) -> int:
    """Bytes one decode step must read: every layer matrix, the head, the norms."""
    g = model.gguf
    total = sum(t.nbytes for n, t in g.tensors.items() if n != "token_embd.weight")
    head = g.tensors["token_embd.weight"].nbytes
    return total + (head // 2 if q8_head else head)


class Ours:
    """One of our models as a pp / tg test pair (the same tests as `bitnet bench`)."""

    def __init__(self, model, vocab: int):
        self.model = model
        self.rng = np.random.default_rng(0)
        self.vocab = vocab

    def pp_once(self, n_prompt: int) -> float:
        from bitnet_inference.bench import pp_ns

        return n_prompt / (pp_ns(self.model, self.rng.integers(0, self.vocab, n_prompt)) / 1e9)

    def tg_once(self, n_gen: int) -> float:
        from bitnet_inference.bench import tg_ns

        return n_gen / (tg_ns(self.model, int(self.rng.integers(0, self.vocab)), n_gen) / 1e9)


class Llama:
    """llama.cpp (llama-cpp-python) on the TQ2_0 file, the same tests."""

    def __init__(self, path: Path, threads: int, n_prompt: int, n_gen: int):
        from llama_cpp import Llama as _Llama

        self.llm = _Llama(str(path), n_ctx=max(n_prompt, n_gen) + 8, n_batch=n_prompt, n_ubatch=n_prompt,
                          n_threads=threads, n_threads_batch=threads, verbose=False, flash_attn=False)
        self.rng = np.random.default_rng(0)
        self.vocab = self.llm.n_vocab()

    def pp_once(self, n_prompt: int) -> float:
        self.llm.reset()
        toks = self.rng.integers(0, self.vocab, n_prompt).tolist()
        t0 = time.perf_counter()
        self.llm.eval(toks)
        return n_prompt / (time.perf_counter() - t0)

    def tg_once(self, n_gen: int) -> float:
        self.llm.reset()
        tok = int(self.rng.integers(0, self.vocab))
        t0 = time.perf_counter()
        for _ in range(n_gen):
            self.llm.eval([tok])
        return n_gen / (time.perf_counter() - t0)


def side_by_side(engines: dict, threads: int, n_prompt: int, n_gen: int, reps: int) -> dict:
    """Median pp and tg tok/s of each engine; repetitions rotate through the engines (after one warm-up each),
    so that a change in what the shared machine gives us lands on all of them alike."""
    import bitnet_kernels

    bitnet_kernels.set_num_threads(threads)
    pp = {k: [] for k in engines}
    tg = {k: [] for k in engines}
    for e in engines.values():
        e.pp_once(n_prompt), e.tg_once(n_gen)
    probes, bracket = [], []
    for _ in range(reps):
        for k, e in engines.items():
            pp[k].append(e.pp_once(n_prompt))
        for k, e in engines.items():
            paired = k == "i2s"  # our decode between two short probes: its own floor, measured in the same seconds
            b0 = bitnet_kernels.stream_read_bandwidth(256 << 20, threads=threads, reps=3) if paired else 0.0
            tg[k].append(e.tg_once(n_gen))
            if paired:
                bracket.append((b0 + bitnet_kernels.stream_read_bandwidth(256 << 20, threads=threads, reps=3)) / 2)
        # the read bandwidth once a round, right after the decode tests it bounds
        probes.append(bitnet_kernels.stream_read_bandwidth(512 << 20, threads=threads, reps=3))
    out = {k: (float(np.median(pp[k])), float(np.median(tg[k]))) for k in engines}
    out["probes"] = probes
    # each round's I2_S decode over the mean of the probes just before and after it (GB/s it would need)
    out["paired"] = [t / bw for t, bw in zip(tg["i2s"], bracket)] if "i2s" in tg else []
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-r", type=int, default=5)
    args = ap.parse_args()

    import bitnet_kernels

    from bitnet_inference.generate import Model

    i2s = ensure(MODELS / "synthetic-2b4t-i2_s.gguf", "i2_s", "bitnet-b1.58")
    tq2 = ensure(MODELS / "synthetic-2b4t-tq2_0.gguf", "tq2_0", "bitnet")

    n_ctx = max(args.p, args.n) + 8
    t0 = time.perf_counter()
    m_i2s = Model(i2s, n_ctx=n_ctx)
    first = m_i2s.forward([1], 0, logits="last")
    ttft = time.perf_counter() - t0
    rss_first = rss_gb()
    size_gb = i2s.stat().st_size / 1e9
    assert np.isfinite(first).all()
    w = m_i2s.weights
    if hasattr(w, "load_seconds"):
        share = 100 * w.resident_fraction
        m_i2s.wait_for_weights()  # the tests below measure the steady state: every tensor in the huge-page arena
        placed = (f"the load copied {w.load_seconds:.2f} s and {share:.0f}% of the weights were resident at the "
                  f"first token; the background copy finished {w.background_seconds:.2f} s after load() began")
    else:
        placed = "weights in the memory map"
    rss_steady, rss_peak = rss_gb(), peak_rss_gb()
    m_q8 = Model(i2s, n_ctx=n_ctx, lm_head="q8")
    m_tq2 = Model(tq2, n_ctx=n_ctx)
    for m in (m_q8, m_tq2):
        m.wait_for_weights()
    bytes_f16 = decode_bytes(m_i2s, False)
    bytes_q8 = decode_bytes(m_i2s, True)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {bitnet_kernels.cpu_info().get('isa')} kernels; "
          f"pp{args.p} / tg{args.n}, {args.r} repetitions (medians)")
    print(f"load() to first token on the {size_gb:.2f} GB I2_S file: {ttft:.2f} s ({placed}); resident memory "
          f"{rss_first:.2f} GB at the first token ({rss_first / size_gb:.2f}x the file), {rss_steady:.2f} GB "
          f"({rss_steady / size_gb:.2f}x) once the copy is adopted, peak {rss_peak:.2f} GB")
    print(f"decode reads {bytes_f16 / 1e9:.3f} GB/token with the F16 head, {bytes_q8 / 1e9:.3f} GB with --lm-head q8")
    print()
    print("| threads | floor GB/s | floor tok/s | llama.cpp TQ2_0 pp | ours I2_S pp | ratio | llama.cpp TQ2_0 tg | "
          "ours I2_S tg | ratio | % of floor (of the median round probe; paired) | ours TQ2_0 pp / tg | TQ2_0 ratio tg | ours q8-head tg | vs F16 head |")
    print("|" + "---|" * 14)
    for t in args.threads:
        # the bandwidth before and after this thread count's tests; the floor takes the higher (the stricter bound)
        bw0 = bitnet_kernels.stream_read_bandwidth(1 << 30, threads=t, reps=5)
        vocab = m_i2s.args.n_vocab
        ll = Llama(tq2, t, args.p, args.n)
        r = side_by_side({"llama": ll, "i2s": Ours(m_i2s, vocab), "tq2": Ours(m_tq2, vocab), "q8": Ours(m_q8, vocab)},
                         t, args.p, args.n, args.r)
        ll.llm.close()
        (l_pp, l_tg), (o_pp, o_tg), (t_pp, t_tg), (_, q_tg) = r["llama"], r["i2s"], r["tq2"], r["q8"]
        bw1 = bitnet_kernels.stream_read_bandwidth(1 << 30, threads=t, reps=5)
        bw = max(bw0, bw1)
        floor = bw * 1e9 / bytes_f16
        bw_mid = float(np.median(r["probes"]))
        print(f"# {t} thread(s): read bandwidth {bw0:.1f} GB/s before the tests, {bw1:.1f} after; once a round "
              f"between them: {', '.join(f'{b:.1f}' for b in r['probes'])} (median {bw_mid:.1f})", file=sys.stderr)
        paired = 100 * float(np.median(r["paired"])) * bytes_f16 / 1e9
        print(f"# {t} thread(s): I2_S decode over the mean of the probes just before and after it, each round: "
              f"{', '.join(f'{100 * x * bytes_f16 / 1e9:.0f}%' for x in r['paired'])}", file=sys.stderr)
        print(f"| {t} | {bw:.1f} | {floor:.1f} | {l_pp:.1f} | {o_pp:.1f} | {o_pp / l_pp:.2f}x | {l_tg:.1f} | "
              f"{o_tg:.1f} | {o_tg / l_tg:.2f}x | {100 * o_tg / floor:.0f}% ({100 * o_tg * bytes_f16 / 1e9 / bw_mid:.0f}%; "
              f"paired {paired:.0f}%) | "
              f"{t_pp:.1f} / {t_tg:.1f} | "
              f"{t_tg / l_tg:.2f}x | {q_tg:.1f} | {q_tg / o_tg:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
