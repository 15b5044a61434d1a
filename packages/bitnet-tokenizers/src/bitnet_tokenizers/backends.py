"""The three encoders: SentencePiece (the real `sentencepiece` library), byte-level BPE (the `tokenizers` library)
and BERT WordPiece (plain Python, as llama.cpp's WPM). Each turns one text fragment (no special-token text left
in it) into ids exactly as llama.cpp's tokenizer session does.
"""

from __future__ import annotations

import re
import unicodedata

from bitnet_tokenizers.errors import TokenizerError
from bitnet_tokenizers.pretokenize import PreConfig, pre_config
from bitnet_tokenizers.vocab import BYTE_TO_UNICODE, Attr, Vocab


class SPMEncoder:
    """llama.cpp's SPM tokenizer is score-driven BPE over UTF-8 characters with byte fallback: exactly a
    sentencepiece BPE model whose normalizer is the identity. Every token text takes part in merges in llama.cpp
    (control tokens included), so every piece except the unknown and byte pieces is NORMAL in the rebuilt model;
    special-token text is split off before this encoder sees the text."""

    def __init__(self, vocab: Vocab):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb

        self.vocab = vocab
        m = pb.ModelProto()
        P = pb.ModelProto.SentencePiece
        seen: set[str] = set()
        has_unk = False
        n_bytes = 0
        last = vocab.token_to_id
        for i, (text, score, attr) in enumerate(zip(vocab.tokens, vocab.scores, vocab.attrs)):
            p = m.pieces.add()
            # sentencepiece refuses duplicate pieces; llama.cpp maps a duplicated text to its last id
            p.piece = text if last.get(text) == i and text not in seen else f"\u0000dup{i}\u0000"
            seen.add(p.piece)
            p.score = float(score)
            if attr & Attr.BYTE and re.fullmatch(r"<0x[0-9A-F]{2}>", text):
                p.type = P.BYTE
                n_bytes += 1
            elif attr & Attr.UNKNOWN and not has_unk:
                p.type = P.UNKNOWN
                has_unk = True
                m.trainer_spec.unk_id = i
            else:
                p.type = P.NORMAL
        if not has_unk:  # sentencepiece needs one; it sits past the vocabulary and is never produced
            p = m.pieces.add()
            p.piece, p.type, p.score = "\u0000unk\u0000", P.UNKNOWN, 0.0
            m.trainer_spec.unk_id = len(vocab.tokens)
        m.trainer_spec.model_type = pb.TrainerSpec.BPE
        m.trainer_spec.byte_fallback = n_bytes == 256
        m.trainer_spec.bos_id = m.trainer_spec.eos_id = m.trainer_spec.pad_id = -1
        m.normalizer_spec.name = "identity"
        m.normalizer_spec.add_dummy_prefix = False
        m.normalizer_spec.remove_extra_whitespaces = False
        m.normalizer_spec.escape_whitespaces = False
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(m.SerializeToString())
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with its own text
            raise TokenizerError(f"could not build a SentencePiece model from the vocabulary: {e}") from None
        self.byte_ids = {int(t[3:5], 16): i for i, t in enumerate(vocab.tokens)
                         if vocab.attrs[i] & Attr.BYTE and re.fullmatch(r"<0x[0-9A-F]{2}>", t)}
        self.n = len(vocab.tokens)

    def encode(self, text: str) -> list[int]:
        ids = self.sp.EncodeAsIds(text.replace(" ", "\u2581"))
        if any(i >= self.n for i in ids):  # no byte pieces: llama.cpp looks the raw character up instead
            raise TokenizerError(f"text {text!r} has characters the vocabulary cannot represent (no byte tokens)")
        return ids


def _merge_pairs(merges: list[str]) -> list[tuple[str, str]]:
    """"a b" -> ("a", "b"), split at the first space after the first character, as llama.cpp does."""
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    if any(len(p) != 2 or not p[0] for p in pairs):
        pairs = []
        for m in merges:
            k = m.find(" ", 1)
            if k > 0:
                pairs.append((m[:k], m[k + 1:]))
    return pairs  # type: ignore[return-value]


_LATIN1_TO_BYTE_LEVEL = {b: c for b, c in enumerate(BYTE_TO_UNICODE[b] for b in range(256))}


