"""Hostile input in pending/: names built to break a shell or a parser, symlinks out of
the root (planted, swapped in after the stability check, or pending/ itself), a folder
and a FIFO with video names, a sparse 100 GB file, and a video deleted or replaced
while its stages run. Nothing is executed, nothing outside the root is read or moved,
nothing blocks, no video is lost."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Root
from tests.test_adversarial_support import (
    Fleet,
    assert_settled,
    entries,
    hostile_three,
    stage_log,
    wait_for,
)
from vvflow import instance, report
from vvflow.layout import Layout

HOSTILE_NAMES = [
    "$(touch PWNED-subst).mp4",
    "`touch PWNED-backtick`.mp4",
    "a; touch PWNED-semicolon ;.mp4",
    "x | touch PWNED-pipe.mkv",
    "it's \"quoted\" & 'single'.mp4",
    "new\nline\ttab.mp4",
    "-rf --version.mp4",
    "--output=evil.mp4",
    "{video} {output} %s $HOME.mp4",
    "back\\slash *?[glob].mp4",
]
INVALID_UTF8 = b"bad \xff\xfe name.mp4"


def _pwned(*folders: Path) -> list[Path]:
    found = []
    for folder in folders:
        found += [p for p in folder.rglob("*") if "PWNED" in p.name and p.name.count(".") == 0]
    return found


def _untouched_atime(path: Path) -> tuple[int, int]:
    """Give `path` an atime older than its mtime, so that under relatime any read of it
    moves its atime; return (atime_ns, mtime_ns) to compare with later."""
    st = path.stat()
    os.utime(path, ns=(st.st_mtime_ns - 100 * 10**9, st.st_mtime_ns))
    st = path.stat()
    return st.st_atime_ns, st.st_mtime_ns


def _time_pair(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_atime_ns, st.st_mtime_ns


@pytest.mark.timeout(90)
def test_hostile_names_reach_stages_as_single_arguments_and_run_nothing(
    root: Root, tmp_path: Path
) -> None:
    """Ten names with shell syntax, quotes, a newline, a leading `-`, placeholders and
    an invalid UTF-8 one, dropped while `vvflow run` watches: each completes, each
    stage got the absolute path of its video as one argv element (never split, never
    interpreted), and no PWNED file appears anywhere."""
    root.configure(hostile_three(root), stable_seconds=0.2, rescan_seconds=0.5)
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        for name in HOSTILE_NAMES:
            root.drop(name)
        with open(os.fsencode(root.folder("pending")) + b"/" + INVALID_UTF8, "wb") as fh:
            fh.write(root.video_bytes + b"\0invalid-utf8")
        bad = os.fsdecode(INVALID_UTF8)
        names = sorted([*HOSTILE_NAMES, bad])
        wait_for(lambda: sorted(entries(root.folder("completed"))) == names, timeout=60,
                 what="every hostile name completed",
                 detail=lambda: (entries(root.folder("failed")), run.text()[-2000:]))  # fmt: skip
        assert run.stop() == 0
    assert_settled(root, names)
    for record in stage_log(root):
        if record["event"] == "start" and record["stage"] == "scan":
            video = record["argv"][-2]
            assert os.path.isabs(video) and os.path.basename(video) == record["video"], record
            assert record["video"] in names
    assert _pwned(Path.cwd(), root.path, tmp_path) == []


@pytest.mark.timeout(60)
def test_255_byte_name_is_processed_under_a_name_that_fits(root: Root) -> None:
    """A name of exactly 255 bytes (NAME_MAX) is a legal file name, and so is one of
    255 bytes of 2-byte characters: each video completes, under a shortened name whose
    outputs and report fit (README: stems over 220 bytes are shortened at a character
    boundary, keeping the extension), and its report keeps the original name."""
    names = ["y" * 251 + ".mp4", "é" * 125 + "x.mkv"]
    assert [len(os.fsencode(n)) for n in names] == [255, 255]
    root.configure(hostile_three(root, attempts=1))
    for name in names:
        root.drop(name)
    root.vvflow("once", timeout=60, check=0)
    completed = entries(root.folder("completed"))
    assert len(completed) == 2 and entries(root.folder("failed")) == []
    originals = set()
    for name in completed:
        assert len(os.fsencode(name)) <= 255 and name.isprintable()
        rep = root.report(name)
        assert rep["state"] == "completed"
        originals.add(rep["original_name"])
        assert os.path.splitext(name)[1] == os.path.splitext(rep["original_name"])[1]
        for stage in ("scan", "summarize", "logline"):
            assert (root.path / rep["stages"][stage]["output"]).stat().st_size > 0
    assert originals == set(names)
    assert_settled(root, completed)


@pytest.mark.timeout(60)
def test_symlinks_folders_and_fifos_are_never_followed_read_or_moved(
    root: Root, tmp_path: Path
) -> None:
    """pending/ holds a symlink to a video outside the root, a symlink to a folder
    outside the root, a dangling one, a folder named x.mp4 with a video inside and a
    FIFO named y.mp4 (with no writer: opening it would block). `vvflow run` processes
    the one real video beside them; the others stay exactly as they were; the outside
    video is not moved and not even read (its atime, set older than its mtime, does not
    move under relatime); status lists each with its reason."""
    root.configure(hostile_three(root), stable_seconds=0.2, rescan_seconds=0.5)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.mp4"
    secret.write_bytes(root.video_bytes + b"\0secret")
    times = _untouched_atime(secret)
    pending = root.folder("pending")
    (pending / "link.mp4").symlink_to(secret)
    (pending / "dirlink.mp4").symlink_to(outside)
    (pending / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (pending / "x.mp4").mkdir()
    (pending / "x.mp4" / "inner.mp4").write_bytes(root.video_bytes)
    os.mkfifo(pending / "y.mp4")
    before = {p.name: p.lstat() for p in pending.iterdir()}
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        root.drop("real.mp4")
        wait_for(lambda: entries(root.folder("completed")) == ["real.mp4"], what="real.mp4")
        time.sleep(1.2)  # two more rescans over the hostile entries
        assert run.stop() == 0
    after = {p.name: p.lstat() for p in pending.iterdir()}
    assert sorted(after) == sorted(before)
    for name, st in before.items():
        assert (after[name].st_ino, after[name].st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert stat.S_ISFIFO(after["y.mp4"].st_mode)
    assert _time_pair(secret) == times, "the file outside the root was read"
    assert secret.read_bytes().endswith(b"\0secret")
    assert os.listdir(outside) == ["secret.mp4"]
    assert {r["video"] for r in stage_log(root)} == {"real.mp4"}
    reasons = {i["name"]: i["reason"] for i in root.status()["ignored"]}
    for name in ("link.mp4", "dirlink.mp4", "dangling.mp4"):
        assert reasons[name].startswith("symlink"), reasons
    assert reasons["x.mp4"].startswith("folder") and "regular" in reasons["y.mp4"]


def test_symlink_swapped_in_after_the_stability_check_is_never_claimed(
    root: Root, tmp_path: Path
) -> None:
    """A candidate judged stable is replaced by a symlink to a file outside the root
    just before the claim; then, for up to 5 s, a racing thread swaps the file and the
    symlink every 0-3 ms while claims go on (50 claims). A claim never holds a
    symlink, the outside file is never moved, and the symlink is left in pending/."""
    layout = Layout(root.path, [".mp4"])
    layout.ensure()
    lease = layout.processing / instance.InstanceId.current().name
    lease.mkdir()
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"outside the root")
    pending = layout.pending

    target = pending / "swap.mp4"
    target.write_bytes(root.video_bytes)
    (candidate,), _ = layout.scan_pending()
    os.unlink(target)
    target.symlink_to(secret)
    assert layout.claim(candidate, lease) is None
    assert target.is_symlink() and secret.read_bytes() == b"outside the root"

    stop = threading.Event()
    aside = tmp_path / "aside.mp4"
    rng = random.Random(7)

    def swapper() -> None:
        """File in place a moment, then a symlink to the outside file a moment, again."""
        link_tmp = pending / ".link.tmp"
        while not stop.is_set():
            if not os.path.lexists(aside):
                aside.write_bytes(root.video_bytes + os.urandom(8))  # the last one was claimed
            os.rename(aside, target)
            time.sleep(rng.uniform(0, 0.003))
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(os.lstat(target).st_mode):
                    os.rename(target, aside)
            link_tmp.symlink_to(secret)
            os.rename(link_tmp, target)
            time.sleep(rng.uniform(0, 0.003))
            with contextlib.suppress(FileNotFoundError):
                if os.path.islink(target):
                    os.unlink(target)

    thread = threading.Thread(target=swapper)
    thread.start()
    claimed = refused = 0
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and claimed < 50:
            found = [c for c in layout.scan_pending()[0] if c.name == "swap.mp4"]
            if not found:
                continue
            time.sleep(rng.uniform(0, 0.004))  # the stability check is over: swap time
            claim = layout.claim(found[0], lease)
            assert not [p for p in lease.iterdir() if p.is_symlink()], "a symlink was claimed"
            if claim is None:
                refused += 1
                continue
            claimed += 1
            st = os.lstat(claim.path)
            assert stat.S_ISREG(st.st_mode), claim
            assert report.Identity.of(st) == claim.identity
            os.unlink(claim.path)
    finally:
        stop.set()
        thread.join()
    assert secret.read_bytes() == b"outside the root"
    assert claimed > 0 and refused > 0, (claimed, refused)
    assert not [p for p in pending.iterdir() if p.is_symlink() and p.resolve() != secret]
    print(f"\nsymlink swap race: {claimed} claims of the real file, {refused} refused")


@pytest.mark.timeout(60)
def test_symlinked_pending_folder_is_refused_and_nothing_outside_moves(
    root: Root, tmp_path: Path
) -> None:
    """input/pending is a symlink to a folder outside the root that holds a video.
    vvflow must refuse the root with a clear one-line error (exit 2) and move nothing
    out of that folder."""
    root.configure(hostile_three(root))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "theirs.mp4").write_bytes(root.video_bytes + b"\0theirs")
    shutil.rmtree(root.folder("pending"))
    root.folder("pending").symlink_to(outside)
    proc = root.vvflow("once", timeout=60)
    assert os.listdir(outside) == ["theirs.mp4"]
    assert stage_log(root) == []
    assert proc.returncode == 2 and "symlink" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.timeout(90)
def test_sparse_100_gb_file_is_claimed_by_rename_and_never_read(root: Root, tmp_path: Path) -> None:
    """A sparse file of 100 GiB (a real video at its start, holes after) is processed
    like any other: claimed by rename, its stages run (they only stat it), completed
    within 10 s (one video takes well under 1 s here), and a small video dropped after
    it completes too. vvflow itself
    reads less than 64 MiB in all, and the disk usage does not grow."""
    root.configure(hostile_three(root), stable_seconds=0.2, rescan_seconds=0.5)
    sparse = root.folder("pending") / "sparse.mp4"
    sparse.write_bytes(root.video_bytes)
    os.truncate(sparse, 100 << 30)
    blocks = sparse.stat().st_blocks
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        started = time.monotonic()
        root.drop("small.mp4")
        wait_for(lambda: entries(root.folder("completed")) == ["small.mp4", "sparse.mp4"],
                 timeout=10, what="both videos completed",
                 detail=lambda: run.text()[-1500:])  # fmt: skip
        elapsed = time.monotonic() - started
        read = int(Path(f"/proc/{run.pid}/io").read_text().split()[1])  # rchar
        assert run.stop() == 0
    done = root.folder("completed") / "sparse.mp4"
    assert done.stat().st_size == 100 << 30 and done.stat().st_blocks == blocks
    assert read < 64 << 20, f"vvflow read {read >> 20} MiB"
    assert_settled(root, ["small.mp4", "sparse.mp4"])
    print(f"\nsparse 100 GiB: completed in {elapsed:.1f}s, vvflow read {read >> 10} KiB")


def _claimed_path(root: Root, name: str) -> Path | None:
    found = list(root.folder("processing").glob(f"*/{name}"))
    return found[0] if found else None


@pytest.mark.timeout(60)
def test_video_deleted_while_its_stages_run(root: Root, tmp_path: Path) -> None:
    """The video is deleted from processing/ while its first stage runs (the stage waits
    on a gate the test opens). vvflow publishes nothing for it, leaves nothing in
    processing/, and goes on with the next video."""
    gate = tmp_path / "gate"
    root.configure(hostile_three(root, scan=f"wait:{gate}"), stable_seconds=0.1,
                   rescan_seconds=0.5)  # fmt: skip
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        root.drop("gone.mp4")
        wait_for(lambda: bool(stage_log(root)), what="the stage to start")
        claimed = _claimed_path(root, "gone.mp4")
        assert claimed is not None
        claimed.unlink()
        gate.touch()
        root.drop("next.mp4")
        wait_for(lambda: entries(root.folder("completed")) == ["next.mp4"], what="next.mp4")
        wait_for(lambda: _claimed_path(root, "gone.mp4") is None, what="nothing left")
        assert run.stop() == 0
    assert not (root.path / "analytic" / "gone.analytic.json").exists()
    assert entries(root.folder("pending")) == [] and entries(root.folder("failed")) == []
    assert entries(root.folder("processing")) == []


@pytest.mark.timeout(60)
def test_video_replaced_while_its_stages_run_is_not_lost(root: Root, tmp_path: Path) -> None:
    """The claimed video is replaced by different content (a new file renamed over it)
    while its first stage runs. The old run's results must not be filed as the new
    file's, and the new file must not be stranded: while the daemon keeps running it
    ends in completed/ with outputs computed from its own content (or back in pending/)."""
    gate = tmp_path / "gate"
    root.configure(hostile_three(root, scan=f"first:{gate}.seen,wait:{gate}"),
                   stable_seconds=0.1, rescan_seconds=0.5)  # fmt: skip
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        root.drop("swap.mp4")
        wait_for(lambda: bool(stage_log(root)), what="the stage to start")
        claimed = _claimed_path(root, "swap.mp4")
        assert claimed is not None
        replacement = claimed.with_name(".replacement")
        new_content = root.video_bytes + b"\0the replacement, longer than the original"
        replacement.write_bytes(new_content)
        os.rename(replacement, claimed)
        gate.touch()
        wait_for(lambda: entries(root.folder("completed")) == ["swap.mp4"], timeout=8,
                 what="the replacement processed while the daemon runs",
                 detail=lambda: (entries(root.folder("pending")),
                                 list(root.folder("processing").rglob("*"))))  # fmt: skip
        assert run.stop() == 0
    assert (root.folder("completed") / "swap.mp4").read_bytes() == new_content
    scan = (root.path / "analytic" / "swap.analytic.json").read_bytes()
    assert f'"size": {len(new_content)}'.encode() in scan
    assert_settled(root, ["swap.mp4"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("planted", ["fifo", "folder"])
def test_fifo_or_folder_planted_in_reports_blocks_nothing(root: Root, planted: str) -> None:
    """Where users can write the whole root (a share), someone plants a FIFO or a folder
    named like a video's report. vvflow must neither block nor stop on it: `vvflow
    once` ends within 10 s, the other videos complete, the planted video is not lost
    and nothing is left in processing/."""
    root.configure(hostile_three(root))
    reports = root.path / "reports"
    reports.mkdir()
    if planted == "fifo":
        os.mkfifo(reports / "a.mp4.json")
    else:
        (reports / "a.mp4.json").mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        root.drop(name)
    try:
        proc = root.vvflow("once", timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("vvflow once blocked on the planted report") from None
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    filed = entries(root.folder("completed")) + entries(root.folder("failed"))
    assert {"b.mp4", "c.mp4"} <= set(entries(root.folder("completed"))), proc.stderr[-2000:]
    assert "a.mp4" in filed + entries(root.folder("pending"))
    assert entries(root.folder("processing")) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("folder", ["analytic", "input/completed"])
def test_folder_swapped_for_a_symlink_while_the_daemon_runs(
    root: Root, tmp_path: Path, folder: str
) -> None:
    """Someone with write access to the root replaces analytic/ (or input/completed/)
    with a symlink to a folder outside the root while `vvflow run` is up (the start-up
    check has passed). Nothing may be written or moved outside the root: neither the
    next video's output nor the video itself may land in the outside folder (vvflow
    may fail the video, or refuse to go on)."""
    root.configure(hostile_three(root), stable_seconds=0.1, rescan_seconds=0.5)
    outside = tmp_path / "outside"
    outside.mkdir()
    with Fleet(root, tmp_path) as fleet:
        run = fleet.start("run")
        swapped = root.path / folder
        shutil.rmtree(swapped)
        swapped.symlink_to(outside)
        root.drop("a.mp4")
        wait_for(lambda: "a.mp4" not in entries(root.folder("pending"))
                 and not _claimed_path(root, "a.mp4"), timeout=20,
                 what="a.mp4 handled")  # fmt: skip
        run.stop()
    assert os.listdir(outside) == [], "written or moved outside the root"
