"""What an operator sees when something is stuck, failing or stopping: a file the
instance may not move, a failure's cause in `status`, and a SIGTERM during a long stage.

Each scenario runs the real `vvflow run` / `vvflow once` as a subprocess; the blocked
file runs them as an unprivileged user (setpriv) against a root-owned file in a sticky
pending/, exactly as a shared drop folder looks.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Root, events
from tests.test_adversarial_support import (
    Fleet,
    clean_env,
    hostile,
    log_time,
    wait_for,
)
from tests.test_operator import _scrape

NOBODY = 65534
SETPRIV = shutil.which("setpriv")
AS_NOBODY = [str(SETPRIV), "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]


# -- a file the instance may not move --------------------------------------------------


@pytest.fixture
def shared_root(video_bytes: bytes) -> Iterator[Root]:
    """A root an unprivileged user can reach (pytest's tmp_path is private to root),
    owned by that user, except pending/: root's, sticky and writable by all (mode 1777),
    like a shared drop folder."""
    if os.geteuid() != 0 or SETPRIV is None:
        pytest.skip("needs root and setpriv to run vvflow as another user")
    probe = subprocess.run([*AS_NOBODY, sys.executable, "-c", "import vvflow"],
                           capture_output=True, env=clean_env(), check=False)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"uid {NOBODY} cannot run this Python with vvflow: {probe.stderr[-300:]!r}")
    base = Path(tempfile.mkdtemp(prefix="vvflow-shared-", dir="/tmp"))
    try:
        base.chmod(0o755)
        root = Root(base / "root", base / "runs.log", video_bytes)
        root.folder("pending").mkdir(parents=True)
        root.runlog.touch()
        for path in (root.runlog, root.path, *root.path.rglob("*")):
            os.chown(path, NOBODY, NOBODY)
        os.chown(root.folder("pending"), 0, 0)
        root.folder("pending").chmod(0o1777)
        yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _as_nobody(
    root: Root, command: str, *args: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`vvflow COMMAND` as uid/gid 65534 with no supplementary groups."""
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [*AS_NOBODY, sys.executable, "-m", "vvflow", command, "--root", str(root.path),
             *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            env=clean_env(env),
        )  # fmt: skip


def _nobody_stage(root: Root) -> dict[str, Any]:
    """The hostile scan stage, started by an interpreter uid 65534 may execute (the
    venv's may be a symlink into a folder private to root; the stage needs only the
    standard library)."""
    stage = hostile(root, "scan")
    for python in (sys.executable, "/usr/bin/python3"):
        if subprocess.run([*AS_NOBODY, "test", "-x", python], check=False).returncode == 0:
            stage["command"][0] = python
            return stage
    pytest.skip(f"no Python that uid {NOBODY} may execute for the stage")


def _drop_shared(root: Root) -> tuple[Path, Path]:
    """root.mp4: root's (so nobody may move it out of the sticky pending/); mine.mp4:
    nobody's, which must flow as usual."""
    theirs = root.drop("root.mp4")
    theirs.chmod(0o644)
    mine = root.drop("mine.mp4")
    os.chown(mine, NOBODY, NOBODY)
    return theirs, mine


def _no_traceback(log: list[dict[str, Any]], text: str) -> None:
    assert "Traceback" not in text, text[-3000:]
    assert not [e for e in log if e["event"] == "internal_error"], text[-3000:]


def test_a_file_the_instance_cannot_move_is_blocked_once_and_retried_when_chowned(
    shared_root: Root,
) -> None:
    root = shared_root
    config = root.configure([_nobody_stage(root)], stable_seconds=0, rescan_seconds=0.2,
                            metrics_port=0)  # fmt: skip
    os.chown(config, NOBODY, NOBODY)
    theirs, _ = _drop_shared(root)
    logfile = root.path.parent / "run.log"
    proc = _as_nobody(root, "run", log=logfile)

    def log() -> list[dict[str, Any]]:
        return events(logfile.read_text(errors="replace"))

    try:
        wait_for(
            lambda: root.names("completed") == ["mine.mp4"] or proc.poll() is not None,
            what="mine.mp4 to complete",
            detail=lambda: logfile.read_text()[-3000:],
        )
        wait_for(
            lambda: any(e["event"] == "blocked" for e in log()) or proc.poll() is not None,
            what="the blocked line",
            detail=lambda: logfile.read_text()[-3000:],
        )
        assert proc.poll() is None, logfile.read_text()[-3000:]
        # Several rescans look at it again; none may say anything more about it.
        time.sleep(2.0)
        blocked = [e for e in log() if e["event"] == "blocked"]
        assert len(blocked) == 1, blocked
        assert blocked[0]["video"] == "root.mp4"
        assert "uid 0" in blocked[0]["reason"] and "sticky" in blocked[0]["reason"]
        assert not [e for e in log() if e["event"] == "rescan_found" and
                    "root.mp4" in e["videos"]][1:]  # fmt: skip
        # status, run by another user (root) than the daemon's, says why it waits.
        data = root.status()
        assert data["pending"] == 1
        assert [b["name"] for b in data["blocked"]] == ["root.mp4"], data
        assert "sticky" in data["blocked"][0]["reason"]
        table = root.vvflow("status", check=0).stdout
        header = next(ln for ln in table.splitlines() if ln.startswith("BLOCKED"))
        row = table.splitlines()[table.splitlines().index(header) + 1]
        assert row.startswith("root.mp4") and "sticky" in row, table
        pending_line = next(ln for ln in table.splitlines() if ln.startswith("pending"))
        assert "1 blocked" in pending_line, table
        address = next(e for e in log() if e["event"] == "metrics_serving")["address"]
        assert _scrape(str(address))["vvflow_videos_blocked"] == 1
        # Its owner hands it over: it is claimed and completed, and no longer blocked.
        os.chown(theirs, NOBODY, NOBODY)
        wait_for(lambda: root.names("completed") == ["mine.mp4", "root.mp4"],
                 what="root.mp4 to complete after its chown",
                 detail=lambda: logfile.read_text()[-3000:])  # fmt: skip
        assert _scrape(str(address))["vvflow_videos_blocked"] == 0
        assert root.status()["blocked"] == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    text = logfile.read_text(errors="replace")
    _no_traceback(log(), text)
    stopped = next(e for e in log() if e["event"] == "stopped")
    assert stopped["rescans"] >= 5, stopped  # the blocked file was looked at again and again
    assert len([e for e in log() if e["event"] == "blocked"]) == 1
    assert root.report("root.mp4")["state"] == "completed"


@pytest.mark.parametrize("rename", ["renameat2", "link"])
def test_once_says_which_file_it_cannot_move_and_processes_the_others(
    shared_root: Root, rename: str
) -> None:
    root = shared_root
    os.chown(root.configure([_nobody_stage(root)]), NOBODY, NOBODY)
    theirs, _ = _drop_shared(root)
    # Writable by all: the link + unlink fallback may then link it (protected_hardlinks
    # allows that) but not unlink it from the sticky folder; it must stay one file.
    theirs.chmod(0o666)
    logfile = root.path.parent / "once.log"
    proc = _as_nobody(root, "once", log=logfile,
                      env={"VVFLOW_RENAME": "link"} if rename == "link" else None)  # fmt: skip
    code = proc.wait(timeout=60)
    text = logfile.read_text(errors="replace")
    log = events(text)
    _no_traceback(log, text)
    assert code == 0, text[-3000:]  # nothing failed: the file waits for its owner
    assert root.names("completed") == ["mine.mp4"]
    assert root.names("pending") == ["root.mp4"]
    assert root.names("processing") == [] and theirs.stat().st_nlink == 1
    blocked = [e for e in log if e["event"] == "blocked"]
    assert [e["video"] for e in blocked] == ["root.mp4"], text[-3000:]
    assert "sticky" in blocked[0]["reason"]
    stopped = next(e for e in log if e["event"] == "stopped")
    assert stopped["blocked"] == 1 and stopped["completed"] == 1


# -- a failure's cause in the status table ---------------------------------------------

#: A stage that says, on its last line, why the input is bad, naming its paths in full
#: (as real tools do), after lines of progress that say nothing.
_LONG_LINE_STAGE = (
    "import sys\n"
    "print('decoding... 100%')\n"
    "print(f'error while reading {sys.argv[1]} for {sys.argv[2]}: moov atom not found; '\n"
    "      'the file ends before its index (a truncated upload?)', file=sys.stderr)\n"
    "print('----', file=sys.stderr)\n"
    "sys.exit(65)\n"
)


def _reason_row(table: str, name: str) -> str:
    lines = table.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("FAILURES"))
    return next(ln for ln in lines[header + 1 :] if ln.startswith(name))


