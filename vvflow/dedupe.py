"""Content identity: a video whose bytes were already processed runs no stage again.

Two videos can only have the same content if they have the same size, so a claimed
video is hashed (SHA-256, streamed, in the worker) only when a completed video of
exactly its size exists, and then at most once, the digest kept in its report. A
video of a size never seen before is never read by vvflow at all (a sparse 100 GiB
file costs nothing).

The index under `<root>/index/` answers a lookup in a few small reads, however many
originals share a size (fixed-size camera segments all do): `hashed/<size>` says that
originals of that size exist, `sha256/<digest>` names those of that content, and
`size/<size>/<key>` names an original of that size whose digest is not known yet (its
size was new when it ran; an index written before the digest index is all of this
form); the first lookup of that size hashes each such original once and moves it to
`sha256/`. The index is only a cache of `reports/`: a match is checked against its
report and its file in completed/ before it is believed, a wrong entry is dropped, and
a missing index is rebuilt from the reports. While a video is running, a marker
`processing/<instance>/.sizes/<size>-<key>` says so and where its file is; a video of
the same size compares digests with it, and one of the same content waits for the
earlier one instead of running beside it.

A duplicate's outputs are its original's, with only the paths derived from the
original (its video, its outputs) made its own where they are whole JSON values: a
field that happens to equal the video's name or stem is the stage's data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vvflow import instance, logs, report
from vvflow.atomicfs import makedirs, write_atomic
from vvflow.errors import Cancelled, StorageFailed, is_storage_error
from vvflow.events import Event
from vvflow.layout import (
    BUILT,
    BY_DIGEST,
    BY_SIZE,
    DUPLICATES,
    HASHED,
    INDEX,
    SIZES,
    Claim,
    Layout,
    State,
    split_name,
)
from vvflow.pipeline import publish, publish_dir
from vvflow.report import StageStatus

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
    """Where to find the completed originals of a content: `index/sha256/<digest>` lists
    their names, `index/hashed/<size>` says that some are of that size, and
    `index/size/<size>/<key>` names an original of that size never hashed yet (the
    whole index was of that form before 0.x; such entries are hashed and moved on the
    first lookup of their size). Reports hold the truth; this is their cache."""

    def __init__(self, layout: Layout, liveness: instance.Liveness | None = None) -> None:
        self.layout = layout
        #: The owner's memory of the other instances (which of them are dead).
        self.liveness = liveness or instance.Liveness(60.0)
        self.folder = layout.root / INDEX
        self.by_size = self.folder / BY_SIZE
        self.hashed = self.folder / HASHED
        self.by_digest = self.folder / BY_DIGEST
        self.duplicates = self.folder / DUPLICATES
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
                # A cache: an entry lost to a power cut costs a match, not a video.
                self.record(rep.name, rep.identity.size, rep.sha256, durable=False)
                originals += 1
            else:
                self.record_duplicate(rep.name)
        makedirs(self.folder)
        (self.folder / BUILT).touch()
        return originals

    def record(
        self,
        name: str,
        size: int,
        digest: str | None = None,
        *,
        tmp_dir: Path | None = None,
        durable: bool = True,
    ) -> None:
        """Index a completed original, by its digest when it is known. `tmp_dir` (the
        instance's work folder) keeps the temporary files of a crashed write where
        recovery cleans them."""
        unhashed = self.by_size / str(size) / _key(name)
        if digest is None:
            data = json.dumps({"name": name}, ensure_ascii=True).encode()
            makedirs(unhashed.parent)
            write_atomic(unhashed, data, tmp_dir=tmp_dir, durable=durable)
            return
        # The size's marker first: a lookup that sees neither it nor an unhashed entry
        # of that size skips hashing, so one of them must be there at every moment.
        makedirs(self.hashed)
        (self.hashed / str(size)).touch()
        names = self._names(digest)
        if name not in names:
            self._write_names(digest, [*names, name], tmp_dir=tmp_dir, durable=durable)
        with contextlib.suppress(FileNotFoundError):
            unhashed.unlink()

    def record_duplicate(self, name: str) -> None:
        makedirs(self.duplicates)
        report.report_path(self.duplicates, name).touch()

    def duplicate_count(self) -> int:
        try:
            return sum(1 for e in os.scandir(self.duplicates) if not e.name.startswith("."))
        except FileNotFoundError:
            return 0

    def _names(self, digest: str) -> list[str]:
        """The names `index/sha256/<digest>` lists; none when it is absent or garbage."""
        try:
            names = json.loads((self.by_digest / digest).read_bytes())["names"]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError):
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            with contextlib.suppress(FileNotFoundError):
                (self.by_digest / digest).unlink()
            return []
        return names

    def _write_names(
        self, digest: str, names: list[str], *, tmp_dir: Path | None = None, durable: bool = True
    ) -> None:
        # Two originals of one content recorded at the very same moment may lose one
        # name here: a cache miss (the other still answers), never a false match.
        path = self.by_digest / digest
        if not names:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        makedirs(self.by_digest)
        data = json.dumps({"names": names}, ensure_ascii=True).encode()
        write_atomic(path, data, tmp_dir=tmp_dir, durable=durable)

    # -- looking up ----------------------------------------------------------------

    def find(
        self, size: int, digest: Callable[[], str], *, exclude: str, cancel: threading.Event
    ) -> report.Report | None:
        """The completed original with the content of a claimed video of `size` bytes
        (other than `exclude`), or None; `digest()` gives the claimed video's digest and
        is called only when a completed original of that size exists. Reads the few
        entries of that digest, however many originals share the size."""
        if not self._size_known(size):
            return None
        mine = digest()
        self._hash_unhashed(size, cancel)
        for name in self._names(mine):
            if name != exclude and (rep := self._believe(name, size, mine)) is not None:
                return rep
        return None

    def _size_known(self, size: int) -> bool:
        """Whether a completed original of `size` bytes may exist (then hashing pays)."""
        if (self.hashed / str(size)).exists():
            return True
        try:
            with os.scandir(self.by_size / str(size)) as entries:
                return any(not e.name.startswith(".") for e in entries)
        except FileNotFoundError:
            return False

    def _hash_unhashed(self, size: int, cancel: threading.Event) -> None:
        """Move the originals of `size` bytes never hashed to the digest index, hashing
        each (once: the digest goes to its report) unless its report has the digest."""
        try:
            with os.scandir(self.by_size / str(size)) as it:
                entries = [Path(e.path) for e in it if not e.name.startswith(".")]
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                name = json.loads(entry.read_bytes())["name"]
                if not isinstance(name, str):
                    raise TypeError(name)
            except FileNotFoundError:
                continue  # moved meanwhile by another lookup
            except (OSError, ValueError, KeyError, TypeError):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                continue
            rep = report.load(self.layout.report_path(name))
            if rep is None or rep.state != State.COMPLETED or rep.duplicate_of is not None:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()  # a crash mid-write, a video removed or rerun
                continue
            if not self._filed(rep):
                continue  # recorded, not yet filed (entries are written before the move)
            try:
                self.record(name, size, self.digest_of(rep, cancel), durable=False)
            except OSError:
                continue  # unreadable now, or no room for the entry: left for a later lookup

    def _filed(self, rep: report.Report) -> bool:
        """Whether completed/ holds the very file `rep` describes (not a replacement)."""
        try:
            st = os.lstat(self.layout.completed / rep.name)
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == (rep.identity.size, rep.identity.mtime_ns)

    def _believe(self, name: str, size: int, digest: str) -> report.Report | None:
        """The report of the completed original `name` if it has this content and its
        file is in completed/; an entry its report contradicts is dropped."""
        rep = report.load(self.layout.report_path(name))
        if (
            rep is None
            or rep.state != State.COMPLETED
            or rep.duplicate_of is not None
            or rep.sha256 != digest
            or rep.identity.size != size
        ):
            with contextlib.suppress(OSError):
                self._write_names(digest, [n for n in self._names(digest) if n != name])
            return None
        return rep if self._filed(rep) else None

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
        marker.parent.mkdir(exist_ok=True)  # never parents: see atomicfs._staged_move
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
        marker's age, then instance name, then marker name: every contender orders them
        the same way, so the earliest never waits and exactly one of the same content
        runs). The names break ties: two markers written within one tick of the
        filesystem's clock (a few ms on ext4) have equal mtimes, and with only the
        instance name to tell them apart, two workers of one instance both ran."""
        try:
            own = (mine.stat().st_mtime_ns, mine.parent.parent.name, mine.name)
        except FileNotFoundError:
            return False
        for folder in self.layout.instance_folders():
            if self.liveness.is_dead(folder):
                continue  # its claims are about to be recovered; its markers mean nothing
            for marker in (folder / SIZES).glob(f"{size}-*"):
                if marker == mine:
                    continue
                try:
                    order = (marker.stat().st_mtime_ns, folder.name, marker.name)
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


@dataclass(frozen=True)
class DerivedPaths:
    """The paths derived from an original that its duplicate's outputs name as its own:
    the original's video as its stages saw it (`processing/<instance>/<name>`, in
    whichever instance ran it) and its outputs (absolute and relative to the root),
    mapped to the duplicate's. Keyframes and other files a stage wrote beside its output
    are not copied, so paths to them keep naming the original's, which exist."""

    claim_folders: frozenset[str]
    old_name: str
    new_video: str
    outputs: dict[str, str]

    @classmethod
    def of(
        cls,
        root: Path,
        processing: Path,
        names: tuple[str, Path],
        outputs: list[tuple[Path, Path]],
    ) -> DerivedPaths:
        """`names`: the original's name and the duplicate's claimed file; `outputs`:
        pairs of (the original's output, the duplicate's), both under `root`."""
        roots = {root, root.resolve()}  # a stage may write the root's real path
        mapping = {}
        for old, new in outputs:
            mapping[os.path.relpath(old, root)] = os.path.relpath(new, root)
            for base in roots:
                mapping[str(base / old.relative_to(root))] = str(base / new.relative_to(root))
        folders = {str(base / processing.relative_to(root)) for base in roots}
        old_name, new_video = names
        return cls(frozenset(folders), old_name, str(new_video), mapping)

    def rename(self, value: str) -> str:
        """`value` as the duplicate's when it is, whole, a path derived from the
        original; any other string (a name, a stem, a sentence) as it is."""
        if value in self.outputs:
            return self.outputs[value]
        instance_folder, sep, name = value.rpartition("/")
        if sep and name == self.old_name:
            folder, _, instance = instance_folder.rpartition("/")
            if folder in self.claim_folders and instance and not instance.startswith("."):
                return self.new_video
        return value


def rewrite_strings(data: Any, rename: Callable[[str], str]) -> Any:
    """`data` with every string value passed through `rename`; keys are left alone."""
    if isinstance(data, str):
        return rename(data)
    if isinstance(data, list):
        return [rewrite_strings(item, rename) for item in data]
    if isinstance(data, dict):
        return {key: rewrite_strings(value, rename) for key, value in data.items()}
    return data


def derive_output(source: Path, tmp: Path, paths: DerivedPaths) -> None:
    """Make `tmp` the duplicate's version of the original's output `source`: a JSON
    output with the paths derived from the original made the duplicate's, else a hard
    link (a copy where links are not possible)."""
    raw = source.read_bytes()
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        document = None
    if document is not None:
        rewritten = rewrite_strings(document, paths.rename)
        if rewritten != document:
            try:
                text = json.dumps(rewritten, indent=2, ensure_ascii=False).encode()
            except UnicodeEncodeError:
                # A path that is not valid UTF-8 (kept as surrogate escapes) can only
                # be written as JSON escapes.
                text = json.dumps(rewritten, indent=2, ensure_ascii=True).encode()
            tmp.write_bytes(text + b"\n")
            return
    try:
        os.link(source, tmp)
    except OSError:
        tmp.write_bytes(raw)


class ClaimContent:
    """The content identity of one claimed video: the completed original it duplicates,
    if any, its outputs made the duplicate's, and its entry in the index once it is
    completed. While it runs, a marker in its instance's folder says that a video of
    its size runs there (`marker`, released by `release`)."""

    def __init__(
        self,
        index: ContentIndex,
        claim: Claim,
        rep: report.Report,
        save: report.Saver,
        *,
        lease_folder: Path,
        output_paths: Callable[[str, str], dict[str, Path]],
        cancel: threading.Event,
        guard: Callable[[], None],
        output_dirs: Callable[[str, str], dict[str, Path]] = lambda name, stem: {},
    ) -> None:
        self.index = index
        self.layout = index.layout
        self.claim = claim
        self.rep = rep
        self.save = save
        self.lease_folder = lease_folder
        #: (name, stem) -> stage name -> the final path of that stage's output.
        self.output_paths = output_paths
        #: (name, stem) -> stage name -> the final path of that stage's folder output.
        self.output_dirs = output_dirs
        self.cancel = cancel
        #: Raises unless the claim is still this instance's, unchanged (Worker._guard).
        self.guard = guard
        #: This video's running marker, once no original was found.
        self.marker: Path | None = None

    def find_original(self) -> report.Report | None:
        """Find a completed video with the same content, hashing this one (once: the
        digest is kept in its report) only when a video of its very size is completed
        or running. While an earlier video of the same content runs, wait for it.
        Returns the original; without one, this video's running marker is `marker`."""
        claim, size = self.claim, self.claim.identity.size
        marker: Path | None = None
        waiting_since: float | None = None
        try:
            while True:
                original = self.index.find(
                    size, self._digest, exclude=claim.name, cancel=self.cancel
                )
                if original is not None:
                    self.index.release(marker)
                    return original
                if marker is None:
                    marker = self.index.register(size, claim.path, self.lease_folder)
                    continue  # look again: one may have completed meanwhile
                if not self.index.others_running(size, marker):
                    self.marker = marker
                    return None
                digest = self._digest()
                if not self.index.earlier_same_content(size, marker, digest):
                    self.marker = marker
                    return None
                if waiting_since is None:
                    waiting_since = time.monotonic()
                    self.save()
                    logs.event(Event.WAITING_FOR_ORIGINAL, video=claim.name, size=size)
                if self.cancel.wait(0.2):
                    raise Cancelled("shutdown requested while waiting for the original")
                self.guard()
        except BaseException:
            self.index.release(marker)
            raise

    def _digest(self) -> str:
        rep = self.rep
        if rep.sha256 is None:
            started = time.monotonic()
            rep.sha256 = sha256_file(self.claim.path, self.cancel)
            self.save()
            logs.event(
                Event.HASHED,
                video=self.claim.name,
                sha256=rep.sha256,
                size=self.claim.identity.size,
                duration_s=time.monotonic() - started,
            )
        return rep.sha256

    def reuse(self, original: report.Report, workspace: Path) -> bool:
        """Give the duplicate the original's outputs; False (run the stages) when one of
        them is gone."""
        claim, rep, root = self.claim, self.rep, self.layout.root
        started = time.monotonic()
        original_stem = split_name(original.name)[0]
        sources = self.output_paths(original.name, original_stem)
        targets = self.output_paths(claim.name, claim.stem)
        source_dirs = self.output_dirs(original.name, original_stem)
        target_dirs = self.output_dirs(claim.name, claim.stem)
        if not all(path.is_file() for path in sources.values()) or not all(
            path.is_dir() and not path.is_symlink() for path in source_dirs.values()
        ):
            return False
        paths = DerivedPaths.of(
            root,
            self.layout.processing,
            (original.name, claim.path),
            [(sources[stage], targets[stage]) for stage in sources]
            + [(source_dirs[stage], target_dirs[stage]) for stage in source_dirs],
        )
        for stage, source_dir in source_dirs.items():
            self.guard()
            publish_dir(source_dir, target_dirs[stage], root, staging=workspace)
            rep.stage(stage).output_dir = os.path.relpath(target_dirs[stage], root)
        for stage, source in sources.items():
            tmp = workspace / targets[stage].name
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            derive_output(source, tmp, paths)
            self.guard()
            publish(tmp, targets[stage], root)
            record = rep.stage(stage)
            record.status = StageStatus.SUCCEEDED
            record.output = os.path.relpath(targets[stage], root)
            record.identity = rep.identity
            record.error = None
        rep.duplicate_of = original.name
        self.save()
        logs.event(
            Event.DUPLICATE,
            video=claim.name,
            duplicate_of=original.name,
            sha256=rep.sha256,
            duration_s=time.monotonic() - started,
        )
        return True

    def record(self, workspace: Path) -> None:
        """Index the completed video, after its report says so and before its move: a
        lookup believes an entry only when the report agrees (one written earlier would
        be dropped by a concurrent lookup), and a crash after the move must not leave
        an original unindexed. The index is a cache: a failed write only loses a
        duplicate match, except on a storage error, which files nothing (StorageFailed)."""
        claim, rep = self.claim, self.rep
        try:
            if rep.duplicate_of is None:
                self.index.record(claim.name, claim.identity.size, rep.sha256, tmp_dir=workspace)
            else:
                self.index.record_duplicate(claim.name)
        except OSError as exc:
            if is_storage_error(exc):
                raise StorageFailed(f"cannot index {claim.name!r}: {exc.strerror}") from None
            logs.event(Event.REPORT_UNWRITABLE, level=logging.ERROR, video=claim.name,
                       error=f"cannot index {claim.name!r}: {exc.strerror}")  # fmt: skip

    def release(self) -> None:
        """Say that this video runs no more (its marker goes)."""
        self.index.release(self.marker)
