"""The web page over HTTP: a real `vvflow web` (and `vvflow run --web-port`) on 127.0.0.1,
a root filled by a real `vvflow once`, and plain HTTP requests (http.client: exact paths,
no redirect followed, no path normalised on the way)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pytest

from tests.conftest import Root
from vvflow import notify, status
from vvflow.config import NotifyConfig, StageConfig
from vvflow.layout import Layout, State
from vvflow.web.files import OutputFiles
from vvflow.web.security import is_loopback

WEB_STAGE = Path(__file__).with_name("web_stage.py")
# (A name cannot hold "/": no closing tags.)
HOSTILE = "we\"ird '<script>alert(1)<script> 50% ?q=1 #frag\nline2 &amp;.mp4"
HOSTILE_IGNORED = 'x"<script>alert(2)<script>.txt'
HOSTILE_FAILED = "fail '<script>alert(3)<script> #1?x=%41\n.mp4"
SCRIPT = "<script>alert("
TOKEN = "s3cret-token-for-tests"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Site:
    """A `vvflow web` process serving a root."""

    root: Root
    proc: subprocess.Popen[str]
    host: str
    port: int

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:  # fmt: skip
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def get(self, path: str, **headers: str) -> Reply:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, fields: dict[str, str] | list[tuple[str, str]],
             **headers: str) -> Reply:  # fmt: skip
        data = urlencode(fields).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
        return self.request("POST", path, body=data, headers=headers)

    def csrf(self, **headers: str) -> str:
        page = self.get("/", **headers)
        assert page.status == 200
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert found, page.text[:2000]
        return found.group(1)

    def overview(self, **headers: str) -> dict[str, Any]:
        reply = self.get("/api/overview", **headers)
        assert reply.status == 200, reply.body[:500]
        data: dict[str, Any] = reply.json()
        return data

    def wait_overview(self, check: Any, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            data = self.overview()
            if check(data):
                return data
            assert time.monotonic() < deadline, data
            time.sleep(0.1)


def web_env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VVFLOW_")}
    env.pop("VIDEO_STORAGE_ROOT", None)
    env["XDG_CACHE_HOME"] = str(cache)
    env.update(extra)
    return env


def serve(root: Root, cache: Path, *args: str, prefix: tuple[str, ...] = (),
          command: str = "web", **env: str) -> Site:  # fmt: skip
    """Start `vvflow web` (or `run`) on 127.0.0.1, port 0; the address from its log."""
    argv = [*prefix, sys.executable, "-m", "vvflow", command, "--root", str(root.path),
            "--web-port", "0", "--web-host", "127.0.0.1", *args]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=web_env(cache, **env))
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("{") and json.loads(line)["event"] == "web_serving":
            address = urlsplit(json.loads(line)["address"])
            assert address.hostname == "127.0.0.1"
            assert address.port is not None
            return Site(root, proc, "127.0.0.1", address.port)
    proc.kill()
    raise AssertionError("no web_serving line:\n" + "".join(lines) + proc.stderr.read())


def stop(site: Site) -> int:
    """SIGTERM; its exit code, once it said `stopped` as its last line."""
    site.proc.send_signal(signal.SIGTERM)
    assert site.proc.stderr is not None
    try:
        code = site.proc.wait(timeout=20)
        last = [json.loads(line) for line in site.proc.stderr if line.startswith("{")][-1]
        assert last["event"] == "stopped", last
    finally:
        site.proc.kill()
        site.proc.stderr.close()
    return code


def configure(root: Root, logline: str = "logline", **top: Any) -> None:
    py = [sys.executable, str(WEB_STAGE)]
    quick = {"attempts": 1, "backoff_seconds": 0.0, "backoff_max_seconds": 0.0}
    root.configure(
        [
            {"name": "scan", "command": [*py, "scan", "{output}", "{output_dir}"],
             "output": "analytic/{stem}.analytic.json", "output_dir": "keyframes/{stem}",
             **quick},
            {"name": "summarize", "command": [*py, "summarize", "{output}", "{output_dir}"],
             "output": "summaries/{stem}.summary.json", "output_dir": "exports/{stem}",
             **quick},
            {"name": "logline", "command": [*py, logline, "{output}"],
             "output": "loglines/{stem}.logline.json", **quick},
            {"name": "tag", "command": [*py, "tag", "{output}", "{output_dir}"],
             "output": "tags/{name}.tag", "output_dir": "extra/{stem}", **quick},
        ],
        min_free_bytes=0,
        **top,
    )  # fmt: skip


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory, video_bytes: bytes) -> Root:
    """A root after a real `vvflow once`: two completed videos (one with a hostile
    name), one failed; then a pending video, an ignored entry with a hostile name, and
    symlinks planted in an output folder."""
    base = tmp_path_factory.mktemp("web")
    root = Root(base / "root", base / "runs.log", video_bytes)
    root.folder("pending").mkdir(parents=True)
    configure(root)
    for name in ("plain.mp4", HOSTILE, "broken-fail.mp4", HOSTILE_FAILED):
        root.drop(name)
    root.vvflow("once", check=1, env={"XDG_CACHE_HOME": str(base / "cache")})
    assert root.names("completed") == sorted(["plain.mp4", HOSTILE])
    assert root.names("failed") == sorted(["broken-fail.mp4", HOSTILE_FAILED])
    root.drop("waiting.mp4")
    (root.folder("pending") / HOSTILE_IGNORED).write_text("notes")
    keyframes = root.path / "keyframes" / "plain"
    (keyframes / "leak.jpg").symlink_to("/etc/passwd")
    (keyframes / "inside.json").symlink_to(root.path / "reports" / "plain.mp4.json")
    (root.path / "keyframes" / "escape").symlink_to("/etc")
    (root.path / "keyframes" / "fifo.jpg").parent.mkdir(exist_ok=True)
    os.mkfifo(root.path / "keyframes" / "plain" / "fifo.jpg")
    return root


@pytest.fixture(scope="module")
def site(filled: Root, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    served = serve(filled, tmp_path_factory.mktemp("cache"))
    try:
        served.wait_overview(lambda d: d["counts"]["completed"] == 2)
        yield served
    finally:
        assert stop(served) == 0


def esc(text: str) -> str:
    """`text` as HTML text or attribute value (how Jinja's autoescape writes it)."""
    for char, entity in (("&", "&amp;"), ('"', "&#34;"), ("'", "&#39;"), ("<", "&lt;"),
                         (">", "&gt;")):  # fmt: skip
        text = text.replace(char, entity)
    return text


def assert_escaped(html: str) -> None:
    """No hostile name or text reached the page as markup."""
    assert SCRIPT not in html
    assert "<b>DAY" not in html
    assert "<i>red" not in html


# -- pages ------------------------------------------------------------------------------


def test_overview_counts_sections_and_api(site: Site) -> None:
    data = site.wait_overview(lambda d: d["counts"]["failed"] == 2)
    assert data["counts"] == {"pending": 1, "processing": 0, "completed": 2, "failed": 2}
    assert data["paused"] is None
    assert [i["name"] for i in data["ignored"]] == [HOSTILE_IGNORED]
    assert "not a video extension" in data["ignored"][0]["reason"]
    page = site.get("/")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    html = page.text
    for state, count in data["counts"].items():
        assert f'data-count="{state}">{count}</span>' in html
    for section in ("instances", "storage", "ignored", "blocked", "now"):
        assert f'<section id="{section}">' in html
    assert '<form id="pause" method="post" action="/actions/pause">' in html
    assert 'name="reason"' in html
    assert 'data-poll="/api/overview"' in html
    for link in ('href="/"', 'href="/now"', 'href="/completed"', 'href="/failed"'):
        assert link in html
    assert "x&#34;&lt;script&gt;alert(2)&lt;script&gt;.txt" in html
    assert_escaped(html)
    headers = page.headers
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    js = site.get("/static/vvflow.js")
    assert js.status == 200
    assert "javascript" in js.headers["Content-Type"]
    assert "innerHTML" not in js.text
    assert site.get("/static/vvflow.css").headers["Content-Type"].startswith("text/css")


def test_overview_shows_the_outbox(site: Site, filled: Root) -> None:
    """Notifications waiting for their receiver show on the overview and in its JSON."""
    layout = Layout(filled.path, (".mp4",))
    target = NotifyConfig(name="ops", url="http://127.0.0.1:9/hook", events=("paused",))
    notify.notify_root(layout, [target], "paused", by="test", reason="outbox", since=None)
    waiting = sorted(p for p in layout.outbox.iterdir() if p.is_file())
    try:
        assert len(waiting) == 1
        data = site.wait_overview(lambda d: d["outbox"]["ready"] == 1)
        assert data["outbox"] == {"ready": 1, "rejected": 0, "dropped": 0}
        html = site.get("/").text
        assert '<section id="notifications">' in html
        assert '<span data-field="outbox.ready">1</span> waiting in outbox/' in html
    finally:
        for path in waiting:
            path.unlink()
    assert site.wait_overview(lambda d: d["outbox"]["ready"] == 0)["outbox"]["ready"] == 0


def test_lists_newest_first_search_and_paging(site: Site) -> None:
    completed = site.get("/completed")
    assert completed.status == 200
    rows = re.findall(r'<tr data-video="([^"]*)">', completed.text)
    assert sorted(rows) == sorted(["plain.mp4", esc(HOSTILE)])
    assert 'class="video" href="/videos/plain.mp4"' in completed.text
    assert f'href="/videos/{quote(HOSTILE, safe="")}"' in completed.text
    assert "A short film called plain.mp4." in completed.text
    assert_escaped(completed.text)
    found = site.get("/completed?q=" + quote("short PLAIN"))
    assert re.findall(r'<tr data-video="([^"]*)">', found.text) == ["plain.mp4"]
    none = site.get("/completed?q=nothing-like-this")
    assert "<tr data-video" not in none.text
    second = site.get("/completed?page=2")
    assert second.status == 200
    assert "<tr data-video" not in second.text
    failed = site.get("/failed")
    rows = re.findall(r'<tr data-video="([^"]*)">', failed.text)
    assert sorted(rows) == sorted(["broken-fail.mp4", esc(HOSTILE_FAILED)])
    assert_escaped(failed.text)
    assert '<form class="retry" method="post" action="/actions/retry">' in failed.text
    assert '<form id="retry-all" method="post" action="/actions/retry-all">' in failed.text
    assert "RuntimeError: cannot decode" in failed.text or "exit code 1" in failed.text


def test_video_page_shows_every_output(site: Site) -> None:
    page = site.get("/videos/plain.mp4")
    assert page.status == 200
    html = page.text
    assert "<h1>plain.mp4</h1>" in html
    sheet = re.search(r'<img id="contact-sheet" src="([^"]+)"', html)
    assert sheet is not None
    assert sheet.group(1) == "/files/keyframes/plain/contact-sheet.jpg"
    image = site.get(sheet.group(1))
    assert image.status == 200
    assert image.headers["Content-Type"] == "image/jpeg"
    assert image.body.startswith(b"\xff\xd8") and image.body.endswith(b"\xff\xd9")
    for section in ("keyframes", "scenes", "captions", "summary", "logline", "attempts",
                    "outputs"):  # fmt: skip
        assert f'<section id="{section}">' in html
    assert 'src="/files/keyframes/plain/scene-002.jpg"' in html
    assert "00:00:01.000" in html and "00:00:02.500" in html
    assert "OPEN &lt;b&gt;DAY&lt;/b&gt;" in html
    assert "A short film called plain.mp4." in html
    assert "A summary of plain.mp4 with &lt;script&gt;" in html
    assert "The old bridge opens next spring." in html
    assert 'data-stage="scan"' in html and 'data-stage="logline"' in html
    assert_escaped(html)
    links = re.findall(r'<li><a href="(/files/[^"]+)">', html)
    kinds = {}
    for link in links:
        reply = site.get(link)
        assert reply.status == 200, link
        kinds[link.rsplit("/", 1)[-1]] = reply.headers["Content-Type"]
    assert kinds["plain.analytic.json"] == "application/json"
    assert kinds["plain.mp4.json"] == "application/json"  # the report
    assert kinds["subtitles.vtt"].startswith("text/vtt")
    assert kinds["timeline.otio"].startswith("text/plain")
    assert "leak.jpg" not in kinds and "inside.json" not in kinds and "fifo.jpg" not in kinds
    # Outputs that are not the built-in ones are linked too: a file of no known type is
    # a download (it never runs as a page), a text file in a nested folder is text.
    assert kinds["note.txt"].startswith("text/plain")
    assert kinds["plain.mp4.tag"] == "application/octet-stream"
    tag = site.get("/files/tags/plain.mp4.tag")
    assert tag.headers["Content-Disposition"].startswith("attachment")
    assert "sandbox" in tag.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in tag.headers["Content-Security-Policy"]
    assert site.get("/files/extra/plain/deep/note.txt").text == "a note on plain.mp4\n"
    pending = site.get("/videos/waiting.mp4")  # a video in any state has its page
    assert pending.status == 200
    assert '<span class="badge pending">pending</span>' in pending.text
    assert "No stage has run yet." in pending.text
    failed = site.get("/videos/broken-fail.mp4").text
    assert "RuntimeError: cannot decode" in failed  # the stderr tail
    assert "<td>1</td>" in failed  # its exit code
    assert '<form class="retry"' in failed
    assert site.get("/videos/no-such.mp4").status == 404
    assert site.get("/videos/" + quote("../reports", safe="")).status == 404


def test_hostile_name_is_text_everywhere(site: Site) -> None:
    url = "/videos/" + quote(HOSTILE, safe="")
    page = site.get(url)
    assert page.status == 200
    html = page.text
    assert f"<h1>{esc(HOSTILE)}</h1>" in html
    assert_escaped(html)
    sheet = re.search(r'<img id="contact-sheet" src="([^"]+)"', html)
    assert sheet is not None
    stem = HOSTILE.rsplit(".", 1)[0]
    assert sheet.group(1) == f"/files/keyframes/{quote(stem, safe='')}/contact-sheet.jpg"
    assert site.get(sheet.group(1)).status == 200
    for link in re.findall(r'<li><a href="(/files/[^"]+)">', html):
        assert site.get(link.replace("&amp;", "&")).status == 200, link
    for path in ("/", "/now", "/completed", "/failed", "/completed?q=" + quote("<script>")):
        reply = site.get(path)
        assert reply.status == 200
        assert_escaped(reply.text)
    data = site.overview()
    assert HOSTILE_IGNORED in [i["name"] for i in data["ignored"]]


def test_files_only_under_output_folders(site: Site) -> None:
    good = site.get("/files/reports/plain.mp4.json")
    assert good.status == 200
    assert good.json()["name"] == "plain.mp4"
    assert site.get("/files/analytic/plain.analytic.json").status == 200
    for path in (
        "/files/../input/completed/plain.mp4",
        "/files/reports/../input/completed/plain.mp4",
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/reports/%2e%2e/vvflow.toml",
        "/files/reports%2f..%2f..%2f..%2fetc%2fpasswd",
        "/files//etc/passwd",
        "/files/%2Fetc%2Fpasswd",
        "/files/input/completed/plain.mp4",
        "/files/input/pending/waiting.mp4",
        "/files/vvflow.toml",
        "/files/index/names",
        "/files/keyframes/plain/leak.jpg",  # a symlink out of the root
        "/files/keyframes/plain/inside.json",  # a symlink, even one pointing inside
        "/files/keyframes/escape/passwd",  # through a symlinked folder
        "/files/keyframes/plain/fifo.jpg",
        "/files/keyframes/plain",  # a folder: no listing
        "/files/keyframes/plain/",
        "/files/keyframes",
        "/files/reports",
        "/files/",
        "/files/analytic/plain.analytic.json%00",
        "/files/keyframes/plain/./contact-sheet.jpg",
    ):
        reply = site.get(path)
        assert reply.status == 404, (path, reply.status)
        assert b"root:" not in reply.body and b"stages" not in reply.body


def test_only_localhost_names_without_a_token(site: Site) -> None:
    """A site elsewhere whose name was rebound to 127.0.0.1 (DNS rebinding) reads nothing."""
    for host in ("evil.example", "evil.example:80", "127.0.0.1.nip.io"):
        reply = site.get("/api/overview", Host=host)
        assert reply.status == 421, host
        assert b"pending" not in reply.body
    for host in ("127.0.0.1", f"127.0.0.1:{site.port}", f"localhost:{site.port}", "[::1]:80"):
        assert site.get("/api/overview", Host=host).status == 200, host


def test_posts_need_the_csrf_token(site: Site) -> None:
    pause_file = site.root.path / "input" / ".paused"
    assert site.post("/actions/pause", {"reason": "x"}).status == 403
    assert site.post("/actions/pause", {"reason": "x", "csrf": "0" * 64}).status == 403
    assert site.post("/actions/retry-all", {}).status == 403
    assert not pause_file.exists()
    assert site.root.names("failed") == sorted(["broken-fail.mp4", HOSTILE_FAILED])


def test_pause_resume_and_retry_change_the_folders(site: Site) -> None:
    root = site.root
    csrf = site.csrf()
    pause_file = root.path / "input" / ".paused"
    reply = site.post("/actions/pause", {"csrf": csrf, "reason": "<b>maintenance</b>",
                                         "next": "/"})  # fmt: skip
    assert reply.status == 303 and reply.headers["Location"] == "/"
    record = json.loads(pause_file.read_text())
    assert record["reason"] == "<b>maintenance</b>"
    assert "web page" in record["by"]
    assert root.status()["paused"]["reason"] == "<b>maintenance</b>"  # what the CLI sees
    data = site.overview()
    assert data["paused"]["reason"] == "<b>maintenance</b>"
    cookie = reply.headers["Set-Cookie"].split(";", 1)[0]
    page = site.get("/", Cookie=cookie)
    assert 'class="flash ok"' in page.text and "paused since" in page.text
    assert "&lt;b&gt;maintenance&lt;/b&gt;" in page.text
    assert '<form id="resume" method="post" action="/actions/resume">' in page.text
    reply = site.post("/actions/resume", {"csrf": csrf})
    assert reply.status == 303
    assert not pause_file.exists()
    # Retry one: the same folder state `vvflow retry` makes.
    missing = site.post("/actions/retry", {"csrf": csrf, "name": "nope.mp4", "next": "/failed"})
    assert missing.status == 303 and missing.headers["Location"] == "/failed"
    flash = site.get("/failed", Cookie=missing.headers["Set-Cookie"].split(";", 1)[0]).text
    assert 'class="flash error"' in flash and "not in input/failed/" in flash
    reply = site.post("/actions/retry", {"csrf": csrf, "name": "broken-fail.mp4",
                                         "next": "https://evil.example/"})  # fmt: skip
    assert reply.status == 303 and reply.headers["Location"] == "/failed"
    assert root.names("failed") == [HOSTILE_FAILED]
    assert "broken-fail.mp4" in root.names("pending")
    listed = site.get("/failed").text  # at once, where the redirect goes
    assert re.findall(r'<tr data-video="([^"]*)">', listed) == [esc(HOSTILE_FAILED)]
    report = root.report("broken-fail.mp4")
    assert report["state"] == "pending"
    assert report["failed_stage"] is None and report["error"] is None
    # Retry from a hostile name's own page: back to that very page.
    url = "/videos/" + quote(HOSTILE_FAILED, safe="")
    page = site.get(url).text
    back = re.search(r'<form class="retry".*?name="next" value="([^"]*)"', page, re.DOTALL)
    assert back is not None and back.group(1) == url
    fields = {"csrf": csrf, "name": HOSTILE_FAILED, "next": back.group(1)}
    reply = site.post("/actions/retry", fields)
    assert reply.status == 303 and reply.headers["Location"] == url
    assert root.names("failed") == []
    assert HOSTILE_FAILED in root.names("pending")
    flash = site.get(url, Cookie=reply.headers["Set-Cookie"].split(";", 1)[0]).text
    assert 'class="flash ok"' in flash and "-&gt; input/pending/" in flash
    assert_escaped(flash)
    site.wait_overview(lambda d: d["counts"]["failed"] == 0 and d["counts"]["pending"] == 3)


def test_overview_never_looks_into_completed_or_failed(tmp_path: Path) -> None:
    """Its cost does not grow with the filed videos: `collect(filed=False)` reads neither
    folder (here each is a file, which any listing of it would trip over)."""
    layout = Layout(tmp_path, (".mp4",))
    layout.ensure()
    (tmp_path / "input" / "pending" / "a.mp4").write_bytes(b"x")
    for state in (State.COMPLETED, State.FAILED):
        layout.folder(state).rmdir()
        layout.folder(state).write_text("not a folder")
    data = status.collect(layout, 60, filed=False)
    assert data["pending"] == 1 and data["processing"] == 0
    assert "completed" not in data and "failures" not in data
    with pytest.raises(NotADirectoryError):
        status.collect(layout, 60)


# -- the token ---------------------------------------------------------------------------


def test_token_login_and_cookie(filled: Root, tmp_path: Path) -> None:
    site = serve(filled, tmp_path / "cache", VVFLOW_WEB_TOKEN=TOKEN)
    try:
        for path in ("/", "/now", "/completed", "/api/overview",
                     "/files/reports/plain.mp4.json", "/videos/plain.mp4"):  # fmt: skip
            assert site.get(path).status == 401, path
            assert site.get(path, Authorization="Bearer wrong").status == 401, path
            assert site.get(path, Authorization=f"Bearer {TOKEN}").status == 200, path
        login_page = site.get("/")
        assert '<form id="login" method="post" action="/login">' in login_page.text
        assert site.post("/actions/pause", {}).status == 401
        assert not (filled.path / "input" / ".paused").exists()
        form = site.get("/login")
        assert form.status == 200
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', form.text)
        assert csrf is not None
        assert site.post("/login", {"token": TOKEN}).status == 403
        wrong = site.post("/login", {"csrf": csrf.group(1), "token": "nope", "next": "/now"})
        assert wrong.status == 401 and "Set-Cookie" not in wrong.headers
        good = site.post("/login", {"csrf": csrf.group(1), "token": TOKEN, "next": "/now"})
        assert good.status == 303 and good.headers["Location"] == "/now"
        set_cookie = good.headers["Set-Cookie"]
        assert "HttpOnly" in set_cookie and "samesite=strict" in set_cookie.lower()
        cookie = set_cookie.split(";", 1)[0]
        assert TOKEN not in cookie
        assert site.get("/now", Cookie=cookie).status == 200
        assert site.get("/api/overview", Cookie=cookie).status == 200
        assert site.get("/now", Cookie=cookie[:-2] + "00").status == 401
    finally:
        assert stop(site) == 0


def test_non_loopback_without_token_refused(filled: Root, tmp_path: Path) -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LocalHost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.com", "localhost.example",
                 "127.0.0.1.nip.io", ""):  # fmt: skip
        assert not is_loopback(host), host
    env = web_env(tmp_path / "cache")
    for command, host in (("web", "0.0.0.0"), ("run", "::")):
        proc = subprocess.run(
            [sys.executable, "-m", "vvflow", command, "--root", str(filled.path),
             "--web-host", host, "--web-port", "0"],
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "web_token" in lines[0], proc.stderr
    assert not (filled.path / "input" / "processing").exists() or not any(
        (filled.path / "input" / "processing").iterdir()
    )  # `run` refused before taking a lease


# -- a read-only root ----------------------------------------------------------------------


def _snapshot(path: Path) -> dict[str, tuple[int, int, int]]:
    seen = {}
    for folder, dirs, files in os.walk(path):
        for name in [*dirs, *files, "."]:
            st = os.lstat(os.path.join(folder, name))
            seen[os.path.join(folder, name)] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return seen


def _read_only_prefix(path: Path) -> tuple[str, ...]:
    """A mount namespace where `path` is a read-only bind mount (root and unshare), else
    the root made unwritable with chmod (which does not stop root)."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
        return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                str(path))  # fmt: skip
    for folder, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(folder, name), 0o555, follow_symlinks=False)
    path.chmod(0o555)
    return ()


def test_read_only_root_serves_and_writes_nothing(filled: Root, tmp_path: Path) -> None:
    copy = Root(tmp_path / "ro", tmp_path / "runs.log", b"")
    shutil.copytree(
        filled.path, copy.path, symlinks=True, ignore=shutil.ignore_patterns("fifo.jpg")
    )
    if not copy.names("failed"):  # retried by an earlier test: failed again here
        name = "broken-fail.mp4"
        os.rename(copy.folder("pending") / name, copy.folder("failed") / name)
    before = _snapshot(copy.path)
    site = serve(copy, tmp_path / "cache", prefix=_read_only_prefix(copy.path))
    try:
        data = site.wait_overview(lambda d: d["counts"]["completed"] == 2)
        assert data["counts"]["pending"] >= 1
        for path in ("/", "/now", "/completed", "/failed", "/videos/plain.mp4",
                     "/files/keyframes/plain/contact-sheet.jpg"):  # fmt: skip
            assert site.get(path).status == 200, path
        csrf = site.csrf()
        for action, fields in (("pause", {"reason": "x"}), ("retry-all", {}),
                               ("retry", {"name": "broken-fail.mp4"})):  # fmt: skip
            reply = site.post(f"/actions/{action}", {"csrf": csrf, **fields})
            assert reply.status == 303, reply.body
            cookie = reply.headers["Set-Cookie"].split(";", 1)[0]
            page = site.get(reply.headers["Location"], Cookie=cookie).text
            assert 'class="flash error"' in page and "read-only" in page.lower(), page[:3000]
    finally:
        assert stop(site) == 0
    assert _snapshot(copy.path) == before


# -- in the daemon's process ------------------------------------------------------------------


def test_run_serves_the_page_and_stops_with_the_daemon(root: Root, tmp_path: Path) -> None:
    release = tmp_path / "release"
    configure(root, logline=f"hold:{release}", rescan_seconds=0.2)
    root.drop("running.mp4")
    site = serve(root, tmp_path / "cache", command="run")
    try:
        data = site.wait_overview(
            lambda d: d["counts"]["processing"] == 1 and d["now"]
            and d["now"][0].get("progress") == 0.5
        )  # fmt: skip
        entry = data["now"][0]
        assert entry["name"] == "running.mp4" and entry["stage"] == "logline"
        assert entry["attempt"] == 1 and entry["url"] == "/videos/running.mp4"
        assert [v["name"] for i in data["instances"] for v in i["videos"]] == ["running.mp4"]
        now = site.get("/now").text
        assert '<tr data-video="running.mp4">' in now and "halfway" in now
        page = site.get("/videos/running.mp4")
        assert page.status == 200
        assert "Running <strong>logline</strong>, attempt 1" in page.text
        assert '<progress max="1" value="0.5">' in page.text and "halfway" in page.text
        release.write_text("go")
        site.wait_overview(lambda d: d["counts"]["completed"] == 1 and not d["now"])
    finally:
        assert stop(site) == 0
    with pytest.raises(ConnectionRefusedError):
        site.get("/")


def test_a_placeholder_folder_output_never_opens_the_bookkeeping(tmp_path: Path) -> None:
    """An output whose folder is a placeholder (`{stem}/x.json`) may be served from any
    top folder, but never from input/, index/, outbox/ or the configuration."""
    stage = StageConfig(name="tag", command=["tag", "{video}", "{output}"], output="{stem}/x.json")
    files = OutputFiles(tmp_path, [stage])
    for folder in ("clip", "input", "index", "outbox"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.json").write_text("{}")
    (tmp_path / "vvflow.toml").write_text("")
    opened = files.open("clip/x.json")
    assert opened is not None
    os.close(opened[0])
    for path in ("input/x.json", "index/x.json", "outbox/x.json", "vvflow.toml"):
        assert files.open(path) is None, path
