"""The web page in a real browser: Debian's chromium, headless, driven by Selenium
(tests/browser.py: nothing downloads a browser or a driver), against real `vvflow run
--web-port 0` daemons on 127.0.0.1 processing generated videos.

Two roots, each served by one daemon for the whole module: `site`, whose stages are the
fast test program tests/hostile_stage.py (a video with "broken" in its name fails its
scan), and `built`, one short video through vvflow's built-in stages, for a real contact
sheet. The page's DOM is the contract in the issue-13 notes: data-count="...", form#pause,
tr[data-video], a.video, form.retry, img#contact-sheet, input[name=csrf], /login.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import Served, Unavailable, chromium
from tests.conftest import Root
from tests.media import make_video
from tests.test_adversarial_support import clean_env, hostile_three, wait_for

pytestmark = pytest.mark.timeout(90)

#: Quotes, markup that would run or add an element if it were not escaped, URL syntax
#: and a newline; "broken" makes its scan fail, so it is listed on /failed with a retry
#: form. (A file name cannot hold "/", so no closing tag: the img's onerror is the probe.)
HOSTILE = (
    'broken it\'s "q" & <b id=injected>b<img src=x onerror=alert(1)>'
    "<script>alert(2)<\\script> %?#\nline.mp4"
)
PLAIN_FAILED = "broken-plain.mp4"
#: Completes: its outputs are named after it, so their links need URL quoting too.
HOSTILE_DONE = 'done 100% ?a=1#b & "q" <i id=injected>.mp4'
#: Installed before any script of every page: an alert is recorded, not shown.
ALERT_PROBE = "window.__alerts = []; window.alert = (m) => { window.__alerts.push(String(m)); };"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TOKEN = "s3cret-token-for-the-browser-test"


@dataclass
class Site:
    root: Root
    served: Served

    def url(self, path: str = "") -> str:
        return self.served.url + path.lstrip("/")


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """One headless chromium for the module; skips, saying why, only where it cannot
    start (not installed, or it fails to launch)."""
    try:
        with chromium() as browser:
            browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                    {"source": ALERT_PROBE})  # fmt: skip
            yield browser
    except Unavailable as exc:
        print(f"\nSKIPPED the browser tests: {exc}")
        pytest.skip(f"chromium cannot start here: {exc}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, video_bytes: bytes) -> Iterator[Site]:
    """`vvflow run --web-port 0` on a root with fast stages: two videos completed and two
    failed (one of each with a hostile name), settled before the tests start."""
    base = tmp_path_factory.mktemp("site")
    root = Root(base / "root", base / "runs.log", video_bytes)
    root.folder("pending").mkdir(parents=True)
    root.configure(hostile_three(root, scan="fail-if:broken", attempts=1),
                   stable_seconds=0, rescan_seconds=0.5)  # fmt: skip
    for name in ("done-1.mp4", HOSTILE_DONE, PLAIN_FAILED, HOSTILE):
        root.drop(name)
    with Served(root.path, "run", log=base / "run.log") as served:
        wait_for(lambda: root.names("pending") == root.names("processing") == [],
                 what="the first videos to settle", detail=served.tail)  # fmt: skip
        assert root.names("completed") == sorted(["done-1.mp4", HOSTILE_DONE]), served.tail()
        assert root.names("failed") == sorted([PLAIN_FAILED, HOSTILE]), served.tail()
        yield Site(root, served)
        assert served.stop() == 0, served.tail()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`vvflow run --web-port 0` with the built-in stages (speech off) on one short
    video with two cuts and on-screen text, completed before the tests start."""
    base = tmp_path_factory.mktemp("built")
    root = Root(base / "root", base / "runs.log", b"")
    make_video(root.folder("pending") / "clip.mp4", seconds=3, cuts=2, text="VVFLOW")
    (root.path / "vvflow.toml").write_text("stable_seconds = 0\nspeech = false\n")
    with Served(root.path, "run", log=base / "run.log") as served:
        wait_for(lambda: root.names("pending") == root.names("processing") == [], timeout=60,
                 what="clip.mp4 through the built-in stages", detail=served.tail)  # fmt: skip
        assert root.names("completed") == ["clip.mp4"], served.tail()
        yield Site(root, served)
        assert served.stop() == 0, served.tail()


# -- what the tests read -----------------------------------------------------------------


def counts(driver: Any) -> dict[str, str]:
    """The overview's data-count elements: state -> the number they show."""
    found: dict[str, str] = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('[data-count]')]"
        ".map(e => [e.dataset.count, e.textContent.trim()]));"
    )
    return found


