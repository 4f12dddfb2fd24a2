"""Filesystem primitives: moves that never overwrite and that only one mover wins,
atomic writes, directory fsync, and what the filesystem under the root can do.

Linux's rename(2) silently replaces an existing destination. renameat2 with
RENAME_NOREPLACE refuses instead, atomically, and of several processes renaming one
name only one succeeds: where the filesystem has it (local disks) every move is that
one call. Network and FUSE filesystems (GlusterFS, NFS, CephFS, SMB) refuse the flag
(EINVAL), and there link(2) + unlink(2) is *not* a lock: a client that looked a file
up a moment ago can link it after another client renamed it away, and both "win".
What those filesystems do keep exclusive is a plain rename of one name (one winner,
the others get ENOENT) and the creation of one name (link or O_EXCL: one winner, the
others get EEXIST). So a move there is three steps (`_staged_move`):

1. rename the source into this instance's own journal folder (`.moves/`, which no
   other live process writes): exclusive on the source;
2. link that private name to the destination: exclusive on the destination, never an
   overwrite; a name taken means the next candidate name;
3. unlink the private name.

An intent record written before step 1 lets `repair_moves` finish a move whose mover
died (or complete it again, idempotently, for a mover that froze: both link the same
file to the same first free name). A claim into one's own folder is one plain rename
(`take`): nobody else creates names there.

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
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from vvflow import logs
from vvflow.events import Event

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

#: Set VVFLOW_RENAME=link to use the protocol of filesystems without RENAME_NOREPLACE
#: (rename into a private name, link, unlink) everywhere: for a filesystem whose
#: renameat2 misbehaves, and to exercise that protocol in tests.
FORCE_LINK = os.environ.get("VVFLOW_RENAME", "") == "link"
#: "renameat2" is False once a probe of the root found that it ignores RENAME_NOREPLACE.
_usable = {"renameat2": True}


def use_renameat2(usable: bool) -> None:
    """Say whether the root's filesystem honours RENAME_NOREPLACE (`filesystem.probe`)."""
    _usable["renameat2"] = usable


_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}
INTENT_SUFFIX = ".move"
#: Size of one pre-written intent slot: records of paths up to ~2,000 bytes each fit;
#: a longer one falls back to a file of its own.
SLOT_BYTES = 8192
_SLOT_PREFIX = "slot-"
_slots_lock = threading.Lock()
#: Slots a move of this process is using now.
_busy_slots: set[Path] = set()


_T = TypeVar("_T")

#: How long `makedirs` waits for a folder another client created to become visible.
MKDIR_SETTLE_SECONDS = 10.0


def makedirs(path: Path) -> None:
    """`mkdir -p` for a root that several hosts share: on a network filesystem another
    client may create the same folder at the same moment, and this client's mkdir then
    returns EEXIST before the folder is visible to its own lookups, or ESTALE
    (GlusterFS does both). Wait for it to appear; only a name that stays something
    else than a folder fails."""
    deadline = time.monotonic() + MKDIR_SETTLE_SECONDS
    while True:
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except OSError as exc:
            # ESTALE too: GlusterFS answers it now and then to a lookup of a folder
            # another client is creating (5 of 300 racing start-ups).
            if exc.errno not in (errno.EEXIST, errno.ESTALE):
                raise
            if time.monotonic() > deadline or os.path.islink(path):
                raise
            time.sleep(0.05)


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


def renameat2_errno(src: Path, dst: Path) -> int:
    """renameat2(src, dst, RENAME_NOREPLACE) as such: 0, or its errno (ENOSYS where the
    C library lacks it). For the probe of the root; moves use `_renameat2_noreplace`."""
    if _renameat2 is None:
        return errno.ENOSYS
    rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
    return 0 if rc == 0 else ctypes.get_errno()


def _renameat2_noreplace(src: Path, dst: Path) -> bool:
    """True when done; False when this filesystem does not support it."""
    if FORCE_LINK or not _usable["renameat2"]:
        return False
    err = renameat2_errno(src, dst)
    if err == 0:
        return True
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def rename_noreplace(src: Path, dst: Path, *, journal: Path) -> None:
    """Rename `src` to `dst` on one filesystem; raise FileExistsError if `dst` exists
    and FileNotFoundError if `src` is gone (another mover took it).

    `journal` is a folder of this instance on the same filesystem, where a move that
    cannot use renameat2 records its intent and keeps the file under a private name
    for a moment, so that a crash can be repaired by `repair_moves`.
    """
    move(src, iter([dst]), journal=journal)


