"""Decode steps of a random 2B-4T-shaped model on the device, for profiling.

    python tools/gpu_profile_step.py [n_steps] [mode: fused | mega | unfused]   # steps to run under ncu
    python tools/gpu_profile_step.py ablate [pos] [n_ctx] [configs] [full]     # in-graph cost of each kernel
    python tools/gpu_profile_step.py timeline [pos]                            # one layer's stage timestamps

`ablate` captures the one-token step (the decode graph) with one kind of layer kernel left out, or with every
layer kernel replaced by an empty kernel of the same grid, for each combination of the split attention
(`attn_split`) and the hoisted loads of the decode matmuls (`tdech_*`), and prints the device time of each
graph: the difference to the full step over the layer count is what one kernel of that kind costs inside the
graph, gaps included (`full`: only the full step of each variant). `timeline` replays the step with layer 15's
kernels writing %globaltimer at their stage points (thread 0 of every block) and prints, per kernel, when its
first block started, the median block's stages, and when its last block ended, in us from the layer's first QKV
block (the kernels compiled with their timestamps: BITNET_GPU_TRACE=1, which `timeline` sets).
"""

import os
import statistics
import sys

import numpy as np

KINDS = ("qkv", "attn", "o", "gu", "down")


def build(pos: int, n_ctx: int = 1024):
    sys.path.insert(0, "tools")
    from bench_gpu import SHAPE_2B4T, model_args

    from bitnet_inference.gpu_model import GPUModel

    m = GPUModel.random(model_args(SHAPE_2B4T), n_ctx=n_ctx)
    m.cache.reset()
    m.prefill(np.arange(1, pos + 1))
    m.h_pos[0] = pos  # the captured step reads its position from device memory
    m.rt.cuda.memcpy_htod(m.pos.gpudata, m.h_pos)
    return m


def kind_of(m, name: str, args) -> str:
    if name.startswith("tdec"):
        epi = name.split("_", 1)[1]
        if epi == "qkv":
            return "qkv"
        if epi in ("relu2", "silu"):
            return "gu"
        return "down" if int(args[2]) == m.args.n_ff else "o"
    if name.startswith("attn") or name == "attention":
        return "attn"
    return "other"


def capture_step(m, rt):
    """One greedy decode step (the certified head where prepared) enqueued eagerly (compiles and warms every
    kernel), then captured as a CUDA graph."""
    from bitnet_kernels.gpu import CudaGraph

    m._enqueue_step(False, "argmax")
    rt.sync()
    g = CudaGraph(rt.stream)
    g.begin()
    m._enqueue_step(False, "argmax")
    g.end()
    return g


def step_time(m, skip: set, noop: bool, reps: int = 20) -> float:
    """Device microseconds of one captured decode step with the kernels of kinds `skip` left out (noop: an
    empty kernel of the same grid instead)."""
    rt = m.rt
    orig = type(rt).launch.__get__(rt)

    def launch(name, sig, grid, block, *args, shared=0, pdl=False):
        if kind_of(m, name, args) in skip:
            if noop:
                orig("noop", "", grid, block)
            return
        orig(name, sig, grid, block, *args, shared=shared, pdl=pdl)

    rt.launch = launch
    try:
        g = capture_step(m, rt)
    finally:
        del rt.launch
    for _ in range(3):
        g.replay()
    start, end = rt.cuda.Event(), rt.cuda.Event()
    times = []
    for _ in range(5):
        start.record(rt.stream)
        for _ in range(reps):
            g.replay()
        end.record(rt.stream)
        end.synchronize()
        times.append(end.time_since(start) * 1e3 / reps)
    g.close()
    return statistics.median(times)


