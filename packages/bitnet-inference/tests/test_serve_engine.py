"""The continuous-batching engine without HTTP: scripted samplers make the generated tokens known in advance."""

from __future__ import annotations

import queue
import threading

import pytest

from bitnet_inference.errors import EngineError
from bitnet_inference.generate import Model
from bitnet_inference.serve.engine import Engine, GenRequest, QueueFullError, wait_idle
from bitnet_tokenizers import load_tokenizer

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def parts(fixtures):
    model = Model(fixtures / "b158-a-i2s.gguf", n_ctx=64, n_slots=3)
    return model, load_tokenizer(model.gguf)


@pytest.fixture
def engine(parts):
    e = Engine(*parts, n_parallel=3, queue_size=2).start()
    yield e
    e.stop()


def scripted(ids):
    it = iter(ids)
    return lambda logits: next(it)


class Collector:
    def __init__(self):
        self.events = queue.Queue()
        self.done = threading.Event()
        self.all = []

    def __call__(self, ev):
        self.all.append(ev)
        if ev.finish_reason is not None:
            self.done.set()

    def wait(self, timeout=30):
        assert self.done.wait(timeout), "the request never finished"
        return "".join(e.text for e in self.all), self.all[-1]


def ids_of(tok, words):
    return [tok.vocab.token_to_id["\u2581" + w] for w in words]


def submit(engine, tok, tokens, max_tokens=20, stop=(), ignore_eos=False):
    c = Collector()
    engine.submit(GenRequest(tok.encode("hello"), max_tokens, scripted(tokens), c, stop=stop, ignore_eos=ignore_eos))
    return c


def test_text_and_length(engine, parts):
    tok = parts[1]
    c = submit(engine, tok, ids_of(tok, ["t1", "t2", "t3"]), max_tokens=3)
    text, last = c.wait()
    assert text == " t1 t2 t3" and last.finish_reason == "length" and last.n_tokens == 3


def test_eos_stops_and_counts(engine, parts):
    tok = parts[1]
    c = submit(engine, tok, ids_of(tok, ["t1"]) + [tok.eos_id], max_tokens=10)
    text, last = c.wait()
    assert text == " t1" and last.finish_reason == "stop" and last.n_tokens == 2


def test_ignore_eos(engine, parts):
    tok = parts[1]
    c = submit(engine, tok, [tok.eos_id, tok.eos_id, *ids_of(tok, ["t9"])], max_tokens=3, ignore_eos=True)
    text, last = c.wait()
    assert text == " t9" and last.finish_reason == "length"


def test_stop_spanning_tokens_is_held_back(engine, parts):
    tok = parts[1]
    c = submit(engine, tok, ids_of(tok, ["t1", "t2", "t3", "t4", "t5"]), stop=["t2 t3"])
    text, last = c.wait()
    assert text == " t1 " and last.finish_reason == "stop"
    # no event ever carried text past the cut, even before the stop string was complete
    assert all(" t1 ".startswith("".join(e.text for e in c.all[: i + 1])) for i in range(len(c.all)))


def test_held_back_text_comes_out_at_the_end(engine, parts):
    tok = parts[1]
    c = submit(engine, tok, ids_of(tok, ["t1", "t2"]), max_tokens=2, stop=["t2 never"])
    text, last = c.wait()
    assert text == " t1 t2" and last.finish_reason == "length"


def test_utf8_split_across_byte_tokens(engine, parts):
    tok = parts[1]
    euro = [tok.vocab.token_to_id[f"<0x{b:02X}>"] for b in "€".encode()]
    c = submit(engine, tok, euro, max_tokens=3)
    text, _ = c.wait()
    assert text == "€" and all("\ufffd" not in e.text for e in c.all)


def test_queue_is_bounded(parts):
    model, tok = parts
    e = Engine(model, tok, n_parallel=1, queue_size=1)  # not started: nothing leaves the queue
    e.submit(GenRequest([1, 5], 1, scripted([5]), lambda ev: None))
    e.submit(GenRequest([1, 5], 1, scripted([5]), lambda ev: None))
    with pytest.raises(QueueFullError):
        e.submit(GenRequest([1, 5], 1, scripted([5]), lambda ev: None))


