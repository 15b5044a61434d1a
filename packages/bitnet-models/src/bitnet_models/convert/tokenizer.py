"""The checkpoint's tokenizer as GGUF metadata, written the way llama.cpp's converter writes it.

- `tokenizer.model` (SentencePiece, LLaMA/1bitLLM) -> `tokenizer.ggml.model` "llama": pieces, scores and piece
  types straight from the model file, tokens added by `added_tokens.json` / `tokenizer_config.json`, unused ids
  up to the embedding size filled with `[PADn]`.
- `tokenizer.json` (byte-level BPE, LLaMA-3 / 2B-4T) -> "gpt2": the vocabulary by id, merges, added tokens
  (special ones CONTROL, others USER_DEFINED), gaps `[PADn]` UNUSED, and the pre-tokenizer name llama.cpp knows
  ("llama-bpe" for LLaMA-3's regex, "gpt-2" for GPT-2's).
Special ids and the add-BOS/EOS flags come from tokenizer_config.json (then config.json); the chat template from
chat_template.jinja or tokenizer_config.json. The SentencePiece file is decoded here (a few protobuf fields), so
conversion needs neither sentencepiece nor transformers.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from bitnet_models.convert.errors import CheckpointError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


# -- SentencePiece model (protobuf wire format) ------------------------------------------------------------

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """(field number, wire type, value) for each field of a message; value is int, bytes or raw 4/8 bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = buf[i : i + 8], i + 8
        elif wt == 2:
            n, i = _varint(buf, i)
            v, i = buf[i : i + n], i + n
        elif wt == 5:
            v, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        if i > len(buf):
            raise ValueError("truncated field")
        yield num, wt, v


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def read_spm(path: Path) -> dict[str, Any]:
    """tokens, scores, types, special ids and add_dummy_prefix of a SentencePiece model file."""
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    ids = {"unk": 0, "bos": 1, "eos": 2, "pad": -1}  # proto2 defaults
    add_prefix = True
    try:
        for num, wt, v in _fields(path.read_bytes()):
            if num == 1 and wt == 2:
                piece, score, kind = "", 0.0, NORMAL
                for n2, w2, v2 in _fields(v):
                    if n2 == 1 and w2 == 2:
                        piece = v2.decode("utf-8")
                    elif n2 == 2 and w2 == 5:
                        score = struct.unpack("<f", v2)[0]
                    elif n2 == 3 and w2 == 0:
                        kind = v2
                tokens.append(piece)
                scores.append(score)
                types.append(kind)
            elif num == 2 and wt == 2:
                for n2, w2, v2 in _fields(v):
                    key = {40: "unk", 41: "bos", 42: "eos", 43: "pad"}.get(n2)
                    if key and w2 == 0:
                        ids[key] = _signed(v2)
            elif num == 3 and wt == 2:
                for n2, w2, v2 in _fields(v):
                    if n2 == 3 and w2 == 0:
                        add_prefix = bool(v2)
    except (ValueError, UnicodeDecodeError, struct.error) as e:
        raise CheckpointError(f"{path}: not a SentencePiece model ({e})") from None
    if not tokens:
        raise CheckpointError(f"{path}: the SentencePiece model has no pieces")
    return {"tokens": tokens, "scores": scores, "types": types, "ids": ids, "add_prefix": add_prefix}


# -- helpers over the JSON side files ------------------------------------------------------------------------

def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    return d if isinstance(d, dict) else {}


