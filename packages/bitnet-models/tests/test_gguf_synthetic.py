"""tools/make_synthetic_model.py: the exact 2B-4T layout, the same weights in every quant type, a consistent BPE."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from bitnet_models.config import ModelConfig
from bitnet_models.gguf import read_gguf
from bitnet_quantization import quant_type

pytestmark = pytest.mark.fast

TOOLS = Path(__file__).resolve().parents[3] / "tools"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_tools_{name}", TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


msm = _load("make_synthetic_model")
vocab_mod = _load("synthetic_vocab")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    return {q: msm.make_model(d / f"tiny-{q}.gguf", msm.SHAPES["tiny"], q, seed=3) for q in msm.QUANTS}


def test_2b4t_layout_without_writing_it():
    s = msm.SHAPES["2b4t"]
    assert (s.hidden, s.layers, s.heads, s.kv_heads, s.ffn, s.vocab) == (2560, 30, 20, 5, 6912, 128256)
    listing = list(msm.tensors(s, "i2_s", seed=0))  # deferred: nothing is generated here
    assert len(listing) == 332
    types = [q for _, _, q in listing]
    assert (types.count("I2_S"), types.count("F32"), types.count("F16")) == (210, 121, 1)
    shapes = {n: tuple(d.shape) for n, d, _ in listing}
    assert shapes["token_embd.weight"] == (128256, 2560) and "output.weight" not in shapes
    assert shapes["blk.0.attn_k.weight"] == (640, 2560) and shapes["blk.29.ffn_down.weight"] == (2560, 6912)
    assert shapes["blk.7.ffn_sub_norm.weight"] == (6912,)
    nbytes = sum(quant_type(q).nbytes(int(np.prod(shapes[n]))) for n, _, q in listing)
    assert nbytes == 1_179_449_920  # tensor data alone; the official file adds ~8 MB of vocabulary and padding


def test_tiny_files_have_the_official_layout(tiny):
    for q, path in tiny.items():
        with read_gguf(path) as f:
            cfg = ModelConfig.from_gguf(f)
            assert cfg.weight_type == q.upper() and cfg.tied_head and not cfg.has_scales
            assert cfg.arch == ("bitnet-b1.58" if q == "i2_s" else "bitnet")
            assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_head_kv, cfg.n_ff) == (256, 2, 4, 1, 768)
            assert f.metadata["general.file_type"] == msm.FILE_TYPES[q]
            assert f.tensors["token_embd.weight"].qtype.name == "F16"
            assert len(f.tensors) == 2 + 2 * 11


def test_every_quant_type_holds_the_same_weights(tiny):
    files = {q: read_gguf(p) for q, p in tiny.items()}
    try:
        for name in files["i2_s"].tensors:
            ref = files["f32"].dequantize(name)
            for q, f in files.items():
                assert np.array_equal(f.dequantize(name), ref), (q, name)
        w = files["f32"].dequantize("blk.0.ffn_up.weight")
        s = np.abs(w).max()
        assert set(np.unique(w / s)) == {-1.0, 0.0, 1.0}
    finally:
        for f in files.values():
            f.close()


def test_seed_changes_weights_and_is_reproducible(tmp_path):
    s = msm.SHAPES["tiny"]
    a = msm.make_model(tmp_path / "a.gguf", s, "i2_s", seed=1)
    b = msm.make_model(tmp_path / "b.gguf", s, "i2_s", seed=1)
    c = msm.make_model(tmp_path / "c.gguf", s, "i2_s", seed=2)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_vocabulary_is_llama3_shaped_and_consistent(tiny):
    with read_gguf(tiny["tq2_0"]) as f:
        md = f.metadata
        toks, merges, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.merges"], md["tokenizer.ggml.token_type"]
        assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "llama-bpe"
        assert len(toks) == 1256 and len(merges) == 1100
        assert md["tokenizer.ggml.bos_token_id"] == 1000 and toks[1000] == "<|begin_of_text|>"
        assert md["tokenizer.ggml.eos_token_id"] == 1001 and toks[1001] == "<|end_of_text|>"
        assert toks[1009] == "<|eot_id|>"
        assert (types[1000:] == 3).all() and (types[:1000] == 1).all()
        v = vocab_mod.Vocab(list(toks), types.tolist(), list(merges), 1000, 1001)
        vocab_mod.check_vocab(v)


def test_full_size_vocabulary_counts():
    v = vocab_mod.make_vocab()  # about a second
    assert len(v.tokens) == 128256 and len(v.merges) == 280147
    assert (v.bos_id, v.eos_id) == (128000, 128001)
    vocab_mod.check_vocab(v)
    assert len(set(v.merges)) == len(v.merges)
    assert all(" " not in t for t in v.tokens[:128000])


def test_bad_shape_is_refused(tmp_path):
    with pytest.raises(msm.ShapeError, match="multiple of 256 for tq2_0"):
        msm.make_model(tmp_path / "x.gguf", dataclasses.replace(msm.SHAPES["tiny"], hidden=384, heads=6), "tq2_0")
    assert msm.main(["--shape", "tiny", "--heads", "3", "-o", str(tmp_path / "y.gguf")]) == 2
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_a_file(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert msm.main(["--shape", "tiny", "--quant", "tq1_0", "--seed", "5", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    with read_gguf(out) as f:
        assert f.tensors["blk.1.attn_q.weight"].qtype.name == "TQ1_0"
