"""Shared helpers for the bitnet-tokenizers tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "b158-a-i2s.gguf"
DATA = Path(__file__).resolve().parent / "data"


def write_vocab_gguf(path: Path, md: dict, arch: str = "llama") -> Path:
    """A vocabulary-only GGUF (llama hyperparameters so llama.cpp can open it with vocab_only)."""
    from bitnet_models import write_gguf

    out = dict(md)
    out["tokenizer.ggml.tokens"] = list(out["tokenizer.ggml.tokens"])
    if "tokenizer.ggml.scores" in out:
        out["tokenizer.ggml.scores"] = np.asarray(out["tokenizer.ggml.scores"], dtype=np.float32)
    if "tokenizer.ggml.token_type" in out:
        out["tokenizer.ggml.token_type"] = np.asarray(out["tokenizer.ggml.token_type"], dtype=np.int32)
    if "tokenizer.ggml.merges" in out:
        out["tokenizer.ggml.merges"] = list(out["tokenizer.ggml.merges"])
    n = len(out["tokenizer.ggml.tokens"])
    out.setdefault("general.name", "vocab")
    out.update({f"{arch}.block_count": 1, f"{arch}.context_length": 128, f"{arch}.embedding_length": 64,
                f"{arch}.feed_forward_length": 128, f"{arch}.attention.head_count": 1,
                f"{arch}.attention.head_count_kv": 1, f"{arch}.attention.layer_norm_rms_epsilon": np.float32(1e-5),
                f"{arch}.vocab_size": n, f"{arch}.rope.dimension_count": 64})
    write_gguf(path, arch, out, [])
    return path


@pytest.fixture(scope="session")
def fixture_vocab_gguf(tmp_path_factory) -> Path:
    """The bitnet fixture's SentencePiece vocabulary as a llama-arch vocab-only GGUF."""
    from bitnet_models import read_gguf

    with read_gguf(FIXTURE) as f:
        md = {k: v for k, v in f.metadata.items() if k.startswith("tokenizer.")}
    return write_vocab_gguf(tmp_path_factory.mktemp("vocab") / "fixture-vocab.gguf", md)


@pytest.fixture(scope="session")
def make_vocab_gguf():
    return write_vocab_gguf


@pytest.fixture(scope="session")
def fixture_path() -> Path:
    return FIXTURE


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA
