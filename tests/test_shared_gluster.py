"""Several hosts on a real GlusterFS volume (issue 14): the primitives the claim protocol
relies on, then two `vvflow run` instances on two FUSE clients of one volume.

The volume (tests/gluster.py, the session's `gluster` fixture) is served from a network
namespace of the test's own and mounted twice, so the two mounts are two independent
clients, each with its own caches. Instance A runs on mount 1; instance B runs on
mount 2 as another host (its own UTS and PID namespaces: it cannot see A's processes,
only A's heartbeat, and A cannot see B's). Both watch the same root folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import gluster_races as races
from tests.conftest import Root
from tests.gluster import GlusterVolume
from tests.test_adversarial_support import (
    OtherHost,
    Vvflow,
    clean_env,
    entries,
    hostile,
    log_time,
    stage_log,
    wait_for,
)

RACES = 200
LEASE = 4.0
STAGES = ("scan", "summarize")
VIDEOS = 20
HOST_B = "otherhost"


# -- the primitives ----------------------------------------------------------------


def _race_folder(volume: GlusterVolume, name: str) -> str:
    for sub in ("src", "dir0", "dir1", "dst"):
        (volume.mounts[0] / name / sub).mkdir(parents=True)
    return name


@pytest.mark.timeout(150)
def test_gluster_primitives_across_two_clients(gluster: GlusterVolume) -> None:
    """What a claim protocol may rely on across two clients of one GlusterFS volume,
    each race run 200 times by two processes (one per mount) released at one barrier
    after both looked the names up:

    - plain rename(2) of one file into two folders: exactly one wins, the loser gets
      ENOENT (never both, whatever the caches hold);
    - renameat2(RENAME_NOREPLACE) is refused with EINVAL (so it cannot be the lock);
    - link(2) of two different files to one new name, open(O_CREAT|O_EXCL) and mkdir(2)
      of one name: exactly one wins, the loser gets EEXIST;
    - rename(2) onto a name that exists replaces it (so a plain rename must never
      target a name another client can target).

    Printed, not asserted (they are what the protocol must not rely on): how often the
    link + unlink move "wins" on both sides, how long another client keeps seeing the
    old st_nlink and a replaced name, and how often `mkdir -p` on a fresh tree from both
    clients raises."""
    mounts = gluster.mounts
    got: dict[str, races.Results] = {}
    for key, race in (("rename", races.RENAME), ("link", races.LINK_SAME_DESTINATION),
                      ("excl", races.CREATE_EXCL), ("mkdir", races.MKDIR),
                      ("link_unlink", races.LINK_UNLINK)):  # fmt: skip
        got[key] = races.run_race(race, mounts, _race_folder(gluster, f"prim-{key}"), RACES)
    folder = _race_folder(gluster, "prim-misc")
    noreplace = races.run_race(races.RENAME_NOREPLACE, mounts, folder, 20)
    makedirs = races.run_race(races.MAKEDIRS, mounts, folder, 50)
    nlink = races.nlink_seen_after(mounts, folder, 5)
    replaced, replace_seen = races.rename_over_existing(mounts, folder, 5)
    stale = races.stale_reads_after_replace(mounts, folder, 20)

    def seconds(values: list[float | None]) -> str:
        return ", ".join("never" if v is None else f"{v:.2f}" for v in values)

    lines = [f"{r.name}: {dict(r.pairs)} ({r.seconds:.1f}s)" for r in got.values()]
    lines += [
        f"{noreplace.name}: {dict(noreplace.pairs)}",
        f"{makedirs.name}: {dict(makedirs.pairs)}",
        f"st_nlink == 2 seen by the other client after (s): {seconds(nlink)}",
        f"rename onto an existing name: {dict(replaced)}; the other client reads the new "
        f"bytes after (s): {seconds(replace_seen)}; at once it reads: {dict(stale)}",
    ]
    print("\nGlusterFS primitives across two clients, " + f"{RACES} races each:\n  "
          + "\n  ".join(lines))  # fmt: skip

    exclusive = {"ok", "ENOENT"}
    assert got["rename"].winners() == {1: RACES}, got["rename"].pairs
    assert all(set(pair) == exclusive for pair in got["rename"].pairs), got["rename"].pairs
    assert set(noreplace.pairs) == {("EINVAL", "EINVAL")}, noreplace.pairs
    for key in ("link", "excl", "mkdir"):
        assert got[key].winners() == {1: RACES}, (key, got[key].pairs)
        assert all(set(pair) == {"ok", "EEXIST"} for pair in got[key].pairs), got[key].pairs
    assert len(entries(mounts[0] / "prim-link" / "dst")) == RACES
    assert replaced == {"replaced": 5}, replaced


# -- two instances ------------------------------------------------------------------


@dataclass
class Shared:
    """One root folder on the volume, seen through both mounts, and its instances."""

    a: Root  # through mount 1: instance A's view, and where the checks look
    b: Root  # through mount 2: instance B's view
    logs: Path
    volume: GlusterVolume
    names: list[str] = field(default_factory=list)
    started: list[Vvflow] = field(default_factory=list)

    def start_a(self) -> Vvflow:
        run = Vvflow(self.a, "run", log=self.logs / "a.log")
        self.started.append(run)
        return run

    def start_b(self) -> OtherHost:
        run = OtherHost(self.b, HOST_B, log=self.logs / "b.log", env=clean_env())
        self.started.append(run)
        return run

    def drop(self, count: int) -> None:
        """`count` videos of distinct content and size, half uploaded through each mount."""
        for i in range(count):
            name = f"v{i:03d}.mp4"
            view = (self.a, self.b)[i % 2]
            view.drop(name, view.video_bytes + f"\0{name}".encode() + b"\0" * i)
            self.names.append(name)

    def close(self) -> None:
        for run in self.started:
            if isinstance(run, OtherHost) and run.proc.poll() is None:
                run.send(signal.SIGCONT)
            run.close()


@pytest.fixture
def shared(gluster: GlusterVolume, tmp_path: Path, video_bytes: bytes,
           request: pytest.FixtureRequest) -> Any:  # fmt: skip
    """A fresh root folder on the volume for one test; the stages' log (and the
    instances' logs) stay outside the volume, in tmp_path."""
    name = request.node.name.removeprefix("test_")[:40]
    runlog = tmp_path / "stages.log"
    a = Root(gluster.mounts[0] / name, runlog, video_bytes)
    b = Root(gluster.mounts[1] / name, runlog, video_bytes)
    a.folder("pending").mkdir(parents=True)
    a.configure(
        [hostile(a, "scan", "sleep:0.2"), hostile(a, "summarize", "sleep:0.2", inp="{scan}")],
        stable_seconds=0.3, rescan_seconds=0.5, workers=2, lease_seconds=LEASE,
        shutdown_grace_seconds=5,
    )  # fmt: skip
    pair = Shared(a, b, tmp_path, gluster)
    yield pair
    pair.close()


