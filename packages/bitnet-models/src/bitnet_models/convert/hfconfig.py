"""What a Hugging Face checkpoint's config.json says, reduced to what the GGUF needs.

Two families are recognized, and nothing else:
- transformers' BitNet (`model_type` "bitnet", `BitNetForCausalLM`): squared-ReLU FFN, sub-norms, tied embedding;
  `quantization_config` says whether the projections hold float master weights (`online`) or ternary values
  packed 4 per byte with a `weight_scale` (`offline`).
- 1bitLLM-style (`BitnetForCausalLM`, remote code, Llama-like config): SiLU FFN, sub-norms named `inner_attn_ln`
  and `ffn_layernorm`, float master weights, separate `lm_head`.
The GGUF architecture follows the FFN activation: relu2 -> `bitnet-b1.58` (bitnet.cpp), silu -> `bitnet`
(llama.cpp). Any other activation is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnet_models.convert.errors import CheckpointError, UnsupportedModelError

ACT_TO_ARCH = {"relu2": "bitnet-b1.58", "silu": "bitnet"}
FAMILIES = ("transformers-bitnet", "1bitllm")


@dataclass(frozen=True)
class HFConfig:
    family: str  # "transformers-bitnet" or "1bitllm"
    arch: str  # GGUF architecture written
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    ctx: int
    rope_theta: float
    eps: float
    act: str
    tied: bool
    quant_mode: str  # "online" (float master weights) or "offline" (packed ternary + weight_scale)
    linear_class: str  # "autobitlinear" (output * weight_scale) or "bitlinear" (output / weight_scale)
    bos_token_id: int | None
    eos_token_id: int | None
    name: str
    raw: dict[str, Any]


def _int(cfg: dict, key: str, path: Path, default: int | None = None) -> int:
    v = cfg.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise CheckpointError(f"{path}: {key} = {v!r}; expected a positive integer")
    return v


def _first_id(v: Any) -> int | None:
    if isinstance(v, list):
        v = v[0] if v else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def read_config(folder: str | Path) -> HFConfig:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json; expected a Hugging Face checkpoint folder")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if model_type == "bitnet" and (not archs or "BitNetForCausalLM" in archs):
        family = "transformers-bitnet"
    elif "BitnetForCausalLM" in archs:
        family = "1bitllm"
    else:
        raise UnsupportedModelError(
            f"{path}: model_type {model_type!r} (architectures {archs}) is not a BitNet checkpoint this converter "
            "knows; supported: model_type 'bitnet' (transformers' BitNetForCausalLM) and 1bitLLM's "
            "'BitnetForCausalLM'")
    act = cfg.get("hidden_act", "relu2" if family == "transformers-bitnet" else "silu")
    if act not in ACT_TO_ARCH:
        raise UnsupportedModelError(
            f"{path}: hidden_act {act!r} is not supported; supported: relu2 (-> arch bitnet-b1.58), silu (-> arch bitnet)")

    hidden = _int(cfg, "hidden_size", path)
    heads = _int(cfg, "num_attention_heads", path)
    kv_heads = _int(cfg, "num_key_value_heads", path, heads)
    head_dim = cfg.get("head_dim") or hidden // heads
    if hidden % heads or heads % kv_heads or head_dim * heads != hidden or head_dim % 2:
        raise UnsupportedModelError(
            f"{path}: {heads} heads / {kv_heads} KV heads with head_dim {head_dim} do not fit hidden_size {hidden} "
            "(the GGUF graph needs hidden = heads * head_dim, heads a multiple of KV heads, an even head_dim)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise UnsupportedModelError(f"{path}: attention_bias/mlp_bias are set; the BitNet GGUF graphs have no biases")
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or {}
    rtype = scaling.get("rope_type", scaling.get("type")) or rope.get("rope_type", "default")
    if rtype not in ("default", "linear") or float(scaling.get("factor", 1.0)) != 1.0:
        raise UnsupportedModelError(f"{path}: RoPE scaling {scaling or rope} is not supported; only plain RoPE")

    qc = cfg.get("quantization_config") or {}
    if family == "transformers-bitnet":
        if qc and qc.get("quant_method", "bitnet") != "bitnet":
            raise UnsupportedModelError(f"{path}: quantization_config.quant_method {qc.get('quant_method')!r}; "
                                        "expected 'bitnet'")
        linear_class = qc.get("linear_class", "bitlinear")
        mode = qc.get("quantization_mode", "offline")
        if linear_class not in ("autobitlinear", "bitlinear"):
            raise UnsupportedModelError(f"{path}: quantization_config.linear_class {linear_class!r}; "
                                        "supported: autobitlinear, bitlinear")
        if mode not in ("online", "offline") or (linear_class == "bitlinear" and mode != "offline"):
            raise UnsupportedModelError(f"{path}: quantization_mode {mode!r} with {linear_class}; supported: "
                                        "autobitlinear online/offline, bitlinear offline")
        tied = bool(cfg.get("tie_word_embeddings", True))
    else:
        linear_class, mode = "bitlinear", "online"
        tied = bool(cfg.get("tie_word_embeddings", False))
    return HFConfig(
        family=family, arch=ACT_TO_ARCH[act], hidden=hidden, layers=_int(cfg, "num_hidden_layers", path),
        heads=heads, kv_heads=kv_heads, head_dim=head_dim, ffn=_int(cfg, "intermediate_size", path),
        vocab=_int(cfg, "vocab_size", path), ctx=_int(cfg, "max_position_embeddings", path, 4096),
        rope_theta=float(theta), eps=float(cfg.get("rms_norm_eps", 1e-5)), act=act, tied=tied,
        quant_mode=mode, linear_class=linear_class, bos_token_id=_first_id(cfg.get("bos_token_id")),
        eos_token_id=_first_id(cfg.get("eos_token_id")), name=Path(folder).resolve().name, raw=cfg,
    )
