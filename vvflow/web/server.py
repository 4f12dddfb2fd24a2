"""Serving the page: uvicorn in a thread, for `vvflow web` and `vvflow run --web-port`.

The socket is bound before the thread starts, so a port in use or a bad host is one
clear error at start, and port 0 is known (and logged) at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

import uvicorn

from vvflow import logs
from vvflow.config import Settings
from vvflow.errors import ConfigError
from vvflow.events import Event
from vvflow.layout import Layout
from vvflow.pipeline import Pipeline
from vvflow.web.app import create_app
from vvflow.web.catalog import Catalog
from vvflow.web.security import is_loopback

DEFAULT_PORT = 8080
#: What a shutdown waits for open requests (the page's polls are short).
GRACE_SECONDS = 3


def check_exposure(settings: Settings) -> None:
    """Refuse a page reachable from other hosts without a token (ConfigError)."""
    if settings.web_token is None and not is_loopback(settings.web_host):
        raise ConfigError(
            f"web: refusing to serve on {settings.web_host} without web_token: anything but "
            "loopback (127.0.0.1, ::1, localhost) needs a token (set VVFLOW_WEB_TOKEN)"
        )


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"web: cannot resolve web_host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"web: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(False)
    return sock


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


class WebServer:
    """The page of `settings.root`, served from a thread until `stop()`."""

    def __init__(self, settings: Settings) -> None:
        check_exposure(settings)
        self.settings = settings
        pipeline = Pipeline(settings.stages, settings.root)
        layout = Layout(settings.root, settings.extensions, pipeline.all_outputs)
        self.catalog = Catalog(layout, pipeline)
        self.address = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Bind, start serving and the catalog's refresh; the page's address."""
        host = self.settings.web_host
        port = self.settings.web_port if self.settings.web_port is not None else DEFAULT_PORT
        sock = _bind(host, port)
        app = create_app(self.settings, self.catalog)
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=GRACE_SECONDS,
            ws="none",
        )
        # uvicorn's own errors (a request that broke) go to vvflow's log handler.
        for name in ("uvicorn", "uvicorn.error"):
            logging.getLogger(name).handlers[:] = logs.logger.handlers
            logging.getLogger(name).propagate = False
        self._server = uvicorn.Server(config)
        self.catalog.start()
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name="vvflow-web", daemon=True
        )
        self._thread.start()
        self.address = _url(host, sock.getsockname()[1])
        logs.event(Event.WEB_SERVING, address=self.address, root=str(self.settings.root))
        return self.address

    def _serve(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            asyncio.run(self._server.serve(sockets=[sock]))
        finally:
            sock.close()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, seconds: float) -> None:
        if self._thread is not None:
            self._thread.join(seconds)

    def stop(self) -> None:
        """Stop serving (open requests get GRACE_SECONDS) and the catalog."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(GRACE_SECONDS + 5)
        self.catalog.close()
