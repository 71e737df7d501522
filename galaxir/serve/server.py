"""Running the app on uvicorn: a socket bound to loopback unless told otherwise, graceful
shutdown (stop accepting, finish in-flight requests, then stop the batchers and the run
threads), and ``BackgroundServer`` for tests and benchmarks (a free port, always shut
down)."""
from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from ..errors import GalaxirError

#: seconds in-flight requests get to finish after a shutdown starts
GRACEFUL_SECONDS = 30


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise GalaxirError(f"cannot listen on {host}:{port}: {e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _log_to_stderr(level: str) -> None:
    """galaxir.serve's own lines (warm-up, batch sizes) at ``level``, next to uvicorn's."""
    log = logging.getLogger("galaxir.serve")
    log.setLevel(level.upper())
    if not log.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("galaxir serve: %(message)s"))
        log.addHandler(h)


def _config(app, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=GRACEFUL_SECONDS,
                          access_log=False, lifespan="on", server_header=False)


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM (then shut down gracefully)."""
    _log_to_stderr(log_level)
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    print(f"galaxir serve: listening on http://{host}:{actual} (KServe v2: /v2/models/NAME/infer)",
          flush=True)
    uvicorn.Server(_config(app, log_level)).run(sockets=[sock])


class BackgroundServer:
    """``with BackgroundServer(app) as s: ... s.url`` — uvicorn on a thread, on a free
    loopback port, shut down gracefully on exit."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.sock = bind(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(_config(app, log_level))
        self.thread = threading.Thread(target=self._run, name="galaxir-serve", daemon=True)
        self.error: BaseException | None = None

    def _run(self):
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as e:  # surfaced by start()/stop()
            self.error = e

    def start(self, timeout: float = 60) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.error is not None or not self.thread.is_alive():
                raise GalaxirError(f"the server did not start: {self.error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise GalaxirError("the server did not start in time")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = GRACEFUL_SECONDS + 5) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
