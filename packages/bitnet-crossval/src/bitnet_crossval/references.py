"""The two C++ references behind one interface.

- `LlamaCppReference`: upstream llama.cpp in-process through llama-cpp-python (arch `bitnet`; F32/F16/TQ1_0/TQ2_0),
  F32 KV cache, full float logits.
- `BitnetCppReference`: bitnet.cpp's own programs from a user's build (`bitnet_cpp_dir`), run as subprocesses with
  timeouts, or, without a build, the outputs recorded from one (a folder of X.kld / X.greedy.txt / X.ppl.txt).

A reference does each job its own way, as its users would: it tokenizes the text, cuts chunks and evaluates
them (`perplexity`), generates greedily (`greedy`), and measures speed (`bench`). The runner then makes our
engine do the same and compares.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitnet_crossval.errors import CrossValError, ReferenceRunError, ReferenceUnavailableError
from bitnet_crossval.parsers import BenchResult, parse_bench_json, parse_final_ppl, parse_perplexity_stdout

log = logging.getLogger(__name__)
DEFAULT_N_CTX = 128


@dataclass
class RefChunk:
    """The reference's numbers for one chunk: rows for `positions` (indices into the chunk)."""

    positions: np.ndarray  # (n,) int
    values: np.ndarray  # (n, V) float32: raw logits, or log-probabilities decoded from a base file
    step: np.ndarray | None = None  # (n,) coding step of each row (16-bit base file), None for exact floats
    floor: np.ndarray | None = None  # (n,) the lowest log-prob a row can hold (values at it are clamped)


@dataclass
class RefPerplexity:
    tokens: np.ndarray  # the reference's tokenization of the text (BOS added, no per-chunk BOS substitution)
    complete: bool  # True: all of the text's tokens; False: only the first n_chunk * n_ctx (a base file)
    n_ctx: int
    ubatch: int
    kind: str  # "logits" or "logprobs"
    chunks: list[RefChunk]
    ppl: float | None = None  # what the reference printed, if it printed one
    ppl_err: float | None = None
    seconds: float | None = None  # the reference's evaluation time (None when recorded)
    source: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class RefGreedy:
    prompt_tokens: list[int] | None
    tokens: list[int] | None  # the continuation's ids, when the reference gives them
    text: str | None  # the continuation as printed (bitnet.cpp's llama-cli), when that is all there is
    source: str = ""


class Reference:
    name = "?"

    def describe(self) -> dict:
        raise NotImplementedError

    def perplexity(self, text: str, text_path: Path, n_ctx: int | None, n_chunks: int,
                   ubatch: int | None) -> RefPerplexity:
        raise NotImplementedError

    def greedy(self, prompt: str, n: int) -> RefGreedy:
        raise NotImplementedError

    def bench(self, n_prompt: int, n_gen: int) -> list[BenchResult] | None:
        """Tokens per second for a pp/tg test, or None when this reference cannot measure speed here."""
        return None

    def close(self) -> None:
        pass


# --- llama.cpp through llama-cpp-python -------------------------------------------------------------------

