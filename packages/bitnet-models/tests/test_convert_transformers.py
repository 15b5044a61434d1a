"""`bitnet convert` against transformers' own BitNet (full tier: needs the `convert` extra and llama-cpp-python).

Tiny random BitNetForCausalLM models are built from a config (no download) and saved with save_pretrained, in
both quantization modes; the converted GGUF's logits (our engine) are compared with transformers' on the same
tokens. Each GGUF weight type runs with its engine's activation numerics and the reference is set to the same
(bitnet_models.convert.verify): per-token int8 for I2_S (transformers as it is), llama.cpp's Q8_K blocks and the
fp16 block scale for TQ1_0/TQ2_0, float activations for F32/F16. A 1bitLLM-style checkpoint goes to arch
`bitnet` and is also run by llama.cpp (llama-cpp-python)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.full

import torch  # noqa: E402  (the full tier installs bitnet[convert]; a missing torch must fail, not skip)

from bitnet_models import read_gguf  # noqa: E402
from bitnet_models.convert import convert  # noqa: E402
from bitnet_models.convert.testing import write_bpe_tokenizer  # noqa: E402
from bitnet_models.convert.verify import compare, load_reference, matched_numerics, reference_logits  # noqa: E402

torch._dynamo.config.disable = True
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 256, 2, 4, 1, 768, 512
OUTTYPES = ("i2_s", "tq2_0", "tq1_0", "f32", "f16")
NUMERICS = {"i2_s": "i2s", "tq2_0": "q8k", "tq1_0": "q8k", "f32": "f32", "f16": "f16"}
T = 16
FLOAT_ROUNDING = 1e-5  # max |ours - ref| / max |ref| accepted as float rounding (measured: below 1e-6)


def _tokens():
    return np.random.default_rng(0).integers(0, VOCAB - 8, T)  # below the special tokens


def _bitnet_model(act: str, seed: int):
    from transformers import BitNetConfig, BitNetForCausalLM

    cfg = BitNetConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                       num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256,
                       rms_norm_eps=1e-5, hidden_act=act, tie_word_embeddings=True, bos_token_id=VOCAB - 8,
                       eos_token_id=VOCAB - 7, pad_token_id=None)
    cfg.rope_parameters = {"rope_theta": 500000.0, "rope_type": "default"}
    torch.manual_seed(seed)
    model = BitNetForCausalLM(cfg).float().eval()
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.copy_((torch.randn_like(emb) * 0.5).half().float())  # F16-exact: the GGUF's F16 embedding holds it
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1 + 0.05 * torch.randn_like(p))  # norms away from 1, so a misplaced norm shows
    return model


def _add_quant_config(d: Path, mode: str) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                  "quantization_mode": mode, "use_rms_norm": False}
    (d / "config.json").write_text(json.dumps(cfg, indent=1))


def _save_offline(model, d: Path) -> None:
    """transformers' offline format from the online model: WeightQuant's ternary values packed with
    transformers' own pack_weights, weight_scale = 1/s (AutoBitLinear multiplies its output by it)."""
    from safetensors.torch import save_file
    from transformers.integrations.bitnet import pack_weights

    model.save_pretrained(d)
    state = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue  # tied
        if k.endswith("_proj.weight"):
            w = v.float()
            s = 1.0 / w.abs().mean().clamp(min=1e-5)
            q = (w * s).round().clamp(-1, 1)
            state[k] = pack_weights(q.clone())
            state[k.replace(".weight", ".weight_scale")] = (1.0 / s).reshape(1)
        else:
            state[k] = v.contiguous()
    for p in d.glob("*.safetensors"):
        p.unlink()
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    _add_quant_config(d, "offline")


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    model = _bitnet_model("relu2", seed=0)
    online, offline = root / "online", root / "offline"
    model.save_pretrained(online)
    _add_quant_config(online, "online")
    _save_offline(model, offline)
    for d in (online, offline):
        write_bpe_tokenizer(d, VOCAB)
    return {"online": online, "offline": offline}


