"""What may be in pending/: hostile names are processed and never executed; everything
that is not a candidate video stays where it is, untouched, with a reason."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from tests.conftest import Root

HOSTILE = [
    "$(touch PWNED).mp4",
    "`touch PWNED2`.mp4",
    "a; touch PWNED3 ;.mp4",
    'it\'s "quoted".mp4',
    "new\nline.mp4",
    "-rf --help.mp4",
    "spaces   in name.mp4",
    "éèà 日本語 ✓.mp4",
    "x" * 210 + ".mp4",
    "pipe | and & amp.mkv",
]


def test_hostile_names_are_processed_and_nothing_is_executed(root: Root, tmp_path: Path) -> None:
    root.configure()
    for name in HOSTILE:
        root.drop(name)
    root.vvflow("once", check=0)
    assert root.names("completed") == sorted(HOSTILE)
    assert root.names("pending") == []
    for name in HOSTILE:
        stem = os.path.splitext(name)[0]
        assert (root.path / "loglines" / f"{stem}.logline.json").stat().st_size > 0
        assert root.report(name)["state"] == "completed"
    # Nothing ran a shell: no file named PWNED* anywhere (cwd, root, tmp).
    for folder in (Path.cwd(), root.path, tmp_path, *root.path.rglob("*")):
        if folder.is_dir():
            assert not [p for p in folder.iterdir() if p.name.startswith("PWNED")]
    assert {r["video"] for r in root.runs()} == set(HOSTILE)


def test_invalid_utf8_name_is_processed(root: Root) -> None:
    root.configure()
    raw = os.fsencode(root.folder("pending")) + b"/bad\xff\xfename.mp4"
    with open(raw, "wb") as fh:
        fh.write(root.video_bytes)
    root.vvflow("once", check=0)
    completed = os.listdir(os.fsencode(root.folder("completed")))
    assert completed == [b"bad\xff\xfename.mp4"]
    assert os.path.exists(os.fsencode(root.path / "loglines") + b"/bad\xff\xfename.logline.json")


def test_non_candidates_stay_untouched_with_reasons(root: Root, tmp_path: Path) -> None:
    root.configure()
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(root.video_bytes)
    pending = root.folder("pending")
    (pending / "link.mp4").symlink_to(outside)
    (pending / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (pending / "folder.mp4").mkdir()
    (pending / "folder.mp4" / "inner.mp4").write_bytes(root.video_bytes)
    (pending / "empty.mp4").touch()
    (pending / ".hidden.mp4").write_bytes(root.video_bytes)
    for temp in ("copy.mp4.part", "dl.mp4.crdownload", "x.mp4.tmp", "y.mp4.partial", "z.mp4~"):
        (pending / temp).write_bytes(root.video_bytes)
    (pending / "notes.txt").write_text("not a video")
    os.mkfifo(pending / "fifo.mp4")
    root.drop("real.mp4")
    before = {p.name: (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in pending.iterdir()}

    # A FIFO must not block: run in a thread with a bound.
    result = {}
    thread = threading.Thread(target=lambda: result.update(p=root.vvflow("once", timeout=60)))
    thread.start()
    thread.join(60)
    assert result["p"].returncode == 0, result["p"].stderr

    assert root.names("completed") == ["real.mp4"]
    after = {p.name: (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in pending.iterdir()}
    before.pop("real.mp4")
    assert after == before
    assert outside.read_bytes() == root.video_bytes
    assert (pending / "folder.mp4" / "inner.mp4").exists()
    assert [r["video"] for r in root.runs()] == ["real.mp4"] * 3

    ignored = {i["name"]: i["reason"] for i in root.status()["ignored"]}
    assert ignored["link.mp4"].startswith("symlink")
    assert ignored["dangling.mp4"].startswith("symlink")
    assert ignored["folder.mp4"].startswith("folder")
    assert ignored["empty.mp4"].startswith("zero-byte")
    assert ignored[".hidden.mp4"] == "hidden name"
    assert ignored["copy.mp4.part"].startswith("temporary name")
    assert ignored["z.mp4~"].startswith("temporary name")
    assert ignored["notes.txt"].startswith("not a video extension")
    assert ignored["fifo.mp4"].startswith("not a regular file")
    assert root.status()["pending"] == 0


def test_extension_match_ignores_case_and_is_configurable(root: Root) -> None:
    root.configure(extensions=["mp4", ".MXF"])
    root.drop("upper.MP4")
    root.drop("broadcast.mxf")
    root.drop("other.mkv")
    root.vvflow("once", check=0)
    assert root.names("completed") == ["broadcast.mxf", "upper.MP4"]
    assert root.names("pending") == ["other.mkv"]


def test_file_still_changing_waits_for_next_run(root: Root) -> None:
    import subprocess
    import sys
    import time

    root.configure(stable_seconds=1.0)
    target = root.drop("growing.mp4", b"x" * 1000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VVFLOW_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vvflow", "once", "--root", str(root.path)],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 3
    while proc.poll() is None and time.monotonic() < deadline:
        with target.open("ab") as fh:
            fh.write(b"y" * 1000)
        time.sleep(0.1)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert root.names("pending") == ["growing.mp4"]
    assert root.runs() == []
    root.vvflow("once", check=0)
    assert root.names("completed") == ["growing.mp4"]
