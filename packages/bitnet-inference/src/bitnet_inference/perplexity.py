"""Perplexity and KL divergence with llama.cpp's `llama-perplexity` conventions (spec §6).

Text is tokenized once, cut into chunks of n_ctx tokens, each chunk evaluated from a fresh context with its
first token replaced by BOS, and only the second half of each chunk is scored. The `--kl-divergence-base`
file stores, for every scored position, the log-softmax as 16-bit codes; reading it back gives the reference
distribution to compare against.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitnet_inference.errors import EngineError

MAGIC = b"_logits_"


class KLDFileError(EngineError):
    """A --kl-divergence-base file that is malformed or does not match the model."""


# --- the base file ---------------------------------------------------------------------------------------

@dataclass
class KLDBase:
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray  # (n_chunk * n_ctx,) int32, WITHOUT the per-chunk BOS substitution
    records: np.ndarray  # (n_chunk, n_ctx - 1 - n_ctx // 2, nv) uint16

    @property
    def n_scored(self) -> int:
        return self.n_ctx - 1 - self.n_ctx // 2


def record_words(n_vocab: int) -> int:
    return 2 * ((n_vocab + 1) // 2) + 4


def read_kld_base(path: str | os.PathLike) -> KLDBase:
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise KLDFileError(f"{p}: no such file (write one with --kl-divergence-base FILE -f TEXT)") from None
    with open(p, "rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:8] != MAGIC:
        raise KLDFileError(f"{p}: not a llama-perplexity KL-divergence base file (bad magic {head[:8]!r})")
    n_ctx, n_vocab, n_chunk = struct.unpack_from("<iii", head, 8)
    if n_ctx < 4 or n_vocab < 1 or n_chunk < 1:
        raise KLDFileError(f"{p}: impossible header n_ctx={n_ctx} n_vocab={n_vocab} n_chunk={n_chunk}")
    nv = record_words(n_vocab)
    n_scored = n_ctx - 1 - n_ctx // 2
    expected = 20 + 4 * n_chunk * n_ctx + 2 * nv * n_chunk * n_scored
    if size != expected:
        raise KLDFileError(f"{p}: {size} bytes, but its header (n_ctx {n_ctx}, n_vocab {n_vocab}, "
                           f"{n_chunk} chunks) needs {expected}")
    mm = np.memmap(p, dtype=np.uint8, mode="r")
    tokens = np.frombuffer(mm, dtype="<i4", count=n_chunk * n_ctx, offset=20)
    records = np.frombuffer(mm, dtype="<u2", offset=20 + 4 * n_chunk * n_ctx).reshape(n_chunk, n_scored, nv)
    return KLDBase(n_ctx, n_vocab, n_chunk, tokens, records)


def encode_logprobs(logits: np.ndarray) -> np.ndarray:
    """One record (nv uint16) per row of logits (n, V), as llama-perplexity writes them."""
    logits = np.asarray(logits, np.float32)
    n, v = logits.shape
    out = np.zeros((n, record_words(v)), np.uint16)
    for r in range(n):
        l = logits[r]
        max_l = np.float32(l.max())
        min_l = np.float32(max(float(l.min()), float(max_l) - 16.0))
        lse = np.float32(math.log(float(np.sum(np.exp((l - max_l).astype(np.float64))))))
        scale = np.float32((max_l - min_l) / np.float32(65535))
        min_lp = np.float32(min_l - max_l - lse)
        head = np.array([scale, min_lp], np.float32).view(np.uint16)
        out[r, :4] = head
        if scale > 0:
            codes = np.where(l > min_l, np.rint((l - min_l) / scale), 0)
            out[r, 4 : 4 + v] = np.clip(codes, 0, 65535).astype(np.uint16)
    return out


def decode_logprobs(records: np.ndarray) -> np.ndarray:
    """(n, nv) uint16 records -> (n, V) float32 base log-probabilities (V = nv - 4, or one less if padded)."""
    head = np.ascontiguousarray(records[:, :4]).view(np.float32)  # (n, 2): scale, min_log_prob
    codes = records[:, 4:].astype(np.float32)
    return (head[:, :1] * codes + head[:, 1:2]).astype(np.float32)


def write_kld_base(path: str | os.PathLike, n_ctx: int, n_vocab: int, tokens: np.ndarray, records: np.ndarray) -> None:
    """Write atomically: header, tokens (without BOS substitution), then the records chunk by chunk."""
    p = Path(path)
    n_chunk = records.shape[0]
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".part", dir=p.parent if str(p.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(MAGIC + struct.pack("<iii", n_ctx, n_vocab, n_chunk))
            fh.write(np.asarray(tokens[: n_chunk * n_ctx], "<i4").tobytes())
            fh.write(np.ascontiguousarray(records, "<u2").tobytes())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- evaluation --------------------------------------------------------------------------------------------

def eval_chunk(model, tokens: np.ndarray, ubatch: int) -> np.ndarray:
    """All logits (n_ctx, V) of one chunk from a fresh context, evaluated ubatch tokens at a time."""
    model.cache.reset()
    parts = []
    for s in range(0, len(tokens), ubatch):
        parts.append(model.forward(tokens[s : s + ubatch], s))
    return np.concatenate(parts)


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    l = logits.astype(np.float64)
    m = l.max(axis=-1, keepdims=True)
    return l - m - np.log(np.sum(np.exp(l - m), axis=-1, keepdims=True))


@dataclass
class Stats:
    nll: list = field(default_factory=list)
    nll_base: list = field(default_factory=list)
    kld: list = field(default_factory=list)
    dp: list = field(default_factory=list)
    same_top: list = field(default_factory=list)

    @staticmethod
    def ppl(nll: list) -> tuple[float, float]:
        a = np.asarray(nll, np.float64)
        mean = a.mean()
        err = math.sqrt(max(a.var() * len(a) / max(len(a) - 1, 1), 0.0) / len(a)) if len(a) > 1 else 0.0
        p = math.exp(mean)
        return p, p * err


def score_chunk(logits: np.ndarray, tokens: np.ndarray, stats: Stats, base_logp: np.ndarray | None = None) -> None:
    """Score positions n_ctx/2 .. n_ctx-2 (each predicting the next token)."""
    n_ctx = len(tokens)
    first = n_ctx // 2
    lp = log_softmax64(logits[first : n_ctx - 1])  # (n_scored, V)
    nxt = tokens[first + 1 : n_ctx]
    rows = np.arange(len(nxt))
    stats.nll.extend((-lp[rows, nxt]).tolist())
    if base_logp is None:
        return
    b = base_logp[:, : lp.shape[1]].astype(np.float64)
    stats.nll_base.extend((-b[rows, nxt]).tolist())
    keep = b > -16.0
    pb = np.where(keep, np.exp(np.where(keep, b, 0.0)), 0.0)
    stats.kld.extend(np.sum(pb * (b - lp), axis=1).tolist())
    stats.dp.extend((np.exp(lp[rows, nxt]) - np.exp(b[rows, nxt])).tolist())
    stats.same_top.extend((np.argmax(logits[first : n_ctx - 1], axis=1) == np.argmax(b, axis=1)).tolist())


def chunks_of(tokens: np.ndarray, n_ctx: int, n_chunks: int | None, bos_id: int | None) -> list[np.ndarray]:
    total = len(tokens) // n_ctx
    if total == 0:
        raise EngineError(f"need at least {n_ctx} tokens for one chunk of -c {n_ctx}, have {len(tokens)}; "
                          "use a longer text or a smaller -c")
    n = total if n_chunks is None or n_chunks < 0 else min(total, n_chunks)
    out = []
    for c in range(n):
        ch = np.array(tokens[c * n_ctx : (c + 1) * n_ctx], dtype=np.int64)
        if bos_id is not None:
            ch[0] = bos_id
        out.append(ch)
    return out


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q))


def format_kld_report(stats: Stats) -> str:
    """The statistics block llama-perplexity prints after a --kl-divergence run (same wording)."""
    n = len(stats.kld)
    if n < 100:
        return f"(only {n} tokens scored: llama-perplexity prints statistics from 100 tokens on)"
    q, qe = Stats.ppl(stats.nll)
    b, be = Stats.ppl(stats.nll_base)
    nll = np.asarray(stats.nll)
    nllb = np.asarray(stats.nll_base)
    diff = nll - nllb
    kld = np.asarray(stats.kld)
    dp = np.asarray(stats.dp) * 100
    same = np.asarray(stats.same_top, dtype=np.float64)
    sem = lambda a: float(np.std(a, ddof=1) / np.sqrt(len(a)))  # noqa: E731
    lines = [
        "====== Perplexity statistics ======",
        f"Mean PPL(Q)                   : {q:10.6f} ± {qe:10.6f}",
        f"Mean PPL(base)                : {b:10.6f} ± {be:10.6f}",
        f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * np.corrcoef(nll, nllb)[0, 1]:6.2f}%",
        f"Mean ln(PPL(Q)/PPL(base))     : {diff.mean():10.6f} ± {sem(diff):10.6f}",
        f"Mean PPL(Q)/PPL(base)         : {np.exp(diff.mean()):10.6f} ± {np.exp(diff.mean()) * sem(diff):10.6f}",
        f"Mean PPL(Q)-PPL(base)         : {q - b:10.6f}",
        "",
        "====== KL divergence statistics ======",
        f"Mean    KLD: {kld.mean():10.6f} ± {sem(kld):10.6f}",
        f"Maximum KLD: {kld.max():10.6f}",
        f"99.9%   KLD: {_pct(kld, 99.9):10.6f}",
        f"99.0%   KLD: {_pct(kld, 99.0):10.6f}",
        f"Median  KLD: {np.median(kld):10.6f}",
        f"10.0%   KLD: {_pct(kld, 10):10.6f}",
        f" 5.0%   KLD: {_pct(kld, 5):10.6f}",
        f" 1.0%   KLD: {_pct(kld, 1):10.6f}",
        f"Minimum KLD: {kld.min():10.6f}",
        "",
        "====== Token probability statistics ======",
        f"Mean    Δp: {dp.mean():6.3f} ± {sem(dp):5.3f} %",
        f"Maximum Δp: {dp.max():6.3f}%",
        f"Median  Δp: {np.median(dp):6.3f}%",
        f"Minimum Δp: {dp.min():6.3f}%",
        f"RMS Δp    : {np.sqrt(np.mean(dp ** 2)):6.3f} %",
        f"Same top p: {100 * same.mean():6.3f} ± {100 * sem(same):5.3f} %",
    ]
    return "\n".join(lines)
