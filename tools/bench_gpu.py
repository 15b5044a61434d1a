"""GPU decode and prefill at the 2B-4T shape: our pycuda kernels against PyTorch bf16 of the same graph, and the
bandwidth floor (bytes a token over the measured device-to-device copy bandwidth). Prints one table.

    python tools/bench_gpu.py                      # random weights of the 2B-4T shape, built on the device
    python tools/bench_gpu.py --model m.gguf       # a GGUF model (I2_S) instead
    python tools/bench_gpu.py --json out.json      # also write the numbers
    python tools/bench_gpu.py --ab attn_cluster=1,0   # only decode and prefill, under each value of a switch

Decode: batch 1, a 32-token prompt, then --n-gen steps, each one CUDA-graph replay with the argmax on the device
and the token id copied back (the host loop waits for every token). `graph` is the replay alone, timed with
events over back-to-back replays. Prefill: --n-prompt tokens in one pass, logits of the last position.
PyTorch: bf16 weights (dense ternary values), a static bf16 KV cache, the same RMSNorms, NEOX RoPE, GQA
attention, squared ReLU and tied F16->bf16 head; eager, and the decode step captured in a torch CUDA graph
(--compile: a second run with torch.compile(forward) before the capture).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

SHAPE_2B4T = dict(n_vocab=128256, n_embd=2560, n_layer=30, n_head=20, n_head_kv=5, n_ff=6912, head_dim=128)


def model_args(shape: dict):
    from bitnet_inference.args import ModelArgs

    return ModelArgs(arch="bitnet-b1.58", n_vocab=shape["n_vocab"], n_embd=shape["n_embd"], n_layer=shape["n_layer"],
                     n_head=shape["n_head"], n_head_kv=shape["n_head_kv"], n_ff=shape["n_ff"], n_ctx_train=4096,
                     head_dim=shape["head_dim"], n_rot=shape["head_dim"], rope_base=500000.0, norm_eps=1e-5,
                     ffn_act="relu2", tied_head=True, has_scales=False, weight_type="I2_S")


def copy_bandwidth(rt, nbytes: int = 2 << 30, reps: int = 10) -> float:
    """Device-to-device copy, bytes read plus bytes written per second (median of reps)."""
    cuda = rt.cuda
    a, b = cuda.mem_alloc(nbytes), cuda.mem_alloc(nbytes)
    cuda.memset_d8(a, 1, nbytes)
    start, end = cuda.Event(), cuda.Event()
    times = []
    for _ in range(reps + 2):
        start.record(rt.stream)
        cuda.memcpy_dtod_async(b, a, nbytes, rt.stream)
        end.record(rt.stream)
        end.synchronize()
        times.append(end.time_since(start) / 1e3)
    a.free()
    b.free()
    return 2 * nbytes / statistics.median(times[2:])


def bench_generate(m, n_gen: int) -> dict:
    """tok/s of bitnet_inference.generate_step (what `bitnet generate` runs) after a 32-token prompt, prefill
    included: greedy (greedy_stream), top-k 40 sampling from the certified top-k head's candidates, and the same
    sampler over the whole F16 logits copied to the host (a wrapper hides its top_k from generate_step); then both
    with llama.cpp's repeat penalty 1.1 over the last 64 tokens ("_rp")."""
    from bitnet_inference.generate import generate_step
    from bitnet_inference.sampling import make_logits_processors, make_sampler

    prompt = [int(t) for t in np.random.default_rng(0).integers(0, m.args.n_vocab, size=32)]
    out = {}
    for name in ("greedy", "topk40_candidates", "topk40_whole_logits", "topk40_rp_candidates",
                 "topk40_rp_whole_logits"):
        best = 0.0
        procs = make_logits_processors(1.1, 64) if "_rp" in name else []
        for rep in range(2):
            s = make_sampler(0.8, 40, 0.95, 0.05, seed=rep)
            sampler = make_sampler(0.0) if name == "greedy" else s if "candidates" in name else lambda lg, s=s: s(lg)
            list(generate_step(m, prompt, sampler, procs, max_tokens=4))  # capture + warm-up
            t0 = time.perf_counter()
            n = len(list(generate_step(m, prompt, sampler, procs, max_tokens=n_gen + 1)))
            best = max(best, (n - 1) / (time.perf_counter() - t0))
        out[f"generate_step_{name}_tok_s"] = best
    return out


