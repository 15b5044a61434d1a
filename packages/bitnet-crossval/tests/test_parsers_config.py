"""Fast tier: parsers on bitnet.cpp's recorded outputs, tolerances and settings, the bitnet.cpp reference run
against stand-in programs (subprocess, timeouts, errors), the checks' verdicts, and the report's HTML."""

import argparse
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval import checks as C
from bitnet_crossval.commands import COMMANDS, settings_from_env
from bitnet_crossval.config import CrossValidationConfig, ToleranceConfig
from bitnet_crossval.errors import CrossValError, ReferenceRunError, ReferenceUnavailableError
from bitnet_crossval.parsers import parse_bench_json, parse_final_ppl, parse_perplexity_stdout, split_greedy
from bitnet_crossval.references import BitnetCppReference, find_bitnet_cpp_programs

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parents[3]
FIX = ROOT / "tests" / "fixtures"


# --- parsers --------------------------------------------------------------------------------------------------

def test_perplexity_stdout_plain_run():
    out = parse_perplexity_stdout((FIX / "llama-perplexity-b158-a-i2s.stdout.txt").read_text())
    assert (out.ppl, out.ppl_err) == (17308.4362, 1315.05571)
    assert out.chunk_ppl == [9862.3714, 13539.7134, 14402.2969, 16491.2688, 16550.8404, 17122.4339, 17847.9506,
                             17308.4362]
    assert out.kld == {} and out.same_top is None
    assert out.build.startswith("0 (unknown) with Debian clang")
    assert "AVX512 = 1" in out.system_info


def test_perplexity_stdout_kld_run():
    out = parse_perplexity_stdout((FIX / "llama-perplexity-kld-i2s-vs-f32.stdout.txt").read_text())
    assert (out.ppl, out.ppl_err) == (17308.436449, 1315.055742)  # its 'Mean PPL(Q)' line
    assert len(out.chunk_ppl) == 8 and out.chunk_ppl[0] == 9862.3721
    assert out.kld["mean"] == 0.000707 and out.kld["max"] == 0.001681 and out.kld["99.0%"] == 0.001175
    assert out.kld["min"] == 0.000352 and out.kld["median"] == 0.000669
    assert out.same_top == 95.635


def test_final_ppl_files():
    assert parse_final_ppl((FIX / "b158-a-i2s.ppl.txt").read_text()) == (17308.4364, 1315.05573)
    assert parse_final_ppl((FIX / "b158-a-f32.ppl.txt").read_text()) == (17339.3820, 1318.20648)
    with pytest.raises(ReferenceRunError, match="Final estimate"):
        parse_final_ppl("perplexity: tokenizing the input ..\n", "x.txt")


def test_bench_json():
    runs = parse_bench_json((FIX / "llama-bench-2B4T-t2.json").read_text())
    assert [(r.test, r.n_threads) for r in runs] == [("pp128", 2), ("tg64", 2)]
    assert runs[0].avg_ts == pytest.approx(89.355265) and runs[1].avg_ts == pytest.approx(27.38905)
    assert runs[0].model_type.startswith("bitnet-b1.58 2B I2_S")
    with pytest.raises(ReferenceRunError, match="not JSON"):
        parse_bench_json("| model | size |")
    with pytest.raises(ReferenceRunError, match="avg_ts"):
        parse_bench_json('[{"n_prompt": 1, "n_gen": 0}]')


def test_greedy_split():
    text = (FIX / "b158-a-i2s.greedy.txt").read_text()
    cont = split_greedy(text, "▁To▁be,▁or▁not▁to▁be")
    assert cont.split() == ["t1590"] * 7 + ["t1174"] * 25
    with pytest.raises(ReferenceRunError, match="another prompt"):
        split_greedy(text, "▁Hello")


# --- tolerances and settings ----------------------------------------------------------------------------------

def test_tolerance_defaults_and_specs():
    t = ToleranceConfig()
    assert (t.inference, t.quantization, t.perplexity, t.performance) == (1e-4, 1e-5, 1e-3, 0.05)
    assert t.with_spec("2e-4", "X").inference == 2e-4
    u = t.with_spec("perplexity=3e-3, top1=0.99", "X")
    assert (u.perplexity, u.top1, u.inference) == (3e-3, 0.99, 1e-4)
    with pytest.raises(CrossValError, match="X: unknown tolerance 'speed'"):
        t.with_spec("speed=1", "X")
    with pytest.raises(CrossValError, match="not a number"):
        t.with_spec("inference=tiny", "X")
    with pytest.raises(CrossValError, match="non-negative"):
        t.with_spec("-1", "X")