def folder_counts(root: Root) -> dict[str, str]:
    return {state: str(len(root.names(state))) for state in
            ("pending", "processing", "completed", "failed")}  # fmt: skip


def row(driver: Any, name: str) -> WebElement:
    """The tr[data-video] whose attribute is exactly `name` (any characters)."""
    rows = [r for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-video]")
            if r.get_attribute("data-video") == name]  # fmt: skip
    listed = [r.get_attribute("data-video") for r in driver.find_elements(
        By.CSS_SELECTOR, "tr[data-video]")]  # fmt: skip
    assert len(rows) == 1, f"{name!r} in {listed}"
    return rows[0]


def submit(form: WebElement) -> None:
    """Click the form's button and wait for the page it leads to (a marker set in this
    document is gone from the next)."""
    driver = form.parent
    driver.execute_script("window.__submitted = true;")
    form.find_element(By.CSS_SELECTOR, "button, input[type=submit]").click()
    WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script(
            "return window.__submitted === undefined && document.readyState === 'complete';"
        ),
        message="the form's submission never led to a new page",
    )


def assert_nothing_injected(driver: Any) -> None:
    """No alert ran, and no element came out of a name."""
    wait_for(lambda: driver.execute_script(
        "return document.readyState === 'complete' && [...document.images].every(i => i.complete);"
    ), timeout=10, what="the page and its images to load")  # fmt: skip
    assert driver.execute_script("return window.__alerts") == []
    assert driver.find_elements(By.ID, "injected") == []
    assert driver.find_elements(By.CSS_SELECTOR, 'img[src="x"]') == []
    scripts = driver.execute_script(
        "return [...document.scripts].map(s => s.src || s.textContent);"
    )
    assert not [s for s in scripts if "alert(" in s], scripts


def raw_get(url: str, path: str, headers: dict[str, str] | None = None,
            method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:  # fmt: skip
    """`path` sent as is (no normalising of .. or %2e, as a browser would): status, body."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextlib.contextmanager
def paused_from_the_page(site: Site, driver: Any, reason: str) -> Iterator[None]:
    """Pause the root with the overview's form#pause (the daemon claims nothing new, so a
    retried video stays in pending/), and resume with form#resume afterwards."""
    paused, resumed = site.served.count("paused"), site.served.count("resumed")
    pause_file = site.root.path / "input" / ".paused"
    driver.get(site.url("/"))
    form = driver.find_element(By.CSS_SELECTOR, "form#pause")
    form.find_element(By.CSS_SELECTOR, "input[name=reason]").send_keys(reason)
    submit(form)
    wait_for(pause_file.exists, timeout=10, what="the pause file")
    assert json.loads(pause_file.read_bytes())["reason"] == reason
    wait_for(lambda: site.served.count("paused") > paused, timeout=10,
             what="the daemon to see the pause", detail=site.served.tail)  # fmt: skip
    try:
        yield
    finally:
        # Whatever the test did must leave the daemon serving.
        assert site.served.proc.poll() is None, (
            f"vvflow run stopped (exit {site.served.proc.returncode}) while paused: "
            f"{[e for e in site.served.events() if e['level'] == 'error']}"
        )
        driver.get(site.url("/"))
        submit(driver.find_element(By.CSS_SELECTOR, "form#resume"))
        wait_for(lambda: not pause_file.exists(), timeout=10, what="the pause file gone")
        wait_for(lambda: site.served.count("resumed") > resumed, timeout=10,
                 what="the daemon to resume", detail=site.served.tail)  # fmt: skip


# -- the tests ------------------------------------------------------------------------------


def test_overview_counts_follow_videos_finishing_without_a_reload(site: Site, driver: Any) -> None:
    """Videos dropped after the overview loaded: its counts reach the folders' numbers by
    themselves, and the page is the same page (a marker set at load survives)."""
    driver.get(site.url("/"))
    nav = {a.get_attribute("pathname") for a in driver.find_elements(By.CSS_SELECTOR, "nav a")}
    assert {"/", "/now", "/completed", "/failed"} <= nav, nav
    assert driver.find_elements(By.CSS_SELECTOR, "main")
    WebDriverWait(driver, 10, poll_frequency=0.1).until(
        lambda d: counts(d) == folder_counts(site.root),
        message=f"overview counts never matched {folder_counts(site.root)}",
    )
    completed = len(site.root.names("completed"))
    driver.execute_script("window.__loadedOnce = 'the same page';")
    live = [f"live-{i}.mp4" for i in range(3)]
    for name in live:
        site.root.drop(name)
    expected = {"pending": "0", "processing": "0", "completed": str(completed + 3),
                "failed": str(len(site.root.names("failed")))}  # fmt: skip
    WebDriverWait(driver, 20, poll_frequency=0.1).until(
        lambda d: counts(d) == expected,
        message=f"overview counts never became {expected}",
    )
    assert set(live) <= set(site.root.names("completed"))
    assert folder_counts(site.root) == expected
    assert driver.execute_script("return window.__loadedOnce") == "the same page"