def bench_ours(m, n_gen: int, n_prompt: int) -> dict:
    rt, cuda = m.rt, m.rt.cuda
    a = m.args
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, a.n_vocab, size=32)
    m.cache.reset()
    tok = int(m.prefill(prompt).argmax())
    m.decode_greedy(tok, len(prompt))  # capture + warm-up
    t0 = time.perf_counter()
    pos = len(prompt) + 1
    for i in range(n_gen):
        tok = m.decode_greedy(tok, pos + i)
    decode_s = (time.perf_counter() - t0) / n_gen
    m.cache.reset()
    tok = int(m.prefill(prompt).argmax())
    m.generate_greedy(tok, len(prompt), 4)  # capture + warm-up
    m.cache.reset()
    m.prefill(prompt)
    t0 = time.perf_counter()
    m.generate_greedy(tok, len(prompt), n_gen)
    device_loop_s = (time.perf_counter() - t0) / n_gen
    m.cache.reset()
    m.prefill(prompt)
    m.generate_greedy(tok, len(prompt), 4, execs=2)
    m.cache.reset()
    m.prefill(prompt)
    t0 = time.perf_counter()
    two = m.generate_greedy(tok, len(prompt), n_gen, execs=2)
    two_s = (time.perf_counter() - t0) / n_gen
    m.cache.reset()
    m.prefill(prompt)
    one = m.generate_greedy(tok, len(prompt), n_gen)
    # one replay at a time: the host waits for each step (no copies), device time from events
    g = m._greedy_graph()
    start, end = cuda.Event(), cuda.Event()
    synced = []
    for _ in range(30):
        start.record(rt.stream)
        g.replay()
        end.record(rt.stream)
        end.synchronize()
        synced.append(end.time_since(start) / 1e3)
    t0 = time.perf_counter()
    for _ in range(30):
        g.replay()
        rt.sync()
    synced_wall = (time.perf_counter() - t0) / 30
    g = m._decode_graph(head="argmax")
    start, end = cuda.Event(), cuda.Event()
    for _ in range(5):
        g.replay()
    start.record(rt.stream)
    reps = 100
    for _ in range(reps):
        g.replay()
    end.record(rt.stream)
    end.synchronize()
    graph_s = end.time_since(start) / 1e3 / reps
    toks = rng.integers(0, a.n_vocab, size=n_prompt)
    times = []
    for _ in range(4):
        m.cache.reset()
        t0 = time.perf_counter()
        m.forward(toks, 0, logits="last")
        times.append(time.perf_counter() - t0)
    prefill_s = statistics.median(times[1:])
    return {"decode_tok_s": 1 / decode_s, "device_loop_tok_s": 1 / device_loop_s,
            "device_loop_2exec_tok_s": 1 / two_s, "two_exec_same_tokens": two == one,
            "synced_replay_event_ms": statistics.median(synced) * 1e3, "synced_replay_wall_ms": synced_wall * 1e3,
            "graph_ms": graph_s * 1e3, "graph_tok_s": 1 / graph_s,
            "prefill_tok_s": n_prompt / prefill_s, "prefill_ms": prefill_s * 1e3}


def attr_ab(m, spec: str, n_gen: int, rounds: int = 2, n_prompt: int = 64) -> list[dict]:
    """Decode of the step captured under each value of one GPUModel switch (NAME=V1,V2,...: an attribute read
    when the step is captured, e.g. attn_cluster or attn_split; 0/1 for booleans), the values alternating,
    `rounds` times: an A/B within one process."""
    name, vals = spec.split("=", 1)
    if not hasattr(m, name):
        raise SystemExit(f"--ab: GPUModel has no attribute {name!r}")
    kind = type(getattr(m, name))
    out = []
    for r in range(rounds):
        for v in vals.split(","):
            setattr(m, name, bool(int(v)) if kind is bool else kind(v))
            m.set_decode_mode(m.decode_mode)  # drops the captured graphs: the next decode captures them again
            o = bench_ours(m, n_gen, n_prompt)
            out.append({"value": v, "round": r + 1, **o})
            print(f"{name}={v:<8} round {r + 1}: host loop {o['decode_tok_s']:7.1f} tok/s, device loop "
                  f"{o['device_loop_tok_s']:7.1f} tok/s, one graph {o['graph_ms'] * 1e3:7.1f} us (replays, events); "
                  f"prefill {n_prompt}: {o['prefill_tok_s']:8.0f} tok/s ({o['prefill_ms']:.2f} ms)", flush=True)
    return out


def time_graph(rt, fn, reps: int = 20, iters: int = 10) -> float:
    """Seconds a call of fn (queued kernels) takes on the device: reps calls captured in one graph, replayed."""
    from bitnet_kernels.gpu import CudaGraph

    fn()
    rt.sync()
    g = CudaGraph(rt.stream)
    g.begin()
    for _ in range(reps):
        fn()
    g.end()
    g.replay()
    start, end = rt.cuda.Event(), rt.cuda.Event()
    start.record(rt.stream)
    for _ in range(iters):
        g.replay()
    end.record(rt.stream)
    end.synchronize()
    g.close()
    return end.time_since(start) / 1e3 / (iters * reps)


