"""Small Hugging Face-format checkpoints made with numpy alone: for the converter's tests and for
tools/make_hf_checkpoint.py (a random checkpoint of the 2B-4T shape). No torch, no transformers.

- `write_safetensors` streams tensors into a safetensors file (the header first, then each tensor as it is made).
- `write_bpe_tokenizer` writes a byte-level BPE tokenizer.json (LLaMA-3's pre-tokenizer regex, merges learned on a
  short text) with tokenizer_config.json (BOS/EOS, chat template).
- `make_checkpoint` writes config.json + model.safetensors + the tokenizer for a transformers BitNet
  (`online` float master weights or `offline` 2-bit packed + weight_scale) or a 1bitLLM-style checkpoint.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}"
                 "<|eot_id|>{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}")
CORPUS = ("The quick brown fox jumps over the lazy dog. To be, or not to be, that is the question. "
          "BitNet b1.58 stores every weight as -1, 0 or +1 and runs on plain CPUs. " * 4)
_ST_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.uint8): "U8",
             np.dtype(np.int8): "I8", np.dtype(np.int32): "I32", np.dtype(np.int64): "I64"}


@dataclass(frozen=True)
class Spec:
    """A tensor to write: safetensors dtype name (BF16, F32, F16, U8), shape, and a function making its array
    (float32 for BF16, which is rounded to nearest even)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    make: Callable[[], np.ndarray]


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), round to nearest even."""
    b = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((b + (0x7FFF + ((b >> 16) & 1))) >> 16).astype(np.uint16)


def write_safetensors(path: str | Path, specs: Iterable[Spec]) -> Path:
    specs = list(specs)
    size = {"BF16": 2, "F16": 2, "F32": 4, "U8": 1, "I8": 1, "I32": 4, "I64": 8}
    header, off = {}, 0
    for s in specs:
        n = int(np.prod(s.shape, dtype=np.int64)) * size[s.dtype]
        header[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path = Path(path)
    tmp = path.with_name(path.name + ".part")  # renamed when complete (the specs may read the file it replaces)
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for s in specs:
            a = s.make()
            if s.dtype == "BF16":
                a = to_bf16_bits(a)
            elif _ST_NAMES.get(a.dtype) != s.dtype:
                raise ValueError(f"{s.name}: made {a.dtype}, promised {s.dtype}")
            if tuple(a.shape) != tuple(s.shape):
                raise ValueError(f"{s.name}: made shape {a.shape}, promised {s.shape}")
            f.write(np.ascontiguousarray(a).tobytes())
    tmp.replace(path)
    return path


# -- tokenizer ------------------------------------------------------------------------------------------------

def _byte_symbols() -> list[str]:
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        out.append(chr(b) if b in keep else chr(256 + extra))
        extra += b not in keep
    return out


def _learn_merges(text: str, n_merges: int) -> list[tuple[str, str]]:
    sym = _byte_symbols()
    words = Counter(re.findall(r" ?[A-Za-z]+| ?[0-9]{1,3}| ?[^\sA-Za-z0-9]+|\s+", text))
    seqs = {w: [sym[b] for b in w.encode()] for w in words}
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, c in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[a, b] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        for w in seqs:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def write_bpe_tokenizer(folder: str | Path, n_vocab: int, n_merges: int = 120, n_special: int = 8,
                        chat_template: str | None = CHAT_TEMPLATE) -> dict[str, int]:
    """A LLaMA-3-style byte-level BPE: 256 byte tokens, merged tokens, then `n_special` special tokens at the top
    of the id range below n_vocab (BOS <|begin_of_text|>, EOS <|end_of_text|>, <|eot_id|>, reserved ones).
    Returns the special ids."""
    folder = Path(folder)
    sym = _byte_symbols()
    merges = _learn_merges(CORPUS, n_merges)
    vocab = {s: i for i, s in enumerate(sym)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    first = len(vocab)
    if first + n_special > n_vocab:
        raise ValueError(f"vocabulary of {n_vocab} is too small for {first} tokens + {n_special} special")
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"] + [
        f"<|reserved_special_token_{i}|>" for i in range(n_special - 3)]
    specials = {t: first + i for i, t in enumerate(names)}
    tj = {
        "version": "1.0",
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t, i in specials.items()],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                                    {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>",
                                                                   "ids": [specials["<|begin_of_text|>"]],
                                                                   "tokens": ["<|begin_of_text|>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    tcfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "model_max_length": 4096,
            "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": True}
    if chat_template:
        tcfg["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=1))
    return {"bos": specials["<|begin_of_text|>"], "eos": specials["<|end_of_text|>"]}


# -- checkpoints ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    ctx: int = 4096
    rope_theta: float = 500000.0


SHAPES = {
    "2b4t": Shape(2560, 30, 20, 5, 6912, 128256),
    "tiny": Shape(256, 2, 4, 1, 768, 512, ctx=256),
}


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def pack_offline(q: np.ndarray) -> np.ndarray:
    """transformers' pack_weights: q (out, in) in {-1,0,1} -> (out/4, in) uint8, row r bit pair i <- row i*out/4+r."""
    rows = q.shape[0] // 4
    codes = (q + 1).astype(np.uint8)
    packed = np.zeros((rows, *q.shape[1:]), np.uint8)
    for i in range(4):
        packed |= codes[i * rows : (i + 1) * rows] << (2 * i)
    return packed


