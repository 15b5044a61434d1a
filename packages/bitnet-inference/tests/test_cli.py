"""The bitnet CLI end to end on the bitnet.cpp fixture model (in-process, through the dispatcher)."""

import shutil
import subprocess
import sys

import pytest

from bitnet.cli import main

pytestmark = pytest.mark.fast


def test_generate_greedy_matches_bitnet_cpp(fixtures, capsys):
    rc = main(["generate", "-m", str(fixtures / "b158-a-i2s.gguf"), "-p", "To be, or not to be", "-n", "32",
               "--temp", "0"])
    out, err = capsys.readouterr()
    assert rc == 0
    expected = (fixtures / "b158-a-i2s.greedy.txt").read_text(encoding="utf-8").split()[1:]
    # bitnet.cpp prints the pieces ▁tN; our detokenizer turns ▁ into spaces
    assert out.split() == expected
    assert "decode: 32 tokens" in err and "model: " in err


def test_perplexity_kld_reproduces_bitnet_cpp_line(fixtures, capsys):
    rc = main(["perplexity", "-m", str(fixtures / "b158-a-i2s.gguf"), "--kl-divergence-base",
               str(fixtures / "b158-a-i2s.kld"), "--kl-divergence", "--numerics", "ggml", "--chunks", "2"])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert "====== KL divergence statistics ======" in out
    assert "Same top p: 100.000" in out


def test_perplexity_writes_a_base_file_llama_perplexity_can_read(fixtures, tmp_path, capsys):
    text = fixtures / "text.txt"
    base = tmp_path / "ours.kld"
    assert main(["perplexity", "-m", str(fixtures / "b158-a-i2s.gguf"), "-f", str(text), "-c", "128",
                 "--chunks", "2", "--kl-divergence-base", str(base)]) == 0
    first = capsys.readouterr().out
    assert main(["perplexity", "-m", str(fixtures / "b158-a-i2s.gguf"), "--kl-divergence-base", str(base),
                 "--kl-divergence"]) == 0
    second = capsys.readouterr().out
    ppl = [l for l in first.splitlines() if l.startswith("Final estimate")][0]
    assert ppl in second  # same tokens, same engine: the same PPL
    assert "Same top p: 100.000" in second


@pytest.mark.parametrize(
    "argv,message",
    [
        (["generate", "-p", "hi", "--temp", "-1"], "--temp"),
        (["generate", "-p", "hi", "-n", "0"], "-n must be positive"),
        (["generate", "-p", ""], "empty"),
        (["perplexity", "--kl-divergence"], "--kl-divergence-base"),
        (["generate", "-p", "hi", "--top-p", "0"], "--top-p"),
    ],
)
def test_bad_flags_one_clear_line(fixtures, capsys, argv, message):
    rc = main(argv[:1] + ["-m", str(fixtures / "b158-a-i2s.gguf")] + argv[1:])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err


def test_missing_model_from_environment_exits_2(tmp_path):
    exe = shutil.which("bitnet") or None
    cmd = [exe] if exe else [sys.executable, "-m", "bitnet.cli"]
    r = subprocess.run(cmd + ["generate", "-p", "hi"], capture_output=True, text=True,
                       env={"BITNET_GGUF": str(tmp_path / "missing.gguf"), "PATH": "/usr/bin:/bin",
                            "HOME": str(tmp_path)})
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "missing.gguf" in lines[0] and "BITNET_GGUF" in lines[0]


def test_bench_json_has_llama_bench_fields(fixtures, capsys):
    import json

    assert main(["bench", "-m", str(fixtures / "b158-a-i2s.gguf"), "-p", "16", "-n", "4", "-t", "1", "-r", "2",
                 "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [(r["n_prompt"], r["n_gen"]) for r in recs] == [(16, 0), (0, 4)]
    for r in recs:
        assert r["n_threads"] == 1 and len(r["samples_ns"]) == 2 and r["avg_ts"] > 0 and r["stddev_ts"] >= 0
    assert main(["bench", "-m", str(fixtures / "b158-a-i2s.gguf"), "-r", "0"]) == 2


def test_q8_lm_head_close_to_f16(fixtures, capsys):
    ppl = {}
    for head in ("f16", "q8"):
        assert main(["perplexity", "-m", str(fixtures / "b158-a-i2s.gguf"), "--kl-divergence-base",
                     str(fixtures / "b158-a-i2s.kld"), "--kl-divergence", "--chunks", "2", "--lm-head", head]) == 0
        out = capsys.readouterr().out
        ppl[head] = float([l for l in out.splitlines() if l.startswith("Final estimate")][0].split("=")[1].split()[0])
    assert ppl["q8"] != ppl["f16"] and abs(ppl["q8"] / ppl["f16"] - 1) < 0.01
