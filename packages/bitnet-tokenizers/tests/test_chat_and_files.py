"""Fast tier: chat templates (file, built-in, sandbox) and tokenizer.model / tokenizer.json overrides."""

from __future__ import annotations

import json

import pytest
from bitnet_models import read_gguf
from bitnet_tokenizers import (
    BUILTIN_TEMPLATES,
    TokenizerError,
    load_tokenizer,
    render_chat,
)
from bitnet_tokenizers.vocab import BYTE_TO_UNICODE

pytestmark = pytest.mark.fast

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi there "}]


def _llama3_md(template: str | None = None) -> dict:
    tokens = [BYTE_TO_UNICODE[b] for b in range(256)] + ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
                                                        "<|start_header_id|>", "<|end_header_id|>"]
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": [1] * 256 + [3] * 5, "tokenizer.ggml.merges": ["a b"],
          "tokenizer.ggml.bos_token_id": 256, "tokenizer.ggml.eos_token_id": 257}
    if template is not None:
        md["tokenizer.chat_template"] = template
    return md


@pytest.fixture
def llama3(tmp_path, make_vocab_gguf):
    with read_gguf(make_vocab_gguf(tmp_path / "v.gguf", _llama3_md())) as f:
        return load_tokenizer(f)


def test_builtin_llama3_template(llama3):
    assert llama3.chat_template is None
    text = llama3.apply_chat_template(MSGS)
    assert text == ("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = llama3.encode(text, parse_special=True)
    assert ids[0] == llama3.bos_id and ids.count(llama3.eot_id) == 2 and ids.count(llama3.bos_id) == 1
    assert not llama3.apply_chat_template(MSGS, add_generation_prompt=False).endswith("\n\n")


def test_builtin_bitnet_template(llama3):
    text = render_chat(llama3, MSGS + [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Q"}],
                       template="bitnet")
    assert text == "System: Be brief.User:  Hi there <|eot_id|>Assistant: Hello.User: Q<|eot_id|>Assistant: "
    assert render_chat(llama3, MSGS[1:], add_generation_prompt=False, template="bitnet") == "User:  Hi there <|eot_id|>"
    assert set(BUILTIN_TEMPLATES) == {"bitnet", "llama3", "plain"}


def test_bitnet_architecture_defaults_to_bitnet_template(tmp_path, make_vocab_gguf):
    with read_gguf(make_vocab_gguf(tmp_path / "b.gguf", _llama3_md(), arch="bitnet-b1.58")) as f:
        tok = load_tokenizer(f)
    assert tok.apply_chat_template(MSGS[1:]) == "User:  Hi there <|eot_id|>Assistant: "


def test_file_template_with_bos_and_raise(tmp_path, make_vocab_gguf):
    tmpl = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}"
            "{% endif %}{{ m['role'] | capitalize }}: {{ m['content'] | trim }}{{ eos_token }}\n{% endfor %}"
            "{% if add_generation_prompt %}Assistant:{% endif %}")
    with read_gguf(make_vocab_gguf(tmp_path / "t.gguf", _llama3_md(tmpl))) as f:
        tok = load_tokenizer(f)
    # the leading BOS text is dropped: encode() adds BOS itself
    assert tok.apply_chat_template(MSGS) == "System: Be brief.<|end_of_text|>\nUser: Hi there<|end_of_text|>\nAssistant:"
    with pytest.raises(TokenizerError, match="chat template: no tools"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(TokenizerError, match="'role' and 'content'"):
        tok.apply_chat_template([{"content": "x"}])


def test_template_is_sandboxed(llama3):
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(TokenizerError, match="failed to render"):
        render_chat(llama3, MSGS, template=evil)
    with pytest.raises(TokenizerError, match="does not parse"):
        render_chat(llama3, MSGS, template="{% for %}")


def test_tokenizer_model_override_matches_gguf(tmp_path, fixture_path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    with read_gguf(fixture_path) as f:
        gguf_tok = load_tokenizer(f)
        md = f.metadata
        m = pb.ModelProto()
        for text, score, typ in zip(md["tokenizer.ggml.tokens"], md["tokenizer.ggml.scores"],
                                    md["tokenizer.ggml.token_type"]):
            p = m.pieces.add()
            p.piece, p.score, p.type = text, float(score), int(typ)
        m.trainer_spec.model_type = pb.TrainerSpec.BPE
        m.normalizer_spec.add_dummy_prefix = True
        path = tmp_path / "tokenizer.model"
        path.write_bytes(m.SerializeToString())
        tok = load_tokenizer(f, str(path))
    for s in ["To be, or not to be", "naïve 😀", "<s>x</s>"]:
        assert tok.encode(s) == gguf_tok.encode(s)
        assert tok.encode(s, parse_special=True) == gguf_tok.encode(s, parse_special=True)


def test_tokenizer_json_override(tmp_path, llama3):
    vocab = {BYTE_TO_UNICODE[b]: b for b in range(256)}
    vocab["Hi"] = 256
    tj = {"model": {"type": "BPE", "vocab": vocab, "merges": [["H", "i"]]},
          "added_tokens": [{"id": 257, "content": "<|eot_id|>", "special": True}],
          "pre_tokenizer": {"type": "Split", "pattern": {"Regex": r"\p{N}{1,3}"}}}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tj))
    with read_gguf(llama3.source) as f:
        tok = load_tokenizer(f, str(path))
    assert tok.encode("Hi<|eot_id|>", add_bos=False, parse_special=True) == [256, 257]
    assert tok.vocab.pre == "llama-bpe" and tok.vocab_size == 258


def test_bad_override_files(tmp_path, llama3):
    with read_gguf(llama3.source) as f:
        with pytest.raises(TokenizerError, match="no such tokenizer file"):
            load_tokenizer(f, str(tmp_path / "missing.model"))
        (tmp_path / "bad.json").write_text("{not json")
        with pytest.raises(TokenizerError, match="not valid JSON"):
            load_tokenizer(f, str(tmp_path / "bad.json"))
        (tmp_path / "u.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": []}}))
        with pytest.raises(TokenizerError, match="supported: byte-level BPE"):
            load_tokenizer(f, str(tmp_path / "u.json"))
        (tmp_path / "bad.model").write_bytes(b"\xff\xff\xff garbage")
        with pytest.raises(TokenizerError, match="SentencePiece"):
            load_tokenizer(f, str(tmp_path / "bad.model"))


def test_plain_template_for_vocabularies_without_chat_tokens():
    from pathlib import Path

    from bitnet_models import read_gguf
    from bitnet_tokenizers import load_tokenizer

    fixture = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "b158-a-i2s.gguf"
    tok = load_tokenizer(read_gguf(fixture))
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi "}])
    assert text == "System: Be brief.\n\nUser: Hi\n\nAssistant:"
