"""Request bodies of the OpenAI API, checked by hand into frozen records, and the OpenAI error shape.

Every problem is an `APIError` carrying the HTTP status, the OpenAI error type, the parameter at fault and a
message that says what was expected; the app turns it into `{"error": {...}}` JSON.
Unknown fields are ignored (clients send many we do not use), known ones are checked strictly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bitnet_quantization.errors import BitNetError

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_STOP_LEN = 256


class APIError(BitNetError):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                             413: "invalid_request_error", 503: "server_error"}.get(status, "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None  # None: up to the context
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int | None
    stop: tuple[str, ...]
    presence_penalty: float
    frequency_penalty: float
    ignore_eos: bool


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str | list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    echo: bool


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    params: SamplingParams
    stream: bool
    include_usage: bool


# --- field checkers -----------------------------------------------------------------------------------------

def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(f"'{name}' must be a number, got {v!r}", name)
    if not lo <= v <= hi:
        raise bad(f"'{name}' must be between {lo} and {hi}, got {v}", name)
    return float(v)


def _int(body: dict, name: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"'{name}' must be an integer, got {v!r}", name)
    if not lo <= v <= hi:
        raise bad(f"'{name}' must be between {lo} and {hi}, got {v}", name)
    return v


def _bool(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be true or false, got {v!r}", name)
    return v


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad(f"'stop' must be a string or a list of strings, got {v!r}", "stop")
    if len(items) > MAX_STOP:
        raise bad(f"'stop' may hold at most {MAX_STOP} sequences, got {len(items)}", "stop")
    for s in items:
        if not s or len(s) > MAX_STOP_LEN:
            raise bad(f"each stop sequence must be 1 to {MAX_STOP_LEN} characters, got {s!r}", "stop")
    return tuple(items)


def _common(body: Any, default_max_tokens: int | None) -> tuple[SamplingParams, bool, bool]:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad(f"'model' must be a string, got {model!r}", "model")
    n = _int(body, "n", 1, -(2**63), 2**63)
    if n != 1:
        raise bad(f"'n' must be 1: this server returns one choice per request (got {n}); send several requests "
                  "instead", "n")
    if body.get("best_of") not in (None, 1):
        raise bad("'best_of' must be 1 (or absent)", "best_of")
    if body.get("logprobs") not in (None, False, 0):
        raise bad("'logprobs' is not supported by this server", "logprobs")
    max_tokens = _int(body, "max_tokens", default_max_tokens, 1, 2**31)
    if body.get("max_completion_tokens") is not None:
        max_tokens = _int(body, "max_completion_tokens", None, 1, 2**31)
    stream = _bool(body, "stream", False)
    include_usage = False
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise bad(f"'stream_options' must be an object, got {so!r}", "stream_options")
        if not stream:
            raise bad("'stream_options' is only allowed with 'stream': true", "stream_options")
        include_usage = _bool(so, "include_usage", False)
    seed = _int(body, "seed", None, -(2**63), 2**64 - 1)
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        top_k=_int(body, "top_k", 0, 0, 2**31),
        min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
        seed=None if seed is None else seed % 2**64,
        stop=_stop(body),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        ignore_eos=_bool(body, "ignore_eos", False),
    )
    if params.top_p == 0:
        raise bad("'top_p' must be greater than 0 (use temperature 0 for greedy decoding)", "top_p")
    return params, stream, include_usage


def parse_completion(body: Any) -> CompletionRequest:
    params, stream, include_usage = _common(body, 16)  # OpenAI's default for /v1/completions
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        if prompt == "":
            raise bad("'prompt' is empty: give some text", "prompt")
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        pass  # token ids, range-checked against the vocabulary by the app
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise bad("'prompt' must be one string or one list of token ids: send one request per prompt", "prompt")
    else:
        raise bad(f"'prompt' must be a non-empty string or a list of token ids, got {prompt!r}"[:300], "prompt")
    if body.get("suffix") not in (None, ""):
        raise bad("'suffix' is not supported by this server", "suffix")
    return CompletionRequest(prompt, params, stream, include_usage, _bool(body, "echo", False))


_ROLES = ("system", "developer", "user", "assistant")


def _content(m: dict, i: int) -> str:
    c = m.get("content")
    if c is None and m.get("role") == "assistant":
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts: only text parts can be read here
        parts = []
        for p in c:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise bad(f"messages[{i}].content: only text parts ({{'type': 'text', 'text': ...}}) are supported",
                          f"messages[{i}].content")
            parts.append(p["text"])
        return "".join(parts)
    raise bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def parse_chat(body: Any) -> ChatRequest:
    params, stream, include_usage = _common(body, None)  # chat: up to the context unless max_tokens says
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("'messages' must be a non-empty list of {'role', 'content'} objects", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
        role = m.get("role")
        if role not in _ROLES:
            raise bad(f"messages[{i}].role must be one of {', '.join(_ROLES)}, got {role!r}"[:300],
                      f"messages[{i}].role")
        out.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    if body.get("tools") or body.get("functions"):
        raise bad("tool and function calling are not supported by this server", "tools")
    return ChatRequest(out, params, stream, include_usage)
