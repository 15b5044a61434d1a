"""The mock model: a small deterministic synthetic GGUF, written once through the real writer into the cache.

It is an ordinary `bitnet-b1.58` file (I2_S layer matrices, tied F16 embedding, F32 norms, a SentencePiece-style
`llama` vocabulary like the bitnet.cpp fixtures'), so it goes through the same reader, tokenizer and engine as a real
model: there is no separate fake code path. Its weights are random, so its text is meaningless.

The file name carries MOCK_VERSION: change the version whenever the recipe below changes, and a new file is made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bitnet_quantization import i2s_pack

from bitnet_models.gguf import RawTensor, read_gguf, write_gguf

MOCK_VERSION = "v1"
MOCK_NAME = f"bitnet-mock-{MOCK_VERSION}"
ARCH = "bitnet-b1.58"

# (hidden, layers, heads, kv heads, FFN, vocab, context): every matrix dimension a multiple of 128 (I2_S blocks)
N_EMBD, N_LAYER, N_HEAD, N_HEAD_KV, N_FF, N_VOCAB, N_CTX = 128, 2, 4, 2, 384, 512, 512
SEED = 20240417

# llama.cpp token types
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


def mock_model_path(cache_dir: str | Path) -> Path:
    """The mock model's path in `cache_dir`, writing it first if it is not there (or is damaged)."""
    path = Path(cache_dir) / "mock" / f"{MOCK_NAME}.gguf"
    if path.is_file() and _is_intact(path):
        return path
    return write_mock_model(path)


def _is_intact(path: Path) -> bool:
    try:
        with read_gguf(path) as f:
            return f.metadata.get("general.name") == MOCK_NAME and len(f.tensors) == 2 + 11 * N_LAYER
    except Exception:  # any damage means "write it again"
        return False


def mock_vocab() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(pieces, scores, token types): <unk>, <s>, </s>, the 256 byte tokens, then filler pieces ▁t0, ▁t1, ..."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    n_fill = N_VOCAB - len(pieces)
    pieces += [f"\u2581t{i}" for i in range(n_fill)]
    scores = np.zeros(N_VOCAB, np.float32)
    scores[259:] = -np.arange(n_fill, dtype=np.float32)
    types = np.full(N_VOCAB, _NORMAL, np.int32)
    types[0] = _UNKNOWN
    types[1:3] = _CONTROL
    types[3:259] = _BYTE
    return pieces, scores, types


def mock_metadata() -> dict:
    pieces, scores, types = mock_vocab()
    a = ARCH
    return {
        "general.name": MOCK_NAME,
        "general.description": "bitnet-py mock model: random ternary weights, for tests only",
        "general.file_type": 40,
        f"{a}.vocab_size": N_VOCAB,
        f"{a}.context_length": N_CTX,
        f"{a}.embedding_length": N_EMBD,
        f"{a}.block_count": N_LAYER,
        f"{a}.feed_forward_length": N_FF,
        f"{a}.rope.dimension_count": N_EMBD // N_HEAD,
        f"{a}.attention.head_count": N_HEAD,
        f"{a}.attention.head_count_kv": N_HEAD_KV,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{a}.rope.freq_base": 500000.0,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": pieces,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    }


def mock_tensors() -> list[tuple[str, object, str]]:
    """The tensors in file order, from one seeded generator (so the bytes never change for a version)."""
    rng = np.random.default_rng(SEED)
    head_dim = N_EMBD // N_HEAD
    kv = N_HEAD_KV * head_dim

    def ternary(out: int, inp: int) -> RawTensor:
        q = rng.choice(np.array([-1, 0, 1], np.int8), size=(out, inp), p=[0.3, 0.4, 0.3])
        scale = float(rng.uniform(0.5, 1.5))
        return RawTensor(i2s_pack(q, scale), (out, inp))

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    out: list[tuple[str, object, str]] = [
        ("token_embd.weight", (0.1 * rng.standard_normal((N_VOCAB, N_EMBD))).astype(np.float16), "F16"),
        ("output_norm.weight", norm(N_EMBD), "F32"),
    ]
    for i in range(N_LAYER):
        b = f"blk.{i}"
        out += [
            (f"{b}.attn_norm.weight", norm(N_EMBD), "F32"),
            (f"{b}.attn_q.weight", ternary(N_EMBD, N_EMBD), "I2_S"),
            (f"{b}.attn_k.weight", ternary(kv, N_EMBD), "I2_S"),
            (f"{b}.attn_v.weight", ternary(kv, N_EMBD), "I2_S"),
            (f"{b}.attn_sub_norm.weight", norm(N_EMBD), "F32"),
            (f"{b}.attn_output.weight", ternary(N_EMBD, N_EMBD), "I2_S"),
            (f"{b}.ffn_norm.weight", norm(N_EMBD), "F32"),
            (f"{b}.ffn_gate.weight", ternary(N_FF, N_EMBD), "I2_S"),
            (f"{b}.ffn_up.weight", ternary(N_FF, N_EMBD), "I2_S"),
            (f"{b}.ffn_sub_norm.weight", norm(N_FF), "F32"),
            (f"{b}.ffn_down.weight", ternary(N_EMBD, N_FF), "I2_S"),
        ]
    return out


def write_mock_model(path: str | Path) -> Path:
    """Write the mock model to `path` (atomically: the writer renames a complete temporary file into place)."""
    return write_gguf(path, ARCH, mock_metadata(), mock_tensors())