def _args(*argv):
    p = argparse.ArgumentParser()
    COMMANDS["crossval"].add_arguments(p)
    return p.parse_args(list(argv))


def test_settings_env_and_flags():
    env = {"CROSSVAL_GGUF": "/m/model.gguf", "BITNET_VALIDATION_TOLERANCE": "inference=5e-4,quantization=2e-5",
           "BITNET_CPP_DIR": "/opt/bitnet.cpp", "BITNET_CPU_THREADS": "3"}
    cfg = settings_from_env(env, _args("--reference", "bitnet-cpp", "--tolerance", "quantization=3e-5"))
    assert cfg.model == Path("/m/model.gguf")
    assert cfg.tolerances.inference == 5e-4 and cfg.tolerances.quantization == 3e-5  # the flag wins
    assert cfg.bitnet_cpp_dir == Path("/opt/bitnet.cpp") and cfg.threads == 3
    # -m wins over CROSSVAL_GGUF; --recorded means "do not run bitnet.cpp"; llama-cpp ignores BITNET_CPP_DIR
    cfg = settings_from_env(env, _args("-m", "x.gguf", "--reference", "bitnet-cpp", "--recorded", "d"))
    assert cfg.model == Path("x.gguf") and cfg.bitnet_cpp_dir is None and cfg.recorded_dir == Path("d")
    assert settings_from_env(env, _args()).bitnet_cpp_dir is None
    with pytest.raises(CrossValError, match="BITNET_VALIDATION_TOLERANCE: unknown tolerance"):
        settings_from_env({"BITNET_VALIDATION_TOLERANCE": "foo=1"}, _args("-m", "x.gguf"))
    with pytest.raises(CrossValError, match="CROSSVAL_GGUF"):
        settings_from_env({}, _args())


def test_config_rejects_bad_values():
    with pytest.raises(CrossValError, match="unknown reference"):
        CrossValidationConfig(model=Path("m"), reference="vllm")
    with pytest.raises(CrossValError, match="unknown numerics"):
        CrossValidationConfig(model=Path("m"), numerics="exact")
    with pytest.raises(CrossValError, match="too small"):
        CrossValidationConfig(model=Path("m"), n_ctx=4)


# --- the bitnet.cpp reference against stand-in programs --------------------------------------------------------

STAND_IN = r'''#!{python}
import shutil, sys, time
args = sys.argv[1:]
fix = {fix!r}
if "--sleep" in open(__file__).read().split("#" + "MODE:")[1]:
    time.sleep(30)
name = __file__.rsplit("/", 1)[1]
if name == "llama-perplexity":
    shutil.copy(fix + "/b158-a-i2s.kld", args[args.index("--kl-divergence-base") + 1])
    sys.stdout.write(open(fix + "/llama-perplexity-b158-a-i2s.stdout.txt").read())
elif name == "llama-cli":
    assert args[args.index("--temp") + 1] == "0"
    sys.stdout.write(open(fix + "/b158-a-i2s.greedy.txt").read())
elif name == "llama-bench":
    assert args[args.index("-o") + 1] == "json"
    sys.stdout.write(open(fix + "/llama-bench-2B4T-t2.json").read())
#MODE:{mode}
'''


def _stand_ins(tmp: Path, mode: str = "") -> Path:
    bin_dir = tmp / "bitnet.cpp" / "build" / "bin"
    bin_dir.mkdir(parents=True)
    for prog in ("llama-perplexity", "llama-cli", "llama-bench"):
        p = bin_dir / prog
        p.write_text(STAND_IN.format(python=sys.executable, fix=str(FIX), mode=mode))
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return tmp / "bitnet.cpp"


