"""Python wrappers of the GPU kernels: ternary weights on the device and the matmuls that use them.

All device work goes to the runtime's one stream; the functions that return numpy arrays synchronize.
"""

from __future__ import annotations

import os

import numpy as np

from bitnet_kernels.gpu.errors import GPUError
from bitnet_kernels.gpu.runtime import Runtime, get_runtime

NULL = np.intp(0)
WARPS = 8  # warps a block of the matmul kernels (256 threads)
TT = 8  # tokens a block column when T > 1
SIG_TERN = "PiiPPPPPPPiiPiiiiPPPP"
SIG_F16 = "PiiPPii"
EPI_NAMES = {"i32": "tern_i32", "f32": "tern_f32", "resid": "tern_resid", "relu2": "tern_relu2",
             "silu": "tern_silu", "qkv": "tern_qkv"}
PAIRED = {"relu2", "silu", "qkv"}
# batched ternary matmuls (T > 1) on the int8 tensor cores (mma.sync) when K % 128 == 0; BITNET_GPU_MMA=0: dp4a
MMA = os.environ.get("BITNET_GPU_MMA", "1") != "0"
# single-token matmuls (tdech_*): the norm prologue's row and norm weight in one round of cp.async, the epilogue's
# scales / residual rows / RoPE angles asked for before the prologue, the K/V cache asked into L2 by QKV;
# BITNET_GPU_DEC_HOIST=0: the kernels of the 11:09 run (tdec_*: two rounds, the epilogue's loads after the dots)
DEC_HOIST = os.environ.get("BITNET_GPU_DEC_HOIST", "1") != "0"
# hoisted decode kernels, matrices of at most AHEAD_MAX bytes (at the 2B-4T shape QKV, O and down, not gate/up:
# measured, docs/gpu.md): what a block does with its weight rows before the prologue. "smem" (tdechw_*): its lanes
# copy them into shared memory with cp.async (each lane the chunks it reads); "l2": one thread asks for them in L2
# (the fourth and fifth sessions' default); "none": nothing. BITNET_GPU_WEIGHTS_AHEAD=smem|l2|none, and
# BITNET_GPU_WEIGHTS_AHEAD_ALL=1: every matrix (=0: none)
WEIGHTS_AHEAD = os.environ.get("BITNET_GPU_WEIGHTS_AHEAD", "smem")
_ahead_all = os.environ.get("BITNET_GPU_WEIGHTS_AHEAD_ALL", "")
# hoisted decode kernels' reductions (the same bits each): "redux" (tdech_*): the prologue's integer sum and maximum
# and the dots' warp sums with redux.sync; "shfl" (tdechs_*): five shuffles each, as in the third session;
# BITNET_GPU_DEC_PROLOGUE
DEC_PROLOGUE = os.environ.get("BITNET_GPU_DEC_PROLOGUE", "redux")
_PROLOGUE_PREFIX = {"redux": "tdech", "shfl": "tdechs"}
AHEAD_ALL = None if _ahead_all not in ("0", "1") else _ahead_all == "1"
AHEAD_MAX = 6 << 20
SMEM_DEFAULT = 48 * 1024


def ptr(a) -> np.intp:
    """Device pointer of a gpuarray (or 0 for None), as the prepared calls take it."""
    return NULL if a is None else np.intp(int(a.gpudata))


def gpu_empty(shape, dtype, rt: Runtime | None = None):
    import pycuda.gpuarray as ga

    (rt or get_runtime())
    return ga.empty(shape, dtype)


def to_gpu(a: np.ndarray):
    import pycuda.gpuarray as ga

    get_runtime()
    return ga.to_gpu(np.ascontiguousarray(a))


