"""`bitnet` subcommands provided by bitnet-inference: generate, chat, perplexity."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from bitnet_inference.errors import EngineError
from bitnet_quantization.command import Command


# --- shared flags ------------------------------------------------------------------------------------------

def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", help="GGUF model file (default: discovery; see `bitnet models`)")
    p.add_argument("--tokenizer", help="tokenizer.model / tokenizer.json overriding the file's vocabulary (BITNET_TOKENIZER)")
    p.add_argument("-c", "--ctx-size", type=int, default=None, help="context size (default: the model's, at most 4096)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (BITNET_CPU_THREADS; default: all cores)")
    p.add_argument("--device", default=None, help="auto, cpu, gpu or hybrid (BITNET_DEVICE; default auto)")
    p.add_argument("--numerics", choices=("fast", "ggml", "llama"), default="fast",
                   help="fast (default); ggml: bit-faithful emulation of bitnet.cpp's float path; llama: of upstream "
                        "llama.cpp's (both slow, for cross-validation)")
    p.add_argument("--kv-type", choices=("f16", "f32"), default="f16", help="KV cache type (default f16, as llama.cpp)")
    p.add_argument("--lm-head", choices=("f16", "q8"), default="f16",
                   help="f16 (default, as the file stores it) or q8: an int8 copy made at load, half the bytes per "
                        "decoded token (needs the cpu extra; docs/benchmarks.md has its perplexity cost)")
    p.add_argument("--mmap", action="store_true",
                   help="use the weights in place from the memory-mapped file (faster load, pages shared between "
                        "processes, slower decode) instead of copying them onto huge pages at load (the default "
                        "with the cpu extra)")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature; 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="top-k (default 40; 0 = off)")
    p.add_argument("--top-p", type=float, default=0.95, help="top-p (default 0.95; 1 = off)")
    p.add_argument("--min-p", type=float, default=0.05, help="min-p (default 0.05; 0 = off)")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="repetition penalty (default 1.0 = off)")
    p.add_argument("--repeat-last-n", type=int, default=64, help="tokens the penalty looks back over (default 64)")
    p.add_argument("-s", "--seed", type=int, default=-1, help="RNG seed (default -1: random)")
    p.add_argument("--stop", action="append", default=[], help="stop when this text appears (repeatable)")


def open_model(args: argparse.Namespace, n_slots: int = 1):
    """Settings (environment + flags) -> resolved model file -> loaded model (with n_slots KV-cache slots) and
    tokenizer. Shared by every command that loads a model (serve too)."""
    from bitnet_models.device import resolve_device
    from bitnet_models.discovery import resolve_model
    from bitnet_models.settings import Settings

    from bitnet_inference.generate import Model
    from bitnet_tokenizers import load_tokenizer

    settings = Settings.from_env(os.environ, cpu_threads=args.threads, tokenizer=args.tokenizer, device=args.device)
    resolved = resolve_model(args.model, settings)
    print(f"model: {resolved.path} (from {resolved.source})", file=sys.stderr, flush=True)
    device = resolve_device(settings, resolved)
    model = _open_gpu(device, resolved, args, n_slots) if device.kind != "cpu" else None
    _set_threads(device.cpu_threads)
    if model is None:
        model = Model(resolved.path, numerics=args.numerics, n_ctx=args.ctx_size,
                      kv_type=getattr(args, "kv_type", "f16"), n_slots=n_slots, lm_head=getattr(args, "lm_head", "f16"),
                      weights="mmap" if getattr(args, "mmap", False) else "auto")
    tok_path = resolved.tokenizer_path or settings.tokenizer
    tokenizer = load_tokenizer(model.gguf, str(tok_path) if tok_path else None)
    return model, tokenizer


def _open_gpu(device, resolved, args: argparse.Namespace, n_slots: int):
    """The PyCUDA model when the device strategy picked a GPU and the run is one it serves (I2_S, --numerics
    fast, one sequence); None means the CPU, said in one line when `auto` chose it."""
    try:
        from bitnet_kernels.gpu import gpu_status

        ok, why = gpu_status()
    except ImportError as e:
        ok, why = False, f"bitnet-kernels is not installed ({e})"
    if ok and args.numerics == "fast" and n_slots == 1:
        from bitnet_inference.gpu_model import load_gpu

        print(f"device: GPU ({why})", file=sys.stderr)
        return load_gpu(resolved.path, n_ctx=args.ctx_size, lm_head=getattr(args, "lm_head", "f16"))
    reason = why if not ok else "the GPU path runs --numerics fast with one sequence"
    if device.requested.value != "auto":
        raise EngineError(f"device {device.requested.value}: {reason}; use --device cpu")
    print(f"device: GPU not used ({reason}); running on the CPU", file=sys.stderr)
    return None


def _set_threads(n: int | None) -> None:
    try:
        import bitnet_kernels
    except ImportError:
        return
    bitnet_kernels.set_num_threads(n or len(os.sched_getaffinity(0)))


def _sampling(args: argparse.Namespace):
    from bitnet_inference.sampling import make_logits_processors, make_sampler

    if args.n_predict <= 0:
        raise EngineError(f"-n must be positive, got {args.n_predict}")
    seed = None if args.seed < 0 else args.seed
    return (make_sampler(args.temp, args.top_k, args.top_p, args.min_p, seed),
            make_logits_processors(args.repeat_penalty, args.repeat_last_n))


# --- generate -----------------------------------------------------------------------------------------------

def _generate_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("-p", "--prompt", help="prompt text")
    src.add_argument("-f", "--file", help="read the prompt from a file")
    _sampling_args(p)


def _read_prompt(args: argparse.Namespace) -> str:
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as fh:
                return fh.read()
        except OSError as e:
            raise EngineError(f"cannot read prompt file {args.file}: {e.strerror}") from None
    if args.prompt is None:
        raise EngineError("give a prompt with -p TEXT or -f FILE")
    return args.prompt


def _generate(args: argparse.Namespace) -> int:
    from bitnet_inference.generate import stream_generate

    prompt = _read_prompt(args)
    if prompt == "":
        raise EngineError("the prompt is empty: give some text with -p")
    sampler, procs = _sampling(args)
    model, tokenizer = open_model(args)
    last = None
    for r in stream_generate(model, tokenizer, prompt, args.n_predict, sampler, procs, args.stop):
        sys.stdout.write(r.text)
        sys.stdout.flush()
        last = r
    sys.stdout.write("\n")
    if last is not None:
        print(f"prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.2f} tok/s | "
              f"decode: {last.generation_tokens} tokens, {last.generation_tps:.2f} tok/s | "
              f"finish: {last.finish_reason}", file=sys.stderr)
    return 0


# --- chat ---------------------------------------------------------------------------------------------------

def _chat_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    _sampling_args(p)


def _chat(args: argparse.Namespace) -> int:
    from bitnet_inference.generate import stream_generate

    sampler, procs = _sampling(args)
    model, tokenizer = open_model(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = tokenizer.encode(prompt, parse_special=True)
        reply = []
        for r in stream_generate(model, tokenizer, ids, args.n_predict, sampler, procs, args.stop):
            sys.stdout.write(r.text)
            sys.stdout.flush()
            reply.append(r.text)
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
    return 0


# --- perplexity ---------------------------------------------------------------------------------------------

def _perplexity_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("-f", "--file", help="text file to evaluate")
    p.add_argument("--chunks", type=int, default=-1, help="evaluate at most this many chunks (default: all)")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="accepted for llama.cpp compatibility (the whole chunk is one batch)")
    p.add_argument("-ub", "--ubatch", type=int, default=None,
                   help="tokens evaluated per forward pass (default: the whole chunk; 1 = one token at a time)")
    p.add_argument("--kl-divergence-base", metavar="FILE", help="alone: write the logits to FILE; with --kl-divergence: read them")
    p.add_argument("--kl-divergence", action="store_true", help="compare with the logits in --kl-divergence-base FILE")
    p.set_defaults(ctx_size=None)


def _perplexity(args: argparse.Namespace) -> int:
    from bitnet_inference import perplexity as P

    if args.kl_divergence and not args.kl_divergence_base:
        raise EngineError("--kl-divergence needs --kl-divergence-base FILE (the file to compare against)")
    if args.ubatch is not None and args.ubatch <= 0:
        raise EngineError(f"-ub must be positive, got {args.ubatch}")
    base = None
    if args.kl_divergence:
        base = P.read_kld_base(args.kl_divergence_base)
        if args.ctx_size and args.ctx_size != base.n_ctx:
            raise EngineError(f"-c {args.ctx_size} differs from the base file's n_ctx {base.n_ctx}; drop -c")
        args.ctx_size = base.n_ctx
    elif not args.file:
        raise EngineError("give the text to evaluate with -f FILE")
    n_ctx = args.ctx_size or 512
    args.ctx_size = n_ctx
    model, tokenizer = open_model(args)
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    if base is not None:
        if base.n_vocab != model.args.n_vocab:
            raise EngineError(f"the base file has n_vocab {base.n_vocab}, the model {model.args.n_vocab}: "
                              "it was written for another model")
        tokens = base.tokens
    else:
        try:
            with open(args.file, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as e:
            raise EngineError(f"cannot read {args.file}: {e.strerror}") from None
        tokens = np.asarray(tokenizer.encode(text), dtype=np.int64)
    chunks = P.chunks_of(tokens, n_ctx, args.chunks if base is None else min(args.chunks if args.chunks > 0 else base.n_chunk, base.n_chunk), bos)
    ub = args.ubatch or n_ctx
    print(f"perplexity: {len(tokens)} tokens, {len(chunks)} chunks of {n_ctx}, ubatch {ub}, numerics {args.numerics}",
          file=sys.stderr)
    stats = P.Stats()
    records = []
    t0 = time.perf_counter()
    for c, chunk in enumerate(chunks):
        logits = P.eval_chunk(model, chunk, ub)
        base_lp = P.decode_logprobs(base.records[c]) if base is not None else None
        P.score_chunk(logits, chunk, stats, base_lp)
        if args.kl_divergence_base and not args.kl_divergence:
            records.append(P.encode_logprobs(logits[n_ctx // 2 : n_ctx - 1]))
        ppl, _ = P.Stats.ppl(stats.nll)
        if base is None:
            print(f"[{c + 1}]{ppl:.4f},", end="", flush=True)
        else:
            print(f"{c + 1:4d} {ppl:12.4f}  KLD {np.mean(stats.kld):.3e}  same top {100 * np.mean(stats.same_top):.3f}%",
                  flush=True)
    elapsed = time.perf_counter() - t0
    n_eval = len(chunks) * n_ctx
    if base is None:
        print()
    ppl, err = P.Stats.ppl(stats.nll)
    if args.kl_divergence_base and not args.kl_divergence:
        P.write_kld_base(args.kl_divergence_base, n_ctx, model.args.n_vocab, np.asarray(tokens[: len(chunks) * n_ctx]),
                         np.stack(records))
        print(f"wrote {args.kl_divergence_base}", file=sys.stderr)
    if base is not None:
        print(P.format_kld_report(stats))
    print(f"Final estimate: PPL = {ppl:.4f} +/- {err:.5f}")
    print(f"eval: {n_eval} tokens in {elapsed:.2f} s ({n_eval / elapsed:.1f} tokens per second)", file=sys.stderr)
    return 0


# --- bench --------------------------------------------------------------------------------------------------

def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", help="GGUF model file (default: discovery)")
    p.add_argument("-p", "--n-prompt", type=int, nargs="*", default=[128], help="prompt sizes (default 128; 0 = skip)")
    p.add_argument("-n", "--n-gen", type=int, nargs="*", default=[64], help="tokens to generate (default 64; 0 = skip)")
    p.add_argument("-t", "--threads", type=int, nargs="*", default=None, help="thread counts (default: all cores)")
    p.add_argument("-r", "--repetitions", type=int, default=3, help="repetitions of each test (default 3)")
    p.add_argument("--numerics", choices=("fast", "ggml", "llama"), default="fast", help="numerics (default fast)")
    p.add_argument("--lm-head", choices=("f16", "q8"), default="f16", help="LM head: f16 (default) or int8 (q8)")
    p.add_argument("--mmap", action="store_true", help="use the weights in place from the memory map (llama-bench's "
                   "default) instead of resident on huge pages")
    p.add_argument("--json", action="store_true", help="print llama-bench-style JSON records instead of a table")


def _bench(args: argparse.Namespace) -> int:
    import json

    from bitnet_inference import bench as B
    from bitnet_inference.generate import Model
    from bitnet_models.discovery import resolve_model
    from bitnet_models.settings import Settings

    if args.repetitions < 1:
        raise EngineError(f"-r must be at least 1, got {args.repetitions}")
    if any(n < 0 for n in args.n_prompt + args.n_gen):
        raise EngineError("-p and -n take sizes >= 0")
    settings = Settings.from_env(os.environ)
    resolved = resolve_model(args.model, settings)
    print(f"model: {resolved.path} (from {resolved.source})", file=sys.stderr, flush=True)
    threads = args.threads or [settings.cpu_threads or len(os.sched_getaffinity(0))]
    if any(t < 1 for t in threads):
        raise EngineError("-t takes thread counts >= 1")
    n_ctx = max(max(args.n_prompt, default=0), max(args.n_gen, default=0), 1) + 1
    model = Model(resolved.path, numerics=args.numerics, n_ctx=n_ctx, lm_head=args.lm_head,
                  weights="mmap" if args.mmap else "auto")
    backend = B.backend_name()
    results = []
    for t in threads:
        _set_threads(t)
        for n_p in args.n_prompt:
            if n_p:
                results.append(B.run_test(model, n_p, 0, args.repetitions, t))
        for n_g in args.n_gen:
            if n_g:
                results.append(B.run_test(model, 0, n_g, args.repetitions, t))
    if args.json:
        print(json.dumps([B.record(model, r, backend) for r in results], indent=2))
    else:
        print(B.format_table(model, results, backend))
    return 0


COMMANDS = {
    "bench": Command("prompt and decode throughput, llama-bench style", _bench_args, _bench),
    "generate": Command("generate text from a prompt", _generate_args, _generate),
    "chat": Command("chat with the model (chat template from the file when present)", _chat_args, _chat),
    "perplexity": Command("perplexity and KL divergence, llama-perplexity style", _perplexity_args, _perplexity),
}
