"""Benchmark `bitnet serve`: aggregate tokens/s with K concurrent streams vs one stream (continuous batching).

    python tools/bench_serve.py                       # the 2B-4T-shaped synthetic model if present, else the fixture
    python tools/bench_serve.py -m models/synthetic-2b4t-i2_s.gguf --streams 1 8 --max-tokens 16 -t 2

Starts the server on a free loopback port, warms it up, then for each stream count K sends K streaming
completions at once (same prompt length, fixed length: ignore_eos) and measures
- end to end: completion tokens / wall seconds from sending to the last [DONE] (prefills included);
- decode: tokens / seconds spent in the engine's batched decode steps (the server's /health counters).
Prints a table with the speed-up over one stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "models" / "synthetic-2b4t-i2_s.gguf"
FIXTURE = ROOT / "tests" / "fixtures" / "b158-a-i2s.gguf"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", default=str(SYNTHETIC if SYNTHETIC.exists() else FIXTURE))
    p.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("-c", "--ctx-size", type=int, default=256)
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds in all")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args()


def start_server(args) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "bitnet_inference.serve", "-m", args.model, "--port", "0", "-c", str(args.ctx_size),
           "--parallel", str(max(args.streams)), "--queue-size", "0"]
    if args.threads:
        cmd += ["-t", str(args.threads)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        print(f"server: {line.rstrip()}", file=sys.stderr)
        if line.startswith("serving"):
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, line.split(" on ")[1].split()[0].removesuffix("/v1")
    proc.kill()
    sys.exit("error: the server did not start")


async def stream_one(client: httpx.AsyncClient, prompt: list[int], n: int) -> int:
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    usage = None
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                usage = json.loads(line[6:])["usage"]
    return usage["completion_tokens"]


async def phase(client: httpx.AsyncClient, k: int, n: int) -> dict:
    before = (await client.get("/health")).json()["stats"]
    prompts = [[1] + [100 + 37 * i + j for j in range(11)] for i in range(k)]  # 12 tokens each, all different
    t0 = time.perf_counter()
    tokens = await asyncio.gather(*(stream_one(client, p, n) for p in prompts))
    wall = time.perf_counter() - t0
    after = (await client.get("/health")).json()["stats"]
    d_tok = after["decode_tokens"] - before["decode_tokens"]
    d_s = after["decode_s"] - before["decode_s"]
    return {"streams": k, "tokens": sum(tokens), "wall_s": wall, "e2e_tps": sum(tokens) / wall,
            "decode_steps": after["decode_steps"] - before["decode_steps"], "decode_tokens": d_tok,
            "decode_s": d_s, "decode_tps": d_tok / d_s if d_s else 0.0,
            "prefill_s": after["prefill_s"] - before["prefill_s"]}


async def run(args, url: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, trust_env=False) as client:
        await stream_one(client, [1, 5, 6], 2)  # warm-up: page the weights in
        return [await phase(client, k, args.max_tokens) for k in args.streams]


def main() -> int:
    args = parse_args()
    try:
        import bitnet_kernels

        kernels = f"bitnet_kernels ({bitnet_kernels.get_num_threads()} threads by default)"
    except ImportError:
        kernels = "numpy only (bitnet_kernels not installed)"
    proc, url = start_server(args)
    try:
        rows = asyncio.run(asyncio.wait_for(run(args, url), args.timeout))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    load = os.getloadavg()
    print(f"model {Path(args.model).name}, {args.max_tokens} tokens per stream, -c {args.ctx_size}, "
          f"threads {args.threads or 'all'} of {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"{kernels}, load average {load[0]:.1f}")
    base = rows[0]
    print("| streams | tokens | wall s | end-to-end tok/s | x | decode steps | decode tok/s | x | prefill s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['streams']} | {r['tokens']} | {r['wall_s']:.1f} | {r['e2e_tps']:.2f} | "
              f"{r['e2e_tps'] / base['e2e_tps']:.2f} | {r['decode_steps']} | {r['decode_tps']:.2f} | "
              f"{r['decode_tps'] / base['decode_tps']:.2f} | {r['prefill_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
