"""Content identity: a video whose bytes were already processed runs no stage again.

Each claimed video is hashed once (SHA-256, streamed, in the worker). The digest index
under `<root>/index/` maps a digest to the completed video that owns it, one small
file per digest, so a lookup is one open() whatever the history's size. The index is
only a cache of `reports/`: every entry is checked against the report and the folder
before it is believed, a wrong one is dropped, and a missing index is rebuilt from the
reports. While a video is running, a marker `processing/<instance>/.digests/<digest>`
says so; a second video with the same digest waits for the first instead of running
beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vvflow import instance, report
from vvflow.atomicfs import write_atomic
from vvflow.errors import Cancelled
from vvflow.layout import Layout, State

INDEX = "index"
BUILT = ".built"
DIGESTS = ".digests"
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


class DigestIndex:
    """`<root>/index/sha256/<ab>/<digest>` -> the completed original's name."""

    def __init__(self, layout: Layout, lease_seconds: float = 60.0) -> None:
        self.layout = layout
        self.lease_seconds = lease_seconds
        self.folder = layout.root / INDEX
        self.by_digest = self.folder / "sha256"
        self.duplicates = self.folder / "duplicates"
        self._lock = threading.Lock()

    def _entry(self, digest: str) -> Path:
        return self.by_digest / digest[:2] / digest

    def ensure(self) -> bool:
        """Rebuild the index from the reports when it is missing; True when rebuilt."""
        if (self.folder / BUILT).exists():
            return False
        self.rebuild()
        return True

    def rebuild(self) -> int:
        """Write an entry for every completed original and a marker for every duplicate
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
            if rep is None or rep.state != State.COMPLETED or rep.sha256 is None:
                continue
            if rep.duplicate_of is None:
                self.record(rep.sha256, rep.name)
                originals += 1
            else:
                self.record_duplicate(rep.name)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / BUILT).touch()
        return originals

    def record(self, digest: str, name: str, *, tmp_dir: Path | None = None) -> None:
        """Point `digest` at `name`. `tmp_dir` (the instance's work folder) keeps the
        temporary file of a crashed write where recovery cleans it."""
        entry = self._entry(digest)
        entry.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"name": name}, ensure_ascii=True).encode()
        write_atomic(entry, data, tmp_dir=tmp_dir)

    def record_duplicate(self, name: str) -> None:
        self.duplicates.mkdir(parents=True, exist_ok=True)
        report.report_path(self.duplicates, name).touch()

    def duplicate_count(self) -> int:
        try:
            return sum(1 for e in os.scandir(self.duplicates) if not e.name.startswith("."))
        except FileNotFoundError:
            return 0

    def lookup(self, digest: str, *, exclude: str) -> report.Report | None:
        """The completed original with this digest, verified against its report and its
        folder; a stale entry (a crash mid-write, a video removed) is dropped."""
        entry = self._entry(digest)
        try:
            name = json.loads(entry.read_bytes())["name"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        if name == exclude:
            return None
        rep = report.load(self.layout.report_path(name))
        if rep is None or rep.sha256 != digest or rep.state != State.COMPLETED:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            return None
        if not os.path.lexists(self.layout.completed / name):
            return None  # recorded, not yet filed (the entry is written before the move)
        return rep

    # -- one digest in flight at a time -----------------------------------------------

    def _markers(self, digest: str) -> list[tuple[int, str, Path]]:
        found = []
        for folder in self.layout.instance_folders():
            marker = folder / DIGESTS / digest
            if marker.exists() and instance.is_dead(folder, self.lease_seconds):
                continue  # its claims are about to be recovered; its marker means nothing
            with contextlib.suppress(FileNotFoundError):
                found.append((marker.stat().st_mtime_ns, folder.name, marker))
        return sorted(found)

    def acquire(self, digest: str, lease_folder: Path) -> Path | None:
        """Mark `digest` as running here; None when another video with it runs first.

        Every contender orders the markers the same way (oldest first, then by instance
        name), so exactly one goes ahead; a dead instance's marker vanishes with its
        folder when its claims are recovered."""
        mine = lease_folder / DIGESTS / digest
        with self._lock:
            if mine.exists():
                return None  # another worker of this instance runs this digest
            mine.parent.mkdir(parents=True, exist_ok=True)
            mine.touch()
        first = self._markers(digest)
        if first and first[0][2] == mine:
            return mine
        with contextlib.suppress(FileNotFoundError):
            mine.unlink()
        return None

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
