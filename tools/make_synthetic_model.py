#!/usr/bin/env python3
"""Write a random-weight BitNet b1.58 model in GGUF with the exact tensor layout of the official 2B-4T file.

    python tools/make_synthetic_model.py --shape 2b4t --quant i2_s  -o models/synthetic-2b4t-i2_s.gguf
    python tools/make_synthetic_model.py --shape 2b4t --quant tq2_0 -o models/synthetic-2b4t-tq2_0.gguf
    python tools/make_synthetic_model.py --shape tiny --quant tq1_0 --arch bitnet -o /tmp/tiny.gguf

Layout (spec §1-§2): `token_embd.weight` F16 (vocab x hidden, also the LM head: no `output.weight`),
`output_norm.weight` and per layer `attn_norm`, `attn_sub_norm`, `ffn_norm`, `ffn_sub_norm` in F32 (values near
1.0), and the seven ternary matrices `attn_q/k/v/output`, `ffn_gate/up/down` in the chosen quant type. The
2B-4T shape gives 332 tensors and about 1.18 GB with I2_S.

Quant types: i2_s (bitnet.cpp, arch bitnet-b1.58 by default), tq2_0 / tq1_0 (llama.cpp, arch `bitnet` by
default, which upstream llama.cpp and llama-cpp-python load), f32 / f16 (the same ternary values times their
scale, unquantized). For one --seed every quant type holds exactly the same weight values: each tensor is drawn
from its own random stream, and the per-tensor scale is rounded to fp16 so that TQ's per-block fp16 scales hold
it exactly. Tensors are produced and written one at a time (memory stays near the largest tensor).

The tokenizer is a synthetic LLaMA-3-shaped byte-level BPE vocabulary (tools/synthetic_vocab.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic_vocab  # noqa: E402

from bitnet_models.gguf import RawTensor, write_gguf  # noqa: E402
from bitnet_models.gguf.writer import DeferredTensor  # noqa: E402
from bitnet_quantization import i2s_pack  # noqa: E402


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    n_regular: int  # regular vocabulary tokens (then 256 special tokens)
    n_merges: int
    ctx: int = 4096
    rope_base: float = 500000.0
    n_special: int = 256

    @property
    def vocab(self) -> int:
        return self.n_regular + self.n_special

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES = {
    # BitNet b1.58 2B-4T: hidden 2560, 30 layers, 20 heads / 5 KV heads, FFN 6912, LLaMA-3 vocabulary
    "2b4t": Shape(2560, 30, 20, 5, 6912, synthetic_vocab.LLAMA3_REGULAR, synthetic_vocab.LLAMA3_MERGES),
    # the same layout, small enough for tests (head_dim 64, GQA 4:1, FFN 3x hidden)
    "tiny": Shape(256, 2, 4, 1, 768, 1000, 1100, ctx=512),
    "small": Shape(512, 4, 8, 2, 1536, 4000, 7000, ctx=1024),
}

QUANTS = ("i2_s", "tq2_0", "tq1_0", "f32", "f16")
ARCHS = ("bitnet-b1.58", "bitnet-25", "bitnet")
# general.file_type (llama_ftype): bitnet.cpp's fork numbers I2_S 40; upstream TQ1_0 36, TQ2_0 37
FILE_TYPES = {"i2_s": 40, "tq1_0": 36, "tq2_0": 37, "f32": 0, "f16": 1}
MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


class ShapeError(ValueError):
    pass


def check_shape(s: Shape, quant: str) -> None:
    block = {"i2_s": 128, "tq2_0": 256, "tq1_0": 256}.get(quant, 1)
    problems = []
    if s.hidden % s.heads or s.heads % s.kv_heads:
        problems.append(f"{s.heads} heads / {s.kv_heads} KV heads must divide hidden {s.hidden} and each other")
    elif s.head_dim % 2:
        problems.append(f"head_dim {s.head_dim} must be even (RoPE rotates pairs)")
    for what, n in (("hidden", s.hidden), ("ffn", s.ffn)):
        if n % block:
            problems.append(f"{what} {n} must be a multiple of {block} for {quant}")
    if problems:
        raise ShapeError("; ".join(problems))


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _ternary(seed: int, name: str, out: int, inp: int) -> tuple[np.ndarray, np.float32]:
    """(out, inp) int8 ternary values and the tensor's scale (an fp16-exact float32)."""
    rng = _rng(seed, name)
    # absmean-ternarized weights are about half zeros
    q = (rng.integers(0, 4, size=(out, inp), dtype=np.int8) - 1).clip(-1, 1)
    q[rng.random((out, inp), dtype=np.float32) < 0.25] = 0
    scale = np.float32(np.float16(rng.uniform(0.5, 1.5) / np.sqrt(inp)))
    return q, scale


def _norm(seed: int, name: str, n: int) -> np.ndarray:
    return (1.0 + 0.05 * _rng(seed, name).standard_normal(n)).astype(np.float32)


def _matrix(seed: int, name: str, out: int, inp: int, quant: str):
    def make():
        q, scale = _ternary(seed, name, out, inp)
        if quant == "i2_s":
            return RawTensor(i2s_pack(q, scale), (out, inp))
        return q.astype(np.float32) * scale  # the writer encodes TQ1_0/TQ2_0/F16 through the quant-type table

    return DeferredTensor((out, inp), make)


