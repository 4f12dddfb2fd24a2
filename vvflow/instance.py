"""Who an instance is, whether it is alive, and the heartbeat that keeps its lease.

An instance is named `<host>-<pid namespace>-<pid>-<start>` where `start` is the
process start time in clock ticks since boot (from /proc), so a reused pid is never
taken for the instance that died, and the PID namespace keeps two containers that
share a hostname from judging each other's pids. Its folder `processing/<instance>/`
holds its claims and a hidden heartbeat file whose mtime is its lease. Another
instance that takes the claims back first deletes the heartbeat: a paused instance
that wakes up finds it gone and knows it must not write anything.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT = ".heartbeat"
#: Written in a video's workspace while a stage runs: "<pid> <start> <run token>".
STAGE_PID = ".stage.pid"
_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9._]")


def process_start(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after its last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None  # a zombie (killed, not yet reaped by its parent) is gone for us
    return int(fields[19])


def this_host() -> str:
    return _HOST_UNSAFE.sub("_", socket.gethostname()) or "localhost"


def this_pid_namespace() -> int:
    """The inode of this process's PID namespace: two containers may share a hostname
    (host networking) but never a PID namespace, and a pid means something only in its
    own namespace."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


@dataclass(frozen=True)
class InstanceId:
    host: str
    namespace: int
    pid: int
    start: int

    @property
    def name(self) -> str:
        return f"{self.host}-{self.namespace}-{self.pid}-{self.start}"

    @classmethod
    def current(cls) -> InstanceId:
        return cls.local(os.getpid())

    @classmethod
    def local(cls, pid: int, start: int | None = None) -> InstanceId:
        """The identity a process of this host and PID namespace has (or had)."""
        if start is None:
            start = process_start(pid) or 0
        return cls(this_host(), this_pid_namespace(), pid, start)

    @classmethod
    def parse(cls, name: str) -> InstanceId | None:
        rest, _, start = name.rpartition("-")
        rest, _, pid = rest.rpartition("-")
        host, _, namespace = rest.rpartition("-")
        if not (host and namespace.isdigit() and pid.isdigit() and start.isdigit()):
            return None
        return cls(host, int(namespace), int(pid), int(start))

    def is_local(self) -> bool:
        """Whether its pid can be checked from here: same host, same PID namespace."""
        return self.host == this_host() and self.namespace == this_pid_namespace()

    def is_running_here(self) -> bool:
        """True when this instance is a live process on this host."""
        return self.is_local() and process_start(self.pid) == self.start


def heartbeat_age(folder: Path, now: float | None = None) -> float | None:
    """Seconds since the heartbeat in `folder` was touched; None when there is none."""
    try:
        mtime = (folder / HEARTBEAT).stat().st_mtime
    except FileNotFoundError:
        return None
    return (time.time() if now is None else now) - mtime


def is_dead(folder: Path, lease_seconds: float) -> bool:
    """Whether the instance owning `folder` is gone and its claims may be taken back."""
    ident = InstanceId.parse(folder.name)
    if ident is not None and ident.is_local() and not ident.is_running_here():
        return True
    # Alive on this host but paused (SIGSTOP, a frozen VM) or on another host: only the
    # heartbeat can tell.
    age = heartbeat_age(folder)
    if age is None:
        # No heartbeat at all: either already taken over, or never started. Give a
        # starting instance one lease to write it, judged by the folder's own mtime.
        try:
            age = time.time() - folder.stat().st_mtime
        except FileNotFoundError:
            return False
    return age > lease_seconds


class Lease:
    """This instance's folder and heartbeat, kept fresh by a background thread."""

    def __init__(self, folder: Path, lease_seconds: float) -> None:
        self.folder = folder
        self.heartbeat = folder / HEARTBEAT
        self.interval = max(0.2, lease_seconds / 4)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.heartbeat.touch()
        self._thread = threading.Thread(target=self._beat, name="vvflow-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.touch()

    def touch(self) -> bool:
        """Refresh the heartbeat; False (and lost for good) when another instance took over."""
        if self._lost:
            return False
        try:
            os.utime(self.heartbeat)
        except FileNotFoundError:
            self._lost = True
        except OSError:
            # A full or flaky disk: keep going, the next beat may succeed.
            pass
        return not self._lost

    def held(self) -> bool:
        """Whether this instance still owns its claims."""
        return not self._lost and self.heartbeat.exists()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            self.heartbeat.unlink()


#: Every stage process gets a unique token in this environment variable, which its
#: descendants inherit even when they leave its process group (setsid, double fork).
RUN_TOKEN = "VVFLOW_RUN_TOKEN"  # noqa: S105 (a variable name, not a secret)


def sweep(token: str) -> int:
    """SIGKILL every process of ours that carries `token` in its environment: whatever a
    stage left running, even outside its process group. Returns how many."""
    needle = f"{RUN_TOKEN}={token}".encode()
    me = os.getpid()
    killed = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
    return killed


def kill_orphan(pid: int, start: int, token: str | None) -> bool:
    """Kill what a dead instance on this host left running of a stage: its process group,
    and every process carrying its run token."""
    killed = False
    if process_start(pid) == start:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
            killed = True
    if token:
        killed = sweep(token) > 0 or killed
    return killed