# (mode, split attention, label): mode "kind:warps:prologue:cluster attention" (kind: fused = the 11:09 matmuls,
# fusedh = hoisted loads with the weight rows of matrices up to 6 MiB asked into L2, fusedhn / fusedhp = never /
# always asked, fusedhw = those rows copied into shared memory and gate/up two pairs a warp with its rows copied
# too (the sixth session's default; the others take gate/up a pair a warp); warps: 0
# sized per matrix, else 8 or 16; prologue: shfl | redux, see ops.DEC_PROLOGUE; cluster attention: 1 | 0); the
# third session's variants first (its table in docs/gpu.md), then the fourth session's
CONFIGS_OLD = [("fused:8:shfl:0", False, "11:09 step: one attention block a head"),
               ("fused:8:shfl:0", True, "split attention, matmul loads after the norm"),
               ("fusedh:8:shfl:0", True, "split attention, hoisted loads, 8-warp blocks"),
               ("fusedh:16:shfl:0", True, "split attention, hoisted loads, 16-warp blocks"),
               ("fusedhn:0:shfl:0", True, "split attn, hoisted, blocks sized per SM"),
               ("fusedhp:0:shfl:0", True, "the same + all weight rows asked into L2 first")]
CONFIGS = [("fusedh:0:shfl:0", True, "third session's default (shuffle reductions)"),
           ("fusedh:0:redux:0", True, "+ redux.sync reductions"),
           ("fusedh:0:redux:1", True, "+ cluster attention up to 512 keys"),
           ("fusedhw:0:redux:1", True, "+ weights copied into smem (default)")]


def set_config(m, mode: str, split: bool) -> None:
    from bitnet_kernels.gpu import ops

    kind, w, prologue, cl = (mode.split(":") + ["0"])[:4]
    ops.DEC_HOIST = kind in ("fusedh", "fusedhn", "fusedhp", "fusedhw")
    ops.AHEAD_ALL = {"fusedhp": True, "fusedhn": False}.get(kind)
    ops.WEIGHTS_AHEAD = "smem" if kind == "fusedhw" else "l2"
    m.gu_upw = 2 if kind == "fusedhw" else 1  # gate/up: two pairs a warp with its weights staged, or one
    ops.DEC_PROLOGUE = prologue
    m.attn_cluster = cl == "1"
    m.set_decode_mode("fused", int(w))
    m.attn_split = split


def ablate(pos: int, n_ctx: int = 1024, configs=None, full_only: bool = False) -> int:
    m = build(pos, n_ctx)
    n = m.args.n_layer
    print(f"device: {m.rt.name}; position {pos}, context {m.n_ctx}; device us of one decode step (graph), and per "
          "layer kernel")
    print(f"{'':<44} {'full':>8} " + " ".join(f"{'-' + k:>8}" for k in KINDS) + f" {'noop all':>9} {'none':>8}")
    for mode, split, label in configs or CONFIGS:
        set_config(m, mode, split)
        m._att_long = m._long(pos)  # the graph decode_greedy would replay at this position
        full = step_time(m, set(), False)
        if full_only:
            print(f"{label:<44} {full:8.1f}", flush=True)
            continue
        drops = [step_time(m, {k}, False) for k in KINDS]
        noop = step_time(m, set(KINDS), True)
        none = step_time(m, set(KINDS), False)
        per = " ".join(f"{(full - d) / n:8.2f}" for d in drops)
        print(f"{label:<44} {full:8.1f} {per} {(noop - none) / n / 5:9.2f} {none:8.1f}", flush=True)
    print("columns -K: (full - step without kind K) / layers = us one kernel of kind K costs in the graph; "
          "noop all: us an empty kernel of the same grid costs (a layer's 5 replaced, per kernel); none: the step "
          "without any layer kernel (embedding, head, argmax)")
    return 0


STAGES = {"matmuls": "start, prologue done, GEMV loop done (warp 0, hoisted kernels only), epilogue done (warp 0), "
                    "prologue's loads in, sum of squares reduced, maximum reduced (hoisted kernels)",
          "attn": "start, K/V in smem, P.V done, counter taken (splits > 1), head done, combine's loads done, "
                  "fence after the ticket done"}


