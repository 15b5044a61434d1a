"""The OpenAI-compatible HTTP API (Starlette): /v1/models, /v1/completions, /v1/chat/completions, /health.

Requests are checked (schemas.py), tokenized in a worker thread, and handed to the engine thread, whose events
come back through an asyncio queue. A client that goes away cancels its request; streaming responses are
server-sent events ending with `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bitnet_inference.sampling import make_sampler
from bitnet_inference.serve import schemas as S
from bitnet_inference.serve.engine import Engine, Event, GenRequest, QueueFullError

log = logging.getLogger(__name__)

MIN_TEMPERATURE = 1e-4  # below this, sampling is greedy (as at 0): the scaled logits would overflow float32


@dataclass(frozen=True)
class ServerConfig:
    model_id: str
    api_key: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    retry_after_s: int = 1
    chat_template: str | None = None  # a built-in name or jinja text; None: the model file's
    n_predict: int | None = None  # the most tokens one request may generate (None: up to the context)


# --- helpers ------------------------------------------------------------------------------------------------

def _error_response(e: S.APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _check_key(request: Request, config: ServerConfig) -> None:
    if config.api_key is None:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), config.api_key.encode())
    if not ok:
        raise S.APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' with the key given to "
                         "`bitnet serve --api-key`", code="invalid_api_key",
                         headers={"WWW-Authenticate": "Bearer"})


async def _read_json(request: Request, limit: int):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise S.APIError(413, f"the request body is {declared} bytes; the limit is {limit}", code="body_too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise S.APIError(413, f"the request body is over the limit of {limit} bytes", code="body_too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        raise S.APIError(400, "the client disconnected while sending the body") from None
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as e:
        raise S.bad(f"the request body is not valid JSON: {str(e)[:200]}") from None


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _logits_processors(p: S.SamplingParams, n_prompt: int):
    """OpenAI's presence and frequency penalties, over the generated tokens only."""
    if p.presence_penalty == 0 and p.frequency_penalty == 0:
        return ()
    import numpy as np

    def penalize(tokens, logits):
        gen = np.asarray(tokens[n_prompt:], dtype=np.int64)
        if gen.size == 0:
            return logits
        ids, counts = np.unique(gen, return_counts=True)
        out = logits.copy()
        out[ids] -= p.frequency_penalty * counts + p.presence_penalty
        return out

    return (penalize,)


# --- the app ------------------------------------------------------------------------------------------------