def move(src: Path, targets: Iterator[Path], *, journal: Path) -> Path:
    """Move `src` to the first of `targets` that does not exist, never overwriting, and
    return it. Of several processes moving one `src`, exactly one succeeds; the others
    get FileNotFoundError. When every target is taken, `src` is put back (when its name
    is still free) and FileExistsError is raised."""
    dst = next(targets)
    while True:
        try:
            done = _renameat2_noreplace(src, dst)
        except FileExistsError:
            dst = _next_target(targets, dst)
            continue
        if not done:
            dst = _staged_move(src, dst, targets, journal)
        break
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)
    return dst


def _next_target(targets: Iterator[Path], taken: Path) -> Path:
    following = next(targets, None)
    if following is None:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(taken))
    return following


def take(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, a name in a folder that only this process creates names
    in (its own instance folder): raise FileNotFoundError when another process took
    `src` first, FileExistsError when `dst` exists. Exclusive on the source on every
    filesystem: of several renames of one name exactly one succeeds."""
    if not _renameat2_noreplace(src, dst):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
        os.rename(src, dst)
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


STAGED_SUFFIX = ".staged"


#: How long a file just renamed to its private name may stay invisible to this client
#: (GlusterFS's entry and attribute caches: 1 s by default) before the move gives up.
SETTLE_SECONDS = 3.0
#: Intent slots of moves stranded under their private name, retried by `retry_stranded`.
_stranded: dict[Path, Path] = {}


class MoveStranded(OSError):
    """A move got the file under its private name and could neither finish nor undo
    it: the intent record stays, and `retry_stranded` (or `repair_moves`) finishes it.
    Never a FileNotFoundError: the source was not taken by another mover."""


def _settled(call: Callable[[], _T]) -> _T:
    """`call()`, tried again for a few seconds while it fails with ENOENT: a name this
    client just renamed into place can be missing from its own lookups for a moment on
    a network filesystem."""
    deadline = time.monotonic() + SETTLE_SECONDS
    pause = 0.05
    while True:
        try:
            return call()
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


def _staged_move(src: Path, dst: Path, targets: Iterator[Path], journal: Path) -> Path:
    """The move of filesystems without RENAME_NOREPLACE: see the module's docstring."""
    # Never `parents=True`: the journal's parent is an instance folder, and recreating
    # one that recovery removed would resurrect a lost lease.
    journal.mkdir(exist_ok=True)
    staged = journal / f"{uuid.uuid4().hex}{STAGED_SUFFIX}"
    record = json.dumps(
        {"src": os.fsencode(src).hex(), "dst": os.fsencode(dst).hex(),
         "staged": os.fsencode(staged).hex()}
    ).encode()  # fmt: skip
    slot = _take_slot(journal, record)
    intent = journal / f"{uuid.uuid4().hex}{INTENT_SUFFIX}"
    if slot is None:
        write_atomic(intent, record, tmp_dir=journal)
    keep_record = False
    try:
        os.rename(src, staged)  # the one step that is exclusive on the source
        try:
            links = _settled(lambda: os.lstat(staged)).st_nlink
            first = dst
            dst = _settled(lambda: _link_first_free(staged, first, targets))
            fsync_dir(dst.parent)
        except FileExistsError:
            # Every target is taken: back under its own name (or beside it).
            _settled(lambda: _link_first_free(staged, src, _variants(src)))
            os.unlink(staged)
            raise
        except BaseException as exc:
            # A storage error (no space for the new name, I/O): put it back where it
            # was; failing that, the record stays and the move is finished later.
            try:
                _settled(lambda: _link_first_free(staged, src, _variants(src)))
                os.unlink(staged)
            except OSError:
                keep_record = True
                if slot is not None:
                    _stranded[slot] = journal
                else:
                    _stranded[intent] = journal
                raise MoveStranded(
                    exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO,
                    f"moving {src} to {dst} stopped with the file under {staged}; "
                    "it is finished later",
                ) from exc
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        with contextlib.suppress(FileNotFoundError):
            after = _settled(lambda: os.lstat(dst)).st_nlink
            if after > links:
                double_move(dst, links, after)
        return dst
    finally:
        if keep_record:
            pass  # the record stays: `retry_stranded` or `repair_moves` finishes it
        elif slot is not None:
            _release_slot(slot)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(intent)


def retry_stranded() -> int:
    """Finish the moves of this process that stopped with their file under its private
    name (`MoveStranded`); returns how many were finished."""
    done = 0
    for record_path, _journal in list(_stranded.items()):
        try:
            raw = record_path.read_bytes().rstrip(b"\0")
            record = json.loads(raw)
            src = Path(os.fsdecode(bytes.fromhex(record["src"])))
            dst = Path(os.fsdecode(bytes.fromhex(record["dst"])))
            staged = Path(os.fsdecode(bytes.fromhex(record["staged"])))
            _finish_move(src, dst, staged)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        del _stranded[record_path]
        if record_path.name.startswith(_SLOT_PREFIX):
            _release_slot(record_path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(record_path)
        done += 1
    return done


def double_move(path: Path, before: int, after: int) -> None:
    """Say that the file just moved to `path` gained names meanwhile: another process
    moved (claimed) the same file at the same time. Never deleted here: either name may
    be the one the other process keeps; counted in the metrics."""
    logs.event(
        Event.DOUBLE_CLAIM,
        level=logging.ERROR,
        path=str(path),
        names_before=before,
        names_after=after,
        error="the same file was moved by two processes at once: the filesystem's "
        "renames are not exclusive here (see `vvflow doctor`)",
    )


#: How often a link refused with EEXIST is tried again while the name looks free or
#: looks like the moving file itself (0.1 + 0.2 + ... + 0.5 s: past a 1 s cache).
PHANTOM_RETRIES = 5


def _link_first_free(staged: Path, dst: Path, targets: Iterator[Path]) -> Path:
    """Link `staged` to `dst` or the first free name after it; a target that already is
    this very file (a repairer finished the move) counts as done.

    A network client's cache can be stale for about a second: a name that link calls
    taken may be a stale GlusterFS distribute pointer no lookup finds, or this very
    file's old entry still cached by this client (the file was there before another
    client moved it away). Neither is believed: "this very file" only when the file
    really has a second name (its link count says so), and a name that looks free or
    looks like ours is tried again after the cache has expired before the next name.
    Believing a stale entry of ours once unlinked the last name of a video."""
    phantom = 0
    while True:
        try:
            os.link(staged, dst, follow_symlinks=False)
            return dst
        except FileExistsError:
            ours = _same(staged, dst)
            if ours and os.lstat(staged).st_nlink >= 2:
                return dst
            if (ours or not os.path.lexists(dst)) and phantom < PHANTOM_RETRIES:
                phantom += 1
                time.sleep(0.1 * phantom)
                continue
            phantom = 0
            dst = _next_target(targets, dst)


def _same(a: Path, b: Path) -> bool:
    try:
        return same_file(os.lstat(a), os.lstat(b))
    except FileNotFoundError:
        return False


def _variants(path: Path) -> Iterator[Path]:
    """`path`, then `<stem>-recovered-N<ext>` beside it."""
    yield path
    stem, ext = os.path.splitext(path.name)
    for number in range(1, 1_000_000):
        yield path.with_name(f"{stem}-recovered-{number}{ext}")


def _finish_move(src: Path, dst: Path, staged: Path | None) -> bool:
    """Complete an interrupted move; True when a repair was needed.

    A file still under its private name goes to its destination (or, that name taken
    by another file, back to its source, or beside it): a mover that froze and wakes
    up links the same file to the same first free name, so both end up agreeing. A
    move of the older protocol (link, then unlink) left the file under both names."""
    if staged is not None and os.path.lexists(staged):
        try:
            _link_first_free(staged, dst, iter([src]))
        except FileExistsError:
            _link_first_free(staged, src, _variants(src))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        return True
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
    """Finish every move recorded in `journal` whose mover died (or froze) inside it.

    Only call this for the journal of an instance taken over (its heartbeat deleted),
    or one's own, at start: a live mover's intent is in use.
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
                staged_hex = record.get("staged")
                staged = Path(os.fsdecode(bytes.fromhex(staged_hex))) if staged_hex else None
            except (ValueError, KeyError, TypeError, AttributeError, FileNotFoundError):
                # A half-written intent: the write crashed before the move began.
                pass
            else:
                if _finish_move(src, dst, staged):
                    repaired.append((src, dst))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(intent)
    for leftover in journal.glob(f"*{STAGED_SUFFIX}"):
        # A private name whose intent is gone: never lose it, give it back beside the
        # journal's folder, where recovery returns claims.
        with contextlib.suppress(FileNotFoundError):
            _link_first_free(
                leftover, journal.parent / leftover.name, _variants(journal.parent / leftover.name)
            )
            os.unlink(leftover)
            repaired.append((leftover, journal.parent / leftover.name))
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


def read_regular(path: Path, max_bytes: int | None = None) -> bytes | None:
    """The bytes of the regular file at `path`; None when it is absent, unreadable, not
    a regular file or larger than `max_bytes` (then at most `max_bytes` + 1 bytes are
    read of a file that grows meanwhile). Never blocks on a FIFO nor follows a symlink
    planted there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if max_bytes is not None and st.st_size > max_bytes:
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def json_object(path: Path, max_bytes: int | None = None) -> dict[str, Any] | None:
    """The JSON object in the regular file at `path` (as `read_regular` reads it); None
    when there is none: absent, not a regular file, too big, not JSON, not an object."""
    data = read_regular(path, max_bytes)
    try:
        value = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
