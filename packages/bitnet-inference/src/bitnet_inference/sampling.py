"""Samplers and logits processors as small callables (llama.cpp's order: penalties, top-k, top-p, min-p, temp).

`make_sampler(...)` returns `sampler(logits (V,) f32) -> token id`; `make_logits_processors(...)` returns a
list of `processor(tokens so far, logits) -> logits`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from bitnet_inference.errors import EngineError

Sampler = Callable[[np.ndarray], int]
LogitsProcessor = Callable[[Sequence[int], np.ndarray], np.ndarray]


def validate(temp: float, top_k: int, top_p: float, min_p: float, repeat_penalty: float) -> None:
    if not temp >= 0:
        raise EngineError(f"--temp must be >= 0 (0 = greedy), got {temp}")
    if top_k < 0:
        raise EngineError(f"--top-k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise EngineError(f"--top-p must be in (0, 1], got {top_p}")
    if not 0 <= min_p <= 1:
        raise EngineError(f"--min-p must be in [0, 1], got {min_p}")
    if not repeat_penalty > 0:
        raise EngineError(f"--repeat-penalty must be > 0 (1 = off), got {repeat_penalty}")


def greedy(logits: np.ndarray) -> int:
    return int(np.argmax(logits))


def apply_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    if k <= 0 or k >= logits.size:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, -np.inf)


def _probs(logits: np.ndarray, temp: float = 1.0) -> np.ndarray:
    """softmax(logits / temp) in float64, the maximum subtracted before dividing, so that a tiny temperature
    gives a one-hot distribution instead of inf - inf."""
    l = logits.astype(np.float64)
    with np.errstate(over="ignore"):
        z = (l - l.max()) / temp
    e = np.exp(z)
    return e / e.sum()


def apply_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    if p >= 1.0:
        return logits
    probs = _probs(logits)
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    keep_n = int(np.searchsorted(cum, p) + 1)  # smallest set whose mass reaches p
    out = np.full_like(logits, -np.inf)
    out[order[:keep_n]] = logits[order[:keep_n]]
    return out


def apply_min_p(logits: np.ndarray, min_p: float) -> np.ndarray:
    if min_p <= 0:
        return logits
    probs = _probs(logits)
    return np.where(probs >= min_p * probs.max(), logits, -np.inf)


def make_sampler(temp: float = 0.0, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 seed: int | None = None) -> Sampler:
    validate(temp, top_k, top_p, min_p, 1.0)
    if temp == 0:
        return greedy
    rng = np.random.default_rng(seed)

    def draw(logits: np.ndarray, keep: np.ndarray) -> int:
        # top-p, min-p and the temperature on the entries top-k kept, in vocabulary order (so the draw maps to the
        # index the whole vector would give): top-p's sort and the softmaxes touch k values, not the vocabulary
        l = apply_min_p(apply_top_p(logits[keep], top_p), min_p)
        probs = _probs(l, temp)
        return int(keep[rng.choice(probs.size, p=probs)])

    def sample(logits: np.ndarray) -> int:
        return draw(logits, top_k_indices(logits, top_k))

    def from_candidates(rows: np.ndarray, logits: np.ndarray) -> int:
        keep = top_k_indices(logits, top_k)
        keep = keep[np.argsort(rows[keep], kind="stable")]  # the kept entries in vocabulary order
        return int(rows[draw(logits, keep)])

    # for a model that returns only the rows whose logits may be among the top_k largest, ties included, with
    # their logits (rows in any order): the same draw as sample() on the whole vector (the GPU model's top-k head)
    sample.top_k = top_k
    sample.from_candidates = from_candidates
    return sample


def top_k_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """The indices (ascending) of the entries apply_top_k keeps: every entry >= the k-th largest (ties kept), or
    all of them when k is 0 or covers the vocabulary."""
    if k <= 0 or k >= logits.size:
        return np.arange(logits.size)
    kth = logits[np.argpartition(logits, -k)[-k:]].min()
    return np.flatnonzero(logits >= kth)


def make_repetition_penalty(penalty: float, context_size: int = 64) -> LogitsProcessor:
    """llama.cpp's repeat penalty: divide positive logits (multiply negative ones) of recent tokens.

    With penalty >= 1 (it only lowers logits, through a monotone map) it also has `recent(tokens)` (the distinct
    rows it changes), `penalty`, and `on_rows(tokens, rows, vals)`, which applies it to the entries `rows` alone
    (the same values): generate_step hands the rows and the penalty to the GPU model's top-k head and applies it
    to the candidates that come back."""

    def recent_of(tokens: Sequence[int]) -> np.ndarray:
        return np.unique(np.asarray(tokens[-context_size:], dtype=np.int64))

    def penalize(vals: np.ndarray, hit) -> np.ndarray:
        out = vals.copy()
        sel = out[hit]
        out[hit] = np.where(sel > 0, sel / penalty, sel * penalty)
        return out

    def process(tokens: Sequence[int], logits: np.ndarray) -> np.ndarray:
        recent = recent_of(tokens)
        return logits if recent.size == 0 else penalize(logits, recent)

    if penalty >= 1.0:
        process.recent = recent_of
        process.penalty = float(penalty)
        # (a lookup table over the recent ids' range: the sort-based isin took ~0.4 ms for ~9,000 candidate rows)
        process.on_rows = lambda tokens, rows, vals: penalize(vals, np.isin(rows, recent_of(tokens), kind="table"))
    return process


def make_logits_processors(repeat_penalty: float = 1.0, repeat_last_n: int = 64) -> list[LogitsProcessor]:
    validate(0.0, 0, 1.0, 0.0, repeat_penalty)
    if repeat_penalty == 1.0:
        return []
    return [make_repetition_penalty(repeat_penalty, repeat_last_n)]
