"""Crash storm and orphaned stage processes: `vvflow run` killed with SIGKILL at random
moments, over and over, with real stages running, and restarted each time."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Root
from tests.test_adversarial_support import (
    Fleet,
    alive,
    assert_settled,
    entries,
    hostile,
    hostile_three,
    log_time,
    read_pids,
    stage_log,
    tree,
    wait_for,
)

STORM_VIDEOS = 40
STORM_BAD = 4
STORM_KILLS = 50
STORM_STOPS = 10


def _all_filed(root: Root, names: list[str]) -> bool:
    filed = entries(root.folder("completed")) + entries(root.folder("failed"))
    return len(filed) >= len(names) and not entries(root.folder("pending"))


@pytest.mark.timeout(240)
def test_crash_storm_kill_9_of_run_loses_and_duplicates_nothing(root: Root, tmp_path: Path) -> None:
    """Scaled from the issue's 100 videos: 40 small videos (4 of them bad input, which
    must end in failed/), three stages sleeping 0.02-0.3 s each, and `vvflow run`
    killed with SIGKILL at a random moment 0.05-1.2 s after its start, 50 times (every
    other start with the link + unlink fallback), restarted each time, and 10 more
    starts stopped with SIGTERM at such a moment (5 clean stops, 5 followed by a second
    signal); 10 of the videos are dropped while the storm goes on. Then one clean run
    files everything.

    Invariants: every name is in exactly one of completed/ and failed/ (no `-2` copy);
    pending/ and processing/ are empty; every completed video has all three outputs,
    whole and written for it; no temporary file remains; each report agrees with its
    folder; no stage started for a video after vvflow logged it completed; a further
    run starts no stage; no stage process outlives the storm; after each clean stop,
    nothing of that instance is left in processing/.
    """
    rng = random.Random(20261124)
    root.configure(
        hostile_three(root, "sleep:0.02-0.3", "sleep:0.02-0.3,bad-if:bad", "sleep:0.02-0.3"),
        stable_seconds=0.1, rescan_seconds=0.5, workers=2, shutdown_grace_seconds=2,
    )  # fmt: skip
    names = [
        f"{'bad' if i % 10 == 3 else 'clip'} {i:02d}.mp4" for i in range(STORM_VIDEOS)
    ]  # fmt: skip
    assert sum(n.startswith("bad") for n in names) == STORM_BAD
    late = names[-10:]
    for name in names[:-10]:
        root.drop(name)
    kills = stops = double = 0
    started = time.monotonic()
    with Fleet(root, tmp_path) as fleet:
        for cycle in range(STORM_KILLS + STORM_STOPS):
            env = {"VVFLOW_RENAME": "link"} if cycle % 2 else {}
            run = fleet.start("run", env=env, wait_watching=False)
            moment = time.monotonic() + rng.uniform(0.05, 1.2)
            if 5 <= cycle < 5 + len(late):
                time.sleep(rng.uniform(0.0, 0.3))
                root.drop(late[cycle - 5])
            time.sleep(max(0.0, moment - time.monotonic()))
            assert run.proc.poll() is None, run.text()[-3000:]
            if cycle % 6 != 5:
                run.proc.send_signal(signal.SIGKILL)
                run.proc.wait()
                kills += 1
                continue
            # Every sixth start is stopped with SIGTERM instead, once it is up (before
            # its handlers are installed, SIGTERM ends it by the default action, as a
            # crash would): alternately a clean stop (exit 0, and then nothing of it is
            # left in processing/) and a second signal 0.1-0.5 s later, which exits at
            # once like a crash.
            wait_for(lambda: b'"watching"' in run.log.read_bytes(), what="the daemon up")  # noqa: B023
            time.sleep(rng.uniform(0.0, 0.8))
            run.proc.send_signal(signal.SIGTERM)
            if (cycle // 6) % 2:
                time.sleep(rng.uniform(0.1, 0.5))
                if run.proc.poll() is None:
                    run.proc.send_signal(signal.SIGINT)
                run.proc.wait(timeout=30)
                double += 1
            else:
                assert run.proc.wait(timeout=30) == 0, run.text()[-3000:]
                assert not _instance_folder(root, run.pid), tree(root)
                stops += 1
        storm_seconds = time.monotonic() - started
        final = fleet.start("run")
        wait_for(lambda: _all_filed(root, names) and _no_claims(root),
                 timeout=120, what="every video filed after the storm",
                 detail=lambda: (tree(root), final.text()[-4000:]))  # fmt: skip
        assert final.stop() == 0, final.text()[-3000:]
        logs = [e for run in fleet.started for e in run.events()]

    assert kills >= STORM_KILLS and stops + double == STORM_STOPS
    assert_settled(root, names)
    failed = entries(root.folder("failed"))
    assert failed == sorted(n for n in names if n.startswith("bad"))
    for name in failed:
        assert root.report(name)["failed_stage"] == "summarize"

    # No stage started for a video after it was logged completed, and none was logged
    # completed twice.
    completed_at: dict[str, float] = {}
    for event in logs:
        if event["event"] == "completed":
            assert event["video"] not in completed_at, f"{event['video']} completed twice"
            completed_at[event["video"]] = log_time(event["ts"])
    runs = stage_log(root)
    late_starts = [
        r for r in runs
        if r["event"] == "start" and r["video"] in completed_at
        and r["t"] > completed_at[r["video"]] + 0.002
    ]  # fmt: skip
    assert late_starts == []

    # Every stage process of every killed instance is gone (stopped by recovery, or
    # finished on its own: none was left behind running).
    pids = {r["pid"] for r in runs}
    wait_for(lambda: not any(alive(p) for p in pids), timeout=10, what="orphans gone")

    # Another run finds nothing to do.
    before = len(runs)
    root.vvflow("once", check=0)
    assert len(stage_log(root)) == before

    starts = Counter((r["video"], r["stage"]) for r in runs if r["event"] == "start")
    ends = Counter((r["video"], r["stage"]) for r in runs if r["event"] == "end")
    print(
        f"\ncrash storm: {len(names)} videos, {kills} SIGKILLs, {stops} clean SIGTERM stops, "
        f"{double} double signals in {storm_seconds:.0f}s, "
        f"{sum(starts.values())} stage starts, {sum(v - 1 for v in starts.values())} of "
        f"them repeats after a kill ({sum(v - 1 for v in ends.values() if v > 1)} of those "
        "ran to their end, unpublished), 0 lost, 0 duplicated"
    )


def _instance_folder(root: Root, pid: int) -> list[Path]:
    return list(root.folder("processing").glob(f"*-{pid}-*"))


def _no_claims(root: Root) -> bool:
    folder = root.folder("processing")
    return all(not [p for p in sub.iterdir() if not p.name.startswith(".")]
               for sub in folder.iterdir())  # fmt: skip


def _stage_pidfile(root: Root) -> list[Path]:
    return list(root.folder("processing").glob("*/.work/*/.stage.pid"))


@pytest.mark.timeout(90)
def test_orphaned_stage_processes_never_replace_a_newer_output(root: Root, tmp_path: Path) -> None:
    """After a SIGKILL of `vvflow run`, its stage (which ignores SIGTERM and is half-way
    through writing its output) keeps running, and so does a process the stage started
    in a new session that holds the output open and writes into it 2.5 s later. The
    next instance must stop the orphan it can reach, and neither may ever change the
    output the next instance publishes."""
    pids = tmp_path / "pids"
    gate = tmp_path / "first-run"
    root.configure(
        [hostile(root, "scan", f"first:{gate},ignore-term,escape:2.5,linger:30", pids=pids)],
        stable_seconds=0.0, rescan_seconds=0.5,
    )  # fmt: skip
    with Fleet(root, tmp_path) as fleet:
        first = fleet.start("run")
        root.drop("a.mp4")
        wait_for(lambda: bool(_stage_pidfile(root)) and "escaped" in read_pids(pids),
                 what="the stage to run")  # fmt: skip
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        orphan = read_pids(pids)["stage"][0]
        escaped = read_pids(pids)["escaped"][0]
        assert alive(orphan) and alive(escaped)

        second = fleet.start("run")
        wait_for(lambda: not alive(orphan), timeout=10, what="the orphaned stage stopped")
        wait_for(lambda: root.names("completed") == ["a.mp4"], what="a.mp4 completed")
        output = root.path / "analytic" / "a.analytic.json"
        published = output.read_bytes()
        # The escaped process writes 2.5 s after it started; wait until it is gone.
        wait_for(lambda: not alive(escaped), timeout=15, what="the escaped process done")
        assert second.stop() == 0

    assert output.read_bytes() == published
    data = json.loads(published)
    assert data["ppid"] == second.pid, "the output is the second instance's run"
    assert b"LATE" not in published
    assert_settled(root, ["a.mp4"], ["scan"])
    # The escaped process recreated nothing in the dead instance's folder.
    assert not any(root.folder("processing").iterdir())
    assert os.listdir(root.path / "analytic") == ["a.analytic.json"]


@pytest.mark.timeout(60)
def test_claims_of_a_killed_but_unreaped_instance_are_recovered_at_once(
    root: Root, tmp_path: Path
) -> None:
    """`vvflow run` is killed with SIGKILL while it holds a video, and its parent does not
    reap it yet (as a shell or a supervisor that is busy would not): it is a zombie, its
    process is gone. DESIGN.md: the claims of an instance that ran on this host and
    whose process is gone go back at once. With a 30 s lease, the next instance must
    take the video back and complete it within 10 s."""
    gate = tmp_path / "gate"
    root.configure([hostile(root, "scan", f"first:{gate}.seen,wait:{gate}")],
                   stable_seconds=0.0, rescan_seconds=0.5, lease_seconds=30)  # fmt: skip
    with Fleet(root, tmp_path) as fleet:
        first = fleet.start("run")
        root.drop("a.mp4")
        wait_for(lambda: bool(_stage_pidfile(root)), what="the stage to run")
        first.proc.send_signal(signal.SIGKILL)
        wait_for(lambda: not alive(first.pid), what="the first instance dead (a zombie)")
        assert first.proc.returncode is None, "reaped already: the test proves nothing"
        gate.touch()
        second = fleet.start("run")
        try:
            wait_for(lambda: root.names("completed") == ["a.mp4"], timeout=10,
                     what="a.mp4 taken back from the dead instance")  # fmt: skip
        finally:
            first.proc.wait()
        assert second.stop() == 0
    assert_settled(root, ["a.mp4"], ["scan"])


@pytest.mark.timeout(120)
def test_crash_storm_with_duplicate_contents(root: Root, tmp_path: Path) -> None:
    """Content dedupe under SIGKILL: 6 contents, each dropped under two names (12
    videos), three stages sleeping 0.02-0.2 s, `vvflow run` killed 20 times at random
    moments 0.05-1.0 s after its start (every other start with the link fallback), then
    one clean run. Every name completes once with whole outputs written (or derived)
    for its own name; of each pair, at least one ran the stages and the other, when it
    is a duplicate, names a completed original of the very same content."""
    rng = random.Random(6)
    root.configure(hostile_three(root, "sleep:0.02-0.2", "sleep:0.02-0.2", "sleep:0.02-0.2"),
                   stable_seconds=0.1, rescan_seconds=0.5, workers=2)  # fmt: skip
    names = []
    for i in range(6):
        content = root.video_bytes + f"\0content {i}".encode() + b"\0" * i
        for prefix in ("orig", "copy"):
            names.append(f"{prefix} {i}.mp4")
            root.drop(names[-1], content)
    with Fleet(root, tmp_path) as fleet:
        for cycle in range(20):
            env = {"VVFLOW_RENAME": "link"} if cycle % 2 else {}
            run = fleet.start("run", env=env, wait_watching=False)
            time.sleep(rng.uniform(0.05, 1.0))
            run.proc.send_signal(signal.SIGKILL)
            run.proc.wait()
        final = fleet.start("run")
        wait_for(lambda: _all_filed(root, names) and _no_claims(root), timeout=60,
                 what="every video filed", detail=lambda: tree(root))  # fmt: skip
        assert final.stop() == 0
    assert_settled(root, names)
    assert entries(root.folder("completed")) == sorted(names)
    for i in range(6):
        pair = [root.report(f"{prefix} {i}.mp4") for prefix in ("orig", "copy")]
        assert any(rep.get("duplicate_of") is None for rep in pair), pair
        for rep in pair:
            original = rep.get("duplicate_of")
            if original is not None:
                assert original in {r["name"] for r in pair} - {rep["name"]}, rep
                done = root.folder("completed")
                assert (done / original).read_bytes() == (done / rep["name"]).read_bytes()