def tensors(s: Shape, quant: str, seed: int):
    """(name, data, quant type) in the official file's order, every one deferred."""
    wtype = quant.upper()
    kv = s.kv_heads * s.head_dim

    def embd():
        # (vocab, hidden) F16, drawn in row chunks straight into the F16 array: no full-size float32 copy
        rng = _rng(seed, "token_embd.weight")
        e = np.empty((s.vocab, s.hidden), dtype=np.float16)
        for r in range(0, s.vocab, 8192):
            rows = min(8192, s.vocab - r)
            e[r : r + rows] = np.float32(0.1) * rng.standard_normal((rows, s.hidden), dtype=np.float32)
        return e

    yield "token_embd.weight", DeferredTensor((s.vocab, s.hidden), embd), "F16"
    yield "output_norm.weight", DeferredTensor((s.hidden,), lambda: _norm(seed, "output_norm.weight", s.hidden)), "F32"
    dims = {
        "attn_q": (s.hidden, s.hidden), "attn_k": (kv, s.hidden), "attn_v": (kv, s.hidden),
        "attn_output": (s.hidden, s.hidden), "ffn_gate": (s.ffn, s.hidden), "ffn_up": (s.ffn, s.hidden),
        "ffn_down": (s.hidden, s.ffn),
    }
    for i in range(s.layers):
        for norm, n in (("attn_norm", s.hidden), ("attn_sub_norm", s.hidden)):
            name = f"blk.{i}.{norm}.weight"
            yield name, DeferredTensor((n,), lambda name=name, n=n: _norm(seed, name, n)), "F32"
        for m in ("attn_q", "attn_k", "attn_v", "attn_output"):
            name = f"blk.{i}.{m}.weight"
            yield name, _matrix(seed, name, *dims[m], quant), wtype
        for norm, n in (("ffn_norm", s.hidden), ("ffn_sub_norm", s.ffn)):
            name = f"blk.{i}.{norm}.weight"
            yield name, DeferredTensor((n,), lambda name=name, n=n: _norm(seed, name, n)), "F32"
        for m in ("ffn_gate", "ffn_up", "ffn_down"):
            name = f"blk.{i}.{m}.weight"
            yield name, _matrix(seed, name, *dims[m], quant), wtype


def metadata(s: Shape, arch: str, quant: str, seed: int, name: str) -> dict:
    v = synthetic_vocab.make_vocab(s.n_regular, s.n_special, s.n_merges, seed=seed)
    md = {
        "general.name": name,
        f"{arch}.vocab_size": s.vocab,
        f"{arch}.context_length": s.ctx,
        f"{arch}.embedding_length": s.hidden,
        f"{arch}.block_count": s.layers,
        f"{arch}.feed_forward_length": s.ffn,
        f"{arch}.rope.dimension_count": s.head_dim,
        f"{arch}.attention.head_count": s.heads,
        f"{arch}.attention.head_count_kv": s.kv_heads,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{arch}.rope.freq_base": s.rope_base,
        "general.file_type": FILE_TYPES[quant],
        "general.quantization_version": 2,
    }
    md.update(v.metadata())
    return md


def make_model(out: str | Path, shape: Shape, quant: str = "i2_s", arch: str | None = None, seed: int = 0,
               name: str | None = None) -> Path:
    quant = quant.lower()
    if quant not in QUANTS:
        raise ShapeError(f"unknown --quant {quant!r}; choose one of {', '.join(QUANTS)}")
    arch = arch or ("bitnet-b1.58" if quant == "i2_s" else "bitnet")
    if arch not in ARCHS:
        raise ShapeError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    check_shape(shape, quant)
    md = metadata(shape, arch, quant, seed, name or f"synthetic BitNet b1.58 ({quant}, seed {seed})")
    return write_gguf(out, arch, md, tensors(shape, quant, seed))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="2b4t", help="preset shape (default 2b4t)")
    for dim in ("hidden", "layers", "heads", "kv-heads", "ffn", "n-regular", "n-merges", "ctx"):
        p.add_argument(f"--{dim}", type=int, help=f"override the preset's {dim.replace('-', ' ')}")
    p.add_argument("--quant", choices=QUANTS, default="i2_s", help="type of the ternary matrices (default i2_s)")
    p.add_argument("--arch", choices=ARCHS, help="GGUF architecture (default: bitnet-b1.58 for i2_s, else bitnet)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same weights")
    p.add_argument("-o", "--output", required=True, help="output .gguf path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    shape = SHAPES[a.shape]
    over = {k: getattr(a, k) for k in ("hidden", "layers", "heads", "kv_heads", "ffn", "n_regular", "n_merges", "ctx")}
    shape = replace(shape, **{k: v for k, v in over.items() if v is not None})
    for k, v in over.items():
        if v is not None and v <= 0:
            print(f"error: --{k.replace('_', '-')} must be positive, got {v}", file=sys.stderr)
            return 2
    # a plain kill would skip the writer's cleanup and leave its hidden temporary file behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.perf_counter()
    try:
        path = make_model(a.output, shape, a.quant, a.arch, a.seed)
    except (ShapeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = path.stat().st_size
    print(f"wrote {path}: {size:,} bytes, {a.quant}, shape {shape}, {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
