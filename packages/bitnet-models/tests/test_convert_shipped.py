"""The shipped model's export can go through the converter: the shipped GGUF, written back as a transformers
BitNet checkpoint (offline form, SentencePiece tokenizer.model) with bitnet_models.convert.export, converts to the
same tensors and vocabulary, byte for byte, in I2_S and TQ2_0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bitnet_models import read_gguf
from bitnet_models.convert import convert
from bitnet_models.convert.export import PROJ, hf_config, save_offline_checkpoint, write_spm_model
from bitnet_quantization import i2s_scale, i2s_unpack_codes

pytestmark = pytest.mark.fast

DATA = Path(__file__).resolve().parents[1] / "src" / "bitnet_models" / "data"
SHIPPED = DATA / "bitnet-b1.58-tiny-i2_s.gguf"
SHIPPED_TQ2 = DATA / "variants" / "bitnet-b1.58-tiny-tq2_0.gguf"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    f = read_gguf(SHIPPED)
    md, a = f.metadata, "bitnet-b1.58"
    d = tmp_path_factory.mktemp("shipped-hf")
    layers = []
    for i in range(md[f"{a}.block_count"]):
        layer = {k: f.array(f"blk.{i}.{k}.weight") for k in ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm")}
        for gg in PROJ:
            info = f.tensors[f"blk.{i}.{gg}.weight"]
            n = int(np.prod(info.shape))
            raw = f.raw(f"blk.{i}.{gg}.weight")
            layer[gg] = (i2s_unpack_codes(raw, n).reshape(info.shape), i2s_scale(raw, n))
        layers.append(layer)
    cfg = hf_config(hidden=md[f"{a}.embedding_length"], layers=md[f"{a}.block_count"],
                    heads=md[f"{a}.attention.head_count"], kv_heads=md[f"{a}.attention.head_count_kv"],
                    ffn=md[f"{a}.feed_forward_length"], vocab=md[f"{a}.vocab_size"], ctx=md[f"{a}.context_length"],
                    rope_theta=md[f"{a}.rope.freq_base"], eps=md[f"{a}.attention.layer_norm_rms_epsilon"],
                    bos=md["tokenizer.ggml.bos_token_id"], eos=md["tokenizer.ggml.eos_token_id"])
    save_offline_checkpoint(d, cfg, f.dequantize("token_embd.weight"), f.array("output_norm.weight"), layers)
    write_spm_model(d / "tokenizer.model", list(md["tokenizer.ggml.tokens"]), md["tokenizer.ggml.scores"],
                    md["tokenizer.ggml.token_type"], unk=md["tokenizer.ggml.unknown_token_id"],
                    bos=md["tokenizer.ggml.bos_token_id"], eos=md["tokenizer.ggml.eos_token_id"],
                    add_dummy_prefix=md["tokenizer.ggml.add_space_prefix"])
    (d / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": False}))
    return d


@pytest.mark.parametrize("shipped,outtype", [(SHIPPED, "i2_s"), (SHIPPED_TQ2, "tq2_0")])
def test_shipped_model_round_trips_through_the_converter(hf_dir, tmp_path, shipped, outtype):
    ref = read_gguf(shipped)
    ours = read_gguf(convert(hf_dir, tmp_path / "m.gguf", outtype, name=ref.metadata["general.name"]).path)
    assert list(ours.tensors) == list(ref.tensors)
    for n, info in ref.tensors.items():
        assert ours.tensors[n].qtype.name == info.qtype.name, n
        assert np.array_equal(ours.raw(n)[: info.nbytes - 32] if info.qtype.name == "I2_S" else ours.raw(n),
                              ref.raw(n)[: info.nbytes - 32] if info.qtype.name == "I2_S" else ref.raw(n)), n
        if info.qtype.name == "I2_S":  # the 28 bytes after the scale are unspecified
            size = int(np.prod(info.shape))
            assert i2s_scale(ours.raw(n), size) == i2s_scale(ref.raw(n), size), n
    for k, v in ref.metadata.items():
        if k.startswith("tokenizer.") or k.startswith("bitnet-b1.58.") or k == "general.file_type":
            got = ours.metadata[k]
            assert (np.array_equal(np.asarray(list(got)), np.asarray(list(v))) if hasattr(v, "__len__") and
                    not isinstance(v, str) else got == v), k
