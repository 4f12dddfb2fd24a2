"""Watching input/pending/: watchdog events and rescans name candidates, and the
stability rule decides when a candidate is whole.

The watcher never moves files. Events are hints: watchdog silently drops inotify's
queue-overflow signal (https://github.com/gorakhargosh/watchdog/issues/654) and network
or FUSE mounts give no events at all, so a periodic full rescan is the backstop, and
the stability check (size and mtime unchanged for `stable_seconds`) is the judge.

Size and mtime cannot see a writer that pauses holding its file open, so a file still
open for writing is not stable either: inotify's modify and close-after-write events
say so for names under watch, and a look at /proc right before each claim catches the
writers on this host that started before the watch or write while events are lost.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from vvflow import logs, report
from vvflow.events import Event
from vvflow.filesystem import needs_polling
from vvflow.layout import Candidate, Layout

#: Filesystems on which inotify sees nothing of changes made elsewhere (other clients of
#: a network share, the host side of a FUSE or VM mount): use the polling observer.
#: What schedules a stability check. `opened` and `closed_no_write` say nothing about
#: content; `modified` (a file's first write makes it a candidate) also marks the file
#: open for writing until `closed` (close-after-write). FileClosedEvent exists only with
#: inotify.
WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent
]  # fmt: skip


# -- writers -------------------------------------------------------------------------

#: How long a name inotify saw written stays "open for writing" without a further write
#: when no close-after-write comes. Events lost to a queue overflow clear every mark when
#: a rescan finds what they missed; a lone lost close delays its video this much at most.
WRITE_MARK_SECONDS = 300.0


class OpenWrites:
    """Names in pending/ that inotify saw written (IN_MODIFY) and not yet closed after
    writing (IN_CLOSE_WRITE): a writer holds them open, whatever their size and mtime
    say. Fed by the observer thread, read by the daemon loop. inotify sees writers in
    other containers too, which /proc does not; the polling observer gives no close
    events, so it feeds nothing here. A mark is a hint that can go stale when events
    are lost: it lapses after `expiry` seconds without a write, and `clear()` drops all."""

    def __init__(self, expiry: float = WRITE_MARK_SECONDS) -> None:
        self.expiry = expiry
        self._written: dict[str, float] = {}
        self._lock = threading.Lock()

    def wrote(self, name: str) -> None:
        with self._lock:
            self._written[name] = time.monotonic()

    def closed(self, name: str) -> None:
        with self._lock:
            self._written.pop(name, None)

    def clear(self) -> None:
        """Forget every mark (the watch was renewed: its close events may be lost)."""
        with self._lock:
            self._written.clear()

    def writing(self, name: str) -> bool:
        with self._lock:
            since = self._written.get(name)
            if since is not None and time.monotonic() - since > self.expiry:
                del self._written[name]
                since = None
        return since is not None


def _writes(pid: str, fd: str) -> bool:
    """Whether descriptor `fd` of `pid` is open for writing (O_WRONLY or O_RDWR)."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as fh:
            for line in fh:
                if line.startswith(b"flags:"):
                    return (int(line.split()[1], 8) & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
    except (OSError, ValueError, IndexError):
        pass
    return False


def open_writers(path: Path) -> list[int]:
    """The pids of processes on this host that hold `path` open for writing.

    Reads every /proc/PID/fd link: a link whose last component is the file's name is
    then stat'ed (never every link: a stat reaches the file's filesystem, which may be
    a hung network mount; a readlink does not) and matched by device and inode, and
    /proc/PID/fdinfo/FD gives its access mode. Processes this one may not inspect
    (another user's, unless root; another pid namespace) are skipped: inotify and the
    identity checks are there for those. It costs one readlink per descriptor open on
    the host, so it is done for one file right before a claim, never per rescan.
    """
    try:
        target = os.lstat(path)
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    suffix = "/" + path.name
    found = []
    for pid in pids:
        folder = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(folder)
        except OSError:
            continue  # gone, or not ours to inspect
        for fd in fds:
            link = f"{folder}/{fd}"
            try:
                if not os.readlink(link).endswith(suffix):
                    continue
                st = os.stat(link)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) and _writes(pid, fd):
                found.append(int(pid))
                break
    return found