class BPEEncoder:
    """Byte-level (or, for Gemma 4, raw UTF-8) BPE: llama.cpp's pre-tokenizer regexes (with the `regex` module:
    each regex splits every piece into its matches and the text between them), then each pre-token through the
    `tokenizers` library's BPE model built from the vocabulary and its merges (ranked in file order). Pre-token
    ids are memoized: running text repeats its words, and the per-word call is what costs."""

    CACHE_MAX = 500_000

    def __init__(self, vocab: Vocab, source: str = "model"):
        import regex
        from tokenizers import models

        self.vocab = vocab
        cfg: PreConfig = pre_config(vocab.model, vocab.pre, source)
        self.cfg = cfg
        merges = _merge_pairs(vocab.merges)
        kw = dict(byte_fallback=not cfg.byte_encode, ignore_merges=cfg.ignore_merges)
        try:
            self.model = models.BPE(vocab=vocab.token_to_id, merges=merges, **kw)
        except Exception:
            # a merge whose parts or result are not tokens: llama.cpp keeps it (its result then falls back to
            # bytes); the tokenizers library refuses it, so drop such merges and build again
            tv = vocab.token_to_id
            merges = [(a, b) for a, b in merges if a in tv and b in tv and a + b in tv]
            try:
                self.model = models.BPE(vocab=tv, merges=merges, **kw)
            except Exception as e:
                raise TokenizerError(f"{source}: could not build the BPE tokenizer from the vocabulary: {e}") from None
        # ECMAScript's `$` (llama.cpp uses std::regex) is the end of the piece; Python's also matches before a final \n
        self.regexes = [regex.compile(r.replace("$", r"\Z")) for r in cfg.regexes]
        self.cache: dict[str, list[int]] = {}

    def split(self, text: str) -> list[str]:
        """Pre-tokens: each regex in turn keeps its matches and the text between them."""
        pieces = [text]
        for rx in self.regexes:
            out: list[str] = []
            for p in pieces:
                found = rx.findall(p) if rx.groups == 0 else None
                if found is not None and sum(map(len, found)) == len(p):
                    out += found  # the regex covers the piece (the common case): no gaps to keep
                    continue
                pos = 0
                for m in rx.finditer(p):
                    a, b = m.span()
                    if a == b:
                        continue
                    if a > pos:
                        out.append(p[pos:a])
                    out.append(p[a:b])
                    pos = b
                if pos < len(p):
                    out.append(p[pos:])
            pieces = out
        return pieces

    def _word(self, w: str) -> list[int]:
        if self.cfg.byte_encode:
            w = w.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTE_LEVEL)
        elif self.cfg.split_newlines and w[0] == "\n":
            # Gemma 4: a run of newlines that is itself a token is taken whole (llama.cpp PR 21343)
            i = self.vocab.token_to_id.get(w)
            if i is not None:
                return [i]
        return [t.id for t in self.model.tokenize(w)]

    def encode(self, text: str) -> list[int]:
        if self.cfg.escape_whitespaces:
            text = text.replace(" ", "\u2581")
        cache = self.cache
        out: list[int] = []
        for w in self.split(text):
            ids = cache.get(w)
            if ids is None:
                ids = self._word(w)
                if len(cache) < self.CACHE_MAX:
                    cache[w] = ids
            out += ids
        return out


def _is_chinese(c: int) -> bool:
    return (0x4E00 <= c <= 0x9FFF or 0x3400 <= c <= 0x4DBF or 0x20000 <= c <= 0x2A6DF or 0x2A700 <= c <= 0x2B73F
            or 0x2B740 <= c <= 0x2B81F or 0x2B920 <= c <= 0x2CEAF or 0xF900 <= c <= 0xFAFF
            or 0x2F800 <= c <= 0x2FA1F)


class WPMEncoder:
    """BERT WordPiece the way llama.cpp does it: split on whitespace and punctuation, then greedy longest match
    of '▁' + word against the vocabulary (word-initial pieces carry the '▁')."""

    _WS = frozenset([0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028,
                     0x2029, 0x202F, 0x205F, 0x3000])

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.max_len = max(len(t.encode("utf-8")) for t in vocab.tokens)
        self.unk = vocab.ids.get("unk")

    def _words(self, text: str) -> list[str]:
        if self.vocab.strip_accents:
            text = unicodedata.normalize("NFD", text)
        words = [""]
        for ch in text:
            c = ord(ch)
            cat = unicodedata.category(ch)
            if c in self._WS:
                if words[-1]:
                    words.append("")
                continue
            if c == 0 or c == 0xFFFD or cat in ("Cc", "Cf", "Co", "Cs"):
                continue
            if self.vocab.strip_accents and cat[0] == "M":
                continue
            s = ch.lower() if self.vocab.lowercase else ch
            if cat[0] == "P" or (c < 0x7F and cat[0] == "S") or _is_chinese(c):
                if words[-1]:
                    words.append("")
                words[-1] = s
                words.append("")
            else:
                words[-1] += s
        if not words[-1]:
            words.pop()
        return words

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        t2i = self.vocab.token_to_id
        for word in self._words(text):
            w = "\u2581" + word
            start = len(out)
            i = 0
            while i < len(w):
                for j in range(min(len(w), i + self.max_len + 1), i, -1):
                    tid = t2i.get(w[i:j])
                    if tid is not None:
                        out.append(tid)
                        i = j
                        break
                else:
                    del out[start:]
                    break
            if len(out) == start and self.unk is not None:
                out.append(self.unk)
        return out
