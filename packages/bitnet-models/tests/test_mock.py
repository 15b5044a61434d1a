"""The mock model: an ordinary, deterministic bitnet-b1.58 GGUF made by the real writer, cached and reused."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from bitnet_models import ModelConfig, read_gguf
from bitnet_models.mock import MOCK_NAME, N_VOCAB, mock_model_path, mock_vocab

pytestmark = pytest.mark.fast


def test_mock_is_a_runnable_bitnet_b158_model(tmp_path):
    p = mock_model_path(tmp_path)
    assert p == tmp_path / "mock" / f"{MOCK_NAME}.gguf"
    with read_gguf(p) as f:
        cfg = ModelConfig.from_gguf(f)
        assert (cfg.arch, cfg.weight_type, cfg.tied_head, cfg.ffn_act) == ("bitnet-b1.58", "I2_S", True, "relu2")
        assert f.tensors["token_embd.weight"].qtype.name == "F16"
        assert cfg.n_vocab == N_VOCAB and cfg.n_embd % 128 == 0 and cfg.n_ff % 128 == 0
        md = f.metadata
        assert md["tokenizer.ggml.model"] == "llama"
        toks = md["tokenizer.ggml.tokens"]
        assert toks[:3] == ["<unk>", "<s>", "</s>"]
        assert toks[3] == "<0x00>" and toks[258] == "<0xFF>" and toks[259] == "\u2581t0"
        types = np.asarray(md["tokenizer.ggml.token_type"])
        assert types[0] == 2 and list(types[1:3]) == [3, 3] and (types[3:259] == 6).all() and (types[259:] == 1).all()
        scores = np.asarray(md["tokenizer.ggml.scores"])
        assert scores[260] == -1.0 and scores[-1] == -(N_VOCAB - 260)
        assert (md["tokenizer.ggml.bos_token_id"], md["tokenizer.ggml.eos_token_id"]) == (1, 2)
        w = f.dequantize("blk.0.ffn_down.weight")
        assert set(np.unique(np.sign(w))) == {-1.0, 0.0, 1.0}  # ternary, a real I2_S scale


def test_mock_is_deterministic_across_caches(tmp_path):
    a = mock_model_path(tmp_path / "a").read_bytes()
    b = mock_model_path(tmp_path / "b").read_bytes()
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()


def test_mock_is_written_once_and_reused(tmp_path):
    p = mock_model_path(tmp_path)
    os.utime(p, (1_000_000, 1_000_000))
    assert mock_model_path(tmp_path) == p
    assert p.stat().st_mtime == 1_000_000  # not rewritten
    assert [x.name for x in p.parent.iterdir()] == [p.name]  # no temporary file left behind


def test_damaged_mock_is_rewritten(tmp_path):
    p = mock_model_path(tmp_path)
    good = p.read_bytes()
    p.write_bytes(good[:100])
    assert mock_model_path(tmp_path).read_bytes() == good


def test_vocab_sizes_agree():
    pieces, scores, types = mock_vocab()
    assert len(pieces) == len(scores) == len(types) == N_VOCAB == len(set(pieces))