def _videos_in(folder: Path) -> list[str]:
    return [n for n in entries(folder) if not n.startswith(".")]


def _in_processing(root: Root) -> list[str]:
    return [f"{inst}/{n}" for inst in entries(root.folder("processing"))
            for n in _videos_in(root.folder("processing") / inst)]  # fmt: skip


def _settled(root: Root, count: int) -> Callable[[], bool]:
    """Nothing pending or claimed, and `count` distinct files filed (however named)."""

    def check() -> bool:
        if _videos_in(root.folder("pending")) or _in_processing(root):
            return False
        filed = {(root.folder(s) / n).stat().st_ino for s in ("completed", "failed")
                 for n in _videos_in(root.folder(s))}  # fmt: skip
        return len(filed) >= count

    return check


def _where(shared: Shared) -> dict[str, Any]:
    """Where the videos are (everything under processing/, hidden names too), and which
    arrived but are nowhere: for a failure's message."""
    a = shared.a
    found = {s: entries(a.folder(s)) for s in ("pending", "completed", "failed")}
    found["processing"] = [str(p.relative_to(a.folder("processing")))
                           for p in a.folder("processing").rglob("*")]  # fmt: skip
    seen = {_original(os.path.basename(n)) for names in found.values() for n in names}
    found["nowhere"] = sorted(set(shared.names) - seen)
    return found


