"""Full tier: llama.cpp's own tokenizer test vectors, and a differential test against llama-cpp-python.

The vocabularies (models/ggml-vocab-*.gguf with .inp/.out cases) come from the llama-cpp-python sdist on PyPI,
fetched and cached by tools/fetch_llama_vocabs.py, which this module runs itself.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest
from bitnet_models import read_gguf
from bitnet_tokenizers import load_tokenizer
from bitnet_tokenizers.testing import generate_strings

pytestmark = pytest.mark.full

ROOT = Path(__file__).resolve().parents[3]
SEP = "\n__ggml_vocab_test__\n"
N_DIFF = 10_000  # generated strings per vocabulary in the differential test


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "fetch_llama_vocabs.py")], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


def _cases(gguf: Path) -> list[tuple[str, list[int]]]:
    """The .inp/.out pairs, read the way llama.cpp's test-tokenizer-0 reads them."""
    raw = gguf.with_name(gguf.name + ".inp").read_bytes().decode("utf-8")
    inputs = raw.split(SEP)
    if raw.endswith(SEP):
        inputs = inputs[:-1]
    outputs = gguf.with_name(gguf.name + ".out").read_bytes().decode("utf-8").split("\n")[: len(inputs)]
    assert len(outputs) == len(inputs)
    return [(i, [int(t) for t in o.split()]) for i, o in zip(inputs, outputs)]


def _load(path: Path):
    with read_gguf(path) as f:
        return load_tokenizer(f)


VOCABS = ["bert-bge", "command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "gpt-2", "llama-bpe",
          "llama-spm", "mpt", "phi-3", "qwen2", "qwen35", "refact", "starcoder"]


def test_all_test_vocabularies_are_covered(vocab_dir):
    have = sorted(p.name[len("ggml-vocab-"):-len(".gguf.inp")] for p in vocab_dir.glob("ggml-vocab-*.gguf.inp"))
    assert have == VOCABS
    assert sum(len(_cases(vocab_dir / f"ggml-vocab-{v}.gguf")) for v in VOCABS) == 694


@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_test_vectors(vocab_dir, name):
    gguf = vocab_dir / f"ggml-vocab-{name}.gguf"
    tok = _load(gguf)
    cases = _cases(gguf)
    wrong = [(text, want, got) for text, want in cases if (got := tok.encode(text, add_bos=False)) != want]
    assert wrong == [], f"{len(wrong)}/{len(cases)} cases differ; first: {wrong[0]!r}"


# ---- differential test against llama-cpp-python


def _llama(path: Path):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def _detokenize(llm, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
    import llama_cpp

    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    buf = ctypes.create_string_buffer(len(ids) * 64 + 64)
    n = llama_cpp.llama_detokenize(llm._model.vocab, arr, len(ids), buf, len(buf), remove_special, unparse_special)
    assert n >= 0
    return buf.raw[:n]


def _differential(path: Path, n: int, seed: int) -> dict:
    llm = _llama(path)
    tok = _load(path)
    stats = dict(strings=0, compared=0, identical=0, decoded_same=0, round_trips=0, round_trip_ok=0, failures=[])
    for s in generate_strings(n, seed=seed):
        stats["strings"] += 1
        b = s.encode("utf-8")
        for add_special, parse_special in ((False, False), (True, False), (False, True)):
            want = llm.tokenize(b, add_bos=add_special, special=parse_special)
            got = tok.encode(s, add_bos=None if add_special else False, parse_special=parse_special)
            stats["compared"] += 1
            if got == want:
                stats["identical"] += 1
            elif len(stats["failures"]) < 5:
                stats["failures"].append((s, add_special, parse_special, want, got))
        ids = llm.tokenize(b, add_bos=False, special=False)
        same = all(tok.decode(ids, skip_special=rs).encode("utf-8")
                   == _detokenize(llm, ids, rs, not rs).decode("utf-8", errors="replace").encode("utf-8")
                   for rs in (False, True))
        stats["decoded_same"] += same
        if _detokenize(llm, ids, False, True) == b:  # llama.cpp round-trips this string
            stats["round_trips"] += 1
            stats["round_trip_ok"] += tok.decode(tok.encode(s, add_bos=False)) == s
    return stats


@pytest.mark.parametrize("name", ["llama-spm", "llama-bpe"])
def test_differential_against_llama_cpp(vocab_dir, name):
    st = _differential(vocab_dir / f"ggml-vocab-{name}.gguf", N_DIFF, seed=1)
    print(f"\n{name}: {st['strings']} strings, {st['identical']}/{st['compared']} encodings identical, "
          f"{st['decoded_same']} decodings identical, round trip {st['round_trip_ok']}/{st['round_trips']}")
    assert st["failures"] == []
    assert st["identical"] == st["compared"] == 3 * N_DIFF
    assert st["decoded_same"] == N_DIFF
    assert st["round_trip_ok"] == st["round_trips"] > N_DIFF // 2


def test_differential_fixture_vocab(fixture_vocab_gguf):
    st = _differential(fixture_vocab_gguf, 1000, seed=3)
    assert st["failures"] == [] and st["identical"] == st["compared"]
    assert st["decoded_same"] == st["strings"]


@pytest.mark.parametrize("name", ["phi-3", "qwen2", "gpt-2", "gemma-4", "deepseek-coder"])
def test_differential_other_vocabularies(vocab_dir, name):
    st = _differential(vocab_dir / f"ggml-vocab-{name}.gguf", 500, seed=2)
    assert st["failures"] == [] and st["identical"] == st["compared"]


@pytest.mark.parametrize("name", ["llama-bpe", "llama-spm", "phi-3", "qwen2", "gemma-4", "command-r"])
def test_special_ids_match_llama_cpp(vocab_dir, name):
    import llama_cpp

    path = vocab_dir / f"ggml-vocab-{name}.gguf"
    llm, tok = _llama(path), _load(path)
    v = llm._model.vocab

    def opt(i):
        return None if i < 0 else i

    assert tok.bos_id == opt(llama_cpp.llama_vocab_bos(v))
    assert tok.eos_id == opt(llama_cpp.llama_vocab_eos(v))
    assert tok.eot_id == opt(llama_cpp.llama_vocab_eot(v))
    assert tok.vocab_size == llama_cpp.llama_vocab_n_tokens(v)
    for i in range(tok.vocab_size):
        assert tok.is_eog(i) == bool(llama_cpp.llama_vocab_is_eog(v, i)), i
    buf = ctypes.create_string_buffer(256)
    for i in range(0, tok.vocab_size, max(1, tok.vocab_size // 3000)):
        n = llama_cpp.llama_token_to_piece(v, i, buf, len(buf), 0, True)
        assert tok.token_to_piece(i) == buf.raw[:n], i
