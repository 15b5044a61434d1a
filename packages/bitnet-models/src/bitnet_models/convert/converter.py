"""Hugging Face BitNet checkpoint -> GGUF, one tensor at a time.

The plan (names, shapes, types) is built and checked in full before a byte is written, so every refusal (unknown
tensors, shapes off the block size, missing weights) comes before any output exists. Tensors are then produced
lazily, in the official file's order, each read from the checkpoint only when the writer reaches it: peak memory
is about one tensor (float32) plus its encoding.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitnet_models.convert.errors import CheckpointError, ConvertError, QuantizationError, UnsupportedModelError
from bitnet_models.convert.hfconfig import HFConfig, read_config
from bitnet_models.convert.packing import (
    F16_MAX,
    OUTTYPES,
    check_block,
    check_scale,
    check_ternary_float,
    encode_ternary,
    ternarize,
    unpack_offline,
)
from bitnet_models.convert.safetensors import Checkpoint
from bitnet_models.convert.tokenizer import tokenizer_metadata
from bitnet_models.gguf.writer import DeferredTensor, write_gguf

log = logging.getLogger(__name__)

# GGUF per-layer name -> Hugging Face name under model.layers.N. (transformers / 1bitLLM where they differ),
# in the order of the official 2B-4T file
LAYER = (
    ("attn_norm", "input_layernorm", None),
    ("attn_q", "self_attn.q_proj", None),
    ("attn_k", "self_attn.k_proj", None),
    ("attn_v", "self_attn.v_proj", None),
    ("attn_sub_norm", "self_attn.attn_sub_norm", "self_attn.inner_attn_ln"),
    ("attn_output", "self_attn.o_proj", None),
    ("ffn_norm", "post_attention_layernorm", None),
    ("ffn_gate", "mlp.gate_proj", None),
    ("ffn_up", "mlp.up_proj", None),
    ("ffn_sub_norm", "mlp.ffn_sub_norm", "mlp.ffn_layernorm"),
    ("ffn_down", "mlp.down_proj", None),
)
MATRICES = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}
EMBD_CHUNK = 2048  # embedding rows converted at a time (a few MB of temporaries)
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some checkpoints carry that the GGUF graph recomputes


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    arch: str
    outtype: str
    n_tensors: int
    n_bytes: int
    config: HFConfig


def _weight_types(outtype: str) -> tuple[str, str]:
    """(GGUF type of the ternary matrices, of the embedding / LM head)."""
    return OUTTYPES[outtype][0], ("F32" if outtype == "f32" else "F16")


class _Plan:
    def __init__(self, folder: Path, cfg: HFConfig, ckpt: Checkpoint, outtype: str, allow_untied_head: bool):
        self.folder, self.cfg, self.ckpt, self.outtype = folder, cfg, ckpt, outtype
        self.allow_untied_head = allow_untied_head
        self.used: set[str] = set()
        self.n_vocab = self._embedding_rows()

    def _need(self, name: str, shape: tuple[int, ...]) -> str:
        e = self.ckpt.entry(name)
        if e.shape != shape:
            raise CheckpointError(f"{self.folder}: tensor {name} has shape {e.shape}, config.json implies {shape}")
        self.used.add(name)
        return name

    def _embedding_rows(self) -> int:
        e = self.ckpt.entry("model.embed_tokens.weight")
        if len(e.shape) != 2 or e.shape[1] != self.cfg.hidden:
            raise CheckpointError(f"{self.folder}: model.embed_tokens.weight has shape {e.shape}; "
                                  f"expected (vocab, {self.cfg.hidden})")
        return e.shape[0]

    def _float_tensor(self, name: str, shape: tuple[int, ...], gtype: str):
        hf = self._need(name, shape)
        if len(shape) == 1:
            return DeferredTensor(shape, lambda: self.ckpt.float32(hf))

        def make():
            out = np.empty(shape, dtype=np.float16 if gtype == "F16" else np.float32)
            for r in range(0, shape[0], EMBD_CHUNK):
                rows = self.ckpt.rows_float32(hf, r, min(r + EMBD_CHUNK, shape[0]))
                if gtype == "F16" and np.abs(rows).max(initial=0) > F16_MAX:
                    raise QuantizationError(f"{hf}: values beyond F16's range; use --outtype f32")
                out[r : r + rows.shape[0]] = rows
            return out

        return DeferredTensor(shape, make)

    def _ternary(self, hf: str, shape: tuple[int, ...]):
        cfg = self.cfg
        name = hf + ".weight"
        check_block(self.outtype, name, shape)
        e = self.ckpt.entry(name)
        offline = cfg.quant_mode == "offline"
        if offline:
            scale_name = self._need(hf + ".weight_scale", self.ckpt.entry(hf + ".weight_scale").shape)
            if int(np.prod(self.ckpt.entry(scale_name).shape)) != 1:
                raise UnsupportedModelError(f"{scale_name}: shape {self.ckpt.entry(scale_name).shape}; expected "
                                            "one per-tensor scale")
            packed = e.dtype == "U8"
            want = (shape[0] // 4, shape[1]) if packed else shape
            if packed and shape[0] % 4:
                raise CheckpointError(f"{name}: {shape[0]} output rows cannot be packed 4 per byte")
            self._need(name, want)
        else:
            if e.dtype in ("U8", "I8"):
                raise QuantizationError(f"{name}: {e.dtype} weights in an online checkpoint (already quantized?); "
                                        "set quantization_mode to offline in config.json if they are packed")
            self._need(name, shape)

        def make():
            if not offline:
                q, scale = ternarize(self.ckpt.float32(name))
            else:
                raw = self.ckpt.raw(name)
                q = unpack_offline(raw, name) if raw.dtype == np.uint8 else check_ternary_float(
                    self.ckpt.float32(name), name)
                ws = check_scale(self.ckpt.float32(hf + ".weight_scale").reshape(-1)[0], hf + ".weight_scale")
                # autobitlinear multiplies the output by weight_scale; bitlinear divides by it
                scale = ws if cfg.linear_class == "autobitlinear" else np.float32(np.float32(1) / ws)
            return encode_ternary(q, scale, self.outtype)

        return DeferredTensor(shape, make)

    def tensors(self):
        cfg = self.cfg
        wtype, etype = _weight_types(self.outtype)
        kv = cfg.kv_heads * cfg.head_dim
        shapes = {
            "attn_q": (cfg.hidden, cfg.hidden), "attn_k": (kv, cfg.hidden), "attn_v": (kv, cfg.hidden),
            "attn_output": (cfg.hidden, cfg.hidden), "ffn_gate": (cfg.ffn, cfg.hidden),
            "ffn_up": (cfg.ffn, cfg.hidden), "ffn_down": (cfg.hidden, cfg.ffn),
            "attn_norm": (cfg.hidden,), "attn_sub_norm": (cfg.hidden,), "ffn_norm": (cfg.hidden,),
            "ffn_sub_norm": (cfg.ffn,),
        }
        out = [
            ("token_embd.weight", self._float_tensor("model.embed_tokens.weight", (self.n_vocab, cfg.hidden), etype),
             etype),
            ("output_norm.weight", self._float_tensor("model.norm.weight", (cfg.hidden,), "F32"), "F32"),
        ]
        untied = "lm_head.weight" in self.ckpt and not cfg.tied
        if not cfg.tied and "lm_head.weight" not in self.ckpt:
            raise CheckpointError(f"{self.folder}: tie_word_embeddings is false but lm_head.weight is missing")
        if untied and cfg.arch == "bitnet" and not self.allow_untied_head:
            raise UnsupportedModelError(
                f"{self.folder}: the checkpoint has its own lm_head, but llama.cpp's `bitnet` graph has no "
                "output.weight (it reuses token_embd as the LM head); pass --allow-untied-head to write "
                "output.weight anyway (bitnet-py runs it, llama.cpp cannot load it)")
        if untied:
            out.append(("output.weight", self._float_tensor("lm_head.weight", (self.n_vocab, cfg.hidden), etype),
                        etype))
        elif "lm_head.weight" in self.ckpt:
            self.used.add("lm_head.weight")  # a saved copy of the tied embedding
        for i in range(cfg.layers):
            p = f"model.layers.{i}."
            for gg, hf, hf_1bit in LAYER:
                src = p + (hf_1bit if cfg.family == "1bitllm" and hf_1bit else hf)
                if gg in MATRICES:
                    out.append((f"blk.{i}.{gg}.weight", self._ternary(src, shapes[gg]), wtype))
                else:
                    out.append((f"blk.{i}.{gg}.weight", self._float_tensor(src + ".weight", shapes[gg], "F32"), "F32"))
        extra = sorted(n for n in self.ckpt.entries if n not in self.used and not n.endswith(IGNORED_SUFFIXES))
        if extra:
            more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
            raise UnsupportedModelError(
                f"{self.folder}: tensors this converter does not know: {', '.join(extra[:5])}{more} "
                f"(biases, extra norms or more layers than num_hidden_layers = {cfg.layers}); refusing to drop them")
        return out


def gguf_metadata(cfg: HFConfig, outtype: str, n_vocab: int, name: str | None = None) -> dict:
    a = cfg.arch
    md = {
        "general.name": name or cfg.name,
        f"{a}.vocab_size": n_vocab,
        f"{a}.context_length": cfg.ctx,
        f"{a}.embedding_length": cfg.hidden,
        f"{a}.block_count": cfg.layers,
        f"{a}.feed_forward_length": cfg.ffn,
        f"{a}.rope.dimension_count": cfg.head_dim,
        f"{a}.attention.head_count": cfg.heads,
        f"{a}.attention.head_count_kv": cfg.kv_heads,
        f"{a}.attention.layer_norm_rms_epsilon": cfg.eps,
        f"{a}.rope.freq_base": cfg.rope_theta,
    }
    if a == "bitnet":  # what llama.cpp's converter writes for its `bitnet` arch
        md[f"{a}.rope.scaling.type"] = "linear"
        md[f"{a}.rope.scaling.factor"] = 1.0
    md["general.file_type"] = OUTTYPES[outtype][2]
    md["general.quantization_version"] = 2
    return md


def convert(hf_dir: str | os.PathLike, out: str | os.PathLike, outtype: str = "i2_s", *, name: str | None = None,
            tokenizer_pre: str | None = None, allow_untied_head: bool = False) -> ConvertResult:
    """Convert the checkpoint in `hf_dir` to a GGUF file at `out` (written atomically).

    Raises a ConvertError subclass (one line naming the problem and the fix) for anything it cannot convert
    faithfully; nothing is written then.
    """
    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown output type {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    folder = Path(hf_dir)
    if not folder.is_dir():
        raise CheckpointError(f"{hf_dir}: not a folder; expected a Hugging Face checkpoint folder with config.json")
    cfg = read_config(folder)
    if (cfg.raw.get("quantization_config") or {}).get("use_rms_norm"):
        raise UnsupportedModelError(f"{folder}: quantization_config.use_rms_norm adds a norm inside every "
                                    "BitLinear, which the GGUF graphs do not have")
    ckpt = Checkpoint(folder)
    plan = _Plan(folder, cfg, ckpt, outtype, allow_untied_head)
    tensors = plan.tensors()
    md = gguf_metadata(cfg, outtype, plan.n_vocab, name)
    md.update(tokenizer_metadata(folder, plan.n_vocab, cfg.raw, tokenizer_pre))
    log.info("converting %s (%s, %s) to %s as %s", folder, cfg.family, cfg.quant_mode, out, outtype)
    path = write_gguf(out, cfg.arch, md, tensors)
    return ConvertResult(path, cfg.arch, outtype, len(tensors), path.stat().st_size, cfg)