def test_status_shows_a_failure_cause_within_the_table_width(root: Root, tmp_path: Path) -> None:
    # A root with a long path, as real ones have: the cause must not drown in it.
    deep = Root(tmp_path / ("storage-" + "x" * 60) / "root", root.runlog, root.video_bytes)
    deep.folder("pending").mkdir(parents=True)
    # The built-in scan on a file that is not a video, and a stage printing a long line.
    (deep.folder("pending") / "notes.mkv").write_text("this is not a video\n")
    script = tmp_path / "long_line_stage.py"
    script.write_text(_LONG_LINE_STAGE)
    deep.configure([{"name": "scan", "command": [sys.executable, str(script), "{video}",
                                                 "{output}"],
                     "output": "analytic/{stem}.analytic.json"}])  # fmt: skip
    deep.drop("clip-from-camera-7.mp4")
    deep.vvflow("once", check=1)
    (deep.path / "vvflow.toml").unlink()  # the built-in pipeline
    deep.vvflow("retry", "notes.mkv", check=0)
    deep.vvflow("once", check=1, timeout=120)
    for columns in (100, 80):
        table = deep.vvflow("status", env={"COLUMNS": str(columns)}, check=0).stdout
        rows = table.splitlines()[1:]  # the first line names the root, whatever its length
        assert all(len(ln) <= columns for ln in rows), table
        assert str(deep.path) not in "\n".join(rows), table
        # The end of the stage's last meaningful line is the cause: it is shown, cut (if
        # at all) in the middle, never at the end.
        camera = _reason_row(table, "clip-from-camera-7.mp4")
        assert camera.endswith("its index (a truncated upload?)"), table
        notes = _reason_row(table, "notes.mkv")
        assert notes.endswith("data found when processing input)"), table
        if columns >= 100:
            assert "the file ends before its index (a truncated upload?)" in camera, table
            assert "readable video (invalid data found when processing input)" in notes, table
    wide = deep.vvflow("status", env={"COLUMNS": "300"}, check=0).stdout
    assert _reason_row(wide, "clip-from-camera-7.mp4").endswith(
        "bad input (exit 65): error while reading clip-from-camera-7.mp4 for {output}: moov "
        "atom not found; the file ends before its index (a truncated upload?)"
    ), wide
    # The report names the video by its name, not by where it was while claimed.
    error = deep.report("clip-from-camera-7.mp4")["error"]
    assert "processing/" not in error and str(deep.path) not in error, error
    assert "error while reading clip-from-camera-7.mp4 for {output}: moov atom" in error, error
    assert deep.report("notes.mkv")["error"].endswith(
        "bad input: notes.mkv: not a readable video (invalid data found when processing input)"
    )


