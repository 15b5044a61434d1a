"""Generated strings for differential tests against llama.cpp (seeded, so a failure names a reproducible case).

The mix is what breaks tokenizers: unicode from many scripts (and random code points), whitespace runs of every
kind, long digit runs, source code, and text that spells special tokens.
"""

from __future__ import annotations

import random

_SCRIPTS = [
    (0x41, 0x7A), (0xC0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x530, 0x58F), (0x590, 0x5FF), (0x600, 0x6FF),
    (0x900, 0x97F), (0x980, 0x9FF), (0xE00, 0xE7F), (0x10A0, 0x10FF), (0x1100, 0x11FF), (0x3040, 0x30FF),
    (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF), (0x2000, 0x206F), (0x2190, 0x23FF),
    (0x300, 0x36F), (0xFF00, 0xFFEF), (0x1D400, 0x1D7FF), (0x20000, 0x2A6DF),
]
_SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", "\v", "\f", "\u00a0", "\u3000", "\u2009", "\u200b",
           "\u0085", "\u2028", " \n", "\n ", "\t\t", "    "]
_SPECIAL = ["<s>", "</s>", "<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|endoftext|>", "<|im_start|>", "<0x0A>", "<0xFF>", "<pad>", "[INST]", "<<SYS>>",
            "<|reserved_special_token_0|>", "<s", "s>", "</", "<|", "|>", "▁", "▁▁"]
_WORDS = ("the of and to in is was for on that with as by it at from his her an be this which or are were had "
          "not but have one they you all their has been would who will more if can no out so said what up its "
          "about into than them only other new some could time these two may then do first any my now such like "
          "our over man me even most made after also did many before must through back years where much your way "
          "well down should because each just those people how too little state good very make world still own "
          "I'm don't it's we're they've she'll he'd O'Neil Hello HELLO Über naïve café résumé").split()
_CODE = ["def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }", "if x == 1 and y != 2:",
         "#include <stdio.h>\nint main() {}\n", "print(f\"{a!r:>10}\")", "const x = () => { return [1, 2, 3]; };",
         "SELECT * FROM t WHERE id = 42;", "<div class=\"a\">&amp;</div>", "x += 1  # comment", "a->b::c<<d>>e",
         "\t\tif (err) {\n\t\t\treturn err;\n\t\t}", "λx. x + 1", "$HOME/.cache && echo $?", "0x1F 0b1010 1e-5 3.14",
         "```python\nimport os\n```", "[[1,2],[3,4]]", "std::vector<int> v{1,2,3};", "    \n    \n"]


def _unicode(r: random.Random) -> str:
    out = []
    for _ in range(r.randint(1, 12)):
        if r.random() < 0.15:
            c = r.randint(0x80, 0x2FFFF)
            if 0xD800 <= c <= 0xDFFF:
                c = 0xE9
        else:
            lo, hi = r.choice(_SCRIPTS)
            c = r.randint(lo, hi)
        out.append(chr(c))
    return "".join(out)


def _digits(r: random.Random) -> str:
    return "".join(r.choice("0123456789") for _ in range(r.randint(1, 14)))


def _piece(r: random.Random) -> str:
    k = r.random()
    if k < 0.35:
        return r.choice(_WORDS)
    if k < 0.5:
        return r.choice(_SPACES)
    if k < 0.62:
        return _unicode(r)
    if k < 0.72:
        return _digits(r)
    if k < 0.82:
        return r.choice(_CODE)
    if k < 0.92:
        return r.choice(_SPECIAL)
    return r.choice(".,;:!?'\"()[]{}-_/\\|@#$%^&*+=<>~`…—–“”‘’«»¿¡")


def generate_strings(n: int, seed: int = 0) -> list[str]:
    """n strings of 0 to ~30 pieces joined with or without spaces; a few are empty or whitespace only."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        m = r.choice((0, 1, 1, 2, 3, 5, 8, 13, 21, 30)) if i else 0
        sep = r.choice(("", " ", " ", " ", "\n"))
        out.append(sep.join(_piece(r) for _ in range(m)))
    return out
