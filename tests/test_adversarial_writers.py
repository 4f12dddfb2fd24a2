"""Writers that pause: a producer that keeps its file open and stops writing for longer
than `stable_seconds`, one that closes and later appends by path (`cat >>`, `curl -C -`,
a resumable upload), and a camera that reuses one name for upload after upload.

Real writer processes, real `vvflow run` and `vvflow once` processes, a real stage that
logs the size and the first bytes of the video it is given.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Root
from tests.test_adversarial_support import (
    Fleet,
    clean_env,
    entries,
    hostile,
    stage_log,
    wait_for,
)

#: A stage that logs the size and head of {video} when it starts and ends, waits while
#: the HOLD file exists, and writes an output naming the size it saw.
STAGE = r"""
import json, os, sys, time
video, output, log, hold = sys.argv[1:5]
name = os.environ["VVFLOW_NAME"]

def record(event):
    with open(video, "rb") as fh:
        head = fh.read(8).hex()
    line = {"event": event, "video": name, "size": os.path.getsize(video), "head": head,
            "t": time.time()}
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (json.dumps(line) + "\n").encode())
    os.close(fd)
    return line

seen = record("start")
while os.path.exists(hold):
    time.sleep(0.02)
with open(output, "w") as fh:
    json.dump({"stage": "scan", "video": name, "size": seen["size"]}, fh)
record("end")
"""

#: A producer: writes the first half of SOURCE to TARGET, says so (HALF), waits for GO,
#: then writes the rest, either through the same descriptor (`keep-open`) or by
#: reopening TARGET by path in append mode (`reopen`), and says DONE.
WRITER = r"""
import os, sys, time
mode, source, target, half, go, done = sys.argv[1:7]
data = open(source, "rb").read()
cut = len(data) // 2
fh = open(target, "wb")
fh.write(data[:cut])
fh.flush()
if mode == "reopen":
    fh.close()
open(half, "w").close()
while not os.path.exists(go):
    time.sleep(0.02)
if mode == "reopen":
    fh = open(target, "ab")
