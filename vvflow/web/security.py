"""The page's guard: the token, the login cookie, CSRF tokens, flash messages and the
security headers of every response.

- With `web_token`, every request needs `Authorization: Bearer <token>` or the login
  cookie, whose value is an HMAC of the token (never the token itself); both are
  compared with `hmac.compare_digest`. Else 401 (the HTML pages answer with the login
  form).
- Every POST carries a CSRF token derived from a secret of this process: a form from
  another site cannot know it (403 otherwise).
- Every response says: no framing, no sniffing, only this origin's scripts and styles.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any

from starlette.responses import PlainTextResponse, Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

AUTH_COOKIE = "vvflow_auth"
FLASH_COOKIE = "vvflow_flash"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
#: Paths served without the token: the login form and the files it needs.
OPEN_PATHS = ("/login", "/static/")

HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
        b"object-src 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`: reachable from this host only."""
    host = host.strip().removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_host_header(value: str | None) -> bool:
    """A Host header naming this host (or none at all, as HTTP/1.0 may send)."""
    if value is None:
        return True
    host = value.strip()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return is_loopback(host)


class Guard:
    """The secrets of one web page process."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self._secret = secrets.token_bytes(32)
        self.csrf = hmac.new(self._secret, b"vvflow csrf", hashlib.sha256).hexdigest()
        self._cookie = (
            None
            if token is None
            else hmac.new(token.encode(), b"vvflow web login", hashlib.sha256).hexdigest()
        )

    # -- the token -------------------------------------------------------------------

    def token_matches(self, given: str) -> bool:
        if self.token is None:
            return True
        return hmac.compare_digest(given.encode(), self.token.encode())

    @property
    def cookie_value(self) -> str:
        assert self._cookie is not None
        return self._cookie

    def authorized(self, headers: dict[str, str]) -> bool:
        if self._cookie is None:
            return True
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credentials.strip()):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no login
            return False
        morsel = cookie.get(AUTH_COOKIE)
        return morsel is not None and hmac.compare_digest(
            morsel.value.encode(), self._cookie.encode()
        )

    def csrf_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())

    # -- flash messages: signed, in a short-lived cookie ------------------------------

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._secret, b"flash:" + payload, hashlib.sha256).hexdigest()[:32]

    def flash_cookie(self, kind: str, text: str) -> str:
        payload = base64.urlsafe_b64encode(
            json.dumps({"k": kind, "t": text[:1500]}).encode()
        ).decode()
        return f"{payload}.{self._sign(payload.encode())}"

    def read_flash(self, value: str | None) -> dict[str, str] | None:
        if not value or "." not in value:
            return None
        payload, _, signature = value.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload.encode()).encode()):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload.encode()))
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        kind = "error" if data.get("k") == "error" else "ok"
        return {"kind": kind, "text": str(data.get("t", ""))}


class GuardMiddleware:
    """Security headers on every response; 401 without the token where one is set."""

    def __init__(
        self, app: ASGIApp, guard: Guard, unauthorized: Callable[[Scope], Response]
    ) -> None:
        self.app = app
        self.guard = guard
        self.unauthorized = unauthorized

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in HEADERS if n not in present]
                message["headers"] = headers
            await send(message)

        path: str = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.guard.token is None and not _loopback_host_header(headers.get("host")):
            # Without a token only this host may look (the page listens on loopback):
            # a page elsewhere whose name was rebound to 127.0.0.1 sends its own name.
            response = PlainTextResponse(
                "421: this page answers to localhost names only (set web_token to serve "
                "it under another name, e.g. behind a reverse proxy)\n",
                status_code=421,
            )
            await response(scope, receive, send_with_headers)
            return
        if not path.startswith(OPEN_PATHS) and not self.guard.authorized(headers):
            await self.unauthorized(scope)(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def plain_unauthorized() -> Response:
    return PlainTextResponse(
        "401: this page needs the web token (Authorization: Bearer, or log in at /login)\n",
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="vvflow"'},
    )