def describe_writers(pids: list[int]) -> str:
    """'pid 12 (rsync), pid 40 (curl)' for a log line or a report."""
    named = []
    for pid in pids[:5]:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            comm = "?"
        named.append(f"pid {pid} ({comm})")
    return ", ".join(named) + (f" and {len(pids) - 5} more" if len(pids) > 5 else "")


#: How many leading bytes `container_signature` needs.
HEAD_BYTES = 512

#: Top-level boxes an ISO base media (MP4, MOV, 3GP) or QuickTime file may begin with.
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def container_signature(head: bytes) -> str | None:
    """The container a file's first bytes announce ('iso:ftyp', 'ebml', 'mpeg-ts' ...),
    or None. A video file begins with its container's header; a piece cut from its
    middle almost never does, and one cut at a box boundary announces another box."""
    if len(head) >= 8 and head[4:8] in _ISO_BOXES:
        return "iso:" + head[4:8].decode()
    magic = {
        b"\x1a\x45\xdf\xa3": "ebml",  # Matroska, WebM
        b"RIFF": "riff",  # AVI
        b"OggS": "ogg",
        b"\x30\x26\xb2\x75": "asf",  # WMV
        b"\x06\x0e\x2b\x34": "mxf",
        b"\x00\x00\x01\xba": "mpeg-ps",
        b"\x00\x00\x01\xb3": "mpeg-video",
    }.get(head[:4])
    if magic is not None:
        return magic
    if head[:3] == b"FLV":
        return "flv"
    if len(head) > 188 and head[0] == head[188] == 0x47:
        return "mpeg-ts"
    if len(head) > 196 and head[4] == head[196] == 0x47:
        return "m2ts"
    return None