fh.write(data[cut:])
fh.close()
open(done, "w").close()
"""


class Writer:
    """A writer subprocess and its handshake files."""

    def __init__(self, tmp_path: Path, mode: str, data: bytes, target: Path) -> None:
        self.dir = tmp_path / f"writer-{target.name}"
        self.dir.mkdir()
        source = self.dir / "source"
        source.write_bytes(data)
        self.half, self.go, self.done = (self.dir / n for n in ("half", "go", "done"))
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-c", WRITER, mode, str(source), str(target),
             str(self.half), str(self.go), str(self.done)],
        )  # fmt: skip
        wait_for(self.half.exists, what="the writer's first half")

    def finish(self) -> None:
        self.go.touch()
        wait_for(self.done.exists, what="the writer's second half")
        assert self.proc.wait(timeout=30) == 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[list[Writer]]:
    started: list[Writer] = []
    yield started
    for writer in started:
        writer.close()


def _stage(root: Root, hold: Path) -> list[dict[str, Any]]:
    script = hold.with_name("stage.py")  # a file: braces in a command are placeholders
    script.write_text(STAGE)
    return [{"name": "scan", "command": [sys.executable, "-S", str(script), "{video}",
             "{output}", str(root.runlog), str(hold)],
             "output": "analytic/{stem}.analytic.json"}]  # fmt: skip


def _runs(root: Root, event: str = "start") -> list[dict[str, Any]]:
    return [r for r in root.runs() if r["event"] == event]


def _data(root: Root, tag: str, copies: int = 20) -> bytes:
    """A real video (its header first), big enough that half of it is a clear half."""
    return root.video_bytes * copies + tag.encode()


def _completed_agree_with_reports(root: Root) -> None:
    """Every completed video is, byte for byte in size, what its report says was run."""
    for name in entries(root.folder("completed")):
        size = (root.folder("completed") / name).stat().st_size
        assert root.report(name)["identity"]["size"] == size, (name, size, root.report(name))


# -- item 2 (a): a writer that keeps its file open ----------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_run_never_claims_a_file_still_open_for_writing(
    root: Root, tmp_path: Path, writers: list[Writer], observer: str
) -> None:
    """The writer writes half, then holds the file open (no write) for far longer than
    `stable_seconds` while a control video completes next to it, then writes the rest.
    The stage must see the whole file only, and completed/ must hold what the report
    says was processed."""
    hold = tmp_path / "hold"
    root.configure(_stage(root, hold), observer=observer, stable_seconds=0.3,
                   rescan_seconds=0.5)  # fmt: skip
    data = _data(root, "open")
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        writers.append(Writer(tmp_path, "keep-open", data, root.folder("pending") / "x.mp4"))
        root.drop("control.mp4")  # proves the daemon looked at pending/ meanwhile
        wait_for(lambda: "control.mp4" in entries(root.folder("completed")), what="control")
        time.sleep(1.5)  # more rescans and stability checks of the paused file
        assert [r["video"] for r in _runs(root)] == ["control.mp4"], _runs(root)
        writers[0].finish()
        wait_for(lambda: "x.mp4" in entries(root.folder("completed")), what="x.mp4 completed",
                 detail=lambda: run.text()[-2000:])  # fmt: skip
        assert run.stop() == 0
    assert [(r["video"], r["size"]) for r in _runs(root) if r["video"] == "x.mp4"] == [
        ("x.mp4", len(data))
    ]
    assert (root.folder("completed") / "x.mp4").read_bytes() == data
    _completed_agree_with_reports(root)
    assert entries(root.folder("failed")) == [] and entries(root.folder("pending")) == []


@pytest.mark.timeout(60)
def test_inotify_holds_a_file_whose_writer_proc_cannot_show(
    root: Root, tmp_path: Path, writers: list[Writer]
) -> None:
    """`vvflow run` in a pid namespace of its own, as in a container next to the
    producer's: its /proc shows none of the writer's descriptors, so only inotify (writes
    seen, no close-after-write yet) tells that the paused file is still open."""
    command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM"]
    if shutil.which("unshare") is None or subprocess.run([*command, "true"]).returncode != 0:
        pytest.skip("cannot make a pid namespace here (unshare, as root)")
    hold = tmp_path / "hold"
    root.configure(_stage(root, hold), observer="inotify", stable_seconds=0.3,
                   rescan_seconds=0.5)  # fmt: skip
    data = _data(root, "namespace")
    log = tmp_path / "vvflow.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [*command, sys.executable, "-m", "vvflow", "run", "--root", str(root.path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=clean_env(),
        )  # fmt: skip
    try:
        wait_for(lambda: b'"watching"' in log.read_bytes(), what="the observer to start")
        writers.append(Writer(tmp_path, "keep-open", data, root.folder("pending") / "x.mp4"))
        root.drop("control.mp4")
        wait_for(lambda: "control.mp4" in entries(root.folder("completed")), what="control")
        time.sleep(1.5)  # more stability checks of the paused file
        assert [r["video"] for r in _runs(root)] == ["control.mp4"], _runs(root)
        writers[0].finish()
        wait_for(lambda: "x.mp4" in entries(root.folder("completed")), what="x.mp4 completed",
                 detail=lambda: log.read_text()[-2000:])  # fmt: skip
    finally:
        # unshare ignores SIGTERM while it waits: stop its child, vvflow, directly.
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-2000:]
    assert [(r["video"], r["size"]) for r in _runs(root) if r["video"] == "x.mp4"] == [
        ("x.mp4", len(data))
    ]
    _completed_agree_with_reports(root)


@pytest.mark.timeout(60)
def test_once_leaves_a_file_still_open_for_writing_for_the_next_run(
    root: Root, tmp_path: Path, writers: list[Writer]
) -> None:
    """`vvflow once` while the writer pauses holding the file open: the file is stable
    by size and mtime, but open for writing, so it stays in pending/ untouched; the next
    `vvflow once`, after the writer closed it, processes the whole file."""
    hold = tmp_path / "hold"
    root.configure(_stage(root, hold), stable_seconds=0.3)
    data = _data(root, "open-once")
    writers.append(Writer(tmp_path, "keep-open", data, root.folder("pending") / "y.mp4"))
    first = root.vvflow("once", timeout=60)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _runs(root) == [] and entries(root.folder("pending")) == ["y.mp4"], (
        _runs(root), first.stderr[-2000:])  # fmt: skip
    refused = [json.loads(line) for line in first.stderr.splitlines() if '"unstable"' in line]
    assert refused and "open for writing" in refused[0]["reason"], first.stderr[-2000:]
    writers[0].finish()
    root.vvflow("once", timeout=60, check=0)
    assert [(r["video"], r["size"]) for r in _runs(root)] == [("y.mp4", len(data))]
    assert (root.folder("completed") / "y.mp4").read_bytes() == data
    _completed_agree_with_reports(root)


@pytest.mark.timeout(60)
def test_a_file_opened_for_writing_during_its_run_is_not_filed_until_closed(
    root: Root, tmp_path: Path
) -> None:
    """A writer opens the claimed video (it followed the file by descriptor, or reopened
    it by a path it knew) while its stage runs and holds it open without writing yet.
    When the stage is done the video is still open for writing: it is not filed, but
    returned to pending/, where it waits for the writer; the writer appends and closes,
    and the whole file is run again."""
    hold = tmp_path / "hold"
    hold.touch()
    root.configure(_stage(root, hold), stable_seconds=0.3, rescan_seconds=0.5)
    data = _data(root, "late", copies=2)
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        root.drop("w.mp4", data)
        wait_for(lambda: len(_runs(root)) == 1, what="the stage")
        (claimed,) = root.folder("processing").glob("*/w.mp4")
        with claimed.open("ab") as late:
            hold.unlink()
            wait_for(lambda: entries(root.folder("pending")) == ["w.mp4"], what="w.mp4 back",
                     detail=lambda: run.text()[-2000:])  # fmt: skip
            time.sleep(1.0)  # several stability checks: it must wait for the writer
            assert entries(root.folder("completed")) == [] and len(_runs(root)) == 1
            late.write(b"\0the rest")
        wait_for(lambda: entries(root.folder("completed")) == ["w.mp4"], what="w.mp4 completed",
                 detail=lambda: run.text()[-2000:])  # fmt: skip
        assert run.stop() == 0
    changed = [e for e in run.events() if e["event"] == "claim_changed"]
    assert len(changed) == 1 and "open for writing" in changed[0]["error"], changed
    final = len(data) + len(b"\0the rest")
    assert [r["size"] for r in _runs(root)] == [len(data), final]
    assert (root.folder("completed") / "w.mp4").stat().st_size == final
    _completed_agree_with_reports(root)


# -- item 2 (b): a writer that closes, then appends by path -------------------------


def _assert_tail_filed(root: Root, data: bytes, tail: str) -> None:
    cut = len(data) // 2
    # The first part is filed with the very bytes it was run on ...
    assert entries(root.folder("completed")) == ["z.mp4"], entries(root.folder("completed"))
    assert (root.folder("completed") / "z.mp4").read_bytes() == data[:cut]
    _completed_agree_with_reports(root)
    # ... the headerless rest is never run nor completed as a video of its own ...
    assert entries(root.folder("failed")) == [tail], entries(root.folder("failed"))
    assert (root.folder("failed") / tail).read_bytes() == data[cut:]
    assert [r["video"] for r in _runs(root)] == ["z.mp4"], _runs(root)
    error = root.report(tail)["error"]
    assert "z.mp4" in error and "append" in error and "rename" in error, error
    assert root.report(tail)["state"] == "failed"
    # ... and the first part's report says it is probably incomplete.
    warnings = root.report("z.mp4").get("warnings", [])
    assert any(tail in w and "incomplete" in w for w in warnings), root.report("z.mp4")
    assert entries(root.folder("pending")) == []


@pytest.mark.timeout(60)
def test_run_files_a_headerless_tail_appended_after_the_claim_as_failed(
    root: Root, tmp_path: Path, writers: list[Writer]
) -> None:
    """The writer writes half, closes, pauses past `stable_seconds` (the half is claimed:
    nothing can tell it from a whole file), then reopens the name and appends the rest,
    which lands in a new pending/z.mp4 while the first part's stage still runs. The tail
    must not be completed as a video: it goes to failed/ saying what happened, and the
    first part's report is marked."""
    hold = tmp_path / "hold"
    hold.touch()
    root.configure(_stage(root, hold), stable_seconds=0.3, rescan_seconds=0.5, workers=2)
    data = _data(root, "reopen")
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        writers.append(Writer(tmp_path, "reopen", data, root.folder("pending") / "z.mp4"))
        wait_for(lambda: len(_runs(root)) == 1, what="the first part's stage")
        writers[0].finish()
        wait_for(lambda: entries(root.folder("failed")) != [], what="the tail filed",
                 detail=lambda: run.text()[-2000:])  # fmt: skip
        hold.unlink()
        wait_for(lambda: "z.mp4" in entries(root.folder("completed")), what="first part",
                 detail=lambda: run.text()[-2000:])  # fmt: skip
        assert run.stop() == 0
    _assert_tail_filed(root, data, "z-2.mp4")


