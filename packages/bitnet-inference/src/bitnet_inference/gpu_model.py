"""The BitNet forward pass on an NVIDIA GPU (pycuda kernels of bitnet_kernels.gpu), `fast` numerics.

Same interface as generate.Model for decode and prefill: `forward(tokens, pos0, logits)`, `prefill`,
`cache.reset()`, `n_ctx`, `args`. At load every I2_S matrix is repacked on the device into the T2 layout
(16-byte loads of 64 weights); Q/K/V become one matrix whose rows come in RoPE pairs, gate/up one matrix of
interleaved rows, so a layer is five kernels: QKV (+RoPE, +KV store), attention, O (+residual),
gate/up (+squared ReLU or SiLU), down (+residual). For one token each matmul block computes its input's
RMSNorm + int8 quantization itself (into shared memory; BITNET_GPU_FUSED_NORM=0 turns that off); for a batch a
separate kernel does it once.
Every buffer (KV cache included) is allocated once; a single-token step is captured as a CUDA graph on first
use and replayed (position and token live in device memory).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bitnet_inference.args import ModelArgs
from bitnet_inference.errors import ContextOverflowError, EngineError
from bitnet_inference.models import ARCHS
from bitnet_inference.numerics.base import RopeTable
from bitnet_models import ModelConfigError, read_gguf

F32 = np.float32
MAX_BATCH = 512
TOPK_MAXC = 16384  # candidates the certified top-k head returns at most (more: the F16 head's full logits)
TOPK_BINS = 2048  # Q8C_BINS in kernels.cu
ATT_SPLIT_KEYS = 32  # keys a block of the split one-token attention (AS_KEYS in kernels.cu)
ATT_WIDE = 64  # keys a split at most, from 257 to 512 keys (AS_WIDE in kernels.cu)
ATT_CLUSTER = 8  # blocks a cluster of attn_splitc (AS_CLUSTER in kernels.cu)
HEAD_NORM_MAX_K = 8192  # head_norm_q8c keeps the row in registers: HN_MAXR x 1024 (kernels.cu)


def attn_split_smem(d: int) -> int:
    """Dynamic shared memory of an attn_split(c)(p) block at head_dim d: a split's K and V rows, then pv."""
    return 2 * ATT_WIDE * (d + 8) * 2 + 4096


def _ops():
    from bitnet_kernels.gpu import ops
    from bitnet_kernels.gpu.runtime import get_runtime

    return ops, get_runtime()


def parse_memory_limit(text: str | None) -> int | None:
    """BITNET_GPU_MEMORY_LIMIT: bytes, or a number with K/M/G (binary units)."""
    if not text:
        return None
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise EngineError(f"BITNET_GPU_MEMORY_LIMIT={text!r} is not a size; write bytes or e.g. 8G") from None


def greedy_head_setting() -> str:
    """The head of greedy one-token steps with the F16 head (BITNET_GPU_GREEDY_HEAD): "cert" (default) finds the
    F16 head's argmax from the int8 head and a certified bound (q8c_head in kernels.cu), computing F16 logits
    only for the rows the bound cannot rule out: the tokens are the F16 head's, bit for bit, for 328 MB more GPU
    memory at the 2B-4T shape; "f16": the F16 head."""
    v = os.environ.get("BITNET_GPU_GREEDY_HEAD", "cert")
    if v not in ("cert", "f16"):
        raise EngineError(f"BITNET_GPU_GREEDY_HEAD is cert or f16, got {v!r}")
    return v