def read_head(path: Path) -> bytes:
    """The first HEAD_BYTES of a regular file (b'' when it cannot be read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return b""
    try:
        return os.read(fd, HEAD_BYTES)
    except OSError:
        return b""
    finally:
        os.close(fd)


class PendingEvents(FileSystemEventHandler):
    """Turns watchdog events on pending/ into names to check, and keeps `open_writes`
    (inotify only). It never raises: an exception in a handler kills the observer
    thread (watchdog issues 793 and 663)."""

    def __init__(
        self,
        pending: Path,
        notify: Callable[[str], None],
        open_writes: OpenWrites | None = None,
    ) -> None:
        self.pending = os.fsdecode(pending)
        self.notify = notify
        self.open_writes = open_writes

    def _name(self, path: bytes | str) -> str | None:
        folder, name = os.path.split(os.fsdecode(path))
        return name if folder == self.pending and name else None

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            if event.is_directory:
                return
            writes = self.open_writes
            if isinstance(event, FileMovedEvent | FileDeletedEvent | FileClosedEvent):
                gone = self._name(event.src_path)
                if writes is not None and gone is not None:
                    writes.closed(gone)
            if isinstance(event, FileMovedEvent):
                name = self._name(event.dest_path)
            elif isinstance(event, FileCreatedEvent | FileClosedEvent | FileModifiedEvent):
                # A file is usually created empty (not yet a candidate): its first write
                # is what makes it one, whether or not its writer ever closes it.
                name = self._name(event.src_path)
                if writes is not None and name is not None and type(event) is FileModifiedEvent:
                    writes.wrote(name)
            else:
                return
            if name is not None:
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
    #: When it arrived in pending/ (its ctime: a rename into the folder sets it, and no
    #: copy tool carries it over, unlike the mtime).
    arrived_ns: int
    ready: bool = False
    #: Its place in the ready queue; an older entry of the same name is stale.
    ticket: int = 0
    rank: int = 1


class Stability:
    """Tracks candidates until their size and mtime stay unchanged for `stable_seconds`,
    and hands the stable ones out oldest first (by arrival in pending/; videos that
    recovery returned before all others).

    Only names something pointed at are stat'ed, each once per `stable_seconds` at
    most (a heap orders the checks); nothing is ever hashed or read. With `retrack`
    False (burst mode), a file that changed during its window is let go, not watched
    again: it is still being written, and belongs to a later run.
    """

    def __init__(
        self,
        layout: Layout,
        stable_seconds: float,
        open_writes: OpenWrites | None = None,
        *,
        retrack: bool = True,
    ) -> None:
        self.layout = layout
        self.stable_seconds = stable_seconds
        self.open_writes = open_writes
        self.retrack = retrack
        self._watch: dict[str, _Observation] = {}
        self._due: list[tuple[float, str]] = []
        #: (rank, arrival, ticket, name): rank 0 for returned videos, 1 for the others.
        #: The rank and arrival go with the video (Candidate.order) to its stages.
        self._ready: list[tuple[int, int, int, str]] = []
        self._ready_count = 0
        self._tickets = itertools.count(1)

    def __len__(self) -> int:
        return len(self._watch)

    def __contains__(self, name: str) -> bool:
        return name in self._watch

    @property
    def ready_count(self) -> int:
        return self._ready_count

    def _observe(self, name: str) -> tuple[_Key, float, int] | None:
        try:
            st = os.lstat(os.path.join(self.layout.pending, name))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if self.layout.entry_reason(name, st) is not None:
            return None
        return (st.st_size, st.st_mtime_ns, st.st_ino), st.st_mtime, st.st_ctime_ns

    def _track(self, name: str, seen: tuple[_Key, float, int], now: float) -> None:
        self._watch[name] = _Observation(seen[0], now, seen[1], seen[2])
        heapq.heappush(self._due, (now + self.stable_seconds, name))

    def _mark_ready(self, name: str, obs: _Observation, rank: int) -> None:
        obs.ready = True
        obs.ticket = next(self._tickets)
        self._ready_count += 1
        obs.rank = rank
        heapq.heappush(self._ready, (rank, obs.arrived_ns, obs.ticket, name))

    def _drop(self, name: str) -> _Observation | None:
        obs = self._watch.pop(name, None)
        if obs is not None and obs.ready:
            self._ready_count -= 1
        return obs

    def see(self, name: str, now: float) -> bool:
        """Start tracking `name` if it is a candidate; True when it is newly tracked."""
        if name in self._watch:
            return False
        seen = self._observe(name)
        if seen is None:
            return False
        self._track(name, seen, now)
        return True

    def first(self, name: str, now: float) -> None:
        """Put `name` at the front of the ready queue now, with no stability wait: a
        video recovery returned, whole when it was claimed. `take` still checks that it
        is unchanged since this call and that no writer holds it open."""
        seen = self._observe(name)
        if seen is None:
            return
        self._drop(name)
        obs = _Observation(seen[0], now, seen[1], seen[2])
        self._watch[name] = obs
        self._mark_ready(name, obs, rank=0)

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
                if self.retrack:
                    self._track(name, seen, now)
                    logs.event(Event.UNSTABLE, level=logging.DEBUG, video=name)
                else:
                    del self._watch[name]
                    logs.event(Event.UNSTABLE, video=name)
            elif self._writing(name):
                # Unchanged, but a writer holds it open: look again later.
                heapq.heappush(self._due, (now + max(self.stable_seconds, 1.0), name))
            elif now - obs.since >= self.stable_seconds:
                self._mark_ready(name, obs, rank=1)
            else:
                heapq.heappush(self._due, (obs.since + self.stable_seconds, name))

    def take(self, limit: int, now: float) -> list[Candidate]:
        """Up to `limit` stable candidates, oldest first, still unchanged; they are no
        longer tracked."""
        taken: list[Candidate] = []
        while self._ready and len(taken) < limit:
            _, _, ticket, name = heapq.heappop(self._ready)
            obs = self._watch.get(name)
            if obs is None or not obs.ready or obs.ticket != ticket:
                continue  # stale: taken, forgotten or put first since
            self._drop(name)
            seen = self._observe(name)
            if seen is None:
                continue
            if seen[0] != obs.key or self._writing(name):
                if self.retrack:
                    self.see(name, now)
                else:
                    logs.event(Event.UNSTABLE, video=name)
                continue
            size, mtime_ns, inode = obs.key
            identity = report.Identity(size=size, mtime_ns=mtime_ns, inode=inode)
            taken.append(Candidate(name, identity, obs.mtime, (obs.rank, obs.arrived_ns)))
        if not self._ready_count:
            self._ready.clear()  # only stale entries are left
        return taken

    def _writing(self, name: str) -> bool:
        return self.open_writes is not None and self.open_writes.writing(name)

    def forget(self, name: str) -> None:
        self._drop(name)

    def clear(self) -> None:
        """Let go of every name (a paused burst run ends)."""
        self._watch.clear()
        self._due.clear()
        self._ready.clear()
        self._ready_count = 0
