"""Writing a Hugging Face BitNet checkpoint that `convert` reads, for exporters that hold their own weights
(tools/export_tiny.py for the shipped model): the weights go out in transformers' BitNet layout, then `convert`
makes every GGUF from it, so there is one GGUF writer path for all models.

Ternary matrices are written in the `offline` form (2-bit packed + weight_scale): the exact ternary values and
scale a training framework computed survive, whatever its rounding of W / mean|W| at the boundaries.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from bitnet_models.convert.testing import Spec, pack_offline, write_safetensors

PROJ = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj"}
NORMS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
         "attn_sub_norm": "self_attn.attn_sub_norm", "ffn_sub_norm": "mlp.ffn_sub_norm"}


def hf_config(*, hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, vocab: int, ctx: int,
              rope_theta: float, eps: float, act: str = "relu2", bos: int | None = None,
              eos: int | None = None) -> dict:
    """config.json of a transformers BitNet checkpoint in the offline (packed) form."""
    return {
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_act": act,
        "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": hidden // heads,
        "vocab_size": vocab, "max_position_embeddings": ctx, "rms_norm_eps": eps,
        "rope_parameters": {"rope_theta": rope_theta, "rope_type": "default"}, "tie_word_embeddings": True,
        "bos_token_id": bos, "eos_token_id": eos, "attention_bias": False, "torch_dtype": "float32",
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "offline", "use_rms_norm": False},
    }


def save_offline_checkpoint(folder: str | Path, config: dict, embedding: np.ndarray, output_norm: np.ndarray,
                            layers: list[Mapping[str, object]]) -> Path:
    """Write config.json and model.safetensors. `layers[i]` maps GGUF names to arrays: the norms
    (attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm) as float vectors and the projections (attn_q ... ffn_down)
    as (q int8 (out, in) in {-1, 0, 1}, scale) with W = q * scale."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f32 = lambda a: (lambda: np.ascontiguousarray(a, np.float32))  # noqa: E731
    specs = [Spec("model.embed_tokens.weight", "F32", tuple(embedding.shape), f32(embedding))]
    for i, layer in enumerate(layers):
        p = f"model.layers.{i}."
        for gg, hf in NORMS.items():
            a = np.asarray(layer[gg])
            specs.append(Spec(p + hf + ".weight", "F32", tuple(a.shape), f32(a)))
        for gg, hf in PROJ.items():
            q, scale = layer[gg]
            q = np.asarray(q)
            specs.append(Spec(p + hf + ".weight", "U8", (q.shape[0] // 4, q.shape[1]), lambda q=q: pack_offline(q)))
            specs.append(Spec(p + hf + ".weight_scale", "F32", (1,), f32(np.array([scale], np.float32))))
    specs.append(Spec("model.norm.weight", "F32", tuple(output_norm.shape), f32(output_norm)))
    write_safetensors(folder / "model.safetensors", specs)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder


# -- a SentencePiece model file from a vocabulary ----------------------------------------------------------------

def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
    return _varint(num << 3 | wire) + payload


def _bytes(num: int, data: bytes) -> bytes:
    return _field(num, 2, _varint(len(data)) + data)


def write_spm_model(path: str | Path, tokens: list[str], scores, types, *, unk: int = 0, bos: int = 1, eos: int = 2,
                    pad: int = -1, add_dummy_prefix: bool = True, bpe: bool = True) -> Path:
    """A SentencePiece ModelProto holding these pieces (what llama.cpp's `llama` vocabulary is made from)."""
    out = bytearray()
    for t, s, k in zip(tokens, scores, types):
        out += _bytes(1, _bytes(1, t.encode("utf-8")) + _field(2, 5, struct.pack("<f", float(s)))
                      + _field(3, 0, _varint(int(k))))
    trainer = (_field(3, 0, _varint(2 if bpe else 1)) + _field(4, 0, _varint(len(tokens)))
               + _field(40, 0, _varint(unk)) + _field(41, 0, _varint(bos)) + _field(42, 0, _varint(eos))
               + _field(43, 0, _varint(pad)))
    out += _bytes(2, trainer)
    out += _bytes(3, _bytes(1, b"identity") + _field(3, 0, _varint(int(add_dummy_prefix))))
    Path(path).write_bytes(bytes(out))
    return Path(path)
