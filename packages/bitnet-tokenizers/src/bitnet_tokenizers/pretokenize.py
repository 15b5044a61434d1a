"""Byte-level BPE pre-tokenizers by tokenizer.ggml.pre, as llama.cpp defines them (src/llama-vocab.cpp).

Each pre-tokenizer is a list of regexes applied in turn: every regex splits each piece left by the one before into
its matches and the text between them (both kept), which is the tokenizers library's Split(..., "isolated").
The regexes are llama.cpp's (they are the models' own tokenizer.json regexes, with case-insensitive groups spelled
out); the flags beside them (ignore_merges, clean_spaces, add_bos) are the ones llama.cpp sets for each name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bitnet_tokenizers.errors import TokenizerError

log = logging.getLogger(__name__)

_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
CHATGLM4 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS + "?"
         r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS + "?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# deepseek-llm's letter class (Latin, Greek, Cyrillic, Armenian, Georgian, Cherokee, ... letters), code points spelled out
_DEEPSEEK_LATIN = (
    "A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377"
    "\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    "\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    "\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943")
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"


@dataclass(frozen=True)
class PreConfig:
    name: str
    regexes: tuple[str, ...]
    byte_encode: bool = True  # GPT-2 byte-to-unicode encoding (False: raw UTF-8, spaces escaped as U+2581)
    ignore_merges: bool = False  # a pre-token that is itself in the vocabulary is emitted whole
    clean_spaces: bool = True  # detokenization removes the space before ?!., and some contractions
    escape_whitespaces: bool = False
    add_bos: bool = False
    add_sep: bool = False
    split_newlines: bool = False  # Gemma 4: runs of newlines are looked up whole


_TYPES: dict[str, PreConfig] = {}


def _add(names: tuple[str, ...], regexes: tuple[str, ...], **kw) -> None:
    for n in names:
        _TYPES[n] = PreConfig(name=n, regexes=regexes, **kw)


_add(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
     (LLAMA3,), ignore_merges=True, add_bos=True)
_add(("dbrx", "smaug-bpe"), (LLAMA3,))
_add(("deepseek-llm",), ("[\r\n]", rf"\s?[{_DEEPSEEK_LATIN}]+", "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
                         r"\s+$", _CJK, r"\p{N}+"), clean_spaces=False)
_add(("deepseek-coder",), ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"), clean_spaces=False)
_add(("falcon",), (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"))
_add(("starcoder", "refact", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"), (r"\p{N}", GPT2))
_add(("command-r",), (r"\p{N}", GPT2), clean_spaces=False)
for _n in ("refact", "smollm"):
    _TYPES[_n] = PreConfig(name=_n, regexes=(r"\p{N}", GPT2), clean_spaces=_n == "refact")
_add(("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
      "modern-bert", "mpt", "olmo", "jais", "exaone4"), (GPT2,))
_add(("jina-v1-en", "jina-v2-code", "roberta-bpe"), (GPT2,), add_sep=True)
_add(("trillion", "granite-docling"), (GPT2,), clean_spaces=False)
_add(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open"), (QWEN2,), clean_spaces=False)
_add(("stablelm2", "megrez"), (QWEN2,))
_add(("qwen35",), (QWEN35,), clean_spaces=False)
_add(("poro-chat", "viking"), (BLOOM,), clean_spaces=False)
_TYPES["viking"] = PreConfig(name="viking", regexes=(BLOOM, r"\p{N}"), clean_spaces=False)
_add(("bloom", "gpt3-finnish"), (BLOOM,))
_add(("chatglm-bpe",), (CHATGLM4,))
_add(("glm4", "glm5"), (CHATGLM4,), ignore_merges=True)
_add(("gpt-4o", "llama4", "kanana2", "talkie"), (GPT4O,), clean_spaces=False)
_add(("default",), (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"))
_add(("gemma4", "granite-embed-multi-311m"), ("[^\n]+|[\n]+",), byte_encode=False, escape_whitespaces=True,
     split_newlines=True)
_add(("sarvam-moe",), ("[^\n]+|[\n]+",), byte_encode=False, escape_whitespaces=True, clean_spaces=False)

SUPPORTED_PRE = tuple(sorted(_TYPES))


def pre_config(model: str, pre: str | None, source: str) -> PreConfig:
    if model == "gemma4":
        return _TYPES["gemma4"]
    if pre is None:  # llama.cpp warns and falls back to its default regexes
        log.warning("%s: no tokenizer.ggml.pre; using the 'default' pre-tokenizer as llama.cpp does "
                    "(token ids may not be the model's)", source)
        return _TYPES["default"]
    cfg = _TYPES.get(pre)
    if cfg is None:
        raise TokenizerError(
            f"{source}: tokenizer.ggml.model is '{model}' with tokenizer.ggml.pre '{pre}', a pre-tokenizer this "
            f"project does not support; supported pre-tokenizers: {', '.join(SUPPORTED_PRE)}")
    return cfg
