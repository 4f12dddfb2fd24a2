"""Shared storage: several `vvflow run` instances on one root, one killed with SIGKILL
and one frozen with SIGSTOP past its lease, then resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Root
from tests.test_adversarial_support import (
    Fleet,
    Vvflow,
    alive,
    assert_settled,
    clean_env,
    entries,
    hostile,
    log_time,
    other_host_argv,
    output_paths,
    stage_log,
    tree,
    wait_for,
)
from vvflow import atomicfs
from vvflow.config import load_settings
from vvflow.daemon import Daemon
from vvflow.worker import Worker

INSTANCES = 4
VIDEOS = 500
WAVE = VIDEOS // 4
LEASE = 3.0
STAGES = ("scan", "summarize")


def _folder_of(root: Root, run: Vvflow) -> Path | None:
    found = [p for p in root.folder("processing").glob(f"*-{run.pid}-*") if p.is_dir()]
    return found[0] if found else None


def _claims(root: Root, run: Vvflow) -> set[str]:
    folder = _folder_of(root, run)
    return {n for n in entries(folder) if not n.startswith(".")} if folder else set()


def _content(root: Root, name: str, number: int) -> bytes:
    """Distinct content; the first 50 videos come in pairs of equal size (the content
    index serializes equal sizes, see test_videos_of_equal_size_are_processed_in_parallel),
    the others each have a size of their own."""
    padding = number // 2 if number < 50 else number
    return root.video_bytes + f"\0{name}".encode() + b"\0" * padding


def _completed(root: Root) -> int:
    return len(entries(root.folder("completed")))


@pytest.mark.timeout(180)
def test_four_instances_one_killed_one_frozen_each_stage_runs_once(
    root: Root, tmp_path: Path
) -> None:
    """The issue's figures: 4 instances (2 workers each) on one root, 500 videos dropped
    in four waves while they run (25 pairs of equal size, the others of sizes of their
    own), two stages sleeping 0-0.05 s. At 100 completed one
    instance is killed with SIGKILL; at 250 another is frozen with SIGSTOP until its
    claims were taken back (lease 3 s), then resumed.

    Invariants: every video completed exactly once, under its own name; pending/ and
    processing/ empty; outputs whole; each stage started exactly once for every video
    except those the killed or the frozen instance held at that moment (at most twice
    for those); no final output comes from a stage run of the frozen instance that
    ended after it was frozen; once resumed, the frozen instance logs no stage success
    or filing, and exits 1 (lease lost); the killed instance's stage processes are
    gone."""
    root.configure(
        [hostile(root, "scan", "sleep:0-0.05"),
         hostile(root, "summarize", "sleep:0-0.05", inp="{scan}")],
        stable_seconds=0.2, rescan_seconds=0.5, workers=2, lease_seconds=LEASE,
        shutdown_grace_seconds=5,
    )  # fmt: skip
    names = [f"shared {i:03d}.mp4" for i in range(VIDEOS)]
    started = time.monotonic()
    with Fleet(root, tmp_path) as fleet:
        runs = [fleet.start("run") for _ in range(INSTANCES)]
        killed, frozen, survivors = runs[0], runs[1], runs[2:]
        for wave in range(4):
            for i in range(wave * WAVE, (wave + 1) * WAVE):
                root.drop(names[i], _content(root, names[i], i))
            time.sleep(0.3)

        wait_for(lambda: _completed(root) >= VIDEOS // 5, timeout=90, what="a fifth completed")
        held_by_killed = _claims(root, killed)
        killed.proc.send_signal(signal.SIGKILL)
        killed.proc.wait()

        wait_for(lambda: _completed(root) >= VIDEOS // 2, timeout=90, what="half completed")
        frozen_folder = _folder_of(root, frozen)
        held_by_frozen = _claims(root, frozen)
        frozen.proc.send_signal(signal.SIGSTOP)
        t_stop = time.time()
        assert frozen_folder is not None
        last_beat = (frozen_folder / ".heartbeat").stat().st_mtime
        try:
            # Its claims are taken back once its heartbeat is older than the lease.
            wait_for(lambda: not frozen_folder.exists(), timeout=LEASE + 20,
                     what="the frozen claims taken back")  # fmt: skip
            assert time.time() - last_beat > LEASE, "taken back before its lease ran out"
        finally:
            frozen.proc.send_signal(signal.SIGCONT)
        t_cont = time.time()
        assert frozen.proc.wait(timeout=30) == 1, frozen.text()[-3000:]

        wait_for(lambda: _completed(root) == VIDEOS, timeout=120, what="every video",
                 detail=lambda: tree(root))  # fmt: skip
        for run in survivors:
            assert run.stop() == 0, run.text()[-3000:]
    elapsed = time.monotonic() - started

    assert_settled(root, names, STAGES)
    assert entries(root.folder("completed")) == names

    log = stage_log(root)
    starts = Counter((r["video"], r["stage"]) for r in log if r["event"] == "start")
    interrupted = held_by_killed | held_by_frozen
    again = {key: n for key, n in starts.items() if n != 1 and key[0] not in interrupted}
    assert again == {}, f"stages run more than once: {again}"
    assert all(starts[(name, stage)] <= 2 for name in interrupted for stage in STAGES), starts
    assert set(starts) == {(name, stage) for name in names for stage in STAGES}

    # No published output comes from a run of the frozen instance that ended after the
    # freeze: its results, finished while it slept, must never be published on waking.
    ended = {r["run"]: r["t"] for r in log if r["event"] == "end"}
    for name in names:
        for path in output_paths(root, STAGES, os.path.splitext(name)[0]).values():
            data = json.loads(path.read_bytes())
            if data["ppid"] == frozen.pid:
                assert ended[data["run"]] < t_stop, f"{path} published by the frozen instance"

    # Once resumed, the frozen instance published and filed nothing. (That it claims
    # nothing either is checked deterministically, in-process, by
    # test_instance_that_lost_its_lease_claims_and_writes_nothing: here it depends on
    # where SIGSTOP lands.)
    after = [e for e in frozen.events() if log_time(e["ts"]) >= t_cont - 0.01]
    acts = ("stage_succeeded", "completed", "failed", "released")
    assert not [e for e in after if e["event"] in acts], frozen.text()[-6000:]
    assert any(e["event"] == "lease_lost" for e in frozen.events())

    pids = {r["pid"] for r in log if r["ppid"] == killed.pid}
    wait_for(lambda: not any(alive(p) for p in pids), timeout=10, what="killed's stages gone")
    repeated = sum(n - 1 for n in starts.values())
    print(
        f"\nshared storage: {INSTANCES} instances, {VIDEOS} videos in {elapsed:.0f}s, 1 kill, "
        f"1 freeze of {t_cont - t_stop:.1f}s (lease {LEASE:g}s), {len(interrupted)} videos "
        f"interrupted, {repeated} stage reruns (all for those), 0 duplicates, 0 lost"
    )


@pytest.fixture(params=["renameat2", "link"])
def rename_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(atomicfs, "FORCE_LINK", request.param == "link")
    return str(request.param)


@pytest.mark.timeout(60)
def test_instance_that_lost_its_lease_claims_and_writes_nothing(
    root: Root, rename_mode: str
) -> None:
    """An instance (in this process, lease 60 s: it beats every 15 s) is taken over by a
    real `vvflow once` on another host (its own PID and UTS namespaces: it cannot see
    this process, only the heartbeat, which it watches not change for its lease of 1 s):
    the folder is gone. What its threads may still do in the moment before the loop
    notices (a worker taking a queued candidate, the loop writing its health record)
    must neither claim a video nor recreate its folder. (On this host the live process
    would prove the instance alive and it would never be taken over.)"""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for another host's PID and UTS namespaces")
    root.configure([hostile(root, "scan")], stable_seconds=0.0)
    worker = Worker(load_settings(root_flag=str(root.path)))
    daemon = Daemon(worker)
    daemon.take_lease()
    try:
        rescuer = subprocess.run(
            other_host_argv("rescuer", "once", "--root", str(root.path), "--lease-seconds", "1"),
            env=clean_env(), capture_output=True, text=True, timeout=50,
        )  # fmt: skip
        assert rescuer.returncode == 0, rescuer.stderr[-3000:]
        assert not worker.lease.folder.exists(), rescuer.stderr[-6000:]
        assert not worker.lease.held()

        root.drop("late.mp4")
        (candidate,) = worker.layout.scan_pending()[0]
        assert worker.claim_and_run(candidate) is None
        assert entries(root.folder("pending")) == ["late.mp4"], tree(root)
        daemon._write_health()  # what the loop does right after its lease check
        assert not worker.lease.folder.exists(), tree(root)
    finally:
        worker.stopping.set()
        daemon.release()
    assert entries(root.folder("processing")) == []


@pytest.mark.timeout(120)
def test_instances_racing_for_videos_that_share_a_stem(root: Root, tmp_path: Path) -> None:
    """Three instances, 40 pairs of videos that share a stem (`p07.mp4` and `p07.mkv`),
    all dropped at once: each pair's two videos are claimed by different instances at
    the same moment. Every video completes exactly once; no two completed videos share
    a stem (so none overwrote the other's outputs); each report keeps its original name,
    every original name appears exactly once, and each output was written for the
    video its stem now names."""
    root.configure([hostile(root, "scan", "sleep:0-0.05")], stable_seconds=0.3,
                   rescan_seconds=0.5, workers=2)  # fmt: skip
    names = [f"p{i:02d}{ext}" for i in range(40) for ext in (".mp4", ".mkv")]
    with Fleet(root, tmp_path) as fleet:
        runs = [fleet.start("run") for _ in range(3)]
        for name in names:
            root.drop(name)
        wait_for(lambda: len(entries(root.folder("completed"))) == len(names), timeout=90,
                 what="every video", detail=lambda: tree(root))  # fmt: skip
        time.sleep(1.0)  # two more rescans: nothing comes back
        for run in runs:
            assert run.stop() == 0
    completed = entries(root.folder("completed"))
    stems = [os.path.splitext(n)[0] for n in completed]
    assert len(set(stems)) == len(completed) == len(names), completed
    originals = sorted(root.report(n)["original_name"] for n in completed)
    assert originals == sorted(names)
    assert_settled(root, completed, ["scan"])
    by_instance = Counter(root.report(n)["instance"] for n in completed)
    assert len(by_instance) >= 2, by_instance


def _max_overlap(log: list[dict[str, object]]) -> int:
    """The most stage runs that were under way at one moment (from start/end times)."""
    runs = {}
    for record in log:
        runs.setdefault(record["run"], {})[record["event"]] = record["t"]
    edges = sorted((t, +1 if kind == "start" else -1) for run in runs.values()
                   for kind, t in run.items())  # fmt: skip
    best = level = 0
    for _, step in edges:
        level += step
        best = max(best, level)
    return best


@pytest.mark.timeout(60)
def test_videos_of_equal_size_are_processed_in_parallel(root: Root) -> None:
    """Six different videos that happen to have the same size (fixed-length segments of
    a constant-bitrate encoder do), `workers = 3`, a stage taking 0.6 s: `workers`
    videos are processed at once, so at some moment at least two stage runs are under
    way."""
    root.configure([hostile(root, "scan", "sleep:0.6")], stable_seconds=0.0, workers=3)
    for i in range(6):
        root.drop(f"segment{i}.ts", root.video_bytes + f"\0segment {i}".encode())
    sizes = {p.stat().st_size for p in root.folder("pending").iterdir()}
    assert len(sizes) == 1
    root.vvflow("once", check=0, timeout=60)
    assert len(entries(root.folder("completed"))) == 6
    assert _max_overlap(stage_log(root)) >= 2
