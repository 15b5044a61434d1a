#!/usr/bin/env python3
"""Tokenizer speed: encoding ~10 MB of English text with the llama-bpe vocabulary (the LLaMA-3 vocabulary of
BitNet b1.58 2B-4T), ours and llama-cpp-python's in one run, plus vocabulary load times. Prints a table.

    python tools/bench_tokenizers.py [--mb 10] [--repeat 3]

The vocabulary is llama.cpp's models/ggml-vocab-llama-bpe.gguf, fetched by tools/fetch_llama_vocabs.py.
The text is generated here (public domain by construction): sentences over a few hundred common English words,
with punctuation, numbers, quotes and paragraphs.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORDS = """the of and to a in is was for on that with as by it at from his her an be this which or are were had not
but have one they you all their has been would who will more if can no out so said what up its about into than them
only other new some could time these two may then do first any my now such like our over man me even most made after
also did many before must through back years where much your way well down should because each just those people how
too little state good very make world still own see men work long get here between both life being under never day
same another know while last might us great old year off come since against go came right used take three states
himself few house use during without again place american around however home small found thought went say part once
general high upon school every don't does got united left number course war until always away something fact though
water less public put think almost hand enough far took head yet government system better set told nothing night end
why called didn't eyes find going look asked later knew point next program city business give group toward young let
room president side social given present several order national possible rather second face per among form important
often things looked early white case john become large big need four within felt along children saw best church ever
least power development light thing seemed family interest want members mind country area others although turned done
open god service certain kind problem began different door thus help sense means whole matter perhaps itself york it's
times law human line above name example action company hands local show whether five history gave today either act
feet across taken past quite anything seen having death week experience field usually""".split()


def english_text(n_bytes: int, seed: int = 0) -> str:
    r = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n_bytes:
        para = []
        for _ in range(r.randint(2, 7)):
            n = r.randint(5, 24)
            words = [r.choice(WORDS) for _ in range(n)]
            if r.random() < 0.2:
                words.insert(r.randint(0, n), str(r.randint(1, 2024)))
            if r.random() < 0.15:
                k = r.randint(1, n - 1)
                words[k] = words[k] + ","
            if r.random() < 0.1:
                words[0] = '"' + words[0]
                words[-1] = words[-1] + '"'
            s = " ".join(words)
            para.append(s[0].upper() + s[1:] + r.choice(".....?!;:"))
        p = " ".join(para)
        out.append(p)
        size += len(p) + 2
    return "\n\n".join(out)[:n_bytes]


def diverse_english_text(n_bytes: int, tokens: list[str], seed: int = 0) -> str:
    """English-like text with a long tail: words drawn Zipf-like from the vocabulary's own whole-word tokens
    (in id order, roughly frequency order), a third of them glued to another word, so that many pre-tokens are
    new and have to go through the BPE merges (the memo of pre-token ids helps much less than on `english_text`)."""
    words = [t[1:] for t in tokens if t.startswith("\u0120") and t[1:].isascii() and t[1:].isalpha()]
    weights = [1.0 / (i + 10) for i in range(len(words))]
    r = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n_bytes:
        ws = r.choices(words, weights, k=r.randint(5, 24))
        ws = [w + r.choice(words) if r.random() < 0.33 else w for w in ws]
        if r.random() < 0.2:
            ws.insert(r.randint(0, len(ws)), str(r.randint(1, 99999)))
        s = " ".join(ws)
        s = s[0].upper() + s[1:] + r.choice("....,?!;:") + r.choice(("  ", " ", " ", "\n\n"))
        out.append(s)
        size += len(s)
    return "".join(out)[:n_bytes]


def vocab_path() -> Path:
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "fetch_llama_vocabs.py")], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        sys.exit(r.stderr)
    return Path(r.stdout.strip().splitlines()[-1]) / "ggml-vocab-llama-bpe.gguf"


def timed(fn, repeat: int):
    """(result, best wall, median wall, best CPU time of this process): CPU time is what the work costs
    when other programs share the cores."""
    times, cpus, result = [], [], None
    for _ in range(repeat):
        c = time.process_time()
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return result, min(times), statistics.median(times), min(cpus)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=10.0, help="megabytes of text to encode (default 10)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is reported")
    args = ap.parse_args(argv)

    from bitnet_models import read_gguf
    from bitnet_tokenizers import load_tokenizer

    path = vocab_path()
    text = english_text(int(args.mb * 1_000_000))
    data = text.encode("utf-8")
    rows = []

    def load_ours():
        with read_gguf(path) as f:
            return load_tokenizer(f)

    tok, best, med, cpu = timed(load_ours, args.repeat)
    rows.append(("load: read_gguf + load_tokenizer (ours)", best, med, cpu, ""))
    f = read_gguf(path)
    _, best, med, cpu = timed(lambda: load_tokenizer(f), args.repeat)
    rows.append(("load: load_tokenizer(open GGUFFile) (ours)", best, med, cpu, "target < 0.5 s"))

    import llama_cpp

    def load_llama():
        return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)

    llm, best, med, cpu = timed(load_llama, args.repeat)
    rows.append(("load: Llama(vocab_only=True) (llama-cpp-python)", best, med, cpu, ""))

    encodes = []
    ok = True
    for label, txt in (("common words", text), ("long-tail words", diverse_english_text(len(data), tok.vocab.tokens))):
        raw = txt.encode("utf-8")

        def encode_cold(txt: str = txt) -> list[int]:
            tok.clear_cache()  # every run starts without memoized pre-tokens
            return tok.encode(txt, add_bos=False)

        def encode_llama(raw: bytes = raw) -> list[int]:
            return llm.tokenize(raw, add_bos=False, special=False)

        ours, t_ours, m_ours, c_ours = timed(encode_cold, args.repeat)
        theirs, t_llama, m_llama, c_llama = timed(encode_llama, args.repeat)
        ok = ok and ours == theirs
        same = "identical ids" if ours == theirs else f"IDS DIFFER ({len(ours)} vs {len(theirs)} tokens)"
        encodes.append((label, len(raw), len(ours), same, (t_ours, m_ours, c_ours), (t_llama, m_llama, c_llama)))

    print(f"tokenizer benchmark: llama-bpe vocabulary ({tok.vocab_size} tokens, {len(tok.vocab.merges)} merges)")
    for label, nb, n, same, _, _ in encodes:
        print(f"  text '{label}': {nb / 1e6:.1f} MB of generated English, {n} tokens; {same}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, llama-cpp-python {llama_cpp.__version__}; best of {args.repeat}; "
          f"load average {os.getloadavg()[0]:.1f} (other work on the machine slows both sides)")
    print()
    print(f"| {'what':<52} | {'best':>10} | {'median':>10} | {'CPU':>10} | {'tokens/s':>12} | note")
    print(f"|{'-' * 54}|{'-' * 12}|{'-' * 12}|{'-' * 12}|{'-' * 14}|------")
    for what, b, m, c, note in rows:
        print(f"| {what:<52} | {b:>8.3f} s | {m:>8.3f} s | {c:>8.3f} s | {'':>12} | {note}")
    for label, nb, n, _, o, l in encodes:
        for who, (b, m, c) in (("ours", o), ("llama.cpp", l)):
            what = f"encode {nb / 1e6:.0f} MB {label} ({who})"
            print(f"| {what:<52} | {b:>8.3f} s | {m:>8.3f} s | {c:>8.3f} s | {n / b:>12,.0f} |")
    print()
    for label, _, _, _, o, l in encodes:
        print(f"ours / llama.cpp encode speed, {label}: {l[0] / o[0]:.2f}x (wall), {l[2] / o[2]:.2f}x (CPU)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
