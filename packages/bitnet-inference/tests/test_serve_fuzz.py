"""Fuzzed request bodies never crash the server: every answer is 2xx or an OpenAI-shaped 4xx (or the intended
503), and the server keeps serving afterwards."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitnet_inference.generate import Model
from bitnet_inference.serve.app import ServerConfig, create_app
from bitnet_inference.serve.engine import Engine
from bitnet_inference.serve.testing import serve_in_thread
from bitnet_tokenizers import load_tokenizer

pytestmark = pytest.mark.fast

TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


@pytest.fixture(scope="module")
def url(fixtures):
    model = Model(fixtures / "b158-a-i2s.gguf", n_ctx=48, n_slots=2)
    tok = load_tokenizer(model.gguf)
    engine = Engine(model, tok, n_parallel=2, queue_size=2)
    app = create_app(engine, tok, ServerConfig("tiny", chat_template=TEMPLATE, n_predict=2, max_body_bytes=16384))
    with serve_in_thread(app) as u:
        yield u


scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(-3, 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.floats(-3, 3) | st.text(max_size=30))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                      max_leaves=12)
message = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "system", "assistant", "tool", "x"])
                                              | values,
                                              "content": st.text(max_size=40) | values})
fields = {
    "model": st.text(max_size=10) | values,
    "prompt": st.text(max_size=60) | st.lists(st.integers(-5, 5000), max_size=60) | values,
    "messages": st.lists(message, max_size=3) | values,
    "max_tokens": st.integers(-2, 100) | values,
    "temperature": st.floats(-1, 3) | values,
    "top_p": st.floats(-0.5, 1.5) | values,
    "top_k": st.integers(-2, 5000) | values,
    "min_p": st.floats(-0.5, 1.5) | values,
    "seed": st.integers(-(2**65), 2**65) | values,
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=6) | values,
    "stream": st.booleans() | values,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | values}) | values,
    "n": st.integers(-1, 3) | values,
    "echo": st.booleans() | values,
    "presence_penalty": st.floats(-3, 3) | values,
    "frequency_penalty": st.floats(-3, 3) | values,
    "ignore_eos": st.booleans() | values,
    "logprobs": values,
    "suffix": values,
    "tools": values,
}
# valid values of each field: bodies built from these reach the engine (streaming, stops, seeds, penalties)
valid = {
    "max_tokens": st.integers(1, 100),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "top_k": st.integers(0, 5000),
    "min_p": st.floats(0, 1),
    "seed": st.integers(0, 2**64 - 1),
    "stop": st.text(min_size=1, max_size=5) | st.lists(st.text(min_size=1, max_size=5), max_size=4),
    "stream": st.booleans(),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "ignore_eos": st.booleans(),
    "echo": st.booleans(),
}
prompt_and_messages = {
    "prompt": st.text(min_size=1, max_size=60) | st.lists(st.integers(0, 4095), min_size=1, max_size=60),
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                                "content": st.text(max_size=40)}), min_size=1, max_size=3),
}
bodies = (st.fixed_dictionaries(prompt_and_messages, optional=valid)  # valid: must answer 200 (or 413, 503)
          | st.fixed_dictionaries(prompt_and_messages, optional=valid | {k: fields[k] for k in ("stop", "seed", "n")})
          | st.fixed_dictionaries({}, optional=fields) | values)


def check(r: httpx.Response, body_text: str) -> None:
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, body_text[:500], r.text[:500])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["message"]
        return
    if r.headers["content-type"].startswith("text/event-stream"):
        events = [e for e in r.text.split("\n\n") if e]
        assert events[-1] == "data: [DONE]", r.text[-300:]
        for e in events[:-1]:
            json.loads(e.removeprefix("data: "))
    elif "choices" in (out := r.json()):
        assert out["usage"]["completion_tokens"] <= 2 and len(out["choices"]) == 1
    else:
        assert out.get("object") == "list" or out.get("status") == "ok", out


FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@FUZZ
@given(body=bodies)
def test_fuzzed_json_bodies(url, path, body):
    text = json.dumps(body)  # NaN and Infinity included: Python's json accepts them, the server must refuse them
    r = httpx.post(url + path, content=text, headers={"content-type": "application/json"}, timeout=60)
    check(r, text)


@settings(FUZZ, max_examples=50)
@given(raw=st.binary(max_size=300), path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/models",
                                                          "/health", "/v1/x"]),
       method=st.sampled_from(["POST", "GET", "PUT"]))
def test_fuzzed_raw_bytes(url, raw, path, method):
    r = httpx.request(method, url + path, content=raw, timeout=60)
    check(r, repr(raw))


def test_server_still_serves_after_fuzzing(url):
    r = httpx.post(url + "/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    h = httpx.get(url + "/health").json()
    assert h["slots_processing"] == 0 and h["waiting"] == 0
