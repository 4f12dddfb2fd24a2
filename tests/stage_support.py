"""Support for the built-in stage tests: run a stage as a real subprocess, and a real
chat-completions server on 127.0.0.1 to stand in for an LLM endpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_stage(
    stage: str, *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m vvflow.stages.<stage> ARGS`` as the pipeline would, without any
    ``VVFLOW_*`` variable of the test process leaking in."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VVFLOW_")}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), environment.get("PYTHONPATH")])
    )
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", f"vvflow.stages.{stage}", *map(str, args)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=90,
        check=False,
    )


def progress_of(stderr: str) -> list[float]:
    """The fractions of the ``vvflow:progress <fraction> [message]`` lines in ``stderr``,
    checking that each such line is well formed."""
    fractions = []
    for line in stderr.splitlines():
        if line.startswith("vvflow:progress "):
            fraction = line.split(" ", 2)[1]
            assert fraction.replace(".", "", 1).isdigit(), line
            fractions.append(float(fraction))
    return fractions


def other_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are not progress lines."""
    return [line for line in stderr.splitlines() if not line.startswith("vvflow:progress ")]


Answer = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


@dataclass
class ChatServer:
    """What the fake endpoint received, and where it listens."""

    base_url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)


def completion(text: str) -> dict[str, Any]:
    """A chat-completions response body whose answer is ``text``."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
    }


@contextmanager
def chat_server(answer: Answer) -> Iterator[ChatServer]:
    """Serve ``POST /v1/chat/completions`` on 127.0.0.1 (a free port) from a thread.

    ``answer`` maps each request body to (HTTP status, response body).
    """
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                server.paths.append(self.path)
                server.requests.append(body)
                server.authorization.append(self.headers.get("Authorization"))
                status, reply = answer(body)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest output clean

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server = ChatServer(base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
