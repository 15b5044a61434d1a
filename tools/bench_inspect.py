#!/usr/bin/env python3
"""Time `bitnet inspect` (our GGUF reader + summary: metadata and tensor index) against gguf.GGUFReader.

    python tools/bench_inspect.py [--i2s models/synthetic-2b4t-i2_s.gguf] [--tq models/synthetic-2b4t-tq2_0.gguf]

Rows (best and median of --repeat runs, each in a fresh state: the file is re-opened every time; the page cache
stays warm after the first run, as it does for a user who inspects a file twice):
- ours, in process: read_gguf + summarize + format_text, on the I2_S file and on the TQ2_0 file,
- ours, CLI: `bitnet inspect --no-tensors FILE` as a subprocess (includes Python start-up and imports),
- gguf.GGUFReader(FILE) on the TQ2_0 file (same vocabulary, same layout). It cannot open the I2_S file
  (type id 36 is unknown to gguf-py): the script shows the error it raises instead of a time.
Make the files with tools/make_synthetic_model.py. Target: ours under 0.5 s on the 1.18 GB I2_S file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ours(path: Path) -> None:
    from bitnet_models.gguf import read_gguf
    from bitnet_models.inspect import format_text, summarize

    with read_gguf(path) as f:
        format_text(summarize(f))


def _gguf_py(path: Path) -> None:
    import gguf

    r = gguf.GGUFReader(path)
    len(r.tensors), len(r.fields)


def _cli(path: Path) -> None:
    exe = shutil.which("bitnet") or str(Path(sys.executable).parent / "bitnet")
    subprocess.run([exe, "inspect", "--no-tensors", str(path)], check=True, stdout=subprocess.DEVNULL)


def _time(fn, path: Path, repeat: int) -> tuple[float, float] | str:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        try:
            fn(path)
        except Exception as e:  # report what a reader refuses instead of a time
            return f"fails: {type(e).__name__}: {str(e).splitlines()[0][:70]}"
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--i2s", type=Path, default=ROOT / "models" / "synthetic-2b4t-i2_s.gguf")
    p.add_argument("--tq", type=Path, default=ROOT / "models" / "synthetic-2b4t-tq2_0.gguf")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args(argv)
    for f in (a.i2s, a.tq):
        if not f.is_file():
            print(f"error: {f} not found; make it with tools/make_synthetic_model.py", file=sys.stderr)
            return 2
    # warm the imports and the page cache once so every row measures the same thing
    _ours(a.tq)
    import gguf  # noqa: F401

    rows = [
        ("ours (read_gguf+summarize)", a.i2s, _ours),
        ("ours (read_gguf+summarize)", a.tq, _ours),
        ("ours CLI: bitnet inspect", a.i2s, _cli),
        ("ours CLI: bitnet inspect", a.tq, _cli),
        ("gguf.GGUFReader", a.i2s, _gguf_py),
        ("gguf.GGUFReader", a.tq, _gguf_py),
    ]
    print(f"{'reader':<28} {'file':<28} {'size':>9} {'best s':>8} {'median s':>9}")
    for name, path, fn in rows:
        r = _time(fn, path, a.repeat)
        size = f"{path.stat().st_size / 1e9:.2f} GB"
        if isinstance(r, str):
            print(f"{name:<28} {path.name:<28} {size:>9}  {r}")
        else:
            print(f"{name:<28} {path.name:<28} {size:>9} {r[0]:8.3f} {r[1]:9.3f}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"({a.repeat} runs each; {os.cpu_count()} CPUs, load average {load}; python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
