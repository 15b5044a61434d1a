"""The checks: each compares one number with one threshold, passes or fails, and says by how much.

Metrics come from `compare_chunks` (logits or log-probabilities of our engine and the reference, position by
position); thresholds from `ToleranceConfig` (see its docstring for which tolerance feeds which check).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from bitnet_crossval.config import ToleranceConfig
from bitnet_inference.perplexity import log_softmax64 as log_softmax
from bitnet_crossval.references import RefChunk

KLD_FLOOR = -16.0  # llama-perplexity keeps base log-probs above this when it sums the KL divergence


@dataclass
class Check:
    name: str  # stable id, e.g. "kld.mean"
    title: str  # what a person reads
    passed: bool | None  # None: not run (an earlier check stopped the run, or the reference cannot measure it)
    value: float | int | None = None
    limit: float | None = None
    op: str = "<="  # value op limit must hold
    shown: str = ""  # the value as a person reads it
    limit_shown: str = ""
    margin: str = ""  # "80x under the limit", "3.2x over the limit"
    tolerance: str = ""  # which tolerance set the limit
    detail: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("value", "limit"):
            if isinstance(d[k], float) and not math.isfinite(d[k]):
                d[k] = str(d[k])
        return d


def judge(name: str, title: str, value: float, limit: float, op: str, tolerance: str, shown: str = "",
          limit_shown: str = "", detail: str = "") -> Check:
    value = float(value)
    if op == "<=":
        passed = value <= limit
        if limit == 0:
            margin = "exact" if value == 0 else f"{value:.3g} over a limit of 0"
        elif value == 0:
            margin = "zero"
        else:
            margin = f"{limit / value:.3g}x under the limit" if passed else f"{value / limit:.3g}x over the limit"
    elif op == ">=":
        passed = value >= limit
        gap = value - limit
        margin = f"{gap:.3g} above the limit" if passed else f"{-gap:.3g} short of the limit"
    else:
        raise ValueError(op)
    passed = bool(passed) and math.isfinite(value)
    return Check(name, title, passed, value, float(limit), op, shown or f"{value:.3g}", limit_shown or f"{op} {limit:.3g}",
                 margin, tolerance, detail)


def not_run(name: str, title: str, why: str) -> Check:
    return Check(name, title, None, detail=why, margin="not run")


# --- metrics ------------------------------------------------------------------------------------------------

@dataclass
class Metrics:
    """Per-position numbers over every row the reference gave, in chunk order."""

    position: list[int] = field(default_factory=list)  # global index: chunk * n_ctx + position in chunk
    kld: list[float] = field(default_factory=list)
    rel: list[float] = field(default_factory=list)  # ||ours - ref|| / ||ref||
    cos: list[float] = field(default_factory=list)
    max_abs: list[float] = field(default_factory=list)  # max |ours - ref| per row
    allowed: list[float] = field(default_factory=list)  # what the max_abs check allows for that row
    same_top: list[bool] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)  # ours, scored positions only (llama-perplexity's half)
    nll_ref: list[float] = field(default_factory=list)
    scatter_ours: list[float] = field(default_factory=list)
    scatter_ref: list[float] = field(default_factory=list)


def compare_chunk(m: Metrics, ours_logits: np.ndarray, chunk_tokens: np.ndarray, ref: RefChunk, kind: str, c: int,
                  inference_tol: float, rng: np.random.Generator, scatter_per_chunk: int = 160) -> None:
    n_ctx = len(chunk_tokens)
    pos = ref.positions
    o = ours_logits[pos]  # (n, V) float32
    o_lp = log_softmax(o)
    if kind == "logits":
        r = ref.values.astype(np.float64)
        r_lp = log_softmax(r)
        a, b = o.astype(np.float64), r
        mask = np.ones_like(b, dtype=bool)
        step = np.zeros(len(pos))
    else:  # log-probs from a 16-bit base file: compare log-probs where the code is above the clamp
        r_lp = ref.values.astype(np.float64)
        a, b = o_lp, r_lp
        mask = r_lp > (ref.floor[:, None].astype(np.float64) + 0.5 * ref.step[:, None])
        step = ref.step.astype(np.float64)
    d = np.where(mask, a - b, 0.0)
    bm = np.where(mask, b, 0.0)
    am = np.where(mask, a, 0.0)
    rel = np.linalg.norm(d, axis=1) / np.maximum(np.linalg.norm(bm, axis=1), 1e-30)
    cos = np.sum(am * bm, axis=1) / np.maximum(np.linalg.norm(am, axis=1) * np.linalg.norm(bm, axis=1), 1e-300)
    row_abs = np.abs(d).max(axis=1)
    allowed = inference_tol * np.abs(bm).max(axis=1) + 0.5 * step
    # KL(ref || ours), llama-perplexity's way: base probabilities below e^-16 left out
    keep = r_lp > KLD_FLOOR
    p = np.where(keep, np.exp(np.where(keep, r_lp, 0.0)), 0.0)
    kld = np.sum(p * np.where(keep, r_lp - o_lp, 0.0), axis=1)
    m.position.extend((c * n_ctx + pos).tolist())
    m.kld.extend(kld.tolist())
    m.rel.extend(rel.tolist())
    m.cos.extend(cos.tolist())
    m.max_abs.extend(row_abs.tolist())
    m.allowed.extend(allowed.tolist())
    m.same_top.extend((np.argmax(o, axis=1) == np.argmax(ref.values, axis=1)).tolist())
    # perplexity over llama-perplexity's scored half: position i predicts token i + 1
    first = n_ctx // 2
    sel = (pos >= first) & (pos < n_ctx - 1)
    nxt = chunk_tokens[pos[sel] + 1]
    rows = np.nonzero(sel)[0]
    m.nll.extend((-o_lp[rows, nxt]).tolist())
    m.nll_ref.extend((-r_lp[rows, nxt]).tolist())
    # a sample for the scatter plot: random entries plus each row's top entry (the range people care about)
    ri, ci = np.nonzero(mask)
    if len(ri):
        pick = rng.choice(len(ri), size=min(scatter_per_chunk, len(ri)), replace=False)
        tops = np.argmax(b, axis=1)
        rr = np.concatenate([ri[pick], np.arange(len(pos))])
        cc = np.concatenate([ci[pick], tops])
        m.scatter_ours.extend(a[rr, cc].round(6).tolist())
        m.scatter_ref.extend(b[rr, cc].round(6).tolist())


def ppl_of(nll: list[float]) -> float:
    return float(math.exp(np.mean(np.asarray(nll, np.float64))))


# --- the checks ---------------------------------------------------------------------------------------------

def token_parity(ours: np.ndarray, ref: np.ndarray, complete: bool, piece) -> Check:
    """Same ids, or the first difference with a little context. `piece(id) -> str` shows a token."""
    title = "Token parity (our tokenizer vs the reference's)"
    n = len(ref)
    if complete and len(ours) != n:
        k = min(len(ours), n)
        diff = k if np.array_equal(ours[:k], ref[:k]) else int(np.argmax(ours[:k] != ref[:k]))
    elif len(ours) < n:
        k = len(ours)
        diff = k if np.array_equal(ours, ref[:k]) else int(np.argmax(ours != ref[:k]))
    else:
        k = n
        neq = ours[:n] != ref
        diff = int(np.argmax(neq)) if neq.any() else -1
    if diff < 0:
        return Check("tokens", title, True, 0, 0.0, "==", f"{n} of {n} ids equal", "all equal", "exact", "exact",
                     "" if complete else f"the reference holds the first {n} tokens of the text; ours has {len(ours)}")
    lo, hi = max(0, diff - 3), diff + 4

    def show(ids):
        return " ".join(f"{int(t)}:{piece(int(t))!r}" for t in ids)

    detail = (f"first difference at token {diff}: ours [{show(ours[lo:hi])}] vs reference [{show(ref[lo:hi])}]"
              f" (ours {len(ours)} tokens, reference {n}); every later check is skipped")
    return Check("tokens", title, False, diff, 0.0, "==", f"differ at token {diff}", "all equal",
                 "first difference shown", "exact", detail)


def logits_checks(m: Metrics, tol: ToleranceConfig, kind: str) -> list[Check]:
    """Relative error and max |diff| at the typical (median) position; cosine at the worst position.

    The median, because with quantized activations (Q8_K, int8) a float difference of one ulp sometimes rounds
    one activation to the neighbouring integer, and that position's logits move by far more than the float
    noise while its distribution barely moves; the worst position is bounded by the cosine, KLD max and top-1.
    """
    what = "logits" if kind == "logits" else "log-probabilities (the base file's 16-bit codes)"
    rel = np.asarray(m.rel)
    cos = np.asarray(m.cos)
    ratio = np.asarray(m.max_abs) / np.maximum(np.asarray(m.allowed), 1e-30)
    med_rel = float(np.median(rel))
    order = np.argsort(ratio)
    mid = int(order[len(order) // 2])
    worst = int(order[-1])
    worst_cos = int(np.argmin(cos))
    return [
        judge("logits.rel_error", f"Relative error of the {what}, typical position (median)", med_rel,
              tol.inference, "<=", f"inference ({tol.inference:g})",
              f"{med_rel:.3g} (p99 {np.percentile(rel, 99):.3g}, max {rel.max():.3g})",
              detail=f"||ours - ref|| / ||ref|| per position; the largest at position {m.position[int(np.argmax(rel))]}"),
        judge("logits.max_abs", f"Largest |difference| of the {what}, typical position (median), vs allowed",
              float(ratio[mid]), 1.0, "<=",
              f"inference ({tol.inference:g}) x max|ref| of the position"
              + (" + half the file's coding step" if kind != "logits" else ""),
              f"{m.max_abs[mid]:.3g} (allowed {m.allowed[mid]:.3g}); worst {m.max_abs[worst]:.3g} at position "
              f"{m.position[worst]}", "<= allowed"),
        judge("logits.cosine", f"Cosine similarity of the {what}, worst position (shown as 1 - cos)",
              1.0 - cos.min(), tol.inference, "<=", f"inference ({tol.inference:g})",
              f"1 - cos = {1.0 - cos.min():.3g}", detail=f"at position {m.position[worst_cos]}"),
    ]


def kld_checks(m: Metrics, tol: ToleranceConfig) -> list[Check]:
    k = np.asarray(m.kld)
    q = tol.quantization
    src = f"quantization ({q:g})"
    return [
        judge("kld.mean", "KL divergence (reference || ours), mean", k.mean(), q, "<=", src, f"{k.mean():.3g}",
              detail=f"over {len(k)} positions"),
        judge("kld.p99", "KL divergence, 99th percentile", float(np.percentile(k, 99)), 10 * q, "<=", src + " x 10"),
        judge("kld.max", "KL divergence, max", k.max(), 100 * q, "<=", src + " x 100",
              detail=f"at position {m.position[int(np.argmax(k))]}"),
    ]


def top1_check(m: Metrics, tol: ToleranceConfig) -> Check:
    s = np.asarray(m.same_top, dtype=bool)
    frac = float(s.mean())
    first_diff = "" if s.all() else f"; first disagreement at position {m.position[int(np.argmin(s))]}"
    return judge("top1", "Top-1 agreement (same most likely next token)", frac, tol.top1, ">=",
                 f"top1 ({tol.top1:g})", f"{100 * frac:.2f}% ({int(s.sum())} of {len(s)})",
                 f">= {100 * tol.top1:g}%", detail=f"{len(s) - int(s.sum())} positions differ{first_diff}")


def ppl_check(ours: float, theirs: float, tol: ToleranceConfig, theirs_source: str) -> Check:
    ratio = ours / theirs
    return judge("ppl.ratio", "Perplexity ratio (ours / reference)", abs(ratio - 1.0), tol.perplexity, "<=",
                 f"perplexity ({tol.perplexity:g}, relative)", f"{ratio:.6f} (ours {ours:.4f}, theirs {theirs:.4f})",
                 f"within 1 ± {tol.perplexity:g}", detail=f"reference PPL from {theirs_source}")


def greedy_tokens_check(ours: list[int], theirs: list[int], piece) -> Check:
    title = "Greedy continuation (temperature 0), token for token"
    n = max(len(ours), len(theirs))
    k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    if k is None and len(ours) != len(theirs):
        k = min(len(ours), len(theirs))
    if k is None:
        return Check("greedy", title, True, 0, 0.0, "==", f"{n} of {n} tokens equal", "all equal", "exact", "exact")
    detail = (f"first difference at generated token {k}: ours {ours[k] if k < len(ours) else 'end'}"
              f"{(' ' + repr(piece(ours[k]))) if k < len(ours) else ''} vs reference "
              f"{theirs[k] if k < len(theirs) else 'end'}{(' ' + repr(piece(theirs[k]))) if k < len(theirs) else ''}")
    return Check("greedy", title, False, n - k, 0.0, "==", f"{k} of {n} tokens equal", "all equal",
                 "first difference shown", "exact", detail)


def greedy_text_check(ours_pieces: list[str], theirs_text: str) -> Check:
    """bitnet.cpp's llama-cli gives text only: compare the texts, and name our token where they part."""
    title = "Greedy continuation (temperature 0), as llama-cli printed it"
    ours_text = "".join(ours_pieces).rstrip("\n")
    if ours_text == theirs_text:
        n = len(ours_pieces)
        return Check("greedy", title, True, 0, 0.0, "==", f"{n} of {n} tokens, same text", "same text", "exact",
                     "exact")
    at = next((i for i, (a, b) in enumerate(zip(ours_text, theirs_text)) if a != b), min(len(ours_text), len(theirs_text)))
    acc, k = 0, 0
    for k, p in enumerate(ours_pieces):
        if acc + len(p) > at:
            break
        acc += len(p)
    detail = (f"texts part at character {at}, in our generated token {k}: ours {ours_text[max(0, at - 12):at + 12]!r}"
              f" vs reference {theirs_text[max(0, at - 12):at + 12]!r}")
    return Check("greedy", title, False, len(ours_pieces) - k, 0.0, "==", f"{k} of {len(ours_pieces)} tokens equal",
                 "same text", "first difference shown", "exact", detail)


def speed_checks(ours: dict[str, float], theirs: dict[str, float], tol: ToleranceConfig, note: str) -> list[Check]:
    out = []
    for test, t in theirs.items():
        if test not in ours:
            continue
        ratio = ours[test] / t
        out.append(judge(f"speed.{test}", f"Speed {test} (ours / reference, tokens per second)", ratio,
                         1.0 - tol.performance, ">=", f"performance ({tol.performance:g})",
                         f"{ratio:.3f} (ours {ours[test]:.1f}, theirs {t:.1f} tok/s)",
                         f">= {1.0 - tol.performance:.3g}", detail=note))
    return out
