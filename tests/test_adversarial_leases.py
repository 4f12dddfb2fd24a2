"""Leases that do not trust clocks: a live instance keeps its claims however old its
heartbeat looks, and an instance on another host whose wall clock is 120 s ahead takes
nothing from a live one, yet recovers a dead one after a lease of its own time."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Root
from tests.test_adversarial_support import (
    Fleet,
    OtherHost,
    Vvflow,
    assert_settled,
    clean_env,
    entries,
    hostile,
    log_time,
    stage_log,
    tree,
    wait_for,
)

LEASE = 3.0
STAGES = ("scan", "summarize")
NAMES = ["a.mp4", "b.mp4"]
SKEW = 120.0


def _configure(root: Root, gate: Path) -> None:
    """The first stage waits for `gate`: the instance holds its claims as long as we like."""
    root.configure(
        [hostile(root, "scan", f"wait:{gate}"), hostile(root, "summarize", inp="{scan}")],
        stable_seconds=0.2, rescan_seconds=0.5, workers=2, lease_seconds=LEASE,
    )  # fmt: skip


def _folder_of(root: Root, run: Vvflow) -> Path:
    found = [p for p in root.folder("processing").glob(f"*-{run.pid}-*") if p.is_dir()]
    assert len(found) == 1, tree(root)
    return found[0]


def _starts(root: Root) -> Counter[tuple[str, str]]:
    return Counter((r["video"], r["stage"]) for r in stage_log(root) if r["event"] == "start")


def _first_within(condition: Callable[[], bool], seconds: float) -> float | None:
    """Poll `condition` for `seconds`: when it first held (seconds in), or None."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def _taken_over(run: Vvflow, folder: Path) -> Callable[[], bool]:
    """Whether `run` took the claims of the instance owning `folder` (a takeover deletes
    the heartbeat first)."""

    def check() -> bool:
        recovered = [e for e in run.events() if e["event"] == "recovered"]
        return (
            any(e["instance"] == folder.name for e in recovered)
            or not (folder / ".heartbeat").exists()
        )

    return check


class Backdating:
    """Keeps setting a heartbeat's mtime to an hour ago (`touch -d '1 hour ago'`), faster
    than its owner refreshes it (every lease / 4)."""

    def __init__(self, heartbeat: Path) -> None:
        self.heartbeat = heartbeat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            old = time.time() - 3600
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.heartbeat, (old, old))
            self._stop.wait(0.02)

    def __enter__(self) -> Backdating:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.timeout(90)
def test_backdated_heartbeat_of_a_live_instance_is_never_taken_over(
    root: Root, tmp_path: Path
) -> None:
    """`vvflow run` A holds two videos (its first stage waits for a gate) while its
    heartbeat is set to an hour ago over and over; `vvflow status` and `vvflow health`
    look, then instance B runs on the same root for three leases. A's process is alive
    on this host, which proves more than any heartbeat: B never takes A's claims, A
    keeps its lease, each stage of each video runs exactly once, `status` does not call
    A dead and `health` stays healthy."""
    gate = tmp_path / "gate"
    _configure(root, gate)
    with Fleet(root, tmp_path) as fleet:
        a = fleet.start("run")
        for name in NAMES:
            root.drop(name)
        wait_for(lambda: sum(_starts(root).values()) == 2, what="A running both videos",
                 detail=lambda: tree(root))  # fmt: skip
        folder = _folder_of(root, a)
        with Backdating(folder / ".heartbeat"):
            time.sleep(0.5)  # backdated for a while, whatever A's next beat does
            mine = [i for i in root.status()["instances"] if i["name"] == folder.name]
            health = root.vvflow("health")
            b = fleet.start("run")
            took_over = _first_within(_taken_over(b, folder), 3 * LEASE)
            still_held = (folder / ".heartbeat").exists()
        gate.touch()
        wait_for(lambda: entries(root.folder("completed")) == NAMES, timeout=30,
                 what="both videos", detail=lambda: tree(root))  # fmt: skip
        a_code = a.stop() if a.proc.poll() is None else a.proc.returncode
        assert b.stop() == 0, b.text()[-3000:]

    starts = _starts(root)
    assert starts == {(n, s): 1 for n in NAMES for s in STAGES}, f"stages run twice: {starts}"
    assert took_over is None, f"B took A's claims {took_over:.1f}s after it started"
    assert still_held and a_code == 0, a.text()[-3000:]
    assert all(r["ppid"] == a.pid for r in stage_log(root)), "B ran a stage of A's videos"
    assert len(mine) == 1 and mine[0]["dead"] is False, mine
    assert health.returncode == 0, health.stdout
    assert_settled(root, NAMES, STAGES)
    print(f"\nbackdated heartbeat: held {3 * LEASE:g}s (lease {LEASE:g}s), 0 takeovers, "
          f"each stage once, health: {health.stdout.strip()}")  # fmt: skip


