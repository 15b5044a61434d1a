"""The shipped tiny BitNet b1.58 (bitnet_models/data), the embedded default: the standard tier.

Reference figures (docs/shipped-model.md): the training framework's own evaluation of the same quantized model on
the same Macbeth tokens (chunks of 256, second halves scored) gives PPL 44.713.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.standard
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "packages" / "bitnet-models" / "src" / "bitnet_models" / "data"
MACBETH = ROOT / "tests" / "fixtures" / "macbeth.txt"
TRAINING_FRAMEWORK_PPL = 44.713


def bitnet(*args, cwd, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITNET_")}
    env["BITNET_CACHE"] = str(Path(cwd) / "cache")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "bitnet.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_generate_uses_the_embedded_model(tmp_path):
    r = bitnet("generate", "-p", "ROMEO:", "-n", "24", "--temp", "0", cwd=tmp_path,
               env_extra={"BITNET_MODEL_STRATEGY": "force_real"})
    assert r.returncode == 0, r.stderr
    assert "(from embedded)" in r.stderr and "bitnet-b1.58-tiny-i2_s.gguf" in r.stderr
    words = r.stdout.split()
    assert len(words) >= 10 and sum(w.isalpha() for w in words) >= len(words) // 2  # real words, not bytes


def test_perplexity_matches_the_training_framework(tmp_path):
    r = bitnet("perplexity", "-f", str(MACBETH), "-c", "256", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = [l for l in r.stdout.splitlines() if l.startswith("Final estimate")][0]
    ppl = float(line.split("=")[1].split()[0])
    assert abs(ppl / TRAINING_FRAMEWORK_PPL - 1) < 0.01, ppl


def test_tq2_0_variant_agrees_with_i2s():
    from bitnet_inference import Model

    toks = np.array([1, 40, 500, 77, 901, 33, 12, 1500, 60, 7])
    a = Model(DATA / "bitnet-b1.58-tiny-i2_s.gguf").forward(toks, 0)
    b = Model(DATA / "variants" / "bitnet-b1.58-tiny-tq2_0.gguf").forward(toks, 0)
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.9
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_chat_with_builtin_template(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bitnet.cli", "chat", "-n", "16", "--temp", "0"], cwd=tmp_path,
                       input="Who art thou?\n", capture_output=True, text=True, timeout=600,
                       env={**os.environ, "BITNET_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