def test_video_page_shows_its_contact_sheet_and_texts(built: Site, driver: Any) -> None:
    """The page of a video that went through the built-in stages: its contact sheet and
    keyframes are loaded images (the sheet at the JPEG's own width), its logline and
    summary are there."""
    driver.get(built.url("/videos/clip.mp4"))
    assert driver.find_element(By.TAG_NAME, "h1").text == "clip.mp4"
    sheet = driver.find_element(By.CSS_SELECTOR, "img#contact-sheet")
    wait_for(lambda: driver.execute_script("return arguments[0].complete", sheet), timeout=10,
             what="the contact sheet to load")  # fmt: skip
    jpeg = cv2.imread(str(built.root.path / "keyframes" / "clip" / "contact-sheet.jpg"))
    assert driver.execute_script("return arguments[0].naturalWidth", sheet) == jpeg.shape[1]
    keyframes = driver.find_elements(By.CSS_SELECTOR, "#keyframes img")
    assert keyframes
    widths = [driver.execute_script("return arguments[0].naturalWidth", k) for k in keyframes]
    assert all(w > 0 for w in widths), widths
    logline = json.loads((built.root.path / "loglines" / "clip.logline.json").read_bytes())
    assert logline["logline"] in driver.find_element(By.ID, "logline").text
    summary = json.loads((built.root.path / "summaries" / "clip.summary.json").read_bytes())
    assert summary["summary"] in driver.find_element(By.ID, "summary").text
    for section in ("scenes", "captions", "attempts", "outputs"):
        assert driver.find_element(By.ID, section).text.strip(), section
    assert "VVFLOW" in driver.find_element(By.ID, "captions").text


def test_files_outside_the_output_folders_get_404(built: Site) -> None:
    """Only regular files under the output folders are served: a traversal (plain,
    percent-encoded, through a video's page), the input folders, the config, a folder
    and a symlink out of the root all get 404; the contact sheet itself gets 200."""
    root = built.root.path
    sheet = root / "keyframes" / "clip" / "contact-sheet.jpg"
    status, body = raw_get(built.served.url, "/files/keyframes/clip/contact-sheet.jpg")
    assert (status, body) == (200, sheet.read_bytes())
    (root / "keyframes" / "clip" / "escape.jpg").symlink_to("/etc/passwd")
    (root / "reports" / "config.json").symlink_to(root / "vvflow.toml")
    for path in (
        "/files/../vvflow.toml",
        "/files/keyframes/../vvflow.toml",
        "/files/keyframes/clip/../../vvflow.toml",
        "/files/%2e%2e/vvflow.toml",
        "/files/keyframes/%2e%2e/%2e%2e/vvflow.toml",
        "/files/keyframes/clip/..%2f..%2fvvflow.toml",
        "/files/keyframes%2f..%2f..%2fetc%2fpasswd",
        "/files/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/files//etc/passwd",
        "/files/%2fetc%2fpasswd",
        "/files/vvflow.toml",
        "/files/input/completed/clip.mp4",
        "/files/keyframes/clip",
        "/files/keyframes/clip/",
        "/files/keyframes/clip/escape.jpg",
        "/files/reports/config.json",
        "/files/keyframes/clip/contact-sheet.jpg%00.txt",
        "/videos/..%2f..%2fvvflow.toml",
    ):
        status, body = raw_get(built.served.url, path)
        assert status == 404, (path, status, body[:200])
        assert b"[[stages]]" not in body and b"root:" not in body and b"speech" not in body


def test_an_action_without_its_csrf_token_changes_nothing(site: Site) -> None:
    """A POST from elsewhere (no csrf field) is refused and pauses nothing."""
    form = urllib.parse.urlencode({"reason": "forged"}).encode()
    status, _ = raw_get(site.served.url, "/actions/pause", method="POST", body=form,
                        headers=FORM)  # fmt: skip
    assert 400 <= status < 500, status
    assert not (site.root.path / "input" / ".paused").exists()


