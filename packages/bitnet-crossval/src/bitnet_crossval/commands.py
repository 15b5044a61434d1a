"""`bitnet crossval`: our engine against llama.cpp (llama-cpp-python) or bitnet.cpp, with a JSON receipt and an
HTML report. The environment is read here and nowhere else in this package (`settings_from_env`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Mapping

from bitnet_crossval.config import REFERENCES, CrossValidationConfig, ToleranceConfig
from bitnet_crossval.errors import CrossValError
from bitnet_quantization.command import Command


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", help="GGUF model to check (CROSSVAL_GGUF)")
    p.add_argument("--reference", choices=REFERENCES, default="llama-cpp",
                   help="llama-cpp: upstream llama.cpp in-process (arch bitnet; F32/F16/TQ1_0/TQ2_0); bitnet-cpp: "
                        "bitnet.cpp from BITNET_CPP_DIR, or its recorded outputs (default llama-cpp)")
    p.add_argument("-f", "--file", help="text to evaluate (default: the recorded run's text.txt for a recorded "
                                        "bitnet.cpp folder, else a sample text shipped with the package)")
    from bitnet_inference.numerics import NUMERICS

    p.add_argument("--numerics", choices=tuple(NUMERICS), default="fast",
                   help="our engine's float mode (default fast; ggml: bit-faithful to bitnet.cpp, use it against "
                        "bitnet.cpp's I2_S outputs)")
    p.add_argument("-c", "--ctx-size", type=int, default=None, help="chunk size (default: the recorded file's, else 128)")
    p.add_argument("--chunks", type=int, default=4, help="chunks to evaluate for a live reference (default 4)")
    p.add_argument("-ub", "--ubatch", type=int, default=None,
                   help="tokens per forward pass (default: a whole chunk); a recorded folder needs X.ub<N>.kld")
    p.add_argument("-p", "--prompt", default="To be, or not to be", help="greedy prompt (default 'To be, or not to be')")
    p.add_argument("-n", "--n-predict", type=int, default=32, help="greedy tokens to compare (default 32; 0 = skip)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads for both engines (BITNET_CPU_THREADS)")
    p.add_argument("--recorded", metavar="DIR", help="recorded bitnet.cpp outputs (default: the model's folder); "
                                                     "used when BITNET_CPP_DIR is not set")
    p.add_argument("--bitnet-cpp-dir", metavar="DIR", help="your bitnet.cpp build (BITNET_CPP_DIR)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds each bitnet.cpp program may run (default 600)")
    p.add_argument("--tolerance", action="append", default=[], metavar="SPEC",
                   help="override tolerances: 1e-4 (inference) or key=value[,key=value] with keys inference, "
                        "quantization, perplexity, performance, top1 (BITNET_VALIDATION_TOLERANCE; flags win)")
    p.add_argument("--speed", action="store_true", help="also compare speed (pp128/tg64 style, llama-bench)")
    p.add_argument("--fault", choices=("no-act-quant",), default=None,
                   help="run the engine with a deliberately wrong setting, to see the checks catch it")
    p.add_argument("--json", metavar="OUT", help="write the JSON receipt here")
    p.add_argument("--report", metavar="OUT.html", help="write the HTML report here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def _env(environ: Mapping[str, str], name: str) -> str | None:
    v = environ.get(name, "").strip()
    return v or None


def settings_from_env(environ: Mapping[str, str], args: argparse.Namespace) -> CrossValidationConfig:
    """Flags and environment -> one frozen config. A flag wins over its variable; an empty variable is unset."""
    model = args.model or _env(environ, "CROSSVAL_GGUF")
    if not model:
        raise CrossValError("give the model to check with -m MODEL.gguf (or CROSSVAL_GGUF)")
    tol = ToleranceConfig()
    env_tol = _env(environ, "BITNET_VALIDATION_TOLERANCE")
    if env_tol:
        tol = tol.with_spec(env_tol, "BITNET_VALIDATION_TOLERANCE")
    for spec in args.tolerance:
        tol = tol.with_spec(spec, "--tolerance")
    threads = args.threads
    if threads is None and _env(environ, "BITNET_CPU_THREADS"):
        try:
            threads = int(environ["BITNET_CPU_THREADS"])
        except ValueError:
            raise CrossValError(f"BITNET_CPU_THREADS={environ['BITNET_CPU_THREADS']!r} is not a whole number") from None
    cpp_dir = args.bitnet_cpp_dir or _env(environ, "BITNET_CPP_DIR")
    if cpp_dir and args.reference != "bitnet-cpp":
        cpp_dir = None  # only the bitnet-cpp reference uses it
    if args.recorded and args.bitnet_cpp_dir:
        raise CrossValError("--recorded and --bitnet-cpp-dir exclude each other: run bitnet.cpp, or read its outputs")
    if args.recorded:
        cpp_dir = None
    return CrossValidationConfig(
        model=Path(model).expanduser(), reference=args.reference,
        text=Path(args.file).expanduser() if args.file else None, numerics=args.numerics, n_ctx=args.ctx_size,
        n_chunks=args.chunks, ubatch=args.ubatch, greedy_prompt=args.prompt, greedy_tokens=args.n_predict,
        threads=threads, bitnet_cpp_dir=Path(cpp_dir).expanduser() if cpp_dir else None,
        recorded_dir=Path(args.recorded).expanduser() if args.recorded else None, timeout_s=args.timeout,
        speed=args.speed, fault=args.fault, tolerances=tol)


def _set_threads(n: int | None) -> None:
    try:
        import bitnet_kernels
    except ImportError:
        return
    bitnet_kernels.set_num_threads(n or len(os.sched_getaffinity(0)))


def format_table(receipt) -> str:
    rows = [("", "check", "value", "limit", "margin")]
    for c in receipt.checks:
        mark = {True: "PASS", False: "FAIL", None: "----"}[c.passed]
        rows.append((mark, c.name, c.shown or "-", c.limit_shown or "-", c.margin))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    return "\n".join(lines)


def _crossval(args: argparse.Namespace) -> int:
    from bitnet_crossval.report import render_html
    from bitnet_crossval.runner import run_crossval, write_atomic

    cfg = settings_from_env(os.environ, args)
    for out in (args.json, args.report):
        if out and not Path(out).expanduser().parent.is_dir():
            raise CrossValError(f"cannot write {out}: its folder does not exist")
    _set_threads(cfg.threads)
    progress = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    receipt = run_crossval(cfg, progress=progress)
    print(f"crossval {cfg.model.name} vs {receipt.reference.get('name')} ({receipt.reference.get('mode')}), "
          f"numerics {cfg.numerics}{', FAULT ' + cfg.fault if cfg.fault else ''}")
    print(format_table(receipt))
    for note in receipt.notes:
        print(f"note: {note}")
    print(f"verdict: {receipt.verdict.upper()}")
    if args.json:
        write_atomic(Path(args.json).expanduser(), receipt.to_json())
        print(f"wrote {args.json}", file=sys.stderr)
    if args.report:
        write_atomic(Path(args.report).expanduser(), render_html(receipt))
        print(f"wrote {args.report}", file=sys.stderr)
    return 0 if receipt.passed else 1


COMMANDS = {
    "crossval": Command("compare the engine with llama.cpp or bitnet.cpp: tokens, logits, KLD, PPL, greedy",
                        _args, _crossval),
}