def test_live_bitnet_cpp_runs_its_programs(tmp_path):
    root = _stand_ins(tmp_path)
    assert set(find_bitnet_cpp_programs(root)) == {"llama-perplexity", "llama-cli", "llama-bench"}
    ref = BitnetCppReference(FIX / "b158-a-i2s.gguf", bitnet_cpp_dir=root, threads=2)
    rp = ref.perplexity("", FIX / "text.txt", 128, 8, None)
    assert (rp.ppl, rp.n_ctx, len(rp.chunks), rp.kind) == (17308.4362, 128, 8, "logprobs")
    assert rp.chunks[0].positions.tolist() == list(range(64, 127)) and rp.chunks[0].values.shape == (63, 4096)
    assert rp.tokens[:4].tolist() == [1, 229, 153, 132]
    assert ref.greedy("To be, or not to be", 32).text.endswith("t1174\n\n")
    assert [r.test for r in ref.bench(128, 64)] == ["pp128", "tg64"]
    d = ref.describe()
    assert d["mode"] == "live" and "clang" in d["version"]


def test_live_bitnet_cpp_timeout(tmp_path):
    ref = BitnetCppReference(FIX / "b158-a-i2s.gguf", bitnet_cpp_dir=_stand_ins(tmp_path, "--sleep"), timeout_s=0.5)
    with pytest.raises(ReferenceRunError, match="did not finish in 0.5 s"):
        ref.greedy("To be", 4)


def test_bitnet_cpp_dir_errors(tmp_path):
    with pytest.raises(ReferenceUnavailableError, match="is not a folder"):
        find_bitnet_cpp_programs(tmp_path / "nowhere")
    with pytest.raises(ReferenceUnavailableError, match="no llama-perplexity"):
        find_bitnet_cpp_programs(tmp_path)


def test_recorded_outputs_and_what_is_missing(tmp_path):
    ref = BitnetCppReference(FIX / "b158-a-i2s.gguf", threads=2)
    rp = ref.perplexity("", None, None, 4, None)
    assert rp.ppl == 17308.4364 and rp.n_ctx == 128 and not rp.complete
    assert "not run" in ref.describe()["note"] and "clang" in ref.describe()["version"]
    assert ref.bench(128, 64) is None  # no b158-a-i2s.bench.json recorded
    ub1 = ref.perplexity("", None, None, 4, 1)
    assert ub1.ppl is None and ub1.source.endswith("b158-a-i2s.ub1.kld")
    with pytest.raises(CrossValError, match="differs from the recorded file's n_ctx 128"):
        ref.perplexity("", None, 256, 4, None)
    lonely = tmp_path / "m.gguf"
    lonely.write_bytes(b"")
    empty = BitnetCppReference(lonely)
    with pytest.raises(ReferenceUnavailableError, match="no recorded bitnet.cpp logits .*m.kld.*llama-perplexity"):
        empty.perplexity("", None, None, 4, None)
    with pytest.raises(ReferenceUnavailableError, match="m.greedy.txt"):
        empty.greedy("To be", 4)


# --- checks ---------------------------------------------------------------------------------------------------

def test_judge_says_by_how_much():
    ok = C.judge("x", "X", 1e-6, 1e-4, "<=", "inference")
    bad = C.judge("x", "X", 3e-4, 1e-4, "<=", "inference")
    assert ok.passed and ok.margin == "100x under the limit"
    assert not bad.passed and bad.margin == "3x over the limit"
    assert not C.judge("x", "X", float("nan"), 1.0, "<=", "t").passed
    low = C.judge("top1", "T", 0.95, 0.999, ">=", "top1")
    assert not low.passed and "short of the limit" in low.margin


def test_token_parity_shows_first_difference():
    piece = lambda t: f"p{t}"  # noqa: E731
    ours = np.array([1, 5, 6, 7, 8, 9])
    assert C.token_parity(ours, ours.copy(), True, piece).passed
    assert C.token_parity(ours, ours[:4], False, piece).passed  # a base file holds a prefix
    bad = C.token_parity(ours, np.array([1, 5, 6, 70, 8, 9]), True, piece)
    assert not bad.passed and bad.value == 3
    assert "first difference at token 3" in bad.detail and "7:'p7'" in bad.detail and "70:'p70'" in bad.detail
    short = C.token_parity(ours[:5], ours, True, piece)
    assert not short.passed and short.value == 5


