"""A synthetic but valid LLaMA-3-shaped byte-level BPE vocabulary (GGUF `tokenizer.ggml.model` = gpt2).

Shape of the real thing (BitNet b1.58 2B-4T, LLaMA-3 tokenizer): 128000 regular tokens, 256 special tokens
(ids 128000..128255, `<|begin_of_text|>` = BOS, `<|end_of_text|>` = EOS, typed control), 280147 merges.

How it is built (deterministic for a seed):
- ids 0..255: the 256 byte symbols of the byte-level alphabet (GPT-2's byte -> printable character map),
- every further regular token is the concatenation of two earlier tokens, and its merge `"left right"` is
  emitted when the token is created: each merge joins two existing tokens into a token of the vocabulary whose
  id is larger than both, so BPE with these ranks only ever produces vocabulary tokens,
- a token can often be split in more than one way (`"ab"+"c"` and `"a"+"bc"`): those alternative splits are
  emitted as further merges right after the first one, as in tokenizers converted from tiktoken; that is how
  there can be 280147 merges for 127744 merged tokens.
No token contains a space (byte 0x20 is the symbol `Ġ`), so every merge string splits unambiguously.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

LLAMA3_REGULAR = 128000
LLAMA3_SPECIAL = 256
LLAMA3_MERGES = 280147

TOKEN_NORMAL = 1
TOKEN_CONTROL = 3

# LLaMA-3's named special tokens by offset from the first special id; the rest are reserved_special_token_N.
_NAMED_SPECIAL = {
    0: "<|begin_of_text|>",
    1: "<|end_of_text|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    9: "<|eot_id|>",
}


def byte_symbols() -> list[str]:
    """The byte-level alphabet: byte b -> one printable character (printable Latin-1 bytes map to themselves)."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int
    eos_id: int

    def metadata(self) -> dict:
        import numpy as np

        return {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "llama-bpe",
            "tokenizer.ggml.tokens": self.tokens,
            "tokenizer.ggml.token_type": np.asarray(self.token_types, dtype=np.int32),
            "tokenizer.ggml.merges": self.merges,
            "tokenizer.ggml.bos_token_id": self.bos_id,
            "tokenizer.ggml.eos_token_id": self.eos_id,
            "tokenizer.ggml.add_bos_token": True,
        }


def special_tokens(n: int) -> list[str]:
    out, reserved = [], 0
    for i in range(n):
        if i in _NAMED_SPECIAL:
            out.append(_NAMED_SPECIAL[i])
        else:
            out.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return out


def make_vocab(
    n_regular: int = LLAMA3_REGULAR,
    n_special: int = LLAMA3_SPECIAL,
    n_merges: int = LLAMA3_MERGES,
    seed: int = 0,
    max_len: int = 12,
) -> Vocab:
    """Build the vocabulary; n_merges must lie between n_regular - 256 and what alternative splits allow."""
    if n_regular < 256 + 1 or n_special < 2:
        raise ValueError("need at least 257 regular tokens (256 bytes + 1 merge) and 2 special tokens")
    n_new = n_regular - 256
    if n_merges < n_new:
        raise ValueError(f"{n_new} merged tokens need at least {n_new} merges, got {n_merges}")
    rng = random.Random(seed)
    sym = byte_symbols()
    tokens = list(sym)
    index = {t: i for i, t in enumerate(tokens)}
    # Most tokens join two random earlier tokens (mostly lower-case letters and the space symbol). Some come
    # from a "dense" family, every string over 8 frequent symbols in order of length: all of a dense token's
    # substrings are tokens already, so each has several valid splits, which supplies the alternative merges.
    common = [sym[b] for b in b"etaoinshrdlcumwfgypbvkjxqz"] + [sym[0x20]] * 6 + [sym[b] for b in b".,'-ETAISC0123"]
    dense_alphabet = [sym[b] for b in (b"etaoins " if n_new > 20000 else b"eta ")]  # small vocabs: denser
    dense = _strings_by_length(dense_alphabet, 2, 6)
    ratio = (n_merges - n_new) / n_new  # alternative merges needed per merged token
    p_dense = min(0.95, 0.1 + 0.55 * ratio)
    short: list[str] = []  # tokens of 2..5 symbols, the building blocks
    merges: list[str] = []

    def pick() -> str:
        r = rng.random()
        if r < 0.45 or not short:
            return rng.choice(common)
        if r < 0.48:
            return rng.choice(sym)
        return short[int(len(short) * rng.random() ** 1.5)]  # favour older (more common) tokens

    while len(tokens) < n_regular:
        if rng.random() < p_dense and dense:
            t = next(dense, None)
            if t is None:
                dense = None
                continue
            a, b = t[:-1], t[-1]
        else:
            a, b = pick(), pick()
            t = a + b
        if len(t) > max_len or t in index:
            continue
        index[t] = len(tokens)
        tokens.append(t)
        merges.append(f"{a} {b}")
        if len(t) <= 5:
            short.append(t)
        budget = n_merges - len(merges) - (n_regular - len(tokens))
        if budget > 0:
            for k in range(1, len(t)):
                if k == len(a):
                    continue
                left, right = t[:k], t[k:]
                if left in index and right in index:
                    merges.append(f"{left} {right}")
                    budget -= 1
                    if budget == 0:
                        break
    if len(merges) != n_merges:
        raise ValueError(f"could only make {len(merges)} consistent merges, {n_merges} asked")
    types = [TOKEN_NORMAL] * n_regular + [TOKEN_CONTROL] * n_special
    tokens.extend(special_tokens(n_special))
    return Vocab(tokens=tokens, token_types=types, merges=merges, bos_id=n_regular, eos_id=n_regular + 1)


def _strings_by_length(alphabet: list[str], lo: int, hi: int):
    """Every string over `alphabet` of length lo..hi, shorter first (lazily)."""
    import itertools

    for n in range(lo, hi + 1):
        for combo in itertools.product(alphabet, repeat=n):
            yield "".join(combo)


def check_vocab(v: Vocab) -> None:
    """Assert the consistency promised above (used by the tests)."""
    index = {t: i for i, t in enumerate(v.tokens)}
    assert len(index) == len(v.tokens), "duplicate token text"
    for rank, m in enumerate(v.merges):
        left, right = m.split(" ")
        i, j, k = index[left], index[right], index[left + right]
        assert i < k and j < k, f"merge {rank} {m!r} does not build a later token"
