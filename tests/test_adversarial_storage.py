"""A few seconds of full disk: the storage root on an 8 MiB tmpfs, filled to the last
block while videos run, then freed. A storage error is not the video's fault: no video
fails for it, none is left claimed, every filed video's report agrees with its folder,
the instance says what is wrong (log, status, health, metrics) and resumes by itself."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Root
from tests.test_adversarial_disk import _fill
from tests.test_adversarial_support import (
    Fleet,
    Vvflow,
    assert_settled,
    entries,
    hostile,
    tmpfs_root,
    tree,
    wait_for,
)

DISK_MIB = 8
VIDEOS = [f"v{n:02d}.mp4" for n in range(16)]
#: Claiming pauses below this; far less than the tmpfs, far more than a report.
MIN_FREE = 1 << 20
STORAGE_ENV = {"VVFLOW_MIN_FREE_BYTES": str(MIN_FREE)}


@pytest.fixture
def tiny_disk(tmp_path: Path, video_bytes: bytes) -> Iterator[Root]:
    """A root on a tmpfs of DISK_MIB MiB (the stage log stays outside it)."""
    with tmpfs_root(tmp_path, video_bytes, DISK_MIB) as root:
        yield root


def _configure(root: Root, steps: str = "sleep:0.2") -> None:
    root.configure(
        [hostile(root, "scan", steps), hostile(root, "summarize", steps, inp="{scan}")],
        stable_seconds=0.1, rescan_seconds=0.5, workers=2,
    )  # fmt: skip


def _status(root: Root, env: dict[str, str]) -> dict[str, object]:
    proc = root.vvflow("status", "--json", env=env, check=0)
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def _trouble(root: Root, env: dict[str, str]) -> object:
    storage = _status(root, env).get("storage")
    return storage.get("trouble") if isinstance(storage, dict) else None


def _metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def _port(run: Vvflow) -> int:
    serving = [e for e in run.events() if e["event"] == "metrics_serving"]
    assert serving, run.text()[-2000:]
    return int(str(serving[0]["address"]).rsplit(":", 1)[1].split("/")[0])


def _no_failure_yet(root: Root, run: Vvflow) -> bool:
    failed = entries(root.folder("failed"))
    assert failed == [], {"failed": failed, "tree": tree(root), "log": run.text()[-3000:]}
    return True


@pytest.mark.timeout(110)
@pytest.mark.parametrize("rename", ["renameat2", "link"])
def test_a_few_seconds_of_full_disk_fail_no_video(
    tiny_disk: Root, tmp_path: Path, rename: str
) -> None:
    """16 videos through two small stages; once they flow, the 8 MiB root is filled to
    the last block for a few seconds, then freed. While it is full, `status` shows the
    storage trouble, `health` stays healthy but says degraded, the metrics gauge is 1;
    once freed, every video completes with a report saying so, none failed, nothing is
    left in processing/, and the log has one start and one end line of the trouble."""
    root = tiny_disk
    _configure(root)
    for name in VIDEOS:
        root.drop(name)
    env = dict(STORAGE_ENV)
    if rename == "link":
        env["VVFLOW_RENAME"] = "link"
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run", "--metrics-port", "0", env=env)
        port = _port(run)
        wait_for(lambda: len(entries(root.folder("completed"))) >= 2, timeout=30,
                 what="the first videos completed")  # fmt: skip
        fillers = _fill(root.path)
        done_before = len(entries(root.folder("completed")))
        wait_for(lambda: _no_failure_yet(root, run) and _trouble(root, env) is not None,
                 timeout=20, what="status to show the storage trouble",
                 detail=lambda: (tree(root), run.text()[-3000:]))  # fmt: skip
        # The daemon refreshes its health record every HEALTH_SECONDS (2 s).
        health_lines: list[str] = []

        def degraded() -> bool:
            health = root.vvflow("health", env=env)
            assert health.returncode == 0, health.stdout + health.stderr
            health_lines.append(health.stdout)
            return "degraded" in health.stdout and "storage" in health.stdout

        wait_for(degraded, timeout=10, what="health to say degraded",
                 detail=lambda: health_lines[-1:])  # fmt: skip
        assert _metric(port, "vvflow_storage_trouble") == 1.0
        text = root.vvflow("status", env=env, check=0).stdout
        assert "STORAGE" in text and "free" in text, text
        # A few seconds of full disk: the instance waits, nothing fails.
        held = time.monotonic() + 3
        while time.monotonic() < held:
            _no_failure_yet(root, run)
            time.sleep(0.1)
        print(f"\n{done_before} of 16 completed before the disk filled; tree {tree(root)}")
        for filler in fillers:
            filler.unlink()
        wait_for(lambda: _no_failure_yet(root, run)
                 and len(entries(root.folder("completed"))) == len(VIDEOS),
                 timeout=60, what="every video completed once space is back",
                 detail=lambda: (tree(root), run.text()[-3000:]))  # fmt: skip
        wait_for(lambda: _trouble(root, env) is None, timeout=20,
                 what="status to clear the storage trouble")  # fmt: skip
        assert _metric(port, "vvflow_storage_trouble") == 0.0
        assert run.stop() == 0, run.text()[-3000:]

    log = run.events()
    starts = [e for e in log if e["event"] == "storage_trouble"]
    ends = [e for e in log if e["event"] == "storage_recovered"]
    assert len(starts) == 1 and len(ends) == 1, (starts, ends)
    assert [e for e in log if e["event"] in ("failed", "internal_error")] == []
    assert "Traceback" not in run.text()
    returned = [e["video"] for e in log if e["event"] == "released"]
    print(f"{len(returned)} returned to pending while the disk was full; trouble for "
          f"{ends[0].get('duration_s')} s")  # fmt: skip
    assert_settled(root, VIDEOS, ["scan", "summarize"])


@pytest.mark.timeout(110)
def test_sigterm_on_a_full_disk_with_the_link_fallback_leaves_no_claim(
    tiny_disk: Root, tmp_path: Path
) -> None:
    """The link + unlink fallback needs an intent record for every move. With the disk
    full while two long stages run, a clean SIGTERM returns both claims to pending/
    (nothing is left in processing/, nothing failed); freed, a `vvflow once` completes
    all six videos."""
    root = tiny_disk
    _configure(root, "sleep:30")
    for name in VIDEOS[:6]:
        root.drop(name)
    env = {**STORAGE_ENV, "VVFLOW_RENAME": "link"}
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run", "--shutdown-grace-seconds", "1", env=env)
        # Both claims are in their (30 s) stage: nothing else of theirs writes now.
        wait_for(lambda: len([r for r in root.runs() if r["event"] == "start"]) == 2,
                 timeout=30, what="two stages started")  # fmt: skip
        fillers = _fill(root.path)
        shown = time.monotonic() + 20
        while _trouble(root, env) is None and time.monotonic() < shown:
            time.sleep(0.1)
        trouble = _trouble(root, env)
        held = root.names("processing")
        assert len(held) == 2, tree(root)  # their stages still run on the full disk
        assert run.stop(signal.SIGTERM) == 0, run.text()[-3000:]
        left = root.names("processing")
        assert left == [], {"left in processing/": left, "log": run.text()[-3000:]}
        released = [e["video"] for e in run.events() if e["event"] == "released"]
        assert sorted(released) == held, (released, held)
        assert trouble is not None, "status did not show the storage trouble"
        assert entries(root.folder("failed")) == []
        assert "Traceback" not in run.text() and '"internal_error"' not in run.text()
        for filler in fillers:
            filler.unlink()
    _configure(root, "ok")
    once = root.vvflow("once", env=env, timeout=90)
    assert once.returncode == 0, once.stderr[-3000:]
    assert_settled(root, VIDEOS[:6], ["scan", "summarize"])


@pytest.mark.timeout(90)
def test_once_on_a_full_disk_returns_videos_and_exits_non_zero(tiny_disk: Root) -> None:
    """`vvflow once` on a full root: with `min_free_bytes` it claims nothing; with 0 it
    claims, cannot write, and returns the video. Either way nothing fails, everything
    is back in pending/, one clear line says why, and the exit code is 75 (try again
    later). Freed, the next `once` completes them."""
    root = tiny_disk
    _configure(root, "ok")
    names = VIDEOS[:4]
    for name in names:
        root.drop(name)
    fillers = _fill(root.path)
    for min_free in (MIN_FREE, 0):
        once = root.vvflow("once", env={"VVFLOW_MIN_FREE_BYTES": str(min_free)}, timeout=60)
        assert once.returncode == 75, (min_free, once.returncode, once.stderr[-3000:])
        last = once.stderr.strip().splitlines()[-1]
        assert last.startswith("vvflow: ") and "pending" in last and "space" in last, last
        assert entries(root.folder("pending")) == names, tree(root)
        assert entries(root.folder("failed")) == [] and root.names("processing") == []
    for filler in fillers:
        filler.unlink()
    once = root.vvflow("once", env=STORAGE_ENV, timeout=60)
    assert once.returncode == 0, once.stderr[-3000:]
    assert_settled(root, names, ["scan", "summarize"])


def test_min_free_bytes_is_validated_and_overridable(root: Root) -> None:
    """`min_free_bytes` comes from the TOML file, the environment or the flag (in that
    order of precedence, lowest first); a negative or non-integer value is one clear
    line and exit 2."""
    root.configure([hostile(root, "scan")], min_free_bytes=-1)
    bad = root.vvflow("once")
    assert bad.returncode == 2 and "min_free_bytes" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    bad = root.vvflow("once", "--min-free-bytes", "lots")
    assert bad.returncode == 2 and "--min-free-bytes" in bad.stderr, bad.stderr
    # The flag beats the file and the environment: an impossible threshold pauses claiming.
    root.drop("a.mp4")
    paused = root.vvflow("once", "--min-free-bytes", str(1 << 62),
                         env={"VVFLOW_MIN_FREE_BYTES": "0"})  # fmt: skip
    assert paused.returncode == 75, paused.stderr[-2000:]
    assert entries(root.folder("pending")) == ["a.mp4"]
    env = root.vvflow("once", env={"VVFLOW_MIN_FREE_BYTES": str(1 << 62)})
    assert env.returncode == 75, env.stderr[-2000:]
    done = root.vvflow("once", env={"VVFLOW_MIN_FREE_BYTES": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert entries(root.folder("completed")) == ["a.mp4"]
