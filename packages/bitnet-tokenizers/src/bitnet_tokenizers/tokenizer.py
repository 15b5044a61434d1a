"""The Tokenizer the engine uses: llama.cpp's token ids for a GGUF file's vocabulary.

encode() follows llama.cpp's `llama_vocab::impl::tokenize`: special-token text is split off first (user-defined
tokens always, control and unknown tokens only with parse_special), longest token text first; then each text
fragment goes to the vocabulary's encoder (SPM fragments get a leading space when they start the text or follow a
special token); BOS/EOS are added by the file's flags. decode() follows `llama_detokenize`.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from bitnet_tokenizers.errors import TokenizerError
from bitnet_tokenizers.vocab import Attr, Vocab, vocab_from_metadata

if TYPE_CHECKING:
    from bitnet_models import GGUFFile

log = logging.getLogger(__name__)

_SPECIAL = Attr.CONTROL | Attr.UNKNOWN
_ASCII_SPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale


class Tokenizer:
    """Encode text to token ids and back, as llama.cpp does for the same vocabulary."""

    def __init__(self, vocab: Vocab, source: str = "model"):
        from bitnet_tokenizers.backends import BPEEncoder, SPMEncoder, WPMEncoder

        self.vocab = vocab
        self.kind = vocab.kind
        self.source = source
        if vocab.kind == "spm":
            self._enc = SPMEncoder(vocab)
        elif vocab.kind == "bpe":
            self._enc = BPEEncoder(vocab, source)
        else:
            self._enc = WPMEncoder(vocab)
        self._always_split = [i for i in vocab.special_cache if not vocab.attrs[i] & _SPECIAL]
        self.chat_template = vocab.chat_template

    # ---- special ids
    @property
    def bos_id(self) -> int | None:
        return self.vocab.ids.get("bos")

    @property
    def eos_id(self) -> int | None:
        return self.vocab.ids.get("eos")

    @property
    def eot_id(self) -> int | None:
        return self.vocab.ids.get("eot")

    @property
    def vocab_size(self) -> int:
        return self.vocab.n_tokens

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.vocab.eog_ids

    def token_to_piece(self, token_id: int) -> bytes:
        """The bytes llama.cpp prints for this token (special tokens rendered as their text)."""
        return self.vocab.piece(token_id)

    def clear_cache(self) -> None:
        """Forget memoized pre-token ids (for benchmarks that must start cold)."""
        cache = getattr(self._enc, "cache", None)
        if cache is not None:
            cache.clear()

    # ---- encoding
    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split special-token text off, one token text at a time, longest first (tokenizer_st_partition)."""
        frags: list[str | int] = [text]
        v = self.vocab
        for sid in v.special_cache if parse_special else self._always_split:
            st = v.tokens[sid]
            if not any(isinstance(f, str) and st in f for f in frags):
                continue
            attr = v.attrs[sid]
            out: list[str | int] = []
            for f in frags:
                if not isinstance(f, str) or st not in f:
                    out.append(f)
                    continue
                parts = f.split(st)
                for k, part in enumerate(parts):
                    if k > 0 and attr & Attr.RSTRIP:
                        part = part.lstrip(_ASCII_SPACE)
                    if k < len(parts) - 1 and attr & Attr.LSTRIP:
                        part = part.rstrip(_ASCII_SPACE)
                    if part:
                        out.append(part)
                    if k < len(parts) - 1:
                        out.append(sid)
            frags = out
        return frags

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        """Token ids for `text`. add_bos None: the file's tokenizer.ggml.add_bos_token (or llama.cpp's default
        for the vocabulary); EOS/SEP are added when the file asks for them and BOS is added."""
        v = self.vocab
        special = add_bos is None or add_bos  # llama.cpp's add_special
        bos = v.ids.get("bos")
        want_bos = special if v.kind == "wpm" else (v.add_bos if add_bos is None else add_bos)
        out: list[int] = [bos] if want_bos and bos is not None else []
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TokenizerError(f"the text is not valid Unicode ({e.reason} at character {e.start}); "
                                 "decode input files as UTF-8") from None
        frags = self._partition(text, parse_special) if text else []
        prev_special = True
        for f in frags:
            if isinstance(f, int):
                out.append(f)
                prev_special = True
                continue
            if v.kind == "spm" and v.add_space_prefix and prev_special:
                f = " " + f
            out.extend(self._enc.encode(f))
            prev_special = False
        if want_bos and len(out) >= 2 and out[1] == bos:
            log.warning("the prompt starts with BOS text and BOS was added too: it now starts with 2 BOS tokens")
        if special:
            if v.kind == "wpm":
                if v.ids.get("sep") is not None:
                    out.append(v.ids["sep"])
            elif v.add_eos and v.ids.get("eos") is not None:
                out.append(v.ids["eos"])
        return out

    # ---- decoding
    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        """Text for `ids`, as llama_detokenize (skip_special: drop BOS/EOS at the ends and control tokens)."""
        v = self.vocab
        ids = list(ids)
        remove_space = v.add_space_prefix
        if skip_special and v.add_bos and ids and ids[0] == v.ids.get("bos"):
            remove_space = False
            ids = ids[1:]
        if skip_special and v.add_eos and ids and ids[-1] == v.ids.get("eos"):
            ids = ids[:-1]
        buf = bytearray()
        n = v.n_tokens
        for i in ids:
            if not 0 <= i < n:
                raise TokenizerError(f"token id {i} is outside the vocabulary (0..{n - 1})")
            if skip_special and v.attrs[i] & _SPECIAL:
                p = b""
            else:
                p = v.piece(i)
            if remove_space and p.startswith(b" "):
                p = p[1:]
            remove_space = False
            buf += p
        if v.clean_spaces:
            buf = _clean_spaces(bytes(buf))
        return bytes(buf).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        from bitnet_tokenizers.chat import render_chat

        return render_chat(self, messages, add_generation_prompt)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, model={self.vocab.model!r}, pre={self.vocab.pre!r}, n_vocab={self.vocab_size})"