def test_cancel_while_queued_and_running(engine, parts):
    tok = parts[1]
    many = ids_of(tok, ["t1"]) * 60
    running = [Collector() for _ in range(3)]
    reqs = [GenRequest([1, 5], 60, scripted(many), c) for c in running]
    for r in reqs:
        engine.submit(r)
    queued = Collector()
    req = GenRequest([1, 5], 60, scripted(many), queued)
    engine.submit(req)
    req.cancel()
    for r in reqs:
        r.cancel()
    for c in running + [queued]:
        _, last = c.wait()
        assert last.finish_reason == "cancelled" and last.n_tokens < 60
    assert wait_idle(engine)
    assert sorted(engine._free) == [0, 1, 2]


def test_one_failing_prefill_spares_the_others(engine, parts):
    tok = parts[1]

    def broken(logits):
        raise ValueError("boom")

    ok = Collector()
    bad = Collector()
    engine.submit(GenRequest(tok.encode("hi"), 3, broken, bad))
    engine.submit(GenRequest(tok.encode("hi"), 3, scripted(ids_of(tok, ["t1"]) * 3), ok))
    assert bad.wait()[1].finish_reason == "error"
    assert ok.wait()[0] == " t1 t1 t1"


def test_batches_share_steps(engine, parts):
    tok = parts[1]
    cs = [submit(engine, tok, ids_of(tok, [f"t{i}"]) * 8, max_tokens=8) for i in range(3)]
    texts = [c.wait()[0] for c in cs]
    assert texts == [f" t{i}" * 8 for i in range(3)]
    assert engine.max_batch == 3


def test_rejects_what_the_context_cannot_hold(engine):
    with pytest.raises(EngineError, match="context"):
        engine.submit(GenRequest(list(range(5, 5 + 64)), 1, scripted([5]), lambda ev: None))
    with pytest.raises(EngineError, match="empty"):
        engine.submit(GenRequest([], 1, scripted([5]), lambda ev: None))


def test_more_parallel_than_slots_is_an_error(parts):
    with pytest.raises(EngineError, match="n_slots"):
        Engine(*parts, n_parallel=4)


def test_failing_sampler_mid_generation_spares_the_others(engine, parts):
    tok = parts[1]
    calls = []

    def breaks_later(logits):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("late boom")
        return ids_of(tok, ["t2"])[0]

    bad, ok = Collector(), Collector()
    engine.submit(GenRequest(tok.encode("hi"), 6, breaks_later, bad))
    engine.submit(GenRequest(tok.encode("hi"), 6, scripted(ids_of(tok, ["t1"]) * 6), ok))
    assert bad.wait()[1].finish_reason == "error" and "late boom" in bad.all[-1].error
    assert ok.wait() == (" t1" * 6, ok.all[-1]) and ok.all[-1].finish_reason == "length"


def test_engine_failure_reaches_the_client(engine, parts):
    tok = parts[1]

    def broken(logits):
        raise ValueError("boom")

    c = Collector()
    engine.submit(GenRequest(tok.encode("hi"), 5, broken, c))
    text, last = c.wait()
    assert last.finish_reason == "error" and "boom" in last.error
    ok = submit(engine, tok, ids_of(tok, ["t1"]), max_tokens=1)  # the engine still serves
    assert ok.wait()[0] == " t1"
    assert wait_idle(engine) and sorted(engine._free) == [0, 1, 2]


def test_a_response_dropped_unread_cancels_its_request(parts):
    """The app's safety net: an event stream that is garbage-collected before it ran cancels the request."""
    import asyncio
    import gc

    from bitnet_inference.serve.app import API, ServerConfig
    from bitnet_inference.serve.schemas import parse_completion

    model, tok = parts
    engine = Engine(model, tok, n_parallel=3, queue_size=2)  # not started: the request stays queued
    api = API(engine, tok, ServerConfig("tiny"))
    params = parse_completion({"prompt": "hi", "max_tokens": 5}).params

    async def drop():
        events = await api._events(None, [1, 5, 6], params)
        del events

    asyncio.run(drop())
    gc.collect()
    assert engine._waiting[0].cancelled.is_set()