class LlamaCppReference(Reference):
    name = "llama-cpp"

    def __init__(self, model: Path, threads: int | None = None):
        _check_upstream_can_load(Path(model))
        try:
            import llama_cpp
        except ImportError:
            raise ReferenceUnavailableError(
                "the llama-cpp reference needs llama-cpp-python: pip install 'bitnet[crossval]' "
                "(or 'bitnet-crossval[llama-cpp]'); it compiles llama.cpp once") from None
        self._llama_cpp = llama_cpp
        self.model = Path(model)
        self.threads = threads or len(os.sched_getaffinity(0))
        self._llm = None
        self._llm_key = None

    def describe(self) -> dict:
        return {"name": self.name, "program": "llama.cpp (in-process, llama-cpp-python)",
                "version": f"llama-cpp-python {_version('llama-cpp-python', self._llama_cpp)}",
                "mode": "in-process", "threads": self.threads,
                "settings": "F32 KV cache (type_k=type_v=0), flash attention off, logits for every position"}

    def _open(self, n_ctx: int, n_batch: int):
        key = (n_ctx, n_batch)
        if self._llm is not None and self._llm_key == key:
            return self._llm
        self.close()
        try:
            self._llm = self._llama_cpp.Llama(
                str(self.model), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, logits_all=True, verbose=False,
                type_k=0, type_v=0, flash_attn=False, n_threads=self.threads, n_threads_batch=self.threads)
        except (ValueError, RuntimeError) as e:
            raise ReferenceRunError(f"llama.cpp could not load {self.model}: {e} (upstream llama.cpp runs arch "
                                    "`bitnet` with F32/F16/TQ1_0/TQ2_0; for I2_S use --reference bitnet-cpp)") from None
        self._llm_key = key
        return self._llm

    def perplexity(self, text, text_path, n_ctx, n_chunks, ubatch):
        n_ctx = n_ctx or DEFAULT_N_CTX
        ub = ubatch or n_ctx
        llm = self._open(n_ctx, ub)
        tokens = np.asarray(llm.tokenize(text.encode("utf-8"), add_bos=True, special=False), np.int64)
        n = min(n_chunks, len(tokens) // n_ctx)
        if n == 0:
            raise CrossValError(f"the text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}; "
                                "use a longer text (-f) or a smaller -c")
        bos = llm.token_bos() if _adds_bos(llm) else None
        chunks = []
        t0 = time.perf_counter()
        for c in range(n):
            ch = tokens[c * n_ctx : (c + 1) * n_ctx].copy()
            if bos is not None and bos >= 0:
                ch[0] = bos
            llm.reset()
            llm.eval(ch.tolist())  # llama-cpp-python splits into n_batch pieces itself
            logits = np.array(llm.scores[:n_ctx], dtype=np.float32)
            chunks.append(RefChunk(np.arange(n_ctx), logits))
        seconds = time.perf_counter() - t0
        return RefPerplexity(tokens, True, n_ctx, ub, "logits", chunks, seconds=seconds,
                             source=f"llama-cpp-python, {n} chunks of {n_ctx}, ubatch {ub}")

    def greedy(self, prompt, n):
        need = 8 + n + len(prompt.encode("utf-8")) + 1
        n_ctx = max(DEFAULT_N_CTX, need)
        llm = self._open(n_ctx, n_ctx)
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        llm.reset()
        llm.eval(ids)
        out: list[int] = []
        eos = llm.token_eos()
        for _ in range(n):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(tok)
            if tok == eos:
                break
            llm.eval([tok])
        return RefGreedy(list(ids), out, None, source="llama-cpp-python, argmax of the logits")

    def bench(self, n_prompt, n_gen):
        llm = self._open(max(DEFAULT_N_CTX, n_prompt + n_gen + 1), max(n_prompt, 1))
        rng = np.random.default_rng(0)
        toks = rng.integers(3, llm.n_vocab(), size=max(n_prompt, n_gen)).tolist()
        out = []
        if n_prompt:
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(toks[:n_prompt])
            dt = time.perf_counter() - t0
            out.append(BenchResult(f"pp{n_prompt}", n_prompt, 0, n_prompt / dt, 0.0, self.threads, "", str(self.model),
                                   "", ""))
        if n_gen:
            llm.reset()
            t0 = time.perf_counter()
            for t in toks[:n_gen]:
                llm.eval([t])
            dt = time.perf_counter() - t0
            out.append(BenchResult(f"tg{n_gen}", 0, n_gen, n_gen / dt, 0.0, self.threads, "", str(self.model), "", ""))
        return out

    def close(self):
        if self._llm is not None:
            self._llm.close()
            self._llm = None
            self._llm_key = None


def _check_upstream_can_load(model: Path) -> None:
    """Upstream llama.cpp knows neither bitnet.cpp's architectures nor its I2_S type: say so before it fails."""
    from bitnet_models import read_gguf

    g = read_gguf(model)
    i2s = any(info.qtype.name == "I2_S" for info in g.tensors.values())
    if i2s or g.architecture in ("bitnet-b1.58", "bitnet-25"):
        what = "I2_S tensors" if i2s else f"arch {g.architecture!r}"
        raise ReferenceUnavailableError(
            f"{model.name} has {what}, which only bitnet.cpp runs (upstream llama.cpp runs arch `bitnet` with "
            "F32/F16/TQ1_0/TQ2_0); use --reference bitnet-cpp")


def _adds_bos(llm) -> bool:
    try:
        return bool(llm._model.add_bos_token())
    except AttributeError:  # older llama-cpp-python: llama.cpp adds BOS for SPM/BPE vocabs by default
        return True


def _version(dist: str, module=None) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return getattr(module, "__version__", "unknown")


# --- bitnet.cpp: a user's build, or its recorded outputs -------------------------------------------------

PROGRAMS = ("llama-perplexity", "llama-cli", "llama-bench")


def find_bitnet_cpp_programs(root: Path) -> dict[str, Path]:
    """bitnet.cpp's build puts its programs in build/bin; accept that, bin/, or the folder itself."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ReferenceUnavailableError(f"BITNET_CPP_DIR {root} is not a folder; point it at a bitnet.cpp checkout "
                                        "that you built (its programs are in build/bin)")
    found = {}
    for prog in PROGRAMS:
        for d in (root / "build" / "bin", root / "bin", root):
            p = d / prog
            if p.is_file() and os.access(p, os.X_OK):
                found[prog] = p
                break
    if "llama-perplexity" not in found:
        raise ReferenceUnavailableError(f"no llama-perplexity under {root} (looked in build/bin, bin and the folder "
                                        "itself); build bitnet.cpp there first (its README: setup_env.py)")
    return found


class BitnetCppReference(Reference):
    name = "bitnet-cpp"

    def __init__(self, model: Path, bitnet_cpp_dir: Path | None = None, recorded_dir: Path | None = None,
                 threads: int | None = None, timeout_s: float = 600.0):
        self.model = Path(model)
        self.stem = self.model.name[: -len(".gguf")] if self.model.name.endswith(".gguf") else self.model.stem
        self.threads = threads or len(os.sched_getaffinity(0))
        self.timeout_s = timeout_s
        self.live = bitnet_cpp_dir is not None
        if self.live:
            self.root = Path(bitnet_cpp_dir).expanduser()
            self.programs = find_bitnet_cpp_programs(self.root)
        else:
            self.recorded = Path(recorded_dir) if recorded_dir else self.model.parent
            if not self.recorded.is_dir():
                raise ReferenceUnavailableError(f"recorded bitnet.cpp outputs folder {self.recorded} does not exist")
        self._build: str | None = None
        self._system: str | None = None

    # where the recorded outputs live: X.kld (X.ub{N}.kld for -ub N), X.ppl.txt, X.greedy.txt, X.bench.json
    def _recorded(self, suffix: str) -> Path:
        return self.recorded / f"{self.stem}{suffix}"

    def describe(self) -> dict:
        d = {"name": self.name, "program": "bitnet.cpp (llama-perplexity, llama-cli, llama-bench)",
             "threads": self.threads}
        if self.live:
            d.update(mode="live", dir=str(self.root), programs={k: str(v) for k, v in self.programs.items()})
        else:
            d.update(mode="recorded", dir=str(self.recorded),
                     note=f"bitnet.cpp was not run (no BITNET_CPP_DIR): compared with the outputs recorded from it "
                          f"in {self.recorded}")
            log_file = self.recorded / f"llama-perplexity-{self.stem}.stdout.txt"
            if log_file.is_file() and self._build is None:
                out = parse_perplexity_stdout(log_file.read_text(encoding="utf-8", errors="replace"), str(log_file))
                self._build, self._system = out.build, out.system_info
        d["version"] = f"bitnet.cpp build: {self._build}" if self._build else "bitnet.cpp (build not recorded)"
        if self._system:
            d["system_info"] = self._system
        return d

    def _run(self, prog: str, args: list[str]) -> subprocess.CompletedProcess:
        exe = self.programs.get(prog)
        if exe is None:
            raise ReferenceUnavailableError(f"{prog} is not in the bitnet.cpp build at {self.root}")
        cmd = [str(exe), *args]
        log.info("running %s", " ".join(cmd))
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=self.timeout_s,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ReferenceRunError(f"{prog} did not finish in {self.timeout_s:g} s (--timeout); command: "
                                    f"{' '.join(cmd)}") from None
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise ReferenceRunError(f"{prog} exited with status {r.returncode}: {' | '.join(tail)}")
        return r

    def perplexity(self, text, text_path, n_ctx, n_chunks, ubatch):
        from bitnet_inference.perplexity import read_kld_base

        if self.live:
            n_ctx = n_ctx or DEFAULT_N_CTX
            with tempfile.TemporaryDirectory(prefix="bitnet-crossval-") as tmp:
                kld_path = Path(tmp) / f"{self.stem}.kld"
                args = ["-m", str(self.model), "-f", str(text_path), "-c", str(n_ctx), "-b", str(n_ctx),
                        "--chunks", str(n_chunks), "-t", str(self.threads), "--kl-divergence-base", str(kld_path)]
                if ubatch:
                    args += ["-ub", str(ubatch)]
                t0 = time.perf_counter()
                r = self._run("llama-perplexity", args)
                seconds = time.perf_counter() - t0
                out = parse_perplexity_stdout(r.stdout + "\n" + r.stderr, "llama-perplexity output")
                self._build, self._system = out.build, out.system_info
                base = read_kld_base(kld_path)
                ref = self._from_base(base, n_ctx, ubatch, f"live: llama-perplexity {' '.join(args)}")
                # copy out of the memory map before the temporary folder goes
                for ch in ref.chunks:
                    ch.values = np.array(ch.values)
                ref.tokens = np.array(ref.tokens)
            ref.ppl, ref.ppl_err, ref.seconds = out.ppl, out.ppl_err, seconds
            return ref
        kld_path = self._recorded(f".ub{ubatch}.kld" if ubatch else ".kld")
        if not kld_path.is_file():
            raise ReferenceUnavailableError(
                f"no recorded bitnet.cpp logits {kld_path}: make it with bitnet.cpp's `llama-perplexity -m "
                f"{self.model.name} -f TEXT -c 128 -b 128 --chunks 8 --kl-divergence-base {kld_path.name}"
                f"{' -ub ' + str(ubatch) if ubatch else ''}`, or set BITNET_CPP_DIR to your bitnet.cpp build")
        base = read_kld_base(kld_path)
        if n_ctx and n_ctx != base.n_ctx:
            raise CrossValError(f"-c {n_ctx} differs from the recorded file's n_ctx {base.n_ctx} ({kld_path}); drop -c")
        ref = self._from_base(base, base.n_ctx, ubatch, f"recorded: {kld_path}")
        ppl_path = self._recorded(".ppl.txt") if not ubatch else self._recorded(f".ub{ubatch}.ppl.txt")
        if ppl_path.is_file():
            ref.ppl, ref.ppl_err = parse_final_ppl(ppl_path.read_text(encoding="utf-8"), str(ppl_path))
            ref.extra["ppl_source"] = str(ppl_path)
        return ref

    def _from_base(self, base, n_ctx: int, ubatch: int | None, source: str) -> RefPerplexity:
        from bitnet_inference.perplexity import decode_logprobs

        first = n_ctx // 2
        chunks = []
        for c in range(base.n_chunk):
            rec = base.records[c]
            head = np.ascontiguousarray(rec[:, :4]).view(np.float32)  # (n, 2): coding step, lowest log-prob
            values = decode_logprobs(rec)[:, : base.n_vocab]
            chunks.append(RefChunk(np.arange(first, n_ctx - 1), values, head[:, 0].copy(), head[:, 1].copy()))
        return RefPerplexity(base.tokens, False, n_ctx, ubatch or n_ctx, "logprobs", chunks, source=source)

    def greedy(self, prompt, n):
        if self.live:
            args = ["-m", str(self.model), "-p", prompt, "-n", str(n), "--temp", "0", "--seed", "1",
                    "-t", str(self.threads)]
            r = self._run("llama-cli", args)
            return RefGreedy(None, None, r.stdout, source=f"live: llama-cli {' '.join(args)}")
        path = self._recorded(".greedy.txt")
        if not path.is_file():
            raise ReferenceUnavailableError(
                f"no recorded greedy output {path}: make it with bitnet.cpp's `llama-cli -m {self.model.name} -p "
                f"\"{prompt}\" -n {n} --temp 0 --seed 1 > {path.name}`")
        return RefGreedy(None, None, path.read_text(encoding="utf-8"), source=f"recorded: {path}")

    def bench(self, n_prompt, n_gen):
        if self.live:
            args = ["-m", str(self.model), "-o", "json", "-t", str(self.threads), "-p", str(n_prompt), "-n", str(n_gen)]
            r = self._run("llama-bench", args)
            return parse_bench_json(r.stdout, "llama-bench -o json")
        path = self._recorded(".bench.json")
        if not path.is_file():
            return None
        return parse_bench_json(path.read_text(encoding="utf-8"), str(path))


def make_reference(name: str, model: Path, *, bitnet_cpp_dir: Path | None = None, recorded_dir: Path | None = None,
                   threads: int | None = None, timeout_s: float = 600.0) -> Reference:
    if name == "llama-cpp":
        return LlamaCppReference(model, threads)
    if name == "bitnet-cpp":
        return BitnetCppReference(model, bitnet_cpp_dir, recorded_dir, threads, timeout_s)
    raise CrossValError(f"unknown reference {name!r}; choose llama-cpp or bitnet-cpp")


__all__ = ["BitnetCppReference", "LlamaCppReference", "RefChunk", "RefGreedy", "RefPerplexity", "Reference",
           "find_bitnet_cpp_programs", "make_reference"]
