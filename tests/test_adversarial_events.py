"""Lost events: an inotify queue that overflows, and a FUSE mount (bindfs) written
through its underlying folder, where inotify sees nothing at all. Every video must
still be processed, found by the rescan."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Root
from tests.test_adversarial_support import Fleet, assert_settled, entries, wait_for

MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")
OVERFLOW_VIDEOS = 300


def _copy_stage() -> list[dict[str, object]]:
    """One fast stage (cp(1)): the point here is finding videos, not running stages."""
    return [{"name": "scan", "command": ["cp", "{video}", "{output}"],
             "output": "analytic/{stem}.analytic.json"}]  # fmt: skip


def _video(name: str) -> bytes:
    """A file whose copy is the JSON a stage of the suite writes for it."""
    return json.dumps({"stage": "scan", "video": name}).encode()


def _stopped(events: list[dict[str, object]]) -> dict[str, object]:
    return next(e for e in events if e["event"] == "stopped")


@contextlib.contextmanager
def small_inotify_queue(events: int) -> Iterator[None]:
    """max_queued_events lowered to `events` for the inotify instances created inside
    the block (the kernel reads it at inotify_init), then restored at once: the setting
    is machine-wide."""
    try:
        saved = MAX_QUEUED.read_text()
        MAX_QUEUED.write_text(f"{events}\n")
    except OSError as exc:
        pytest.skip(f"cannot lower {MAX_QUEUED}: {exc.strerror}")
    try:
        yield
    finally:
        MAX_QUEUED.write_text(saved)


@pytest.mark.timeout(120)
def test_inotify_queue_overflow_loses_no_video(root: Root, tmp_path: Path) -> None:
    """The observer's inotify queue holds 16 events; 300 videos are created in a burst
    by another process while the daemon is stopped (SIGSTOP), so the kernel drops most
    events and queues an overflow (watchdog logs it).
    The rescan (every 1 s) finds the rest: all 300 complete, each once."""
    root.configure(_copy_stage(), observer="inotify", stable_seconds=0.2, rescan_seconds=1.0)
    names = [f"burst {i:03d}.mp4" for i in range(OVERFLOW_VIDEOS)]
    with Fleet(root, tmp_path) as fleet:
        with small_inotify_queue(16):
            run = fleet.start("run")
        writer = (
            "import json, os, sys\n"
            "folder = sys.argv[1]\n"
            "for name in sys.argv[2:]:\n"
            "    with open(os.path.join(folder, name), 'wb') as fh:\n"
            "        fh.write(json.dumps({'stage': 'scan', 'video': name}).encode())\n"
        )
        # The daemon is stopped while the burst is written, so that its reader cannot
        # drain the queue: the kernel keeps 16 events and drops the rest.
        run.proc.send_signal(signal.SIGSTOP)
        try:
            subprocess.run([sys.executable, "-c", writer, str(root.folder("pending")), *names],
                           check=True)  # fmt: skip
        finally:
            run.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: len(entries(root.folder("completed"))) == len(names), timeout=90,
                 what="every video of the burst")  # fmt: skip
        assert run.stop() == 0
    assert "queue overflow" in run.text().lower() or "overflowed" in run.text(), (
        "the queue did not overflow: the test proves nothing"
    )
    stopped = _stopped(run.events())
    assert stopped["found_by_rescan"] > 0, stopped
    assert_settled(root, names, ["scan"])
    claimed = [e["video"] for e in run.events() if e["event"] == "claimed"]
    assert sorted(claimed) == names
    print(f"\ninotify overflow: {len(names)} videos, found by event "
          f"{stopped['found_by_event']}, by rescan {stopped['found_by_rescan']}")  # fmt: skip


@pytest.fixture
def fuse_root(tmp_path: Path, video_bytes: bytes) -> Iterator[tuple[Root, Path]]:
    """A root on a bindfs mount of `under/`; yields the root and its underlying path."""
    fusermount = shutil.which("fusermount") or shutil.which("fusermount3")
    if shutil.which("bindfs") is None or fusermount is None:
        pytest.skip("bindfs is not installed (apt-get install bindfs)")
    under, over = tmp_path / "under", tmp_path / "over"
    (under / "root" / "input" / "pending").mkdir(parents=True)
    over.mkdir()
    mounted = subprocess.run(["bindfs", str(under), str(over)], capture_output=True,
                             text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount bindfs here: {mounted.stderr.strip()}")
    try:
        yield Root(over / "root", tmp_path / "runs.log", video_bytes), under / "root"
    finally:
        subprocess.run([fusermount, "-u", "-z", str(over)], check=False)


@pytest.mark.timeout(90)
def test_fuse_mount_without_events_is_served_by_rescans(
    fuse_root: tuple[Root, Path], tmp_path: Path
) -> None:
    """The root is a bindfs (FUSE) mount; 20 videos are written through the underlying
    folder, so the inotify observer (forced) gets no event at all. The rescan (every
    1 s) finds all 20, each completes once. Then, under `observer = "auto"`, vvflow picks
    the polling observer on the FUSE mount by itself and 5 more videos complete."""
    root, under = fuse_root
    root.configure(_copy_stage(), observer="inotify", stable_seconds=0.2, rescan_seconds=1.0)
    first = [f"fuse {i:02d}.mp4" for i in range(20)]
    second = [f"auto {i}.mp4" for i in range(5)]
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        for name in first:
            (under / "input" / "pending" / name).write_bytes(_video(name))
        wait_for(lambda: len(entries(root.folder("completed"))) == len(first), timeout=60,
                 what="the videos written under the mount")  # fmt: skip
        assert run.stop() == 0, run.text()[-3000:]
        stopped = _stopped(run.events())
        assert stopped["found_by_event"] == 0 and stopped["found_by_rescan"] == len(first)

        root.configure(_copy_stage(), stable_seconds=0.2, rescan_seconds=3600)
        auto = fleet.start("run")
        watching = [e for e in auto.events() if e["event"] == "watching"]
        assert watching[0]["observer"] == "polling", watching
        for name in second:
            (under / "input" / "pending" / name).write_bytes(_video(name))
        wait_for(lambda: len(entries(root.folder("completed"))) == len(first + second),
                 timeout=60, what="the videos seen by the polling observer")  # fmt: skip
        assert auto.stop() == 0
    assert_settled(root, first + second, ["scan"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["recreated", "renamed-back"])
def test_pending_folder_replaced_under_a_running_daemon(
    root: Root, tmp_path: Path, how: str
) -> None:
    """An operator (or a restore, or a sync tool) replaces input/pending/ while `vvflow
    run` watches it: deleted and made again, or renamed away and a new one renamed in.
    The inotify watch was on the old folder; the daemon must notice (within a few
    health cycles) and see the videos dropped into the new folder, without waiting for
    a rescan (here once an hour)."""
    root.configure(_copy_stage(), observer="inotify", stable_seconds=0.2, rescan_seconds=3600)
    pending = root.folder("pending")
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        (pending / "before.mp4").write_bytes(_video("before.mp4"))
        wait_for(lambda: entries(root.folder("completed")) == ["before.mp4"], what="before")
        if how == "recreated":
            shutil.rmtree(pending)
            pending.mkdir()
        else:
            fresh = root.path / "input" / "pending.new"
            fresh.mkdir()
            os.rename(pending, root.path / "input" / "pending.old")
            os.rename(fresh, pending)
        (pending / "after.mp4").write_bytes(_video("after.mp4"))
        wait_for(lambda: "after.mp4" in entries(root.folder("completed")), timeout=6,
                 what="a video dropped into the new pending/",
                 detail=lambda: run.text()[-1500:])  # fmt: skip
        assert run.stop() == 0
