"""One cross-validation run: the reference does its jobs, our engine does the same, the checks compare.

Order matters: token parity first (different ids make every later number meaningless, so a difference stops the
run with the first one shown), then logits, KL divergence, top-1, perplexity, greedy continuation, speed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from bitnet_crossval import checks as C
from bitnet_crossval.config import CrossValidationConfig
from bitnet_crossval.errors import CrossValError, ReferenceUnavailableError
from bitnet_crossval.references import Reference, make_reference

log = logging.getLogger(__name__)
SCHEMA = "bitnet-crossval/1"


@dataclass
class Receipt:
    verdict: str  # "pass" or "fail"
    created: str
    model: dict
    reference: dict
    engine: dict
    machine: dict
    config: dict
    checks: list[C.Check]
    numbers: dict = field(default_factory=dict)
    series: dict = field(default_factory=dict)  # per-position KLD, relative error, scatter sample (for plots)
    notes: list[str] = field(default_factory=list)
    schema: str = SCHEMA

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["checks"] = [c.to_dict() for c in self.checks]
        return {"schema": d.pop("schema"), **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "Receipt":
        if d.get("schema") != SCHEMA:
            raise CrossValError(f"receipt schema {d.get('schema')!r} is not {SCHEMA!r}")
        d = dict(d)
        d["checks"] = [C.Check(**c) for c in d["checks"]]
        return cls(**d)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".part", dir=p.parent if str(p.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is for reading
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- facts for the receipt -----------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_facts(path: Path, gguf) -> dict:
    types: dict[str, int] = {}
    for info in gguf.tensors.values():
        types[info.qtype.name] = types.get(info.qtype.name, 0) + 1
    return {"path": str(path), "file": path.name, "sha256": sha256_of(path), "size": path.stat().st_size,
            "arch": gguf.architecture, "name": gguf.metadata.get("general.name"), "tensor_types": types}


def _versions(*dists: str) -> dict:
    out = {}
    for d in dists:
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            out[d] = None
    return out


def machine_facts() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), cpu)
    except OSError:
        pass
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
            "cpus_usable": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "numpy": np.__version__}


def sample_text() -> tuple[str, str]:
    res = resources.files("bitnet_crossval") / "data" / "sample.txt"
    return res.read_text(encoding="utf-8"), "bitnet_crossval/data/sample.txt (A Midsummer Night's Dream, Act I)"


def resolve_text(cfg: CrossValidationConfig) -> tuple[str, Path | None, str]:
    """The text to evaluate: -f, else the recorded folder's text.txt (what the recorded run read), else ours."""
    path = cfg.text
    if path is None and cfg.reference == "bitnet-cpp" and cfg.bitnet_cpp_dir is None:
        cand = (cfg.recorded_dir or cfg.model.parent) / "text.txt"
        path = cand if cand.is_file() else None
    if path is None:
        text, name = sample_text()
        return text, None, name
    try:
        return Path(path).read_text(encoding="utf-8"), Path(path), str(path)
    except OSError as e:
        raise CrossValError(f"cannot read the text file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CrossValError(f"{path} is not UTF-8 text") from None


# --- the run -------------------------------------------------------------------------------------------------

def run_crossval(cfg: CrossValidationConfig, reference: Reference | None = None,
                 progress: Callable[[str], None] | None = None) -> Receipt:
    from bitnet_inference import perplexity as P
    from bitnet_inference.generate import Model, generate_step
    from bitnet_tokenizers import IncrementalDetokenizer, load_tokenizer

    say = progress or (lambda s: log.info("%s", s))
    if not cfg.model.is_file():
        raise CrossValError(f"model file {cfg.model} does not exist")
    own_ref = reference is None
    ref = reference or make_reference(cfg.reference, cfg.model, bitnet_cpp_dir=cfg.bitnet_cpp_dir,
                                      recorded_dir=cfg.recorded_dir, threads=cfg.threads, timeout_s=cfg.timeout_s)
    tol = cfg.tolerances
    notes: list[str] = []
    numbers: dict = {}
    series: dict = {}
    checks: list[C.Check] = []
    try:
        text, text_path, text_name = resolve_text(cfg)
        tmp_text = None
        if text_path is None and getattr(ref, "live", False):  # a live program reads a file
            fd, tmp_text = tempfile.mkstemp(prefix="bitnet-crossval-", suffix=".txt")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            text_path = Path(tmp_text)
        say(f"reference {ref.name}: perplexity run on {text_name}")
        try:
            rp = ref.perplexity(text, text_path, cfg.n_ctx, cfg.n_chunks, cfg.ubatch)
        finally:
            if tmp_text:
                Path(tmp_text).unlink(missing_ok=True)
        ref_info = ref.describe()
        if ref_info.get("mode") == "recorded":
            notes.append(ref_info["note"])
        n_ctx = rp.n_ctx
        greedy_ctx = 16 + cfg.greedy_tokens + 4 * len(cfg.greedy_prompt.encode("utf-8"))
        kv = "f32" if cfg.reference == "llama-cpp" else "f16"  # what each reference's runs use
        say(f"our engine: loading {cfg.model} (numerics {cfg.numerics}, KV cache {kv})")
        model = Model(cfg.model, numerics=cfg.numerics, n_ctx=max(n_ctx, greedy_ctx, 256 if cfg.speed else 0),
                      kv_type=kv)
        tokenizer = load_tokenizer(model.gguf)
        fault = None
        if cfg.fault:
            from bitnet_crossval.faults import apply_fault

            fault = apply_fault(cfg.fault, model)
            notes.append(f"DELIBERATELY WRONG ENGINE SETTING: {fault}. This run exists to show that the checks "
                         "catch it; a failing verdict is the expected outcome.")
        engine = {"versions": _versions("bitnet-inference", "bitnet-tokenizers", "bitnet-models", "bitnet-kernels",
                                        "bitnet-crossval"),
                  "numerics": cfg.numerics, "kv_cache": kv, "fault": fault, "ubatch": rp.ubatch}

        def piece(t: int) -> str:
            return tokenizer.token_to_piece(t).decode("utf-8", errors="replace")

        ours_tokens = np.asarray(tokenizer.encode(text), np.int64)
        tok_check = C.token_parity(ours_tokens, np.asarray(rp.tokens, np.int64), rp.complete, piece)
        checks.append(tok_check)
        numbers["text"] = {"source": text_name, "tokens_ours": int(len(ours_tokens)), "tokens_reference": int(len(rp.tokens))}
        if not tok_check.passed:
            for name, title in _LATER:
                checks.append(C.not_run(name, title, "token ids differ: see the token parity check"))
        else:
            _compare_logits(cfg, model, tokenizer, rp, checks, numbers, series, P, say)
            _compare_greedy(cfg, model, tokenizer, ref, checks, numbers, piece, generate_step, IncrementalDetokenizer, say)
            if cfg.speed:
                _compare_speed(cfg, model, ref, checks, numbers, say)
        verdict = "pass" if all(c.passed is not False for c in checks) and any(c.passed for c in checks) else "fail"
        return Receipt(verdict, _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       model_facts(cfg.model, model.gguf), {**ref_info, "source": rp.source}, engine, machine_facts(),
                       _config_dict(cfg, n_ctx, len(rp.chunks), text_name), checks, numbers, series, notes)
    finally:
        if own_ref:
            ref.close()


_LATER = [("logits.rel_error", "Per-position relative error"), ("logits.cosine", "Per-position cosine similarity"),
          ("logits.max_abs", "Largest |difference|"), ("kld.mean", "KL divergence, mean"),
          ("kld.p99", "KL divergence, 99th percentile"), ("kld.max", "KL divergence, max"),
          ("top1", "Top-1 agreement"), ("ppl.ratio", "Perplexity ratio"), ("greedy", "Greedy continuation")]


def _config_dict(cfg: CrossValidationConfig, n_ctx: int, n_chunks: int, text_name: str) -> dict:
    return {"reference": cfg.reference, "numerics": cfg.numerics, "n_ctx": n_ctx, "n_chunks": n_chunks,
            "ubatch": cfg.ubatch, "text": text_name, "greedy_prompt": cfg.greedy_prompt,
            "greedy_tokens": cfg.greedy_tokens, "threads": cfg.threads, "speed": cfg.speed, "fault": cfg.fault,
            "tolerances": asdict(cfg.tolerances)}


def _compare_logits(cfg, model, tokenizer, rp, checks, numbers, series, P, say) -> None:
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    chunks = P.chunks_of(np.asarray(rp.tokens), rp.n_ctx, len(rp.chunks), bos)
    m = C.Metrics()
    rng = np.random.default_rng(0)
    t_ours = 0.0
    for c, (chunk, ref_chunk) in enumerate(zip(chunks, rp.chunks)):
        t0 = time.perf_counter()
        logits = P.eval_chunk(model, chunk, rp.ubatch)
        t_ours += time.perf_counter() - t0
        C.compare_chunk(m, logits, chunk, ref_chunk, rp.kind, c, cfg.tolerances.inference, rng)
        say(f"chunk {c + 1}/{len(chunks)}: mean KLD so far {np.mean(m.kld):.3g}, "
            f"top-1 {100 * np.mean(m.same_top):.2f}%")
    tol = cfg.tolerances
    checks.extend(C.logits_checks(m, tol, rp.kind))
    checks.extend(C.kld_checks(m, tol))
    checks.append(C.top1_check(m, tol))
    ours_ppl = C.ppl_of(m.nll)
    if rp.ppl is not None:
        theirs, src = rp.ppl, rp.extra.get("ppl_source", "the reference's printed 'Final estimate'")
    else:
        theirs, src = C.ppl_of(m.nll_ref), "the reference's logits (same scored positions)"
    checks.append(C.ppl_check(ours_ppl, theirs, tol, src))
    n_eval = len(chunks) * rp.n_ctx
    numbers["perplexity"] = {"ours": ours_ppl, "reference": theirs, "reference_from_logits": C.ppl_of(m.nll_ref),
                             "scored_positions": len(m.nll), "compared_positions": len(m.kld),
                             "chunks": len(chunks), "n_ctx": rp.n_ctx}
    numbers["kld"] = {"mean": float(np.mean(m.kld)), "median": float(np.median(m.kld)),
                      "p99": float(np.percentile(m.kld, 99)), "max": float(np.max(m.kld))}
    numbers["eval_seconds"] = {"ours": t_ours, "reference": rp.seconds, "tokens": n_eval}
    series["position"] = m.position
    series["kld"] = [float(f"{v:.4g}") for v in m.kld]
    series["rel_error"] = [float(f"{v:.4g}") for v in m.rel]
    series["same_top"] = [bool(v) for v in m.same_top]
    series["scatter"] = {"kind": rp.kind, "ours": m.scatter_ours, "reference": m.scatter_ref}
    series["n_ctx"] = rp.n_ctx


def _compare_greedy(cfg, model, tokenizer, ref, checks, numbers, piece, generate_step, Detok, say) -> None:
    from bitnet_crossval.parsers import split_greedy
    from bitnet_inference.sampling import greedy

    if cfg.greedy_tokens == 0:
        checks.append(C.not_run("greedy", "Greedy continuation", "greedy_tokens is 0"))
        return
    say(f"greedy: {cfg.greedy_tokens} tokens from {cfg.greedy_prompt!r}")
    try:
        rg = ref.greedy(cfg.greedy_prompt, cfg.greedy_tokens)
    except ReferenceUnavailableError as e:
        checks.append(C.not_run("greedy", "Greedy continuation", str(e)))
        return
    ids = tokenizer.encode(cfg.greedy_prompt)
    ours = []
    for tok in generate_step(model, ids, greedy, max_tokens=cfg.greedy_tokens):
        ours.append(int(tok))
        if tokenizer.is_eog(tok):
            break
    numbers["greedy"] = {"prompt": cfg.greedy_prompt, "ours": ours, "source": rg.source}
    if rg.tokens is not None:
        if rg.prompt_tokens is not None and list(rg.prompt_tokens) != list(ids):
            checks.append(C.Check("greedy", "Greedy continuation", False, None, None, "==", "prompt ids differ",
                                  "all equal", "prompt ids differ", "exact",
                                  f"prompt ids: ours {ids} vs reference {list(rg.prompt_tokens)}"))
            return
        numbers["greedy"]["reference"] = list(rg.tokens)
        numbers["greedy"]["ours_text"] = tokenizer.decode(ours)
        numbers["greedy"]["reference_text"] = tokenizer.decode(list(rg.tokens))
        checks.append(C.greedy_tokens_check(ours, list(rg.tokens), piece))
        return
    det = Detok(tokenizer)
    echo = "".join(det.add(t) for t in ids) + det.flush()
    pieces = []
    det = Detok(tokenizer)
    for t in ids:
        det.add(t)
    for t in ours:
        if tokenizer.is_eog(t):
            break
        pieces.append(det.add(t))
    pieces.append(det.flush())
    theirs = split_greedy(rg.text, echo, rg.source)
    numbers["greedy"]["reference_text"] = theirs
    numbers["greedy"]["ours_text"] = "".join(pieces)
    checks.append(C.greedy_text_check([p for p in pieces if p], theirs))


def _compare_speed(cfg, model, ref, checks, numbers, say) -> None:
    n_prompt, n_gen = 128, 64
    try:
        theirs_runs = ref.bench(n_prompt, n_gen)
    except ReferenceUnavailableError as e:
        checks.append(C.not_run("speed", "Speed", str(e)))
        return
    if not theirs_runs:
        checks.append(C.not_run("speed", "Speed", "the reference has no speed measurement here (a recorded folder "
                                "needs X.bench.json from llama-bench -o json)"))
        return
    theirs = {r.test: r.avg_ts for r in theirs_runs}
    pp = next((r.n_prompt for r in theirs_runs if r.n_gen == 0 and r.n_prompt), n_prompt)
    tg = next((r.n_gen for r in theirs_runs if r.n_prompt == 0 and r.n_gen), n_gen)
    say(f"speed: pp{pp} and tg{tg}")
    rng = np.random.default_rng(0)
    toks = rng.integers(3, model.args.n_vocab, size=max(pp, tg))
    if pp + tg > model.n_ctx:
        checks.append(C.not_run("speed", "Speed", f"pp{pp}/tg{tg} need a context of {pp + tg}; the model holds "
                                f"{model.n_ctx} here"))
        return
    ours = {}
    model.cache.reset()
    t0 = time.perf_counter()
    model.forward(toks[:pp], 0, logits="last")
    ours[f"pp{pp}"] = pp / (time.perf_counter() - t0)
    model.cache.reset()
    t0 = time.perf_counter()
    for i in range(tg):
        model.forward(toks[i : i + 1], i, logits="last")
    ours[f"tg{tg}"] = tg / (time.perf_counter() - t0)
    numbers["speed"] = {"ours": ours, "reference": theirs}
    same_model = all(Path(r.model_filename).name in ("", cfg.model.name) for r in theirs_runs)
    note = "" if same_model else ("the reference measured another model file ("
                                  + ", ".join(sorted({r.model_filename for r in theirs_runs})) + ")")
    checks.extend(C.speed_checks(ours, theirs, cfg.tolerances, note))