def qkv_rows(n_head: int, n_kv: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Destination rows of the fused QKV matrix: Q and K rows in RoPE pairs (i, i + d/2), then V in order."""
    half = d // 2

    def paired(n_heads: int, base: int) -> np.ndarray:
        r = np.arange(n_heads * d)
        h, i = r // d, r % d
        p = base + h * half + np.where(i < half, i, i - half)
        return 2 * p + (i >= half)

    pq, pk = n_head * half, n_kv * half
    return paired(n_head, 0), paired(n_kv, pq), 2 * (pq + pk) + np.arange(n_kv * d)


class _Cache:
    """The device KV cache's bookkeeping (the arrays live on the device)."""

    def __init__(self, model: GPUModel):
        self.model = model
        self.pos = np.zeros(1, np.int64)
        self.n_ctx = model.n_ctx

    def reset(self, slot: int | None = None) -> None:
        self.pos[:] = 0


class _Layer:
    pass


class GPUModel:
    """A GGUF model on the GPU. `numerics` must be "fast" (the GPU path's numerics)."""

    def __init__(self, path: str | Path, numerics: str = "fast", n_ctx: int | None = None, max_batch: int = MAX_BATCH,
                 gguf=None, args: ModelArgs | None = None, lm_head: str = "f16"):
        if numerics != "fast":
            raise EngineError(f"the GPU path computes `fast` numerics; got --numerics {numerics}")
        if lm_head not in ("f16", "q8"):
            raise EngineError(f"unknown LM head {lm_head!r}; choose f16 (default) or q8")
        self.lm_head = lm_head
        self.greedy_head = greedy_head_setting()
        self.path = Path(path) if path else None
        self.gguf = gguf if gguf is not None else read_gguf(self.path)
        if args is None:
            try:
                args = ModelArgs.from_gguf(self.gguf)
            except ModelConfigError as e:
                raise EngineError(str(e)) from None
        self.args = a = args
        arch = ARCHS.get(a.arch)
        if arch is None:
            raise EngineError(f"architecture {a.arch!r} has no engine module; supported: {', '.join(ARCHS)}")
        self.ffn_act = arch.Model.ffn_act
        self.head_f16_always = arch.Model.head_f16_always
        self.uses_scales = arch.Model.uses_scales
        self.n_ctx = n_ctx or min(a.n_ctx_train, 4096)
        self.max_batch = max_batch
        if a.n_rot != a.head_dim:
            raise EngineError(f"the GPU path needs RoPE over the whole head (n_rot {a.n_rot} != head_dim {a.head_dim})")
        if a.head_dim > 256 or a.head_dim % 8:
            raise EngineError(f"the GPU path supports head_dim up to 256 in multiples of 8, got {a.head_dim}")
        if self.n_ctx > 7168:  # attention keeps a row of scores in shared memory
            raise EngineError(f"the GPU path supports a context of up to 7168 tokens, got {self.n_ctx}; lower -c")
        self.ops, self.rt = _ops()
        self._check_memory()
        self._alloc()
        self._init_decode_mode()
        self.cache = _Cache(self)

    def _init_decode_mode(self) -> None:
        self._graph: dict = {}  # the captured decode step by ("long" (see _long), head mode); the greedy one
        self._greedy: dict = {}
        self._att_long = False  # set while a "long" step is queued: attn_split instead of attn_splitc
        self._mega = None
        self.fused_norm = os.environ.get("BITNET_GPU_FUSED_NORM", "1") != "0"
        # warps a fused decode block: 0 (default) sizes the blocks so every SM gets the same rows (one block an
        # SM, two for the largest matrix), 8 or 16 (BITNET_GPU_DECODE_WARPS) fixed
        dw = os.environ.get("BITNET_GPU_DECODE_WARPS", "0")
        self.decode_warps = int(dw) if dw in ("8", "16") else 0
        # the persistent one-kernel step is opt-in: on an H100 it is slower than 5 kernels a layer (docs/gpu.md)
        self.megakernel = os.environ.get("BITNET_GPU_MEGAKERNEL", "0") == "1" and self.fused_norm
        # one-token attention split over keys (attn_split); BITNET_GPU_ATTN_SPLIT=0: one block a head
        self.attn_split = os.environ.get("BITNET_GPU_ATTN_SPLIT", "1") != "0"
        # split attention with thread-block clusters (attn_splitc: up to ATT_CLUSTER splits a head combined through
        # distributed shared memory, no global partials or counter) while the keys fit its cluster path; past
        # that, a second captured step with attn_split (see _long); BITNET_GPU_ATTN_CLUSTER=0: attn_split always
        self.attn_cluster = os.environ.get("BITNET_GPU_ATTN_CLUSTER", "1") != "0"
        # prompts (T > 1), read at each forward: 1, the tiled attention on the f16 tensor cores (flash_attn_d*,
        # head_dim 64 / 128 / 256; P as two f16 halves); 2, the same with P rounded to f16 once (flash_attn_f16p_d*,
        # kept for comparison: moves the fixture's logits by 2.4%); 0 (or another head_dim): one 512-thread block a
        # (head, query) (`attention`)
        self.flash_prefill = 1
        # one-token gate/up, read at capture: 2, two pairs a warp, one block an SM, the weights copied into shared
        # memory before the norm prologue (as QKV, O and down); 1, a pair a warp, two blocks an SM, the weights read
        # after the prologue (the fifth session's)
        self.gu_upw = 2
        # one-token steps, read at capture: the layer kernels as programmatic dependents of the kernel before
        # (tdechp_*, attn_split(c)p: the next kernel's blocks resident beside the running one's, copying their
        # weights and what else no kernel of the step writes before griddepcontrol.wait); BITNET_GPU_PDL=0: plain
        # launches (tdechw_*)
        self.pdl = os.environ.get("BITNET_GPU_PDL", "1") != "0"


    # -- the one-kernel decode step ---------------------------------------------------------------------------

    def _mega_plan(self) -> dict | None:
        """Sizes of the persistent decode kernel for this model and card, or None where it does not apply (then
        the step runs as 5 kernels a layer)."""
        a, rt = self.args, self.rt
        cuda = rt.cuda
        d, e, f, hd = a.head_dim, a.n_embd, a.n_ff, a.n_head * a.head_dim
        d8 = d // 8
        if d % 8 or d8 & (d8 - 1) or d8 > 32 or a.n_head % a.n_head_kv or max(e, f, hd) > 8192:
            return None
        if min(e, f, hd) % 64:
            return None
        grid = rt.device.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)
        optin = rt.device.get_attribute(cuda.device_attribute.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        fn = rt.fn("decode_step", "P")
        try:
            static = fn.get_attribute(cuda.function_attribute.SHARED_SIZE_BYTES)
        except Exception:  # the kernel's static shared memory is about 4 KiB
            static = 8192
        kvd = a.n_head_kv * d
        mats = [(hd + 2 * kvd, e, 2), (e, hd, 1), (2 * f, e, 2), (e, f, 1)]  # rows, K, rows a unit
        units = [-(-(n // r) // grid) for n, k, r in mats]
        if max(units[0], units[1]) > 256:  # MK_MAXU: rows a block keeps in shared memory
            return None
        maxrows = max(u * r for u, (n, k, r) in zip(units, mats))
        sc_off = (max(u * r * k // 4 for u, (n, k, r) in zip(units, mats)) + 15) & ~15
        buf = (sc_off + 8 * maxrows + 15) & ~15  # the words, then the rows' weight and output scales
        nsplit = max(1, min(32, grid // a.n_head))
        sc_len = -(-self.n_ctx // nsplit)
        rest = ((max(e, f, hd) + 15) & ~15) + ((sc_len + 3) & ~3) * 4 + 16 * d * 4
        for nbuf in (3, 2):
            smem = nbuf * buf + rest
            if smem + static <= optin:
                return dict(grid=grid, units=units, buf=buf, nbuf=nbuf, nsplit=nsplit, smem=smem, sc_off=sc_off,
                            maxrows=maxrows)
        return None

    def _mega_setup(self):
        """Device structures of the persistent decode kernel (built once, after the weights)."""
        if self._mega is not None:
            return self._mega
        import struct

        plan = self._mega_plan()
        if plan is None:
            self._mega = False
            return False
        ops, a, rt = self.ops, self.args, self.rt
        cuda = rt.cuda
        p = lambda g: int(g.gpudata)  # noqa: E731
        kv_layer = a.n_head_kv * self.n_ctx * a.head_dim * 2
        blob = b""
        for i, L in enumerate(self.layers):
            mats = (L.qkv, L.o, L.gu, L.down)
            norms = (L.attn_norm, L.attn_sub_norm, L.ffn_norm, L.ffn_sub_norm)
            blob += struct.pack("<18Q", *[p(m.words) for m in mats], *[p(m.ws) for m in mats],
                                *[p(m.os) for m in mats], *[p(nw) for nw in norms],
                                p(self.kc) + i * kv_layer, p(self.vc) + i * kv_layer)
        self.mk_layers = ops.to_gpu(np.frombuffer(blob, np.uint8))
        self.mk_part = ops.gpu_empty((a.n_head * plan["nsplit"] * (a.head_dim + 2),), F32)
        self.mk_sync = ops.gpu_empty((256,), np.uint32)
        cuda.memset_d32(self.mk_sync.gpudata, 0, 256)
        self._mega = plan
        self.mk_args = ops.to_gpu(self._mega_args(0))
        fn = rt.fn("decode_step", "P")
        fn.set_attribute(cuda.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, plan["smem"])
        return plan

    def _mega_args(self, trace: int) -> np.ndarray:
        """The persistent kernel's StepArgs (kernels.cu) as bytes; trace: device address of a timestamp buffer
        (grid, n_layer, 24) uint64, or 0."""
        import struct

        a, plan = self.args, self._mega
        p = lambda g: int(g.gpudata)  # noqa: E731
        act = 0 if self.ffn_act == "relu2" else 1
        args = struct.pack("<13Q12i4ifiii", p(self.mk_layers), p(self.x), p(self.qb), p(self.att), p(self.fb),
                           p(self.mk_part), p(self.cos), p(self.sin), p(self.pos), p(self.mk_sync),
                           p(self.output_norm), p(self.hn), trace,
                           a.n_layer, a.n_embd, a.n_ff, a.n_head * a.head_dim, a.n_head, a.n_head_kv, a.head_dim,
                           self.n_ctx, act, 1, plan["nsplit"], plan["buf"], *plan["units"], float(a.norm_eps),
                           plan["nbuf"], plan["sc_off"], plan["maxrows"])
        return np.frombuffer(args, np.uint8)

    def mega_trace(self, token: int, pos: int) -> np.ndarray:
        """One decode step of the persistent kernel with timestamps: (grid, n_layer, 24) ns (%globaltimer) at
        its stage points (see decode_step in kernels.cu); for the benchmark's breakdown."""
        ops, rt, a = self.ops, self.rt, self.args
        if self.decode_mode != "mega":
            raise EngineError("the persistent decode kernel is not in use")
        plan = self._mega
        tr = ops.gpu_empty((plan["grid"], a.n_layer, 24), np.uint64)
        rt.cuda.memset_d32(tr.gpudata, 0, tr.size * 2)
        targs = ops.to_gpu(self._mega_args(int(tr.gpudata)))
        self.h_tok[0], self.h_pos[0] = token, pos
        rt.cuda.memcpy_htod(self.tok.gpudata, self.h_tok[:1])
        rt.cuda.memcpy_htod(self.pos.gpudata, self.h_pos)
        p = ops.ptr
        rt.cuda.memset_d32_async(self.mk_sync.gpudata, 0, 256, rt.stream)
        rt.launch("embed", "PPiP", (1, 1), (256, 1, 1), p(self.emb), p(self.tok), np.int32(a.n_embd), p(self.x))
        rt.launch("decode_step", "P", (plan["grid"], 1), (512, 1, 1), p(targs), shared=plan["smem"])
        rt.sync()
        return tr.get()

    def _enqueue_mega(self, step: bool) -> None:
        """One decode step as: reset the sync words, embedding, the persistent kernel, head + argmax."""
        ops, rt, a = self.ops, self.rt, self.args
        plan = self._mega
        p = ops.ptr
        rt.cuda.memset_d32_async(self.mk_sync.gpudata, 0, 256, rt.stream)
        rt.launch("embed", "PPiP", (1, 1), (256, 1, 1), p(self.emb), p(self.tok), np.int32(a.n_embd), p(self.x))
        rt.launch("decode_step", "P", (plan["grid"], 1), (512, 1, 1), p(self.mk_args), shared=plan["smem"])
        key = np.intp(int(self.mk_sync.gpudata) + 8)
        if self.head_q8 is not None:
            self._head_q8(int(self.x.gpudata), 1, int(key))
        else:
            rt.launch("f16_head_argmax", "PiiPPP", ((a.n_vocab + 7) // 8, 1), (256, 1, 1), p(self.head),
                      np.int32(a.n_vocab), np.int32(a.n_embd), p(self.hn), p(self.logits), key)
        rt.launch("argmax_finish", "PPPPPi", (1, 1), (32, 1, 1), key, p(self.argmax), p(self.tok), p(self.pos),
                  p(self.hist), np.int32(1 if step else 0))

    def _enqueue_step(self, step: bool, head: str | None = None) -> None:
        """One decode step as 5 kernels a layer; the head folds the argmax in (step: it feeds the next replay);
        head (default: "argmax" for a greedy step, else "logits"): "logits", the F16 head's logits and argmax;
        "argmax", the certified greedy head where prepared (only the argmax is right); "topk", the certified top-k
        head (its candidates' logits in topk_list, see _head_topk)."""
        rt, p = self.rt, self.ops.ptr
        key = int(self.step_key.gpudata)
        # (embed_rope zeroes the argmax key and the certified head's bound key)
        self._enqueue(1, "all", argmax_key=key, head=head or ("argmax" if step else "logits"), zero=key)
        rt.launch("argmax_finish", "PPPPPi", (1, 1), (32, 1, 1), np.intp(key), p(self.argmax), p(self.tok),
                  p(self.pos), p(self.hist), np.int32(1 if step else 0), pdl=self.pdl)

    @property
    def decode_mode(self) -> str:
        """"mega" (one persistent kernel a step), "fused" (5 kernels a layer, norm in each block) or "unfused"."""
        if not self.fused_norm:
            return "unfused"
        return "mega" if self.megakernel and self._mega_setup() else "fused"

    # -- load -------------------------------------------------------------------------------------------------

    def _weight_bytes(self) -> int:
        a = self.args
        hd = a.n_head * a.head_dim
        kvd = a.n_head_kv * a.head_dim
        per_layer = (hd + 2 * kvd) * a.n_embd + hd * a.n_embd + 2 * a.n_ff * a.n_embd + a.n_embd * a.n_ff
        return a.n_layer * per_layer // 4 + a.n_vocab * a.n_embd * 2

    def _buffer_bytes(self) -> int:
        a = self.args
        kv = 2 * a.n_layer * a.n_head_kv * self.n_ctx * a.head_dim * 2
        t = self.max_batch
        act = t * (4 * (3 * a.n_embd + a.n_head * a.head_dim + a.n_ff) + max(a.n_embd, a.n_ff))
        head_q8 = a.n_vocab * (a.n_embd + 4) if getattr(self, "lm_head", "f16") == "q8" else 0
        if getattr(self, "lm_head", "f16") == "f16" and getattr(self, "greedy_head", "cert") == "cert":
            # the certified heads' int8 rows, scales, norms and bounds; the top-k head's histogram and list
            head_q8 = a.n_vocab * (a.n_embd + 20) + (TOPK_BINS + 1 + 2 * TOPK_MAXC) * 4
        return kv + act + t * a.n_vocab * 4 + self.n_ctx * a.head_dim * 4 + head_q8

    def _check_memory(self) -> None:
        need = self._weight_bytes() + self._buffer_bytes()
        limit = parse_memory_limit(os.environ.get("BITNET_GPU_MEMORY_LIMIT"))
        free, _total = self.rt.cuda.mem_get_info()
        from bitnet_kernels.gpu.errors import GPUMemoryError

        if limit is not None and need > limit:
            raise GPUMemoryError(f"the model needs {need / 2**30:.2f} GiB on the GPU but BITNET_GPU_MEMORY_LIMIT is "
                                 f"{limit / 2**30:.2f} GiB; raise the limit or lower -c/--ctx-size")
        if need > free:
            raise GPUMemoryError(f"the model needs {need / 2**30:.2f} GiB on the GPU, {free / 2**30:.2f} GiB is free; "
                                 "lower -c/--ctx-size or use --device cpu")

    def _alloc(self) -> None:
        ops, a = self.ops, self.args
        e, f, hd, d = a.n_embd, a.n_ff, a.n_head * a.head_dim, a.head_dim
        t = self.max_batch
        emp = ops.gpu_empty
        self.x = emp((t, e), F32)
        self.q8 = emp((t, max(e, f, hd)), np.int8)
        self.s = emp((t,), F32)
        self.qsum = emp((t,), np.int32)
        self.qb = emp((t, hd), F32)
        self.att = emp((t, hd), F32)
        self.fb = emp((t, f), F32)
        self.hn = emp((t, e), F32)
        self.logits = emp((t, a.n_vocab), F32)
        self.tok = emp((t,), np.int32)
        self.pos = emp((1,), np.int32)
        self.argmax = emp((1,), np.int32)
        self.hist = emp((self.n_ctx + 1,), np.int32)
        # the decode step's argmax (64-bit key, see f16_head_argmax), then the certified heads' bound key (q8c_head)
        # and the top-k threshold key (q8c_thresh)
        self.step_key = emp((4,), np.uint32)
        self.head_q8 = self.head_scale = None  # the int8 head (lm_head "q8"), made by _prepare_head
        self.head_cert = None  # the certified greedy head's tensors (greedy_head "cert"), made by _prepare_head
        self.hx = emp((2,), F32)  # its activation norms |hn|, |hn - xq / s|
        # the certified top-k head's arguments (k, the repeat penalty's row count, its float bits, its rows), and
        # its candidate list (count, pairs)
        self.topk_args = emp((3 + self.n_ctx,), np.int32)
        self.topk_list = emp((1 + 2 * TOPK_MAXC,), np.uint32)
        self.rope_cur = emp((d,), F32)  # the decode step's cos / sin row (embed_rope)
        # split attention: (m, l, o) of every (head, key block), and a counter a head (0 between launches)
        self.att_splits = -(-self.n_ctx // ATT_SPLIT_KEYS)
        self.att_splits = -(-self.att_splits // ATT_CLUSTER) * ATT_CLUSTER  # whole clusters (attn_splitc)
        self.att_part = emp((a.n_head * self.att_splits * (d + 2),), F32)
        self.att_cnt = emp((a.n_head,), np.uint32)
        self.rt.cuda.memset_d32(self.att_cnt.gpudata, 0, a.n_head)
        kv_shape = (a.n_layer, a.n_head_kv, self.n_ctx, d)
        self.kc = emp(kv_shape, np.float16)
        self.vc = emp(kv_shape, np.float16)
        self.rt.cuda.memset_d8(self.kc.gpudata, 0, self.kc.nbytes)
        self.rt.cuda.memset_d8(self.vc.gpudata, 0, self.vc.nbytes)
        rope = RopeTable(a.n_rot, a.rope_base, self.n_ctx)
        cos, sin = rope.get(np.arange(self.n_ctx))
        self.cos = ops.to_gpu(cos.astype(F32))
        self.sin = ops.to_gpu(sin.astype(F32))
        cuda = self.rt.cuda
        self.h_tok = cuda.pagelocked_empty((t,), np.int32)
        self.h_pos = cuda.pagelocked_empty((1,), np.int32)
        self.h_logits = cuda.pagelocked_empty((a.n_vocab,), F32)
        self.h_argmax = cuda.pagelocked_empty((1,), np.int32)
        self.h_topk_args = cuda.pagelocked_empty((3 + self.n_ctx,), np.int32)
        self.h_topk_list = cuda.pagelocked_empty((1 + 2 * TOPK_MAXC,), np.uint32)
        self.h_hist = cuda.pagelocked_empty((self.n_ctx + 1,), np.int32)
        self._greedy = {}

    def load_weights(self) -> GPUModel:
        """Norms, F16 embedding/head and the ternary matrices from the GGUF (I2_S only)."""
        from bitnet_quantization import i2s_scale

        ops, a, g = self.ops, self.args, self.gguf
        emb = g.array("token_embd.weight")
        if emb.dtype != np.float16:
            emb = g.dequantize("token_embd.weight").astype(np.float16)
        self.emb = ops.to_gpu(emb)
        if a.tied_head:
            self.head = self.emb
        else:
            out = g.array("output.weight")
            self.head = ops.to_gpu(out if out.dtype == np.float16 else g.dequantize("output.weight").astype(np.float16))
        self.output_norm = ops.to_gpu(g.array("output_norm.weight").astype(F32))
        self._prepare_head()
        qr, kr, vr = qkv_rows(a.n_head, a.n_head_kv, a.head_dim)
        self.layers = []
        for i in range(a.n_layer):
            p = f"blk.{i}."
            L = _Layer()
            for nm in ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm"):
                setattr(L, nm, ops.to_gpu(g.array(p + nm + ".weight").astype(F32)))

            def load(mat, name, rows):
                info = g.info(p + name + ".weight")
                if info.qtype.name != "I2_S":
                    raise EngineError(f"the GPU path runs I2_S models; {p + name}.weight is {info.qtype.name} "
                                      "(convert with --quant i2_s or use --device cpu)")
                n_out, n_in = info.shape
                raw = g.raw(p + name + ".weight")
                osc = None
                if self.uses_scales and (p + name + ".scale") in g.tensors:
                    osc = float(g.dequantize(p + name + ".scale").reshape(-1)[0])
                mat.load_i2s(raw, n_out, rows, float(i2s_scale(raw, n_out * n_in)), osc)

            e, f = a.n_embd, a.n_ff
            L.qkv = ops.TernaryMatrix(len(qr) + len(kr) + len(vr), e)
            load(L.qkv, "attn_q", qr)
            load(L.qkv, "attn_k", kr)
            load(L.qkv, "attn_v", vr)
            L.o = ops.TernaryMatrix(e, a.n_head * a.head_dim)
            load(L.o, "attn_output", np.arange(e))
            L.gu = ops.TernaryMatrix(2 * f, e)
            load(L.gu, "ffn_gate", 2 * np.arange(f))
            load(L.gu, "ffn_up", 2 * np.arange(f) + 1)
            L.down = ops.TernaryMatrix(e, f)
            load(L.down, "ffn_down", np.arange(e))
            for m in (L.qkv, L.o, L.gu, L.down):
                m.finish()
            self.layers.append(L)
        self.rt.sync()
        return self

    def _prepare_head(self) -> None:
        """The int8 head (lm_head "q8"), made on the device from the F16 one as the CPU path's --lm-head q8; or,
        with the F16 head, the certified greedy head's int8 rows and per-row norms (greedy_head "cert")."""
        self.head_q8 = self.head_scale = self.head_cert = None
        a = self.args
        if self.lm_head == "f16":
            if (self.greedy_head == "cert" and self.head.dtype == np.float16 and a.n_embd % 16 == 0
                    and a.n_embd <= HEAD_NORM_MAX_K):
                q, scale = self.ops.q8_head_prepare(self.rt, self.head, a.n_vocab, a.n_embd)
                wn, ewn = self.ops.q8c_prepare(self.rt, self.head, q, scale, a.n_vocab, a.n_embd)
                self.head_cert = {"q": q, "scale": scale, "wn": wn, "ewn": ewn,
                                  "ub": self.ops.gpu_empty((a.n_vocab,), F32),
                                  "lo": self.ops.gpu_empty((a.n_vocab,), F32),
                                  "hist": self.ops.gpu_empty((TOPK_BINS,), np.uint32)}
            return
        if self.head.dtype != np.float16:
            raise EngineError(f"--lm-head q8 converts an F16 head; this head is {self.head.dtype}")
        self.head_q8, self.head_scale = self.ops.q8_head_prepare(self.rt, self.head, a.n_vocab, a.n_embd)

    @classmethod
    def random(cls, args: ModelArgs, n_ctx: int = 4096, max_batch: int = MAX_BATCH, seed: int = 0,
               lm_head: str = "f16") -> GPUModel:
        """A model of args' shape with random ternary weights and F16 embeddings, built on the device (for
        benchmarks at a shape without writing a GGUF)."""
        self = cls.__new__(cls)
        self.path, self.gguf, self.args = None, None, args
        self.lm_head = lm_head
        self.greedy_head = greedy_head_setting()
        arch = ARCHS[args.arch]
        self.ffn_act, self.head_f16_always, self.uses_scales = arch.Model.ffn_act, arch.Model.head_f16_always, False
        self.n_ctx, self.max_batch = n_ctx, max_batch
        self.ops, self.rt = _ops()
        self._check_memory()
        self._alloc()
        self._init_decode_mode()
        self.cache = _Cache(self)
        ops, a = self.ops, args
        rng = np.random.default_rng(seed)
        e, f, hd = a.n_embd, a.n_ff, a.n_head * a.head_dim
        self.emb = ops.to_gpu((rng.standard_normal((a.n_vocab, e), dtype=F32) * 0.02).astype(np.float16))
        self.head = self.emb
        ones = np.ones(e, F32)
        self.output_norm = ops.to_gpu(ones)
        self._prepare_head()
        self.layers = []
        for _ in range(a.n_layer):
            L = _Layer()
            L.attn_norm, L.ffn_norm, L.attn_sub_norm = (ops.to_gpu(ones) for _ in range(3))  # as a model's: 3 tensors
            L.ffn_sub_norm = ops.to_gpu(np.ones(f, F32))
            L.qkv = ops.TernaryMatrix(hd + 2 * a.n_head_kv * a.head_dim, e)
            L.o = ops.TernaryMatrix(e, hd)
            L.gu = ops.TernaryMatrix(2 * f, e)
            L.down = ops.TernaryMatrix(e, f)
            for m, sc in ((L.qkv, 0.05), (L.o, 0.05), (L.gu, 0.05), (L.down, 0.02)):
                m.load_random_words(rng, sc)
                m.finish()
            self.layers.append(L)
        self.rt.sync()
        return self

    # -- the forward pass -------------------------------------------------------------------------------------

    def _enqueue(self, t: int, head_rows: str, argmax_key: int = 0, head: str = "logits", zero: int = 0) -> None:
        """Queue the pass over tokens self.tok[:t] at positions *self.pos ..; the head over all rows or the last.
        argmax_key (one token): device address of a zeroed 64-bit word; the head kernel then also folds the
        argmax into it (f16_head_argmax). zero (one token): device address of three 32-bit words the embedding
        kernel zeroes first (the step's keys: no memset node in the step's graph)."""
        ops, rt, a = self.ops, self.rt, self.args
        e, f, hd, d = a.n_embd, a.n_ff, a.n_head * a.head_dim, a.head_dim
        eps = np.float32(a.norm_eps)
        p = ops.ptr
        if t == 1:  # the embedding and the step's RoPE row (the hoisted QKV decode kernel reads it)
            rt.launch("embed_rope", "PPiPPPPiPP", (1, 1), (256, 1, 1), p(self.emb), p(self.tok), np.int32(e),
                      p(self.x), p(self.pos), p(self.cos), p(self.sin), np.int32(d // 2), p(self.rope_cur),
                      np.intp(zero))
        else:
            rt.launch("embed", "PPiP", (t, 1), (256, 1, 1), p(self.emb), p(self.tok), np.int32(e), p(self.x))
        kv_layer = a.n_head_kv * self.n_ctx * d * 2  # bytes of one layer's K (or V) cache
        act = "relu2" if self.ffn_act == "relu2" else "silu"

        def norm_quant(src, w, k):
            rt.launch("rmsnorm_quant", "PPifPPP", (t, 1), (1024, 1, 1), p(src), p(w), np.int32(k), eps,
                      p(self.q8), p(self.s), p(self.qsum))

        fused = t == 1 and self.fused_norm
        pdl_plan = self._pdl_plan if fused else None
        trace = getattr(self, "_trace", None)  # stage timestamps of one layer (tools/gpu_profile_step.py)
        for i, L in enumerate(self.layers):
            kc = int(self.kc.gpudata) + i * kv_layer
            vc = int(self.vc.gpudata) + i * kv_layer
            qkv = (a.n_head, a.n_head_kv, d, self.n_ctx, self.cos, self.sin, kc, vc)
            tr = trace if trace is not None and trace["layer"] == i else {}
            if fused and pdl_plan is not None:  # the five kernels as programmatic dependents
                pw, sm = pdl_plan, pdl_plan["smem"]
                ops.ternary_decode_launch(rt, L.qkv, "qkv", self.x, L.attn_norm, eps, self.qb, hd, pos=self.pos,
                                          qkv=qkv, warps=pw["qkv"], rope=self.rope_cur, trace=tr.get("qkv"), pdl=True,
                                          smem_floor=sm["qkv"])
                self._attention(t, kc, vc, trace=tr.get("attn"), pdl=True, ahead=L.gu)
                ops.ternary_decode_launch(rt, L.o, "resid", self.att, L.attn_sub_norm, eps, self.x, e, warps=pw["o"],
                                          trace=tr.get("o"), pdl=True, smem_floor=sm["o"])
                ops.ternary_decode_launch(rt, L.gu, act, self.x, L.ffn_norm, eps, self.fb, f, warps=pw["gu"],
                                          trace=tr.get("gu"), upw=ops.PDL_UPW[act], pdl=True, smem_floor=sm["gu"])
                ops.ternary_decode_launch(rt, L.down, "resid", self.fb, L.ffn_sub_norm, eps, self.x, e,
                                          warps=pw["down"], trace=tr.get("down"), pdl=True, smem_floor=sm["down"])
                continue
            if fused:
                ops.ternary_decode_launch(rt, L.qkv, "qkv", self.x, L.attn_norm, eps, self.qb, hd, pos=self.pos,
                                          qkv=qkv, warps=self.dec_warps(L.qkv, 2), rope=self.rope_cur,
                                          trace=tr.get("qkv"))
            else:
                norm_quant(self.x, L.attn_norm, e)
                ops.ternary_launch(rt, L.qkv, "qkv", self.q8, self.qsum, self.s, self.qb, hd, t, pos=self.pos, qkv=qkv)
            self._attention(t, kc, vc, trace=tr.get("attn"))
            if fused:
                ops.ternary_decode_launch(rt, L.o, "resid", self.att, L.attn_sub_norm, eps, self.x, e,
                                          warps=self.dec_warps(L.o, 1), trace=tr.get("o"))
                # two pairs a warp, the weights copied into shared memory first (hoisted kernels only)
                gu2 = self.gu_upw == 2 and ops.DEC_HOIST
                ops.ternary_decode_launch(rt, L.gu, act, self.x, L.ffn_norm, eps, self.fb, f,
                                          warps=self.dec_warps(L.gu, 4 if gu2 else 2), trace=tr.get("gu"),
                                          ahead="smem" if gu2 else None, upw=2 if gu2 else 1)
                ops.ternary_decode_launch(rt, L.down, "resid", self.fb, L.ffn_sub_norm, eps, self.x, e,
                                          warps=self.dec_warps(L.down, 1), trace=tr.get("down"))
                continue
            norm_quant(self.att, L.attn_sub_norm, hd)
            ops.ternary_launch(rt, L.o, "resid", self.q8, self.qsum, self.s, self.x, e, t)
            norm_quant(self.x, L.ffn_norm, e)
            ops.ternary_launch(rt, L.gu, act, self.q8, self.qsum, self.s, self.fb, f, t)
            norm_quant(self.fb, L.ffn_sub_norm, f)
            ops.ternary_launch(rt, L.down, "resid", self.q8, self.qsum, self.s, self.x, e, t)
        self._enqueue_head(t, head_rows, argmax_key, head)

    def _enqueue_head(self, t: int, head_rows: str, argmax_key: int = 0, head: str = "logits") -> None:
        """Queue the head over the last (head_rows "last") or all t rows of the residual stream; head (one row,
        with argmax_key, where the certified head is prepared): "argmax", the certified greedy head; "topk", the
        certified top-k head; both leave the logits of most rows unset."""
        ops, rt, a, p = self.ops, self.rt, self.args, self.ops.ptr
        e = a.n_embd
        rows = t if head_rows == "all" else 1
        src = int(self.x.gpudata) + (0 if head_rows == "all" else (t - 1) * e * 4)
        if self.head_q8 is not None:
            self._head_q8(src, rows, argmax_key)
            return
        if head != "logits" and argmax_key and rows == 1 and self.head_cert is not None:
            if head == "topk":
                self._head_topk(src, argmax_key, pdl=self.pdl)
            else:
                self._head_cert(src, argmax_key, pdl=self.pdl)
            return
        f16 = 1 if (self.head_f16_always or rows == 1) else 0
        rt.launch("rmsnorm_f32", "PPifPi", (rows, 1), (1024, 1, 1), np.intp(src), p(self.output_norm), np.int32(e),
                  np.float32(a.norm_eps), p(self.hn), np.int32(f16))
        if argmax_key and rows == 1:
            rt.launch("f16_head_argmax", "PiiPPP", ((a.n_vocab + 7) // 8, 1), (256, 1, 1), p(self.head),
                      np.int32(a.n_vocab), np.int32(e), p(self.hn), p(self.logits), np.intp(argmax_key))
        else:
            ops.f16_launch(rt, self.head, a.n_vocab, e, self.hn, self.logits, a.n_vocab, rows)

    def _head_bounds(self, src: int, lb: np.intp, lo, pdl: bool = False) -> None:
        """Queue the certified heads' common part for the row at device address src: hn (the bits of
        rmsnorm_f32) with its int8 quantization and norms (head_norm_q8c), then the int8 head with the bounds
        (q8c_head: upper bounds into ub, the key of the largest lower bound into lb, the lower bounds into lo where
        given). pdl: both launched as programmatic dependents of the kernel before."""
        rt, a, p = self.rt, self.args, self.ops.ptr
        c, e, v = self.head_cert, a.n_embd, a.n_vocab
        rt.launch("head_norm_q8c", "PPifPPPP", (1, 1), (1024, 1, 1), np.intp(src), p(self.output_norm), np.int32(e),
                  np.float32(a.norm_eps), p(self.hn), p(self.q8), p(self.s), p(self.hx), pdl=pdl)
        rt.launch("q8c_head", "PiiPPPPPPPPP", ((v + 7) // 8, 1), (256, 1, 1), p(c["q"]), np.int32(v), np.int32(e),
                  p(self.q8), p(self.s), p(c["scale"]), p(c["wn"]), p(c["ewn"]), p(self.hx), p(c["ub"]), lb, p(lo),
                  pdl=pdl)

    def _head_cert(self, src: int, argmax_key: int, ncand=None, pdl: bool = False) -> None:
        """Queue the certified greedy head for the row at device address src: the F16 head's input hn (the bits
        of rmsnorm_f32) with its int8 quantization, the int8 head with the bound (q8c_head: the bound key at
        argmax_key + 8, zeroed with the argmax key), then the F16 logits of the candidate rows folded into the
        argmax key (q8c_rescore; ncand: a device counter of the candidates, for tools). pdl: the three launched as
        programmatic dependents."""
        rt, a, p = self.rt, self.args, self.ops.ptr
        c, e, v = self.head_cert, a.n_embd, a.n_vocab
        lb = np.intp(argmax_key + 8)
        self._head_bounds(src, lb, None, pdl)
        rt.launch("q8c_rescore", "PiiPPPPPP", ((v + 255) // 256, 1), (256, 1, 1), p(self.head), np.int32(v),
                  np.int32(e), p(self.hn), p(c["ub"]), lb, p(self.logits), np.intp(argmax_key), p(ncand), pdl=pdl)

    def _head_topk(self, src: int, argmax_key: int, pdl: bool = False) -> None:
        """Queue the certified top-k head for the row at device address src (k first in self.topk_args): hn and
        its int8 quantization, the int8 head with both bounds (ub, lo), the repeat penalty on the recent rows'
        bounds (q8c_penalize, the rows in self.topk_args), the threshold from lo's histogram (q8c_hist,
        q8c_thresh: at most the k-th largest lo, into argmax_key + 12), then the F16 logits of every row with
        ub >= it into topk_list (q8c_collect): every row whose F16 logit may be among the k largest, ties
        included."""
        rt, a, p = self.rt, self.args, self.ops.ptr
        c, e, v = self.head_cert, a.n_embd, a.n_vocab
        lb, tau = np.intp(argmax_key + 8), np.intp(argmax_key + 12)
        self._head_bounds(src, lb, c["lo"], pdl)
        rt.launch("q8c_penalize", "PPP", (1, 1), (256, 1, 1), p(c["ub"]), p(c["lo"]), p(self.topk_args))
        rt.cuda.memset_d32_async(c["hist"].gpudata, 0, c["hist"].size, rt.stream)
        rt.cuda.memset_d32_async(self.topk_list.gpudata, 0, 1, rt.stream)
        rt.launch("q8c_hist", "PiP", (min(132, (v + 1023) // 1024), 1), (1024, 1, 1), p(c["lo"]), np.int32(v),
                  p(c["hist"]))
        rt.launch("q8c_thresh", "PPP", (1, 1), (32, 1, 1), p(c["hist"]), p(self.topk_args), tau)
        rt.launch("q8c_collect", "PiiPPPPPi", ((v + 255) // 256, 1), (256, 1, 1), p(self.head), np.int32(v),
                  np.int32(e), p(self.hn), p(c["ub"]), tau, p(self.logits), p(self.topk_list), np.int32(TOPK_MAXC))

    def sample_candidates(self, token: int, pos: int, k: int, penalty=None) -> tuple[np.ndarray, np.ndarray]:
        """One decode step (`token` at `pos`) that returns (rows, their F16 logits), in no particular order, for
        every row whose logit may be among the k largest (ties included), the rest left out: what top-k sampling
        needs, without the whole vocabulary's logits crossing to the host (the certified top-k head). penalty:
        (distinct rows, p >= 1), llama.cpp's repeat penalty, so the rows are those of the k largest penalized
        logits (the logits come back unpenalized). Where the candidates would not fit the list (TOPK_MAXC) or the
        certified head is off, the head's full logits."""
        cuda, rt = self.rt.cuda, self.rt
        if pos >= self.n_ctx:
            raise ContextOverflowError(f"position {pos} is past the context of {self.n_ctx}")
        if self.head_cert is None or self.decode_mode == "mega":  # (the persistent kernel has its own head)
            logits = self.forward([token], pos, logits="last")[0]
            return np.arange(logits.size), logits
        self._put_token(token, pos)
        ids, pen = (np.zeros(0, np.int64), 1.0) if penalty is None else penalty
        ids = np.unique(np.asarray(ids, dtype=np.int64))  # (a row penalized twice could lose its place)
        if ids.size > self.n_ctx or (ids.size and not (0 <= ids.min() and ids.max() < self.args.n_vocab)):
            raise EngineError(f"penalized rows must be at most {self.n_ctx} distinct token ids below "
                              f"{self.args.n_vocab}")
        if not pen >= 1.0:
            raise EngineError(f"the candidates' repeat penalty must be >= 1 (it may only lower logits), got {pen}")
        n = 3 + ids.size
        self.h_topk_args[:3] = (k, ids.size, np.float32(pen).view(np.int32))
        self.h_topk_args[3:n] = ids
        cuda.memcpy_htod_async(self.topk_args.gpudata, self.h_topk_args[:n], rt.stream)
        self._decode_graph(self._long(pos), head="topk").replay()
        cuda.memcpy_dtoh_async(self.h_topk_list, self.topk_list.gpudata, rt.stream)
        rt.sync()
        self.cache.pos[0] = pos + 1
        n = int(self.h_topk_list[0])
        if n > TOPK_MAXC:  # too many candidates for the list: the F16 head over every row, from the same state
            self._enqueue_head(1, "last")
            cuda.memcpy_dtoh_async(self.h_logits, self.logits.gpudata, rt.stream)
            rt.sync()
            return np.arange(self.args.n_vocab), self.h_logits.copy()
        pairs = self.h_topk_list[1 : 1 + 2 * n].reshape(n, 2).copy()
        return pairs[:, 0].astype(np.int64), pairs[:, 1].view(np.float32)

    def _head_q8(self, src: int, rows: int, argmax_key: int = 0) -> None:
        """Queue the int8 head over `rows` rows of the residual stream at device address src: RMSNorm +
        per-token int8 quantization (rmsnorm_quant), then the int8 GEMV (with the argmax folded in for one row
        when argmax_key is given)."""
        ops, rt, a, p = self.ops, self.rt, self.args, self.ops.ptr
        e = a.n_embd
        rt.launch("rmsnorm_quant", "PPifPPP", (rows, 1), (1024, 1, 1), np.intp(src), p(self.output_norm),
                  np.int32(e), np.float32(a.norm_eps), p(self.q8), p(self.s), p(self.qsum))
        if argmax_key and rows == 1:
            rt.launch("q8_head_argmax", "PiiPPPPP", ((a.n_vocab + 7) // 8, 1), (256, 1, 1), p(self.head_q8),
                      np.int32(a.n_vocab), np.int32(e), p(self.q8), p(self.s), p(self.head_scale), p(self.logits),
                      np.intp(argmax_key))
        else:
            ops.q8_launch(rt, self.head_q8, self.head_scale, a.n_vocab, e, self.q8, self.s, self.logits, a.n_vocab,
                          rows)

    @property
    def _pdl_plan(self) -> dict | None:
        """Warps of each tdechp_* kernel for this model (ops.pdl_warps), or None: pdl off, the plain decode
        kernels selected (not hoisted with staged weights, gate/up not two pairs a warp), the split attention off,
        or a matrix the kernels' bounds do not cover."""
        ops = self.ops
        if not (self.pdl and ops.DEC_HOIST and ops.WEIGHTS_AHEAD == "smem" and self.gu_upw == 2 and self.attn_split
                and not self.decode_warps):
            return None
        L, rt, cuda = self.layers[0], self.rt, self.rt.cuda
        act = "relu2" if self.ffn_act == "relu2" else "silu"
        kinds = (("o", L.o, "resid"), ("gu", L.gu, act), ("down", L.down, "resid"), ("qkv", L.qkv, "qkv"))
        plan = {k: ops.pdl_warps(rt, m, epi) for k, m, epi in kinds}
        if None in plan.values():
            return None
        # shared memory: each kernel's own, then padded so that one block an SM lands (ops.pdl_smem)
        dyn = [ops.decode_smem(m, epi, plan[k], ops.PDL_UPW.get(epi, 1)) for k, m, epi in kinds]
        # (static: rounded up to the dynamic part's 128-byte alignment, + the 1 KiB the driver reserves a block)
        static = [-(-rt.fn(f"tdechp_{epi}", ops.SIG_DEC).get_attribute(cuda.function_attribute.SHARED_SIZE_BYTES)
                    // 128) * 128 + 1024 for _, _, epi in kinds]
        smem = ops.pdl_smem(rt, dyn, static)
        if smem is None:
            return None
        d = self.args.head_dim
        attn = (attn_split_smem(d) + 1024
                + rt.fn("attn_splitcp", ops.SIG_ATTN_SPLITP).get_attribute(cuda.function_attribute.SHARED_SIZE_BYTES))
        total = rt.device.get_attribute(cuda.device_attribute.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)
        if smem[3] + static[3] + attn > total:  # an attention block beside each QKV block
            return None
        plan["smem"] = {k: v for (k, _, _), v in zip(kinds, smem)}
        return plan

    def _attention(self, t: int, kc: int, vc: int, trace=None, pdl: bool = False, ahead=None) -> None:
        """Queue one layer's attention: one token with the split kernel (several blocks a head); a prompt with the
        tiled tensor-core kernel (flash_prefill, where the shape is covered), else one block a (head, token).
        pdl: as a programmatic dependent of QKV; ahead: a matrix whose weights its blocks then ask into L2."""
        rt, a, p = self.rt, self.args, self.ops.ptr
        d = a.head_dim
        if t == 1 and self.attn_split:
            name = "attn_splitc" if self.attn_cluster and not self._att_long else "attn_split"
            shared = attn_split_smem(d)
            if pdl:  # attn_splitcp / attn_splitp (launch_pdl raises their shared-memory limit itself)
                name += "p"
            elif name == "attn_splitc" or shared > self.ops.SMEM_DEFAULT:  # over 48 KB with the static part: opt in
                self.ops._allow_smem(rt, name, self.ops.SIG_ATTN_SPLIT, shared)
            extra = ()
            if pdl:  # + a later matrix's weights that the blocks ask into L2 after their wait (or none)
                extra = ((p(ahead.words), np.int32(ahead.n * ahead.k // 4)) if ahead is not None
                         else (np.intp(0), np.int32(0)))
            rt.launch(name, self.ops.SIG_ATTN_SPLITP if pdl else self.ops.SIG_ATTN_SPLIT, (a.n_head, self.att_splits),
                      (128, 1, 1), p(self.qb), np.intp(kc), np.intp(vc), p(self.att), p(self.att_part),
                      p(self.att_cnt), np.int32(a.n_head), np.int32(a.n_head_kv), np.int32(d), np.int32(self.n_ctx),
                      p(self.pos), p(trace) if trace is not None else np.intp(0), *extra, shared=shared, pdl=pdl)
            return
        if t > 1 and self.flash_prefill and self.ops.flash_supported(a.n_head, a.n_head_kv, d):
            self.ops.flash_attention_launch(rt, self.qb, kc, vc, self.att, a.n_head, a.n_head_kv, d, self.n_ctx, t,
                                            self.pos, f16_p=self.flash_prefill == 2)
            return
        self.ops.attention_launch(rt, self.qb, kc, vc, self.att, a.n_head, a.n_head_kv, d, self.n_ctx, t, self.pos,
                                  p_f16=1 if t == 1 else 0)

    def forward(self, tokens, pos0: int, logits: str = "all", capture=None, slot: int = 0) -> np.ndarray:
        """Evaluate tokens (T,) at positions pos0.. and return logits (T, V) ("all") or (1, V) ("last")."""
        if capture is not None:
            raise EngineError("layer capture runs on the CPU path only (use --device cpu)")
        if slot != 0:
            raise EngineError("the GPU path holds one sequence (slot 0)")
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        t = tokens.shape[0]
        if t == 0:
            raise EngineError("no tokens to evaluate")
        if pos0 + t > self.n_ctx:
            raise ContextOverflowError(
                f"{pos0 + t} tokens do not fit the context of {self.n_ctx}; raise -c/--ctx-size or shorten the input")
        if tokens.min() < 0 or tokens.max() >= self.args.n_vocab:
            raise EngineError(f"token id out of range 0..{self.args.n_vocab - 1}")
        outs = []
        for s0 in range(0, t, self.max_batch):
            chunk = tokens[s0 : s0 + self.max_batch]
            last_chunk = s0 + self.max_batch >= t
            mode = "all" if logits == "all" else "last"
            outs.append(self._run(chunk, pos0 + s0, mode, need=(logits == "all" or last_chunk)))
        self.cache.pos[0] = pos0 + t
        return np.concatenate(outs) if logits == "all" else outs[-1]

    def _run(self, chunk: np.ndarray, pos: int, mode: str, need: bool = True) -> np.ndarray | None:
        cuda, rt = self.rt.cuda, self.rt
        t = chunk.shape[0]
        self.h_tok[:t] = chunk
        self.h_pos[0] = pos
        cuda.memcpy_htod_async(self.tok.gpudata, self.h_tok, rt.stream)
        cuda.memcpy_htod_async(self.pos.gpudata, self.h_pos, rt.stream)
        if t == 1:
            self._decode_graph(self._long(pos)).replay()
        else:
            self._enqueue(t, mode)
        if not need:
            return None
        rows = t if mode == "all" else 1
        out = np.empty((rows, self.args.n_vocab), F32)
        if rows == 1:
            cuda.memcpy_dtoh_async(self.h_logits, self.logits.gpudata, rt.stream)
            rt.sync()
            out[0] = self.h_logits
        else:
            rt.sync()
            out[:] = self.logits.get()[:rows]
        return out

    def _long(self, pos: int) -> bool:
        """Whether the step at position pos takes the "long" graph: more keys (pos + 1) than the split attention's
        cluster path takes (512), where attn_split (global partials) is faster than attn_splitc's global path."""
        return self.attn_cluster and pos + 1 > ATT_CLUSTER * ATT_WIDE

    def _capture(self, step: bool, long: bool, head: str = "logits"):
        from bitnet_kernels.gpu import CudaGraph

        mega = self.decode_mode == "mega"
        self._att_long = long
        try:
            if not step:  # loads every kernel before capture (the greedy step would advance the position)
                if mega:
                    self._enqueue_mega(False)
                else:
                    self._enqueue_step(False, head)
                self.rt.sync()
            g = CudaGraph(self.rt.stream)
            g.begin()
            if mega:
                self._enqueue_mega(step)
            else:
                self._enqueue_step(step, head)
            g.end()
        finally:
            self._att_long = False
        return g

    def _decode_graph(self, long: bool = False, head: str = "logits"):
        """The captured one-token step; head "logits" (the F16 head's logits and argmax), "argmax" (the argmax
        only, with the certified head) or "topk" (the certified top-k head's candidates)."""
        if (long, head) not in self._graph:
            self._graph[(long, head)] = self._capture(False, long, head)
        return self._graph[(long, head)]

    def _greedy_graph(self, long: bool = False):
        """The captured greedy step that feeds its token to the next replay (the certified head)."""
        if long not in self._greedy:
            self._decode_graph(long, "argmax")  # kernels loaded
            self._greedy[long] = self._capture(True, long, "argmax")
        return self._greedy[long]

    def _put_token(self, token: int, pos: int) -> None:
        """Queue the copies of a one-token step's token and position into device memory (the graphs read them)."""
        cuda, rt = self.rt.cuda, self.rt
        self.h_tok[0] = token
        self.h_pos[0] = pos
        cuda.memcpy_htod_async(self.tok.gpudata, self.h_tok, rt.stream)
        cuda.memcpy_htod_async(self.pos.gpudata, self.h_pos, rt.stream)

    def _greedy_start(self, token: int, pos: int, n: int) -> dict:
        """Check that n greedy steps from pos fit the context, queue the first token and position, and return the
        greedy step graphs the positions pos .. pos + n - 1 take, by "long"."""
        if pos + n > self.n_ctx:
            raise ContextOverflowError(f"{pos + n} positions do not fit the context of {self.n_ctx}; raise -c")
        self._put_token(token, pos)
        return {lg: self._greedy_graph(lg) for lg in {self._long(pos), self._long(pos + n - 1)}}

    def generate_greedy(self, token: int, pos: int, n: int, execs: int = 1) -> list[int]:
        """n greedy decode steps on the device, starting with `token` at position `pos`: the sampled token and
        the position stay in device memory between the replays; the n token ids come back at the end.
        execs > 1 alternates between that many instances of the captured step (an experiment: a graph
        instance queued behind itself)."""
        if n <= 0:
            return []
        cuda, rt = self.rt.cuda, self.rt
        graphs = self._greedy_start(token, pos, n)
        for g in graphs.values():
            while len(g.extra) + 1 < execs:
                g.add_exec()
        for i in range(n):
            graphs[self._long(pos + i)].replay(i % execs)
        cuda.memcpy_dtoh_async(self.h_hist, self.hist.gpudata, rt.stream)
        rt.sync()
        self.cache.pos[0] = pos + n
        return [int(v) for v in self.h_hist[pos + 1 : pos + 1 + n]]

    def greedy_stream(self, token: int, pos: int, n: int, ahead: int = 2):
        """Yield up to n greedy tokens, starting with `token` at position `pos`, one at a time as they come: the
        greedy step's graph replays feed their token to the next replay (as generate_greedy) and run `ahead`
        steps in front of the host, each token coming back through a 4-byte copy and an event. Closing the
        generator early leaves the position after the tokens yielded (the steps queued past them only wrote
        K/V rows that later steps overwrite before any read)."""
        if n <= 0:
            return
        cuda, rt = self.rt.cuda, self.rt
        graphs = self._greedy_start(token, pos, n)
        events = [cuda.Event() for _ in range(ahead + 1)]
        hist = int(self.hist.gpudata)

        def queue(i: int) -> None:
            graphs[self._long(pos + i)].replay()
            j = pos + 1 + i  # argmax_finish writes the step's token to hist[j]
            cuda.memcpy_dtoh_async(self.h_hist[j : j + 1], hist + 4 * j, rt.stream)
            events[i % len(events)].record(rt.stream)

        done = 0
        try:
            for i in range(min(ahead, n)):
                queue(i)
            for i in range(n):
                events[i % len(events)].synchronize()
                tok = int(self.h_hist[pos + 1 + i])
                if i + ahead < n:
                    queue(i + ahead)
                done = i + 1
                self.cache.pos[0] = pos + done
                yield tok
        finally:
            rt.sync()
            self.cache.pos[0] = pos + done

    def set_decode_mode(self, mode: str, warps: int | None = None) -> None:
        """Choose the single-token path: "mega" (one persistent kernel a step, where the model's shape allows),
        "fused" (5 kernels a layer, RMSNorm + quantization in every matmul block; warps: 8 or 16 a block) or
        "unfused" (separate norm kernels)."""
        if mode not in ("mega", "fused", "unfused"):
            raise EngineError(f"decode mode is mega, fused or unfused, got {mode!r}")
        self.set_fused_norm(mode != "unfused", warps)
        self.megakernel = mode == "mega"

    def dec_warps(self, mat, r: int) -> int:
        """Warps a fused decode block for a matrix of mat.n / r rows (or pairs): decode_warps, or with 0 the
        fewest blocks that give every SM the same number of rows (one block an SM, two, ...; at most 32 warps)."""
        if self.decode_warps:
            return self.decode_warps
        cuda = self.rt.cuda
        sms = self.rt.device.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)
        units = mat.n // r
        for per_sm in range(1, 64):
            w = -(-units // (sms * per_sm))
            if w <= 32:
                return w
        return 32

    def set_fused_norm(self, on: bool, warps: int | None = None) -> None:
        """Choose the single-token path: norm fused into every matmul block (True: the persistent kernel where
        enabled, else 5 kernels a layer) or separate kernels; warps: a fused block's warps (8 or 16; 0: sized
        per matrix so every SM gets the same rows)."""
        self.fused_norm = bool(on)
        if warps is not None:
            if warps not in (0, 8, 16):
                raise EngineError(f"decode blocks have 8 or 16 warps (0: sized per matrix), got {warps}")
            self.decode_warps = warps
        for g in (*self._graph.values(), *self._greedy.values()):
            g.close()
        self._graph, self._greedy = {}, {}

    def decode_greedy(self, token: int, pos: int) -> int:
        """One decode step with greedy sampling on the device: only the token id comes back."""
        cuda, rt = self.rt.cuda, self.rt
        if pos >= self.n_ctx:
            raise ContextOverflowError(f"position {pos} is past the context of {self.n_ctx}")
        self._put_token(token, pos)
        self._decode_graph(self._long(pos), head="argmax").replay()
        cuda.memcpy_dtoh_async(self.h_argmax, self.argmax.gpudata, rt.stream)
        rt.sync()
        self.cache.pos[0] = pos + 1
        return int(self.h_argmax[0])

    def prefill(self, tokens, pos0: int = 0, slot: int = 0) -> np.ndarray:
        """Evaluate a prompt; returns the last position's logits (V,)."""
        return self.forward(tokens, pos0, logits="last", slot=slot)[0]


def load_gpu(path: str | Path, numerics: str = "fast", n_ctx: int | None = None, max_batch: int = MAX_BATCH,
             lm_head: str = "f16") -> GPUModel:
    """Open a GGUF model on the GPU: `GPUModel(path).load_weights()`; lm_head "q8": the int8 head (as the CPU
    path's --lm-head q8)."""
    return GPUModel(path, numerics=numerics, n_ctx=n_ctx, max_batch=max_batch, lm_head=lm_head).load_weights()
