"""Streaming detokenization: text as tokens arrive, never half a UTF-8 character.

The text of a stream is the concatenation of the tokens' pieces (what llama.cpp prints while generating);
control tokens (BOS, EOS, <|eot_id|>, ...) print nothing unless `special` is set.
"""

from __future__ import annotations

from typing import Any


def _incomplete_tail(b: bytes | bytearray) -> int:
    """How many trailing bytes are the start of a UTF-8 character whose remaining bytes have not arrived."""
    n = len(b)
    for k in range(1, min(4, n) + 1):
        c = b[n - k]
        if c & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        need = 2 if c & 0xE0 == 0xC0 else 3 if c & 0xF0 == 0xE0 else 4 if c & 0xF8 == 0xF0 else 1
        return k if need > k else 0
    return 0


class IncrementalDetokenizer:
    """`add(token_id)` returns the text completed by that token; `flush()` returns what is left."""

    def __init__(self, tokenizer: Any, special: bool = False):
        self.tokenizer = tokenizer
        self.special = special
        self._pending = bytearray()
        vocab = getattr(tokenizer, "vocab", None)
        self._attrs = getattr(vocab, "attrs", None)

    def _piece(self, token_id: int) -> bytes:
        if not self.special:
            if self._attrs is not None:
                if self._attrs[token_id] & 0b1001:  # CONTROL | UNKNOWN, as llama.cpp's token_to_piece(special=False)
                    return b""
            elif token_id in (getattr(self.tokenizer, "bos_id", None), getattr(self.tokenizer, "eos_id", None)):
                return b""
        return self.tokenizer.token_to_piece(token_id)

    def add(self, token_id: int) -> str:
        self._pending += self._piece(token_id)
        keep = _incomplete_tail(self._pending)
        cut = len(self._pending) - keep
        if cut <= 0:
            return ""
        text = bytes(self._pending[:cut]).decode("utf-8", errors="replace")
        del self._pending[:cut]
        return text

    def flush(self) -> str:
        text = bytes(self._pending).decode("utf-8", errors="replace")
        self._pending.clear()
        return text
