"""The layout: renames that never overwrite, crash repair, recovery of dead instances."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Root
from vvflow import atomicfs, instance
from vvflow.layout import HEARTBEAT, MOVES, STAGE_PID, WORK, Layout


@pytest.fixture(params=["renameat2", "link"])
def rename_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(atomicfs, "FORCE_LINK", request.param == "link")
    return str(request.param)


def test_rename_noreplace_never_overwrites(tmp_path: Path, rename_mode: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a")
    b.write_text("b")
    with pytest.raises(FileExistsError):
        atomicfs.rename_noreplace(a, b, journal=tmp_path / MOVES)
    assert a.read_text() == "a" and b.read_text() == "b"
    atomicfs.rename_noreplace(a, tmp_path / "c", journal=tmp_path / MOVES)
    assert not a.exists() and (tmp_path / "c").read_text() == "a"
    with pytest.raises(FileNotFoundError):
        atomicfs.rename_noreplace(a, tmp_path / "d", journal=tmp_path / MOVES)
    assert not list((tmp_path / MOVES).glob("*")) if (tmp_path / MOVES).exists() else True


def test_concurrent_movers_of_one_file_exactly_one_wins(tmp_path: Path, rename_mode: str) -> None:
    for round_ in range(30):
        src = tmp_path / f"src{round_}"
        src.write_text("x")
        wins: list[Path] = []
        barrier = threading.Barrier(4)

        def mover(
            i: int,
            src: Path = src,
            round_: int = round_,
            barrier: threading.Barrier = barrier,
            wins: list[Path] = wins,
        ) -> None:
            dst = tmp_path / f"dst{round_}-{i}"
            barrier.wait()
            try:
                atomicfs.rename_noreplace(src, dst, journal=tmp_path / f"j{i}")
            except FileNotFoundError:
                return
            wins.append(dst)

        threads = [threading.Thread(target=mover, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1
        present = [p for p in tmp_path.glob(f"dst{round_}-*")]
        assert present == wins and not src.exists()


def test_crash_between_link_and_unlink_is_repaired(tmp_path: Path) -> None:
    src, dst = tmp_path / "pending" / "v.mp4", tmp_path / "done" / "v.mp4"
    src.parent.mkdir()
    dst.parent.mkdir()
    src.write_bytes(b"video")
    journal = tmp_path / MOVES
    journal.mkdir()
    # The state a kill -9 leaves between the two steps: intent written, link made.
    record = {"src": os.fsencode(src).hex(), "dst": os.fsencode(dst).hex()}
    (journal / f"abc{atomicfs.INTENT_SUFFIX}").write_text(json.dumps(record))
    os.link(src, dst)
    # A half-written intent from a crash before the link: harmless.
    (journal / f"def{atomicfs.INTENT_SUFFIX}").write_text('{"src": "')
    repaired = atomicfs.repair_moves(journal)
    assert repaired == [(src, dst)]
    assert not src.exists() and dst.read_bytes() == b"video"
    assert list(journal.iterdir()) == []
    # Repairing again (a crash during repair) changes nothing.
    assert atomicfs.repair_moves(journal) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_once_recovers_what_a_dead_instance_left(root: Root) -> None:
    root.configure()
    layout = Layout(root.path, [".mp4"])
    layout.ensure()
    dead = layout.processing / instance.InstanceId.local(_dead_pid(), 12345).name
    dead.mkdir()
    (dead / HEARTBEAT).touch()
    (dead / "claimed.mp4").write_bytes(root.video_bytes)
    work = dead / WORK / "claimed.mp4"
    work.mkdir(parents=True)
    (work / "claimed.analytic.json").write_text('{"half')
    # A move it was making when it died: linked into completed/, not yet unlinked.
    (dead / "moving.mp4").write_bytes(root.video_bytes)
    (dead / MOVES).mkdir()
    os.link(dead / "moving.mp4", layout.completed / "moving.mp4")
    record = {
        "src": os.fsencode(dead / "moving.mp4").hex(),
        "dst": os.fsencode(layout.completed / "moving.mp4").hex(),
    }
    (dead / MOVES / f"x{atomicfs.INTENT_SUFFIX}").write_text(json.dumps(record))

    proc = root.vvflow("once", check=0)
    assert "recovered" in proc.stderr
    assert not dead.exists()
    assert root.names("completed") == ["claimed.mp4", "moving.mp4"]
    assert root.names("processing") == []
    scan = json.loads((root.path / "analytic" / "claimed.analytic.json").read_text())
    assert scan["size"] == len(root.video_bytes)
    # The moved video ran no stage: its move was finished, not redone.
    assert {r["video"] for r in root.runs()} == {"claimed.mp4"}


def test_foreign_instances_are_judged_by_watching_their_heartbeat(root: Root) -> None:
    """Two instances of another host: one whose heartbeat keeps changing though its mtime
    says an hour ago, one whose heartbeat never changes though its mtime is an hour
    ahead. Neither wall-clock age decides: `vvflow once` (lease 2 s) watches both, takes
    back and completes only the silent one's video, after a lease of watching, and
    `status` calls neither dead at a glance."""
    root.configure(lease_seconds=2)
    layout = Layout(root.path, [".mp4"])
    layout.ensure()
    beating = layout.processing / "otherhost-100-200"
    silent = layout.processing / "otherhost-101-201"
    for folder in (beating, silent):
        folder.mkdir()
        (folder / HEARTBEAT).touch()
        (folder / f"{folder.name}.mp4").write_bytes(root.video_bytes)
    ahead = time.time() + 3600
    os.utime(silent / HEARTBEAT, (ahead, ahead))
    stop = threading.Event()

    def beat() -> None:
        count = 0
        while not stop.wait(0.2):
            count += 1
            (beating / HEARTBEAT).write_text(f"{count}\n")
            old = time.time() - 3600
            os.utime(beating / HEARTBEAT, (old, old))

    beater = threading.Thread(target=beat)
    beater.start()
    try:
        started = time.monotonic()
        proc = root.vvflow("once", check=0)
        took = time.monotonic() - started
        status = root.status()
    finally:
        stop.set()
        beater.join()
    assert root.names("completed") == ["otherhost-101-201.mp4"]
    assert took >= 2, f"recovered after {took:.1f}s, before a lease of watching"
    assert "watching_instances" in proc.stderr
    assert (beating / "otherhost-100-200.mp4").exists()
    assert status["processing"] == 1
    assert [(i["state"], i["dead"]) for i in status["instances"]] == [("unknown", False)]


def test_orphaned_stage_process_of_dead_instance_is_killed(root: Root) -> None:
    root.configure()
    layout = Layout(root.path, [".mp4"])
    layout.ensure()
    dead = layout.processing / instance.InstanceId.local(_dead_pid(), 1).name
    work = dead / WORK / "a.mp4"
    work.mkdir(parents=True)
    (dead / "a.mp4").write_bytes(root.video_bytes)
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    start = instance.process_start(orphan.pid)
    (work / STAGE_PID).write_text(f"{orphan.pid} {start}\n")
    root.vvflow("once", check=0)
    assert orphan.wait(timeout=10) == -9
    assert root.names("completed") == ["a.mp4"]


def test_folders_on_different_filesystems_are_refused(root: Root) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    root.configure()
    failed = root.path / "input" / "failed"
    failed.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(failed)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        root.drop("a.mp4")
        proc = root.vvflow("once", check=2)
        assert "input/failed is on a different filesystem" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert root.names("pending") == ["a.mp4"]
        doctor = root.vvflow("doctor", check=1)
        assert "different filesystem" in doctor.stdout
    finally:
        subprocess.run(["umount", str(failed)], check=True)


def test_doctor_passes_on_a_good_root(root: Root) -> None:
    root.configure()
    proc = root.vvflow("doctor")
    assert proc.returncode == 0, proc.stdout
    assert "ok   root:" in proc.stdout and "ok   rename:" in proc.stdout
    assert "ok   inotify:" in proc.stdout
    assert "ok   stage scan:" in proc.stdout


def test_doctor_reports_missing_stage_command(root: Root) -> None:
    stage = root.stage("scan")
    stage["command"] = ["no-such-command-vvflow", "{video}", "{output}"]
    root.configure([stage])
    proc = root.vvflow("doctor", check=1)
    assert "FAIL stage scan: command not found: no-such-command-vvflow" in proc.stdout
