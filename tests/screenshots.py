"""Screenshots of the web page for the README: `python tests/screenshots.py [FOLDER]`.

Builds a demo root in a temporary folder (generated videos through vvflow's built-in
stages, one cut short so that it fails, one with a hostile name), serves it with `vvflow
run --web-port 0` on 127.0.0.1, and saves one PNG per page (overview, now, completed,
failed, a video's page) into FOLDER (default tests/screenshots/) from Debian's chromium,
headless, at tests/browser.py's WINDOW size. The "now" shot is taken while a longer
video runs. Runs in about half a minute; needs nothing but the test dependencies.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: tests/ is on the path, not the repo
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

from tests.browser import Served, chromium  # noqa: E402
from tests.media import Caption, make_truncated, make_video  # noqa: E402
from tests.test_adversarial_support import wait_for  # noqa: E402

SHOTS = REPO / "tests" / "screenshots"
#: The page whose shot shows a video.
FEATURED = "harbour-at-dawn.mp4"
HOSTILE = 'it\'s "quoted" <script>alert(1)<\\script>.mp4'
LONG = "long-take-archive.mp4"
#: Shots over this are quantised to fewer colours (the README carries them).
MAX_BYTES = 200_000


def build_demo(root: Path) -> list[str]:
    """Videos for a demo root's pending/; returns the names that must complete."""
    pending = root / "input" / "pending"
    make_video(pending / FEATURED, seconds=4, width=320, height=180, cuts=3,
               captions=[Caption("Harbour at dawn", 0.2, 3.8)])  # fmt: skip
    make_video(pending / "title-card.mov", seconds=2, width=320, height=180, text="VVFLOW")
    make_video(pending / "street-market.mkv", seconds=3, width=320, height=180, cuts=2,
               captions=[Caption("Saturday market", 0.5, 2.5)])  # fmt: skip
    make_video(pending / HOSTILE, seconds=2, width=320, height=180, cuts=1)
    scratch = root.parent / "scratch.mp4"
    make_video(scratch, seconds=2, width=320, height=180, cuts=1)
    make_truncated(scratch, pending / "upload-interrupted.mp4")
    # Long enough (about 5 s through the stages) to be caught running.
    make_video(root.parent / LONG, seconds=90, width=320, height=180, fps=25, cuts=40,
               text="ARCHIVE")  # fmt: skip
    (root / "vvflow.toml").write_text("stable_seconds = 0\nspeech = false\nworkers = 2\n")
    return sorted([FEATURED, "title-card.mov", "street-market.mkv", HOSTILE])


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def running(root: Path) -> list[str]:
    folder = root / "input" / "processing"
    return [p.name for inst in folder.iterdir() if inst.is_dir() for p in inst.iterdir()
            if not p.name.startswith(".")] if folder.is_dir() else []  # fmt: skip


def now_row_filled(driver: Any, url: str) -> bool:
    """Load /now; whether it lists a running video with its attempt (not "-")."""
    driver.get(url + "now")
    heads = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "thead th")]
    rows = driver.find_elements(By.CSS_SELECTOR, "tr[data-video]")
    if not rows or "Attempt" not in heads:
        return False
    cells = rows[0].find_elements(By.TAG_NAME, "td")
    return cells[heads.index("Attempt")].text.strip() not in {"", "-"}


def save(driver: Any, path: Path) -> int:
    """The viewport as a PNG at `path`, quantised to fewer colours if it is too big;
    returns its size in bytes."""
    png: bytes = driver.get_screenshot_as_png()
    if len(png) > MAX_BYTES:
        image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        for levels in (32, 16, 8):
            step = 256 // levels
            quantised = (image // step) * step + step // 2
            png = cv2.imencode(".png", quantised, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
            if len(png) <= MAX_BYTES:
                break
    path.write_bytes(png)
    return len(png)


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else SHOTS
    out.mkdir(parents=True, exist_ok=True)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vvflow-demo-") as tmp:
        root = Path(tmp) / "root"
        done = build_demo(root)
        with chromium() as driver, Served(root, "run", log=Path(tmp) / "run.log",
                                          env=env) as served:  # fmt: skip
            wait_for(lambda: names(root / "input" / "completed") == done
                     and names(root / "input" / "failed") == ["upload-interrupted.mp4"],
                     timeout=120, what="the demo videos to settle", detail=served.tail)  # fmt: skip
            os.rename(root.parent / LONG, root / "input" / "pending" / LONG)
            wait_for(lambda: LONG in running(root), timeout=60, what=f"{LONG} to run",
                     detail=served.tail)  # fmt: skip
            # The shot of /now once the running video's activity (its attempt) is known.
            wait_for(lambda: now_row_filled(driver, served.url), timeout=10,
                     what=f"/now to show {LONG}'s attempt")  # fmt: skip
            pages = {
                "now": "now",
                "overview": "",
                "completed": "completed",
                "failed": "failed",
                "video": "videos/" + urllib.parse.quote(FEATURED),
            }
            for shot, path in pages.items():
                if shot != "now":  # loaded by now_row_filled, and not to be reloaded
                    driver.get(served.url + path)
                wait_for(lambda: driver.execute_script(
                    "return document.readyState === 'complete'"
                    " && [...document.images].every(i => i.complete);"
                ), timeout=10, what=f"the {shot} page to load")  # fmt: skip
                size = save(driver, out / f"{shot}.png")
                print(f"{out / f'{shot}.png'}: {size} bytes")
            assert served.stop() == 0, served.tail()
    print(f"done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