class TernaryMatrix:
    """Ternary weights (N, K) on the device in the T2 layout (K/16 words a row, see kernels.cu) with a float
    weight scale and output scale per row (fused matrices keep each source tensor's scale)."""

    def __init__(self, n: int, k: int):
        if k % 64:
            raise GPUError(f"ternary rows must hold a multiple of 64 weights, got K={k}")
        self.n, self.k = n, k
        self.words = gpu_empty((n * k // 16,), np.uint32)
        self.ws_host = np.ones(n, np.float32)
        self.os_host = np.ones(n, np.float32)
        self.ws = None
        self.os = None

    @property
    def nbytes(self) -> int:
        return self.n * self.k // 4 + 8 * self.n

    def load_i2s(self, raw: np.ndarray, n_src: int, dst_rows: np.ndarray, scale: float,
                 out_scale: float | None = None) -> None:
        """Repack one I2_S tensor (n_src rows of K) on the device into rows dst_rows of this matrix."""
        rt = get_runtime()
        nbytes = n_src * self.k // 4
        raw = np.ascontiguousarray(raw[:nbytes], np.uint8)
        if raw.size != nbytes:
            raise GPUError(f"I2_S tensor too short: {raw.size} bytes for {n_src}x{self.k}")
        d_raw = to_gpu(raw)
        d_rows = to_gpu(np.asarray(dst_rows, np.int32))
        total = n_src * self.k // 16
        rt.launch("repack_i2s", "PiiPP", ((total + 255) // 256, 1), (256, 1, 1),
                  ptr(d_raw), np.int32(n_src), np.int32(self.k), ptr(d_rows), ptr(self.words))
        rt.sync()
        self.ws_host[dst_rows] = np.float32(scale)
        self.os_host[dst_rows] = np.float32(1.0 if out_scale is None else out_scale)
        del d_raw, d_rows

    def load_codes(self, codes: np.ndarray, scale: float = 1.0) -> None:
        """Ternary values (N, K) int8 in {-1, 0, 1} (tests and random models), packed on the host."""
        from bitnet_quantization import i2s_pack

        raw = i2s_pack(np.asarray(codes, np.int8).reshape(-1), scale)
        self.load_i2s(raw, self.n, np.arange(self.n), scale)

    def load_random_words(self, rng: np.random.Generator, scale: float = 1.0) -> None:
        """Random codes in {0, 1, 2} straight into the T2 words (a benchmark model of a given shape)."""
        w = rng.integers(0, 2**32, size=self.words.size, dtype=np.uint32)
        both = (w >> np.uint32(1)) & w & np.uint32(0x55555555)  # fields holding code 3
        w &= ~(both << np.uint32(1))  # 3 -> 1
        self.words.set(w)
        self.ws_host[:] = np.float32(scale)

    def finish(self) -> None:
        """Upload the per-row scales (after every load_*)."""
        self.ws = to_gpu(self.ws_host)
        self.os = to_gpu(self.os_host)


def ternary_launch(rt: Runtime, mat: TernaryMatrix, epi: str, q, qsum, s, out, ldo: int, T: int,
                   pos=None, qkv: tuple = (0, 0, 0, 0, None, None, None, None), out_i32=None) -> None:
    """Queue one ternary matmul: int8 activations q (T, K) with their qsum and scale s, epilogue `epi`."""
    r = 2 if epi in PAIRED else 1
    if T > 1 and mat.k % 128 == 0 and MMA:
        # int8 tensor cores: 128 rows x 64 tokens a block
        name = f"tmma_{epi}"
        grid = ((mat.n + 127) // 128, (T + 63) // 64)
    else:
        tt = 1 if T == 1 else TT
        name = f"{EPI_NAMES[epi]}_t{tt}"
        grid = ((mat.n // r + WARPS - 1) // WARPS, (T + tt - 1) // tt)
    nh, nkv, hd, nctx, cos, sin, kc, vc = qkv
    rt.launch(name, SIG_TERN, grid, (32 * WARPS, 1, 1),
              ptr(mat.words), np.int32(mat.n), np.int32(mat.k), _p(q), _p(qsum), _p(s), ptr(mat.ws), ptr(mat.os),
              _p(out), _p(out_i32), np.int32(ldo), np.int32(T), _p(pos),
              np.int32(nh), np.int32(nkv), np.int32(hd), np.int32(nctx), _p(cos), _p(sin), _p(kc), _p(vc))


SIG_DEC = "PiiPPPPPPPifiiiiPPPPPi"


def ternary_decode_launch(rt: Runtime, mat: TernaryMatrix, epi: str, x, normw, eps: float, out, ldo: int, pos=None,
                          qkv: tuple = (0, 0, 0, 0, None, None, None, None), warps: int = WARPS,
                          hoist: bool | None = None, rope=None, trace=None, ahead: str | None = None,
                          upw: int = 1, pdl: bool = False, smem_floor: int = 0) -> None:
    """Queue one single-token matmul with its RMSNorm + int8 quantization fused in (x: the float input row,
    normw: the norm weight); every block (`warps` warps, at most 32) quantizes the row into shared memory, then
    each warp computes one row (or pair). hoist (default DEC_HOIST): the loads that do not depend on the prologue
    are issued before it (needs rope, the step's (cos, sin) row, for EPI qkv). trace: a device buffer (blocks, 8)
    uint64 for stage timestamps. ahead (hoisted only): what a block does with its weight rows before the prologue,
    "smem" | "l2" | "none" (default: WEIGHTS_AHEAD for matrices of at most AHEAD_MAX bytes, see AHEAD_ALL).
    upw: rows (pairs) a warp, 1 or 2 (2: ahead "smem" only, so a block of at most 32 warps covers twice the rows).
    Where the block's rows would not fit in shared memory, "smem" becomes "l2" with a row (pair) a warp.
    pdl: the tdechp_* kernel as a programmatic dependent of the kernel before (weights staged, at most
    PDL_WARPS[epi] warps of PDL_UPW[epi] units; one block an SM, the rows spread evenly), see pdl_warps;
    smem_floor: its dynamic shared memory at least this (see pdl_smem)."""
    r = 2 if epi in PAIRED else 1
    if pdl:
        if upw != PDL_UPW.get(epi, 1) or warps > PDL_WARPS[epi]:
            raise GPUError(f"tdechp_{epi}: at most {PDL_WARPS[epi]} warps of {PDL_UPW.get(epi, 1)} units")
        shared = max(decode_smem(mat, epi, warps, upw), smem_floor)
        if shared > _smem_optin(rt):
            raise GPUError(f"tdechp_{epi}: {shared} bytes of shared memory do not fit the device")
        # (launch_pdl raises the kernel's shared-memory limit itself)
        name, grid, flags = f"tdechp_{epi}", (_sm_count(rt), 1), upw << 8
    else:
        if upw not in (1, 2):
            raise GPUError(f"decode warps take 1 or 2 rows (pairs), got {upw}")
        hoisted = DEC_HOIST if hoist is None else hoist
        if hoisted and epi == "qkv" and rope is None:
            raise GPUError("the hoisted QKV decode kernel reads the step's RoPE row: pass rope")
        mode = _ahead(mat, ahead) if hoisted else "none"
        if mode not in ("smem", "l2", "none"):
            raise GPUError(f"weights ahead: expected smem, l2 or none, got {mode!r}")
        if upw != 1 and mode != "smem":
            raise GPUError("two rows (pairs) a warp need the weights copied into shared memory (ahead='smem')")
        shared = decode_smem(mat, epi, warps, upw if mode == "smem" else 0)
        if mode == "smem" and shared > _smem_optin(rt):
            mode, upw = "l2", 1  # the block's rows do not fit in shared memory: asked into L2, a row (pair) a warp
            shared = decode_smem(mat, epi, warps, 0)
        grid = ((mat.n // r + warps * upw - 1) // (warps * upw), 1)
        if hoisted:
            name = _PROLOGUE_PREFIX.get(DEC_PROLOGUE, "tdech") + ("w_" if mode == "smem" else "_") + epi
        else:  # the int8 row and the float row
            name, shared = f"tdec_{epi}", 5 * mat.k
        if shared > SMEM_DEFAULT:
            _allow_smem(rt, name, SIG_DEC, shared)
        flags = (1 if mode == "l2" else 0) | upw << 8
    nh, nkv, hd, nctx, cos, sin, kc, vc = qkv
    rt.launch(name, SIG_DEC, grid, (32 * warps, 1, 1),
              ptr(mat.words), np.int32(mat.n), np.int32(mat.k), _p(x), _p(normw), ptr(mat.ws), ptr(mat.os), _p(out),
              _p(pos), _p(rope), np.int32(ldo), np.float32(eps),
              np.int32(nh), np.int32(nkv), np.int32(hd), np.int32(nctx), _p(cos), _p(sin), _p(kc), _p(vc),
              _p(trace), np.int32(flags), shared=shared, pdl=pdl)

# The programmatic-dependent decode kernels (tdechp_*): warps a block at most (their launch bounds: two blocks of
# consecutive kernels share an SM's registers) and units (rows or pairs) a warp.
PDL_WARPS = {"f32": 20, "resid": 20, "relu2": 18, "silu": 18, "qkv": 16}
PDL_UPW = {"relu2": 3, "silu": 3}


def decode_smem(mat: TernaryMatrix, epi: str, warps: int, upw: int) -> int:
    """Dynamic shared memory of a hoisted decode block: the int8 row in planes (K + 128 bytes), the float row and
    the norm weight (8 K), and its warps' weight rows when staged (upw units a warp; 0: not staged)."""
    r = 2 if epi in PAIRED else 1
    return 9 * mat.k + 128 + warps * upw * r * mat.k // 4


def _sm_count(rt: Runtime) -> int:
    return rt.device.get_attribute(rt.cuda.device_attribute.MULTIPROCESSOR_COUNT)


def pdl_warps(rt: Runtime, mat: TernaryMatrix, epi: str) -> int | None:
    """Warps a tdechp_* block for `mat`: the fewest that cover its rows (pairs) with one block an SM, or None
    where that needs more than the kernel's bound (then the plain kernels run) or the staged rows do not fit."""
    r = 2 if epi in PAIRED else 1
    upw = PDL_UPW.get(epi, 1)
    units = mat.n // r
    w = -(-units // (_sm_count(rt) * upw))
    if w > PDL_WARPS[epi] or decode_smem(mat, epi, w, upw) > _smem_optin(rt):
        return None
    return w


PDL_SMEM_MARGIN = 8192  # two blocks of one kernel beside the one before overshoot the SM by at least this


def pdl_smem(rt: Runtime, dyn: list[int], static: list[int]) -> list[int] | None:
    """Dynamic shared memory for a cycle of programmatic-dependent kernels (one block an SM each, in launch order,
    the first after the attention), padded up so that one block of each of two consecutive kernels fits an SM but
    two of one kernel beside the block before it do not: the first (which follows the attention's small blocks)
    takes over half the SM, each next one over half of what the one before leaves. None where the two consecutive
    blocks cannot both fit. static: each kernel's static shared memory (+ the 1 KiB the driver reserves a block)."""
    total = rt.device.get_attribute(rt.cuda.device_attribute.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)
    use = []  # what each block takes of the SM
    for i, (d, st) in enumerate(zip(dyn, static)):
        free = total - (use[i - 1] if i else 0)
        need = (free + PDL_SMEM_MARGIN) // 2 - st  # over half of what is free (with a margin), in dynamic memory
        use.append(st + max(d, (need + 127) // 128 * 128))
    for i in range(len(use)):
        if use[i] + use[i - 1] > total or use[i] - static[i] > _smem_optin(rt):
            return None
    return [u - st for u, st in zip(use, static)]


def _ahead(mat: TernaryMatrix, ahead: str | None) -> str:
    if ahead is not None:
        return ahead
    chosen = AHEAD_ALL if AHEAD_ALL is not None else mat.n * mat.k // 4 <= AHEAD_MAX
    return WEIGHTS_AHEAD if chosen else "none"


_SMEM_SET: dict[str, int] = {}
_OPTIN: dict[int, int] = {}


def _smem_optin(rt: Runtime) -> int:
    """The most dynamic shared memory a block may ask for on this device (cached)."""
    if id(rt) not in _OPTIN:
        _OPTIN[id(rt)] = rt.device.get_attribute(rt.cuda.device_attribute.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
    return _OPTIN[id(rt)]


def _allow_smem(rt: Runtime, name: str, sig: str, nbytes: int) -> None:
    """Raise a kernel's dynamic shared-memory limit (needed above 48 KiB), once per size."""
    if _SMEM_SET.get(name, 0) >= nbytes:
        return
    optin = _smem_optin(rt)
    if nbytes > optin:
        raise GPUError(f"{name} needs {nbytes} bytes of shared memory, the device allows {optin}")
    rt.fn(name, sig).set_attribute(rt.cuda.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, nbytes)
    _SMEM_SET[name] = nbytes


def decode_linear(mat: TernaryMatrix, x: np.ndarray, normw: np.ndarray, eps: float, warps: int = WARPS,
                  **kw) -> np.ndarray:
    """RMSNorm(x) * normw, per-token int8 activations, ternary matmul: one row x (K,) -> (N,) float32; kw: the
    launch function's options (hoist, ahead)."""
    rt = get_runtime()
    dx = to_gpu(np.asarray(x, np.float32).reshape(-1))
    dw = to_gpu(np.asarray(normw, np.float32).reshape(-1))
    out = gpu_empty((mat.n,), np.float32)
    ternary_decode_launch(rt, mat, "f32", dx, dw, eps, out, mat.n, warps=warps, **kw)
    rt.sync()
    return out.get()


def norm_linear(mat: TernaryMatrix, x: np.ndarray, normw: np.ndarray, eps: float) -> np.ndarray:
    """The same with the separate RMSNorm + quantization kernel (the batched path): x (T, K) -> (T, N)."""
    rt = get_runtime()
    x = np.ascontiguousarray(np.atleast_2d(x), np.float32)
    t, k = x.shape
    dx, dw = to_gpu(x), to_gpu(np.asarray(normw, np.float32))
    dq, ds, dsum = gpu_empty((t, k), np.int8), gpu_empty((t,), np.float32), gpu_empty((t,), np.int32)
    rt.launch("rmsnorm_quant", "PPifPPP", (t, 1), (1024, 1, 1), ptr(dx), ptr(dw), np.int32(k), np.float32(eps),
              ptr(dq), ptr(ds), ptr(dsum))
    out = gpu_empty((t, mat.n), np.float32)
    ternary_launch(rt, mat, "f32", dq, dsum, ds, out, mat.n, t)
    rt.sync()
    return out.get()


def f16_launch(rt: Runtime, w, V: int, K: int, x, out, ldo: int, T: int) -> None:
    tt = 1 if T == 1 else TT
    grid = ((V + WARPS - 1) // WARPS, (T + tt - 1) // tt)
    rt.launch(f"f16_gemv_t{tt}", SIG_F16, grid, (32 * WARPS, 1, 1), _p(w), np.int32(V), np.int32(K), _p(x), _p(out),
              np.int32(ldo), np.int32(T))


def _p(a) -> np.intp:
    if a is None:
        return NULL
    if isinstance(a, (int, np.integer)):
        return np.intp(a)
    return ptr(a)


# prefill attention on the f16 tensor cores (flash_attn_d*): key tile a head_dim; 64 (query, head) rows a block
FLASH_BN = {64: 64, 128: 64, 256: 32}
FLASH_ROWS = 64
SIG_FLASH = "PPPPiiiiP"
SIG_ATTN = "PPPPiiiiPi"
SIG_ATTN_SPLIT = "PPPPPPiiiiPP"  # attn_split / attn_splitc (ATTN_SPLIT_ARGS in kernels.cu)
SIG_ATTN_SPLITP = SIG_ATTN_SPLIT + "Pi"  # attn_splitp / attn_splitcp: + a later matrix's weights to ask into L2


def flash_supported(n_head: int, n_kv: int, d: int) -> bool:
    """Whether flash_attn_d* covers the shape (else the one-block-a-(head, query) `attention` kernel)."""
    return d in FLASH_BN and n_kv > 0 and n_head % n_kv == 0 and n_head // n_kv <= FLASH_ROWS


def flash_attention_launch(rt: Runtime, q, kc, vc, out, n_head: int, n_kv: int, d: int, n_ctx: int, t: int,
                           pos0, f16_p: bool = False) -> None:
    """Queue the causal attention of t queries (q: float (t, n_head * d)) at positions *pos0 .. over one layer's
    f16 cache (kc, vc: (n_kv, n_ctx, d)) into out (float (t, n_head * d)); the shape must be flash_supported.
    f16_p: P rounded to f16 once (flash_attn_f16p_d*) instead of hi + lo halves (~1e-3 of max|v| off, not ~1e-6)."""
    name, bn = f"flash_attn_{'f16p_' if f16_p else ''}d{d}", FLASH_BN[d]
    shared = 4 * bn * (d + 8) * 2
    _allow_smem(rt, name, SIG_FLASH, shared)
    qpb = FLASH_ROWS // (n_head // n_kv)
    rt.launch(name, SIG_FLASH, (-(-t // qpb), n_kv), (128, 1, 1), _p(q), _p(kc), _p(vc), _p(out), np.int32(n_head),
              np.int32(n_kv), np.int32(n_ctx), np.int32(t), _p(pos0), shared=shared)


def attention_launch(rt: Runtime, q, kc, vc, out, n_head: int, n_kv: int, d: int, n_ctx: int, t: int, pos0,
                     p_f16: int = 0) -> None:
    """Queue the `attention` kernel (one 512-thread block a (head, query)) with the same arguments."""
    rt.launch("attention", SIG_ATTN, (n_head, t), (512, 1, 1), _p(q), _p(kc), _p(vc), _p(out), np.int32(n_head),
              np.int32(n_kv), np.int32(d), np.int32(n_ctx), _p(pos0), np.int32(p_f16), shared=4 * n_ctx)


def _quant_rows_launch(rt: Runtime, x: np.ndarray):
    """Queue per-token int8 quantization of x (T, K) float32: device arrays (x, q int8 (T, K), s (T,), qsum (T,));
    the caller keeps x alive until the queue has run."""
    x = np.ascontiguousarray(np.atleast_2d(x), np.float32)
    t, k = x.shape
    dx = to_gpu(x)
    dq, ds, dsum = gpu_empty((t, k), np.int8), gpu_empty((t,), np.float32), gpu_empty((t,), np.int32)
    rt.launch("quant_rows", "PiPPP", (t, 1), (1024, 1, 1), ptr(dx), np.int32(k), ptr(dq), ptr(ds), ptr(dsum))
    return dx, dq, ds, dsum


def quantize_rows(x: np.ndarray):
    """Per-token int8 quantization on the device: (q int8 (T, K), s (T,), qsum (T,)) as numpy arrays."""
    rt = get_runtime()
    _dx, dq, ds, dsum = _quant_rows_launch(rt, x)
    rt.sync()
    return dq.get(), ds.get(), dsum.get()


def ternary_gemm_i32(mat: TernaryMatrix, q: np.ndarray) -> np.ndarray:
    """Exact integer dots of ternary weights with int8 activations q (T, K) -> int32 (T, N)."""
    rt = get_runtime()
    q = np.ascontiguousarray(np.atleast_2d(q), np.int8)
    t, k = q.shape
    if k != mat.k:
        raise GPUError(f"activations have {k} columns, the matrix {mat.k}")
    dq = to_gpu(q)
    dsum = to_gpu(np.zeros(t, np.int32) + q.sum(axis=1, dtype=np.int64).astype(np.int32))
    out = gpu_empty((t, mat.n), np.int32)
    ternary_launch(rt, mat, "i32", dq, dsum, None, None, mat.n, t, out_i32=out)
    rt.sync()
    return out.get()


def i2s_linear(mat: TernaryMatrix, x: np.ndarray) -> np.ndarray:
    """bitnet.cpp's W2A8 linear on the device: x (T, K) float32 -> (T, N) float32 (per-token int8 activations)."""
    rt = get_runtime()
    _dx, dq, ds, dsum = _quant_rows_launch(rt, x)
    t = dq.shape[0]
    out = gpu_empty((t, mat.n), np.float32)
    ternary_launch(rt, mat, "f32", dq, dsum, ds, out, mat.n, t)
    rt.sync()
    return out.get()


def f16_matmul(w16: np.ndarray, x: np.ndarray) -> np.ndarray:
    """F16 weights (V, K) times float32 x (T, K) -> (T, V) float32, float32 accumulation (the LM head)."""
    rt = get_runtime()
    w16 = np.ascontiguousarray(w16, np.float16)
    x = np.ascontiguousarray(np.atleast_2d(x), np.float32)
    v, k = w16.shape
    t = x.shape[0]
    if k % 8:
        raise GPUError(f"F16 rows must hold a multiple of 8 values, got {k}")
    dw, dx = to_gpu(w16), to_gpu(x)
    out = gpu_empty((t, v), np.float32)
    f16_launch(rt, dw, v, k, dx, out, v, t)
    rt.sync()
    return out.get()


SIG_Q8 = "PiiPPPPii"


def q8_head_prepare(rt: Runtime, w16, V: int, K: int):
    """The int8 head of F16 weights (V, K) on the device: (q int8 (V, K), scale float32 (V,)), as
    bitnet_kernels.cpu.q8_head_prepare computes them (per row max|w| / 127, round half to even)."""
    if K % 16:
        raise GPUError(f"the int8 head needs rows of a multiple of 16 values, got {K}")
    q = gpu_empty((V, K), np.int8)
    scale = gpu_empty((V,), np.float32)
    rt.launch("q8_head_prepare", "PiiPP", ((V + WARPS - 1) // WARPS, 1), (32 * WARPS, 1, 1), _p(w16), np.int32(V),
              np.int32(K), ptr(q), ptr(scale))
    return q, scale


def q8c_prepare(rt: Runtime, w16, q, scale, V: int, K: int):
    """The certified greedy head's per-row norms of F16 weights (V, K) and their int8 rows (q, scale from
    q8_head_prepare): (|w_r|, |w_r - scale_r q_r|) float32 (V,) each, 2-norms rounded up (q8c_head in kernels.cu)."""
    wn = gpu_empty((V,), np.float32)
    ewn = gpu_empty((V,), np.float32)
    rt.launch("q8c_prepare", "PPPiiPP", ((V + WARPS - 1) // WARPS, 1), (32 * WARPS, 1, 1), _p(w16), _p(q),
              _p(scale), np.int32(V), np.int32(K), ptr(wn), ptr(ewn))
    return wn, ewn


def q8_launch(rt: Runtime, q, scale, V: int, K: int, xq, s, out, ldo: int, T: int) -> None:
    """Queue the int8 head: int8 activations xq (T, K) with scales s (T,) -> logits (T, V)."""
    tt = 1 if T == 1 else TT
    grid = ((V + WARPS - 1) // WARPS, (T + tt - 1) // tt)
    rt.launch(f"q8_gemv_t{tt}", SIG_Q8, grid, (32 * WARPS, 1, 1), _p(q), np.int32(V), np.int32(K), _p(xq), _p(s),
              _p(scale), _p(out), np.int32(ldo), np.int32(T))


def q8_head_matmul(w16: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F16 weights (V, K) made int8 on the device, times x (T, K) float32 quantized per token:
    (logits (T, V), q (V, K), scale (V,)) as numpy arrays (for tests against the CPU q8 head)."""
    rt = get_runtime()
    w16 = np.ascontiguousarray(w16, np.float16)
    v, k = w16.shape
    dw = to_gpu(w16)
    q, scale = q8_head_prepare(rt, dw, v, k)
    _dx, dq, ds, _dsum = _quant_rows_launch(rt, x)
    t = dq.shape[0]
    out = gpu_empty((t, v), np.float32)
    q8_launch(rt, q, scale, v, k, dq, ds, out, v, t)
    rt.sync()
    return out.get(), q.get(), scale.get()