@pytest.mark.timeout(60)
def test_once_files_a_headerless_tail_of_an_earlier_run_as_failed(
    root: Root, tmp_path: Path, writers: list[Writer]
) -> None:
    """The same writer under cron-driven `vvflow once`: the first run completes the half,
    the writer appends the rest under the name, the next run finds the tail."""
    hold = tmp_path / "hold"
    root.configure(_stage(root, hold), stable_seconds=0.3)
    data = _data(root, "reopen-once")
    writers.append(Writer(tmp_path, "reopen", data, root.folder("pending") / "z.mp4"))
    root.vvflow("once", timeout=60, check=0)
    assert entries(root.folder("completed")) == ["z.mp4"]
    writers[0].finish()
    second = root.vvflow("once", timeout=60)
    assert second.returncode == 1, second.stderr[-3000:]  # a video failed in this run
    _assert_tail_filed(root, data, "z-2.mp4")


# -- item 7: a camera that reuses one name ---------------------------------------------


@pytest.mark.timeout(90)
def test_changes_are_counted_per_upload_not_per_name(root: Root, tmp_path: Path) -> None:
    """A camera uploads cam.mp4 four times (each a whole, different video). The first
    three are each modified once while their stage runs (returned to pending/ and run
    again whole); the fourth is left alone. None of them is failed as "modified while
    being processed 3 times in a row": each upload changed once."""
    hold = tmp_path / "hold"
    root.configure(_stage(root, hold), stable_seconds=0.2, rescan_seconds=0.5)
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        for upload in range(4):
            done = len(entries(root.folder("completed")) + entries(root.folder("failed")))
            modify = upload < 3
            if modify:
                hold.touch()
            starts = len(_runs(root))
            root.drop("cam.mp4", _data(root, f"upload {upload}", copies=1))
            wait_for(lambda n=starts: len(_runs(root)) > n, what=f"upload {upload} started",
                     detail=lambda: run.text()[-2000:])  # fmt: skip
            if modify:
                claimed = [p for p in root.folder("processing").glob("*/*.mp4")]
                assert len(claimed) == 1, claimed
                with claimed[0].open("ab") as fh:
                    fh.write(b"\0the camera rewrote its index")
                hold.unlink()
            wait_for(lambda n=done: len(entries(root.folder("completed"))
                                        + entries(root.folder("failed"))) == n + 1,
                     what=f"upload {upload} filed", detail=lambda: run.text()[-2000:])  # fmt: skip
        assert run.stop() == 0
    assert entries(root.folder("failed")) == [], [
        root.report(n)["error"] for n in entries(root.folder("failed"))
    ]
    assert entries(root.folder("completed")) == ["cam-2.mp4", "cam-3.mp4", "cam-4.mp4", "cam.mp4"]
    changed = [e for e in run.events() if e["event"] == "claim_changed"]
    assert len(changed) == 3, changed
    _completed_agree_with_reports(root)


@pytest.mark.timeout(60)
def test_a_stage_that_edits_its_own_video_still_fails_after_three_changes(
    root: Root, tmp_path: Path
) -> None:
    """Counting per upload must still stop a stage that writes to {video}: the same
    file changes under every run, so after 3 runs it is filed in failed/ with the
    reason, and not run again."""
    root.configure([hostile(root, "scan", "append-input")], stable_seconds=0.1,
                   rescan_seconds=0.5)  # fmt: skip
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        root.drop("tagged.mp4")
        wait_for(lambda: entries(root.folder("failed")) == ["tagged.mp4"], what="tagged.mp4 failed",
                 detail=lambda: run.text()[-2000:])  # fmt: skip
        assert run.stop() == 0
    assert len([r for r in stage_log(root) if r["event"] == "start"]) == 3
    assert "3 times in a row" in root.report("tagged.mp4")["error"]
