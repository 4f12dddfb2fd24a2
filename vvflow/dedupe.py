"""Content identity: a video whose bytes were already processed runs no stage again.

Two videos can only have the same content if they have the same size, so the index is
keyed by size first: a claimed video is hashed (SHA-256, streamed, in the worker) only
when a completed video of exactly its size exists, and then at most once, the digest
kept in its report. A completed original of that size that was never hashed is hashed
then, once, the same way. A video of a size never seen before is never read by vvflow
at all (a sparse 100 GiB file costs nothing).

The index under `<root>/index/size/<size>/` names the completed originals of each size
(their reports hold their digests), so a lookup reads one small folder whatever the
history's size. It is only a cache of
`reports/`: an entry is checked against its report and folder before it is believed, a
wrong one is dropped, and a missing index is rebuilt from the reports. While a video
is running, a marker `processing/<instance>/.sizes/<size>-<key>` says so and where its
file is; a video of the same size compares digests with it, and one of the same
content waits for the earlier one instead of running beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vvflow import instance, logs, report
from vvflow.atomicfs import write_atomic
from vvflow.errors import Cancelled
from vvflow.events import Event
from vvflow.layout import Layout, State

INDEX = "index"
BUILT = ".built"
SIZES = ".sizes"
CHUNK = 1 << 20


def sha256_file(path: Path, cancel: threading.Event | None = None) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks; a shutdown interrupts it."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if cancel is not None and cancel.is_set():
                raise Cancelled("shutdown requested while hashing")
    return digest.hexdigest()


def _key(name: str) -> str:
    """A file name for an entry about `name`, safe whatever bytes `name` holds."""
    return hashlib.sha256(os.fsencode(name)).hexdigest()[:32]


class ContentIndex:
    """`index/size/<size>/<key>` -> the name of a completed original of that size; its
    report holds its digest."""

    def __init__(self, layout: Layout, lease_seconds: float = 60.0) -> None:
        self.layout = layout
        self.lease_seconds = lease_seconds
        self.folder = layout.root / INDEX
        self.by_size = self.folder / "size"
        self.duplicates = self.folder / "duplicates"
        self._lock = threading.Lock()
        self._digests: dict[tuple[str, int, int], str] = {}

    # -- building ------------------------------------------------------------------

    def ensure(self) -> bool:
        """Rebuild the index from the reports when it is missing; True when rebuilt."""
        if (self.folder / BUILT).exists():
            return False
        self.rebuild()
        return True

    def rebuild(self) -> int:
        """Write the entries of every completed original and a marker for every duplicate
        that the reports record. Idempotent; returns the number of originals."""
        originals = 0
        try:
            paths = list(os.scandir(self.layout.reports))
        except FileNotFoundError:
            paths = []
        for entry in paths:
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            rep = report.load(Path(entry.path))
            if rep is None or rep.state != State.COMPLETED:
                continue
            if rep.duplicate_of is None:
                self.record(rep.name, rep.identity.size)
                originals += 1
            else:
                self.record_duplicate(rep.name)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / BUILT).touch()
        return originals

    def record(
        self, name: str, size: int, *, tmp_dir: Path | None = None, durable: bool = True
    ) -> None:
        """Index a completed original. `tmp_dir` (the instance's work folder) keeps the
        temporary files of a crashed write where recovery cleans them."""
        data = json.dumps({"name": name}, ensure_ascii=True).encode()
        entry = self.by_size / str(size) / _key(name)
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(entry, data, tmp_dir=tmp_dir, durable=durable)

    def record_duplicate(self, name: str) -> None:
        self.duplicates.mkdir(parents=True, exist_ok=True)
        report.report_path(self.duplicates, name).touch()

    def duplicate_count(self) -> int:
        try:
            return sum(1 for e in os.scandir(self.duplicates) if not e.name.startswith("."))
        except FileNotFoundError:
            return 0

    # -- looking up ----------------------------------------------------------------

    def _believe(self, entry: Path, name: str) -> report.Report | None:
        """The report of the completed original an entry names, or None; an entry whose
        report says otherwise is dropped (a crash mid-write, a video removed)."""
        rep = report.load(self.layout.report_path(name))
        if rep is None or rep.state != State.COMPLETED or rep.duplicate_of is not None:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            return None
        if not os.path.lexists(self.layout.completed / name):
            return None  # recorded, not yet filed (entries are written before the move)
        return rep

    def originals_of_size(self, size: int, *, exclude: str) -> list[report.Report]:
        """The completed originals of exactly `size` bytes."""
        found: list[report.Report] = []
        try:
            entries = list(os.scandir(self.by_size / str(size)))
        except FileNotFoundError:
            return found
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                name = json.loads(Path(entry.path).read_bytes())["name"]
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            if name != exclude and (rep := self._believe(Path(entry.path), name)) is not None:
                found.append(rep)
        return found

    def find(
        self, size: int, digest: Callable[[], str], *, exclude: str, cancel: threading.Event
    ) -> report.Report | None:
        """The completed original with the content of a claimed video of `size` bytes
        (other than `exclude`), or None; `digest()` gives the claimed video's digest and
        is called only when a completed original of that size exists."""
        same_size = self.originals_of_size(size, exclude=exclude)
        if not same_size:
            return None
        mine = digest()
        for candidate in same_size:
            if self.digest_of(candidate, cancel) == mine:
                return candidate
        return None

    def digest_of(self, original: report.Report, cancel: threading.Event) -> str:
        """The digest of a completed original, hashing it now (once) if it never was."""
        if original.sha256 is not None:
            return original.sha256
        started = time.monotonic()
        digest = sha256_file(self.layout.completed / original.name, cancel)
        original.sha256 = digest
        with contextlib.suppress(OSError):
            report.save(self.layout.report_path(original.name), original)
        logs.event(
            Event.HASHED,
            video=original.name,
            sha256=digest,
            size=original.identity.size,
            duration_s=time.monotonic() - started,
        )
        return digest

    # -- videos of the same size running at once -----------------------------------------

    def register(self, size: int, claim_path: Path, lease_folder: Path) -> Path:
        """Say that a video of `size` bytes runs here, and where its file is."""
        marker = lease_folder / SIZES / f"{size}-{_key(claim_path.name)}"
        marker.parent.mkdir(exist_ok=True)  # never parents: see atomicfs._link_move
        data = json.dumps({"path": os.fsencode(claim_path).hex()}).encode()
        write_atomic(marker, data, tmp_dir=marker.parent, durable=False)
        return marker

    def others_running(self, size: int, mine: Path) -> bool:
        """Whether another video of `size` bytes runs now, here or in another instance."""
        for folder in self.layout.instance_folders():
            for marker in (folder / SIZES).glob(f"{size}-*"):
                if marker != mine:
                    return True
        return False

    def earlier_same_content(self, size: int, mine: Path, digest: str) -> bool:
        """Whether a video of the same content started running before this one (by the
        marker's age, then instance name: every contender orders them the same way, so
        the earliest never waits and exactly one of the same content runs)."""
        try:
            own = (mine.stat().st_mtime_ns, mine.parent.parent.name)
        except FileNotFoundError:
            return False
        for folder in self.layout.instance_folders():
            if instance.is_dead(folder, self.lease_seconds):
                continue  # its claims are about to be recovered; its markers mean nothing
            for marker in (folder / SIZES).glob(f"{size}-*"):
                if marker == mine:
                    continue
                try:
                    order = (marker.stat().st_mtime_ns, folder.name)
                    path = Path(os.fsdecode(bytes.fromhex(json.loads(marker.read_bytes())["path"])))
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                if order < own and self.file_digest(path) == digest:
                    return True
        return False

    def file_digest(self, path: Path) -> str | None:
        """The digest of a running video's file, hashed once per (path, size, mtime)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._digests:
                return self._digests[key]
        try:
            digest = sha256_file(path)
        except OSError:
            return None
        with self._lock:
            if len(self._digests) > 256:
                self._digests.clear()
            self._digests[key] = digest
        return digest

    @staticmethod
    def release(marker: Path | None) -> None:
        if marker is not None:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()


def _rename_value(value: str, old_name: str, new_name: str, old_stem: str, new_stem: str) -> str:
    if value == old_name:
        return new_name
    if value == old_stem:
        return new_stem
    head, sep, tail = value.rpartition("/")
    if sep and tail == old_name:
        return f"{head}/{new_name}"
    return value


def rewrite_names(data: Any, rename: Callable[[str], str]) -> Any:
    """`data` with every string that names the video (its name, its stem, a path to it)
    renamed; other strings, keyframe paths among them, are left alone."""
    if isinstance(data, str):
        return rename(data)
    if isinstance(data, list):
        return [rewrite_names(item, rename) for item in data]
    if isinstance(data, dict):
        return {key: rewrite_names(value, rename) for key, value in data.items()}
    return data


def derive_output(source: Path, tmp: Path, names: tuple[str, str, str, str]) -> None:
    """Make `tmp` the duplicate's version of the original's output `source`: a JSON
    output with the video's names rewritten, else a hard link (a copy where links are
    not possible)."""
    old_name, new_name, old_stem, new_stem = names
    raw = source.read_bytes()
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        document = None
    if document is not None:
        rewritten = rewrite_names(
            document, lambda v: _rename_value(v, old_name, new_name, old_stem, new_stem)
        )
        if rewritten != document:
            tmp.write_text(json.dumps(rewritten, indent=2, ensure_ascii=False) + "\n")
            return
    try:
        os.link(source, tmp)
    except OSError:
        tmp.write_bytes(raw)
