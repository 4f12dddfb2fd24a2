"""Who an instance is, whether it is alive, the heartbeat that keeps its lease, and the
killing of the processes its stages start.

An instance is named `<host>-<boot>-<pid namespace>-<pid>-<start>` where `start` is
the process start time in clock ticks since boot (from /proc), so a reused pid is
never taken for the instance that died; the PID namespace keeps two containers that
share a hostname from judging each other's pids, and `boot` (the kernel's boot id)
two machines that share a hostname (cloned VMs, hosts all named `localhost`): the
initial PID namespace has the same inode number on every Linux machine. Its folder
`processing/<instance>/` holds its claims and a hidden heartbeat file that it rewrites
(a beat counter) every lease / 4. Another instance that takes the claims back first
deletes the heartbeat: a paused instance that wakes up finds it gone and knows it must
not write anything.

No wall clock decides that an instance is dead (see `Liveness`): on this host its live
process proves it alive whatever its heartbeat looks like; elsewhere, a checker must
have seen its heartbeat not change for `lease_seconds` of the checker's own monotonic
clock. Two hosts' clocks never need to agree, nor the file server's with either.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from vvflow.layout import HEARTBEAT, STAGE_PID, WORK

_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9._]")
#: /proc/PID/stat states of a process stopped by a signal or a tracer.
STOPPED = (b"T", b"t")


def _process_stat(pid: int) -> tuple[bytes, int] | None:
    """The state letter and start time (clock ticks since boot) of `pid`, or None when
    it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after its last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None  # a zombie (killed, not yet reaped by its parent) is gone for us
    return fields[0], int(fields[19])


