"""A GGUF file's vocabulary, read the way llama.cpp reads it (src/llama-vocab.cpp, `llama_vocab::impl::load`).

Everything the encoders and the decoder need is resolved here once: token texts, scores and attributes, the
special ids (BOS/EOS/EOT/EOM/UNK/...), the add-BOS/EOS and space-prefix flags, the end-of-generation set, the list
of special tokens that split the input text, and the byte string each token id decodes to.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bitnet_tokenizers.errors import TokenizerError


class TokenType(enum.IntEnum):
    """tokenizer.ggml.token_type values."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class Attr(enum.IntFlag):
    """llama.cpp's per-token attributes (llama_token_attr)."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8
    SINGLE_WORD = 1 << 9


A_UNKNOWN, A_UNUSED, A_NORMAL, A_CONTROL = int(Attr.UNKNOWN), int(Attr.UNUSED), int(Attr.NORMAL), int(Attr.CONTROL)
A_USER_DEFINED, A_BYTE, A_LSTRIP, A_RSTRIP = int(Attr.USER_DEFINED), int(Attr.BYTE), int(Attr.LSTRIP), int(Attr.RSTRIP)

_TYPE_TO_ATTR = {
    TokenType.UNKNOWN: Attr.UNKNOWN,
    TokenType.UNUSED: Attr.UNUSED,
    TokenType.NORMAL: Attr.NORMAL,
    TokenType.CONTROL: Attr.CONTROL,
    TokenType.USER_DEFINED: Attr.USER_DEFINED,
    TokenType.BYTE: Attr.BYTE,
}

# tokenizer.ggml.model -> the algorithm. Kept in step with what the encoders below implement.
KINDS = {"llama": "spm", "gpt2": "bpe", "gemma4": "bpe", "bert": "wpm"}

# The default special ids llama.cpp assumes before reading the file's keys.
_DEFAULT_IDS = {
    "spm": dict(bos=1, eos=2, unk=0, sep=None, pad=None, mask=None),
    "wpm": dict(bos=101, eos=None, unk=100, sep=102, pad=0, mask=103),
    "bpe": dict(bos=11, eos=11, unk=None, sep=None, pad=None, mask=None),
    "gemma4": dict(bos=None, eos=None, unk=None, sep=None, pad=None, mask=None),
}

_ID_KEYS = {
    "bos": "bos_token_id",
    "eos": "eos_token_id",
    "eot": "eot_token_id",
    "eom": "eom_token_id",
    "unk": "unknown_token_id",
    "sep": "seperator_token_id",  # sic: the GGUF key is spelled this way
    "pad": "padding_token_id",
    "mask": "mask_token_id",
    "fim_pre": "fim_pre_token_id",
    "fim_suf": "fim_suf_token_id",
    "fim_mid": "fim_mid_token_id",
    "fim_pad": "fim_pad_token_id",
    "fim_rep": "fim_rep_token_id",
    "fim_sep": "fim_sep_token_id",
}
_DEPRECATED_ID_KEYS = {"fim_pre": "prefix_token_id", "fim_suf": "suffix_token_id", "fim_mid": "middle_token_id"}

# Texts llama.cpp recognises when the file names no such token (it marks them CONTROL).
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
              "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<｜end▁of▁sentence｜>", "[e~[")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_TO_UNICODE = _bytes_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}


def _byte_level_decode(text: str) -> bytes:
    out = bytearray()
    for ch in text:
        b = UNICODE_TO_BYTE.get(ch)
        if b is None:  # llama.cpp writes a marker rather than failing
            out += b"[UNK_BYTE_0x" + ch.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
        else:
            out.append(b)
    return bytes(out)


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model
    pre: str | None  # tokenizer.ggml.pre
    kind: str  # spm / bpe / wpm
    tokens: list[str]
    scores: Any  # sequence of float
    attrs: list[int]
    merges: list[str] = field(default_factory=list)
    ids: dict[str, int | None] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    add_sep: bool = False
    add_space_prefix: bool = False
    escape_whitespaces: bool = False
    clean_spaces: bool = False
    eog_ids: frozenset[int] = frozenset()
    special_cache: list[int] = field(default_factory=list)  # split before encoding, longest text first
    _pieces: list[bytes | None] = field(default_factory=list)  # token_to_piece(id, special=True), filled lazily
    token_to_id: dict[str, int] = field(default_factory=dict)
    chat_template: str | None = None
    arch: str | None = None  # general.architecture of the file the vocabulary came from
    lowercase: bool = False
    strip_accents: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def piece(self, i: int) -> bytes:
        """llama.cpp's token_to_piece(i, special=True): the bytes this token stands for."""
        p = self._pieces[i]
        if p is None:
            p = self._pieces[i] = _piece(self, self.tokens[i], self.attrs[i])
        return p


