"""Races of filesystem primitives between the two clients of a GlusterFS volume.

Each experiment runs RACES races between two processes, one per mount (two FUSE
clients, each with its own caches). Per race both first look the names up (stat), as
a scanning instance does before it claims, so that each client holds a fresh cache
entry; then, released by one barrier, both act at once. What each side saw is
returned as a short outcome string: "ok" or the errno's name.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import multiprocessing
import multiprocessing.connection
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def outcome(call: Callable[[], object]) -> str:
    try:
        call()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def renameat2_noreplace(src: Path, dst: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                        _RENAME_NOREPLACE)  # fmt: skip
    if rc != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _stat(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.stat(path)


@dataclass
class Race:
    """One experiment: what each side prepares, looks up, does, and observes after."""

    name: str
    #: (side, mount, folder, i) -> None: make what this side needs before race i
    prepare: Callable[[int, Path, Path, int], None]
    #: (side, mount, folder, i) -> the paths this side looks up before acting
    look: Callable[[int, Path, Path, int], list[Path]]
    #: (side, mount, folder, i) -> outcome string
    act: Callable[[int, Path, Path, int], str]
    #: (side, mount, folder, i) -> anything observed right after acting
    after: Callable[[int, Path, Path, int], Any] = lambda *_: None


@dataclass
class Results:
    name: str
    races: int
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    observed: list[tuple[Any, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def winners(self) -> Counter[int]:
        """How many races had 0, 1 and 2 sides succeed."""
        return Counter(sum(o == "ok" for o in pair) for pair in self.pairs.elements())


def _side(race: Race, side: int, mount: Path, folder: str, count: int,
          barrier: Any, conn: multiprocessing.connection.Connection) -> None:  # fmt: skip
    out = []
    base = mount / folder
    for i in range(count):
        race.prepare(side, mount, base, i)
        barrier.wait()
        for path in race.look(side, mount, base, i):
            _stat(path)
        barrier.wait()
        result = race.act(side, mount, base, i)
        out.append((result, race.after(side, mount, base, i)))
        barrier.wait()
    conn.send(out)
    conn.close()


def run_race(race: Race, mounts: tuple[Path, Path], folder: str, count: int) -> Results:
    """`count` races of `race` between a process on each mount (folder relative to the
    mount root; it must exist)."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    pipes = [ctx.Pipe(duplex=False) for _ in mounts]
    procs = [
        ctx.Process(target=_side, args=(race, side, mount, folder, count, barrier, pipes[side][1]))
        for side, mount in enumerate(mounts)
    ]
    started = time.monotonic()
    for proc in procs:
        proc.start()
    got = [pipes[side][0].recv() for side in range(2)]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0, f"{race.name}: side exited with {proc.exitcode}"
    results = Results(race.name, count, seconds=time.monotonic() - started)
    for (a, a_seen), (b, b_seen) in zip(*got, strict=True):
        results.pairs[(a, b)] += 1
        results.observed.append((a_seen, b_seen))
    return results


# -- the experiments ---------------------------------------------------------------


def _touch(path: Path, data: bytes = b"x") -> None:
    path.write_bytes(data)


def _rename_prepare(side: int, mount: Path, base: Path, i: int) -> None:
    if side == 0:
        _touch(base / "src" / f"x{i}")


RENAME = Race(
    "rename into two folders",
    prepare=_rename_prepare,
    look=lambda side, m, b, i: [b / "src" / f"x{i}", b / f"dir{side}" / f"x{i}"],
    act=lambda side, m, b, i: outcome(
        lambda: os.rename(b / "src" / f"x{i}", b / f"dir{side}" / f"x{i}")
    ),
)


def _link_unlink(base: Path, side: int, i: int) -> None:
    os.link(base / "src" / f"x{i}", base / f"dir{side}" / f"x{i}")
    os.unlink(base / "src" / f"x{i}")


LINK_UNLINK = Race(
    "link + unlink into two folders",
    prepare=_rename_prepare,
    look=lambda side, m, b, i: [b / "src" / f"x{i}", b / f"dir{side}" / f"x{i}"],
    act=lambda side, m, b, i: outcome(lambda: _link_unlink(b, side, i)),
)


def _own_source(side: int, mount: Path, base: Path, i: int) -> None:
    _touch(base / f"dir{side}" / f"own{i}", f"side {side} race {i}".encode())


LINK_SAME_DESTINATION = Race(
    "link of two files to one name",
    prepare=_own_source,
    look=lambda side, m, b, i: [b / f"dir{side}" / f"own{i}", b / "dst" / f"x{i}"],
    act=lambda side, m, b, i: outcome(
        lambda: os.link(b / f"dir{side}" / f"own{i}", b / "dst" / f"x{i}")
    ),
)


def _create_excl(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))