def process_start(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot, or None when it is gone."""
    found = _process_stat(pid)
    return None if found is None else found[1]


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


def this_boot() -> str:
    """The first 8 hex digits of this machine's boot id: different on every machine
    (and every boot), the same in every container of one."""
    try:
        raw = Path("/proc/sys/kernel/random/boot_id").read_text()
    except OSError:
        return "00000000"
    digits = "".join(c for c in raw.lower() if c in "0123456789abcdef")
    return (digits + "0" * 8)[:8]


@dataclass(frozen=True)
class InstanceId:
    host: str
    boot: str
    namespace: int
    pid: int
    start: int

    @property
    def name(self) -> str:
        return f"{self.host}-{self.boot}-{self.namespace}-{self.pid}-{self.start}"

    @classmethod
    def current(cls) -> InstanceId:
        return cls.local(os.getpid())

    @classmethod
    def local(cls, pid: int, start: int | None = None) -> InstanceId:
        """The identity a process of this host and PID namespace has (or had)."""
        if start is None:
            start = process_start(pid) or 0
        return cls(this_host(), this_boot(), this_pid_namespace(), pid, start)

    @classmethod
    def parse(cls, name: str) -> InstanceId | None:
        """The identity a folder name gives; None for any other name (a folder of an
        older vvflow included: it is then judged by its heartbeat alone)."""
        parts = name.split("-")
        if len(parts) != 5:
            return None
        host, boot, namespace, pid, start = parts
        if not (host and len(boot) == 8 and all(c in "0123456789abcdef" for c in boot)):
            return None
        if not (namespace.isdigit() and pid.isdigit() and start.isdigit()):
            return None
        return cls(host, boot, int(namespace), int(pid), int(start))

    def is_local(self) -> bool:
        """Whether its pid can be checked from here: same host, same machine and boot,
        same PID namespace."""
        return (
            self.host == this_host()
            and self.boot == this_boot()
            and self.namespace == this_pid_namespace()
        )

    def is_running_here(self) -> bool:
        """True when this instance is a live process on this host."""
        return self.is_local() and process_start(self.pid) == self.start

    def is_stopped_here(self) -> bool:
        """True when this instance is a process on this host that is stopped (SIGSTOP,
        a debugger): it exists, but it proves nothing until it runs again."""
        found = _process_stat(self.pid) if self.is_local() else None
        return found is not None and found[1] == self.start and found[0] in STOPPED


def heartbeat_age(folder: Path, now: float | None = None) -> float | None:
    """Seconds since the heartbeat in `folder` was written, by this host's wall clock
    against the file's mtime (which another host or the file server may have set): for
    display only, never to judge an instance; None when there is none."""
    try:
        mtime = (folder / HEARTBEAT).stat().st_mtime
    except FileNotFoundError:
        return None
    return (time.time() if now is None else now) - mtime


def heartbeat_signature(folder: Path) -> tuple[object, ...] | None:
    """What a heartbeat looks like now (inode, size, mtime and its beat counter), or the
    folder's own look when it has none yet or any more; None when the folder is gone.
    Only its changes mean something: the mtime is compared with nothing."""
    heartbeat = folder / HEARTBEAT
    try:
        # Opening (not only stat) makes an NFS client revalidate its cached attributes
        # (close-to-open), and the counter changes even where mtimes are coarse.
        fd = os.open(heartbeat, os.O_RDONLY)
    except FileNotFoundError:
        try:
            st = os.stat(folder)
        except FileNotFoundError:
            return None
        return ("folder", st.st_ino, st.st_mtime_ns)
    except OSError:
        try:
            st = os.stat(heartbeat)
        except OSError:
            return None
        return ("heartbeat", st.st_ino, st.st_size, st.st_mtime_ns)
    try:
        st = os.fstat(fd)
        content = os.read(fd, 64)
    finally:
        os.close(fd)
    return ("heartbeat", st.st_ino, st.st_size, st.st_mtime_ns, content)


class Verdict(StrEnum):
    """What one checker can tell of an instance."""

    ALIVE = "alive"  #: its process runs on this host, or its heartbeat changed while watched
    DEAD = "dead"  #: its process is gone from this host, or its heartbeat stayed the same a lease
    WATCHING = "watching"  #: unchanged since this checker first looked, less than a lease ago


@dataclass
class _Sighting:
    signature: tuple[object, ...] | None
    since: float
    changed: bool = False


class Liveness:
    """One instance's memory of the others' heartbeats: which instances are dead, judged
    without any wall clock, so that a lease does not depend on two hosts' clocks (nor
    the file server's) agreeing.

    - On this host and PID namespace, a running process with the instance's pid and
      start time proves it alive (never taken over, whatever its heartbeat's mtime
      says), and a process that is gone proves it dead: recovered at once.
    - Anywhere else, and for a stopped local process (SIGSTOP), it is dead once this
      checker has seen its heartbeat unchanged for `lease_seconds` of its own monotonic
      clock. A checker that first looks sees no age: a fresh checker (a `vvflow once`)
      can recover another host's instance only after watching it for a lease.
    """

    def __init__(self, lease_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._seen: dict[str, _Sighting] = {}
        self._lock = threading.Lock()

    def verdict(self, folder: Path) -> Verdict:
        """Look at the instance owning `folder` now, and judge it."""
        ident = InstanceId.parse(folder.name)
        if ident is not None and ident.is_local():
            found = _process_stat(ident.pid)
            if found is None or found[1] != ident.start:
                return Verdict.DEAD
            if found[0] not in STOPPED:
                # A positive proof of life wins over any heartbeat: its mtime may be
                # backdated, or set by a file server whose clock is off.
                self.forget(folder)
                return Verdict.ALIVE
        signature = heartbeat_signature(folder)
        now = self.clock()
        with self._lock:
            seen = self._seen.get(folder.name)
            if signature is None:  # the folder is gone: nothing is left to take back
                self._seen.pop(folder.name, None)
                return Verdict.ALIVE
            if seen is None:
                self._seen[folder.name] = _Sighting(signature, now)
                return Verdict.WATCHING
            if seen.signature != signature:
                self._seen[folder.name] = _Sighting(signature, now, changed=True)
                return Verdict.ALIVE
            if now - seen.since >= self.lease_seconds:
                return Verdict.DEAD
            return Verdict.ALIVE if seen.changed else Verdict.WATCHING

    def is_dead(self, folder: Path) -> bool:
        """Whether the instance owning `folder` is gone and its claims may be taken back."""
        return self.verdict(folder) is Verdict.DEAD

    def forget(self, folder: Path) -> None:
        with self._lock:
            self._seen.pop(folder.name, None)

    def keep_only(self, folders: Iterable[Path]) -> None:
        """Forget what was seen of instance folders that are no longer there."""
        names = {folder.name for folder in folders}
        with self._lock:
            for name in [n for n in self._seen if n not in names]:
                del self._seen[name]

    def undecided(self) -> list[str]:
        """The instances watched for less than a lease whose heartbeat has not changed
        yet: only more watching (or a beat) can tell whether they are alive."""
        now = self.clock()
        with self._lock:
            return sorted(
                name
                for name, seen in self._seen.items()
                if not seen.changed and now - seen.since < self.lease_seconds
            )


class Lease:
    """This instance's folder and heartbeat, kept fresh by a background thread."""

    def __init__(self, folder: Path, lease_seconds: float) -> None:
        self.folder = folder
        self.heartbeat = folder / HEARTBEAT
        self.interval = max(0.2, lease_seconds / 4)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False
        self._beats = 0
        #: time.monotonic() of the last beat that reached the file.
        self.beat_at = time.monotonic()

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.heartbeat.touch()
        self._count()
        self.beat_at = time.monotonic()
        self._thread = threading.Thread(target=self._beat, name="vvflow-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.touch()

    def _count(self) -> None:
        """Write the next beat count into the heartbeat, in place (fixed width): it
        changes the file even where mtimes are coarse (1 s, 2 s). Best effort: a full
        disk may refuse the bytes, while the mtime still changes."""
        self._beats += 1
        try:
            fd = os.open(self.heartbeat, os.O_WRONLY)  # never O_CREAT: see touch()
        except OSError:
            return
        try:
            os.pwrite(fd, b"%020d\n" % self._beats, 0)
        except OSError:
            pass
        finally:
            os.close(fd)

    def touch(self) -> bool:
        """Refresh the heartbeat; False (and lost for good) when another instance took over."""
        if self._lost:
            return False
        try:
            # Never recreate it: a heartbeat deleted by a takeover must stay deleted.
            os.utime(self.heartbeat)
            self._count()
            self.beat_at = time.monotonic()
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


def kill_group(pgid: int, sig: int) -> None:
    """Send `sig` to a process group, if it is still there."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop a stage politely, then firmly: SIGTERM to its group, wait, SIGKILL."""
    kill_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    kill_group(proc.pid, signal.SIGKILL)


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


def kill_orphan_stages(folder: Path) -> None:
    """Kill the stage processes a dead instance of this host left running, as the
    workspaces in its folder record them (STAGE_PID). Nothing for an instance of
    another host or PID namespace: its pids mean nothing here."""
    owner = InstanceId.parse(folder.name)
    if owner is None or not owner.is_local():
        return
    for pidfile in (folder / WORK).glob(f"*/{STAGE_PID}"):
        try:
            pid, start, *token = pidfile.read_text().split()
            kill_orphan(int(pid), int(start), token[0] if token else None)
        except (OSError, ValueError):
            continue
