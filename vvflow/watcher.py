"""Watching input/pending/: watchdog events and rescans name candidates, and the
stability rule decides when a candidate is whole.

The watcher never moves files. Events are hints: watchdog silently drops inotify's
queue-overflow signal (https://github.com/gorakhargosh/watchdog/issues/654) and network
or FUSE mounts give no events at all, so a periodic full rescan is the backstop, and
the stability check (size and mtime unchanged for `stable_seconds`) is the only judge.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from vvflow import logs, report
from vvflow.events import Event
from vvflow.layout import Candidate, Layout

#: Filesystems on which inotify sees nothing of changes made elsewhere (other clients of
#: a network share, the host side of a FUSE or VM mount): use the polling observer.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "ceph", "glusterfs",
        "lustre", "gpfs", "beegfs", "afs", "ncpfs", "davfs", "sshfs", "vboxsf", "vmhgfs",
        "prl_fs", "efs", "orangefs", "ocfs2", "gfs2",
    }
)  # fmt: skip

#: What schedules a stability check. `opened` and `closed_no_write` say nothing about
#: content, and `modified` is covered by the check itself (it compares size and mtime).
#: FileClosedEvent exists only with inotify.
WATCHED_EVENTS: list[type[FileSystemEvent]] = [FileCreatedEvent, FileClosedEvent, FileMovedEvent]


def _unescape_mount(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    return field.encode().decode("unicode_escape") if "\\" in field else field


def filesystem_type(path: Path) -> str:
    """The type of the filesystem `path` is on, from /proc/self/mountinfo ('' if unknown)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return ""
    target = os.path.realpath(path)
    best, best_type = -1, ""
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        mount_point = _unescape_mount(left.split()[4])
        prefix = mount_point.rstrip("/") + "/"
        if (target == mount_point or target.startswith(prefix)) and len(mount_point) > best:
            best, best_type = len(mount_point), right.split()[0]
    return best_type


def needs_polling(path: Path) -> bool:
    fstype = filesystem_type(path)
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse")


class PendingEvents(FileSystemEventHandler):
    """Turns watchdog events on pending/ into names to check. It never raises: an
    exception in a handler kills the observer thread (watchdog issues 793 and 663)."""

    def __init__(self, pending: Path, notify: Callable[[str], None]) -> None:
        self.pending = os.fsdecode(pending)
        self.notify = notify

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            if event.is_directory:
                return
            if isinstance(event, FileMovedEvent):
                path = os.fsdecode(event.dest_path)
            elif isinstance(event, FileCreatedEvent | FileClosedEvent):
                path = os.fsdecode(event.src_path)
            else:
                return
            folder, name = os.path.split(path)
            if folder == self.pending and name:
                self.notify(name)
        except Exception:
            logs.event(Event.INTERNAL_ERROR, level=logging.ERROR, exc_info=True, where="watcher")


def _no_move_pairing_delay() -> None:
    """watchdog holds every IN_MOVED_FROM for 0.5 s to pair it with its IN_MOVED_TO, and
    the events queued behind it wait too (watchdog issues 390 and 649, PR 477). Every
    claim is a rename out of pending/, so with videos arriving back to back each one
    would be seen half a second late. vvflow needs only the names that appear in
    pending/; an unpaired IN_MOVED_TO is reported as a creation, which is all it needs."""
    try:
        from watchdog.observers.inotify_move_event_grouper import (  # noqa: PLC0415
            InotifyMoveEventGrouper as Grouper,
        )
    except ImportError:  # watchdog < 7
        try:
            from watchdog.observers.inotify_buffer import (  # type: ignore[import-not-found,no-redef,unused-ignore]  # noqa: PLC0415
                InotifyBuffer as Grouper,
            )
        except ImportError:
            return
    Grouper.delay = 0.0


def make_observer(setting: str, pending: Path, poll_seconds: float) -> tuple[str, BaseObserver]:
    """The observer `setting` asks for: `auto` picks polling on network and FUSE mounts."""
    if setting == "polling" or (setting == "auto" and needs_polling(pending)):
        return "polling", PollingObserver(timeout=poll_seconds)
    _no_move_pairing_delay()
    return "inotify", Observer()


#: (size, mtime_ns, inode): what must not change for a file to be stable. A plain tuple,
#: because 100,000 pending files mean 100,000 of these.
_Key = tuple[int, int, int]


@dataclass(slots=True)
class _Observation:
    key: _Key
    since: float
    mtime: float
    ready: bool = False


class Stability:
    """Tracks candidates until their size and mtime stay unchanged for `stable_seconds`.

    Only names something pointed at are stat'ed, each once per `stable_seconds` at
    most (a heap orders the checks); nothing is ever hashed or read.
    """

    def __init__(self, layout: Layout, stable_seconds: float) -> None:
        self.layout = layout
        self.stable_seconds = stable_seconds
        self._watch: dict[str, _Observation] = {}
        self._due: list[tuple[float, str]] = []
        self._ready: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._watch)

    def __contains__(self, name: str) -> bool:
        return name in self._watch

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def _observe(self, name: str) -> tuple[_Key, float] | None:
        try:
            st = os.lstat(os.path.join(self.layout.pending, name))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if self.layout.entry_reason(name, st) is not None:
            return None
        return (st.st_size, st.st_mtime_ns, st.st_ino), st.st_mtime

    def see(self, name: str, now: float) -> bool:
        """Start tracking `name` if it is a candidate; True when it is newly tracked."""
        if name in self._watch:
            return False
        seen = self._observe(name)
        if seen is None:
            return False
        self._watch[name] = _Observation(seen[0], now, seen[1])
        heapq.heappush(self._due, (now + self.stable_seconds, name))
        return True

    def check(self, now: float) -> None:
        """Re-stat every tracked name whose check is due; mark the stable ones ready."""
        while self._due and self._due[0][0] <= now:
            _, name = heapq.heappop(self._due)
            obs = self._watch.get(name)
            if obs is None or obs.ready:
                continue
            seen = self._observe(name)
            if seen is None:
                del self._watch[name]
            elif seen[0] != obs.key:
                self._watch[name] = _Observation(seen[0], now, seen[1])
                heapq.heappush(self._due, (now + self.stable_seconds, name))
                logs.event(Event.UNSTABLE, level=logging.DEBUG, video=name)
            elif now - obs.since >= self.stable_seconds:
                obs.ready = True
                self._ready.append(name)
            else:
                heapq.heappush(self._due, (obs.since + self.stable_seconds, name))

    def take(self, limit: int, now: float) -> list[Candidate]:
        """Up to `limit` stable candidates, still unchanged; they are no longer tracked."""
        taken: list[Candidate] = []
        while self._ready and len(taken) < limit:
            name = self._ready.popleft()
            obs = self._watch.pop(name, None)
            if obs is None:
                continue
            seen = self._observe(name)
            if seen is None:
                continue
            if seen[0] != obs.key:
                self.see(name, now)
                continue
            size, mtime_ns, inode = obs.key
            identity = report.Identity(size=size, mtime_ns=mtime_ns, inode=inode)
            taken.append(Candidate(name, identity, obs.mtime))
        return taken

    def forget(self, name: str) -> None:
        with contextlib.suppress(KeyError):
            del self._watch[name]