CREATE_EXCL = Race(
    "open O_CREAT|O_EXCL of one name",
    prepare=lambda *_: None,
    look=lambda side, m, b, i: [b / "dst" / f"c{i}"],
    act=lambda side, m, b, i: outcome(lambda: _create_excl(b / "dst" / f"c{i}")),
)

MKDIR = Race(
    "mkdir of one name",
    prepare=lambda *_: None,
    look=lambda side, m, b, i: [b / "dst" / f"d{i}"],
    act=lambda side, m, b, i: outcome(lambda: os.mkdir(b / "dst" / f"d{i}")),
    after=lambda side, m, b, i: os.path.isdir(b / "dst" / f"d{i}"),
)


def _noreplace_prepare(side: int, mount: Path, base: Path, i: int) -> None:
    _touch(base / f"dir{side}" / f"n{i}")


RENAME_NOREPLACE = Race(
    "renameat2(RENAME_NOREPLACE) of two files to one name",
    prepare=_noreplace_prepare,
    look=lambda side, m, b, i: [b / f"dir{side}" / f"n{i}", b / "dst" / f"n{i}"],
    act=lambda side, m, b, i: outcome(
        lambda: renameat2_noreplace(b / f"dir{side}" / f"n{i}", b / "dst" / f"n{i}")
    ),
)


def nlink_seen_after(mounts: tuple[Path, Path], folder: str, count: int,
                     deadline: float = 10.0) -> list[float | None]:  # fmt: skip
    """Client 1 keeps a file's attributes cached (stat); client 0 links it: seconds
    until client 1's stat shows st_nlink == 2 (None: not within `deadline`)."""
    delays: list[float | None] = []
    for i in range(count):
        a, b = (m / folder / "dir0" / f"l{i}" for m in mounts)
        _touch(a)
        assert os.stat(b).st_nlink == 1
        os.link(a, a.with_name(f"l{i}.link"))
        linked = time.monotonic()
        delay: float | None = None
        while time.monotonic() - linked < deadline:
            if os.stat(b).st_nlink == 2:
                delay = time.monotonic() - linked
                break
            time.sleep(0.001)
        delays.append(delay)
    return delays


def rename_over_existing(
    mounts: tuple[Path, Path], folder: str, count: int, deadline: float = 10.0
) -> tuple[Counter[str], list[float | None]]:
    """Client 0 makes dst, client 1 (which has looked dst up) renames its own file onto
    it: what client 1 then sees ("replaced": dst has the source's bytes, "kept", or
    "refused: ERRNO"), and how long until client 0, which made the old dst, reads the
    new bytes (None: not within `deadline`)."""
    seen: Counter[str] = Counter()
    delays: list[float | None] = []
    for i in range(count):
        dst0 = mounts[0] / folder / "dst" / f"r{i}"
        src1 = mounts[1] / folder / "dir1" / f"r{i}"
        dst1 = mounts[1] / folder / "dst" / f"r{i}"
        _touch(dst0, b"existing")
        _touch(src1, b"renamed")
        _stat(dst1)
        result = outcome(lambda s=src1, d=dst1: os.rename(s, d))
        if result != "ok":
            seen[f"refused: {result}"] += 1
            continue
        seen["replaced" if dst1.read_bytes() == b"renamed" else "kept"] += 1
        renamed = time.monotonic()
        delay: float | None = None
        while time.monotonic() - renamed < deadline:
            with contextlib.suppress(FileNotFoundError):
                if dst0.read_bytes() == b"renamed":
                    delay = time.monotonic() - renamed
                    break
            time.sleep(0.001)
        delays.append(delay)
    return seen, delays


def stale_reads_after_replace(mounts: tuple[Path, Path], folder: str, count: int) -> Counter[str]:
    """What client 0 gets reading, at once, a name it wrote that client 1 just replaced
    by a rename: "new", "old" or the errno's name."""
    seen: Counter[str] = Counter()
    for i in range(count):
        dst0 = mounts[0] / folder / "dst" / f"s{i}"
        _touch(dst0, b"existing")
        _touch(mounts[1] / folder / "dir1" / f"s{i}", b"renamed")
        os.rename(mounts[1] / folder / "dir1" / f"s{i}", mounts[1] / folder / "dst" / f"s{i}")
        try:
            seen["new" if dst0.read_bytes() == b"renamed" else "old"] += 1
        except OSError as exc:
            seen[errno.errorcode.get(exc.errno or 0, "?")] += 1
    return seen


def _makedirs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


MAKEDIRS = Race(
    "mkdir -p of one fresh tree (exist_ok)",
    prepare=lambda *_: None,
    look=lambda side, m, b, i: [b / "dst" / f"t{i}", b / "dst" / f"t{i}" / "input"],
    act=lambda side, m, b, i: outcome(
        lambda: _makedirs(b / "dst" / f"t{i}" / "input" / "processing" / f"side{side}")
    ),
)
