"""`bitnet` subcommands provided by bitnet-models."""

from __future__ import annotations

import argparse
import json
import sys

from bitnet_quantization.command import Command


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="path to a .gguf file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-tensors", action="store_true", help="omit the per-tensor table")


def _inspect(args: argparse.Namespace) -> int:
    from bitnet_models.gguf import read_gguf
    from bitnet_models.inspect import format_text, summarize

    with read_gguf(args.model) as f:
        s = summarize(f)
    if args.json:
        json.dump(s, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_text(s, show_tensors=not args.no_tensors))
    return 0


COMMANDS = {
    "inspect": Command("show a GGUF file's architecture, tokenizer and tensors", _inspect_args, _inspect),
}
