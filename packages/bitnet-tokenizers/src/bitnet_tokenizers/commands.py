"""`bitnet tokenize`: llama.cpp's llama-tokenize, in Python."""

from __future__ import annotations

import argparse
import sys

from bitnet_quantization.command import Command


def _tokenize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, metavar="MODEL", help="path to a .gguf file")
    p.add_argument("-p", "--prompt", required=True, metavar="TEXT", help="the text to tokenize")
    p.add_argument("--ids", action="store_true", help="print only the ids, as a Python list")
    p.add_argument("--no-bos", action="store_true", help="do not add BOS even where the model asks for it")
    p.add_argument("--parse-special", action="store_true", help="turn special-token text (e.g. <|eot_id|>) into its token")
    p.add_argument("--tokenizer", metavar="FILE", help="a tokenizer.model or tokenizer.json to use instead of the file's vocabulary")


def _tokenize(args: argparse.Namespace) -> int:
    from bitnet_models import read_gguf

    from bitnet_tokenizers.tokenizer import load_tokenizer

    with read_gguf(args.model) as f:
        tok = load_tokenizer(f, args.tokenizer)
    ids = tok.encode(args.prompt, add_bos=False if args.no_bos else None, parse_special=args.parse_special)
    out = sys.stdout
    if args.ids:
        out.write("[" + ", ".join(str(i) for i in ids) + "]\n")
        return 0
    # pieces are written as their raw bytes, as llama-tokenize does (a byte token may be half a character)
    out.flush()
    buf = getattr(out, "buffer", None)
    for i in ids:
        line = b"%6d -> '%s'\n" % (i, tok.token_to_piece(i))
        if buf is not None:
            buf.write(line)
        else:
            out.write(line.decode("utf-8", errors="replace"))
    if buf is not None:
        buf.flush()
    return 0


COMMANDS = {
    "tokenize": Command("tokenize text with a model's vocabulary, as llama.cpp's llama-tokenize", _tokenize_args, _tokenize),
}
