"""The storage root's folders, and the only code that moves videos between them.

Every state change is one no-overwrite rename on one filesystem. The folder a video
sits in is its state; reports only say why.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from vvflow import atomicfs, logs, report
from vvflow.errors import Blocked, LayoutError
from vvflow.events import Event
from vvflow.report import StageStatus

# -- every name vvflow gives under the storage root ---------------------------------
# (The state folders are `State`; the built-in outputs `OUTPUT_DIRS`. Inside a move
# journal and a `tmp_dir`, atomicfs names its own files: it knows no root.)

#: `<root>/input/`: the state folders, one per `State`.
INPUT = "input"
#: `<root>/reports/<name>.json`: one report per video.
REPORTS = "reports"
#: `<root>/input/.paused`: the pause file (JSON: since, by, reason).
PAUSED = ".paused"
#: `processing/<instance>/.heartbeat`: the instance's lease, rewritten every lease / 4.
HEARTBEAT = ".heartbeat"
#: `processing/<instance>/.health`: the health record of a `vvflow run`.
HEALTH = ".health"
#: `processing/<instance>/.progress`: the progress its stages report.
PROGRESS = ".progress"
#: `processing/<instance>/.moves/`: the move journal (see atomicfs).
MOVES = ".moves"
#: `processing/<instance>/.blocked`: the pending files it may not move, and why.
BLOCKED = ".blocked"
#: `processing/<instance>/.sizes/<size>-<key>`: a video of that size runs there (dedupe).
SIZES = ".sizes"
#: `processing/<instance>/.probe-<hex>/`: the filesystem probe of a start.
PROBE_PREFIX = ".probe-"
#: `processing/.doctor-<random>/`: the scratch folder of `vvflow doctor`.
DOCTOR_PREFIX = ".doctor-"
#: `processing/<instance>/.work/<name>/`: a claimed video's workspace.
WORK = ".work"
#: `.work/<name>/.stage.pid`: "<pid> <start> <run token>" while a stage runs.
STAGE_PID = ".stage.pid"
#: `.work/<name>/.publish-<hex>`: an output copied there, then renamed into place.
PUBLISH_PREFIX = ".publish-"
#: `<stage>_dir`: the key of a stage's folder output among a video's outputs (and its
#: placeholder for later stages).
DIR_SUFFIX = "_dir"
#: `<root>/outbox/`: notifications waiting for delivery, one file per (event, target);
#: `outbox/rejected/` holds those a receiver refused, each with its answer.
OUTBOX = "outbox"
#: `processing/<instance>/.notify/`: notifications staged before their video is filed
#: (`staged/`) and those this instance is delivering now (`delivering/`).
NOTIFY = ".notify"
#: `<root>/index/`: caches of what reports/ and the state folders say, rebuilt if missing.
INDEX = "index"
#: `index/names/<stem key>/<name key>`: every name vvflow gave a video, by casefolded stem.
NAMES = "names"
#: `index/files/<inode>`: the name a failed or returned video was filed under.
FILES = "files"
#: `index/size/<size>/<key>`: a completed original of that size, never hashed (dedupe).
BY_SIZE = "size"
#: `index/hashed/<size>`: completed originals of that size exist (dedupe).
HASHED = "hashed"
#: `index/sha256/<digest>`: the completed originals of that content (dedupe).
BY_DIGEST = "sha256"
#: `index/duplicates/<name>.json`: a completed duplicate (dedupe).
DUPLICATES = "duplicates"
#: `index/.built`, `index/names/.built`: that index was built whole from the reports.
BUILT = ".built"

#: Names that are never candidates, whatever their extension: partial downloads and
#: editor or copy-tool temporaries.
TEMP_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", "~")
_NAME_MAX = 255


class State(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


#: Output folders of the built-in pipeline, created with the layout.
OUTPUT_DIRS = ("analytic", "summaries", "loglines", REPORTS)


@dataclass(frozen=True)
class Candidate:
    """A file in pending/ that may be claimed once it is stable."""

    name: str
    identity: report.Identity
    mtime: float
    #: Its place in line: (0 for a video recovery returned, else 1; arrival in pending/
    #: in ns). The stages serve the videos in flight in this order.
    order: tuple[int, int] = (1, 0)


@dataclass(frozen=True)
class Ignored:
    name: str
    reason: str


@dataclass(frozen=True)
class Claim:
    """A video this instance holds in `processing/<instance>/`."""

    path: Path
    name: str
    original_name: str
    identity: report.Identity
    order: tuple[int, int] = (1, 0)

    @property
    def stem(self) -> str:
        return split_name(self.name)[0]


def index_key(text: str) -> str:
    """A file name for an index entry about `text`, safe whatever bytes `text` holds."""
    return hashlib.sha256(os.fsencode(text)).hexdigest()[:32]


def _read_name(entry: Path) -> str | None:
    """The name an index entry holds; None when it is unreadable."""
    data = atomicfs.read_regular(entry)
    if data is None:
        return None
    try:
        name = json.loads(data)["name"]
    except (ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def split_name(name: str) -> tuple[str, str]:
    """('clip.final', '.mp4') for 'clip.final.mp4'."""
    stem, ext = os.path.splitext(name)
    return (stem, ext) if stem else (name, "")


def name_reason(name: str, extensions: Iterable[str]) -> str | None:
    """Why a file name is not a candidate, or None when it may be one."""
    lower = name.lower()
    if name.startswith("."):
        return "hidden name"
    if lower.endswith(TEMP_SUFFIXES):
        return "temporary name (a copy in progress?)"
    ext = split_name(name)[1].lower()
    if ext not in set(extensions):
        return f"not a video extension ({ext or 'none'})"
    return None


#: The longest stem a claimed video keeps, in bytes: what is derived from it (outputs
#: such as `<stem>.analytic.json`, keyframe folders, temporary names) must still fit the
#: 255 bytes a file name may have.
STEM_MAX = 220


def _fit(
    stem: str, suffix: str, ext: str, fits: Callable[[str, str], bool] = lambda n, s: True
) -> str:
    """`<stem><suffix><ext>`, the stem shortened (at a character boundary) until the name
    and everything derived from it fit; suffix and extension are kept."""
    raw = os.fsencode(stem)
    limit = min(
        len(raw), STEM_MAX - len(os.fsencode(suffix)), _NAME_MAX - len(os.fsencode(suffix + ext))
    )
    while True:
        cut = max(limit, 1)
        while 0 < cut < len(raw) and (raw[cut] & 0xC0) == 0x80:
            cut -= 1  # not inside a UTF-8 character
        short = os.fsdecode(raw[:cut]) if limit < len(raw) else stem
        candidate_stem = short + suffix
        if limit <= 1 or fits(candidate_stem + ext, candidate_stem):
            return candidate_stem + ext
        limit -= 1


def _remove(path: Path) -> None:
    """Delete an output, a file or a folder (folder outputs are published whole)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _carry(source: Path, target: Path, reported_at: int) -> bool:
    """Move an output to the path derived for a video's new name; False when it is
    gone or was written after the report that records it (then it is another video's).
    Whatever is at `target` is stale: the new stem is this video's."""
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        return False
    if st.st_mtime_ns > reported_at:
        return False
    if source == target:
        return True
    atomicfs.makedirs(target.parent)
    try:
        same = os.path.samefile(source, target)  # a case-insensitive filesystem
    except OSError:
        same = False
    if not same:
        _remove(target)
    os.rename(source, target)
    return True