# -- SIGTERM during a long stage -------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "once"])
def test_sigterm_during_a_long_stage_says_so_at_once_and_leaves_no_running_stage(
    root: Root, tmp_path: Path, command: str
) -> None:
    root.configure([hostile(root, "scan", "hang")], shutdown_grace_seconds=3)
    root.drop("long.mp4")
    with Fleet(root, tmp_path) as fleet:
        proc = fleet.start(command)
        wait_for(lambda: any(e["event"] == "stage_started" for e in proc.events()),
                 what="the stage to start", detail=lambda: proc.text()[-3000:])  # fmt: skip
        sent = time.time()
        proc.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: any(e["event"] == "stopping" for e in proc.events()), timeout=10,
                 what="the stopping line", detail=lambda: proc.text()[-3000:])  # fmt: skip
        stopping = next(e for e in proc.events() if e["event"] == "stopping")
        assert log_time(stopping["ts"]) - sent < 1.0, (stopping, sent)
        assert stopping["grace_s"] == 3
        assert abs(log_time(stopping["deadline"]) - (sent + 3)) < 1.0, (stopping, sent)
        assert stopping["running"] == [{"video": "long.mp4", "stage": "scan"}]
        # Still silent on the video itself until the grace is over.
        assert root.names("processing") == ["long.mp4"]
        assert proc.proc.wait(timeout=60) == 0
    log = events(proc.text())
    assert [e["event"] for e in log if e["event"] in ("stopping", "grace_over")] == [
        "stopping",
        "grace_over",
    ], proc.text()[-3000:]
    over = next(e for e in log if e["event"] == "grace_over")
    assert over["running"] == [{"video": "long.mp4", "stage": "scan"}]
    assert log_time(over["ts"]) >= log_time(stopping["deadline"]) - 0.1
    assert root.names("pending") == ["long.mp4"]
    rep = root.report("long.mp4")
    assert rep["state"] == "pending"
    assert {n: s["status"] for n, s in rep["stages"].items()} == {"scan": "pending"}, rep
    assert rep["stages"]["scan"]["attempts"][-1]["outcome"] == "cancelled"
