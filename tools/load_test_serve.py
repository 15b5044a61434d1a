"""Load test for `bitnet serve`: N concurrent streaming clients for a fixed time, on loopback only.

    python tools/load_test_serve.py                       # fixture model, 32 clients, 60 s, server started here
    python tools/load_test_serve.py --url http://127.0.0.1:8080 --clients 32 --duration 60

Each client sends streaming chat (or completion) requests at temperature 0 in a loop, choosing among a few
prompts, and checks every response strictly: HTTP 200 with `text/event-stream`, every event valid JSON of the
right object type and id, exactly one finish_reason, the usage chunk, `data: [DONE]` last, and the text equal
to that prompt's reference (taken one request at a time before the load starts). A 503 is the intended
back-pressure: the client waits Retry-After seconds and tries again. Anything else is a failure.

Bounded: it stops by itself after --duration seconds (plus at most --request-timeout for requests in flight),
stops the server it started, and exits 1 if any response was lost or corrupted or any 5xx other than 503 came.

A greedy mismatch is reported apart from corruption: the engine's batched decode step computes the output head
in f32 while a lone sequence uses bitnet.cpp's f16 head, so a near-tie between two tokens may resolve differently
under load. `--strict-text` makes such mismatches failures too.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "b158-a-i2s.gguf"
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
PROMPTS = ["Once upon a time", "The quick brown fox", "In a galaxy far away", "Tell me about the sea",
           "Write a short poem", "What is a ternary weight", "List three colours", "Hello there"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running server (loopback only); default: start one on a free loopback port")
    p.add_argument("-m", "--model", default=str(FIXTURE), help="model for the server started here (default: fixture)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--parallel", type=int, default=8, help="--parallel of the server started here")
    p.add_argument("--queue-size", type=int, default=16, help="--queue-size of the server started here")
    p.add_argument("-c", "--ctx-size", type=int, default=256)
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--strict-text", action="store_true", help="count greedy mismatches as failures")
    p.add_argument("--json", help="also write the results here as JSON")
    return p.parse_args()


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    ok = host == "localhost"
    try:
        ok = ok or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not ok:
        sys.exit(f"error: {url} is not a loopback address; this load test only runs against 127.0.0.1/::1")


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    tpl = Path(os.environ.get("TMPDIR", "/tmp")) / f"load_test_template_{os.getpid()}.jinja"
    tpl.write_text(TEMPLATE)
    cmd = [sys.executable, "-m", "bitnet_inference.serve", "-m", args.model, "--host", "127.0.0.1", "--port", "0",
           "-c", str(args.ctx_size), "--parallel", str(args.parallel), "--queue-size", str(args.queue_size),
           "--chat-template", str(tpl)]
    if args.threads:
        cmd += ["-t", str(args.threads)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        print(f"server: {line.rstrip()}", file=sys.stderr)
        if line.startswith("serving"):
            url = line.split(" on ")[1].split()[0].removesuffix("/v1")
            tpl.unlink(missing_ok=True)
            threading.Thread(target=_echo, args=(proc.stderr,), daemon=True).start()  # never let the pipe fill
            return proc, url
    proc.kill()
    tpl.unlink(missing_ok=True)
    sys.exit("error: the server did not start")


def _echo(stream) -> None:
    for line in stream:
        print(f"server: {line.rstrip()}", file=sys.stderr)


def request_body(args, prompt: str) -> tuple[str, dict]:
    common = {"model": "any", "max_tokens": args.max_tokens, "temperature": 0, "stream": True,
              "stream_options": {"include_usage": True}}
    if args.endpoint == "chat":
        return "/v1/chat/completions", common | {"messages": [{"role": "user", "content": prompt}]}
    return "/v1/completions", common | {"prompt": prompt}


def check_stream(raw: str, chat: bool) -> tuple[str, dict]:
    """The text and usage of one SSE response; raises ValueError on any corruption."""
    if not raw.endswith("\n\n"):
        raise ValueError("the stream does not end with a blank line")
    events = raw[:-2].split("\n\n")
    if events[-1] != "data: [DONE]":
        raise ValueError(f"the last event is {events[-1][:80]!r}, not [DONE]")
    obj = "chat.completion.chunk" if chat else "text_completion"
    ids, text, finishes, usage = set(), [], [], None
    for e in events[:-1]:
        if not e.startswith("data: "):
            raise ValueError(f"an event without 'data: ': {e[:80]!r}")
        c = json.loads(e[6:])
        if c.get("object") != obj:
            raise ValueError(f"object {c.get('object')!r}: {e[:200]}")
        ids.add(c["id"])
        if c.get("usage"):
            usage = c["usage"]
            continue
        ch = c["choices"][0]
        text.append((ch["delta"].get("content") or "") if chat else ch["text"])
        if ch["finish_reason"] is not None:
            finishes.append(ch["finish_reason"])
    if len(ids) != 1:
        raise ValueError(f"{len(ids)} different ids in one stream")
    if len(finishes) != 1 or finishes[0] not in ("stop", "length"):
        raise ValueError(f"finish reasons {finishes}")
    if usage is None or usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
        raise ValueError(f"bad usage {usage}")
    return "".join(text), usage


async def one_request(client: httpx.AsyncClient, args, prompt: str) -> tuple[int, str, dict | None, float]:
    path, body = request_body(args, prompt)
    async with client.stream("POST", path, json=body) as r:
        raw = (await r.aread()).decode("utf-8")
        retry = float(r.headers.get("retry-after", "1")) if r.status_code == 503 else 0.0
        if r.status_code != 200:
            return r.status_code, raw, None, retry
        if not r.headers.get("content-type", "").startswith("text/event-stream"):
            raise ValueError("200 without text/event-stream")
        text, usage = check_stream(raw, args.endpoint == "chat")
        return 200, text, usage, 0.0


async def references(client, args) -> dict[str, str]:
    refs = {}
    for p in PROMPTS:
        status, text, _, _ = await one_request(client, args, p)
        if status != 200:
            sys.exit(f"error: the reference request for {p!r} got HTTP {status}: {text[:200]}")
        refs[p] = text
    return refs


async def run_load(args, url: str) -> dict:
    timeout = httpx.Timeout(args.request_timeout, connect=10)
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, trust_env=False) as client:
        refs = await references(client, args)
        stats = collections.Counter()
        tokens = collections.Counter()
        problems: list[str] = []
        t0 = time.monotonic()
        deadline = t0 + args.duration

        async def worker(k: int) -> None:
            i = k
            while time.monotonic() < deadline:
                prompt = PROMPTS[i % len(PROMPTS)]
                i += 1
                stats["sent"] += 1
                try:
                    status, text, usage, retry = await one_request(client, args, prompt)
                except (httpx.TransportError, httpx.StreamError) as e:
                    stats["lost"] += 1
                    problems.append(f"lost: {type(e).__name__}: {e}")
                    continue
                except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
                    stats["corrupted"] += 1
                    problems.append(f"corrupted: {e}")
                    continue
                if status == 503:
                    stats["503"] += 1
                    await asyncio.sleep(retry)
                    continue
                if status != 200:
                    stats[f"http_{status}"] += 1
                    problems.append(f"HTTP {status}: {text[:200]}")
                    continue
                stats["ok"] += 1
                tokens["completion"] += usage["completion_tokens"]
                if text != refs[prompt]:
                    stats["text_mismatch"] += 1
                    problems.append(f"text mismatch for {prompt!r}: {text[:60]!r} vs {refs[prompt][:60]!r}")

        await asyncio.gather(*(worker(k) for k in range(args.clients)))
        elapsed = time.monotonic() - t0
        health = (await client.get("/health")).json()
    return {"clients": args.clients, "duration_s": round(elapsed, 1), "endpoint": args.endpoint,
            "max_tokens": args.max_tokens, **dict(stats), "completion_tokens": tokens["completion"],
            "tokens_per_s": round(tokens["completion"] / elapsed, 1), "health_after": health,
            "problems": problems[:20]}


def main() -> int:
    args = parse_args()
    if args.clients < 1 or args.duration <= 0:
        sys.exit("error: --clients must be >= 1 and --duration > 0")
    proc = None
    if args.url:
        check_loopback(args.url)
        url = args.url.rstrip("/").removesuffix("/v1")
    else:
        proc, url = start_server(args)
    try:
        res = asyncio.run(asyncio.wait_for(run_load(args, url), args.duration + args.request_timeout + 600))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    other = sum(v for k, v in res.items() if k.startswith("http_"))  # any status but 200 and 503
    failures = res.get("lost", 0) + res.get("corrupted", 0) + other
    if args.strict_text:
        failures += res.get("text_mismatch", 0)
    print(f"| clients | seconds | requests ok | 503 (intended) | lost | corrupted | other HTTP errors | "
          f"greedy mismatches | completion tokens | tokens/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {res['clients']} | {res['duration_s']} | {res.get('ok', 0)} | {res.get('503', 0)} | {res.get('lost', 0)} "
          f"| {res.get('corrupted', 0)} | {other} | {res.get('text_mismatch', 0)} | {res['completion_tokens']} "
          f"| {res['tokens_per_s']} |")
    for p in res["problems"]:
        print(f"  {p}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print("PASS" if failures == 0 else f"FAIL ({failures} failures)")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
