"""The web page: a Starlette application over one storage root.

It reads the root the way `vvflow status` does (plus the catalog for the completed and
failed lists) and changes it only through `vvflow.operations`, the functions the
command line calls, so the page and `vvflow retry` can never disagree.
"""

from __future__ import annotations

import asyncio
import errno
import math
from importlib.resources import files
from typing import Any
from urllib.parse import quote, unquote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from vvflow import __version__, operations, report, status
from vvflow.config import Settings
from vvflow.errors import ConfigError, LayoutError
from vvflow.layout import Layout, State
from vvflow.pipeline import Pipeline
from vvflow.web import video
from vvflow.web.catalog import Catalog
from vvflow.web.files import WHOLE_BYTES, OutputFiles, content_type, read_chunks, read_whole
from vvflow.web.security import (
    AUTH_COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    FLASH_COOKIE,
    Guard,
    GuardMiddleware,
    Scope,
    plain_unauthorized,
)


class _AnyPath(Convertor[str]):
    """Like Starlette's `path`, but a newline is a character like any other (a video's
    name may hold one, and so may its outputs' paths)."""

    regex = "(?s:.+)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", _AnyPath())

PAGE_SIZE = 50
WRONG_TOKEN_DELAY = 0.5
POLL_SECONDS = 2
_PACKAGE = files("vvflow.web")


def video_url(name: str) -> str:
    return "/videos/" + quote(name, safe="")


