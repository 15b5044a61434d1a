"""`bitnet inspect`: what a GGUF file holds, read from the header alone (no tensor data is touched)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from bitnet_models.config import ModelConfig
from bitnet_models.errors import ModelConfigError
from bitnet_models.gguf.reader import GGUFFile, ValueType


def summarize(f: GGUFFile) -> dict[str, Any]:
    md = f.metadata
    try:
        cfg = ModelConfig.from_gguf(f).__dict__
        cfg_error = None
    except ModelConfigError as e:
        cfg, cfg_error = None, str(e)
    tok = {
        "model": md.get("tokenizer.ggml.model"),
        "pre": md.get("tokenizer.ggml.pre"),
        "n_tokens": len(md.get("tokenizer.ggml.tokens", ())),
        "n_merges": len(md.get("tokenizer.ggml.merges", ())),
        "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": md.get("tokenizer.ggml.eos_token_id"),
        "add_bos_token": md.get("tokenizer.ggml.add_bos_token"),
        "chat_template": "tokenizer.chat_template" in md,
    }
    by_type: Counter[str] = Counter()
    bytes_by_type: Counter[str] = Counter()
    tensors = []
    for t in f.tensors.values():
        by_type[t.qtype.name] += 1
        bytes_by_type[t.qtype.name] += t.nbytes
        tensors.append({"name": t.name, "type": t.qtype.name, "shape": list(t.shape), "bytes": t.nbytes, "offset": t.offset})
    scalars = {
        k: _shortest(f, k, v)
        for k, v in md.items()
        if isinstance(v, (int, float, str, bool)) and not k.startswith("tokenizer.chat")
    }
    if cfg is not None:
        cfg["norm_eps"] = _as_f32_text(cfg["norm_eps"])
    return {
        "path": str(f.path),
        "file_size": f.file_size,
        "gguf_version": f.version,
        "architecture": f.architecture,
        "name": md.get("general.name"),
        "config": cfg,
        "config_error": cfg_error,
        "tokenizer": tok,
        "metadata": scalars,
        "tensor_count": len(tensors),
        "tensor_types": {k: {"count": by_type[k], "bytes": bytes_by_type[k]} for k in sorted(by_type)},
        "tensors": tensors,
    }


def _as_f32_text(v: float) -> float:
    # an f32 value such as 1e-5 reads back as 9.999999747378752e-06; show the shortest decimal that is the same f32
    return float(str(np.float32(v)))


def _shortest(f: GGUFFile, key: str, v: Any) -> Any:
    return _as_f32_text(v) if f.metadata_types.get(key) == ValueType.FLOAT32 else v


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def format_text(s: dict[str, Any], show_tensors: bool = True) -> str:
    out = [f"file:         {s['path']} ({_mb(s['file_size'])}, GGUF v{s['gguf_version']})"]
    out.append(f"architecture: {s['architecture']}" + (f"  name: {s['name']}" if s["name"] else ""))
    c = s["config"]
    if c:
        out.append(
            f"shape:        hidden {c['n_embd']}, {c['n_layer']} layers, {c['n_head']} heads / {c['n_head_kv']} KV heads "
            f"(head_dim {c['head_dim']}), FFN {c['n_ff']} ({c['ffn_act']}), vocab {c['n_vocab']}, ctx {c['n_ctx_train']}"
        )
        out.append(
            f"              rope base {c['rope_base']:g}, rms eps {c['norm_eps']:g}, weights {c['weight_type']}, "
            f"{'tied' if c['tied_head'] else 'separate'} LM head" + (", per-projection scales" if c["has_scales"] else "")
        )
    else:
        out.append(f"shape:        (not a runnable model: {s['config_error']})")
    t = s["tokenizer"]
    if t["model"]:
        out.append(
            f"tokenizer:    {t['model']} (pre {t['pre'] or 'default'}), {t['n_tokens']} tokens, {t['n_merges']} merges, "
            f"BOS {t['bos_token_id']}, EOS {t['eos_token_id']}, add_bos {t['add_bos_token']}, "
            f"chat template {'yes' if t['chat_template'] else 'no'}"
        )
    else:
        out.append("tokenizer:    none in the file")
    types = ", ".join(f"{k} x{v['count']} ({_mb(v['bytes'])})" for k, v in s["tensor_types"].items())
    out.append(f"tensors:      {s['tensor_count']}: {types}")
    if show_tensors:
        w = max((len(x["name"]) for x in s["tensors"]), default=4)
        out.append("")
        out.append(f"  {'name':<{w}}  {'type':<6} {'shape':<16} {'bytes':>12}")
        for x in s["tensors"]:
            shape = "x".join(str(d) for d in x["shape"])
            out.append(f"  {x['name']:<{w}}  {x['type']:<6} {shape:<16} {x['bytes']:>12}")
    return "\n".join(out)
