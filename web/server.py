"""The dashboard's HTTP server: uvicorn in a thread of the daemon, on a socket bound up front.

The socket is bound in :meth:`WebServer.start`, in the caller's thread, so a port in use is an
``OSError`` the caller turns into a clear start-up error (uvicorn itself would log and exit).
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (IPv4 or IPv6, as the address is)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class WebServer:
    """Serves ``app`` on ``host``:``port`` until :meth:`stop`."""

    def __init__(self, app, host: str, port: int) -> None:  # type: ignore[no-untyped-def]
        self.app, self.host, self.requested_port = app, host, port
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1]) if self._sock is not None else self.requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        """Bind (OSError when the port is taken), then serve in a thread; return once serving."""
        self._sock = bind(self.host, self.requested_port)
        # proxy_headers off: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1 (its
        # default forwarded_allow_ips), and any local client could pose as another address;
        # the app believes web.trusted_proxies only (web.app.create_app)
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, server_header=False,
                                proxy_headers=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="radtriage-web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the web server did not start on {self.host}:{self.requested_port}")
            time.sleep(0.02)
        log.info("dashboard at %s", self.url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                log.warning("the web server did not stop within 10 s")
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None
