"""Parity with bitnet.cpp on its recorded outputs (tests/fixtures, see PROVENANCE.md).

The thresholds are the engine issue's: ggml numerics must match bitnet.cpp's float path (mean KLD < 1e-5,
top-1 >= 99.9%, PPL within 0.01%); fast numerics must land within bitnet.cpp's own batched-vs-single spread.
"""

import numpy as np
import pytest

from bitnet_inference.generate import Model, generate_step
from bitnet_inference.perplexity import Stats, chunks_of, decode_logprobs, eval_chunk, read_kld_base, score_chunk

pytestmark = pytest.mark.fast

BITNET_CPP_PPL = {"b158-a-i2s": 17308.4364, "b158-a-f32": 17339.3820, "b158-a-i2s.ub1": 17319.98}
BOS = 1


def run_kld(fixtures, model_name, kld_name, numerics, ubatch=None, n_chunks=None):
    base = read_kld_base(fixtures / f"{kld_name}.kld")
    model = Model(fixtures / f"{model_name}.gguf", numerics=numerics, n_ctx=base.n_ctx)
    stats = Stats()
    for c, chunk in enumerate(chunks_of(base.tokens, base.n_ctx, n_chunks, BOS)):
        logits = eval_chunk(model, chunk, ubatch or base.n_ctx)
        score_chunk(logits, chunk, stats, decode_logprobs(base.records[c]))
    return Stats.ppl(stats.nll)[0], float(np.mean(stats.kld)), float(np.mean(stats.same_top))


@pytest.mark.parametrize(
    "model_name,kld_name,ubatch",
    [("b158-a-i2s", "b158-a-i2s", None), ("b158-a-f32", "b158-a-f32", None), ("b158-a-i2s", "b158-a-i2s.ub1", 1)],
)
def test_ggml_numerics_match_bitnet_cpp(fixtures, model_name, kld_name, ubatch):
    ppl, kld, top1 = run_kld(fixtures, model_name, kld_name, "ggml", ubatch)
    assert kld < 1e-5, kld
    assert top1 >= 0.999, top1
    assert abs(ppl / BITNET_CPP_PPL[kld_name] - 1) < 1e-4, ppl


def test_fast_numerics_f32_weights(fixtures):
    ppl, kld, top1 = run_kld(fixtures, "b158-a-f32", "b158-a-f32", "fast")
    assert kld < 1e-5, kld
    assert abs(ppl / BITNET_CPP_PPL["b158-a-f32"] - 1) < 1e-4


def test_fast_numerics_i2s_within_bitnet_cpp_spread(fixtures):
    ppl, kld, top1 = run_kld(fixtures, "b158-a-i2s", "b158-a-i2s", "fast")
    assert kld <= 5e-4, kld  # bitnet.cpp's own batched-vs-single spread is 4.3e-4
    assert abs(ppl / BITNET_CPP_PPL["b158-a-i2s"] - 1) < 5e-3, ppl


def prompt_ids(text: str) -> list[int]:
    # The fixture vocabulary has no piece for this text: llama.cpp's SentencePiece path gives BOS followed by
    # byte-fallback tokens <0xNN> (id 3 + byte) of the text with its leading space written as U+2581.
    return [BOS] + [3 + b for b in (" " + text).replace(" ", "\u2581").encode()]


def expected_continuation(fixtures, name: str) -> list[int]:
    words = (fixtures / f"{name}.greedy.txt").read_text(encoding="utf-8").split()
    # the prompt is printed first; each generated piece tN is the filler token "▁tN" = id N + 259
    return [int(w[1:]) + 259 for w in words if w.startswith("t") and w[1:].isdigit()]


@pytest.mark.parametrize("name", ["b158-a-i2s", "b158-a-f32"])
@pytest.mark.parametrize("numerics", ["fast", "ggml"])
def test_greedy_golden(fixtures, name, numerics):
    """End-to-end golden test: greedy decoding gives bitnet.cpp's 32-token continuation exactly."""
    expected = expected_continuation(fixtures, name)
    assert len(expected) == 32
    model = Model(fixtures / f"{name}.gguf", numerics=numerics)
    got = list(generate_step(model, prompt_ids("To be, or not to be"), max_tokens=32))
    assert got == expected