def breakdown(m) -> dict:
    """Device time of each kernel of one decode step (layer 0, at the current position), in microseconds."""
    import numpy as np

    from bitnet_kernels.gpu import ops

    rt, a, L = m.rt, m.args, m.layers[0]
    e, f, d, hd = a.n_embd, a.n_ff, a.head_dim, a.n_head * a.head_dim
    eps = np.float32(a.norm_eps)
    p = ops.ptr
    kc, vc = int(m.kc.gpudata), int(m.vc.gpudata)
    qkv = (a.n_head, a.n_head_kv, d, m.n_ctx, m.cos, m.sin, kc, vc)
    parts = {
        "qkv (fused norm, RoPE, KV store)": lambda: ops.ternary_decode_launch(rt, L.qkv, "qkv", m.x, L.attn_norm, eps,
                                                                              m.qb, hd, pos=m.pos, qkv=qkv, rope=m.rope_cur),
        "attention (one block a head)": lambda: ops.attention_launch(rt, m.qb, kc, vc, m.att, a.n_head, a.n_head_kv,
                                                                     d, m.n_ctx, 1, m.pos, p_f16=1),
        "attention split (attn_split)": lambda: m._attention(1, kc, vc),
        "o (fused norm, residual)": lambda: ops.ternary_decode_launch(rt, L.o, "resid", m.att, L.attn_sub_norm, eps,
                                                                      m.hn, e),
        "gate/up (fused norm, relu2)": lambda: ops.ternary_decode_launch(rt, L.gu, "relu2", m.x, L.ffn_norm, eps,
                                                                         m.fb, f),
        "down (fused norm, residual)": lambda: ops.ternary_decode_launch(rt, L.down, "resid", m.fb, L.ffn_sub_norm,
                                                                         eps, m.hn, e),
        "rmsnorm_quant (unfused path)": lambda: rt.launch("rmsnorm_quant", "PPifPPP", (1, 1), (1024, 1, 1), p(m.x),
                                                          p(L.attn_norm), np.int32(e), eps, p(m.q8), p(m.s),
                                                          p(m.qsum)),
        "gate/up (unfused, int8 input)": lambda: ops.ternary_launch(rt, L.gu, "relu2", m.q8, m.qsum, m.s, m.fb, f, 1),
    }
    out = {k: time_graph(rt, fn) * 1e6 for k, fn in parts.items()}

    def head():
        rt.launch("rmsnorm_f32", "PPifPi", (1, 1), (1024, 1, 1), p(m.x), p(m.output_norm), np.int32(e), eps,
                  p(m.hn), np.int32(1))
        ops.f16_launch(rt, m.head, a.n_vocab, e, m.hn, m.logits, a.n_vocab, 1)

    out["head (norm + F16 GEMV)"] = time_graph(rt, head, reps=5) * 1e6

    def head_argmax():
        key = int(m.step_key.gpudata)
        rt.cuda.memset_d32_async(key, 0, 2, rt.stream)
        rt.launch("rmsnorm_f32", "PPifPi", (1, 1), (1024, 1, 1), p(m.x), p(m.output_norm), np.int32(e), eps,
                  p(m.hn), np.int32(1))
        rt.launch("f16_head_argmax", "PiiPPP", ((a.n_vocab + 7) // 8, 1), (256, 1, 1), p(m.head),
                  np.int32(a.n_vocab), np.int32(e), p(m.hn), p(m.logits), np.intp(key))
        rt.launch("argmax_finish", "PPPPPi", (1, 1), (32, 1, 1), np.intp(key), p(m.argmax), p(m.tok), p(m.pos),
                  p(m.hist), np.int32(0))

    out["head + argmax folded in (the decode step's)"] = time_graph(rt, head_argmax, reps=5) * 1e6
    out["argmax"] = time_graph(rt, lambda: rt.launch("argmax_row", "PiP", (1, 1), (1024, 1, 1), p(m.logits),
                                                     np.int32(a.n_vocab), p(m.argmax))) * 1e6
    return out


def cold_breakdown(m) -> dict:
    """Device time of each matmul kernel with weights from HBM: one graph holds the kernel of all layers (more
    bytes than L2), microseconds a launch; plus the CPU cost of cuGraphLaunch and the device time of one
    isolated decode graph."""
    import numpy as np

    from bitnet_kernels.gpu import ops

    rt, a = m.rt, m.args
    e, f, hd = a.n_embd, a.n_ff, a.n_head * a.head_dim
    eps = np.float32(a.norm_eps)
    out = {}
    qkv = (a.n_head, a.n_head_kv, a.head_dim, m.n_ctx, m.cos, m.sin, int(m.kc.gpudata), int(m.vc.gpudata))

    def variants(suffix: str, **kw) -> dict:
        """The four decode matmuls of a layer, launched with the keyword arguments kw (e.g. warps=16)."""
        return {
            "qkv" + suffix: lambda L: ops.ternary_decode_launch(rt, L.qkv, "qkv", m.x, L.attn_norm, eps, m.qb, hd,
                                                               pos=m.pos, qkv=qkv, rope=m.rope_cur, **kw),
            "o" + suffix: lambda L: ops.ternary_decode_launch(rt, L.o, "resid", m.att, L.attn_sub_norm, eps, m.hn, e,
                                                             **kw),
            "gate/up" + suffix: lambda L: ops.ternary_decode_launch(rt, L.gu, "relu2", m.x, L.ffn_norm, eps, m.fb, f,
                                                                   **kw),
            "down" + suffix: lambda L: ops.ternary_decode_launch(rt, L.down, "resid", m.fb, L.ffn_sub_norm, eps, m.hn,
                                                                e, **kw),
        }

    kinds = {
        **variants(" hoisted loads", hoist=True),
        **variants(" loads after norm", hoist=False),
        "gate/up unfused": lambda L: ops.ternary_launch(rt, L.gu, "relu2", m.q8, m.qsum, m.s, m.fb, f, 1),
        **variants(" 16 warps hoisted", warps=16, hoist=True),
    }
    for name, fn in kinds.items():
        def all_layers(fn=fn):
            for L in m.layers:
                fn(L)
        out[f"{name} (HBM, all layers)"] = time_graph(rt, all_layers, reps=1, iters=20) / len(m.layers) * 1e6
    g = m._decode_graph(head="argmax")  # the greedy decode step (the certified head where prepared)
    rt.sync()
    t0 = time.perf_counter()
    for _ in range(50):
        g.replay()
    cpu = (time.perf_counter() - t0) / 50
    rt.sync()
    out["cuGraphLaunch CPU time (us)"] = cpu * 1e6
    start, end = rt.cuda.Event(), rt.cuda.Event()
    times = []
    for _ in range(20):
        start.record(rt.stream)
        g.replay()
        end.record(rt.stream)
        end.synchronize()
        times.append(end.time_since(start) * 1e3)
    out["one decode graph, device time (us)"] = statistics.median(times)
    return out


TRACE_EVENTS = [(0, "layer start"), (1, "qkv: barrier passed"), (2, "qkv: norm+quant done"),
                (16, "qkv: weights in smem"), (3, "qkv: gemv done"), (4, "attn: barrier passed"),
                (5, "attn: done"), (6, "o: barrier passed"), (7, "o: norm+quant done"), (17, "o: weights in smem"),
                (8, "o: gemv done"), (9, "gu: barrier passed"), (10, "gu: norm+quant done"),
                (18, "gu: weights in smem"), (11, "gu: gemv done"), (12, "down: barrier passed"),
                (13, "down: norm+quant done"), (19, "down: weights in smem"), (14, "down: gemv done")]


def mega_trace(m, pos: int) -> dict:
    """Timeline of one layer of the persistent decode kernel (%globaltimer in every block): microseconds from
    the layer's first start, median and max over the blocks; and the whole kernel's span."""
    if m.decode_mode != "mega":
        return {}
    m.mega_trace(1, pos)  # warm
    tr = m.mega_trace(1, pos).astype(np.int64)
    li = m.args.n_layer // 2
    t0 = tr[:, li, 0].min()
    out = {}
    for ev, name in TRACE_EVENTS:
        v = (tr[:, li, ev] - t0) / 1e3
        out[f"mega L{li} {name} (median/max us)"] = f"{np.median(v):7.2f} {v.max():7.2f}"
    clk = (tr[:, li, 21] - tr[:, li, 20]) / (tr[:, li, 14] - tr[:, li, 0])
    out["mega: SM clock during a layer (GHz, median)"] = f"{np.median(clk):.3f}"
    span = (tr[:, -1, 14].max() - tr[:, 0, 0].min()) / 1e3
    out["mega: all layers span (us)"] = f"{span:.1f}"
    out["mega: layer time (us)"] = f"{(tr[:, -1, 0].min() - tr[:, 1, 0].min()) / 1e3 / (m.args.n_layer - 2):.2f}"
    return out


def barrier_cost(m) -> dict:
    """Microseconds of one grid-wide barrier of the persistent decode kernel (1000 in one launch)."""
    import numpy as np

    from bitnet_kernels.gpu import ops

    rt = m.rt
    grid = rt.device.get_attribute(rt.cuda.device_attribute.MULTIPROCESSOR_COUNT)
    cnt = ops.gpu_empty((1,), np.uint32)
    out = {}
    for n in (10, 1010):
        def run(n=n):
            rt.cuda.memset_d32_async(cnt.gpudata, 0, 1, rt.stream)
            rt.launch("bar_test", "Pi", (grid, 1), (512, 1, 1), ops.ptr(cnt), np.int32(n))
        out[n] = time_graph(rt, run, reps=5, iters=5)
    return {"grid barrier (us)": (out[1010] - out[10]) / 1000 * 1e6}


def prefill_breakdown(m, t: int) -> dict:
    """Device time of one layer's prefill kernels for t tokens (weights of layer 0), microseconds."""
    import numpy as np

    from bitnet_kernels.gpu import ops

    rt, a, L = m.rt, m.args, m.layers[0]
    e, f, d, hd = a.n_embd, a.n_ff, a.head_dim, a.n_head * a.head_dim
    t = min(t, m.max_batch)
    eps = np.float32(a.norm_eps)
    p = ops.ptr
    kc, vc = int(m.kc.gpudata), int(m.vc.gpudata)
    qkv = (a.n_head, a.n_head_kv, d, m.n_ctx, m.cos, m.sin, kc, vc)
    m.h_pos[0] = 0
    rt.cuda.memcpy_htod(m.pos.gpudata, m.h_pos)
    parts = {
        "rmsnorm_quant": lambda: rt.launch("rmsnorm_quant", "PPifPPP", (t, 1), (1024, 1, 1), p(m.x), p(L.attn_norm),
                                           np.int32(e), eps, p(m.q8), p(m.s), p(m.qsum)),
        "qkv": lambda: ops.ternary_launch(rt, L.qkv, "qkv", m.q8, m.qsum, m.s, m.qb, hd, t, pos=m.pos, qkv=qkv),
        "attention": lambda: ops.attention_launch(rt, m.qb, kc, vc, m.att, a.n_head, a.n_head_kv, d, m.n_ctx, t,
                                                  m.pos),
        "attention flash": lambda: ops.flash_attention_launch(rt, m.qb, kc, vc, m.att, a.n_head, a.n_head_kv, d,
                                                              m.n_ctx, t, m.pos),
        "attention flash f16 P": lambda: ops.flash_attention_launch(rt, m.qb, kc, vc, m.att, a.n_head, a.n_head_kv,
                                                                    d, m.n_ctx, t, m.pos, f16_p=True),
        "o": lambda: ops.ternary_launch(rt, L.o, "resid", m.q8, m.qsum, m.s, m.hn, e, t),
        "gate/up": lambda: ops.ternary_launch(rt, L.gu, "relu2", m.q8, m.qsum, m.s, m.fb, f, t),
        "down": lambda: ops.ternary_launch(rt, L.down, "resid", m.q8, m.qsum, m.s, m.hn, e, t),
    }
    out = {f"prefill {t}: {k}": time_graph(rt, fn, reps=3, iters=5) * 1e6 for k, fn in parts.items()}
    saved = ops.MMA
    ops.MMA = False
    out[f"prefill {t}: gate/up dp4a"] = time_graph(rt, parts["gate/up"], reps=3, iters=5) * 1e6
    ops.MMA = saved
    return out


def cert_head_stats(m) -> dict:
    """The certified greedy head at the model's current hidden state: its device time (norm + quantization,
    int8 GEMV with the bound, F16 rescoring of the candidates, argmax) and how many rows it rescored, over the
    decode so far (the state after a generate_greedy) and 20 random residual rows."""
    from bitnet_kernels.gpu import ops

    rt = m.rt
    cnt = ops.gpu_empty((1,), np.uint32)
    key = int(m.step_key.gpudata)

    def head():
        rt.cuda.memset_d32_async(key, 0, 3, rt.stream)
        m._head_cert(int(m.x.gpudata), key)

    us = time_graph(rt, head, reps=5) * 1e6
    counts = []
    x0 = m.x.get()
    rng = np.random.default_rng(1)
    for i in range(21):
        if i:
            m.x.set((rng.standard_normal(x0.shape) * 3).astype(np.float32))
        rt.cuda.memset_d32(cnt.gpudata, 0, 1)
        rt.cuda.memset_d32(key, 0, 3)
        m._head_cert(int(m.x.gpudata), key, ncand=cnt)
        rt.sync()
        counts.append(int(cnt.get()[0]))
    m.x.set(x0)
    return {"certified head: norm + int8 GEMV + bound + rescore + argmax": us,
            "certified head: rows rescored (decode state)": counts[0],
            "certified head: rows rescored (mean)": float(np.mean(counts)),
            "certified head: rows rescored (max)": max(counts)}


def bytes_per_token(a, kv_len: int, head_bytes: int | None = None) -> int:
    """Bytes one decode step reads: the ternary matrices, the head (the F16 head's unless head_bytes), the K/V
    cache at kv_len keys."""
    hd, kvd = a.n_head * a.head_dim, a.n_head_kv * a.head_dim
    per_layer = (hd + 2 * kvd) * a.n_embd + hd * a.n_embd + 2 * a.n_ff * a.n_embd + a.n_embd * a.n_ff
    ternary = a.n_layer * per_layer // 4
    head = a.n_vocab * a.n_embd * 2 if head_bytes is None else head_bytes
    kv = a.n_layer * 2 * kvd * kv_len * 2
    return ternary + head + kv


def bench_torch(a, n_gen: int, n_prompt: int, n_ctx: int, compile_: bool) -> dict:
    import torch
    import torch.nn.functional as F

    dev = "cuda"
    bf = torch.bfloat16
    e, f, d, nh, nkv, L = a.n_embd, a.n_ff, a.head_dim, a.n_head, a.n_head_kv, a.n_layer
    hd, kvd = nh * d, nkv * d
    torch.manual_seed(0)

    def tern(n, k):
        return (torch.randint(-1, 2, (n, k), device=dev).to(bf) * 0.05).contiguous()

    W = [dict(qkv=tern(hd + 2 * kvd, e), o=tern(e, hd), gu=tern(2 * f, e), down=tern(e, f),
              n1=torch.ones(e, device=dev), n2=torch.ones(hd, device=dev), n3=torch.ones(e, device=dev),
              n4=torch.ones(f, device=dev)) for _ in range(L)]
    emb = (torch.randn(a.n_vocab, e, device=dev) * 0.02).to(bf)
    onorm = torch.ones(e, device=dev)
    kc = torch.zeros(L, nkv, n_ctx, d, device=dev, dtype=bf)
    vc = torch.zeros(L, nkv, n_ctx, d, device=dev, dtype=bf)
    inv = 1.0 / (a.rope_base ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
    ang = torch.arange(n_ctx, device=dev, dtype=torch.float32)[:, None] * inv[None]
    cos_t, sin_t = ang.cos(), ang.sin()
    eps = a.norm_eps

    def rms(x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w).to(bf)

    def rope(x, pos):  # x (T, H, D), pos (T,)
        c, s = cos_t[pos][:, None, :], sin_t[pos][:, None, :]
        x0, x1 = x[..., : d // 2].float(), x[..., d // 2 :].float()
        return torch.cat([x0 * c - x1 * s, x0 * s + x1 * c], -1).to(bf)

    def forward(tok, pos):  # tok, pos (T,) int64; decode when T == 1 (attention over the whole static cache)
        t = tok.shape[0]
        x = emb[tok].float()
        for i, w in enumerate(W):
            h = rms(x, w["n1"])
            qkv = h @ w["qkv"].T
            q = rope(qkv[:, :hd].view(t, nh, d), pos)
            k = rope(qkv[:, hd : hd + kvd].view(t, nkv, d), pos)
            v = qkv[:, hd + kvd :].view(t, nkv, d)
            kc[i].index_copy_(1, pos, k.transpose(0, 1))
            vc[i].index_copy_(1, pos, v.transpose(0, 1))
            qh = q.transpose(0, 1)  # (nh, T, d)
            keys = torch.arange(n_ctx, device=dev)
            mask = keys[None, :] <= pos[:, None]  # (T, n_ctx): causal over the static cache
            o = F.scaled_dot_product_attention(qh[None], kc[i][None], vc[i][None], attn_mask=mask[None, None],
                                               enable_gqa=True)[0]
            o = o.transpose(0, 1).reshape(t, hd)
            x = x + (rms(o, w["n2"]) @ w["o"].T).float()
            gu = rms(x, w["n3"]) @ w["gu"].T
            g, u = gu[:, :f], gu[:, f:]
            act = torch.relu(g).square() * u
            x = x + (rms(act, w["n4"]) @ w["down"].T).float()
        return rms(x[-1:], onorm) @ emb.T

    out = {}
    step = torch.compile(forward) if compile_ else forward
    with torch.no_grad():
        tok = torch.zeros(1, dtype=torch.long, device=dev)
        pos = torch.zeros(1, dtype=torch.long, device=dev)
        for _ in range(3):
            forward(tok, pos)
        torch.cuda.synchronize()
        n_eager = max(8, n_gen // 4)
        t0 = time.perf_counter()
        for i in range(n_eager):
            pos.fill_(33 + i)
            lg = forward(tok, pos)
            tok = lg.argmax(-1)
            tok.item()
        out["eager_tok_s"] = n_eager / (time.perf_counter() - t0)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                step(tok, pos)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_logits = step(tok, pos)
            static_tok = static_logits.argmax(-1)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(n_gen):
            pos.fill_(33 + i)
            graph.replay()
            tok.copy_(static_tok)
            static_tok.item()
        out["graph_tok_s"] = n_gen / (time.perf_counter() - t0)
        toks = torch.randint(0, a.n_vocab, (n_prompt,), device=dev)
        ps = torch.arange(n_prompt, device=dev)
        times = []
        for _ in range(4):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            forward(toks, ps)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out["prefill_tok_s"] = n_prompt / statistics.median(times[1:])
    out["bytes_per_token"] = int(sum(v.numel() * 2 for w in W for k, v in w.items() if k in ("qkv", "o", "gu", "down"))
                                 + emb.numel() * 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="GGUF model (I2_S); default: random weights of the 2B-4T shape")
    p.add_argument("--n-gen", type=int, default=256)
    p.add_argument("--n-prompt", type=int, default=512)
    p.add_argument("--ctx", type=int, default=1024)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--compile", action="store_true", help="also torch.compile the PyTorch step before capture")
    p.add_argument("--json", help="write the numbers to this file")
    p.add_argument("--ab", metavar="NAME=V1,V2", help="only the decode (host and device loop) of the step "
                   "captured under each value of GPUModel switch NAME and the prefill of --n-prompt tokens, "
                   "alternating twice; e.g. attn_cluster=1,0 or flash_prefill=0,1")
    args = p.parse_args(argv)

    from bitnet_inference.gpu_model import GPUModel, load_gpu
    from bitnet_kernels.gpu import get_runtime

    rt = get_runtime()
    bw = copy_bandwidth(rt)
    if args.model:
        m = load_gpu(args.model, n_ctx=args.ctx)
    else:
        m = GPUModel.random(model_args(SHAPE_2B4T), n_ctx=args.ctx)
    a = m.args
    mode = m.decode_mode
    if args.ab:
        print(f"device: {rt.name}; decode of {args.n_gen} tokens after a 32-token prompt, prefill of "
              f"{args.n_prompt}", flush=True)
        ab = attr_ab(m, args.ab, args.n_gen, n_prompt=args.n_prompt)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"device": rt.name, "ab": ab}, fh, indent=1)
        return 0
    ours = bench_ours(m, args.n_gen, args.n_prompt)
    ours["mode"] = mode
    ours["greedy_head"] = m.greedy_head if m.head_cert is not None else "f16"
    print(f"ours ({mode}, greedy head {ours['greedy_head']}):", ours, flush=True)
    cert_stats = cert_head_stats(m) if m.head_cert is not None else {}
    ours.update(bench_generate(m, args.n_gen))
    print("generate_step:", {k: round(v, 1) for k, v in ours.items() if k.startswith("generate_step")}, flush=True)
    # the same step with the F16 head's GEMV over every row (no certified head)
    m.greedy_head = "f16"
    m._prepare_head()
    m.set_decode_mode(mode, 0)
    f16h = bench_ours(m, args.n_gen, 64)
    ours["f16_head_device_loop_tok_s"] = f16h["device_loop_tok_s"]
    print("ours (F16 head over every row):", f16h, flush=True)
    m.greedy_head = "cert"
    m._prepare_head()
    # the same step with plain launches (the eighth session's: no programmatic dependents)
    m.pdl = False
    m.set_decode_mode(mode, 0)
    plain = bench_ours(m, args.n_gen, 64)
    ours["plain_launch_device_loop_tok_s"] = plain["device_loop_tok_s"]
    print("ours (plain launches, BITNET_GPU_PDL=0):", plain, flush=True)
    m.pdl = True
    m.set_decode_mode(mode, 0)
    m.set_decode_mode("mega")
    mega = bench_ours(m, args.n_gen, 64) if m.decode_mode == "mega" else None
    if mega:
        ours["mega_decode_tok_s"], ours["mega_device_loop_tok_s"] = mega["decode_tok_s"], mega["device_loop_tok_s"]
        print("ours (one persistent kernel a step):", mega, flush=True)
        for k, v in mega_trace(m, 32 + args.n_gen).items():
            print(f"  {k:<52} {v}", flush=True)
    m.set_decode_mode("unfused")
    unf = bench_ours(m, args.n_gen, 64)
    ours["unfused_decode_tok_s"], ours["unfused_graph_tok_s"] = unf["decode_tok_s"], unf["graph_tok_s"]
    print("ours (separate norm kernels):", unf, flush=True)
    # the kernels of the 11:09 run: one attention block a head, weights loaded after the norm prologue
    from bitnet_kernels.gpu import ops

    m.set_decode_mode("fused", 8)
    m.attn_split, ops.DEC_HOIST = False, False
    old = bench_ours(m, args.n_gen, 64)
    ours["old_decode_tok_s"], ours["old_device_loop_tok_s"] = old["decode_tok_s"], old["device_loop_tok_s"]
    print("ours (the 11:09 step: one attention block a head, loads after the norm):", old, flush=True)
    m.attn_split, ops.DEC_HOIST = True, True
    # the fifth session's decode step (weight rows asked into L2 instead of copied into shared memory, gate/up a
    # pair a warp), then the third session's kernels (also the prologue's and the dots' reductions with shuffles,
    # not redux.sync; the split attention's partials through global memory, not a cluster)
    ahead, ops.WEIGHTS_AHEAD = ops.WEIGHTS_AHEAD, "l2"
    gu_upw, m.gu_upw = m.gu_upw, 1
    m.set_decode_mode("fused", 0)
    fifth = bench_ours(m, args.n_gen, 64)
    ours["fifth_device_loop_tok_s"] = fifth["device_loop_tok_s"]
    print("ours (the fifth session's step: weights asked into L2, gate/up a pair a warp):", fifth, flush=True)
    prologue, ops.DEC_PROLOGUE = ops.DEC_PROLOGUE, "shfl"
    cluster, m.attn_cluster = m.attn_cluster, False
    m.set_decode_mode("fused", 0)
    shfl = bench_ours(m, args.n_gen, 64)
    ops.DEC_PROLOGUE, m.attn_cluster, ops.WEIGHTS_AHEAD, m.gu_upw = prologue, cluster, ahead, gu_upw
    m.set_decode_mode("fused", 0)
    ours["shfl_device_loop_tok_s"] = shfl["device_loop_tok_s"]
    print("ours (the third session's kernels: shuffle reductions):", shfl, flush=True)
    # the int8 head (--lm-head q8) on the same model
    m.lm_head = "q8"
    m._prepare_head()
    m.set_decode_mode(mode, 0)
    q8 = bench_ours(m, args.n_gen, 64)
    ours["q8_head_decode_tok_s"], ours["q8_head_device_loop_tok_s"] = q8["decode_tok_s"], q8["device_loop_tok_s"]
    print("ours (int8 head):", q8, flush=True)

    def q8_head():
        key = int(m.step_key.gpudata)
        rt.cuda.memset_d32_async(key, 0, 2, rt.stream)
        m._head_q8(int(m.x.gpudata), 1, key)

    q8_head_us = time_graph(rt, q8_head, reps=5) * 1e6
    m.lm_head = "f16"
    m._prepare_head()  # the certified greedy head again
    m.set_decode_mode(mode, 0)
    # the breakdown at the position the decode runs reached (attention reads that many keys)
    m.h_pos[0] = 32 + args.n_gen
    rt.cuda.memcpy_htod(m.pos.gpudata, m.h_pos)
    bd = breakdown(m)
    bd.update(cold_breakdown(m))
    bd.update(barrier_cost(m))
    bd.update(prefill_breakdown(m, args.n_prompt))
    bd["int8 head: norm + quant + int8 GEMV + argmax"] = q8_head_us
    bd.update(cert_stats)
    for k, v in bd.items():
        print(f"  {k:<36} {v:8.1f} us", flush=True)
    bpt = bytes_per_token(a, 32 + args.n_gen // 2)
    floor_tok_s = bw / bpt
    res = {"device": rt.name, "copy_bw_GBps": bw / 1e9, "bytes_per_token": bpt, "floor_tok_s": floor_tok_s,
           "ours": ours, "breakdown_us": bd, "shape": {k: getattr(a, k) for k in SHAPE_2B4T}}
    if not args.no_torch:
        del m
        res["torch"] = bench_torch(a, args.n_gen, args.n_prompt, args.ctx, False)
        print("torch:", res["torch"], flush=True)
        if args.compile:
            try:
                tc = bench_torch(a, args.n_gen, args.n_prompt, args.ctx, True)
                res["torch"]["compiled_graph_tok_s"] = tc["graph_tok_s"]
                res["torch"]["prefill_tok_s_second_run"] = tc["prefill_tok_s"]
                print("torch compiled:", tc, flush=True)
            except Exception as ex:  # report, keep the other numbers
                print(f"torch.compile variant failed: {type(ex).__name__}: {ex}", flush=True)
    rows = [("ours decode (host loop, argmax on device)", ours["decode_tok_s"]),
            ("ours decode (device loop: argmax feeds the next replay)", ours["device_loop_tok_s"]),
            ("ours decode (device loop, two graph instances alternating)", ours["device_loop_2exec_tok_s"]),
            ("ours decode (replay + sync each step, wall)", 1e3 / ours["synced_replay_wall_ms"]),
            ("ours decode (1e6 / one isolated graph's device us)", 1e6 / bd["one decode graph, device time (us)"]),
            ("ours decode (graph replays, events)", ours["graph_tok_s"]),
            ("ours decode, one persistent kernel a step (device loop)", ours.get("mega_device_loop_tok_s", 0)),
            ("ours decode, separate norm kernels (host loop)", ours["unfused_decode_tok_s"]),
            ("ours decode, the 11:09 step's kernels (device loop)", ours["old_device_loop_tok_s"]),
            ("ours decode, the fifth session's step (L2 asks; device loop)", ours["fifth_device_loop_tok_s"]),
            ("ours decode, the third session's kernels (shuffles; device loop)", ours["shfl_device_loop_tok_s"]),
            ("ours decode, F16 head GEMV over every row (device loop)", ours["f16_head_device_loop_tok_s"]),
            ("ours decode, plain launches: the eighth session's step (device loop)",
             ours["plain_launch_device_loop_tok_s"]),
            ("generate_step greedy (greedy_stream), prefill included", ours["generate_step_greedy_tok_s"]),
            ("generate_step top-k 40 sampling (certified top-k head)", ours["generate_step_topk40_candidates_tok_s"]),
            ("generate_step top-k 40 sampling (whole logits to the host)",
             ours["generate_step_topk40_whole_logits_tok_s"]),
            ("generate_step top-k 40 + repeat penalty 1.1 (candidates)",
             ours["generate_step_topk40_rp_candidates_tok_s"]),
            ("generate_step top-k 40 + repeat penalty 1.1 (whole logits)",
             ours["generate_step_topk40_rp_whole_logits_tok_s"]),
            ("ours decode, int8 head --lm-head q8 (device loop)", ours["q8_head_device_loop_tok_s"]),
            (f"ours prefill {args.n_prompt}", ours["prefill_tok_s"])]
    if "torch" in res:
        tr = res["torch"]
        rows += [("torch bf16 decode eager", tr["eager_tok_s"]), ("torch bf16 decode CUDA graph", tr["graph_tok_s"]),
                 (f"torch bf16 prefill {args.n_prompt}", tr["prefill_tok_s"])]
        if "prefill_tok_s_second_run" in tr:
            rows.append((f"torch bf16 prefill {args.n_prompt} (second run)", tr["prefill_tok_s_second_run"]))
        if "compiled_graph_tok_s" in tr:
            rows.append(("torch bf16 decode torch.compile + CUDA graph", tr["compiled_graph_tok_s"]))
    print(f"\ndecode mode: {ours['mode']}")
    print(f"device: {rt.name}; d2d copy {bw / 1e9:.0f} GB/s (read+write); bytes/token {bpt / 1e6:.1f} MB; "
          f"floor {floor_tok_s:.0f} tok/s")
    print(f"{'what':<68} {'tok/s':>10}")
    for name, v in rows:
        print(f"{name:<68} {v:>10.1f}")
    best_ours = max(ours["decode_tok_s"], ours["device_loop_tok_s"], ours["device_loop_2exec_tok_s"],
                    ours.get("mega_device_loop_tok_s", 0))
    print(f"ours decode / floor: {best_ours / floor_tok_s:.1%} (the model's bytes, F16 head); int8 head: "
          f"{ours['q8_head_device_loop_tok_s']:.1f} tok/s")
    if cert_stats:
        moved = bytes_per_token(a, 32 + args.n_gen // 2, head_bytes=a.n_vocab * (a.n_embd + 12)
                                + int(cert_stats["certified head: rows rescored (mean)"]) * a.n_embd * 2)
        print(f"certified greedy head: {moved / 1e6:.1f} MB read a token, floor {bw / moved:.0f} tok/s; "
              f"ours decode / that floor: {best_ours / (bw / moved):.1%}")
    if "torch" in res:
        best = max(res["torch"]["eager_tok_s"], res["torch"]["graph_tok_s"], res["torch"].get("compiled_graph_tok_s", 0))
        best_pf = max(res["torch"]["prefill_tok_s"], res["torch"].get("prefill_tok_s_second_run", 0))
        print(f"ours decode / best torch decode: {best_ours / best:.2f}x; "
              f"prefill ours / best torch prefill: {ours['prefill_tok_s'] / best_pf:.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
