"""`vvflow run`: events, stability, rescans, workers, leases, health and clean shutdown,
with the real watchdog observers and real processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Root, events
from tests.test_adversarial_support import tmpfs_root
from vvflow.config import load_settings
from vvflow.daemon import Daemon
from vvflow.filesystem import filesystem_type, needs_polling
from vvflow.watcher import PendingEvents
from vvflow.worker import Worker


class Running:
    """A `vvflow run` subprocess whose stderr is collected to a file."""

    def __init__(self, root: Root, *args: str, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VVFLOW_")}
        self.log = log
        self._stderr = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vvflow", "run", "--root", str(root.path), *args],
            stderr=self._stderr, env=env,
        )  # fmt: skip
        wait_for(lambda: "watching" in log.read_text(), what="the observer to start")

    def events(self) -> list[dict[str, object]]:
        return events(self.log.read_text(errors="surrogateescape"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def wait_for(condition: Callable[[], bool], *, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def running(root: Root, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*args: str) -> Running:
        run = Running(root, *args, log=tmp_path / f"run{len(started)}.log")
        started.append(run)
        return run

    yield start
    for run in started:
        run.close()


def _health(root: Root) -> dict[str, Any]:
    """The health record of the one `vvflow run` on `root` ({} before it writes one)."""
    for path in root.folder("processing").glob("*/.health"):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_bytes())
            return record if isinstance(record, dict) else {}
    return {}


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_dropped_video_is_processed_on_its_event(
    root: Root, running: Callable[..., Running], observer: str
) -> None:
    root.configure(stable_seconds=0.3, rescan_seconds=3600, observer=observer)
    run = running()
    # The daemon rescans once more when its watch is surely up (the observer sets it up
    # in its own thread): a drop before that may rightly be found by a rescan.
    wait_for(lambda: _health(root).get("rescans", 0) >= 2, what="the rescan after the watch")
    root.drop("a.mp4")
    wait_for(lambda: root.names("completed") == ["a.mp4"], what="a.mp4 completed")
    assert (root.path / "loglines" / "a.logline.json").exists()
    assert run.stop() == 0
    stopped = next(e for e in run.events() if e["event"] == "stopped")
    assert stopped["found_by_event"] == 1 and stopped["found_by_rescan"] == 0


def test_rename_into_pending_is_caught_and_temp_names_never(
    root: Root, running: Callable[..., Running], tmp_path: Path
) -> None:
    root.configure(stable_seconds=0.3, rescan_seconds=3600)
    running()
    pending = root.folder("pending")
    # rsync: write a hidden temp name in place, then rename.
    (pending / ".clip.mp4.Xy12ab").write_bytes(root.video_bytes)
    (pending / "download.mp4.part").write_bytes(root.video_bytes)
    time.sleep(1.0)
    assert root.runs() == []
    os.rename(pending / ".clip.mp4.Xy12ab", pending / "clip.mp4")
    # mv from elsewhere on the same filesystem.
    outside = root.path / "staging.mkv"
    outside.write_bytes(root.video_bytes + b"another video")
    os.rename(outside, pending / "moved.mkv")
    wait_for(lambda: root.names("completed") == ["clip.mp4", "moved.mkv"], what="renamed videos")
    assert sorted(os.listdir(pending)) == ["download.mp4.part"]
    assert {r["video"] for r in root.runs()} == {"clip.mp4", "moved.mkv"}


def test_slow_writer_is_never_claimed_while_writing(
    root: Root, running: Callable[..., Running]
) -> None:
    root.configure(stable_seconds=1.0, rescan_seconds=0.5)
    run = running()
    target = root.folder("pending") / "slow.mp4"
    last_write = 0.0
    with target.open("wb") as fh:
        for i in range(8):  # a chunk every 0.4 s: 3.2 s of writing
            fh.write(root.video_bytes[i * 100 : (i + 1) * 100] or b"x")
            fh.flush()
            last_write = time.time()
            time.sleep(0.4)
            assert root.names("processing") == [] and root.names("completed") == []
        fh.write(root.video_bytes[800:])
        last_write = time.time()
    wait_for(lambda: root.names("completed") == ["slow.mp4"], what="slow.mp4 completed")
    claimed = [e for e in run.events() if e["event"] == "claimed"]
    assert len(claimed) == 1
    assert (root.folder("completed") / "slow.mp4").read_bytes()[:800] == root.video_bytes[:800]
    assert (root.folder("completed") / "slow.mp4").stat().st_size == len(root.video_bytes)
    report = root.report("slow.mp4")
    assert report["identity"]["size"] == len(root.video_bytes)
    assert last_write > 0


def test_files_present_at_start_are_found_by_the_first_rescan(
    root: Root, running: Callable[..., Running]
) -> None:
    root.configure(stable_seconds=0.2, rescan_seconds=3600)
    for i in range(5):
        root.drop(f"early{i}.mp4")
    run = running("--workers", "3")
    wait_for(lambda: len(root.names("completed")) == 5, what="5 videos")
    assert run.stop() == 0
    stopped = next(e for e in run.events() if e["event"] == "stopped")
    assert stopped["found_by_rescan"] == 5


def test_polling_observer(root: Root, running: Callable[..., Running]) -> None:
    root.configure(stable_seconds=0.2, rescan_seconds=3600, observer="polling")
    run = running()
    assert [e["observer"] for e in run.events() if e["event"] == "watching"] == ["polling"]
    root.drop("p.mp4")
    wait_for(lambda: root.names("completed") == ["p.mp4"], what="p.mp4 via polling")


def test_sigterm_lets_a_short_stage_finish(root: Root, running: Callable[..., Running]) -> None:
    root.configure([root.stage("scan", "sleep:1.0")], stable_seconds=0, shutdown_grace_seconds=10)
    run = running()
    root.drop("a.mp4")
    wait_for(lambda: bool(root.runs()), what="the stage to start")
    assert run.stop() == 0
    assert root.names("completed") == ["a.mp4"]
    assert root.names("processing") == [] and root.names("pending") == []


def test_sigterm_past_grace_returns_the_video_to_pending(
    root: Root, running: Callable[..., Running]
) -> None:
    root.configure([root.stage("scan", "sleep:60")], stable_seconds=0, shutdown_grace_seconds=0.5)
    run = running()
    root.drop("a.mp4")
    wait_for(lambda: bool(root.runs()), what="the stage to start")
    started = time.monotonic()
    assert run.stop() == 0
    assert time.monotonic() - started < 10
    assert root.names("pending") == ["a.mp4"]
    assert root.names("processing") == []
    assert not list((root.path / "input" / "processing").iterdir())
    stage_pid = root.runs()[0]["pid"]
    wait_for(lambda: not Path(f"/proc/{stage_pid}").exists(), timeout=5, what="stage killed")


def test_second_signal_exits_at_once_and_the_next_start_recovers(
    root: Root, running: Callable[..., Running]
) -> None:
    root.configure([root.stage("scan", "sleep:60")], stable_seconds=0, shutdown_grace_seconds=60)
    run = running()
    root.drop("a.mp4")
    wait_for(lambda: bool(root.runs()), what="the stage to start")
    run.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert run.stop(signal.SIGINT, timeout=5) != 0
    assert root.names("processing") == ["a.mp4"]
    root.configure([root.stage("scan", "ok")], stable_seconds=0)
    root.vvflow("once", check=0)
    assert root.names("completed") == ["a.mp4"]


def test_health(root: Root, running: Callable[..., Running]) -> None:
    root.configure()
    assert root.vvflow("health").returncode == 1
    run = running()
    wait_for(lambda: root.vvflow("health").returncode == 0, timeout=10, what="healthy")
    assert "inotify observer alive" in root.vvflow("health").stdout
    assert run.stop() == 0
    proc = root.vvflow("health", check=1)
    assert proc.stdout.startswith("unhealthy")


def test_two_instances_process_each_video_exactly_once(
    root: Root, running: Callable[..., Running]
) -> None:
    root.configure(root.three_stages("sleep:0-0.1", "sleep:0-0.1", "ok"),
                   stable_seconds=0.2, rescan_seconds=0.5)  # fmt: skip
    first, second = running(), running()
    names = [f"v{i:03d}.mp4" for i in range(40)]
    for name in names:
        root.drop(name)
    wait_for(lambda: len(root.names("completed")) == 40, timeout=90, what="40 videos")
    assert first.stop() == 0 and second.stop() == 0
    assert root.names("completed") == names
    runs = Counter((r["video"], r["stage"]) for r in root.runs())
    assert set(runs.values()) == {1}, [k for k, v in runs.items() if v > 1]
    assert len(runs) == 120
    by_instance = Counter(root.report(n)["instance"] for n in names)
    assert len(by_instance) == 2, "both instances should have worked"


def test_frozen_instance_past_its_lease_overwrites_nothing(
    root: Root, running: Callable[..., Running]
) -> None:
    root.configure([root.stage("scan", "sleep:3")], stable_seconds=0, lease_seconds=1)
    frozen = running()
    root.drop("a.mp4")
    wait_for(lambda: bool(root.runs()), what="the stage to start")
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(1.5)  # past its lease
        rescuer = running()
        wait_for(lambda: root.names("completed") == ["a.mp4"], timeout=30, what="takeover")
        output = json.loads((root.path / "analytic" / "a.analytic.json").read_text())
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    assert frozen.proc.wait(timeout=20) == 1
    assert any(e["event"] == "lease_lost" for e in frozen.events())
    # The output is the rescuer's, and the frozen one filed and overwrote nothing.
    assert json.loads((root.path / "analytic" / "a.analytic.json").read_text()) == output
    assert root.names("completed") == ["a.mp4"] and root.names("pending") == []
    assert root.report("a.mp4")["instance"] != frozen_name(frozen)
    assert rescuer.stop() == 0


def frozen_name(run: Running) -> str:
    started = [e for e in run.events() if e["event"] == "started"]
    return str(started[0]["instance"])


# -- in-process: the loop driven one step at a time ------------------------------------


def _daemon(root: Root, **overrides: object) -> Daemon:
    root.configure(**{"stable_seconds": 1.0, "rescan_seconds": 3600, **overrides})
    return Daemon(Worker(load_settings(root_flag=str(root.path))))


def test_dead_observer_is_restarted_and_events_still_arrive(root: Root) -> None:
    daemon = _daemon(root)
    daemon.take_lease()
    daemon._start_observer()
    try:
        assert daemon.step(now=0.0)
        assert daemon._observer is not None
        daemon._observer.stop()
        daemon._observer.join()
        assert not daemon.observer_alive()
        daemon._next_health = 0.0
        daemon.step(now=1.0)
        assert daemon.observer_alive() and daemon.counters.observer_restarts == 1
        root.drop("late.mp4")
        wait_for(lambda: not daemon._inbox.empty(), timeout=5, what="an event")
        daemon.step(now=2.0)
        assert "late.mp4" in daemon.stability
    finally:
        daemon.worker.stopping.set()
        daemon.shutdown()


def test_event_handler_never_raises() -> None:
    def explode(name: str) -> None:
        raise RuntimeError("handler bug")

    from watchdog.events import FileCreatedEvent

    handler = PendingEvents(Path("/x/pending"), explode)
    handler.dispatch(FileCreatedEvent("/x/pending/a.mp4"))  # logged, not raised


def test_stability_clock_driven(root: Root) -> None:
    daemon = _daemon(root, stable_seconds=2.0)
    daemon.worker.layout.ensure()
    target = root.drop("a.mp4")
    daemon.rescan(now=100.0)
    daemon.stability.check(now=101.0)
    assert daemon.stability.ready_count == 0
    with target.open("ab") as fh:
        fh.write(b"more")
    daemon.stability.check(now=102.0)  # changed: the clock restarts
    assert daemon.stability.ready_count == 0
    daemon.stability.check(now=103.5)
    assert daemon.stability.ready_count == 0
    daemon.stability.check(now=104.0)
    assert daemon.stability.ready_count == 1


@contextlib.contextmanager
def _memory_root(root: Root, tmp_path: Path, video_bytes: bytes) -> Iterator[Root]:
    """A root on a tmpfs where one can be mounted (100,000 files are made and removed
    in a second there, against ~50 s on this machine's disk), else `root`."""
    try:
        with tmpfs_root(tmp_path, video_bytes, 1024) as fast:
            yield fast
    except pytest.skip.Exception:
        yield root


@pytest.mark.timeout(240)
def test_100k_pending_files_keep_the_queue_and_memory_bounded(
    root: Root, tmp_path: Path, video_bytes: bytes
) -> None:
    with _memory_root(root, tmp_path, video_bytes) as where:
        daemon = _daemon(where, stable_seconds=0.0, workers=2)
        daemon.worker.layout.ensure()
        pending = where.folder("pending")
        for i in range(100_000):
            fd = os.open(pending / f"v{i:06d}.mp4", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"x")
            os.close(fd)
        tracemalloc.start()
        try:
            daemon.rescan(now=0.0)
            daemon.stability.check(now=0.0)
            daemon._dispatch(now=0.0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert daemon._work.qsize() == 4  # 2 x workers, however many are pending
        assert len(daemon.stability) == 100_000 - 4
        assert peak < 64 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"


def test_filesystem_type_detection(tmp_path: Path) -> None:
    assert filesystem_type(tmp_path) != ""
    assert needs_polling(tmp_path) is False


def _first_stage_size(root: Root, name: str) -> int:
    stem = os.path.splitext(name)[0]
    data = json.loads((root.path / "analytic" / f"{stem}.analytic.json").read_text())
    return int(data["size"])


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_every_way_of_arriving_is_processed_once_and_whole(
    root: Root, running: Callable[..., Running], observer: str
) -> None:
    root.configure(stable_seconds=1.2, rescan_seconds=2, observer=observer)
    run = running()
    pending = root.folder("pending")
    big = root.video_bytes * 40  # a few hundred KiB, so a copy takes a moment
    sources = {}
    for name in ("cp.mp4", "mv.mp4", "rsync.mp4", "link.mp4", "slow.mp4"):
        sources[name] = big + name.encode()
    staging = root.path / "staging"  # same filesystem, outside pending/
    staging.mkdir()
    for name, data in sources.items():
        (staging / name).write_bytes(data)
    shutil.copyfile(staging / "cp.mp4", pending / "cp.mp4")
    os.rename(staging / "mv.mp4", pending / "mv.mp4")
    if shutil.which("rsync"):
        subprocess.run(["rsync", str(staging / "rsync.mp4"), str(pending) + "/"], check=True)
    else:
        sources.pop("rsync.mp4")
    os.link(staging / "link.mp4", pending / "link.mp4")
    with (pending / "slow.mp4").open("wb") as fh:
        data = sources["slow.mp4"]
        step = len(data) // 6 + 1
        for offset in range(0, len(data), step):  # a chunk every 0.5 s
            fh.write(data[offset : offset + step])
            fh.flush()
            time.sleep(0.5)
            assert "slow.mp4" not in root.names("processing") + root.names("completed")
    wait_for(lambda: root.names("completed") == sorted(sources), timeout=60, what="arrivals")
    for name, data in sources.items():
        assert _first_stage_size(root, name) == len(data), name
        assert (root.folder("completed") / name).read_bytes() == data
    runs = Counter((r["video"], r["stage"]) for r in root.runs())
    assert set(runs.values()) == {1} and len(runs) == 3 * len(sources)
    assert run.stop() == 0


def test_kill_9_of_run_mid_stage_then_restart_completes(
    root: Root, running: Callable[..., Running]
) -> None:
    root.configure(root.three_stages("ok", "sleep:2", "ok"), stable_seconds=0)
    first = running()
    root.drop("a.mp4")
    wait_for(lambda: any(r["stage"] == "summarize" for r in root.runs()), what="summarize")
    first.proc.kill()
    first.proc.wait()
    assert root.names("processing") == ["a.mp4"]
    second = running()
    wait_for(lambda: root.names("completed") == ["a.mp4"], what="completion after restart")
    assert second.stop() == 0
    # scan completed before the kill and is not run again; summarize ran twice (it was
    # killed), logline once.
    assert Counter(r["stage"] for r in root.runs()) == {"scan": 1, "summarize": 2, "logline": 1}
    third = running()
    time.sleep(1.0)
    assert third.stop() == 0
    assert len(root.runs()) == 4


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("instances", "videos"), [(2, 120), (4, 200)])
def test_several_instances_run_each_stage_exactly_once(
    root: Root, running: Callable[..., Running], instances: int, videos: int
) -> None:
    root.configure(stable_seconds=0.2, rescan_seconds=1)
    runs = [running() for _ in range(instances)]
    names = [f"clip {i:04d}.mp4" for i in range(videos)]
    for name in names:
        root.drop(name)
    wait_for(lambda: len(root.names("completed")) == videos, timeout=240, what="all videos")
    for run in runs:
        assert run.stop() == 0
    assert root.names("completed") == names
    counts = Counter((r["video"], r["stage"]) for r in root.runs())
    assert len(counts) == 3 * videos and set(counts.values()) == {1}
    assert len({root.report(n)["instance"] for n in names}) == instances


@pytest.mark.timeout(120)
def test_a_burst_that_overflows_the_inotify_queue_is_fully_processed(
    root: Root, running: Callable[..., Running]
) -> None:
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    if os.geteuid() != 0 or not knob.exists():
        pytest.skip("needs root to lower fs.inotify.max_queued_events")
    root.configure([root.stage("scan")], stable_seconds=0.2, rescan_seconds=2,
                   observer="inotify", workers=2)  # fmt: skip
    saved = knob.read_text()
    try:
        knob.write_text("16\n")  # read when the observer's inotify instance is made
        run = running()
    finally:
        knob.write_text(saved)
    wait_for(lambda: any(e["event"] == "watching" for e in run.events()), what="watching")
    names = [f"burst{i:03d}.mp4" for i in range(200)]
    # The daemon is stopped while the burst arrives, so its 16-event queue overflows for
    # sure (a reader that keeps up would see every name however small the queue).
    os.kill(run.proc.pid, signal.SIGSTOP)
    try:
        for name in names:
            root.drop(name)
    finally:
        os.kill(run.proc.pid, signal.SIGCONT)
    wait_for(lambda: len(root.names("completed")) == len(names), timeout=90, what="burst")
    assert run.stop() == 0
    stopped = next(e for e in run.events() if e["event"] == "stopped")
    assert stopped["found_by_rescan"] > 0, "the overflow should have lost events"
    assert any(e["event"] == "rescan_found" for e in run.events())
    assert Counter(r["video"] for r in root.runs()) == dict.fromkeys(names, 1)


@pytest.mark.timeout(60)
def test_same_host_other_pid_namespace_is_not_taken_for_dead(
    root: Root, running: Callable[..., Running], tmp_path: Path
) -> None:
    """Two containers with host networking share a hostname but not a PID namespace: a
    pid of one means nothing in the other. An instance in its own PID namespace, alive
    and beating, keeps its claim while an instance outside it recovers dead ones."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a PID namespace")
    root.configure([root.stage("scan", "sleep:6")], stable_seconds=0, lease_seconds=30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VVFLOW_")}
    log = (tmp_path / "ns.log").open("w")
    inside = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount", "--mount-proc",
         sys.executable, "-m",
         "vvflow", "run", "--root", str(root.path)],
        stderr=log, env=env,
    )  # fmt: skip
    try:
        root.drop("a.mp4")
        wait_for(lambda: bool(root.runs()), what="the stage inside the namespace")
        outside = running()
        time.sleep(2.5)  # several recovery passes of the outside instance
        assert not any(e["event"] == "recovered" and e.get("videos") for e in outside.events())
        wait_for(lambda: root.names("completed") == ["a.mp4"], what="a.mp4 by its claimant")
        assert len(root.runs()) == 1
        assert outside.stop() == 0
    finally:
        # unshare does not pass signals on: stop its child, the namespace's pid 1.
        children = Path(f"/proc/{inside.pid}/task/{inside.pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), signal.SIGTERM)
        assert inside.wait(timeout=30) == 0
        log.close()
