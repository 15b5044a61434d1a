"""`bitnet bench`: prompt-processing and decode throughput in the shape of llama.cpp's llama-bench.

pp N: a fresh context evaluates N random tokens in one batch. tg N: a fresh context decodes N tokens one at
a time (llama-bench's "text generation" test, starting from one token). Each test is repeated -r times after
one warm-up; tokens per second are reported as mean and standard deviation over the repetitions.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class BenchResult:
    n_prompt: int
    n_gen: int
    n_threads: int
    samples_ns: list[int]

    @property
    def n_tokens(self) -> int:
        return self.n_prompt + self.n_gen

    @property
    def samples_ts(self) -> list[float]:
        return [self.n_tokens / (ns / 1e9) for ns in self.samples_ns]

    @property
    def avg_ts(self) -> float:
        return float(np.mean(self.samples_ts))

    @property
    def stddev_ts(self) -> float:
        return float(np.std(self.samples_ts, ddof=1)) if len(self.samples_ns) > 1 else 0.0

    @property
    def name(self) -> str:
        return f"pp{self.n_prompt}" if self.n_prompt else f"tg{self.n_gen}"


def pp_ns(model, tokens) -> int:
    """llama-bench's pp test once: a fresh context evaluates `tokens` in one batch; nanoseconds."""
    model.cache.reset()
    t0 = time.perf_counter_ns()
    model.forward(tokens, 0, logits="last")
    return time.perf_counter_ns() - t0


def tg_ns(model, tok: int, n_gen: int, pos0: int = 0) -> int:
    """llama-bench's tg test once: greedy decoding of n_gen tokens one at a time from `tok` at position pos0 (a
    fresh context when pos0 = 0); nanoseconds."""
    if pos0 == 0:
        model.cache.reset()
    t0 = time.perf_counter_ns()
    for i in range(n_gen):
        tok = int(np.argmax(model.forward([tok], pos0 + i, logits="last")[0]))
    return time.perf_counter_ns() - t0


def run_test(model, n_prompt: int, n_gen: int, reps: int, n_threads: int, seed: int = 0) -> BenchResult:
    rng = np.random.default_rng(seed)
    vocab = model.args.n_vocab

    def once() -> int:
        if n_prompt:
            return pp_ns(model, rng.integers(0, vocab, n_prompt))
        return tg_ns(model, int(rng.integers(0, vocab)), n_gen)

    once()  # warm-up: page the weights in, build tables
    return BenchResult(n_prompt, n_gen, n_threads, [once() for _ in range(reps)])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def record(model, r: BenchResult, backend: str) -> dict:
    """One result with llama-bench's JSON field names."""
    a = model.args
    n_params = sum(int(np.prod(t.shape)) for t in model.gguf.tensors.values())
    return {
        "build_commit": "bitnet-py",
        "cpu_info": cpu_name(),
        "backend": backend,
        "model_filename": str(model.path),
        "model_type": f"{a.arch} {a.weight_type}",
        "model_size": model.path.stat().st_size,
        "model_n_params": n_params,
        "n_batch": max(r.n_prompt, 1),
        "n_threads": r.n_threads,
        "type_k": str(model.cache.k.dtype),
        "type_v": str(model.cache.v.dtype),
        "numerics": model.numerics.name,
        "n_prompt": r.n_prompt,
        "n_gen": r.n_gen,
        "test_time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "avg_ns": int(np.mean(r.samples_ns)),
        "stddev_ns": int(np.std(r.samples_ns, ddof=1)) if len(r.samples_ns) > 1 else 0,
        "avg_ts": round(r.avg_ts, 6),
        "stddev_ts": round(r.stddev_ts, 6),
        "samples_ns": r.samples_ns,
        "samples_ts": [round(x, 4) for x in r.samples_ts],
    }


def format_table(model, results: list[BenchResult], backend: str) -> str:
    a = model.args
    size = model.path.stat().st_size / 2**30
    rows = ["| model | size | backend | threads | test | t/s |", "| --- | ---: | --- | ---: | ---: | ---: |"]
    for r in results:
        rows.append(f"| {a.arch} {a.weight_type} | {size:.2f} GiB | {backend} | {r.n_threads} | {r.name} | "
                    f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f} |")
    return "\n".join(rows)


def backend_name() -> str:
    try:
        import bitnet_kernels

        return f"CPU ({bitnet_kernels.cpu_info().get('isa', 'cython')})"
    except ImportError:
        return "CPU (numpy)"
