"""Filesystem primitives: a rename that never overwrites, atomic writes, directory fsync.

Linux's rename(2) silently replaces an existing destination. renameat2 with
RENAME_NOREPLACE refuses instead, atomically; where the filesystem lacks it (NFS,
some FUSE mounts) we fall back to link(2) + unlink(2). A crash between those two
leaves the file under both names; an intent record written before the link lets
`repair_moves` finish the move later.

The intent records go into slots written whole when an instance starts
(`reserve_intents`), so that a move never needs free space: on a full disk a video can
still be filed or returned to pending/. Overwriting a slot allocates nothing on
filesystems that write in place (ext4, XFS, tmpfs, NFS); copy-on-write ones (btrfs,
ZFS) may still refuse, and then the move fails like any storage error and is retried.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import stat
import threading
import uuid
from pathlib import Path

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    _renameat2.restype = ctypes.c_int

#: Set VVFLOW_RENAME=link to force the link + unlink fallback (for filesystems whose
#: renameat2 misbehaves, and to exercise the fallback in tests).
FORCE_LINK = os.environ.get("VVFLOW_RENAME", "") == "link"

_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}
INTENT_SUFFIX = ".move"
#: Size of one pre-written intent slot: records of paths up to ~2,000 bytes each fit;
#: a longer one falls back to a file of its own.
SLOT_BYTES = 8192
_SLOT_PREFIX = "slot-"
_slots_lock = threading.Lock()
#: Slots a move of this process is using now.
_busy_slots: set[Path] = set()


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable. Filesystems that cannot fsync a folder are tolerated."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EROFS, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _renameat2_noreplace(src: Path, dst: Path) -> bool:
    """True when done; False when this filesystem does not support it."""
    if _renameat2 is None or FORCE_LINK:
        return False
    rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def rename_noreplace(src: Path, dst: Path, *, journal: Path) -> None:
    """Rename `src` to `dst` on one filesystem; raise FileExistsError if `dst` exists.

    `journal` is a folder on the same filesystem where the link fallback records its
    intent, so that a crash between link and unlink can be repaired by `repair_moves`.
    """
    if not _renameat2_noreplace(src, dst):
        _link_move(src, dst, journal)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def reserve_intents(journal: Path, count: int) -> None:
    """Write `count` empty intent slots into `journal` now, while there is space, so
    that the link fallback can record its intent on a full disk."""
    journal.mkdir(exist_ok=True)
    for number in range(count):
        slot = journal / f"{_SLOT_PREFIX}{number}{INTENT_SUFFIX}"
        # Written in place, not renamed: an empty slot cut short by a crash holds no
        # record, and the journal of a dead instance is deleted with its folder. Real
        # zeros, not a hole or fallocate: the blocks must exist for a later overwrite
        # to need none.
        fd = os.open(slot, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            _write_all(fd, bytes(SLOT_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)


def _take_slot(journal: Path, record: bytes) -> Path | None:
    """A free slot of `journal` with `record` written into it (durably), or None."""
    if len(record) >= SLOT_BYTES:
        return None
    with _slots_lock:
        try:
            slots = sorted(journal.glob(f"{_SLOT_PREFIX}*{INTENT_SUFFIX}"))
        except OSError:
            return None
        free = [p for p in slots if p not in _busy_slots]
        if not free:
            return None
        slot = free[0]
        _busy_slots.add(slot)
    try:
        _overwrite(slot, record.ljust(SLOT_BYTES, b"\0"))
    except OSError:
        _release_slot(slot, clear=False)
        return None
    return slot


def _overwrite(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        if os.pwrite(fd, data, 0) != len(data):
            raise OSError(errno.EIO, "short write", str(path))
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _release_slot(slot: Path, *, clear: bool = True) -> None:
    try:
        if clear:
            # Not durable: a stale record after a crash describes a finished move, and
            # repairing a finished move changes nothing.
            fd = os.open(slot, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                os.pwrite(fd, bytes(SLOT_BYTES), 0)
            finally:
                os.close(fd)
    except OSError:
        pass
    finally:
        with _slots_lock:
            _busy_slots.discard(slot)


def _link_move(src: Path, dst: Path, journal: Path) -> None:
    # Never `parents=True`: the journal's parent is an instance folder, and recreating
    # one that recovery removed would resurrect a lost lease.
    journal.mkdir(exist_ok=True)
    record = json.dumps({"src": os.fsencode(src).hex(), "dst": os.fsencode(dst).hex()}).encode()
    slot = _take_slot(journal, record)
    intent = journal / f"{uuid.uuid4().hex}{INTENT_SUFFIX}"
    if slot is None:
        write_atomic(intent, record, tmp_dir=journal)
    try:
        os.link(src, dst, follow_symlinks=False)
        fsync_dir(dst.parent)
        try:
            os.unlink(src)
        except FileNotFoundError:
            # Another mover linked the same source and unlinked it first: it won, so
            # take our name back and report the source as gone, as rename would.
            os.unlink(dst)
            raise
        except PermissionError:
            # Not ours to remove (a sticky folder, another user's file): undo the link,
            # so that the file stays where it was, under one name, as rename would.
            os.unlink(dst)
            raise
    finally:
        if slot is not None:
            _release_slot(slot)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(intent)


def _finish_move(src: Path, dst: Path) -> bool:
    """Complete an interrupted link + unlink move; True when a repair was needed."""
    try:
        s, d = os.lstat(src), os.lstat(dst)
    except FileNotFoundError:
        return False
    if (s.st_dev, s.st_ino) == (d.st_dev, d.st_ino):
        os.unlink(src)
        fsync_dir(src.parent)
        return True
    return False


def repair_moves(journal: Path) -> list[tuple[Path, Path]]:
    """Finish every move recorded in `journal` whose writer died between link and unlink.

    Only call this for the journal of an instance known to be dead (or one's own, at
    start): a live writer's intent is in use.
    """
    repaired: list[tuple[Path, Path]] = []
    try:
        intents = sorted(journal.iterdir())
    except FileNotFoundError:
        return repaired
    for intent in intents:
        if intent.name.endswith(INTENT_SUFFIX):
            try:
                # A slot holds its record followed by zeros (all zeros when free).
                record = json.loads(intent.read_bytes().rstrip(b"\0") or b"null")
                src = Path(os.fsdecode(bytes.fromhex(record["src"])))
                dst = Path(os.fsdecode(bytes.fromhex(record["dst"])))
            except (ValueError, KeyError, TypeError, FileNotFoundError):
                # A half-written intent: the write crashed before the link happened.
                pass
            else:
                if _finish_move(src, dst):
                    repaired.append((src, dst))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(intent)
    return repaired


def write_atomic(
    path: Path, data: bytes, *, tmp_dir: Path | None = None, durable: bool = True
) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one.

    The temporary file lives in `tmp_dir` (same filesystem) when given, so that a crash
    leaves debris only in a folder that recovery cleans, else beside `path`. `durable`
    also survives a power loss (fsync of the file and its folder); without it the
    write is still atomic for every process, a `kill -9` included.
    """
    folder = tmp_dir if tmp_dir is not None else path.parent
    if tmp_dir is None:
        folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def read_regular(path: Path) -> bytes | None:
    """The bytes of the regular file at `path`; None when it is absent, unreadable or
    not a regular file. Never blocks on a FIFO nor follows a symlink planted there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    except OSError:
        return None
    finally:
        os.close(fd)