def _meta(md: dict[str, Any], key: str, default: Any = None) -> Any:
    return md.get(key, default)


def vocab_from_metadata(md: dict[str, Any], source: str) -> Vocab:
    """Build a Vocab from GGUF metadata (the dict `read_gguf(path).metadata`)."""
    model = _meta(md, "tokenizer.ggml.model")
    supported = ", ".join(f"'{m}'" for m in KINDS)
    if model is None:
        raise TokenizerError(
            f"{source}: the file has no tokenizer (no tokenizer.ggml.model key); supported tokenizer models are "
            f"{supported}. Pass a tokenizer.model or tokenizer.json with --tokenizer / BITNET_TOKENIZER")
    if model not in KINDS:
        raise TokenizerError(
            f"{source}: tokenizer.ggml.model is '{model}', which is not supported; supported tokenizer models are "
            f"{supported}. Pass a tokenizer.model or tokenizer.json with --tokenizer / BITNET_TOKENIZER")
    kind = KINDS[model]
    pre = _meta(md, "tokenizer.ggml.pre")
    tokens = _meta(md, "tokenizer.ggml.tokens")
    if not tokens:
        raise TokenizerError(f"{source}: tokenizer.ggml.model is '{model}' but tokenizer.ggml.tokens is missing or empty")
    tokens = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
    if not all(tokens):  # llama.cpp renames empty token texts
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    n = len(tokens)

    scores = _meta(md, "tokenizer.ggml.scores")
    scores = [0.0] * n if scores is None else scores[:n]  # a numpy array from the reader: converted when used
    if len(scores) < n:
        raise TokenizerError(f"{source}: tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
    types = _meta(md, "tokenizer.ggml.token_type")
    if types is None:
        attrs = [A_NORMAL] * n
    else:
        types = np.asarray(types, dtype=np.int64)[:n]
        if len(types) < n:
            raise TokenizerError(f"{source}: tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
        lut = np.zeros(256, dtype=np.int64)
        for k, a in _TYPE_TO_ATTR.items():
            lut[int(k)] = int(a)
        attrs = lut[np.clip(types, 0, 255)].tolist()  # an unknown type is UNDEFINED (0)

    v = Vocab(model=model, pre=pre, kind=kind, tokens=tokens, scores=scores, attrs=attrs)
    v.token_to_id = dict(zip(tokens, range(n)))  # a duplicated text maps to its last id, as in llama.cpp

    if kind == "bpe":
        merges = _meta(md, "tokenizer.ggml.merges")
        if merges is None:
            raise TokenizerError(f"{source}: a '{model}' (byte-pair) vocabulary needs tokenizer.ggml.merges, which is missing")
        v.merges = list(merges)

    _set_flags(v, md, source)
    _set_special_ids(v, md)
    _set_eog(v)
    mask = A_CONTROL | A_USER_DEFINED | A_UNKNOWN
    v.special_cache = sorted((i for i, a in enumerate(v.attrs) if a & mask),
                             key=lambda i: -len(v.tokens[i].encode("utf-8")))
    v._pieces = [None] * n
    _set_strip_attrs(v, md)
    tmpl = _meta(md, "tokenizer.chat_template")
    v.chat_template = tmpl if isinstance(tmpl, str) and tmpl else None
    v.arch = _meta(md, "general.architecture")
    return v


def _set_flags(v: Vocab, md: dict[str, Any], source: str) -> None:
    from bitnet_tokenizers.pretokenize import pre_config

    if v.kind == "spm":
        v.add_space_prefix, v.add_bos, v.add_eos = True, True, False
    elif v.kind == "wpm":
        v.add_bos, v.add_eos, v.add_sep, v.clean_spaces = True, False, True, True
    else:
        v.clean_spaces = True
        cfg = pre_config(v.model, v.pre, source)
        v.clean_spaces = cfg.clean_spaces
        v.escape_whitespaces = cfg.escape_whitespaces
        v.add_bos = cfg.add_bos
        v.add_sep = cfg.add_sep
    v.add_space_prefix = bool(_meta(md, "tokenizer.ggml.add_space_prefix", v.add_space_prefix))
    v.lowercase = bool(_meta(md, "tokenizer.ggml.normalizer.lowercase", v.pre != "whitespace"))  # BERT normalizer options
    v.strip_accents = bool(_meta(md, "tokenizer.ggml.normalizer.strip_accents", v.lowercase))


def _set_special_ids(v: Vocab, md: dict[str, Any]) -> None:
    n = v.n_tokens
    defaults = _DEFAULT_IDS["gemma4" if v.model == "gemma4" else v.kind]
    ids: dict[str, int | None] = {k: None for k in _ID_KEYS}
    for k, d in defaults.items():
        ids[k] = d if d is not None and d < n else None
    for k, key in _ID_KEYS.items():
        val = _meta(md, f"tokenizer.ggml.{key}")
        if val is None and k in _DEPRECATED_ID_KEYS:
            val = _meta(md, f"tokenizer.ggml.{_DEPRECATED_ID_KEYS[k]}")
        if val is not None and 0 <= int(val) < n:
            ids[k] = int(val)
    if v.kind == "bpe" and v.pre in ("chatglm-bpe", "glm4", "glm5"):
        ids["bos"] = None
    for flag in ("add_bos", "add_eos", "add_sep"):
        val = _meta(md, f"tokenizer.ggml.{flag}_token")
        if val is not None:
            setattr(v, flag, bool(val))
    if v.model == "gemma4":
        v.add_bos = True  # llama.cpp overrides the file for Gemma 4

    # Tokens the file does not name but llama.cpp finds by their text (and marks CONTROL).
    def find(texts: tuple[str, ...]) -> int | None:
        for t in texts:
            i = v.token_to_id.get(t)
            if i is not None:
                v.attrs[i] |= A_CONTROL
                return i
        return None

    if ids["eot"] is None:
        ids["eot"] = find(_EOT_TEXTS)
    if ids["eom"] is None:
        ids["eom"] = find(_EOM_TEXTS)
    for k, texts in _FIM_TEXTS.items():
        if ids[k] is None:
            ids[k] = find(texts)
    v.ids = ids


def _set_eog(v: Vocab) -> None:
    for i, a in enumerate(v.attrs):
        if a & A_CONTROL and "unused" in v.tokens[i]:
            v.attrs[i] |= A_UNUSED
    eog = {v.ids[k] for k in ("fim_pad", "fim_rep", "fim_sep") if v.ids[k] is not None}
    for t in _EOG_TEXTS:
        i = v.token_to_id.get(t)
        if i is not None:
            eog.add(i)
            v.attrs[i] |= A_CONTROL
    for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss: always rendered
        i = v.token_to_id.get(t)
        if i is not None:
            v.attrs[i] = A_USER_DEFINED
    eog.update(v.ids[k] for k in ("eos", "eot", "eom") if v.ids[k] is not None)
    texts = {v.tokens[i]: i for i in eog}
    if ("<|return|>" in texts and "<|call|>" in texts or "<|calls|>" in texts and "<|flush|>" in texts) \
            and "<|end|>" in texts:
        eog.discard(texts["<|end|>"])
        v.attrs[texts["<|end|>"]] = A_USER_DEFINED
    if ("<|tool_response>" in texts or "<|plamo:eos|>" in texts) and "</s>" in texts:
        eog.discard(texts["</s>"])
        v.attrs[texts["</s>"]] = A_NORMAL
    v.eog_ids = frozenset(eog)


_BYTE_LEVEL_TABLE = {ord(c): b for b, c in BYTE_TO_UNICODE.items()}


def _piece(v: Vocab, text: str, a: int) -> bytes:
    if a & (A_UNKNOWN | A_CONTROL | A_USER_DEFINED):
        return text.encode("utf-8")
    if a & A_NORMAL:
        if v.kind != "bpe" or v.escape_whitespaces:
            return text.replace("\u2581", " ").encode("utf-8")
        try:
            return text.translate(_BYTE_LEVEL_TABLE).encode("latin-1")
        except UnicodeEncodeError:
            return _byte_level_decode(text)
    if a & A_BYTE:
        if v.kind == "wpm":
            return text.encode("utf-8")[:1]
        try:
            return bytes([int(text[3:5], 16)])
        except ValueError:
            return b"\x00"
    return b""


def _set_strip_attrs(v: Vocab, md: dict[str, Any]) -> None:
    """Per-model lstrip/rstrip attributes llama.cpp sets by model name (they change how special text splits)."""
    name = str(_meta(md, "general.name", "")).lower()
    arch = str(_meta(md, "general.architecture", ""))
    pre = v.pre or ""
    if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
            any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
        if "<mask>" in v.token_to_id:
            v.attrs[v.token_to_id["<mask>"]] |= A_LSTRIP
    elif "phi-3" in name or "phi3" in name:
        for i in v.special_cache:
            v.attrs[i] |= A_RSTRIP
        for t, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
            i = v.token_to_id.get(t)
            if i is None:
                continue
            v.attrs[i] = v.attrs[i] | A_RSTRIP if on else v.attrs[i] & ~A_RSTRIP
    elif "modern-bert" in name and "[MASK]" in v.token_to_id:
        v.attrs[v.token_to_id["[MASK]"]] |= A_LSTRIP
