#!/usr/bin/env python3
"""Write a random-weight Hugging Face BitNet checkpoint (config.json, model.safetensors, tokenizer files) in the
format `bitnet convert` reads, e.g. the 2B-4T shape for measuring the converter's memory:

    python tools/make_hf_checkpoint.py --shape 2b4t --dtype bf16 -o models/hf-2b4t-bf16
    python tools/make_hf_checkpoint.py --shape 2b4t --mode offline -o models/hf-2b4t-offline
    /usr/bin/time -v bitnet convert models/hf-2b4t-bf16 -o models/hf-2b4t-i2_s.gguf

Shapes: 2b4t (hidden 2560, 30 layers, 20/5 heads, FFN 6912, vocab 128256: 2.41 G parameters, 4.8 GB in bf16) and
tiny. Modes: online (float master weights, transformers' BitNet `autobitlinear` + `online`, like
microsoft/bitnet-b1.58-2B-4T-bf16) and offline (ternary values packed 4 per byte with a weight_scale, like
microsoft/bitnet-b1.58-2B-4T). --family 1bitllm writes a 1bitLLM-style (BitnetForCausalLM, SiLU) checkpoint.
Tensors are drawn and written one at a time; the tokenizer is a small byte-level BPE padded to the vocabulary.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bitnet_models.convert.testing import SHAPES, make_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="2b4t", help="preset shape (default 2b4t)")
    p.add_argument("--mode", choices=("online", "offline"), default="online", help="quantization_mode (default online)")
    p.add_argument("--dtype", choices=("bf16", "f32", "f16"), default="bf16", help="float dtype (default bf16)")
    p.add_argument("--family", choices=("transformers-bitnet", "1bitllm"), default="transformers-bitnet")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", required=True, help="checkpoint folder to write")
    a = p.parse_args(argv)
    if a.family == "1bitllm" and a.mode == "offline":
        print("error: 1bitLLM checkpoints hold float master weights; use --mode online", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    out = make_checkpoint(Path(a.output), SHAPES[a.shape], mode=a.mode, family=a.family, seed=a.seed,
                          dtype=a.dtype.upper())
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out}: {size:,} bytes, {a.shape} {a.family} {a.mode} {a.dtype}, {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