def _local(target: str | None, default: str) -> str:
    """A redirect target on this site: a path, never another host (`//x`, `/\\x`)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    if any(ord(c) < 32 for c in target):
        return default
    return target


class WebApp:
    """The page's state: settings, layout, catalog, guard, templates."""

    def __init__(self, settings: Settings, catalog: Catalog, guard: Guard) -> None:
        self.settings = settings
        self.pipeline = Pipeline(settings.stages, settings.root)
        self.layout = Layout(settings.root, settings.extensions, self.pipeline.all_outputs)
        self.catalog = catalog
        self.guard = guard
        self.files = OutputFiles(settings.root, settings.stages)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(_PACKAGE / "templates")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.globals.update(
            video_url=video_url,
            form_name=form_name,
            duration=status.duration,
            size=status.size,
            version=__version__,
            poll_ms=POLL_SECONDS * 1000,
        )

    # -- rendering -------------------------------------------------------------------

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> Response:
        flash = self.guard.read_flash(request.cookies.get(FLASH_COOKIE))
        html = self.templates.get_template(template).render(
            csrf=self.guard.csrf,
            flash=flash,
            path=request.url.path,
            here=_here(request),
            auth=self.guard.token is not None,
            **context,
        )
        response = Response(html, status_code=status_code, media_type="text/html")
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def back(
        self, request: Request, form: FormData, default: str, kind: str, text: str
    ) -> Response:
        """303 back where the form came from, with a flash message."""
        response = RedirectResponse(_local(_field(form, "next"), default), status_code=303)
        response.set_cookie(
            FLASH_COOKIE,
            self.guard.flash_cookie(kind, text),
            max_age=120,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    # -- what the pages show ------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """The overview's data (also GET /api/overview): never a look at every filed
        video; completed and failed are counted by the catalog."""
        live = status.collect(self.layout, self.settings.lease_seconds, filed=False)
        counts = self.catalog.counts()
        now = live["processing_now"]
        for entry in now:
            for key in ("activity", "waiting_for", "attempt", "progress", "message"):
                entry.setdefault(key, None)
            entry.setdefault("stage_for_s", None)
            entry["url"] = video_url(entry["name"])
        for inst in live["instances"]:
            inst["videos"] = [
                {"name": e["name"], "url": e["url"], "stage": e.get("stage")}
                for e in now
                if e["instance"] == inst["name"]
            ]
        return {
            "root": live["root"],
            "time": report.now_iso(),
            "paused": live["paused"],
            "counts": {
                State.PENDING.value: live[State.PENDING.value],
                State.PROCESSING.value: live[State.PROCESSING.value],
                State.COMPLETED.value: counts.get(State.COMPLETED.value, 0),
                State.FAILED.value: counts.get(State.FAILED.value, 0),
            },
            "storage": status.storage(
                self.layout, self.settings.min_free_bytes, self.settings.lease_seconds
            ),
            "now": sorted(now, key=lambda p: -float(p["for_s"])),
            "instances": live["instances"],
            "ignored": live["ignored"],
            "blocked": live["blocked"],
            "outbox": live["outbox"],
        }

    # -- endpoints: pages ----------------------------------------------------------------

    async def page_overview(self, request: Request) -> Response:
        data = await run_in_threadpool(self.overview)
        return self.render(request, "overview.html", title="Overview", data=data)

    async def api_overview(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.overview))

    async def page_now(self, request: Request) -> Response:
        data = await run_in_threadpool(self.overview)
        return self.render(request, "now.html", title="Now", data=data)

    async def page_video(self, request: Request) -> Response:
        name = request.path_params["name"]
        if not video.valid_name(name):
            raise HTTPException(404)
        page = await run_in_threadpool(video.collect, self.layout, self.pipeline, name)
        if not page.found:
            raise HTTPException(404)
        running = None
        if page.state == State.PROCESSING.value:
            now = (await run_in_threadpool(self.overview))["now"]
            running = next((entry for entry in now if entry["name"] == name), None)
        return self.render(request, "video.html", title=name, video=page, running=running)

    async def page_list(self, request: Request) -> Response:
        state = State.COMPLETED if request.url.path == "/completed" else State.FAILED
        query = request.query_params.get("q", "").strip()[:500]
        try:
            number = max(1, int(request.query_params.get("page", "1")))
        except ValueError:
            number = 1
        result = await run_in_threadpool(
            self.catalog.page, state, query, (number - 1) * PAGE_SIZE, PAGE_SIZE
        )
        pages = max(1, math.ceil(result.total / PAGE_SIZE))

        def link(n: int) -> str:
            params = {"q": query} if query else {}
            if n > 1:
                params["page"] = str(n)
            return request.url.path + (f"?{urlencode(params)}" if params else "")

        return self.render(
            request,
            "list.html",
            title=state.value.capitalize(),
            state=state.value,
            query=query,
            result=result,
            number=number,
            pages=pages,
            prev_url=link(number - 1) if number > 1 else None,
            next_url=link(number + 1) if number < pages else None,
        )

    async def page_files(self, request: Request) -> Response:
        path: str = request.path_params["path"]
        opened = await run_in_threadpool(self.files.open, path)
        if opened is None:
            return PlainTextResponse("404: not found\n", status_code=404)
        fd, st = opened
        kind = content_type(path)
        headers = {
            "content-length": str(st.st_size),
            # A file is never a page: no script runs in it, whatever it holds.
            "content-security-policy": "default-src 'none'; sandbox; frame-ancestors 'none'",
        }
        if kind is None:
            kind = "application/octet-stream"
            filename = quote(path.rsplit("/", 1)[-1], safe="")
            headers["content-disposition"] = f"attachment; filename*=UTF-8''{filename}"
        if st.st_size <= WHOLE_BYTES:
            body = await run_in_threadpool(read_whole, fd)
            headers["content-length"] = str(len(body))
            return Response(body, media_type=kind, headers=headers)
        return StreamingResponse(read_chunks(fd), media_type=kind, headers=headers)

    # -- endpoints: login ----------------------------------------------------------------

    async def page_login(self, request: Request) -> Response:
        nxt = _local(request.query_params.get("next"), "/")
        return self.render(request, "login.html", title="Log in", next=nxt, error=None)

    async def post_login(self, request: Request) -> Response:
        form = await self._checked_form(request)
        nxt = _local(_field(form, "next"), "/")
        if self.guard.token is None:
            return RedirectResponse(nxt, status_code=303)
        if not self.guard.token_matches(_field(form, "token") or ""):
            await asyncio.sleep(WRONG_TOKEN_DELAY)  # guessing costs time
            return self.render(
                request, "login.html", 401, title="Log in", next=nxt, error="wrong token"
            )
        response = RedirectResponse(nxt, status_code=303)
        response.set_cookie(
            AUTH_COOKIE,
            self.guard.cookie_value,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def post_logout(self, request: Request) -> Response:
        await self._checked_form(request)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(AUTH_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def unauthorized(self, scope: Scope) -> Response:
        path: str = scope.get("path", "")
        if scope.get("method") == "GET" and not path.startswith(("/api/", "/files/")):
            request = Request(scope)
            return self.render(
                request, "login.html", 401, title="Log in", next=_local(path, "/"), error=None
            )
        return plain_unauthorized()

    # -- endpoints: actions --------------------------------------------------------------

    async def _checked_form(self, request: Request) -> FormData:
        form = await request.form()
        given = _field(form, CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        if not self.guard.csrf_ok(given):
            raise HTTPException(
                403, "403: missing or stale CSRF token (reload the page and try again)"
            )
        return form

    async def action(self, request: Request) -> Response:
        form = await self._checked_form(request)
        what = request.path_params["action"]
        default = {"retry": "/failed", "retry-all": "/failed"}.get(what, "/")
        try:
            text = await run_in_threadpool(self._act, what, form, request)
        except (ConfigError, LayoutError) as exc:
            return self.back(request, form, default, "error", str(exc))
        except OSError as exc:
            return self.back(request, form, default, "error", _os_error(what, exc))
        if what.startswith("retry"):
            # The page it goes back to lists failed/ as it is now, not a second ago.
            await run_in_threadpool(self.catalog.refresh, False)
        return self.back(request, form, default, "ok", text)

    def _act(self, what: str, form: FormData, request: Request) -> str:
        settings = self.settings
        from_start = _field(form, "from_start") is not None
        if what == "retry":
            names = [n for n in form.getlist("name") if isinstance(n, str) and n]
            names += [
                unquote(n, errors="surrogateescape")
                for n in form.getlist("qname")
                if isinstance(n, str) and n
            ]
            if not names:
                raise ConfigError("retry: no video named")
            done = operations.retry(settings, names, from_start=from_start)
            return "; ".join(d.line() for d in done)
        if what == "retry-all":
            done = operations.retry(settings, [], every=True, from_start=from_start)
            return f"{len(done)} failed video(s) moved back to input/pending/"
        layout = operations.existing_layout(settings)
        client = request.client.host if request.client else "?"
        by = f"{operations.operator()} (web page, from {client})"
        if what == "pause":
            reason = (_field(form, "reason") or "").strip()[:500] or None
            record, already = operations.pause(layout, reason, by=by, targets=settings.notify)
            return f"{'already paused' if already else 'paused'} since {record.get('since')}"
        if what == "resume":
            if operations.resume(layout, settings.notify, by=by):
                return "resumed: instances claim videos again"
            return "not paused: nothing to resume"
        raise HTTPException(404)


def form_name(name: str) -> str:
    """`name` percent-encoded for a form's hidden `qname` field: a browser posts a
    field's line breaks as CRLF (HTML's form rules), so a name holding a newline or a
    carriage return would not come back as it is."""
    return quote(name, safe="", errors="surrogateescape")


def _here(request: Request) -> str:
    """This page's path and query as a URL (the path quoted again: a video's name may
    hold `?`, `#`, `%` or a newline), for a form's way back."""
    path: str = request.scope["path"]
    query = request.scope.get("query_string", b"").decode("latin-1")
    return quote(path, safe="/") + (f"?{query}" if query else "")