class Layout:
    """The folders under one storage root."""

    def __init__(
        self,
        root: Path,
        extensions: Iterable[str],
        output_paths: Callable[[str, str], dict[str, Path]] | None = None,
    ) -> None:
        self.root = root
        self.extensions = tuple(extensions)
        #: (name, stem) -> stage name -> the final path of that stage's output, and
        #: `<stage>_dir` -> its folder output (the pipeline's `all_outputs`); names must
        #: fit NAME_MAX, outputs follow a rename.
        self.output_paths = output_paths
        self.input = root / INPUT
        self.pending = self.input / State.PENDING
        self.processing = self.input / State.PROCESSING
        self.completed = self.input / State.COMPLETED
        self.failed = self.input / State.FAILED
        self.reports = root / REPORTS
        self.names = root / INDEX / NAMES
        self.files = root / INDEX / FILES
        self.outbox = root / OUTBOX
        self._claim_lock = threading.Lock()

    def folder(self, state: State) -> Path:
        return self.input / state

    @property
    def pause_file(self) -> Path:
        """`<root>/input/.paused`: while it exists, no instance claims a new video."""
        return self.input / PAUSED

    def paused(self) -> dict[str, Any] | None:
        """The pause record (since, by, reason) while the root is paused, else None. A
        pause file that cannot be read or parsed still pauses: it says "paused"."""
        try:
            st = os.lstat(self.pause_file)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return {"since": None, "by": None, "reason": f"pause file unreadable: {exc.strerror}"}
        data = atomicfs.read_regular(self.pause_file) if stat.S_ISREG(st.st_mode) else None
        try:
            record = json.loads(data) if data is not None else None
        except ValueError:
            record = None
        if not isinstance(record, dict):
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))
            return {"since": since, "by": None, "reason": None}
        return {key: record.get(key) for key in ("since", "by", "reason")}

    def pause(self, by: str, reason: str | None) -> dict[str, Any]:
        """Pause every instance on this root; returns the record (an earlier pause's,
        when the root was paused already)."""
        earlier = self.paused()
        if earlier is not None:
            return earlier
        record: dict[str, Any] = {
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "by": by,
            "reason": reason,
        }
        atomicfs.write_atomic(self.pause_file, json.dumps(record).encode() + b"\n")
        return record

    def resume(self) -> bool:
        """Lift the pause; False when the root was not paused."""
        try:
            self.pause_file.unlink()
        except FileNotFoundError:
            return False
        atomicfs.fsync_dir(self.input)
        return True

    def ensure(self, extra: Iterable[Path] = ()) -> None:
        """Create every folder, then refuse a root split across filesystems."""
        try:
            for state in State:
                atomicfs.makedirs(self.folder(state))
            for name in OUTPUT_DIRS:
                atomicfs.makedirs(self.root / name)
            atomicfs.makedirs(self.outbox)
            for path in extra:
                atomicfs.makedirs(path)
        except OSError as exc:
            raise LayoutError(f"cannot create {exc.filename}: {exc.strerror}") from None
        self.check_one_filesystem(extra)

    def check_one_filesystem(self, extra: Iterable[Path] = ()) -> None:
        base = self.input.stat().st_dev
        folders = [self.folder(s) for s in State] + [self.root / n for n in OUTPUT_DIRS]
        folders.append(self.outbox)
        for path in [self.input, *folders, *extra]:
            if path.is_symlink():
                # Following it would claim (move) files of a folder outside the root.
                raise LayoutError(
                    f"{path} is a symlink: vvflow never follows symlinks under the storage "
                    "root; make it a real folder (the root itself may be a symlink)"
                )
        for path in [*folders, *extra]:
            if path.stat().st_dev != base:
                raise LayoutError(
                    f"{path} is on a different filesystem than {self.input}: every folder of "
                    "the storage root must be on one filesystem, because each state change "
                    "is a rename and a rename cannot cross filesystems"
                )

    # -- what is where -------------------------------------------------------------

    def scan_pending(self) -> tuple[list[Candidate], list[Ignored]]:
        """The candidates at the top of pending/ and the entries ignored, with reasons.

        Symlinks are judged by the link itself and never followed.
        """
        candidates: list[Candidate] = []
        ignored: list[Ignored] = []
        try:
            entries = list(os.scandir(self.pending))
        except FileNotFoundError:
            return candidates, ignored
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            reason = self.entry_reason(entry.name, st)
            if reason is None:
                candidates.append(Candidate(entry.name, report.Identity.of(st), st.st_mtime))
            else:
                ignored.append(Ignored(entry.name, reason))
        return candidates, ignored

    def pending_names(self) -> Iterator[str]:
        """Names at the top of pending/, one at a time (100,000 of them cost no list)."""
        try:
            with os.scandir(self.pending) as it:
                for entry in it:
                    yield entry.name
        except FileNotFoundError:
            return

    def entry_reason(self, name: str, st: os.stat_result) -> str | None:
        if stat.S_ISLNK(st.st_mode):
            return "symlink (never followed; move the file itself into pending/)"
        if stat.S_ISDIR(st.st_mode):
            return "folder (only files at the top of pending/ are videos)"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file (fifo, socket or device)"
        reason = name_reason(name, self.extensions)
        if reason is None and st.st_size == 0:
            return "zero-byte file (waiting for its content)"
        return reason

    def instance_folders(self) -> list[Path]:
        """The instances' folders in processing/ (hidden names are scratch folders of
        `doctor`, never an instance's)."""
        try:
            return sorted(
                p
                for p in self.processing.iterdir()
                if not p.name.startswith(".") and p.is_dir() and not p.is_symlink()
            )
        except FileNotFoundError:
            return []

    def claims_in(self, folder: Path) -> list[Path]:
        """Everything at the top of an instance folder except its own hidden bookkeeping."""
        try:
            return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def files_in(self, state: State) -> Iterator[str]:
        """Names of the videos filed under completed/ or failed/."""
        try:
            with os.scandir(self.folder(state)) as it:
                for entry in it:
                    if not entry.name.startswith("."):
                        yield entry.name
        except FileNotFoundError:
            return

    def report_path(self, name: str) -> Path:
        return report.report_path(self.reports, name)

    # -- names ---------------------------------------------------------------------
    #
    # A video's outputs are derived from its stem, so two videos whose stems are equal
    # ignoring case (`clip.Mp4`, `clip.mkv`, `CLIP.mkv`) would write the same outputs
    # (on a case-insensitive share even the same report). Stems are compared casefolded,
    # against the claims in processing/ (a few names, listed) and the names index, which
    # records every name vvflow gave a video before any report is written under it: one
    # small folder is read per check, whatever the number of videos in completed/.

    def _name_entry(self, name: str) -> Path:
        return self.names / index_key(split_name(name)[0].casefold()) / index_key(name)

    def remember_name(self, name: str, tmp_dir: Path | None = None) -> None:
        """Record that a video is called `name`. Done before a report is written under
        that name, so that `stem_taken` knows every report."""
        entry = self._name_entry(name)
        if os.path.lexists(entry):
            return
        atomicfs.makedirs(entry.parent)
        data = json.dumps({"name": name}, ensure_ascii=True).encode()
        atomicfs.write_atomic(entry, data, tmp_dir=tmp_dir, durable=False)

    def ensure_names(self, tmp_dir: Path | None = None) -> bool:
        """Build the names index from reports/, completed/ and failed/ when it is missing
        (a root from before it existed, or index/ deleted); True when it was built."""
        if (self.names / BUILT).exists():
            return False
        names = set(self.files_in(State.COMPLETED)) | set(self.files_in(State.FAILED))
        try:
            entries = list(os.scandir(self.reports))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(".json"):
                continue
            name = entry.name[: -len(".json")]
            if self.report_path(name).name != entry.name:  # a shortened, hashed file name
                rep = report.load(Path(entry.path))
                if rep is None:
                    continue
                name = rep.name
            names.add(name)
        for name in names:
            self.remember_name(name, tmp_dir)
        atomicfs.makedirs(self.names)
        (self.names / BUILT).touch()
        return True

    def _names_of_stem(self, folded: str) -> list[str]:
        """The names the index records whose casefolded stem is `folded`."""
        try:
            with os.scandir(self.names / index_key(folded)) as it:
                paths = [e.path for e in it if not e.name.startswith(".")]
        except FileNotFoundError:
            return []
        names = (_read_name(Path(path)) for path in paths)
        return [n for n in names if n is not None and split_name(n)[0].casefold() == folded]

    def stem_taken(
        self, stem: str, ext: str, identity: report.Identity, *, mine: Path | None = None
    ) -> bool:
        """Whether another video owns `stem`, ignoring case, and so its output paths.

        `mine` is the path of our own claim, which does not count against itself."""
        folded = stem.casefold()
        # processing/ first: a video filed from there meanwhile is then in the index.
        for folder in self.instance_folders():
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        if (
                            not entry.name.startswith(".")
                            and split_name(entry.name)[0].casefold() == folded
                            and Path(entry.path) != mine
                        ):
                            return True
            except OSError as exc:
                # Gone meanwhile (recovered); ESTALE: a network client's handle of a
                # folder another client deleted.
                if exc.errno not in (errno.ENOENT, errno.ESTALE):
                    raise
                continue
        candidate = stem + ext
        return any(self._name_blocks(n, candidate, identity) for n in self._names_of_stem(folded))

    def _name_blocks(self, name: str, candidate: str, identity: report.Identity) -> bool:
        """Whether the video once called `name` still owns its stem against the file
        `identity` arriving as `candidate`: a file is filed under that name, or the
        report of another file says completed (its outputs are that video's even if
        the file was deleted), or waits with its file in pending/. A failed or pending
        report whose video is gone blocks nothing: a new file takes the name afresh."""
        for folder in (self.completed, self.failed):
            try:
                st = os.lstat(folder / name)
            except FileNotFoundError:
                continue
            if report.Identity.of(st) != identity:
                return True
        rep = report.load(self.report_path(name))
        if rep is None or rep.identity == identity:
            return False
        if rep.state == State.COMPLETED:
            return True
        return name != candidate and os.path.lexists(self.pending / name)

    def free_name(self, name: str, identity: report.Identity) -> str:
        """`name`, or `<stem>-N<ext>` with the first N whose stem no other video owns."""
        stem, ext = split_name(name)
        candidate = _fit(stem, "", ext, self._fits)
        number = 1
        while self.stem_taken(split_name(candidate)[0], ext, identity):
            number += 1
            candidate = _fit(stem, f"-{number}", ext, self._fits)
        return candidate

    def _fits(self, name: str, stem: str) -> bool:
        if self.output_paths is None:
            return True
        paths = self.output_paths(name, stem).values()
        return all(len(os.fsencode(p.name)) <= _NAME_MAX for p in paths)

    # -- a file's history follows the file -------------------------------------------

    def remember_file(self, name: str, identity: report.Identity, tmp_dir: Path) -> None:
        """Record the name the file `identity` is filed under (failed/, or back in
        pending/), so that its history is found when it comes back under another name.
        Keyed by inode alone: all folders are on one filesystem, and a network
        filesystem's device number differs between hosts. A cache: a lost entry only
        costs a rerun, and an entry is believed only when the report's whole identity
        agrees."""
        atomicfs.makedirs(self.files)
        data = json.dumps({"name": name}, ensure_ascii=True).encode()
        entry = self.files / str(identity.inode)
        atomicfs.write_atomic(entry, data, tmp_dir=tmp_dir, durable=False)

    def _own_history(
        self, name: str, identity: report.Identity, journal: Path, tmp_dir: Path
    ) -> report.Report | None:
        """The report of the file `identity` under `name`: found there, or under the
        name it was last filed as, whence it is moved to `name` (see `follow`)."""
        rep = report.load(self.report_path(name))
        if rep is not None and rep.identity == identity:
            return rep
        old = _read_name(self.files / str(identity.inode))
        if old is None or old == name:
            return None
        return self.follow(old, name, identity, journal=journal, tmp_dir=tmp_dir)

    def history(self, claim: Claim, journal: Path, tmp_dir: Path) -> report.Report | None:
        """The report of this very file (its identity), under the claim's name; None
        when it has none.

        When the file comes back under another name than its report's (renamed by
        hand, moved to a free name) that report and its finished outputs follow it.
        Reports of other files under this stem whose videos are gone are dropped with
        their outputs: they describe content that no longer exists."""
        self.remember_name(claim.name, tmp_dir)
        found = self._own_history(claim.name, claim.identity, journal, tmp_dir)
        mine = found.stages.values() if found is not None else ()
        keep = {(self.root / r.output).as_posix().casefold() for r in mine if r.output}
        for name in self._names_of_stem(claim.stem.casefold()):
            self._drop_if_stale(name, claim, keep)
        return found

    def _drop_if_stale(self, name: str, claim: Claim, keep: set[str]) -> None:
        rep = report.load(self.report_path(name))
        if rep is None or rep.identity == claim.identity:
            return
        if name != claim.name:
            if rep.state == State.COMPLETED:
                return
            folders = [self.pending, self.failed, *self.instance_folders()]
            if any(os.path.lexists(folder / name) for folder in folders):
                return  # that video is still here: it keeps its history
        self.discard(name, rep, keep)

    def discard(self, name: str, rep: report.Report, keep: Collection[str] = ()) -> None:
        """Delete the report under `name` and the outputs it records for its own file:
        the content they describe is gone. Paths in `keep` (casefolded) are another
        video's."""
        for record in rep.stages.values():
            if record.identity != rep.identity:
                continue
            for output in (record.output, record.output_dir):
                if output is None:
                    continue
                path = self.root / output
                if path.as_posix().casefold() not in keep:
                    _remove(path)
        with contextlib.suppress(FileNotFoundError):
            self.report_path(name).unlink()

    def follow(
        self, old: str, new: str, identity: report.Identity, *, journal: Path, tmp_dir: Path
    ) -> report.Report | None:
        """Move the history of the file `identity` from the name `old` to `new`: its
        report, and the outputs of the stages that succeeded for it, re-derived for the
        new stem. Returns the moved report, or None when `old` holds no report of that
        file. The report is taken by one no-overwrite rename, so that of several
        processes only one moves it; an output written after that report (by a new
        video that took the old stem) is never taken along."""
        src, dst = self.report_path(old), self.report_path(new)
        rep = report.load(src)
        if rep is None or rep.identity != identity or src == dst:
            return None
        try:
            reported_at = os.stat(src).st_mtime_ns
        except FileNotFoundError:
            return None
        self.remember_name(new, tmp_dir)
        stale = report.load(dst)
        if stale is not None:
            self.discard(new, stale)
        try:
            atomicfs.rename_noreplace(src, dst, journal=journal)
        except (FileNotFoundError, FileExistsError):
            return None  # another process took it, or wrote a report there meanwhile
        targets = self.output_paths(new, split_name(new)[0]) if self.output_paths else {}
        for stage, record in rep.stages.items():
            # The folder output first, then the file: either one gone runs the stage again.
            for field, key in (("output_dir", stage + DIR_SUFFIX), ("output", stage)):
                output, target = getattr(record, field), targets.get(key)
                if output is None:
                    continue
                if (
                    record.status == StageStatus.SUCCEEDED
                    and record.identity == identity
                    and target is not None
                    and _carry(self.root / output, target, reported_at)
                ):
                    setattr(record, field, os.path.relpath(target, self.root))
                    continue
                if record.status == StageStatus.SUCCEEDED:
                    record.status = StageStatus.PENDING  # its output is gone: run it again
                setattr(record, field, None)
        rep.previous_names.append(old)
        rep.name = new
        report.save(dst, rep, tmp_dir=tmp_dir)
        logs.event(
            Event.HISTORY_MOVED,
            video=new,
            previous_name=old,
            outputs_kept=sorted(s for s, r in rep.stages.items() if r.output is not None),
        )
        with contextlib.suppress(OSError):
            self.remember_file(new, identity, tmp_dir)
        return rep

    def _names_in(self, folder: Path, name: str, inode: int | None = None) -> Iterator[Path]:
        """`folder/name`, then `<stem>-N<ext>` for N = 2, 3, ...: the names a move into
        a shared folder tries in order, skipping those seen taken by another file (the
        move itself never overwrites one that is taken meanwhile). A name that looks
        like the moving file `inode` itself is tried: on a network filesystem it is
        likely this client's stale view of where the file was before."""
        stem, ext = split_name(name)
        candidate, number = name, 1
        while True:
            try:
                taken = os.lstat(folder / candidate).st_ino != inode
            except FileNotFoundError:
                taken = False
            if not taken:
                yield folder / candidate
            number += 1
            candidate = _fit(stem, f"-{number}", ext)

    # -- moves ---------------------------------------------------------------------

    def _move(self, src: Path, folder: Path, name: str, journal: Path) -> Path:
        """Move `src` into `folder`, as `name` or, if taken there, a free variant of it."""
        if folder.is_symlink():
            # Swapped in while running: following it would move the video out of the root.
            raise LayoutError(f"{folder} has become a symlink; not moving {name!r} into it")
        try:
            inode: int | None = os.lstat(src).st_ino
        except FileNotFoundError:
            inode = None
        return atomicfs.move(src, self._names_in(folder, name, inode), journal=journal)

    def claim(self, candidate: Candidate, lease_folder: Path) -> Claim | None:
        """Rename a stable candidate into `lease_folder`; None when it changed or another
        instance claimed it first. The rename is the lock."""
        src = self.pending / candidate.name
        journal = lease_folder / MOVES
        try:
            self.ensure_names(lease_folder)  # one stat, unless index/ was deleted
        except OSError:
            return None  # no claim while names could be missed; the next scan tries again
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or report.Identity.of(st) != candidate.identity:
            return None
        dst = lease_folder / candidate.name
        with self._claim_lock:
            while True:
                dst = lease_folder / self.free_name(candidate.name, candidate.identity)
                try:
                    # A plain rename into our own folder: the one primitive that is
                    # exclusive on the source on every filesystem (see atomicfs).
                    atomicfs.take(src, dst)
                except FileNotFoundError:
                    return None
                except FileExistsError:
                    continue
                except PermissionError as exc:
                    key = self.permission_key(candidate.name)
                    if key is None:
                        return None
                    raise Blocked(self._blocked_reason(src, exc), key) from None
                except OSError as exc:
                    if exc.errno == errno.ESTALE:
                        return None  # our folder was deleted by a takeover (network fs)
                    raise
                break
        try:
            after = os.lstat(dst)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ESTALE):
                return None  # taken back already: this instance was frozen, lost its lease
            raise
        if atomicfs.same_file(after, st) and after.st_nlink > st.st_nlink:
            # It gained a name while we took it: another process claimed it too.
            atomicfs.double_move(dst, st.st_nlink, after.st_nlink)
        if not stat.S_ISREG(after.st_mode) or not atomicfs.same_file(after, st):
            # Something was swapped in between the check and the rename (a symlink, a
            # new file): put it back untouched and let the next scan judge it.
            self._move(dst, self.pending, candidate.name, journal)
            return None
        try:
            dst = self._settle_stem(dst, candidate, lease_folder)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ESTALE):
                return None  # taken back meanwhile, as above
            raise
        return Claim(dst, dst.name, candidate.name, report.Identity.of(after), candidate.order)

    def permission_key(self, name: str) -> tuple[int, ...] | None:
        """What decides whether this process may move `pending/<name>`: the file (its
        inode, and its ctime, which every chown, chmod or ACL change moves) and the
        owner and mode of pending/. None when the file is gone."""
        try:
            f = os.lstat(self.pending / name)
            d = os.stat(self.pending)
        except OSError:
            return None
        return f.st_ino, f.st_ctime_ns, d.st_ino, d.st_mode, d.st_uid, d.st_gid

    def _blocked_reason(self, src: Path, exc: OSError) -> str:
        """Why this process may not move `src` out of pending/, and what would let it."""
        uid = os.geteuid()
        where = f"{self.pending.relative_to(self.root)}/"
        try:
            owner = os.lstat(src).st_uid
            folder = os.stat(self.pending)
        except OSError:
            return f"cannot move it out of {where}: {exc.strerror}"
        if folder.st_mode & stat.S_ISVTX and uid not in (0, owner, folder.st_uid):
            # Only a file's owner may move it out of a sticky folder.
            return (
                f"owned by uid {owner}, not vvflow's uid {uid}; {where} is sticky "
                f"({stat.S_IMODE(folder.st_mode):o})"
            )
        return f"vvflow (uid {uid}) may not move it out of {where}: {exc.strerror}"

    def record_blocked(self, folder: Path, blocked: dict[str, tuple[str, int]]) -> None:
        """Keep in an instance's folder the files it may not move (name -> reason,
        inode), for `status`: status may run as another user, who cannot tell."""
        path = folder / BLOCKED
        if not blocked:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        entries = [{"name": n, "reason": r, "inode": i} for n, (r, i) in sorted(blocked.items())]
        atomicfs.write_atomic(path, json.dumps(entries).encode(), tmp_dir=folder, durable=False)

    def blocked_in(self, folder: Path) -> list[tuple[str, str, int]]:
        """(name, reason, inode) of each file an instance recorded it may not move."""
        try:
            entries = json.loads((folder / BLOCKED).read_bytes())
            return [(str(e["name"]), str(e["reason"]), int(e["inode"])) for e in entries]
        except (OSError, ValueError, TypeError, KeyError):
            return []

    def _settle_stem(self, claimed: Path, candidate: Candidate, lease_folder: Path) -> Path:
        """Another instance may have claimed a video with the same stem at the same
        moment (`a.mp4` and `a.mkv`): whoever sees the clash after its own claim moves to
        a fresh name, so both never keep one stem. Within an instance a lock serializes
        claims; this covers instances sharing the root."""
        while True:
            stem, ext = split_name(claimed.name)
            if not self.stem_taken(stem, ext, candidate.identity, mine=claimed):
                return claimed
            with self._claim_lock:
                name = self.free_name(candidate.name, candidate.identity)
                target = lease_folder / name
                try:
                    atomicfs.take(claimed, target)
                except FileExistsError:
                    continue
            claimed = target

    def finish(self, claim: Claim, state: State, lease_folder: Path) -> Path:
        """File a claimed video under completed/, failed/ or back in pending/."""
        journal = lease_folder / MOVES
        if state != State.COMPLETED:
            with contextlib.suppress(OSError):  # a cache: a lost entry costs a rerun
                self.remember_file(claim.name, claim.identity, lease_folder)
        dest = self._move(claim.path, self.folder(state), claim.name, journal)
        if dest.name != claim.name:  # a new file of that name came to pending/ meanwhile
            with contextlib.suppress(OSError):  # its history lost: a rerun
                self.follow(claim.name, dest.name, claim.identity, journal=journal,
                            tmp_dir=lease_folder)  # fmt: skip
        return dest

    def file_claim(self, path: Path, state: State, lease_folder: Path) -> Path:
        """File a file found in `lease_folder` (a claim no worker holds any more) under
        `state`'s folder, keeping its name where it is free."""
        journal = lease_folder / MOVES
        identity = report.Identity.of(os.lstat(path))
        dest = self._move(path, self.folder(state), path.name, journal)
        if dest.name != path.name:  # its history follows it to the free name
            with contextlib.suppress(OSError):
                self.follow(path.name, dest.name, identity, journal=journal,
                            tmp_dir=lease_folder)  # fmt: skip
        return dest

    def retry(
        self, name: str, journal: Path, reset: Callable[[report.Report], None]
    ) -> tuple[Path, bool]:
        """Move a failed video back to pending/ with its history: `reset` edits its
        report first. Under its own name when that is free, else under a free one, its
        report and finished outputs moving to that name before the video does, so no
        report ever waits for a video that is not there. A file replaced in place since
        it failed (same inode, new size or mtime) loses the old content's history and
        starts from scratch under its own name. Returns where it went and whether it
        was such a replaced file."""
        src = self.failed / name
        identity = report.Identity.of(os.lstat(src))
        tmp = journal.parent
        self.ensure_names(tmp)
        rep = report.load(self.report_path(name))
        replaced = rep is not None and rep.identity != identity
        if rep is not None and replaced:
            self.discard(name, rep)
        self._own_history(name, identity, journal, tmp)  # an earlier retry that crashed
        current = name
        while True:
            target = self._free_for_retry(name, identity)
            if target != current:
                self.follow(current, target, identity, journal=journal, tmp_dir=tmp)
                current = target
            rpath = self.report_path(current)
            rep = report.load(rpath)
            if rep is not None and rep.identity == identity:
                reset(rep)
                report.save(rpath, rep, tmp_dir=tmp)
            self.remember_file(current, identity, tmp)
            try:
                atomicfs.rename_noreplace(src, self.pending / current, journal=journal)
            except FileExistsError:
                continue  # another file took that name in pending/ meanwhile
            return self.pending / current, replaced

    def _free_for_retry(self, name: str, identity: report.Identity) -> str:
        stem, ext = split_name(name)
        candidate, number = name, 1
        while os.path.lexists(self.pending / candidate) or self.stem_taken(
            split_name(candidate)[0], ext, identity
        ):
            number += 1
            candidate = _fit(stem, f"-{number}", ext, self._fits)
        return candidate

    # -- recovery ------------------------------------------------------------------

    def take_over(self, folder: Path) -> int:
        """The first step of recovering a dead instance: delete its heartbeat (a paused
        owner that wakes up then knows its lease is gone and writes nothing) and finish
        the moves its journal records. Returns the number of moves repaired. Do this for
        every dead instance before returning any claim: a recoverer that died inside
        its own move left the video under two names, one in another dead folder."""
        with contextlib.suppress(FileNotFoundError):
            (folder / HEARTBEAT).unlink()
        return len(atomicfs.repair_moves(folder / MOVES))

    def return_claims(self, folder: Path, journal: Path) -> list[Path]:
        """Return every claim of a dead instance's folder, taken over (`take_over`), to
        pending/ and delete its temporary files and the folder. Returns the videos
        returned."""
        returned = []
        for path in self.claims_in(folder):
            try:
                identity = report.Identity.of(os.lstat(path))
                dest = self._move(path, self.pending, path.name, journal)
            except FileNotFoundError:
                continue  # another recoverer took it
            except atomicfs.MoveStranded as exc:
                # Under our private name now: finished by our next pass (retry_stranded).
                logs.event(Event.FILING_DEFERRED, level=logging.WARNING, video=path.name,
                           state=State.PENDING.value, error=str(exc))  # fmt: skip
                continue
            returned.append(dest)
            if dest.name != path.name:  # a new file of that name came meanwhile
                with contextlib.suppress(OSError):
                    self.follow(path.name, dest.name, identity, journal=journal,
                                tmp_dir=journal.parent)  # fmt: skip
        self.remove_instance_folder(folder)
        return returned

    def remove_instance_folder(self, folder: Path) -> None:
        """Delete an instance folder's hidden bookkeeping (work folders, move journal,
        heartbeat, health record, size markers) and the folder itself once no claim is
        left in it. Only for a dead instance, or one's own on the way out."""
        # A move cut short holds a file under a private name in the journal: finish it
        # (or give the file back to the folder, as a claim) before the journal goes.
        atomicfs.repair_moves(folder / MOVES)
        for leftover in folder.glob(".*"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    leftover.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()
        atomicfs.fsync_dir(self.processing)
