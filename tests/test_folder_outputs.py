"""Folder outputs (`output_dir`): written into the workspace, published whole by one
rename, given to later stages as `{<stage>_dir}`, recovered with the claim, copied for
a duplicate, never published in part."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

from tests.conftest import Root, events
from tests.test_adversarial_support import Fleet, leftovers, wait_for

STAGE = Path(__file__).with_name("folder_stage.py")


def _stages(root: Root, mode: str = "ok") -> list[dict[str, Any]]:
    log = str(root.path.parent / "folder-runs.log")
    return [
        {
            "name": "frames",
            "command": [sys.executable, str(STAGE), mode, "{output}", "{output_dir}", log],
            "output": "frames/{stem}.json",
            "output_dir": "keyframes/{stem}",
            "backoff_seconds": 0.0,
        },
        {
            "name": "reader",
            "command": [sys.executable, str(STAGE), "read", "{output}", "-", log, "{frames_dir}"],
            "output": "read/{stem}.txt",
        },
    ]


def _runs(root: Root) -> list[dict[str, Any]]:
    log = root.path.parent / "folder-runs.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


WHOLE = ["frames", "frames/0001.txt", "frames/0002.txt", "frames/0003.txt", "sheet.txt"]


def test_a_folder_output_is_published_whole_and_read_by_a_later_stage(root: Root) -> None:
    root.configure(_stages(root))
    root.drop("a.mp4")
    root.vvflow("once", check=0)
    assert root.names("completed") == ["a.mp4"]
    folder = root.path / "keyframes" / "a"
    assert _tree(folder) == WHOLE
    assert (root.path / "read" / "a.txt").read_text() == "sheet of a.mp4"
    record = root.report("a.mp4")["stages"]["frames"]
    assert record["output_dir"] == "keyframes/a" and record["output"] == "frames/a.json"
    first = _runs(root)[0]
    assert first["found"] == [], "each attempt starts from an empty folder"
    assert first["env"] and ".work" in first["env"], "{output_dir} is in the workspace"
    assert _tree(root.path / "keyframes") == ["a", *(f"a/{p}" for p in WHOLE)]
    assert leftovers(root) == []


def test_a_failed_attempt_publishes_nothing_and_the_retry_starts_empty(root: Root) -> None:
    root.configure(_stages(root, "fail-once"))
    root.drop("a.mp4")
    root.vvflow("once", check=0)
    frames = [r for r in _runs(root) if r["mode"] == "fail-once"]
    assert [r["found"] for r in frames] == [[], []]  # the half-written folder is gone
    assert _tree(root.path / "keyframes" / "a") == WHOLE
    assert leftovers(root) == []


def test_a_symlink_in_a_folder_output_fails_the_video_and_publishes_nothing(root: Root) -> None:
    root.configure(_stages(root, "symlink"))
    root.drop("a.mp4")
    root.vvflow("once", check=1)
    assert root.names("failed") == ["a.mp4"]
    assert not (root.path / "keyframes" / "a").exists()
    rep = root.report("a.mp4")
    assert "neither a file nor a folder" in rep["error"], rep["error"]
    assert leftovers(root) == []


def test_kill_9_mid_stage_leaves_no_part_of_the_folder_and_the_rerun_publishes_it(
    root: Root, tmp_path: Path
) -> None:
    """The stage wrote half of its folder when vvflow was killed: nothing of it is
    under the root; the next run recovers the claim and publishes the whole folder."""
    root.configure(_stages(root, "slow"), lease_seconds=2)
    root.drop("a.mp4")
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        wait_for(lambda: b'"stage_progress"' in run.log.read_bytes(), what="the slow stage")

        def showing() -> list[dict[str, Any]]:
            return list(root.status()["processing_now"])

        # The instance rewrites its activity file within a second of a change.
        wait_for(lambda: [n.get("progress") for n in showing()] == [0.5],
                 what="status to show the progress", detail=showing)  # fmt: skip
        (now,) = showing()
        assert (now["stage"], now["activity"], now["message"]) == (
            "frames", "running", "half of the frames"), now  # fmt: skip
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait()
        assert not (root.path / "keyframes" / "a").exists()
    root.configure(_stages(root, "ok"), lease_seconds=2)
    proc = root.vvflow("once", check=0)
    assert any(e["event"] == "recovered" and e["videos"] for e in events(proc.stderr))
    assert root.names("completed") == ["a.mp4"]
    assert _tree(root.path / "keyframes" / "a") == WHOLE
    assert leftovers(root) == []


def test_a_duplicate_gets_its_own_copy_of_the_folder(root: Root, video_bytes: bytes) -> None:
    root.configure(_stages(root))
    root.drop("a.mp4", video_bytes)
    root.vvflow("once", check=0)
    root.drop("b.mp4", video_bytes)
    proc = root.vvflow("once", check=0)
    assert any(e["event"] == "duplicate" for e in events(proc.stderr))
    assert root.names("completed") == ["a.mp4", "b.mp4"]
    assert len([r for r in _runs(root) if r["mode"] == "ok"]) == 1  # not run again
    copy = root.path / "keyframes" / "b"
    assert _tree(copy) == WHOLE
    assert (copy / "sheet.txt").read_text() == "sheet of a.mp4"
    assert not (copy / "sheet.txt").samefile(root.path / "keyframes" / "a" / "sheet.txt")
    assert root.report("b.mp4")["stages"]["frames"]["output_dir"] == "keyframes/b"
