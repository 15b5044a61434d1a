"""llama.cpp (llama-cpp-python 0.3.36) loads and evaluates the synthetic `bitnet`-arch files we write."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.full

TOOLS = Path(__file__).resolve().parents[3] / "tools"


def _tool():
    spec = importlib.util.spec_from_file_location("_tools_make_synthetic_model", TOOLS / "make_synthetic_model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    msm = _tool()
    d = tmp_path_factory.mktemp("llama")
    return {q: msm.make_model(d / f"tiny-{q}.gguf", msm.SHAPES["tiny"], q, arch="bitnet", seed=11)
            for q in ("tq2_0", "tq1_0", "f32", "f16")}


def _run(path: Path):
    from llama_cpp import Llama

    m = Llama(model_path=str(path), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    toks = m.tokenize(b"the cat sat on the mat")
    m.eval(toks)
    logits = np.array(m.scores[: m.n_tokens], dtype=np.float32)
    return m, toks, logits


@pytest.mark.parametrize("quant", ["tq2_0", "tq1_0", "f32", "f16"])
def test_llama_cpp_loads_and_evaluates(files, quant):
    m, toks, logits = _run(files[quant])
    assert m.n_vocab() == 1256 and m.token_bos() == 1000 and m.token_eos() == 1001
    assert toks[0] == 1000  # add_bos
    assert m.detokenize(toks[1:]) == b"the cat sat on the mat"
    assert logits.shape == (len(toks), 1256) and np.isfinite(logits).all() and logits.std() > 0.1


def test_same_ternary_values_give_the_same_logits(files):
    # TQ1_0 and TQ2_0 hold identical values and go through the same Q8_K matmul: identical logits.
    _, _, l2 = _run(files["tq2_0"])
    _, _, l1 = _run(files["tq1_0"])
    assert np.array_equal(l1, l2)
    # F32 weights skip activation quantization: close, not equal (spec §5)
    _, _, lf = _run(files["f32"])
    rel = np.abs(lf - l2).max() / np.abs(lf).max()
    assert 0 < rel < 0.1


def test_merges_are_used_by_llama_cpp(files):
    from llama_cpp import Llama

    m = Llama(model_path=str(files["tq2_0"]), n_ctx=64, n_threads=1, verbose=False)
    # the dense family makes "eta" a token of its own: BPE must merge the three bytes into one token
    ids = m.tokenize(b"eta", add_bos=False)
    assert len(ids) < 3
    assert m.detokenize(ids) == b"eta"
