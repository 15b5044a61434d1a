"""`bitnet convert` without torch: checkpoints made with numpy (bitnet_models.convert.testing), converted and read
back. Layout and metadata against the official bitnet.cpp file, every weight value against the ternarization
formula, offline == online byte for byte, the tokenizer against the tokenizers/sentencepiece libraries, and every
refusal as one typed error with nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bitnet_models import read_gguf
from bitnet_models.convert import (
    CheckpointError,
    ConvertError,
    QuantizationError,
    UnsupportedModelError,
    convert,
)
from bitnet_models.convert.packing import ternarize, unpack_offline
from bitnet_models.convert.safetensors import Checkpoint
from bitnet_models.convert.testing import SHAPES, Shape, Spec, make_checkpoint, pack_offline, write_safetensors
from bitnet_quantization import i2s_scale, i2s_unpack_codes, tq1_0_decode, tq2_0_decode

pytestmark = pytest.mark.fast

FIXTURE = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "b158-a-i2s.gguf"
OUTTYPES = ("i2_s", "tq2_0", "tq1_0", "f16", "f32")
MATS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj"}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    return {
        "online": make_checkpoint(d / "online", mode="online"),
        "offline": make_checkpoint(d / "offline", mode="offline"),
        "bitlinear": make_checkpoint(d / "bitlinear", mode="offline", linear_class="bitlinear"),
        "bf16": make_checkpoint(d / "bf16", mode="online", dtype="BF16"),
        "bf16-offline": make_checkpoint(d / "bf16-offline", mode="offline", dtype="BF16"),
        "1bitllm": make_checkpoint(d / "1bitllm", family="1bitllm"),
    }


@pytest.fixture(scope="module")
def converted(ckpts, tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    return {(k, o): convert(ckpts[k], d / f"{k}-{o}.gguf", o).path
            for k in ("online", "offline", "bitlinear", "bf16", "bf16-offline") for o in OUTTYPES}


def _layer_pattern(names):
    return [n.split(".", 2)[2] if n.startswith("blk.0.") else n for n in names if not n.startswith("blk.") or
            n.startswith("blk.0.")]


# -- layout and metadata ----------------------------------------------------------------------------------------

def test_i2s_layout_matches_the_official_file(converted):
    ref = read_gguf(FIXTURE)
    f = read_gguf(converted["online", "i2_s"])
    assert f.architecture == "bitnet-b1.58"
    assert _layer_pattern(f.tensors) == _layer_pattern(ref.tensors)  # same names, same order
    for name, info in f.tensors.items():
        ref_name = name if not name.startswith("blk.") else "blk.0." + name.split(".", 2)[2]
        assert info.qtype.name == ref.tensors[ref_name].qtype.name, name
    assert "output.weight" not in f.tensors
    assert len(f.tensors) == 2 + 11 * SHAPES["tiny"].layers
    model_keys = {k for k in ref.metadata if not k.startswith(("tokenizer.", "GGUF."))}
    ours = {k for k in f.metadata if not k.startswith(("tokenizer.", "GGUF."))}
    assert ours == model_keys | {"general.quantization_version"}
    s = SHAPES["tiny"]
    md = f.metadata
    assert md["general.file_type"] == 40
    assert (md["bitnet-b1.58.embedding_length"], md["bitnet-b1.58.block_count"], md["bitnet-b1.58.feed_forward_length"],
            md["bitnet-b1.58.attention.head_count"], md["bitnet-b1.58.attention.head_count_kv"],
            md["bitnet-b1.58.rope.dimension_count"], md["bitnet-b1.58.context_length"],
            md["bitnet-b1.58.vocab_size"]) == (s.hidden, s.layers, s.ffn, s.heads, s.kv_heads, s.hidden // s.heads,
                                               s.ctx, s.vocab)
    assert md["bitnet-b1.58.rope.freq_base"] == s.rope_theta
    assert md["bitnet-b1.58.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)


@pytest.mark.parametrize("outtype,wtype,etype,ftype", [("tq2_0", "TQ2_0", "F16", 37), ("tq1_0", "TQ1_0", "F16", 36),
                                                       ("f16", "F16", "F16", 1), ("f32", "F32", "F32", 0)])
def test_other_output_types(converted, outtype, wtype, etype, ftype):
    f = read_gguf(converted["online", outtype])
    assert f.metadata["general.file_type"] == ftype
    assert f.tensors["blk.1.ffn_down.weight"].qtype.name == wtype
    assert f.tensors["token_embd.weight"].qtype.name == etype
    assert f.tensors["blk.1.ffn_sub_norm.weight"].qtype.name == "F32"


# -- values -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("outtype", OUTTYPES)
def test_weights_are_the_ternarized_master_weights(ckpts, converted, outtype):
    ck = Checkpoint(ckpts["online"])
    f = read_gguf(converted["online", outtype])
    for gg, hf in MATS.items():
        name = f"blk.1.{gg}.weight"
        q, scale = ternarize(ck.float32(f"model.layers.1.{hf}.weight"))
        n = q.size
        raw = f.raw(name)
        if outtype == "i2_s":
            assert np.array_equal(i2s_unpack_codes(raw, n).reshape(q.shape), q)
            assert i2s_scale(raw, n) == scale
        elif outtype in ("tq2_0", "tq1_0"):
            dec = (tq2_0_decode if outtype == "tq2_0" else tq1_0_decode)(raw).reshape(q.shape)
            assert np.array_equal(dec, q * np.float32(np.float16(scale)))
        else:
            want = q * scale
            assert np.array_equal(f.dequantize(name).reshape(q.shape),
                                  want.astype(np.float16).astype(np.float32) if outtype == "f16" else want)
    assert np.array_equal(f.dequantize("token_embd.weight"), ck.float32("model.embed_tokens.weight"))
    assert np.array_equal(f.array("blk.0.ffn_sub_norm.weight"), ck.float32("model.layers.0.mlp.ffn_sub_norm.weight"))
    assert np.array_equal(f.array("output_norm.weight"), ck.float32("model.norm.weight"))


def test_ternarize_is_transformers_weight_quant():
    w = np.random.default_rng(1).standard_normal((64, 128)).astype(np.float32)
    q, scale = ternarize(w)
    s = np.float32(1) / np.float32(np.abs(w).mean(dtype=np.float64))  # the correctly rounded mean
    assert np.array_equal(q, np.clip(np.rint(w * s), -1, 1))
    assert scale == np.float32(1) / s
    assert set(np.unique(q)) == {-1, 0, 1}


@pytest.mark.parametrize("kind", ["offline", "bitlinear"])
@pytest.mark.parametrize("outtype", OUTTYPES)
def test_offline_checkpoint_converts_to_the_same_bytes_as_online(converted, kind, outtype):
    a, b = read_gguf(converted["online", outtype]), read_gguf(converted[kind, outtype])
    assert list(a.tensors) == list(b.tensors)
    for n in a.tensors:
        assert np.array_equal(a.raw(n), b.raw(n)), n


def test_bf16_offline_equals_bf16_online_up_to_the_bf16_scale(converted):
    """A bf16 offline checkpoint stores weight_scale in bf16: same ternary codes, scale rounded to bf16."""
    a, b = read_gguf(converted["bf16", "i2_s"]), read_gguf(converted["bf16-offline", "i2_s"])
    for n, info in a.tensors.items():
        if info.qtype.name != "I2_S":
            assert np.array_equal(a.raw(n), b.raw(n)), n
            continue
        size = int(np.prod(info.shape))
        assert np.array_equal(i2s_unpack_codes(a.raw(n), size), i2s_unpack_codes(b.raw(n), size)), n
        bits = np.array([i2s_scale(a.raw(n), size)], np.float32)
        from bitnet_models.convert.testing import to_bf16_bits

        assert i2s_scale(b.raw(n), size) == (to_bf16_bits(bits).astype(np.uint32) << 16).view(np.float32)[0], n


def test_bf16_is_widened_exactly(ckpts):
    ck = Checkpoint(ckpts["bf16"])
    bits = ck.raw("model.norm.weight")
    assert bits.dtype == np.uint16
    assert np.array_equal(ck.float32("model.norm.weight").view(np.uint32), bits.astype(np.uint32) << 16)
    assert np.array_equal(ck.rows_float32("model.embed_tokens.weight", 3, 9), ck.float32("model.embed_tokens.weight")[3:9])


def test_offline_packing_round_trip():
    q = (np.random.default_rng(2).integers(0, 3, (16, 8)) - 1).astype(np.int8)
    packed = pack_offline(q)
    assert packed.shape == (4, 8)
    # row r, bits 2i..2i+1 hold output row i*4 + r as q + 1
    assert (packed[1, 0] >> 4) & 3 == q[2 * 4 + 1, 0] + 1
    assert np.array_equal(unpack_offline(packed, "w"), q)


def test_engine_runs_the_converted_files(converted):
    from bitnet_inference import Model

    tokens = np.arange(1, 9)
    logits = {o: Model(converted["online", o], kv_type="f32").forward(tokens, 0) for o in ("i2_s", "f32")}
    assert all(np.isfinite(v).all() and v.shape == (8, SHAPES["tiny"].vocab) for v in logits.values())
    # the float path and the W1.58A8 path see the same ternary weights: close, not equal
    rel = np.linalg.norm(logits["i2_s"] - logits["f32"]) / np.linalg.norm(logits["f32"])
    assert 1e-5 < rel < 0.1


# -- tokenizer ----------------------------------------------------------------------------------------------------

def test_bpe_tokenizer_matches_the_tokenizers_library(ckpts, converted):
    from tokenizers import Tokenizer as HFTokenizer

    from bitnet_tokenizers import load_tokenizer

    f = read_gguf(converted["online", "i2_s"])
    md = f.metadata
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "llama-bpe"
    assert len(md["tokenizer.ggml.tokens"]) == SHAPES["tiny"].vocab
    assert "{{ bos_token }}" in md["tokenizer.chat_template"]
    hf = HFTokenizer.from_file(str(ckpts["online"] / "tokenizer.json"))
    tok = load_tokenizer(f)
    assert tok.bos_id == md["tokenizer.ggml.bos_token_id"] == hf.token_to_id("<|begin_of_text|>")
    assert tok.eos_id == hf.token_to_id("<|end_of_text|>")
    for text in ("The quick brown fox.", "To be, or not to be: 1234 BitNet!", "  spaces\n\nand\ttabs ÿ€"):
        assert tok.encode(text) == hf.encode(text).ids, text
        assert tok.decode(tok.encode(text, add_bos=False)) == text


def test_sentencepiece_tokenizer(tmp_path):
    import sentencepiece as spm

    from bitnet_tokenizers import load_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the quick brown fox jumps over the lazy dog", "to be or not to be",
                                 "ternary weights are minus one zero or plus one"] * 50))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=300,
                                   model_type="bpe", byte_fallback=True, minloglevel=2)
    d = make_checkpoint(tmp_path / "ck", family="1bitllm")
    (d / "tokenizer.json").unlink()
    (d / "tokenizer.model").write_bytes((tmp_path / "sp.model").read_bytes())
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
        "added_tokens_decoder": {"300": {"content": "<pad>", "special": True}}}))
    f = read_gguf(convert(d, tmp_path / "sp.gguf", "tq2_0").path)
    md = f.metadata
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    tokens = list(md["tokenizer.ggml.tokens"])
    assert md["tokenizer.ggml.model"] == "llama" and len(tokens) == SHAPES["tiny"].vocab
    assert tokens[:300] == [sp.id_to_piece(i) for i in range(300)]
    assert np.allclose(md["tokenizer.ggml.scores"][:300], [sp.get_score(i) for i in range(300)])
    assert tokens[300] == "<pad>" and md["tokenizer.ggml.token_type"][300] == 3
    assert tokens[301] == "[PAD301]" and md["tokenizer.ggml.token_type"][301] == 5
    assert md["tokenizer.ggml.bos_token_id"] == sp.bos_id() and md["tokenizer.ggml.eos_token_id"] == sp.eos_id()
    tok = load_tokenizer(f)
    for text in ("the lazy fox", "to be or not", "zebra 42"):
        assert tok.encode(text, add_bos=False) == sp.encode(text), text


# -- refusals -------------------------------------------------------------------------------------------------------

def _edit_config(d: Path, **changes):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def _refused(tmp_path, d, outtype, err, match):
    out = tmp_path / "out" / "x.gguf"
    with pytest.raises(err, match=match) as e:
        convert(d, out, outtype)
    assert "\n" not in str(e.value)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # nothing left behind
    return e.value


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(src, dst))


def test_unknown_model_type(tmp_path, ckpts):
    d = _copy(ckpts["online"], tmp_path / "ck")
    _edit_config(d, model_type="llama", architectures=["LlamaForCausalLM"])
    _refused(tmp_path, d, "i2_s", UnsupportedModelError, "model_type 'llama'.*supported")


def test_unknown_activation(tmp_path, ckpts):
    d = _copy(ckpts["online"], tmp_path / "ck")
    _edit_config(d, hidden_act="gelu")
    _refused(tmp_path, d, "i2_s", UnsupportedModelError, "hidden_act 'gelu'")


def test_non_ternary_offline_floats_are_refused(tmp_path):
    d = make_checkpoint(tmp_path / "ck", mode="online")
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["quantization_mode"] = "offline"
    (d / "config.json").write_text(json.dumps(cfg))
    ck = Checkpoint(d)
    specs = [Spec(n, e.dtype, e.shape, lambda n=n: ck.float32(n)) for n, e in ck.entries.items()]
    specs += [Spec(n.replace(".weight", ".weight_scale"), "F32", (1,), lambda: np.ones(1, np.float32))
              for n in ck.entries if n.endswith("_proj.weight")]
    write_safetensors(d / "model.safetensors", specs)
    _refused(tmp_path, d, "i2_s", QuantizationError, "not ternary")


def test_packed_code_3_is_refused(tmp_path):
    d = make_checkpoint(tmp_path / "ck", mode="offline")
    ck = Checkpoint(d)
    victim = "model.layers.0.mlp.up_proj.weight"

    def corrupt(n):
        a = ck.raw(n).copy()
        if n == victim:
            a[0, 0] = 0xFF
        return a

    write_safetensors(d / "model.safetensors", [Spec(n, e.dtype, e.shape, lambda n=n: corrupt(n))
                                                for n, e in ck.entries.items()])
    _refused(tmp_path, d, "i2_s", QuantizationError, "code 3")


def test_online_checkpoint_with_packed_weights_is_refused(tmp_path, ckpts):
    d = _copy(ckpts["offline"], tmp_path / "ck")
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["quantization_mode"] = "online"
    (d / "config.json").write_text(json.dumps(cfg))
    _refused(tmp_path, d, "i2_s", QuantizationError, "already quantized")


@pytest.mark.parametrize("outtype,hidden,ffn,match", [("i2_s", 256, 320, "320 weights.*I2_S's 128"),
                                                      ("tq2_0", 128, 512, "128 weights.*TQ2_0's 256"),
                                                      ("tq1_0", 256, 640, "640 weights.*TQ1_0's 256")])
def test_shapes_off_the_block_size(tmp_path, outtype, hidden, ffn, match):
    d = make_checkpoint(tmp_path / "ck", Shape(hidden, 1, 4, 1, ffn, 512))
    _refused(tmp_path, d, outtype, QuantizationError, match)
    assert convert(d, tmp_path / "ok.gguf", "f16").path.is_file()  # a type whose block fits works


def test_unknown_tensors_are_not_dropped(tmp_path, ckpts):
    d = _copy(ckpts["online"], tmp_path / "ck")
    ck = Checkpoint(d)
    specs = [Spec(n, e.dtype, e.shape, lambda n=n: ck.float32(n)) for n, e in ck.entries.items()]
    specs.append(Spec("model.layers.0.self_attn.q_proj.bias", "F32", (256,), lambda: np.zeros(256, np.float32)))
    write_safetensors(d / "model.safetensors", specs)
    _refused(tmp_path, d, "i2_s", UnsupportedModelError, "q_proj.bias")


def test_missing_tensor(tmp_path, ckpts):
    d = _copy(ckpts["online"], tmp_path / "ck")
    ck = Checkpoint(d)
    write_safetensors(d / "model.safetensors", [Spec(n, e.dtype, e.shape, lambda n=n: ck.float32(n))
                                                for n, e in ck.entries.items() if "layers.1.mlp.down" not in n])
    _refused(tmp_path, d, "i2_s", CheckpointError, "layers.1.mlp.down_proj.weight.*missing")


def test_bad_weight_scale(tmp_path):
    d = make_checkpoint(tmp_path / "ck", mode="offline")
    ck = Checkpoint(d)
    write_safetensors(d / "model.safetensors", [
        Spec(n, e.dtype, e.shape, (lambda: np.zeros(1, np.float32)) if n.endswith("weight_scale") else
             (lambda n=n: ck.raw(n))) for n, e in ck.entries.items()])
    _refused(tmp_path, d, "tq2_0", QuantizationError, "weight_scale.*not a positive finite")


def test_untied_head_for_llama_cpp_bitnet(tmp_path):
    d = make_checkpoint(tmp_path / "ck", family="1bitllm", tied=False)
    _refused(tmp_path, d, "tq2_0", UnsupportedModelError, "allow-untied-head")
    f = read_gguf(convert(d, tmp_path / "u.gguf", "tq2_0", allow_untied_head=True).path)
    assert f.tensors["output.weight"].qtype.name == "F16"


def test_1bitllm_is_arch_bitnet(ckpts, tmp_path):
    f = read_gguf(convert(ckpts["1bitllm"], tmp_path / "b.gguf", "tq2_0").path)
    assert f.architecture == "bitnet"
    assert f.metadata["bitnet.rope.scaling.type"] == "linear"
    assert "blk.0.attn_sub_norm.weight" in f.tensors and "blk.0.ffn_sub_norm.weight" in f.tensors
    assert "output.weight" not in f.tensors


def test_missing_files(tmp_path, ckpts):
    with pytest.raises(CheckpointError, match="not a folder"):
        convert(tmp_path / "nope", tmp_path / "x.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        convert(tmp_path / "empty", tmp_path / "x.gguf")
    d = _copy(ckpts["online"], tmp_path / "ck")
    (d / "tokenizer.json").unlink()
    _refused(tmp_path, d, "i2_s", CheckpointError, "no tokenizer.model or tokenizer.json")
    (d / "model.safetensors").unlink()
    _refused(tmp_path, d, "i2_s", CheckpointError, "no model.safetensors")
    with pytest.raises(ConvertError, match="unknown output type 'q4_0'"):
        convert(ckpts["online"], tmp_path / "x.gguf", "q4_0")


def test_truncated_safetensors(tmp_path, ckpts):
    d = _copy(ckpts["online"], tmp_path / "ck")
    p = d / "model.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    _refused(tmp_path, d, "i2_s", CheckpointError, "truncated or corrupt")


def test_sharded_checkpoint(tmp_path, ckpts, converted):
    d = _copy(ckpts["online"], tmp_path / "ck")
    ck = Checkpoint(d)
    names = list(ck.entries)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for shard, ns in halves.items():
        write_safetensors(d / shard, [Spec(n, ck.entry(n).dtype, ck.entry(n).shape, lambda n=n: ck.float32(n))
                                      for n in ns])
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: s for s, ns in halves.items() for n in ns}}))
    (d / "model.safetensors").unlink()
    a = read_gguf(convert(d, tmp_path / "s.gguf", "i2_s").path)
    b = read_gguf(converted["online", "i2_s"])
    assert all(np.array_equal(a.raw(n), b.raw(n)) for n in b.tensors)


# -- the command ------------------------------------------------------------------------------------------------------

def _cli(monkeypatch, argv):
    from bitnet import cli

    monkeypatch.setitem(cli.PROVIDERS, "convert", ("bitnet_models.convert.commands", "convert"))
    return cli.main(argv)


def test_cli_converts(monkeypatch, tmp_path, ckpts, capsys):
    out = tmp_path / "m.gguf"
    assert _cli(monkeypatch, ["convert", str(ckpts["online"]), "-o", str(out), "--outtype", "tq1_0"]) == 0
    assert read_gguf(out).tensors["blk.0.attn_q.weight"].qtype.name == "TQ1_0"
    assert "wrote" in capsys.readouterr().err


def test_cli_error_is_one_line(monkeypatch, tmp_path, ckpts, capsys):
    d = _copy(ckpts["online"], tmp_path / "ck")
    _edit_config(d, hidden_act="tanh")
    assert _cli(monkeypatch, ["convert", str(d), "-o", str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "hidden_act 'tanh'" in err[0]
    assert not (tmp_path / "m.gguf").exists()


def test_no_torch_needed(ckpts, tmp_path):
    import subprocess

    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "from bitnet_models.convert import convert; "
            f"convert({str(ckpts['offline'])!r}, {str(tmp_path / 'n.gguf')!r}, 'i2_s')")
    subprocess.run([sys.executable, "-c", code], check=True)