def _clean_spaces(b: bytes) -> bytearray:
    """llama_detokenize's clean_spaces passes, byte for byte."""
    t = bytearray(b)
    if not t:
        return t
    # pass 1: " ?", " !", " .", " ," lose the space
    out = bytearray(t[:1])
    for i in range(1, len(t)):
        x = t[i]
        if t[i - 1] == 0x20 and x in b"?!.,":
            out.pop()
        out.append(x)
    t = out
    # pass 2: a lone apostrophe between spaces loses both spaces
    out = bytearray(t[:1])
    i = 1
    n = len(t)
    t = bytearray(t)
    while i < n:
        x = t[i]
        if x == 0x27 and i + 1 < n and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            out.pop()
            t[i + 1] = 0
            out.append(x)
            i += 2
            continue
        out.append(x)
        i += 1
    t = out
    # pass 3: " 's", " 'm", " 're", " 've" lose the space
    out = bytearray(t[:1])
    n = len(t)
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = t[i + 1]
            if x1 in b"sm":
                out.pop()
            elif x1 not in b"td" and i + 2 < n:
                x2 = t[i + 2]
                if (x1, x2) in ((ord("r"), ord("e")), (ord("v"), ord("e"))):
                    out.pop()
        out.append(x)
    return out


def load_tokenizer(gguf: GGUFFile, tokenizer_path: str | None = None) -> Tokenizer:
    """The tokenizer for an open GGUF file, or for `tokenizer_path` (a tokenizer.model or tokenizer.json)
    when given, which then overrides the file's vocabulary."""
    source = str(getattr(gguf, "path", "model"))
    if tokenizer_path:
        from bitnet_tokenizers.external import vocab_from_file

        vocab = vocab_from_file(tokenizer_path, gguf.metadata if gguf is not None else {})
        return Tokenizer(vocab, tokenizer_path)
    return Tokenizer(vocab_from_metadata(gguf.metadata, source), source)


class MockTokenizer:
    """A stand-in for the mock-model path only: bytes + 3 (0..2 are <unk>, <s>, </s>). Not llama.cpp's ids."""

    kind = "mock"
    chat_template = None
    bos_id, eos_id, eot_id = 1, 2, None

    def __init__(self, vocab_size: int = 259):
        if vocab_size < 259:
            raise TokenizerError(f"MockTokenizer needs vocab_size >= 259 (3 specials + 256 bytes), got {vocab_size}")
        self.vocab_size = vocab_size
        print("warning: using the mock tokenizer (bytes + 3): token ids are not a real model's", file=sys.stderr)

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        ids = [b + 3 for b in text.encode("utf-8")]
        return ([self.bos_id] if add_bos is None or add_bos else []) + ids

    def token_to_piece(self, token_id: int) -> bytes:
        if 3 <= token_id < 259:
            return bytes([token_id - 3])
        return {0: b"<unk>", 1: b"<s>", 2: b"</s>"}.get(token_id, f"<mock{token_id}>".encode())

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        parts = [self.token_to_piece(i) for i in ids if not (skip_special and not 3 <= i < 259)]
        return b"".join(parts).decode("utf-8", errors="replace")

    def is_eog(self, token_id: int) -> bool:
        return token_id == self.eos_id

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + ("assistant: " if add_generation_prompt else "")
