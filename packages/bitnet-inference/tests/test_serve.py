"""`bitnet serve` end to end: the real `openai` client against the server on loopback (fixture model b158-a-i2s)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from bitnet_inference.generate import Model, generate
from bitnet_inference.serve.app import ServerConfig, create_app
from bitnet_inference.serve.engine import Engine
from bitnet_inference.serve.testing import serve_in_thread
from bitnet_tokenizers import load_tokenizer, render_chat

pytestmark = pytest.mark.fast

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
N_CTX = 128
PROMPT = "Once upon a time"


def _server(fixtures, parallel=4, queue_size=4, **config):
    model = Model(fixtures / "b158-a-i2s.gguf", n_ctx=N_CTX, n_slots=parallel)
    tok = load_tokenizer(model.gguf)
    engine = Engine(model, tok, n_parallel=parallel, queue_size=queue_size)
    config = ServerConfig(model_id="tiny", chat_template=TEMPLATE, max_body_bytes=64 * 1024, **config)
    return engine, tok, create_app(engine, tok, config)


@pytest.fixture(scope="module")
def server(fixtures):
    engine, tok, app = _server(fixtures)
    with serve_in_thread(app) as url:
        yield url, engine, tok


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(fixtures):
    """Greedy text from the plain engine (one sequence, no server): what the server must reproduce."""
    model = Model(fixtures / "b158-a-i2s.gguf", n_ctx=N_CTX)
    tok = load_tokenizer(model.gguf)
    return lambda prompt, n: generate(model, tok, prompt, n)


# --- the API through the openai client ----------------------------------------------------------------------

def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    h = httpx.get(server[0] + "/health").json()
    assert h["status"] == "ok" and h["slots_idle"] + h["slots_processing"] == 4
    assert set(h["stats"]) >= {"decode_steps", "max_batch", "decode_tokens", "decode_s", "prefill_tokens"}
    assert httpx.get(server[0] + "/v1/models/tiny").json()["id"] == "tiny"
    r = httpx.get(server[0] + "/v1/models/other")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_completion_matches_the_engine(server, client, reference):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, temperature=0)
    assert r.object == "text_completion" and r.model == "tiny"
    assert r.choices[0].text == reference(PROMPT, 10)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(server[2].encode(PROMPT))
    assert r.usage.completion_tokens == 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + 10


def test_max_tokens(client):
    for n in (1, 3):
        r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=n, temperature=0)
        assert r.usage.completion_tokens == n and r.choices[0].finish_reason == "length"


def test_chat(server, client, reference):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story."}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0)
    text = render_chat(server[2], msgs, True, TEMPLATE)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == reference(server[2].encode(text, parse_special=True), 8)
    assert r.usage.prompt_tokens == len(server[2].encode(text, parse_special=True))
    assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"


def test_streaming_chat(client):
    msgs = [{"role": "user", "content": "Tell me a story."}]
    whole = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_stream_ends_with_done(server):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", server[0] + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    parsed = [json.loads(e[6:]) for e in events[:-1]]
    assert parsed[-1]["choices"][0]["finish_reason"] == "length"
    assert all(p["choices"][0]["finish_reason"] is None for p in parsed[:-1])


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences(client, reference, stream):
    full = reference(PROMPT, 16)
    words = full.split()
    stop = words[3]  # cut at its first appearance: the text before it comes back, finish_reason "stop"
    at = full.find(stop)
    assert at > 0
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop, "never-seen-text"])
    if stream:
        chunks = list(client.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].text for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        r = client.completions.create(**kwargs)
        text, finish = r.choices[0].text, r.choices[0].finish_reason
    assert text == full[:at]
    assert finish == "stop"


def test_stop_text_is_never_streamed(client, reference):
    """A stop string that spans tokens: no chunk may carry its first characters before the stop is seen."""
    full = reference(PROMPT, 16)
    stop = full[len(full) // 2 - 3 : len(full) // 2 + 3]
    at = full.find(stop)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16, temperature=0, stop=stop,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full[:at]


def test_seed_reproducibility(client):
    def run(**kw):
        return client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, **kw).choices[0].text

    assert run(temperature=0) == run(temperature=0) == run(temperature=0, seed=5)
    assert run(temperature=1e-118) == run(temperature=0)  # found by the fuzzer: a tiny temperature is greedy
    a, b = run(temperature=1.0, seed=1234), run(temperature=1.0, seed=1234)
    assert a == b
    others = {run(temperature=1.5, seed=s) for s in (1, 2, 3)}
    assert len(others) > 1, "different seeds should draw different text at temperature 1.5"


def test_penalties_discourage_repeats(client):
    def words(**kw):
        r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, **kw)
        return r.choices[0].text.split()

    plain = words()
    assert len(set(plain)) < len(plain), "the fixture model repeats itself at temperature 0"
    penalized = words(presence_penalty=2.0, frequency_penalty=2.0)
    assert len(set(penalized)) > len(set(plain))


def test_concurrent_requests_share_decode_steps(server, client):
    engine = server[1]
    before = engine.stats()
    results = {}

    def one(i):
        results[i] = client.completions.create(model="tiny", prompt=f"{PROMPT} {i}", max_tokens=12, temperature=0,
                                               extra_body={"ignore_eos": True})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = engine.stats()
    assert sorted(results) == [0, 1, 2, 3]
    assert all(r.usage.completion_tokens == 12 for r in results.values())
    steps = after["decode_steps"] - before["decode_steps"]
    decoded = after["decode_tokens"] - before["decode_tokens"]
    assert decoded == 4 * 11  # the first token of each comes from its prefill
    assert steps < decoded, "the four sequences never shared a decode step"


# --- errors -------------------------------------------------------------------------------------------------

def _err(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    return e


def test_n_other_than_one_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2, n=2)
    assert "'n' must be 1" in str(ei.value)
    assert ei.value.body["param"] == "n"


@pytest.mark.parametrize("body, param", [
    ({"prompt": PROMPT, "temperature": 3}, "temperature"),
    ({"prompt": PROMPT, "top_p": 0}, "top_p"),
    ({"prompt": PROMPT, "max_tokens": 0}, "max_tokens"),
    ({"prompt": PROMPT, "max_tokens": "5"}, "max_tokens"),
    ({"prompt": PROMPT, "stop": [1, 2]}, "stop"),
    ({"prompt": PROMPT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [1, 99999]}, "prompt"),
    ({}, "prompt"),
    ({"prompt": PROMPT, "seed": 1.5}, "seed"),
    ({"prompt": PROMPT, "stream": "yes"}, "stream"),
])
def test_bad_parameters_are_400(server, body, param):
    assert _err(httpx.post(server[0] + "/v1/completions", json=body), 400)["param"] == param


def test_bad_chat_bodies_are_400(server):
    url = server[0] + "/v1/chat/completions"
    assert _err(httpx.post(url, json={"messages": []}), 400)["param"] == "messages"
    assert _err(httpx.post(url, json={"messages": [{"role": "wizard", "content": "x"}]}), 400)["param"] == \
        "messages[0].role"
    assert _err(httpx.post(url, json={"messages": [{"role": "user", "content": 5}]}), 400)["param"] == \
        "messages[0].content"


def test_not_json_and_not_an_object(server):
    url = server[0] + "/v1/completions"
    assert "not valid JSON" in _err(httpx.post(url, content=b"{nope"), 400)["message"]
    _err(httpx.post(url, json=[1, 2]), 400)


def test_404_and_405_are_openai_shaped(server):
    assert _err(httpx.get(server[0] + "/v2/whatever"), 404)["type"] == "not_found_error"
    _err(httpx.get(server[0] + "/v1/completions"), 405)


def test_oversize_body_is_413(server):
    r = httpx.post(server[0] + "/v1/completions", json={"prompt": "x" * 100_000})
    assert _err(r, 413)["code"] == "body_too_large"


def test_prompt_past_the_context_is_413(server, client):
    r = httpx.post(server[0] + "/v1/completions", json={"prompt": list(range(10, 10 + N_CTX))})
    assert _err(r, 413)["code"] == "context_length_exceeded"
    with pytest.raises(openai.APIStatusError) as ei:
        client.completions.create(model="tiny", prompt=" t5" * (2 * N_CTX), max_tokens=2)
    assert ei.value.status_code == 413


def test_max_tokens_past_the_context_stops_at_the_context(client):
    prompt = list(range(10, 10 + N_CTX - 4))
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=50, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"


# --- API key, busy server, disconnects ----------------------------------------------------------------------

def test_api_key(fixtures):
    engine, tok, app = _server(fixtures, parallel=1, api_key="s3cret")
    with serve_in_thread(app) as url:
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model="tiny", prompt=PROMPT, max_tokens=1).usage.completion_tokens == 1
        bad = openai.OpenAI(base_url=url + "/v1", api_key="s3cret-not", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        e = _err(httpx.post(url + "/v1/chat/completions", json={"messages": []}), 401)
        assert e["code"] == "invalid_api_key"
        assert httpx.get(url + "/health").status_code == 200  # health needs no key


def test_busy_server_answers_503_and_disconnect_frees_the_slot(fixtures):
    engine, tok, app = _server(fixtures, parallel=1, queue_size=0)
    _pace(engine)
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        long = {"model": "tiny", "prompt": PROMPT, "max_tokens": 100, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", url + "/v1/completions", json=long, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the slot is taken
            busy = httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 1})
            assert _err(busy, 503)["code"] == "server_busy"
            assert busy.headers["Retry-After"] == "1"
            with pytest.raises(openai.InternalServerError):
                client.completions.create(model="tiny", prompt=PROMPT, max_tokens=1)
        # the client hung up after one chunk: the engine must free the slot long before 100 tokens
        t_end = time.monotonic() + 20
        while engine.load()["active"] and time.monotonic() < t_end:
            time.sleep(0.05)
        assert engine.load()["active"] == 0
        assert engine.steps < 60
        r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
        assert r.usage.completion_tokens == 2


def _pace(engine, seconds=0.02):
    """Make every decode step take at least `seconds`, so that a test about cancellation does not depend on how
    fast the kernels decode the tiny fixture model."""
    step = engine.model.forward_batch

    def paced(*a, **k):
        time.sleep(seconds)
        return step(*a, **k)

    engine.model.forward_batch = paced


def test_non_streaming_disconnect_cancels(fixtures):
    engine, tok, app = _server(fixtures, parallel=1)
    _pace(engine)
    with serve_in_thread(app) as url:
        body = {"prompt": PROMPT, "max_tokens": 100, "ignore_eos": True}
        with pytest.raises(httpx.TimeoutException):
            httpx.post(url + "/v1/completions", json=body, timeout=0.5)
        t_end = time.monotonic() + 20
        while engine.load()["active"] and time.monotonic() < t_end:
            time.sleep(0.05)
        assert engine.load()["active"] == 0 and engine.steps < 99


# --- the command --------------------------------------------------------------------------------------------

def test_serve_command_on_a_free_port(fixtures):
    cmd = [sys.executable, "-m", "bitnet_inference.serve", "-m", str(fixtures / "b158-a-i2s.gguf"), "--port", "0",
           "-c", "64", "--parallel", "2", "--api-key", "k"]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for _ in range(10):
            line = p.stderr.readline()
            if line.startswith("serving"):
                url = line.split(" on ")[1].split()[0]
                break
        assert url and url.startswith("http://127.0.0.1:")
        for _ in range(100):
            try:
                h = httpx.get(url.removesuffix("/v1") + "/health")
                break
            except httpx.ConnectError:
                time.sleep(0.05)
        assert h.json()["slots_idle"] == 2
        r = openai.OpenAI(base_url=url, api_key="k", max_retries=0).completions.create(
            model="b158-a-i2s", prompt=PROMPT, max_tokens=2)
        assert r.usage.completion_tokens == 2 and r.model == "b158-a-i2s"
    finally:
        p.terminate()
        p.wait(20)


@pytest.mark.parametrize("flags, message", [
    (["--parallel", "0"], "--parallel must be >= 1"),
    (["--port", "70000"], "--port must be 0..65535"),
    (["--chat-template", "/nonexistent.jinja"], "--chat-template"),
    (["-n", "0"], "-n must be positive"),
])
def test_bad_flags_are_one_line_errors(fixtures, flags, message):
    cmd = [sys.executable, "-m", "bitnet_inference.serve", "-m", str(fixtures / "b158-a-i2s.gguf"), *flags]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and message in p.stderr and "Traceback" not in p.stderr