def _field(form: FormData, key: str) -> str | None:
    value = form.get(key)
    return value if isinstance(value, str) else None


def _os_error(what: str, exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    text = f"cannot {what}: {exc.strerror or exc}{where}"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        text += " (the storage root is read-only for this page; nothing was changed)"
    return text


def create_app(settings: Settings, catalog: Catalog, guard: Guard | None = None) -> Starlette:
    """The page for `settings.root`, reading lists from `catalog`."""
    guard = guard or Guard(
        settings.web_token.get_secret_value() if settings.web_token is not None else None
    )
    web = WebApp(settings, catalog, guard)

    async def not_found(request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "error"
        if request.url.path.startswith(("/api/", "/files/", "/actions/")) or code != 404:
            return PlainTextResponse(f"{detail}\n", status_code=code)
        return web.render(request, "error.html", code, title="Not found", message=detail)

    routes = [
        Route("/", web.page_overview),
        Route("/api/overview", web.api_overview),
        Route("/now", web.page_now),
        Route("/completed", web.page_list),
        Route("/failed", web.page_list),
        Route("/videos/{name}", web.page_video),
        Route("/files/{path:anypath}", web.page_files),
        Route("/login", web.page_login, methods=["GET"]),
        Route("/login", web.post_login, methods=["POST"]),
        Route("/logout", web.post_logout, methods=["POST"]),
        Route("/actions/{action}", web.action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(_PACKAGE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    app.add_middleware(GuardMiddleware, guard=guard, unauthorized=web.unauthorized)
    app.state.web = web
    return app
