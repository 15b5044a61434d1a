"""`bitnet serve`: the OpenAI-compatible server (also `python -m bitnet_inference.serve`)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from bitnet_inference.errors import EngineError
from bitnet_quantization.command import Command


class ServeError(EngineError):
    """Bad `bitnet serve` settings: a port in use, a bad address, a bad --parallel."""


def _serve_args(p: argparse.ArgumentParser) -> None:
    from bitnet_inference.commands import _model_args

    _model_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, loopback only; 0.0.0.0 exposes the server to the network)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free port, printed at start)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 (BITNET_API_KEY; default: no key)")
    p.add_argument("-np", "--parallel", type=int, default=4,
                   help="sequences decoded together, one KV-cache slot each (default 4)")
    p.add_argument("--queue-size", type=int, default=32,
                   help="requests that may wait for a slot; past that the server answers 503 (default 32)")
    p.add_argument("-n", "--n-predict", type=int, default=-1,
                   help="the most tokens one request may generate (default -1: up to the context)")
    p.add_argument("--alias", default=None, help="model id shown by /v1/models (default: the file name's stem)")
    p.add_argument("--chat-template", default=None,
                   help="chat template: a built-in name (bitnet, llama3) or a jinja file (default: the model file's)")
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024,
                   help="largest request body accepted; larger ones get 413 (default 4 MiB)")


def _check(args: argparse.Namespace) -> None:
    if args.parallel < 1:
        raise ServeError(f"--parallel must be >= 1, got {args.parallel}")
    if args.queue_size < 0:
        raise ServeError(f"--queue-size must be >= 0, got {args.queue_size}")
    if not 0 <= args.port <= 65535:
        raise ServeError(f"--port must be 0..65535, got {args.port}")
    if args.n_predict == 0 or args.n_predict < -1:
        raise ServeError(f"-n must be positive or -1 (up to the context), got {args.n_predict}")
    if args.max_body_bytes < 1024:
        raise ServeError(f"--max-body-bytes must be at least 1024, got {args.max_body_bytes}")
    if args.api_key is not None and not args.api_key.strip():
        raise ServeError("--api-key is empty: give a key, or leave the flag out to serve without one")


def chat_template(value: str | None) -> str | None:
    """--chat-template: None, a built-in name, or the text of a jinja file."""
    from bitnet_tokenizers import BUILTIN_TEMPLATES

    if value is None or value in BUILTIN_TEMPLATES:
        return value
    try:
        with open(value, encoding="utf-8") as fh:
            return fh.read()
    except OSError as e:
        raise ServeError(f"--chat-template {value!r} is neither a built-in ({', '.join(BUILTIN_TEMPLATES)}) nor a "
                         f"readable jinja file: {e.strerror}") from None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name: resolved by bind below
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port or --host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def open_model(args: argparse.Namespace):
    """The shared model loading of bitnet_inference.commands, with --parallel KV-cache slots."""
    from bitnet_inference.commands import open_model as open_shared

    return open_shared(args, n_slots=args.parallel)


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise ServeError("`bitnet serve` needs the serve extra: pip install 'bitnet[serve]'") from None
    from bitnet_inference.serve.app import ServerConfig, create_app
    from bitnet_inference.serve.engine import Engine

    if args.api_key is None:
        args.api_key = os.environ.get("BITNET_API_KEY") or None
    _check(args)
    template = chat_template(args.chat_template)
    sock = bind(args.host, args.port)  # before loading: a port in use fails at once
    model, tokenizer = open_model(args)
    engine = Engine(model, tokenizer, n_parallel=args.parallel, queue_size=args.queue_size)
    config = ServerConfig(model_id=args.alias or model.path.stem, api_key=args.api_key,
                          max_body_bytes=args.max_body_bytes, chat_template=template,
                          n_predict=None if args.n_predict == -1 else args.n_predict)
    app = create_app(engine, tokenizer, config)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    key = ", API key required" if args.api_key else ""
    print(f"serving {config.model_id} on http://{shown}:{port}/v1 (context {model.n_ctx}, {args.parallel} slots, "
          f"queue {args.queue_size}, KV cache {model.cache.nbytes / 2**20:.0f} MiB{key})", file=sys.stderr, flush=True)
    if not (_is_ip(host) and ipaddress.ip_address(host).is_loopback):
        print(f"warning: {host} is not a loopback address: the server is reachable from the network"
              f"{'' if args.api_key else ' and has no --api-key'}", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
    return 0


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


COMMANDS = {
    "serve": Command("OpenAI-compatible HTTP server with continuous batching", _serve_args, _serve),
}