def test_greedy_checks_name_the_token():
    assert C.greedy_tokens_check([4, 4, 5], [4, 4, 5], str).passed
    bad = C.greedy_tokens_check([4, 4, 5], [4, 6, 5], lambda t: f"t{t}")
    assert not bad.passed and "generated token 1: ours 4 't4' vs reference 6 't6'" in bad.detail
    assert C.greedy_text_check([" a", " b"], " a b").passed
    bad = C.greedy_text_check([" a", " b", " c"], " a x c")
    assert not bad.passed and "generated token 1" in bad.detail


def test_report_renders_a_receipt(tmp_path):
    from bitnet_crossval.report import render_html
    from bitnet_crossval.runner import Receipt

    rng = np.random.default_rng(1)
    n = 126
    ref = rng.normal(size=300)
    receipt = Receipt(
        "fail", "2026-01-01T00:00:00+00:00",
        {"path": "m.gguf", "file": "m.gguf", "sha256": "ab" * 32, "size": 10, "arch": "bitnet", "name": "m",
         "tensor_types": {"F32": 3}},
        {"name": "llama-cpp", "program": "llama.cpp", "mode": "in-process", "version": "x", "source": "s"},
        {"versions": {"bitnet-inference": "0.1.0"}, "numerics": "fast", "kv_cache": "f32", "fault": None, "ubatch": 64},
        {"cpu": "cpu", "cpus_usable": 2, "platform": "linux", "python": "3.11", "numpy": "2"},
        {"n_ctx": 64, "n_chunks": 2, "text": "t", "fault": None, "tolerances": ToleranceConfig().__dict__},
        [C.judge("kld.mean", "KL divergence <mean>", 3e-5, 1e-5, "<=", "quantization"),
         C.not_run("greedy", "Greedy continuation", "token ids differ")],
        {"kld": {"mean": 3e-5, "max": 1e-4}},
        {"position": list(range(n)), "kld": rng.exponential(1e-6, n).tolist() + [0.0] * 0,
         "rel_error": rng.exponential(1e-6, n).tolist(), "n_ctx": 64,
         "scatter": {"kind": "logits", "ours": (ref + 1e-6).tolist(), "reference": ref.tolist()}},
        ["a note"])
    page = render_html(receipt)
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 4
    assert "KL divergence &lt;mean&gt;" in page and ">FAIL<" in page and "3x over the limit" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    back = Receipt.from_dict(json.loads(receipt.to_json()))
    assert back.checks[0].margin == "3x over the limit" and back.verdict == "fail"


def test_token_mismatch_stops_the_run_and_still_reports(tmp_path):
    """A reference whose tokenizer differs: the run stops after the token check, every later check 'not run'."""
    from bitnet_crossval.references import RefPerplexity, Reference
    from bitnet_crossval.report import render_html
    from bitnet_crossval.runner import run_crossval

    class OffByOne(Reference):
        name = "fake"

        def describe(self):
            return {"name": "fake", "mode": "in-process", "version": "0"}

        def perplexity(self, text, text_path, n_ctx, n_chunks, ubatch):
            from bitnet_models import read_gguf
            from bitnet_tokenizers import load_tokenizer

            ids = load_tokenizer(read_gguf(FIX / "b158-a-i2s.gguf")).encode(text)
            ids[5] += 1
            return RefPerplexity(np.asarray(ids), True, 128, 128, "logits", [])

        def greedy(self, prompt, n):
            raise AssertionError("must not get this far")

    cfg = CrossValidationConfig(model=FIX / "b158-a-i2s.gguf", reference="bitnet-cpp", text=FIX / "text.txt")
    r = run_crossval(cfg, reference=OffByOne())
    assert r.verdict == "fail" and r.checks[0].name == "tokens" and r.checks[0].value == 5
    assert "first difference at token 5" in r.checks[0].detail
    assert all(c.passed is None and "token ids differ" in c.detail for c in r.checks[1:])
    page = render_html(r)
    assert ">FAIL<" in page and "<svg" not in page  # no numbers to plot


def test_llama_cpp_reference_refuses_bitnet_cpp_models_before_loading():
    from bitnet_crossval.references import LlamaCppReference

    with pytest.raises(ReferenceUnavailableError, match="b158-a-i2s.gguf has I2_S tensors.*--reference bitnet-cpp"):
        LlamaCppReference(FIX / "b158-a-i2s.gguf")
    with pytest.raises(ReferenceUnavailableError, match="arch 'bitnet-b1.58'"):
        LlamaCppReference(FIX / "b158-a-f32.gguf")
