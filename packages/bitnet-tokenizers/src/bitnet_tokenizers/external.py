"""A vocabulary from a tokenizer.model (SentencePiece) or tokenizer.json (Hugging Face) file instead of the GGUF.

The file is turned into the same metadata a GGUF converter would write (tokens, scores, token types, merges) and
read by the same code as a GGUF vocabulary. Special ids and add-BOS/EOS flags come from the GGUF when it has them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bitnet_models.convert.tokenizer import pre_tokenizer_name
from bitnet_tokenizers.errors import TokenizerError
from bitnet_tokenizers.vocab import TokenType, Vocab, vocab_from_metadata

_KEEP = ("_token_id", "add_bos_token", "add_eos_token", "add_space_prefix")


def vocab_from_file(path: str, gguf_md: dict[str, Any] | None = None) -> Vocab:
    p = Path(path)
    if not p.is_file():
        raise TokenizerError(f"{path}: no such tokenizer file (expected a tokenizer.model or tokenizer.json)")
    md = {k: v for k, v in (gguf_md or {}).items()
          if k.startswith("tokenizer.") and (k.endswith(_KEEP) or k in ("tokenizer.ggml.pre", "tokenizer.chat_template"))
          or k in ("general.architecture", "general.name")}
    data = p.read_bytes()
    if p.suffix == ".json" or data[:1] == b"{":
        md.update(_from_hf_json(data, path, md.get("tokenizer.ggml.pre")))
    else:
        md.update(_from_spm_model(data, path))
    return vocab_from_metadata(md, path)


def _from_spm_model(data: bytes, path: str) -> dict[str, Any]:
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    try:
        m.ParseFromString(data)
    except DecodeError as e:
        raise TokenizerError(f"{path}: not a SentencePiece model ({e})") from None
    if not m.pieces:
        raise TokenizerError(f"{path}: the SentencePiece model has no pieces")
    if m.trainer_spec.model_type != pb.TrainerSpec.BPE:
        name = pb.TrainerSpec.ModelType.Name(m.trainer_spec.model_type)
        raise TokenizerError(f"{path}: SentencePiece model type is {name}; supported: BPE (LLaMA-style vocabularies)")
    # sentencepiece's piece types share the GGUF token_type numbering (NORMAL=1 ... BYTE=6)
    md = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [x.piece for x in m.pieces],
        "tokenizer.ggml.scores": [x.score for x in m.pieces],
        "tokenizer.ggml.token_type": [int(x.type) for x in m.pieces],
        "tokenizer.ggml.add_space_prefix": bool(m.normalizer_spec.add_dummy_prefix),
    }
    for key, val in (("bos", m.trainer_spec.bos_id), ("eos", m.trainer_spec.eos_id),
                     ("unknown", m.trainer_spec.unk_id), ("padding", m.trainer_spec.pad_id)):
        if val >= 0:
            md.setdefault(f"tokenizer.ggml.{key}_token_id", val)
    return md


def _from_hf_json(data: bytes, path: str, pre: str | None) -> dict[str, Any]:
    try:
        tj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from None
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise TokenizerError(f"{path}: tokenizer.json model type is {model.get('type')!r}; supported: byte-level BPE")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for text, t in added.items():
        vocab.setdefault(text, t["id"])
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [int(TokenType.NORMAL)] * n
    for text, i in vocab.items():
        tokens[i] = text
    for text, t in added.items():
        types[t["id"]] = int(TokenType.CONTROL if t.get("special") else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = pre or pre_tokenizer_name(tj)
    if pre is None:
        raise TokenizerError(f"{path}: cannot tell which pre-tokenizer this tokenizer.json uses; "
                             "use it with a GGUF that names one in tokenizer.ggml.pre")
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges}
