"""Fast tier: the tokenizer on the bitnet fixture's SentencePiece vocabulary (against ids llama.cpp produced,
stored in data/) and on a small synthetic byte-level BPE vocabulary built here; decoding, streaming, errors."""

from __future__ import annotations

import json

import pytest
from bitnet_models import read_gguf
from bitnet_tokenizers import (
    IncrementalDetokenizer,
    MockTokenizer,
    TokenizerError,
    load_tokenizer,
)
from bitnet_tokenizers.vocab import BYTE_TO_UNICODE

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def spm(fixture_path):
    with read_gguf(fixture_path) as f:
        return load_tokenizer(f)


def test_fixture_prompt_matches_llama_cpp(spm):
    # llama-cli printed "▁To▁be,▁or▁not▁to▁be" for this prompt: BOS, then '▁' as three byte tokens, ...
    ids = spm.encode("To be, or not to be")
    assert ids[:6] == [1, 229, 153, 132, 87, 114]
    assert spm.kind == "spm" and spm.bos_id == 1 and spm.eos_id == 2 and spm.vocab_size == 4096
    # the vocabulary has no '▁' piece, so the spaces travel as the bytes of '▁' and come back as '▁' (this is
    # what llama-cli printed: the prompt shown in tests/fixtures/b158-a-i2s.greedy.txt)
    assert spm.decode(ids[1:]) == "▁To▁be,▁or▁not▁to▁be"


def test_fixture_vocab_against_llama_cpp_ids(spm, data_dir):
    cases = json.loads((data_dir / "fixture_vocab_llama_cpp.json").read_text())["cases"]
    assert len(cases) >= 300
    bad = []
    for c in cases:
        got = (spm.encode(c["text"]), spm.encode(c["text"], add_bos=False),
               spm.encode(c["text"], add_bos=False, parse_special=True))
        if got != (c["ids"], c["ids_nobos"], c["ids_special"]):
            bad.append(c["text"])
    assert bad == []


def test_spm_special_text_and_round_trip(spm):
    assert spm.encode("<s>", add_bos=False, parse_special=True) == [1]
    assert spm.encode("<s>", add_bos=False) != [1]
    for s in ["Hello world", "  two spaces", "tabs\tand\nnewlines", "ünïcödé 😀"]:
        assert spm.decode(spm.encode(s, add_bos=False)) == "▁" + s.replace(" ", "▁")
    assert spm.decode([1, 2], skip_special=True) == ""
    assert spm.decode([1]) == "<s>"
    assert spm.is_eog(2) and not spm.is_eog(1)


# ---- a synthetic byte-level BPE vocabulary (LLaMA-3 pre-tokenizer)

MERGES = ["H e", "l l", "He ll", "Hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "1 2", "3 4"]


def _bpe_md(pre: str = "llama-bpe") -> dict:
    tokens = [BYTE_TO_UNICODE[b] for b in range(256)]
    for m in MERGES:
        a, b = m.split(" ")
        tokens.append(a + b)
    tokens += ["Ġxyz", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|tag|>"]
    n = len(tokens)
    types = [1] * n
    for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"):
        types[tokens.index(t)] = 3
    types[tokens.index("<|tag|>")] = 4
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": MERGES,
            "tokenizer.ggml.bos_token_id": tokens.index("<|begin_of_text|>"),
            "tokenizer.ggml.eos_token_id": tokens.index("<|end_of_text|>")}


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory, make_vocab_gguf):
    return make_vocab_gguf(tmp_path_factory.mktemp("bpe") / "bpe.gguf", _bpe_md())


@pytest.fixture(scope="module")
def bpe(bpe_path):
    with read_gguf(bpe_path) as f:
        return load_tokenizer(f)


def _id(tok, text):
    return tok.vocab.token_to_id[text]


def test_bpe_merges_and_bos(bpe):
    bos = _id(bpe, "<|begin_of_text|>")
    assert bpe.kind == "bpe"
    assert bpe.encode("Hello world") == [bos, _id(bpe, "Hello"), _id(bpe, "Ġworld")]
    assert bpe.encode("Hello world", add_bos=False) == [_id(bpe, "Hello"), _id(bpe, "Ġworld")]
    assert bpe.eot_id == _id(bpe, "<|eot_id|>") and bpe.is_eog(bpe.eot_id) and bpe.is_eog(bpe.eos_id)


def test_bpe_digits_split_in_threes(bpe):
    # LLaMA-3 splits digit runs into groups of up to three before merging: "1234" -> "123" "4" -> "12" "3" "4"
    assert bpe.encode("1234", add_bos=False) == [_id(bpe, "12"), _id(bpe, "3"), _id(bpe, "4")]