def timeline_one(m, layer: int) -> dict:
    """Stage timestamps of layer `layer`'s five kernels in one replay of the captured step."""
    from bitnet_kernels.gpu import ops

    rt, a = m.rt, m.args
    if not rt.traced:
        raise SystemExit("timeline: the kernels' timestamps are compiled in only with BITNET_GPU_TRACE=1 set before "
                         "the runtime starts (the timeline command sets it)")
    L = m.layers[layer]
    grid = lambda mat, r: -(-(mat.n // r) // m.dec_warps(mat, r))  # noqa: E731
    blocks = {"qkv": grid(L.qkv, 2), "attn": a.n_head * m.att_splits, "o": grid(L.o, 1), "gu": grid(L.gu, 2),
              "down": grid(L.down, 1)}
    sms = ops._sm_count(rt)  # the programmatic-dependent kernels' grids: at least one block an SM
    bufs = {k: ops.gpu_empty((max(n, sms), 8), np.uint64) for k, n in blocks.items()}
    m._trace = {"layer": layer, **bufs}
    try:
        g = capture_step(m, rt)
    finally:
        m._trace = None
    for _ in range(3):
        g.replay()
    for b in bufs.values():
        rt.cuda.memset_d32(b.gpudata, 0, b.size * 2)
    g.replay()
    rt.sync()
    g.close()
    return {k: b.get().astype(np.int64) for k, b in bufs.items()}


def timeline(pos: int, configs=None) -> int:
    m = build(pos)
    layer = m.args.n_layer // 2
    print(f"device: {m.rt.name}; position {pos}; layer {layer}; us from the layer's first QKV block")
    for mode, split, label in configs or CONFIGS:
        set_config(m, mode, split)
        tr = timeline_one(m, layer)
        t0 = tr["qkv"][:, 0][tr["qkv"][:, 0] > 0].min()
        print(f"-- {label}")
        for k in KINDS:
            t = tr[k]
            t = t[t[:, 0] > 0]
            if not len(t):
                print(f"  {k:<5} (no trace)")
                continue
            cols = []
            for st in range(7):
                v = t[:, st]
                v = v[v > 0]
                cols.append(f"{(np.median(v) - t0) / 1e3:7.2f}" if len(v) else "      -")
            end = t.max()
            print(f"  {k:<5} blocks {len(t):4d} first {(t[:, 0].min() - t0) / 1e3:7.2f} | median stages "
                  f"{' '.join(cols)} | last end {(end - t0) / 1e3:7.2f}")
            maxes = []
            for st in range(7):
                v = t[:, st]
                v = v[v > 0]
                maxes.append(f"{(v.max() - t0) / 1e3:7.2f}" if len(v) else "      -")
            print(f"  {'':<5} {'':>11} {'':>13} | latest stages {' '.join(maxes)}")
    for k, v in STAGES.items():
        print(f"stages, {k}: {v}")
    return 0


def main() -> int:
    # ablate / timeline [pos] [n_ctx] [config indices, comma-separated, or "old" for the third session's rows]
    sel = sys.argv[4] if len(sys.argv) > 4 else ""
    configs = CONFIGS_OLD + CONFIGS[:1] if sel == "old" else [CONFIGS[int(i)] for i in sel.split(",")] if sel else None
    if len(sys.argv) > 1 and sys.argv[1] == "ablate":
        return ablate(int(sys.argv[2]) if len(sys.argv) > 2 else 288, int(sys.argv[3]) if len(sys.argv) > 3 else 1024,
                      configs, full_only=len(sys.argv) > 5 and sys.argv[5] == "full")
    if len(sys.argv) > 1 and sys.argv[1] == "timeline":
        os.environ["BITNET_GPU_TRACE"] = "1"  # the kernels with their stage timestamps (a cubin of their own)
        return timeline(int(sys.argv[2]) if len(sys.argv) > 2 else 288, configs)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    m = build(199)
    m.set_decode_mode(sys.argv[2] if len(sys.argv) > 2 else "fused")
    tok = 5
    for i in range(n):
        tok = m.decode_greedy(tok, 199 + i)
    m.rt.sync()
    print("ok", tok)
    return 0


if __name__ == "__main__":
    sys.exit(main())
