"""Full disk: the storage root on a small tmpfs. A stage whose own output can never fit
fails its video with a clear reason and the daemon goes on; with the disk completely
full, reports, the health record and outputs cannot be written, and still the daemon
neither crashes nor loses a video, nor fails it: a storage error is not the video's
fault (tests/test_adversarial_storage.py has the rest of that scenario).

`min_free_bytes` is lowered for this 24 MiB disk: the default (256 MiB) would rightly
never claim anything on it."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Root
from tests.test_adversarial_support import (
    Fleet,
    alive,
    assert_settled,
    entries,
    hostile,
    leftovers,
    tmpfs_root,
    wait_for,
)

DISK_MIB = 24
MIN_FREE_BYTES = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path, video_bytes: bytes) -> Iterator[Root]:
    """A root on a tmpfs of DISK_MIB MiB (the stage log stays outside it)."""
    with tmpfs_root(tmp_path, video_bytes, DISK_MIB) as root:
        yield root


def _fill(folder: Path) -> list[Path]:
    """Write files in `folder` until its filesystem is full, to the last block."""
    fillers = []
    for number, size in enumerate((1 << 20, 4096, 512)):
        path = folder / f"filler{number}"
        fillers.append(path)
        with path.open("wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return fillers


def _health_refused(events: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in events if e["event"] == "report_unwritable" and "video" not in e]


@pytest.mark.timeout(90)
def test_output_that_does_not_fit_fails_its_video_and_the_daemon_goes_on(
    small_disk: Root, tmp_path: Path
) -> None:
    """A 24 MiB tmpfs; the scan stage of `huge.mp4` writes a 64 MiB output (2 attempts).
    Its output alone can never fit: once its partial output is deleted the disk has
    room again, so each attempt is that video's failure, not a storage pause (which
    would loop forever). huge.mp4 ends in failed/ with `No space left on device` in its
    report, whole and untouched; its partial outputs are deleted, the space is given
    back; the next video completes; the daemon stops cleanly."""
    root = small_disk
    root.configure(
        [hostile(root, "scan", f"big-if:huge:{64 << 20}", attempts=2),
         hostile(root, "summarize", inp="{scan}")],
        stable_seconds=0.1, rescan_seconds=0.5, min_free_bytes=MIN_FREE_BYTES,
    )  # fmt: skip
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        huge = root.drop("huge.mp4")
        content = huge.read_bytes()
        wait_for(lambda: entries(root.folder("failed")) == ["huge.mp4"], timeout=60,
                 what="huge.mp4 failed")  # fmt: skip
        root.drop("next.mp4")
        wait_for(lambda: entries(root.folder("completed")) == ["next.mp4"], timeout=30,
                 what="the next video completed")  # fmt: skip
        assert run.proc.poll() is None
        assert run.stop() == 0, run.text()[-3000:]

    rep = root.report("huge.mp4")
    assert rep["failed_stage"] == "scan"
    assert "No space left on device" in rep["error"], rep["error"]
    assert len(rep["stages"]["scan"]["attempts"]) == 2
    assert (root.folder("failed") / "huge.mp4").read_bytes() == content
    assert not (root.path / "analytic" / "huge.analytic.json").exists()
    assert_settled(root, ["huge.mp4", "next.mp4"], ["scan", "summarize"])
    assert shutil.disk_usage(root.path).used < 4 << 20, "the partial outputs were not deleted"


@pytest.mark.timeout(90)
def test_completely_full_disk_crashes_nothing_and_loses_no_video(
    small_disk: Root, tmp_path: Path
) -> None:
    """The tmpfs filled to the last byte while `vvflow run` runs, then a video renamed
    into pending/ (a rename needs no space), claimed (`min_free_bytes = 0`: no pause
    before trying): its report, its outputs and the health record cannot be written.
    The daemon stays up through several health cycles, the video goes back to pending/
    each time (never failed, never lost, never in two places), `vvflow status` still
    answers and shows the trouble, and once space is freed it and the next video
    complete."""
    root = small_disk
    root.configure(
        [hostile(root, "scan", attempts=2), hostile(root, "summarize", inp="{scan}")],
        stable_seconds=0.1, rescan_seconds=0.5, min_free_bytes=0,
    )  # fmt: skip
    staging = root.path / "staging"
    staging.mkdir()
    (staging / "full.mp4").write_bytes(root.video_bytes + b"\0full")
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        fillers = _fill(root.path)
        os.rename(staging / "full.mp4", root.folder("pending") / "full.mp4")
        wait_for(lambda: any(e["event"] == "released" and e["video"] == "full.mp4"
                             for e in run.events()),
                 timeout=60, what="full.mp4 returned to pending/",
                 detail=lambda: run.text()[-3000:])  # fmt: skip
        # Two more health cycles (every 2 s) on the full disk: the daemon stays up.
        wait_for(lambda: len(_health_refused(run.events())) >= 2, timeout=20,
                 what="two health records refused on the full disk")  # fmt: skip
        assert alive(run.pid), run.text()[-3000:]
        status = json.loads(root.vvflow("status", "--json", check=0).stdout)
        assert status["failed"] == 0 and status["storage"]["trouble"], status

        for filler in fillers:
            filler.unlink()
        root.drop("after.mp4")
        wait_for(lambda: entries(root.folder("completed")) == ["after.mp4", "full.mp4"],
                 timeout=60, what="full.mp4 and after.mp4 completed once space is back",
                 detail=lambda: run.text()[-3000:])  # fmt: skip
        assert run.stop() == 0, run.text()[-3000:]

    refused = [e for e in run.events() if e["event"] == "report_unwritable"]
    print(f"\nfull disk: {len(refused)} writes refused (reports, health), daemon up throughout")
    assert [e for e in run.events() if e["event"] == "failed"] == []
    released = [e for e in run.events() if e["event"] == "released"]
    assert "No space left on device" in str(released[0]["reason"]), released[0]
    assert "Traceback" not in run.text()
    assert entries(root.folder("failed")) == []
    assert root.report("full.mp4")["state"] == "completed"
    assert entries(root.folder("pending")) == [] and entries(root.folder("processing")) == []
    assert [p for p in leftovers(root) if p.parent != root.path] == []