def _content(v: Any) -> str | None:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def chat_template(folder: Path, tcfg: dict[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    t = tcfg.get("chat_template")
    if isinstance(t, list):  # named templates: the default one, else the first
        named = {x.get("name"): x.get("template") for x in t if isinstance(x, dict)}
        t = named.get("default") or next(iter(named.values()), None)
    return t if isinstance(t, str) and t else None


def pre_tokenizer_name(tj: dict[str, Any]) -> str | None:
    """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json's pre-tokenizer: llama-bpe, gpt-2, or None."""
    text = json.dumps(tj.get("pre_tokenizer"))
    if r"\\p{N}{1,3}" in text:
        return "llama-bpe"
    if '"ByteLevel"' in text and '"use_regex": true' in text:
        return "gpt-2"
    return None


def _bos_from_post_processor(tj: dict[str, Any]) -> bool | None:
    pp = tj.get("post_processor") or {}
    procs = pp.get("processors", [pp]) if pp.get("type") == "Sequence" else [pp]
    for p in procs:
        if p.get("type") == "TemplateProcessing":
            single = p.get("single") or []
            return bool(single) and "SpecialToken" in single[0]
    return None


# -- the two vocabularies -------------------------------------------------------------------------------------

def _spm_vocab(folder: Path, n_vocab: int, tcfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    spm = read_spm(folder / "tokenizer.model")
    tokens, scores, types = spm["tokens"], spm["scores"], spm["types"]
    added: dict[int, tuple[str, bool]] = {}
    for text, i in _json(folder / "added_tokens.json").items():
        if isinstance(i, int):
            added[i] = (text, False)
    for i, t in (tcfg.get("added_tokens_decoder") or {}).items():
        if str(i).isdigit() and _content(t) is not None:
            added[int(i)] = (_content(t), bool(t.get("special")))
    for i, (text, special) in sorted(added.items()):
        if i < len(tokens):
            continue  # already a piece of the model
        while len(tokens) < i:
            tokens.append(f"[PAD{len(tokens)}]"), scores.append(-1000.0), types.append(UNUSED)
        tokens.append(text), scores.append(-1000.0), types.append(CONTROL if special else USER_DEFINED)
    if len(tokens) > n_vocab:
        raise CheckpointError(f"{folder}: the tokenizer has {len(tokens)} tokens but the embedding only {n_vocab} rows")
    while len(tokens) < n_vocab:
        tokens.append(f"[PAD{len(tokens)}]"), scores.append(-1000.0), types.append(UNUSED)
    md = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.asarray(scores, dtype=np.float32),
        "tokenizer.ggml.token_type": np.asarray(types, dtype=np.int32),
        "tokenizer.ggml.add_space_prefix": spm["add_prefix"],
    }
    ids = {k: v for k, v in spm["ids"].items() if 0 <= v < len(tokens)}
    return md, ids


def _bpe_vocab(folder: Path, n_vocab: int, tcfg: dict[str, Any], pre: str | None) -> tuple[dict[str, Any], dict[str, int]]:
    path = folder / "tokenizer.json"
    tj = _json(path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise CheckpointError(f"{path}: tokenizer model type {model.get('type')!r}; supported: byte-level BPE "
                              "(or a SentencePiece tokenizer.model beside it)")
    if model.get("byte_fallback"):
        raise CheckpointError(f"{path}: a SentencePiece-style BPE (byte_fallback) needs its tokenizer.model, "
                              "which is missing from the folder")
    pre = pre or pre_tokenizer_name(tj)
    if pre is None:
        raise CheckpointError(f"{path}: cannot tell which pre-tokenizer this tokenizer uses (known: LLaMA-3's "
                              "'llama-bpe', GPT-2's 'gpt-2'); name it with --tokenizer-pre")
    tokens: list[str | None] = [None] * n_vocab
    types = [UNUSED] * n_vocab
    for text, i in model["vocab"].items():
        if not 0 <= i < n_vocab:
            raise CheckpointError(f"{path}: token {text!r} has id {i}, outside the embedding's {n_vocab} rows")
        tokens[i], types[i] = text, NORMAL
    for t in tj.get("added_tokens", []):
        i = t.get("id")
        if not isinstance(i, int) or not 0 <= i < n_vocab:
            raise CheckpointError(f"{path}: added token {t.get('content')!r} has id {i}, outside the embedding's "
                                  f"{n_vocab} rows")
        tokens[i], types[i] = t["content"], CONTROL if t.get("special") else USER_DEFINED
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    md = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.asarray(types, dtype=np.int32),
        "tokenizer.ggml.merges": merges,
    }
    bos = _bos_from_post_processor(tj)
    if bos is not None:
        md["tokenizer.ggml.add_bos_token"] = bos
    return md, {}


def tokenizer_metadata(folder: str | Path, n_vocab: int, config: dict[str, Any],
                       pre: str | None = None) -> dict[str, Any]:
    """GGUF tokenizer metadata for the checkpoint in `folder`, sized to the embedding's `n_vocab` rows."""
    folder = Path(folder)
    tcfg = _json(folder / "tokenizer_config.json")
    if (folder / "tokenizer.model").is_file():
        md, ids = _spm_vocab(folder, n_vocab, tcfg)
    elif (folder / "tokenizer.json").is_file():
        md, ids = _bpe_vocab(folder, n_vocab, tcfg, pre)
    else:
        raise CheckpointError(f"{folder}: no tokenizer.model or tokenizer.json; copy the model's tokenizer files "
                              "into the folder (a GGUF without a vocabulary cannot be run)")
    index = {t: i for i, t in enumerate(md["tokenizer.ggml.tokens"])}
    for key in ("bos", "eos", "unk", "pad"):
        text = _content(tcfg.get(f"{key}_token"))
        if text is not None and text in index:
            ids[key] = index[text]
    for key in ("bos", "eos", "pad"):
        v = config.get(f"{key}_token_id")
        v = v[0] if isinstance(v, list) and v else v
        if key not in ids and isinstance(v, int) and 0 <= v < n_vocab:
            ids[key] = v
    for key, gguf_key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                          ("pad", "padding_token_id")):
        if key in ids:
            md[f"tokenizer.ggml.{gguf_key}"] = int(ids[key])
    for flag in ("add_bos_token", "add_eos_token"):
        if isinstance(tcfg.get(flag), bool):
            md[f"tokenizer.ggml.{flag}"] = tcfg[flag]
    if md["tokenizer.ggml.model"] == "llama":
        md.setdefault("tokenizer.ggml.add_bos_token", True)
    tmpl = chat_template(folder, tcfg)
    if tmpl:
        md["tokenizer.chat_template"] = tmpl
    return md
