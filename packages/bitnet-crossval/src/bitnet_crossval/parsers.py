"""Parsers for what bitnet.cpp's programs print: llama-perplexity's stdout, llama-cli's greedy output,
llama-bench's JSON. Tested on the recorded outputs in tests/fixtures/."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from bitnet_crossval.errors import ReferenceRunError

_FINAL = re.compile(r"Final estimate: PPL = ([0-9.eE+-]+|nan|inf) \+/- ([0-9.eE+-]+|nan|inf)")
_MEAN_PPL_Q = re.compile(r"Mean PPL\(Q\)\s*:\s*([0-9.eE+-]+) ± ([0-9.eE+-]+)")
_CHUNK_PPL = re.compile(r"\[(\d+)\]([0-9.eE+-]+|nan|inf),")
_KLD_CHUNK = re.compile(r"^\s*(\d+)\s+([0-9.eE+-]+) ± ", re.M)
_STAT = re.compile(r"^(Mean|Maximum|Minimum|Median|\s*[0-9.]+%)\s+(KLD|Δp)\s*:\s*([-0-9.eE+]+)", re.M)
_SAME_TOP = re.compile(r"Same top p\s*:\s*([0-9.]+) ± ([0-9.]+) %")
_BUILD = re.compile(r"^build: (.*)$", re.M)
_SYSTEM = re.compile(r"^system_info: (.*)$", re.M)


@dataclass
class PerplexityOutput:
    ppl: float
    ppl_err: float
    chunk_ppl: list[float] = field(default_factory=list)  # running PPL after each chunk
    kld: dict[str, float] = field(default_factory=dict)  # "mean", "max", "99.0%", ... (with --kl-divergence)
    same_top: float | None = None  # percent
    build: str | None = None
    system_info: str | None = None


def parse_final_ppl(text: str, source: str = "output") -> tuple[float, float]:
    """The `Final estimate: PPL = X +/- Y` line (the last one when several)."""
    found = _FINAL.findall(text)
    if not found:
        raise ReferenceRunError(f"{source}: no 'Final estimate: PPL = ...' line; is this llama-perplexity output?")
    ppl, err = found[-1]
    return float(ppl), float(err)


def parse_perplexity_stdout(text: str, source: str = "llama-perplexity output") -> PerplexityOutput:
    """A plain run ends with `Final estimate: PPL = ...`; a --kl-divergence run prints `Mean PPL(Q) : ...`."""
    m = _MEAN_PPL_Q.search(text)
    ppl, err = (float(m.group(1)), float(m.group(2))) if m and not _FINAL.search(text) else parse_final_ppl(text, source)
    out = PerplexityOutput(ppl, err)
    chunks = _CHUNK_PPL.findall(text)
    if chunks:
        out.chunk_ppl = [float(v) for _, v in chunks]
    else:  # a --kl-divergence run prints one table row per chunk instead
        out.chunk_ppl = [float(v) for _, v in _KLD_CHUNK.findall(text)]
    for label, kind, value in _STAT.findall(text):
        if kind == "KLD":
            key = label.strip().lower().replace("maximum", "max").replace("minimum", "min")
            out.kld.setdefault(key, float(value))
    m = _SAME_TOP.search(text)
    if m:
        out.same_top = float(m.group(1))
    m = _BUILD.search(text)
    out.build = m.group(1).strip() if m else None
    m = _SYSTEM.search(text)
    out.system_info = m.group(1).strip() if m else None
    return out


@dataclass
class BenchResult:
    test: str  # "pp128", "tg64"
    n_prompt: int
    n_gen: int
    avg_ts: float
    stddev_ts: float
    n_threads: int
    model_type: str
    model_filename: str
    build_commit: str
    cpu_info: str


def parse_bench_json(text: str, source: str = "llama-bench output") -> list[BenchResult]:
    """llama-bench -o json: one object per test; pp tests have n_gen 0, tg tests n_prompt 0."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReferenceRunError(f"{source}: not JSON ({e.msg} at line {e.lineno}); was llama-bench run with -o json?") from None
    if not isinstance(data, list) or not data:
        raise ReferenceRunError(f"{source}: expected a non-empty JSON list of llama-bench results")
    out = []
    for i, r in enumerate(data):
        try:
            n_prompt, n_gen = int(r["n_prompt"]), int(r["n_gen"])
            test = f"pp{n_prompt}" if n_gen == 0 else (f"tg{n_gen}" if n_prompt == 0 else f"pp{n_prompt}+tg{n_gen}")
            out.append(BenchResult(test, n_prompt, n_gen, float(r["avg_ts"]), float(r.get("stddev_ts", 0.0)),
                                   int(r.get("n_threads", 0)), str(r.get("model_type", "")),
                                   str(r.get("model_filename", "")), str(r.get("build_commit", "")),
                                   str(r.get("cpu_info", ""))))
        except (KeyError, TypeError, ValueError) as e:
            raise ReferenceRunError(f"{source}: result {i} lacks a usable {e} field") from None
    return out


def split_greedy(text: str, prompt_echo: str, source: str = "llama-cli output") -> str:
    """llama-cli prints the prompt (as its tokens detokenize) then the continuation; return the continuation.

    llama-cli ends its output with newlines of its own; they are not part of the text (nor compared).
    """
    body = text.rstrip("\n")
    if not body.startswith(prompt_echo):
        head = body[: len(prompt_echo) + 20]
        raise ReferenceRunError(f"{source}: does not start with the prompt {prompt_echo!r} (starts {head!r}); "
                                "was it made with another prompt? (--greedy-prompt)")
    return body[len(prompt_echo):]
