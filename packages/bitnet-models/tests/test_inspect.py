"""`bitnet inspect`: the summary of a GGUF file, as text and JSON, from the header alone."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from bitnet.cli import main
from bitnet_models.gguf import read_gguf, write_gguf
from bitnet_models.inspect import format_text, summarize

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "b158-a-i2s.gguf"


def _tool():
    spec = importlib.util.spec_from_file_location("_tools_msm_inspect", ROOT / "tools" / "make_synthetic_model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    msm = _tool()
    return msm.make_model(tmp_path_factory.mktemp("insp") / "tiny.gguf", msm.SHAPES["tiny"], "tq2_0", seed=1)


def test_summary_of_the_bitnet_cpp_fixture():
    with read_gguf(FIXTURE) as f:
        s = summarize(f)
    assert s["architecture"] == "bitnet-b1.58" and s["gguf_version"] == 3
    c = s["config"]
    assert (c["n_embd"], c["n_layer"], c["n_head"], c["n_head_kv"], c["n_ff"], c["n_vocab"]) == (256, 4, 4, 1, 768, 4096)
    assert c["weight_type"] == "I2_S" and c["ffn_act"] == "relu2" and c["tied_head"] and c["norm_eps"] == 1e-5
    assert s["tokenizer"]["model"] == "llama" and s["tokenizer"]["n_tokens"] == 4096
    assert s["tensor_types"]["I2_S"]["count"] == 28
    assert s["tensor_count"] == len(s["tensors"]) == 46
    assert sum(t["bytes"] for t in s["tensors"]) == sum(v["bytes"] for v in s["tensor_types"].values())
    assert s["metadata"]["bitnet-b1.58.attention.layer_norm_rms_epsilon"] == 1e-5  # shown as the f32 it is


def test_text_output(tiny):
    with read_gguf(tiny) as f:
        text = format_text(summarize(f))
    assert "architecture: bitnet" in text
    assert "hidden 256, 2 layers, 4 heads / 1 KV heads (head_dim 64), FFN 768 (silu), vocab 1256" in text
    assert "tokenizer:    gpt2 (pre llama-bpe), 1256 tokens, 1100 merges, BOS 1000, EOS 1001" in text
    assert "TQ2_0 x14" in text and "blk.1.ffn_down.weight" in text


def test_cli_text_and_json(tiny, capsys):
    assert main(["inspect", str(tiny), "--no-tensors"]) == 0
    out = capsys.readouterr().out
    assert "tensors:      24:" in out and "blk.0.attn_q.weight" not in out
    assert main(["inspect", str(tiny), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["config"]["weight_type"] == "TQ2_0" and s["tokenizer"]["n_merges"] == 1100
    assert s["metadata"]["general.file_type"] == 37


def test_file_that_is_not_a_model(tmp_path, capsys):
    p = write_gguf(tmp_path / "x.gguf", "llama", {"llama.block_count": 1}, [])
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "not a runnable model" in out and "'llama' is not supported" in out
    assert "tokenizer:    none in the file" in out


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (7).to_bytes(4, "little") + bytes(16))
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "unsupported GGUF version 7" in err
    assert main(["inspect", str(tmp_path / "missing.gguf")]) == 2
    assert "no such file" in capsys.readouterr().err
