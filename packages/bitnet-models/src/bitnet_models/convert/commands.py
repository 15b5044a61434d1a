"""`bitnet convert`: a Hugging Face BitNet checkpoint folder -> one GGUF file."""

from __future__ import annotations

import argparse
import sys
import time

from bitnet_quantization.command import Command


def _args(p: argparse.ArgumentParser) -> None:
    from bitnet_models.convert.packing import OUTTYPES

    p.add_argument("hf_dir", metavar="HF_DIR", help="checkpoint folder: config.json, *.safetensors, tokenizer files")
    p.add_argument("-o", "--outfile", required=True, metavar="OUT.gguf", help="the GGUF file to write")
    p.add_argument("--outtype", choices=list(OUTTYPES), default="i2_s",
                   help="type of the ternary matrices (default i2_s, bitnet.cpp's official type; tq2_0/tq1_0 for "
                        "llama.cpp; f16/f32 unquantized)")
    p.add_argument("--name", help="general.name (default: the folder's name)")
    p.add_argument("--tokenizer-pre", metavar="NAME",
                   help="llama.cpp pre-tokenizer name for a tokenizer.json that is not LLaMA-3 or GPT-2 style")
    p.add_argument("--allow-untied-head", action="store_true",
                   help="arch bitnet only: write a separate lm_head as output.weight (llama.cpp cannot load that)")
    p.add_argument("--verify", action="store_true",
                   help="run a few tokens through transformers and the converted file and compare the logits "
                        "(needs the convert extra)")
    p.add_argument("--verify-tokens", type=int, default=8, metavar="N", help="tokens for --verify (default 8)")


def _run(args: argparse.Namespace) -> int:
    from bitnet_models.convert.converter import convert
    from bitnet_models.convert.errors import ConvertError, VerifyError

    if args.verify_tokens <= 0:
        raise ConvertError(f"--verify-tokens must be positive, got {args.verify_tokens}")
    t0 = time.perf_counter()
    r = convert(args.hf_dir, args.outfile, args.outtype, name=args.name, tokenizer_pre=args.tokenizer_pre,
                allow_untied_head=args.allow_untied_head)
    print(f"wrote {r.path}: arch {r.arch}, {r.outtype}, {r.n_tensors} tensors, {r.n_bytes:,} bytes, "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if not args.verify:
        return 0
    from bitnet_models.convert.verify import verify

    report = verify(args.hf_dir, r.path, n_tokens=args.verify_tokens)
    print(f"verify: {args.verify_tokens} tokens, transformers vs {r.path.name}")
    for line in report.lines():
        print("  " + line)
    if not report.ok:
        raise VerifyError(f"{r.path}: disagrees with transformers beyond float rounding "
                          f"({report.matched.line().strip()}); the file was written, but do not trust it")
    print("verify: OK")
    return 0


COMMANDS = {
    "convert": Command(
        help="convert a Hugging Face BitNet checkpoint (transformers BitNet or 1bitLLM) to GGUF",
        add_arguments=_args,
        run=_run,
    ),
}