def _ternarize_like_transformers(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    from bitnet_models.convert.packing import ternarize

    return ternarize(w)


def make_checkpoint(folder: str | Path, shape: Shape = SHAPES["tiny"], *, mode: str = "online",
                    family: str = "transformers-bitnet", act: str | None = None, seed: int = 0,
                    dtype: str = "F32", tied: bool | None = None, fp16_exact_embedding: bool = True,
                    linear_class: str = "autobitlinear") -> Path:
    """Write a random checkpoint. `mode` online: float master weights; offline: the same weights ternarized the
    way transformers' online mode does, packed 4 per byte with weight_scale (so both modes are the same model).
    `fp16_exact_embedding` rounds the embedding to fp16 values, so the GGUF's F16 embedding holds it exactly."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = shape
    act = act or ("relu2" if family == "transformers-bitnet" else "silu")
    tied = True if tied is None else tied  # 2B-4T and llama.cpp's `bitnet` graph tie the LM head
    head_dim = s.hidden // s.heads
    kv = s.kv_heads * head_dim
    specials = write_bpe_tokenizer(folder, s.vocab)

    def dense(name, shp, std):
        def make():
            a = (std * _rng(seed, name).standard_normal(shp, dtype=np.float32)).astype(np.float32)
            if fp16_exact_embedding and name.endswith(("embed_tokens.weight", "lm_head.weight")):
                a = a.astype(np.float16).astype(np.float32)
            return a
        return make

    def norm(name, n):
        return lambda: (1.0 + 0.05 * _rng(seed, name).standard_normal(n)).astype(np.float32)

    specs = [Spec("model.embed_tokens.weight", dtype, (s.vocab, s.hidden), dense("model.embed_tokens.weight",
                                                                              (s.vocab, s.hidden), 0.5))]
    mats = {"self_attn.q_proj": (s.hidden, s.hidden), "self_attn.k_proj": (kv, s.hidden),
            "self_attn.v_proj": (kv, s.hidden), "self_attn.o_proj": (s.hidden, s.hidden),
            "mlp.gate_proj": (s.ffn, s.hidden), "mlp.up_proj": (s.ffn, s.hidden), "mlp.down_proj": (s.hidden, s.ffn)}
    sub_attn = "self_attn.inner_attn_ln" if family == "1bitllm" else "self_attn.attn_sub_norm"
    sub_ffn = "mlp.ffn_layernorm" if family == "1bitllm" else "mlp.ffn_sub_norm"
    for i in range(s.layers):
        p = f"model.layers.{i}."
        for n, dim in (("input_layernorm", s.hidden), ("post_attention_layernorm", s.hidden),
                       (sub_attn, s.hidden), (sub_ffn, s.ffn)):
            specs.append(Spec(p + n + ".weight", dtype, (dim,), norm(p + n, dim)))
        for m, shp in mats.items():
            master = dense(p + m + ".weight", shp, 1.0 / np.sqrt(shp[1]))
            if mode == "online":
                specs.append(Spec(p + m + ".weight", dtype, shp, master))
                continue

            def packed(master=master, dt=dtype):
                w = master()
                if dt == "BF16":  # the model's weights are the bf16 values
                    w = (to_bf16_bits(w).astype(np.uint32) << 16).view(np.float32)
                q, _ = _ternarize_like_transformers(w)
                return pack_offline(q)

            def scale(master=master, dt=dtype):
                w = master()
                if dt == "BF16":
                    w = (to_bf16_bits(w).astype(np.uint32) << 16).view(np.float32)
                _, sc = _ternarize_like_transformers(w)
                return np.array([sc if linear_class == "autobitlinear" else 1 / sc], np.float32)

            specs.append(Spec(p + m + ".weight", "U8", (shp[0] // 4, shp[1]), packed))
            specs.append(Spec(p + m + ".weight_scale", dtype, (1,), scale))
    specs.append(Spec("model.norm.weight", dtype, (s.hidden,), norm("model.norm", s.hidden)))
    if not tied:
        specs.append(Spec("lm_head.weight", dtype, (s.vocab, s.hidden), dense("lm_head.weight", (s.vocab, s.hidden),
                                                                             0.5)))
    write_safetensors(folder / "model.safetensors", specs)

    cfg = {
        "hidden_size": s.hidden, "intermediate_size": s.ffn, "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "vocab_size": s.vocab,
        "max_position_embeddings": s.ctx, "rms_norm_eps": 1e-5, "hidden_act": act,
        "tie_word_embeddings": tied, "bos_token_id": specials["bos"], "eos_token_id": specials["eos"],
        "attention_bias": False, "torch_dtype": {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype],
    }
    if family == "transformers-bitnet":
        cfg.update({"architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "head_dim": head_dim,
                    "rope_parameters": {"rope_theta": s.rope_theta, "rope_type": "default"},
                    "quantization_config": {"quant_method": "bitnet", "linear_class": linear_class,
                                            "quantization_mode": mode, "use_rms_norm": False,
                                            "modules_to_not_convert": None}})
    else:
        cfg.update({"architectures": ["BitnetForCausalLM"], "model_type": "llama", "rope_theta": s.rope_theta,
                    "rope_scaling": None, "input_bits": 8, "weight_bits": 1})
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return folder
