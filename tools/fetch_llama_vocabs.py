#!/usr/bin/env python3
"""Fetch llama.cpp's tokenizer test vocabularies (models/ggml-vocab-*.gguf with their .inp/.out cases).

They come from the llama-cpp-python source distribution on PyPI (which vendors llama.cpp), downloaded with pip and
extracted into a cache directory (default ~/.cache/bitnet-py/llama-vocabs/<version>/). Nothing is committed.

    python tools/fetch_llama_vocabs.py                  # download (if not cached) and extract; prints the dir
    python tools/fetch_llama_vocabs.py --sdist FILE     # use an sdist already on disk
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
CACHE = Path(os.environ.get("BITNET_CACHE", Path.home() / ".cache" / "bitnet-py")) / "llama-vocabs"


def vocab_dir(version: str = VERSION) -> Path:
    return CACHE / version


def _download(version: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    name = f"llama_cpp_python-{version}.tar.gz"
    if (dest / name).exists():
        return dest / name
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "-d", str(dest), f"llama-cpp-python=={version}"]
    print("+", " ".join(cmd), file=sys.stderr)
    r = subprocess.run(cmd, stdout=sys.stderr, check=False)
    if r.returncode != 0 or not (dest / name).exists():
        sys.exit(f"error: could not download {name} from PyPI (pip exited {r.returncode}); "
                 "pass --sdist with a copy of it")
    return dest / name


def extract(sdist: Path, out: Path) -> int:
    """Extract models/ggml-vocab-* from the sdist into `out` (atomically: a temp dir renamed into place)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".extract-"))
    n = 0
    try:
        with tarfile.open(sdist) as tf:
            for m in tf.getmembers():
                parts = m.name.split("/")
                if (m.isfile() and len(parts) >= 2 and parts[-2] == "models" and "vendor" in parts
                        and parts[-1].startswith("ggml-vocab-")):
                    src = tf.extractfile(m)
                    assert src is not None
                    with open(tmp / parts[-1], "wb") as f:
                        shutil.copyfileobj(src, f)
                    n += 1
        if n == 0:
            raise SystemExit(f"error: {sdist} holds no vendor/llama.cpp/models/ggml-vocab-* files")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return n


def fetch(version: str = VERSION, sdist: str | None = None) -> Path:
    out = vocab_dir(version)
    if (out / ".complete").exists():
        return out
    path = Path(sdist) if sdist else _download(version, CACHE / "sdist")
    extract(path, out)
    (out / ".complete").write_text(f"llama-cpp-python {version}\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default=VERSION, help=f"llama-cpp-python version (default {VERSION})")
    ap.add_argument("--sdist", help="an sdist already on disk instead of downloading one")
    args = ap.parse_args(argv)
    out = fetch(args.version, args.sdist)
    cases = sorted(out.glob("*.gguf.inp"))
    print(f"{out}  ({len(list(out.glob('*.gguf')))} vocabularies, {len(cases)} with test cases)", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