def _wait_settled(shared: Shared, timeout: float = 90) -> None:
    wait_for(_settled(shared.a, len(shared.names)), timeout=timeout, what="every video filed",
             detail=lambda: _where(shared))  # fmt: skip
    time.sleep(3 * 0.5)  # three more rescans: nothing comes back, nothing is filed again


def _instance_folder(root: Root, prefix: str) -> Path | None:
    found = [p for p in root.folder("processing").glob(f"{prefix}*") if p.is_dir()]
    return found[0] if found else None


def _errors(run: Vvflow, expected: set[str]) -> list[dict[str, Any]]:
    return [e for e in run.events()
            if e.get("level") in ("error", "critical") and e["event"] not in expected]  # fmt: skip


def _original(name: str) -> str:
    """The name a video arrived with: `v003-2.mp4` is a second name of `v003.mp4`."""
    return re.sub(r"-\d+(?=\.mp4$)", "", name)


def _failed_reasons(root: Root) -> dict[str, str]:
    reasons = {}
    for name in entries(root.folder("failed")):
        try:
            reasons[name] = str(root.report(name).get("error"))[:160]
        except (OSError, ValueError) as exc:
            reasons[name] = f"no report: {exc}"
    return reasons


def _figures(shared: Shared, interrupted: set[str], errors: list[dict[str, Any]]) -> dict[str, Any]:
    """What the round left, counted through mount 1. Stage runs are counted per video
    as it arrived (a run under a second name `v003-2.mp4` counts for `v003.mp4`)."""
    a = shared.a
    completed = entries(a.folder("completed"))
    by_inode: dict[int, list[str]] = {}
    for name in completed:
        by_inode.setdefault((a.folder("completed") / name).stat().st_ino, []).append(name)
    log = [r for r in stage_log(a) if r["event"] == "start"]
    starts = Counter((_original(r["video"]), r["stage"]) for r in log)
    twice = {f"{k[0]} {k[1]}": n for k, n in starts.items() if n > 1 and k[0] not in interrupted}
    return {
        "videos": len(shared.names),
        "completed names": len(completed),
        "completed inodes": len(by_inode),
        "names of one inode": sorted(n for n in by_inode.values() if len(n) > 1),
        "unknown names": sorted(set(completed) - set(shared.names)),
        "missing": sorted(set(shared.names) - set(completed)),
        "failed": _failed_reasons(a),
        "pending": entries(a.folder("pending")),
        "processing": [str(p.relative_to(a.path)) for p in a.folder("processing").rglob("*")],
        "stage runs": len(log),
        "stage runs under a second name": sum(r["video"] not in shared.names for r in log),
        "interrupted": sorted(interrupted),
        "stages run twice (not interrupted)": twice,
        "stages run more than twice": {f"{k[0]} {k[1]}": n for k, n in starts.items() if n > 2},
        "stages never run": sorted(
            f"{n} {s}" for n in shared.names for s in STAGES if (n, s) not in starts
        ),
        "errors logged": [f"{e['event']}: {e.get('error', e.get('video', ''))}" for e in errors],
    }


