"""Bad input gets a clear typed error; sampling callables behave; KLD base files round-trip."""

import numpy as np
import pytest

from bitnet_inference import EngineError, Model, generate_step, make_logits_processors, make_sampler
from bitnet_inference.errors import ContextOverflowError
from bitnet_inference.perplexity import (
    KLDFileError,
    decode_logprobs,
    encode_logprobs,
    read_kld_base,
    record_words,
    write_kld_base,
)
from bitnet_models import write_gguf
from bitnet_models.gguf import read_gguf

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def model(fixtures):
    return Model(fixtures / "b158-a-i2s.gguf", n_ctx=32)


def test_context_overflow(model):
    with pytest.raises(ContextOverflowError, match="-c"):
        model.forward(np.ones(40, dtype=np.int64), 0)


def test_empty_prompt_and_bad_tokens(model):
    with pytest.raises(EngineError, match="empty"):
        next(generate_step(model, []))
    with pytest.raises(EngineError, match="out of range"):
        model.forward([model.args.n_vocab], 0)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"temp": -1}, "--temp"), ({"top_k": -2}, "--top-k"), ({"top_p": 0}, "--top-p"), ({"min_p": 2}, "--min-p")],
)
def test_invalid_sampling_values(kwargs, match):
    with pytest.raises(EngineError, match=match):
        make_sampler(**{"temp": 0.7, **kwargs})


def test_invalid_repeat_penalty():
    with pytest.raises(EngineError, match="--repeat-penalty"):
        make_logits_processors(repeat_penalty=0)


def test_unknown_arch_and_missing_tensor(tmp_path, fixtures):
    src = read_gguf(fixtures / "b158-a-f32.gguf")
    md = {k: (v if isinstance(v, (int, float, str, np.ndarray)) else list(v))
          for k, v in src.metadata.items() if not k.startswith("GGUF.")}
    tensors = [(n, src.array(n), src.info(n).qtype.name) for n in src.tensors]
    bad_arch = tmp_path / "arch.gguf"
    write_gguf(bad_arch, "llama", {k.replace("bitnet-b1.58.", "llama."): v for k, v in md.items()}, tensors)
    with pytest.raises(EngineError, match="architecture 'llama' is not supported"):
        Model(bad_arch)
    missing = tmp_path / "missing.gguf"
    write_gguf(missing, "bitnet-b1.58", md, [t for t in tensors if t[0] != "blk.2.ffn_up.weight"])
    with pytest.raises(EngineError, match="blk.2.ffn_up.weight"):
        Model(missing)


def test_sampler_seeded_and_restricted():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(500).astype(np.float32)
    s1, s2 = make_sampler(1.0, 0, 1.0, 0.0, seed=7), make_sampler(1.0, 0, 1.0, 0.0, seed=7)
    assert [s1(logits) for _ in range(20)] == [s2(logits) for _ in range(20)]
    top5 = set(np.argsort(-logits)[:5].tolist())
    s = make_sampler(1.5, 5, 1.0, 0.0, seed=3)
    assert {s(logits) for _ in range(200)} <= top5
    assert make_sampler(0.0)(logits) == int(np.argmax(logits))
    # top-p: with one dominant token and p small, only it is ever drawn
    peaked = logits.copy()
    peaked[42] = 50
    s = make_sampler(1.0, 0, 0.5, 0.0, seed=0)
    assert {s(peaked) for _ in range(50)} == {42}
    # min-p removes tokens far below the best
    s = make_sampler(1.0, 0, 1.0, 0.5, seed=0)
    probs = np.exp(logits - logits.max())
    allowed = set(np.nonzero(probs >= 0.5)[0].tolist())
    assert {s(logits) for _ in range(200)} <= allowed


def test_sampler_on_the_top_k_matches_the_whole_vector():
    """The sampler works on the top-k entries only; its distribution is the one of top-k, top-p, min-p and the
    temperature applied to the whole vector (ties at the k-th value kept), and a seeded draw picks the index the
    whole-vector computation picks for the same uniform draw."""
    from bitnet_inference.sampling import _probs, apply_min_p, apply_top_k, apply_top_p, top_k_indices

    rng = np.random.default_rng(5)
    for trial in range(30):
        v = int(rng.integers(50, 5000))
        logits = (rng.standard_normal(v) * rng.uniform(0.5, 4)).astype(np.float32)
        if trial % 3 == 0:
            logits[rng.integers(0, v, 8)] = logits.max()  # ties at the top
        k, p, mp, t = int(rng.integers(0, 60)), float(rng.uniform(0.3, 1.0)), float(rng.uniform(0, 0.2)), 0.8
        full = _probs(apply_min_p(apply_top_p(apply_top_k(logits, k), p), mp), t)
        idx = top_k_indices(logits, k)
        compact = np.zeros(v)
        compact[idx] = _probs(apply_min_p(apply_top_p(logits[idx], p), mp), t)
        np.testing.assert_allclose(compact, full, rtol=1e-12, atol=1e-15)
        s1 = make_sampler(t, k, p, mp, seed=trial)
        draws = np.random.default_rng(trial)
        want = [int(draws.choice(v, p=full)) for _ in range(50)]
        assert [s1(logits) for _ in range(50)] == want
        # from a shuffled superset of the top-k entries (what the GPU model's top-k head returns): the same draws
        s2 = make_sampler(t, k, p, mp, seed=trial)
        sup = np.flatnonzero(logits >= np.sort(logits)[-min(3 * k, v)]) if k else np.arange(v)
        sup = rng.permutation(sup)
        assert [s2.from_candidates(sup, logits[sup]) for _ in range(50)] == want


