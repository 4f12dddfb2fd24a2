"""The storage root's folders, and the only code that moves videos between them.

Every state change is one no-overwrite rename on one filesystem. The folder a video
sits in is its state; reports only say why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from vvflow import atomicfs, instance, report
from vvflow.errors import Blocked, LayoutError

#: Names that are never candidates, whatever their extension: partial downloads and
#: editor or copy-tool temporaries.
TEMP_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", "~")
WORK = ".work"
MOVES = ".moves"
#: In an instance folder: the pending files that instance may not move, with the reason.
BLOCKED = ".blocked"
_NAME_MAX = 255


class State(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


#: Output folders of the built-in pipeline, created with the layout.
OUTPUT_DIRS = ("analytic", "summaries", "loglines", "reports")


@dataclass(frozen=True)
class Candidate:
    """A file in pending/ that may be claimed once it is stable."""

    name: str
    identity: report.Identity
    mtime: float


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

    @property
    def stem(self) -> str:
        return split_name(self.name)[0]


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


class Layout:
    """The folders under one storage root."""

    def __init__(
        self,
        root: Path,
        extensions: Iterable[str],
        output_names: Callable[[str, str], Iterable[str]] | None = None,
    ) -> None:
        self.root = root
        self.extensions = tuple(extensions)
        #: (name, stem) -> the file names of a video's outputs, which must fit NAME_MAX.
        self.output_names = output_names
        self.input = root / "input"
        self.pending = self.input / State.PENDING
        self.processing = self.input / State.PROCESSING
        self.completed = self.input / State.COMPLETED
        self.failed = self.input / State.FAILED
        self.reports = root / "reports"
        self._claim_lock = threading.Lock()

    def folder(self, state: State) -> Path:
        return self.input / state

    def ensure(self, extra: Iterable[Path] = ()) -> None:
        """Create every folder, then refuse a root split across filesystems."""
        try:
            for state in State:
                self.folder(state).mkdir(parents=True, exist_ok=True)
            for name in OUTPUT_DIRS:
                (self.root / name).mkdir(parents=True, exist_ok=True)
            for path in extra:
                path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LayoutError(f"cannot create {exc.filename}: {exc.strerror}") from None
        self.check_one_filesystem(extra)

    def check_one_filesystem(self, extra: Iterable[Path] = ()) -> None:
        base = self.input.stat().st_dev
        folders = [self.folder(s) for s in State] + [self.root / n for n in OUTPUT_DIRS]
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
        try:
            return sorted(p for p in self.processing.iterdir() if p.is_dir() and not p.is_symlink())
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

    def _ext_variants(self, ext: str) -> set[str]:
        variants = {ext}
        for e in self.extensions:
            variants.update((e, e.upper()))
        return variants

    def stem_taken(
        self, stem: str, ext: str, identity: report.Identity, *, mine: Path | None = None
    ) -> bool:
        """Whether another video already owns `stem` (and so its output paths).

        `mine` is the path of our own claim, which does not count against itself."""
        variants = self._ext_variants(ext)
        folders = [self.completed, self.failed, *self.instance_folders()]
        for folder in folders:
            for variant in variants:
                path = folder / f"{stem}{variant}"
                if path != mine and os.path.lexists(path):
                    return True
        for variant in variants:
            previous = report.load(self.report_path(f"{stem}{variant}"))
            if previous is not None and previous.identity != identity:
                return True
        return False

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
        if self.output_names is None:
            return True
        return all(len(os.fsencode(n)) <= _NAME_MAX for n in self.output_names(name, stem))

    def _free_in(self, folder: Path, name: str) -> str:
        stem, ext = split_name(name)
        candidate, number = name, 1
        while os.path.lexists(folder / candidate):
            number += 1
            candidate = _fit(stem, f"-{number}", ext)
        return candidate

    # -- moves ---------------------------------------------------------------------

    def _move(self, src: Path, folder: Path, name: str, journal: Path) -> Path:
        """Rename `src` into `folder`, as `name` or, if taken there, a free variant of it."""
        if folder.is_symlink():
            # Swapped in while running: following it would move the video out of the root.
            raise LayoutError(f"{folder} has become a symlink; not moving {name!r} into it")
        while True:
            dst = folder / self._free_in(folder, name)
            try:
                atomicfs.rename_noreplace(src, dst, journal=journal)
            except FileExistsError:
                continue  # lost a race for that name; take the next
            return dst

    def claim(self, candidate: Candidate, lease_folder: Path) -> Claim | None:
        """Rename a stable candidate into `lease_folder`; None when it changed or another
        instance claimed it first. The rename is the lock."""
        src = self.pending / candidate.name
        journal = lease_folder / MOVES
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
                    atomicfs.rename_noreplace(src, dst, journal=journal)
                except FileNotFoundError:
                    return None
                except FileExistsError:
                    continue
                except PermissionError as exc:
                    key = self.permission_key(candidate.name)
                    if key is None:
                        return None
                    raise Blocked(self._blocked_reason(src, exc), key) from None
                break
        after = os.lstat(dst)
        if not stat.S_ISREG(after.st_mode) or not atomicfs.same_file(after, st):
            # Something was swapped in between the check and the rename (a symlink, a
            # new file): put it back untouched and let the next scan judge it.
            self._move(dst, self.pending, candidate.name, journal)
            return None
        dst = self._settle_stem(dst, candidate, lease_folder)
        return Claim(dst, dst.name, candidate.name, report.Identity.of(after))

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
                    atomicfs.rename_noreplace(claimed, target, journal=lease_folder / MOVES)
                except FileExistsError:
                    continue
            claimed = target

    def finish(self, claim: Claim, state: State, lease_folder: Path) -> Path:
        """File a claimed video under completed/, failed/ or back in pending/."""
        return self._move(claim.path, self.folder(state), claim.name, lease_folder / MOVES)

    def file_claim(self, path: Path, state: State, lease_folder: Path) -> Path:
        """File a file found in `lease_folder` (a claim no worker holds any more) under
        `state`'s folder, keeping its name where it is free."""
        return self._move(path, self.folder(state), path.name, lease_folder / MOVES)

    def retry(self, name: str, journal: Path) -> Path:
        """Move a failed video back to pending/."""
        return self._move(self.failed / name, self.pending, name, journal)

    # -- recovery ------------------------------------------------------------------

    def take_over(self, folder: Path) -> int:
        """The first step of recovering a dead instance: delete its heartbeat (a paused
        owner that wakes up then knows its lease is gone and writes nothing) and finish
        the moves its journal records. Returns the number of moves repaired. Do this for
        every dead instance before returning any claim: a recoverer that died inside
        its own move left the video under two names, one in another dead folder."""
        with contextlib.suppress(FileNotFoundError):
            (folder / instance.HEARTBEAT).unlink()
        return len(atomicfs.repair_moves(folder / MOVES))

    def recover(self, folder: Path, journal: Path) -> tuple[list[Path], int]:
        """Take back every claim of a dead instance's folder: finish its interrupted
        moves, stop stage processes it left running on this host, return its videos to
        pending/ and delete its temporary files. Returns the videos returned and the
        number of moves repaired."""
        repaired = self.take_over(folder)
        owner = instance.InstanceId.parse(folder.name)
        if owner is not None and owner.is_local():
            self._kill_orphans(folder / WORK)
        returned = []
        for path in self.claims_in(folder):
            with contextlib.suppress(FileNotFoundError):
                returned.append(self._move(path, self.pending, path.name, journal))
        self.remove_instance_folder(folder)
        return returned, repaired

    def remove_instance_folder(self, folder: Path) -> None:
        """Delete an instance folder's hidden bookkeeping (work folders, move journal,
        heartbeat, health record, size markers) and the folder itself once no claim is
        left in it. Only for a dead instance, or one's own on the way out."""
        for leftover in folder.glob(".*"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    leftover.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()
        atomicfs.fsync_dir(self.processing)

    def _kill_orphans(self, work: Path) -> None:
        for pidfile in work.glob(f"*/{instance.STAGE_PID}"):
            try:
                pid, start, *token = pidfile.read_text().split()
                instance.kill_orphan(int(pid), int(start), token[0] if token else None)
            except (OSError, ValueError):
                continue