class API:
    def __init__(self, engine: Engine, tokenizer, config: ServerConfig):
        self.engine = engine
        self.tokenizer = tokenizer
        self.config = config
        self.created = int(time.time())
        self.n_vocab = engine.model.args.n_vocab

    # request -> tokens -> engine -------------------------------------------------------------------------

    def _submit(self, prompt: list[int], p: S.SamplingParams, emit) -> GenRequest:
        n_ctx = self.engine.n_ctx
        if len(prompt) >= n_ctx:
            raise S.APIError(413, f"the prompt has {len(prompt)} tokens but the context holds {n_ctx} (prompt plus "
                             "at least one generated token): shorten it or restart the server with a larger -c",
                             "prompt", code="context_length_exceeded")
        room = n_ctx - len(prompt)
        max_tokens = room if p.max_tokens is None else min(p.max_tokens, room)
        if self.config.n_predict is not None:
            max_tokens = min(max_tokens, self.config.n_predict)
        temp = p.temperature if p.temperature >= MIN_TEMPERATURE else 0.0  # logits / 1e-118 would overflow
        sampler = make_sampler(temp, p.top_k, p.top_p, p.min_p, p.seed)
        req = GenRequest(prompt, max_tokens, sampler, emit, _logits_processors(p, len(prompt)), p.stop, p.ignore_eos)
        try:
            self.engine.submit(req)
        except QueueFullError as e:
            raise S.APIError(503, f"{e}; retry after {self.config.retry_after_s} s", code="server_busy",
                             headers={"Retry-After": str(self.config.retry_after_s)}) from None
        return req

    async def _events(self, request: Request, prompt: list[int], p: S.SamplingParams) -> AsyncIterator[Event]:
        """Submit, then yield the engine's events; cancel the request if the client leaves or we stop early."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def emit(ev: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
                loop.call_soon_threadsafe(queue.put_nowait, ev)

        req = self._submit(prompt, p, emit)
        events = self._drain(request, req, queue)
        weakref.finalize(events, req.cancel)  # a response dropped before it ever ran must not keep its slot busy
        return events

    async def _drain(self, request: Request, req: GenRequest, queue: asyncio.Queue) -> AsyncIterator[Event]:
        disconnect = asyncio.ensure_future(_wait_disconnect(request))
        finished = False
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({get, disconnect}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    return  # the client went away
                ev = get.result()
                finished = ev.finish_reason is not None
                yield ev
                if finished:
                    return
        finally:
            disconnect.cancel()
            if not finished:
                req.cancel()

    def _tokenize_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        bad = [t for t in prompt if not 0 <= t < self.n_vocab]
        if bad:
            raise S.bad(f"token id {bad[0]} in 'prompt' is outside the vocabulary 0..{self.n_vocab - 1}", "prompt")
        return list(prompt)

    def _tokenize_chat(self, messages: list[dict]) -> list[int]:
        from bitnet_tokenizers import TokenizerError, render_chat

        try:
            if self.config.chat_template is None:
                text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            else:
                text = render_chat(self.tokenizer, messages, True, self.config.chat_template)
        except TokenizerError as e:
            raise S.bad(f"{e} (the server's operator can give one with `bitnet serve --chat-template`)",
                        "messages") from None
        return self.tokenizer.encode(text, parse_special=True)

    # endpoints -------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        s = self.engine.load()
        return JSONResponse({"status": "ok", "slots_idle": s["slots"] - s["active"], "slots_processing": s["active"],
                             "waiting": s["waiting"], "queue_size": s["queue_size"], "stats": self.engine.stats()})

    def _model_card(self) -> dict:
        return {"id": self.config.model_id, "object": "model", "created": self.created, "owned_by": "bitnet-py",
                "meta": {"n_ctx": self.engine.n_ctx, "n_vocab": self.n_vocab, "parallel": self.engine.n_parallel}}

    async def models(self, request: Request) -> Response:
        _check_key(request, self.config)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        _check_key(request, self.config)
        if request.path_params["model_id"] != self.config.model_id:
            raise S.APIError(404, f"model {request.path_params['model_id']!r} is not served here; this server "
                             f"serves {self.config.model_id!r}", "model", code="model_not_found")
        return JSONResponse(self._model_card())

    async def completions(self, request: Request) -> Response:
        _check_key(request, self.config)
        r = S.parse_completion(await _read_json(request, self.config.max_body_bytes))
        prompt = await run_in_threadpool(self._tokenize_prompt, r.prompt)
        echo = (r.prompt if isinstance(r.prompt, str) else self.tokenizer.decode(r.prompt)) if r.echo else ""
        events = await self._events(request, prompt, r.params)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, finish: str | None) -> dict:
            return {"id": rid, "object": "text_completion", "created": created, "model": self.config.model_id,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        if r.stream:
            return self._sse(events, len(prompt), r.include_usage,
                             lambda ev: chunk(ev.text, ev.finish_reason), chunk(echo, None) if echo else None,
                             lambda: chunk("", None) | {"choices": []})
        text, last = await self._collect(events)
        body = chunk(echo + text, last.finish_reason)
        body["usage"] = _usage(len(prompt), last.n_tokens)
        return JSONResponse(body)

    async def chat(self, request: Request) -> Response:
        _check_key(request, self.config)
        r = S.parse_chat(await _read_json(request, self.config.max_body_bytes))
        prompt = await run_in_threadpool(self._tokenize_chat, r.messages)
        events = await self._events(request, prompt, r.params)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish: str | None) -> dict:
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.config.model_id,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        if r.stream:
            def on_event(ev: Event) -> dict:
                delta = {"content": ev.text} if ev.text or ev.finish_reason is None else {}
                return chunk(delta, ev.finish_reason)

            first = chunk({"role": "assistant", "content": ""}, None)
            return self._sse(events, len(prompt), r.include_usage, on_event, first,
                             lambda: chunk({}, None) | {"choices": []})
        text, last = await self._collect(events)
        body = {"id": rid, "object": "chat.completion", "created": created, "model": self.config.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": last.finish_reason}],
                "usage": _usage(len(prompt), last.n_tokens)}
        return JSONResponse(body)

    # response shapes -------------------------------------------------------------------------------------

    async def _collect(self, events: AsyncIterator[Event]) -> tuple[str, Event]:
        parts, last = [], None
        try:
            async for ev in events:
                parts.append(ev.text)
                last = ev
        finally:
            await events.aclose()
        if last is None or last.finish_reason is None:
            raise S.APIError(499, "the client closed the request", code="client_closed")
        if last.finish_reason == "error":
            raise S.APIError(500, f"generation failed: {last.error}", code="engine_error")
        return "".join(parts), last

    def _sse(self, events: AsyncIterator[Event], n_prompt: int, include_usage: bool, on_event, first: dict | None,
             usage_chunk) -> StreamingResponse:
        async def stream():
            try:
                if first is not None:
                    yield _sse_line(first)
                async for ev in events:
                    if ev.finish_reason == "error":
                        yield _sse_line(S.APIError(500, f"generation failed: {ev.error}", code="engine_error").body())
                        return
                    if ev.finish_reason is None and not ev.text:
                        continue  # a token that completed no character yet (half a UTF-8 character, a held-back stop)
                    yield _sse_line(on_event(ev))
                    if ev.finish_reason is not None:
                        if include_usage:
                            yield _sse_line(usage_chunk() | {"usage": _usage(n_prompt, ev.n_tokens)})
                        yield b"data: [DONE]\n\n"
            finally:
                await events.aclose()  # cancels the request when the client went away mid-stream

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _usage(n_prompt: int, n_gen: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_gen, "total_tokens": n_prompt + n_gen}


def _sse_line(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def _api_error(request: Request, exc: S.APIError) -> Response:
    return _error_response(exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        e = S.APIError(404, f"no route {request.method} {request.url.path}; the API is under /v1 "
                       "(/v1/models, /v1/completions, /v1/chat/completions) plus /health", code="not_found")
    elif exc.status_code == 405:
        e = S.APIError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed",
                       type="invalid_request_error")
    else:
        e = S.APIError(exc.status_code, str(exc.detail), type="invalid_request_error")
    return _error_response(e)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path)
    return _error_response(S.APIError(500, f"internal error: {type(exc).__name__}", code="internal_error"))


def create_app(engine: Engine, tokenizer, config: ServerConfig, manage_engine: bool = True) -> Starlette:
    """The ASGI app. With manage_engine, the app's lifespan starts the engine thread and stops it."""
    api = API(engine, tokenizer, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if manage_engine:
            engine.start()
        try:
            yield
        finally:
            if manage_engine:
                engine.stop()

    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", api.model, methods=["GET"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={S.APIError: _api_error, HTTPException: _http_error, Exception: _unexpected})