#: Set up by the interpreter that becomes vvflow, inside a network namespace of its own:
#: lo up, with a non-loopback address only that namespace has.
_NETNS_SETUP = (
    "import os, subprocess, sys\n"
    "subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)\n"
    "subprocess.run(['ip', 'addr', 'add', sys.argv[1] + '/32', 'dev', 'lo'], check=True)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
NETNS_ADDRESS = "10.77.0.1"


def test_a_non_loopback_page_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    """In a network namespace of its own, where 10.77.0.1 is bound to lo: `vvflow run` and
    `vvflow web` on that address without web_token exit 2 with one line saying why; with
    a token the same `vvflow web` serves there (the address itself was never the
    trouble). The machine's own interfaces are never touched."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare(1) and ip(8) for a network namespace of its own")
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True,
                           check=False)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.strip()}")
    root = tmp_path / "root"
    (root / "input" / "pending").mkdir(parents=True)
    netns = ["unshare", "--net", sys.executable, "-c", _NETNS_SETUP, NETNS_ADDRESS]
    # All three at once: each is an interpreter start or two.
    refused = {command: subprocess.Popen(
        [*netns, sys.executable, "-m", "vvflow", command, "--root", str(root),
         "--web-port", "0", "--web-host", NETNS_ADDRESS],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env=clean_env(),
    ) for command in ("run", "web")}  # fmt: skip
    try:
        with Served(root, "web", "--web-host", NETNS_ADDRESS, log=tmp_path / "web.log",
                    prefix=netns, env={"VVFLOW_WEB_TOKEN": TOKEN}) as served:  # fmt: skip
            assert served.url.startswith(f"http://{NETNS_ADDRESS}:"), served.url
            for command, proc in refused.items():
                _, stderr = proc.communicate(timeout=30)
                lines = [line for line in stderr.splitlines() if line.strip()]
                assert proc.returncode == 2, (command, stderr[-3000:])
                assert len(lines) == 1 and "web_token" in lines[0], (command, stderr[-3000:])
            assert served.stop() == 0, served.tail()
    finally:
        for proc in refused.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def test_with_a_token_requests_need_it_and_the_login_form_lets_the_browser_in(
    built: Site, driver: Any, tmp_path: Path
) -> None:
    """`vvflow web` with web_token: the page, the API, a file and an action answer 401
    without it (or with a wrong one) and change nothing; the bearer token opens them; in
    the browser the login form refuses a wrong token and lets the right one in, and its
    cookie then loads the contact sheet too."""
    root = built.root.path
    with Served(root, "web", log=tmp_path / "web.log",
                env={"VVFLOW_WEB_TOKEN": TOKEN}) as served:  # fmt: skip
        url = served.url
        protected = ["/", "/now", "/completed", "/failed", "/api/overview",
                     "/videos/clip.mp4", "/files/keyframes/clip/contact-sheet.jpg"]  # fmt: skip
        for path in protected:
            for headers in ({}, {"Authorization": "Bearer wrong"},
                            {"Authorization": f"Basic {TOKEN}"}):  # fmt: skip
                status, _ = raw_get(url, path, headers)
                assert status == 401, (path, headers, status)
            status, _ = raw_get(url, path, {"Authorization": f"Bearer {TOKEN}"})
            assert status == 200, (path, status)
        status, _ = raw_get(url, "/actions/pause", method="POST", body=b"reason=x",
                            headers=FORM)  # fmt: skip
        assert status == 401
        assert not (root / "input" / ".paused").exists()

        try:
            driver.get(url)
            assert driver.find_elements(By.CSS_SELECTOR, "[data-count]") == []
            for token, admitted in (("wrong", False), (TOKEN, True)):
                login = driver.find_element(By.CSS_SELECTOR, "input[name=token]")
                login.send_keys(token)
                submit(login.find_element(By.XPATH, "./ancestor::form"))
                assert bool(driver.find_elements(By.CSS_SELECTOR, "[data-count]")) == admitted
            assert counts(driver)["completed"] == "1"
            driver.get(url + "videos/clip.mp4")
            sheet = driver.find_element(By.CSS_SELECTOR, "img#contact-sheet")
            wait_for(lambda: driver.execute_script("return arguments[0].complete", sheet),
                     timeout=10, what="the contact sheet to load")  # fmt: skip
            assert driver.execute_script("return arguments[0].naturalWidth", sheet) > 0
        finally:
            driver.delete_all_cookies()
        assert served.stop() == 0, served.tail()


def test_retry_from_the_failed_page_moves_the_video_back_to_pending(
    site: Site, driver: Any
) -> None:
    """A click on a failed video's retry button (the root paused, so that nothing claims
    it again at once) puts it back in input/pending/; resumed, it runs and fails again."""
    with paused_from_the_page(site, driver, "retry <test> & check"):
        driver.get(site.url("/failed"))
        submit(row(driver, PLAIN_FAILED).find_element(By.CSS_SELECTOR, "form.retry"))
        wait_for(lambda: PLAIN_FAILED in site.root.names("pending"), timeout=10,
                 what="the video in pending/", detail=lambda: folder_counts(site.root))  # fmt: skip
        assert PLAIN_FAILED not in site.root.names("failed")
        WebDriverWait(driver, 10).until(lambda d: urllib.parse.urlsplit(d.current_url).path
                                        == "/failed")  # fmt: skip
        listed = driver.find_elements(By.CSS_SELECTOR, "tr[data-video]")
        assert PLAIN_FAILED not in [r.get_attribute("data-video") for r in listed]
        assert PLAIN_FAILED in site.root.names("pending")
    wait_for(lambda: PLAIN_FAILED in site.root.names("failed"), timeout=20,
             what="the retried video to run and fail again", detail=site.served.tail)  # fmt: skip


def test_hostile_name_renders_as_text_everywhere_and_retries_by_its_exact_name(
    site: Site, driver: Any
) -> None:
    """A name with quotes, markup, URL syntax and a newline is text on /failed, in a
    search, on its own page (reached by its link) and in the retry form, which moves
    exactly that file; a completed one's output files are served by their links."""
    driver.get(site.url("/failed"))
    line = row(driver, HOSTILE)
    assert HOSTILE in line.get_attribute("textContent")
    assert_nothing_injected(driver)

    driver.get(site.url("/failed?" + urllib.parse.urlencode({"q": "<b id=injected> onerror"})))
    assert [r.get_attribute("data-video") for r in
            driver.find_elements(By.CSS_SELECTOR, "tr[data-video]")] == [HOSTILE]  # fmt: skip
    assert_nothing_injected(driver)

    row(driver, HOSTILE).find_element(By.CSS_SELECTOR, "a.video").click()
    WebDriverWait(driver, 10).until(lambda d: d.current_url.startswith(site.url("/videos/")))
    assert urllib.parse.unquote(urllib.parse.urlsplit(driver.current_url).path) == (
        "/videos/" + HOSTILE
    )
    assert driver.find_element(By.TAG_NAME, "h1").get_attribute("textContent").strip() == HOSTILE
    assert_nothing_injected(driver)

    driver.get(site.url("/completed"))
    row(driver, HOSTILE_DONE).find_element(By.CSS_SELECTOR, "a.video").click()
    WebDriverWait(driver, 10).until(lambda d: d.current_url.startswith(site.url("/videos/")))
    assert driver.find_element(By.TAG_NAME, "h1").get_attribute("textContent").strip() == (
        HOSTILE_DONE
    )
    assert_nothing_injected(driver)
    links = driver.execute_script(
        "return [...document.querySelectorAll('#outputs a')].map(a => a.href);"
    )
    stem = HOSTILE_DONE.removesuffix(".mp4")
    wanted = {f"analytic/{stem}.analytic.json", f"summaries/{stem}.summary.json",
              f"loglines/{stem}.logline.json"}  # fmt: skip
    served = {urllib.parse.unquote(urllib.parse.urlsplit(link).path).removeprefix("/files/")
              for link in links}  # fmt: skip
    assert wanted <= served, links
    for link in links:
        path = urllib.parse.urlsplit(link)
        status, body = raw_get(site.served.url, path.path + (f"?{path.query}" * bool(path.query)))
        assert status == 200, (link, status)
        name = urllib.parse.unquote(path.path).removeprefix("/files/")
        if name in wanted:
            assert body == (site.root.path / name).read_bytes(), link

    with paused_from_the_page(site, driver, "hostile name"):
        driver.get(site.url("/failed"))
        submit(row(driver, HOSTILE).find_element(By.CSS_SELECTOR, "form.retry"))
        wait_for(lambda: HOSTILE in site.root.names("pending"), timeout=10,
                 what="the hostile name in pending/, by its exact name",
                 detail=lambda: (site.root.names("pending"), site.root.names("failed"),
                                 site.served.tail()))  # fmt: skip
    wait_for(lambda: HOSTILE in site.root.names("failed"), timeout=20,
             what="the retried hostile name to fail again", detail=site.served.tail)  # fmt: skip
