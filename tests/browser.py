"""The web page in a real browser, for tests/test_web_browser.py and tests/screenshots.py.

This is a test-support module, not a test file. ``chromium`` starts Debian's chromium,
headless, driven by Selenium through Debian's chromedriver: both paths are given, so
Selenium Manager never runs and nothing downloads a browser or a driver (SE_OFFLINE says
the same to Selenium, in case). ``Served`` is a `vvflow run` or `vvflow web` subprocess
serving the page on 127.0.0.1, at the address its ``web_serving`` event names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.conftest import events
from tests.test_adversarial_support import clean_env, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: The page's viewport in every test and screenshot (CSS pixels).
WINDOW = (1280, 800)
#: Chromium never talks to any host but the page's: no updates, sync, field trials,
#: QUIC probes or first-run pages.
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # as root, chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # a container's /dev/shm is often 64 MiB
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


class Unavailable(Exception):
    """Chromium cannot start here; the message says why."""


@contextlib.contextmanager
def chromium(window: tuple[int, int] = WINDOW) -> Iterator[WebDriver]:
    """Debian's chromium, headless, with a fresh profile of its own; raises Unavailable
    (saying why) only where the browser or its driver is missing or fails to launch."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        raise Unavailable(
            f"no {' or '.join(missing)} (Debian's chromium and chromium-driver packages)"
        )
    profile = Path(tempfile.mkdtemp(prefix="vvflow-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile}",
                f"--window-size={window[0]},{window[1]}"):  # fmt: skip
        options.add_argument(arg)
    service = Service(
        executable_path=str(CHROMEDRIVER), log_output=str(profile / "chromedriver.log")
    )
    offline = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"
    try:
        try:
            driver = webdriver.Chrome(service=service, options=options)
        except WebDriverException as exc:
            log = profile / "chromedriver.log"
            tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
            raise Unavailable(f"chromium did not start: {exc.msg} {tail}".strip()) from exc
        try:
            # The window size is the whole window: make the page's viewport exactly
            # `window`, so that every screenshot has that size.
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": window[0], "height": window[1], "deviceScaleFactor": 1,
                "mobile": False})  # fmt: skip
            yield driver
        finally:
            driver.quit()
    finally:
        if offline is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = offline
        shutil.rmtree(profile, ignore_errors=True)


class Served:
    """`vvflow COMMAND --root ROOT --web-port 0 ARGS` (COMMAND: run or web), its stderr
    in `log`; `url` is the address of its `web_serving` event (ends with a /). `prefix`
    goes before the interpreter (unshare, nsenter). `wait=False` starts it only: see
    `serving` and `exited`."""

    def __init__(
        self, root: Path, command: str, *args: str, log: Path,
        env: dict[str, str] | None = None, prefix: Sequence[str] = (), wait: bool = True,
        timeout: float = 30,
    ) -> None:  # fmt: skip
        self.log = log
        self._stderr = log.open("wb")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "vvflow", command, "--root", str(root),
             "--web-port", "0", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            env=clean_env(env),
        )  # fmt: skip
        self.url = ""
        if wait:
            try:
                wait_for(lambda: self.serving() or self.proc.poll() is not None,
                         timeout=timeout, what=f"vvflow {command} to serve its page",
                         detail=self.tail)  # fmt: skip
                assert self.url, f"vvflow {command} exited {self.proc.returncode}: {self.tail()}"
            except BaseException:
                self.__exit__()
                raise

    def serving(self) -> bool:
        """Whether it has logged `web_serving` (and `url` is set)."""
        for event in self.events():
            if event["event"] == "web_serving":
                self.url = str(event["address"])
        return bool(self.url)

    def text(self) -> str:
        return self.log.read_bytes().decode("utf-8", "surrogateescape")

    def tail(self) -> str:
        return self.text()[-3000:]

    def events(self) -> list[dict[str, Any]]:
        # The last line may be half written.
        return events(self.text().rpartition("\n")[0])

    def count(self, event: str) -> int:
        return sum(e["event"] == event for e in self.events())

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then its exit status (SIGKILL after `timeout` seconds)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._stderr.close()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._stderr.close()