def test_bpe_ignore_merges(bpe, tmp_path, make_vocab_gguf):
    # llama-bpe takes a pre-token that is itself a token whole; gpt-2 has to reach it by merges (there are none)
    assert bpe.encode(" xyz", add_bos=False) == [_id(bpe, "Ġxyz")]
    with read_gguf(make_vocab_gguf(tmp_path / "g.gguf", _bpe_md("gpt-2"))) as f:
        gpt2 = load_tokenizer(f)
    assert gpt2.encode(" xyz", add_bos=False) == [_id(gpt2, c) for c in ("Ġ", "x", "y", "z")]
    assert gpt2.encode("x") == [_id(gpt2, "x")]  # gpt-2 adds no BOS


def test_bpe_special_tokens(bpe):
    eot, tag = _id(bpe, "<|eot_id|>"), _id(bpe, "<|tag|>")
    assert bpe.encode("Hello<|eot_id|>", add_bos=False, parse_special=True) == [_id(bpe, "Hello"), eot]
    plain = bpe.encode("Hello<|eot_id|>", add_bos=False)
    assert eot not in plain and plain[0] == _id(bpe, "Hello")
    # user-defined tokens are split off even without parse_special (as llama.cpp does)
    assert bpe.encode("Hello<|tag|>", add_bos=False) == [_id(bpe, "Hello"), tag]


def test_bpe_decode(bpe):
    ids = bpe.encode("Hello world ünï 😀", add_bos=False)
    assert bpe.decode(ids) == "Hello world ünï 😀"
    assert bpe.decode(bpe.encode("Hello ?", add_bos=False)) == "Hello?"  # llama.cpp's clean_spaces
    assert bpe.token_to_piece(_id(bpe, "Ġworld")) == b" world"
    assert bpe.decode([bpe.bos_id] + ids, skip_special=True) == "Hello world ünï 😀"


def test_incremental_detokenizer_never_splits_utf8(bpe):
    text = "é😀 ok"
    ids = bpe.encode(text, add_bos=False)
    det = IncrementalDetokenizer(bpe)
    parts = [det.add(i) for i in ids] + [det.flush()]
    assert "".join(parts) == text
    for p in parts:
        assert "\ufffd" not in p
    # the four bytes of 😀 arrive one token each: nothing is printed until the last one
    emoji = [_id(bpe, BYTE_TO_UNICODE[b]) for b in "😀".encode()]
    det = IncrementalDetokenizer(bpe)
    assert [det.add(i) for i in emoji] == ["", "", "", "😀"]
    assert det.add(bpe.eos_id) == "" and det.flush() == ""


def test_cli_tokenize(bpe_path, capsys):
    from bitnet.cli import main

    assert main(["tokenize", "-m", str(bpe_path), "-p", "Hello world", "--ids"]) == 0
    out = capsys.readouterr().out
    with read_gguf(bpe_path) as f:
        tok = load_tokenizer(f)
    assert out == f"[{', '.join(map(str, tok.encode('Hello world')))}]\n"
    assert main(["tokenize", "-m", str(bpe_path), "-p", "Hello world", "--no-bos"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" -> ")[1] for ln in lines] == ["'Hello'", "' world'"]


# ---- errors and the mock


def test_missing_and_unsupported_tokenizers(tmp_path, make_vocab_gguf):
    from bitnet_tokenizers.vocab import vocab_from_metadata

    with pytest.raises(TokenizerError, match="no tokenizer.ggml.model.*supported tokenizer models are 'llama'"):
        vocab_from_metadata({}, "x.gguf")
    with pytest.raises(TokenizerError, match="'rwkv', which is not supported"):
        vocab_from_metadata({"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]}, "x.gguf")
    md = _bpe_md("no-such-pre")
    with read_gguf(make_vocab_gguf(tmp_path / "p.gguf", md)) as f, \
            pytest.raises(TokenizerError, match="tokenizer.ggml.pre 'no-such-pre'.*supported pre-tokenizers: .*llama-bpe"):
        load_tokenizer(f)


def test_invalid_unicode_is_a_typed_error(spm, bpe):
    for tok in (spm, bpe):
        with pytest.raises(TokenizerError, match="not valid Unicode"):
            tok.encode("a\udc80b")


def test_cli_error_is_one_line(tmp_path, capsys):
    from bitnet_models import write_gguf

    from bitnet.cli import main

    path = write_gguf(tmp_path / "none.gguf", "llama", {"general.name": "x"}, [])
    assert main(["tokenize", "-m", str(path), "-p", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "tokenizer.ggml.model" in err[0]


def test_mock_tokenizer_says_so(capsys):
    tok = MockTokenizer()
    assert "mock tokenizer" in capsys.readouterr().err
    ids = tok.encode("hé")
    assert ids[0] == tok.bos_id and tok.decode(ids, skip_special=True) == "hé"
    assert tok.kind == "mock" and tok.is_eog(tok.eos_id)
