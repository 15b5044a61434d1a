"""Run the server on loopback inside this process (tests, benchmarks): `with serve_in_thread(app) as url: ...`."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

from bitnet_inference.serve.commands import bind


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Start uvicorn on host:port (0 = a free port) in a thread; yield the base URL (http://host:port)."""
    import uvicorn

    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    t_end = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > t_end:
            sock.close()
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