#: A preload that moves the wall clock (CLOCK_REALTIME as libc reads it: time.time(),
#: log timestamps) `TEST_CLOCK_AHEAD_SECONDS` seconds ahead, and nothing else: sleeps, timed
#: waits and the monotonic clock stay real, as on a host whose clock is merely off.
#: libfaketime (Debian `faketime`) would do, but its 0.9.10 breaks Python 3.11: with
#: FAKETIME_DONT_FAKE_MONOTONIC=1 every time.sleep() fails with EINVAL (its
#: clock_nanosleep passes a negative TIMER_ABSTIME deadline: wolfcw/libfaketime#426),
#: without it threading.Event.wait() never returns.
_SKEW_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long skew(void) {
    const char *s = getenv("TEST_CLOCK_AHEAD_SECONDS");
    return s ? atol(s) : 0;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) ts->tv_sec += skew();
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    static int (*real)(struct timeval *, void *);
    if (!real) real = (int (*)(struct timeval *, void *))dlsym(RTLD_NEXT, "gettimeofday");
    int rc = real(tv, tz);
    if (rc == 0 && tv) tv->tv_sec += skew();
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
"""


def _skewed_env(lib: Path, skew: float) -> dict[str, str]:
    return clean_env({"LD_PRELOAD": str(lib), "TEST_CLOCK_AHEAD_SECONDS": str(int(skew))})


def _skew_available(tmp_path: Path) -> Path:
    """The clock-skewing preload, built and checked (it moves Python's wall clock, not
    its monotonic clock, and sleeps still work); skips, saying why, where it cannot be
    had."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for another host's PID and UTS namespaces")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler (cc) to build the clock-skewing preload")
    source, lib = tmp_path / "skew.c", tmp_path / "skew.so"
    source.write_text(_SKEW_C)
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(source), "-ldl"],
                   check=True, capture_output=True)  # fmt: skip
    probe = ("import time; t = time.monotonic(); time.sleep(0.5); "
             "print(time.time(), time.monotonic() - t)")  # fmt: skip
    before = time.time()
    out = subprocess.run([sys.executable, "-c", probe], env=_skewed_env(lib, SKEW),
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    ahead, slept = float(out[0]) - before, float(out[1])
    assert SKEW - 10 < ahead < SKEW + 10, f"the preload did not move the wall clock: {ahead}"
    assert 0.5 <= slept < 5, f"the preload changed the monotonic clock: {slept}"
    return lib


@pytest.mark.timeout(90)
def test_instance_with_a_clock_120s_ahead_takes_no_live_claims(root: Root, tmp_path: Path) -> None:
    """`vvflow run` A holds two videos; instance B runs as another host (own PID and UTS
    namespaces: it cannot see A's pid) whose wall clock is 120 s ahead (a preload), on
    the same root, lease 3 s. To B's wall clock A's heartbeat is always two minutes old:
    B must still take nothing while A beats (three leases). Then A is killed with
    SIGKILL: B recovers its claims after about a lease of its own time (not at once,
    not never) and completes both videos; each first stage ran once by A, once by B."""
    lib = _skew_available(tmp_path)
    gate = tmp_path / "gate"
    _configure(root, gate)
    with Fleet(root, tmp_path) as fleet:
        a = fleet.start("run")
        for name in NAMES:
            root.drop(name)
        wait_for(lambda: sum(_starts(root).values()) == 2, what="A running both videos",
                 detail=lambda: tree(root))  # fmt: skip
        folder = _folder_of(root, a)
        b = OtherHost(
            root, "other-host", log=tmp_path / "other-host.log", env=_skewed_env(lib, SKEW)
        )
        fleet.started.append(b)
        started = [e for e in b.events() if e["event"] == "started"]
        assert started and not started[0]["instance"].startswith(folder.name.split("-")[0])
        assert log_time(started[0]["ts"]) - time.time() > SKEW - 10, "B's clock is not ahead"

        took_over = _first_within(_taken_over(b, folder), 3 * LEASE)
        assert took_over is None, f"B took live A's claims {took_over:.1f}s after it started"
        assert a.proc.poll() is None and (folder / ".heartbeat").exists(), a.text()[-3000:]

        orphans = [r["pid"] for r in stage_log(root) if r["ppid"] == a.pid]
        killed_at = time.monotonic()
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        for pid in orphans:  # A's stages, left waiting for the gate (B cannot see them)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        last_beat = (folder / ".heartbeat").stat().st_mtime  # nothing writes it any more
        wait_for(
            _taken_over(b, folder),
            timeout=LEASE + 30,
            what="B recovering the dead A's claims",
            detail=lambda: b.text()[-3000:],
        )
        recovered_after = time.monotonic() - killed_at
        since_last_beat = time.time() - last_beat
        gate.touch()
        wait_for(lambda: entries(root.folder("completed")) == NAMES, timeout=30,
                 what="both videos completed by B", detail=lambda: tree(root))  # fmt: skip
        assert b.stop() == 0, b.text()[-3000:]

    assert since_last_beat >= LEASE - 0.2, f"recovered {since_last_beat:.2f}s after the last beat"
    assert_settled(root, NAMES, STAGES)
    log = stage_log(root)
    starts = [r for r in log if r["event"] == "start"]
    by_a = Counter((r["video"], r["stage"]) for r in starts if r["ppid"] == a.pid)
    by_b = Counter((r["video"], r["stage"]) for r in starts if r["ppid"] != a.pid)
    assert by_a == {(n, "scan"): 1 for n in NAMES}, by_a
    assert by_b == {(n, s): 1 for n in NAMES for s in STAGES}, by_b
    print(
        f"\nclock skew: B {SKEW:g}s ahead took nothing from live A in {3 * LEASE:g}s; "
        f"recovered A's claims {recovered_after:.1f}s after SIGKILL "
        f"({since_last_beat:.1f}s after its last beat, lease {LEASE:g}s)"
    )