def test_repetition_penalty():
    (proc,) = make_logits_processors(repeat_penalty=2.0)
    logits = np.array([2.0, -2.0, 1.0], np.float32)
    out = proc([0, 1], logits)
    assert out.tolist() == [1.0, -4.0, 1.0]
    (raise_,) = make_logits_processors(repeat_penalty=0.5)  # raises recent logits: no top-k shortcut
    assert not hasattr(raise_, "on_rows")


def test_repetition_penalty_on_top_k_candidates():
    """The repeat penalty (>= 1) applied to a shuffled superset of the penalized vector's top-k entries alone (what
    the GPU model's top-k head returns, unpenalized, when given the penalty), then top-k sampling from them: the
    draws of the penalty on the whole vector, then the sampler; recent tokens at the top, ties."""
    rng = np.random.default_rng(11)
    for trial in range(40):
        v = int(rng.integers(100, 3000))
        logits = (rng.standard_normal(v) * rng.uniform(0.5, 4)).astype(np.float32)
        order = np.argsort(-logits)
        recent = list(rng.choice(order[:30], int(rng.integers(1, 20)), replace=False))  # recent tokens near the top
        recent += list(rng.integers(0, v, int(rng.integers(0, 40))))
        if trial % 4 == 0:
            logits[order[int(rng.integers(1, 10))]] = logits[order[0]]  # a tie at the top
        proc_n = int(rng.integers(1, 64))
        (proc,) = make_logits_processors(repeat_penalty=float(rng.choice([1.05, 1.3, 2.0, 8.0])),
                                         repeat_last_n=proc_n)
        k, p, mp, t = int(rng.integers(1, 50)), float(rng.uniform(0.5, 1.0)), float(rng.uniform(0, 0.1)), 0.9
        s1 = make_sampler(t, k, p, mp, seed=trial)
        want = [s1(proc(recent, logits)) for _ in range(40)]
        assert proc.penalty >= 1 and set(proc.recent(recent).tolist()) == set(recent[-proc_n:])
        pen = proc(recent, logits)
        sup = np.flatnonzero(pen >= np.sort(pen)[-min(k + int(rng.integers(0, 20)), v)])
        sup = rng.permutation(sup)
        s2 = make_sampler(t, k, p, mp, seed=trial)
        got = [s2.from_candidates(sup, proc.on_rows(recent, sup, logits[sup])) for _ in range(40)]
        assert got == want, trial


def test_kld_file_round_trip(tmp_path, fixtures):
    base = read_kld_base(fixtures / "b158-a-i2s.kld")
    assert base.records.shape == (8, 63, record_words(4096))
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((63 * 2, 4096)).astype(np.float32) * 3
    rec = encode_logprobs(logits)
    lp = decode_logprobs(rec)
    ref = logits - logits.max(1, keepdims=True)
    ref = ref - np.log(np.exp(ref).sum(1, keepdims=True))
    keep = ref > ref.max(1, keepdims=True) - 16
    assert np.max(np.abs(lp - ref)[keep]) < 2e-3  # 16-bit codes over a 16-nat range
    path = tmp_path / "x.kld"
    toks = np.arange(2 * 128, dtype=np.int32)
    write_kld_base(path, 128, 4096, toks, rec.reshape(2, 63, -1))
    back = read_kld_base(path)
    assert np.array_equal(back.tokens, toks) and np.array_equal(back.records.reshape(126, -1), rec)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(KLDFileError, match="bytes"):
        read_kld_base(path)
    (tmp_path / "y.kld").write_bytes(b"not a kld file at all")
    with pytest.raises(KLDFileError, match="magic"):
        read_kld_base(tmp_path / "y.kld")


def test_forward_batch_equals_sequential(fixtures):
    """A batched decode step over several sequences gives each sequence what it gets alone."""
    m = Model(fixtures / "b158-a-i2s.gguf", n_ctx=32, n_slots=3)
    prompts = [[1, 5, 9, 200], [1, 77], [1, 300, 301, 302, 303, 304]]
    alone = []
    for s, p in enumerate(prompts):
        m.prefill(p, slot=s)
        alone.append(m.forward([42], len(p), slot=s)[0])
    for s, p in enumerate(prompts):  # redo the prompts so that each slot is back at len(p)
        m.prefill(p, slot=s)
    batched = m.forward_batch([42, 42, 42], [len(p) for p in prompts], [0, 1, 2])
    for s in range(3):
        # the int8 activation scale is per token, so batching changes nothing in the integer path; only the
        # head differs: one row meets the F16 head as F16, a batch stays F32 (bitnet.cpp's rule)
        rel = np.max(np.abs(batched[s] - alone[s])) / np.max(np.abs(alone[s]))
        assert rel < 5e-3 and batched[s].argmax() == alone[s].argmax()
    with pytest.raises(EngineError, match="once"):
        m.forward_batch([1, 1], [4, 4], [0, 0])


def test_tiny_temperature_samples_the_top_token():
    logits = np.array([1.0, 3.0, 2.0, -np.inf], np.float32)
    s = make_sampler(1e-118, 0, 1.0, 0.0, seed=0)
    assert {s(logits) for _ in range(20)} == {1}