def _assert_round(round_name: str, shared: Shared, interrupted: set[str] | None = None,
                  errors: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
    figures = _figures(shared, interrupted or set(), errors or [])
    if figures["unknown names"] or figures["missing"] or figures["names of one inode"]:
        # What the bricks hold under those names (DHT link pointers, second names).
        root = shared.a.path.relative_to(shared.volume.mounts[0])
        figures["bricks"] = {
            folder: shared.volume.on_bricks(f"{root}/input/{folder}")
            for folder in ("pending", "completed")
        }
    print(f"\n{round_name}: " + json.dumps(figures))
    assert figures["completed names"] == figures["completed inodes"] == VIDEOS, figures
    assert figures["names of one inode"] == [] and figures["unknown names"] == [], figures
    assert figures["missing"] == [] and figures["failed"] == {}, figures
    assert figures["pending"] == [] and figures["processing"] == [], figures
    assert figures["stage runs under a second name"] == 0, figures
    assert figures["stages run twice (not interrupted)"] == {}, figures
    assert figures["stages run more than twice"] == {}, figures
    assert figures["stages never run"] == [], figures
    assert figures["errors logged"] == [], figures


@pytest.mark.timeout(120)
def test_two_hosts_on_gluster_clean_round(shared: Shared) -> None:
    """Clean round: A (mount 1) and B (mount 2, another host) run; 20 videos of their
    own content arrive, half through each mount. Every video is filed exactly once, one
    name per file (no `-2` twin of one inode), each stage runs exactly once per video,
    nothing is left in pending/ or processing/, no error is logged; both instances
    picked the polling observer for fuse.glusterfs by themselves."""
    a, b = shared.start_a(), shared.start_b()
    for run in (a, b):
        watching = [e for e in run.events() if e["event"] == "watching"]
        assert watching[0]["observer"] == "polling", watching
    shared.drop(VIDEOS)
    _wait_settled(shared)
    assert b.stop() == 0, b.text()[-3000:]
    assert a.stop() == 0, a.text()[-3000:]
    _assert_round("clean round", shared, errors=_errors(a, set()) + _errors(b, set()))


def _held_by(shared: Shared, instance: str, listed: list[str]) -> set[str]:
    """The videos an instance held when it was stopped (their stages may run again,
    once): those listed in its folder just before, and those whose stages it started
    but which it did not file (claimed between that look and the signal)."""
    mine = {r["video"] for r in stage_log(shared.a) if r["event"] == "start"
            and (r["ppid"] == 1) == (instance == HOST_B)}  # fmt: skip
    filed = set()
    for name in mine:
        try:
            report = shared.a.report(name)
        except FileNotFoundError:
            continue
        if str(report.get("instance", "")).startswith(HOST_B) == (instance == HOST_B):
            filed.add(name)
    return (mine - filed) | {_original(n) for n in listed}


@pytest.mark.timeout(120)
def test_two_hosts_on_gluster_one_killed_holding_claims(shared: Shared) -> None:
    """Kill round: A and B run; 20 videos arrive; once B holds claims and 4 videos are
    done, B's host dies (SIGKILL of its PID namespace's init: vvflow and its stages go
    at once). A takes B's claims back after B's lease (4 s) and completes them: every
    video filed exactly once, each stage once per video (twice at most for a video B
    held), nothing left over, no error logged."""
    a, b = shared.start_a(), shared.start_b()
    shared.drop(VIDEOS)
    wait_for(lambda: bool((f := _instance_folder(shared.b, HOST_B)) and _videos_in(f))
             and len(entries(shared.a.folder("completed"))) >= 4,
             timeout=60, what="B holding claims, 4 done")  # fmt: skip
    folder_b = _instance_folder(shared.b, HOST_B)
    listed = _videos_in(folder_b) if folder_b else []
    b.send(signal.SIGKILL)
    b.proc.wait(30)
    killed_at = time.monotonic()
    wait_for(lambda: any(e["event"] == "recovered" for e in a.events()), timeout=LEASE + 30,
             what="A recovering B's claims", detail=lambda: a.text()[-3000:])  # fmt: skip
    recovered_after = time.monotonic() - killed_at
    _wait_settled(shared)
    assert a.stop() == 0, a.text()[-3000:]
    held = _held_by(shared, HOST_B, listed)
    print(f"\nkill round: A recovered B's claims {recovered_after:.1f}s after SIGKILL "
          f"(lease {LEASE:g}s); B held {sorted(held)}")  # fmt: skip
    _assert_round("kill round", shared, held, errors=_errors(a, set()))


def _written_after(shared: Shared, a: Vvflow, t_stop: float, t_cont: float) -> list[str]:
    """What instance A (on this host) wrote once resumed at `t_cont` after a freeze at
    `t_stop`: a filing (a `completed` or `failed` event whose file changed since), a
    return to pending/, a report of A's written since, or a published output of A's
    (its stage's parent is A) that changed since or whose run ended while A was frozen.
    (A line logged after the resume for a move made before the freeze is no write.)"""
    wrote = []
    for event in a.events():
        if log_time(event["ts"]) < t_cont - 0.01:
            continue
        if event["event"] == "released":
            wrote.append(f"released {event.get('video')}")
        elif event["event"] in ("completed", "failed"):
            with contextlib.suppress(FileNotFoundError):
                if (shared.a.path / event["path"]).stat().st_ctime >= t_cont:
                    wrote.append(f"{event['event']} {event['path']}")
    for report in (shared.a.path / "reports").glob("*.json"):
        instance = str(json.loads(report.read_bytes()).get("instance", ""))
        if report.stat().st_mtime >= t_cont and not instance.startswith(HOST_B):
            wrote.append(f"report {report.name} by {instance}")
    ended = {r["run"]: r["t"] for r in stage_log(shared.a) if r["event"] == "end"}
    for folder in ("analytic", "summaries"):
        for output in (shared.a.path / folder).glob("*.json"):
            data = json.loads(output.read_bytes())
            if data["ppid"] != a.pid:
                continue
            if output.stat().st_ctime >= t_cont or ended.get(data["run"], 0) >= t_stop:
                wrote.append(f"output {folder}/{output.name}")
    return wrote


@pytest.mark.timeout(150)
def test_two_hosts_on_gluster_one_frozen_past_its_lease(shared: Shared) -> None:
    """Freeze round: A and B run; 20 videos arrive; once A holds claims and 4 videos are
    done, A is frozen (SIGSTOP) until B took its claims back (after A's lease), then
    resumed (SIGCONT). The resumed A writes nothing: no stage success, no filing, no
    report, no published output, and exits 1 (lease lost). Every video filed exactly
    once, each stage once per video (twice at most for a video A held), nothing left
    over, no error logged but the lease A lost."""
    a, b = shared.start_a(), shared.start_b()
    shared.drop(VIDEOS)
    host_a = None

    def a_holds() -> bool:
        nonlocal host_a
        folders = [p for p in shared.a.folder("processing").glob("*") if p.is_dir()
                   and not p.name.startswith(HOST_B)]  # fmt: skip
        held = [f for f in folders if _videos_in(f)]
        if held:
            host_a = held[0]
        return bool(held) and len(entries(shared.a.folder("completed"))) >= 4

    wait_for(a_holds, timeout=60, what="A holding claims, 4 done")
    assert host_a is not None
    listed = _videos_in(host_a)
    a.proc.send_signal(signal.SIGSTOP)
    t_stop = time.time()
    try:
        folder_b_view = shared.b.folder("processing") / host_a.name
        wait_for(lambda: not folder_b_view.exists(), timeout=LEASE + 30,
                 what="B taking the frozen A's claims",
                 detail=lambda: b.text()[-3000:])  # fmt: skip
        taken_after = time.time() - t_stop
    finally:
        a.proc.send_signal(signal.SIGCONT)
    t_cont = time.time()
    a_code = a.proc.wait(timeout=30)
    _wait_settled(shared)
    assert b.stop() == 0, b.text()[-3000:]

    wrote = _written_after(shared, a, t_stop, t_cont)
    held = _held_by(shared, "A", listed)
    print(f"\nfreeze round: B took A's claims {taken_after:.1f}s after SIGSTOP (lease "
          f"{LEASE:g}s); A held {sorted(held)}; A exited {a_code}; after SIGCONT A wrote "
          f"{wrote or 'nothing'}")  # fmt: skip
    _assert_round(
        "freeze round", shared, held, errors=_errors(b, set()) + _errors(a, {"lease_lost"})
    )
    assert wrote == [], wrote
    assert a_code == 1, a.text()[-3000:]