@pytest.fixture(scope="module")
def refs(hf):
    return {mode: load_reference(d) for mode, d in hf.items()}


@pytest.fixture(scope="module")
def ggufs(hf, tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    return {(m, o): convert(hf[m], d / f"{m}-{o}.gguf", o).path for m in hf for o in OUTTYPES}


def _ours(path, kv="f32"):
    from bitnet_inference import Model

    return Model(path, numerics="fast", kv_type=kv).forward(_tokens(), 0)


def test_offline_checkpoint_loads_in_transformers_as_the_online_model(refs):
    a = reference_logits(refs["online"], _tokens())
    b = reference_logits(refs["offline"], _tokens())
    c = compare(b, a, "offline vs online")
    print(c.line())
    assert c.top1 == 1.0 and c.max_rel < FLOAT_ROUNDING


@pytest.mark.parametrize("outtype", OUTTYPES)
@pytest.mark.parametrize("mode", ["online", "offline"])
def test_logits_match_transformers(ggufs, refs, mode, outtype):
    ours = _ours(ggufs[mode, outtype])
    matched = compare(ours, reference_logits(refs[mode], _tokens(), NUMERICS[outtype]), NUMERICS[outtype])
    plain = compare(ours, reference_logits(refs[mode], _tokens(), "i2s"), "transformers")
    print(f"{mode} {outtype}: {matched.line()} | {plain.line()}")
    assert matched.top1 == 1.0 and matched.max_rel < FLOAT_ROUNDING
    if outtype == "i2_s":  # the same numerics: transformers as it is
        assert plain.max_rel < FLOAT_ROUNDING
    else:  # Q8_K blocks / float activations instead of per-token int8: a real but small difference
        assert 1e-4 < plain.rms_rel < 5e-2
    if mode == "offline":  # against the online model too (the offline load is not trusted blindly)
        cross = compare(ours, reference_logits(refs["online"], _tokens(), NUMERICS[outtype]), "vs online")
        assert cross.top1 == 1.0 and cross.max_rel < FLOAT_ROUNDING


@pytest.mark.parametrize("outtype", OUTTYPES)
@pytest.mark.parametrize("mode", ["online", "offline"])
def test_verify_finds_every_tensor_equal(hf, ggufs, mode, outtype):
    """Every GGUF tensor equals the weight transformers computes with (TQ: with its fp16 block scale; F16:
    rounded), not just close: the exact check that int8 activation chaos cannot blur."""
    from bitnet_models.convert.verify import verify

    r = verify(hf[mode], ggufs[mode, outtype])
    assert r.weights == 0.0, r.weights_at
    assert r.ok


def test_weights_equal_transformers_weight_quant(hf, ggufs, refs):
    """Every I2_S matrix holds exactly transformers' WeightQuant(W) = q / s."""
    from transformers.integrations.bitnet import WeightQuant

    from bitnet_quantization import i2s_scale, i2s_unpack_codes

    f = read_gguf(ggufs["online", "i2_s"])
    layer = refs["online"].model.layers[1]
    for gg, mod in (("attn_q", layer.self_attn.q_proj), ("ffn_down", layer.mlp.down_proj)):
        raw = f.raw(f"blk.1.{gg}.weight")
        n = mod.weight.numel()
        ours = i2s_unpack_codes(raw, n).reshape(mod.weight.shape).astype(np.float32) * i2s_scale(raw, n)
        with torch.no_grad():
            theirs = WeightQuant.apply(mod.weight).numpy()
        assert np.array_equal(ours, theirs), gg


def test_safetensors_reader_agrees_with_safe_open(hf, tmp_path):
    from safetensors import safe_open

    from bitnet_models.convert.safetensors import Checkpoint

    model = _bitnet_model("relu2", seed=3).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    ck = Checkpoint(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            assert np.array_equal(ck.float32(name), f.get_tensor(name).float().numpy()), name
    ck = Checkpoint(hf["offline"])
    with safe_open(str(hf["offline"] / "model.safetensors"), framework="pt") as f:
        name = "model.layers.0.mlp.up_proj.weight"
        assert np.array_equal(ck.raw(name), f.get_tensor(name).numpy())


def test_cli_verify(hf, tmp_path, monkeypatch, capsys):
    from bitnet import cli

    monkeypatch.setitem(cli.PROVIDERS, "convert", ("bitnet_models.convert.commands", "convert"))
    rc = cli.main(["convert", str(hf["offline"]), "-o", str(tmp_path / "v.gguf"), "--outtype", "tq2_0", "--verify"])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0 and "verify: OK" in out and "q8k: top-1 agreement 100.0%" in out and "per layer" in out


def test_verify_catches_a_wrong_file(hf, tmp_path, monkeypatch, capsys):
    """--verify must be able to fail: a file converted from another model's weights, or with one matrix's
    scale off by 2%, is caught (exit 2, one line)."""
    from bitnet import cli
    from bitnet_models.convert.verify import verify
    from bitnet_models.gguf.writer import RawTensor, write_gguf

    other = tmp_path / "other"
    _bitnet_model("relu2", seed=7).save_pretrained(other)
    _add_quant_config(other, "online")
    write_bpe_tokenizer(other, VOCAB)
    wrong = convert(other, tmp_path / "w.gguf", "i2_s").path
    assert not verify(hf["online"], wrong).ok

    good = read_gguf(convert(hf["online"], tmp_path / "g.gguf", "i2_s").path)
    md = {k: (list(v) if not isinstance(v, (int, float, str, np.ndarray)) else v)
          for k, v in good.metadata.items() if not k.startswith("GGUF.") and k != "general.architecture"}

    def tensor(n):
        raw = good.raw(n).copy()
        if n == "blk.0.ffn_down.weight":
            tail = raw[-32:].view(np.float32)
            tail[0] *= np.float32(1.02)
        return RawTensor(raw, good.tensors[n].shape) if good.tensors[n].qtype.name == "I2_S" else good.array(n)

    bad = write_gguf(tmp_path / "bad.gguf", good.architecture, md,
                     [(n, tensor(n), good.tensors[n].qtype.name) for n in good.tensors])
    report = verify(hf["online"], bad)
    print("\n".join(report.lines()))
    assert not report.ok

    monkeypatch.setitem(cli.PROVIDERS, "convert", ("bitnet_models.convert.commands", "convert"))
    assert cli.main(["convert", str(other), "-o", str(tmp_path / "x.gguf"), "--verify"]) == 0  # its own model
    capsys.readouterr()


# -- 1bitLLM-style checkpoint -> arch `bitnet`, also run by llama.cpp ---------------------------------------------

@pytest.fixture(scope="module")
def onebit(tmp_path_factory):
    """transformers' BitNet with SiLU saved, then rewritten in 1bitLLM's layout: BitnetForCausalLM config,
    sub-norms named inner_attn_ln / ffn_layernorm (the same graph as 1bitLLM's remote code)."""
    from safetensors.torch import load_file, save_file

    d = tmp_path_factory.mktemp("onebit")
    model = _bitnet_model("silu", seed=1)
    model.save_pretrained(d)
    state = {k.replace(".self_attn.attn_sub_norm.", ".self_attn.inner_attn_ln.")
              .replace(".mlp.ffn_sub_norm.", ".mlp.ffn_layernorm."): v
             for k, v in load_file(str(d / "model.safetensors")).items()}
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg = {"architectures": ["BitnetForCausalLM"], "model_type": "llama", "hidden_act": "silu",
           "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
           "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": None,
           "tie_word_embeddings": True, "bos_token_id": VOCAB - 8, "eos_token_id": VOCAB - 7,
           "input_bits": 8, "weight_bits": 1}
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    write_bpe_tokenizer(d, VOCAB)
    return d


@pytest.fixture(scope="module")
def onebit_ref(onebit):
    return load_reference(onebit)


def _llama_cpp_logits(path, tokens, kv="f32"):
    from llama_cpp import Llama

    t = {"f32": 0, "f16": 1}[kv]
    llm = Llama(str(path), n_ctx=64, n_batch=64, n_ubatch=64, logits_all=True, verbose=False, type_k=t, type_v=t,
                n_threads=2, flash_attn=False)
    llm.eval([int(x) for x in tokens])
    out = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    llm.close()
    return out


@pytest.mark.parametrize("outtype", ["tq2_0", "tq1_0", "f32", "f16"])
def test_1bitllm_checkpoint_as_arch_bitnet(onebit, onebit_ref, tmp_path, outtype):
    from bitnet_inference import Model

    path = convert(onebit, tmp_path / f"b-{outtype}.gguf", outtype).path
    f = read_gguf(path)
    assert f.architecture == "bitnet" and "output.weight" not in f.tensors
    head_f16 = f.tensors["token_embd.weight"].qtype.name == "F16"
    tokens = _tokens()
    ours = Model(path, numerics="fast", kv_type="f32").forward(tokens, 0)
    # llama.cpp's `bitnet` graph rounds the head's input to F16 for an F16 head; the reference does the same
    num = matched_numerics("bitnet", f.tensors["blk.0.attn_q.weight"].qtype.name, len(tokens))
    ref = compare(ours, reference_logits(onebit_ref, tokens, num, round_head_f16=head_f16), num)
    lc = _llama_cpp_logits(path, tokens)
    vs_llama = compare(ours, lc, "llama.cpp")
    llama_vs_ref = compare(lc, reference_logits(onebit_ref, tokens, num, round_head_f16=head_f16),
                           "llama.cpp vs transformers")
    print(f"1bitLLM {outtype}: ours vs transformers {ref.line()} | ours vs llama.cpp {vs_llama.line()} | "
          f"{llama_vs_ref.line()}")
    # F16 rounding of the head input (and, for F16 weights, of every activation) flips now and then on a 1e-7
    # difference: measured 1.8e-6 (TQ), 4.7e-7 (F32), 8.9e-5 (F16 weights); see docs/convert.md
    assert ref.top1 == 1.0 and ref.max_rel < (3e-4 if outtype == "f16" else 1e-4)
    exact = Model(path, numerics="llama", kv_type="f32").forward(tokens, 0)
    assert np.array_equal(exact, lc)  # llama.cpp loads our file and computes what our llama numerics compute
    assert vs_llama.top1 == 1.0 and vs_llama.max_rel < 1e-4
    assert llama_vs_ref.top1 == 1.0 and llama_vs_ref.max_rel < 1e-4


def test_llama_cpp_tokenizes_the_converted_vocabularies(onebit, tmp_path):
    """llama.cpp reads both exported vocabularies (byte-level BPE and SentencePiece) and tokenizes as the source
    libraries do."""
    import llama_cpp
    import sentencepiece as spm
    from tokenizers import Tokenizer as HFTokenizer

    texts = ["The quick brown fox.", "To be, or not to be: 1234 BitNet!", "the lazy dog  jumps"]
    bpe = convert(onebit, tmp_path / "bpe.gguf", "tq2_0").path
    hf = HFTokenizer.from_file(str(onebit / "tokenizer.json"))
    llm = llama_cpp.Llama(model_path=str(bpe), vocab_only=True, verbose=False)
    for t in texts:
        assert llm.tokenize(t.encode(), add_bos=False) == hf.encode(t, add_special_tokens=False).ids, t

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts * 40))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=300,
                                   model_type="bpe", byte_fallback=True, minloglevel=2)
    import shutil

    d = Path(shutil.copytree(onebit, tmp_path / "spm"))
    (d / "tokenizer.json").unlink()
    shutil.copy(tmp_path / "sp.model", d / "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    llm = llama_cpp.Llama(model_path=str(convert(d, tmp_path / "spm.gguf", "tq2_0").path), vocab_only=True,
                          verbose=False)
    for t in texts[:2] + ["the lazy dog jumps"]:  # (sentencepiece collapses double spaces, llama.cpp does not)
        assert llm.tokenize(t.encode(), add_bos=True) == [sp.bos_id()] + sp.encode(t), t
