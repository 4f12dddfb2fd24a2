"""The searchable, paged lists of completed and failed videos, for the web page.

A derived cache, never state: a SQLite file outside the root (the root may be a shared
or read-only mount), rebuilt from the folders whenever it is missing, corrupt or of
another schema. Names come from listing input/completed/ and input/failed/ (a folder
whose stat did not change is not listed again, except once a minute for network
filesystems whose other clients' changes may not move it at once); the texts shown and
searched (report, logline, summary) are read afterwards, in the background, newest
first. Several processes on one host may share one cache file (WAL, busy timeouts, and
every change made inside one write transaction that re-reads what it changes).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vvflow import atomicfs, logs
from vvflow.events import Event
from vvflow.layout import Layout, State, split_name
from vvflow.pipeline import Pipeline

#: Bumped whenever the tables change: a cache of another version is rebuilt.
SCHEMA_VERSION = 4
#: The states listed (the others are the overview's business).
LISTED = (State.COMPLETED, State.FAILED)
#: How much of a summary a list shows (the whole text is searched).
SUMMARY_SHOWN = 300
#: A folder is listed again after this long even if its stat did not change: on network
#: filesystems another client's rename may not move this client's view of it at once.
RELIST_SECONDS = 60.0
#: Output files larger than this are not read for texts (a summary is a few KiB).
TEXT_FILE_MAX = 4 << 20
#: Texts read per write transaction (short transactions keep other writers waiting
#: little).
TEXT_BATCH = 500
#: A folder changed this recently may change again within its mtime's granularity
#: (a jiffy locally, a second or more on some network filesystems) unseen.
RACY_SECONDS = 2.0
_BUSY_MS = 10_000
#: Connections kept open for the next request (more may be open at once).
POOL_IDLE = 8
#: Each connection's page cache, in KiB (SQLite's default is 2 MiB; a larger one hardly
#: speeds the first listing of 100,000 up, and what it held stays in the RSS after).
_CACHE_KIB = 1024
#: Rows moved per step of a listing.
_CHUNK = 5000
_WORD = re.compile(r"[^\W_]+")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    name TEXT NOT NULL,
    name_fold TEXT NOT NULL,
    -- The inode as the folder's listing gives it (d_ino: compared with the next
    -- listing's) and as stat gives it (compared with the report's identity); some
    -- filesystems (overlayfs, some FUSE ones) give two different numbers.
    ino INTEGER NOT NULL,
    file_ino INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    filed_at REAL NOT NULL,
    filed_iso TEXT,
    indexed INTEGER NOT NULL DEFAULT 0,
    stage TEXT,
    error TEXT,
    logline TEXT,
    summary TEXT,
    duration_s REAL,
    UNIQUE (state, name)
);
-- Newest first; with the folded name, a name search reads this index, not the rows.
CREATE INDEX IF NOT EXISTS entries_newest ON entries (state, filed_at, name_fold);
CREATE INDEX IF NOT EXISTS entries_unread ON entries (filed_at) WHERE indexed = 0;
-- Rows per state, kept by every change of entries (counting 100,000 index entries
-- would take milliseconds; a trigger per row would slow the first build fivefold).
CREATE TABLE IF NOT EXISTS counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""
_FTS = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS texts USING fts5"
    "(logline, summary, tokenize = 'unicode61 remove_diacritics 2')"
)
_PLAIN = "CREATE TABLE IF NOT EXISTS texts (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"


@dataclass(frozen=True)
class Entry:
    """One filed video as the lists show it; the fields its files lack are None."""

    name: str
    state: State
    #: When it was filed: the report's finished_at, or the file's ctime until that is read.
    filed_at: str | None
    #: The stage that failed it (failed videos).
    stage: str | None
    error: str | None
    logline: str | None
    #: The first SUMMARY_SHOWN characters of the summary.
    summary: str | None
    duration_s: float | None


@dataclass(frozen=True)
class Page:
    items: list[Entry]
    #: How many entries match in all (not only on this page).
    total: int
    #: True while texts are still being read: a text search may miss some entries yet.
    indexing: bool


def fts5_available() -> bool:
    """Whether this Python's SQLite has the FTS5 full-text search compiled in."""
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        try:
            db.execute("CREATE VIRTUAL TABLE probe USING fts5(body)")
        except sqlite3.OperationalError:
            return False
    return True


def cache_home() -> Path:
    """$XDG_CACHE_HOME/vvflow, else ~/.cache/vvflow."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "vvflow"


def _fallback_home() -> Path:
    return Path(tempfile.gettempdir()) / f"vvflow-{os.getuid()}"


def _inside(path: Path, root: Path) -> bool:
    real = os.path.realpath(path)
    return os.path.commonpath([real, root]) == str(root)


def _private_dir(path: Path, root: Path) -> bool:
    """Create `path` (mode 0700) if needed; True when it is a folder of ours, writable
    and outside the root."""
    if _inside(path, root):
        return False
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or _inside(path, root):
        return False  # a symlink or someone else's folder (in a shared /tmp)
    return os.access(path, os.W_OK | os.X_OK)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _epoch(iso: object) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True)
class _Texts:
    filed_at: float | None
    filed_iso: str | None
    stage: str | None
    error: str | None
    logline: str | None
    summary: str | None
    duration_s: float | None


class Catalog:
    """The completed and failed videos of a root, newest first, searchable and paged.

    `refresh()` brings it up to date once; `start()` keeps it so in a background thread
    (a stat of each folder a second when nothing changes). Safe to use from many threads.
    """

    def __init__(
        self,
        layout: Layout,
        pipeline: Pipeline,
        db_path: Path | None = None,
        *,
        interval: float = 1.0,
        full_text: bool | None = None,
    ) -> None:
        self.layout = layout
        self.pipeline = pipeline
        self.interval = interval
        #: FTS5 word search (prefixes); without it, words are matched as substrings.
        self.full_text = fts5_available() if full_text is None else full_text
        self._root = Path(os.path.realpath(layout.root))
        self._idle: list[sqlite3.Connection] = []  # connections not borrowed now
        self._lock = threading.Lock()  # guards _idle and _generation
        self._refresh_lock = threading.Lock()
        self._generation = 0  # bumped when the cache file is replaced
        self._signatures: dict[State, tuple[int, int, int] | None] = {}
        self._listed_at: dict[State, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.path = self._open(db_path)

    # -- the cache file ----------------------------------------------------------------

    @property
    def _search(self) -> str:
        """How texts are searched, as the cache file's name and meta table say it."""
        return "fts" if self.full_text else "plain"

    def _candidates(self, db_path: Path | None) -> Iterator[Path]:
        if db_path is not None:
            yield db_path
            return
        key = hashlib.sha256(os.fsencode(str(self._root))).hexdigest()[:24]
        filename = f"catalog-v{SCHEMA_VERSION}-{self._search}-{key}.sqlite3"
        for home in (cache_home(), _fallback_home()):
            if _private_dir(home, self._root):
                yield home / filename

    def _open(self, db_path: Path | None) -> Path:
        """Find a usable cache file (the first candidate that opens) and set it up."""
        tried: list[str] = []
        for path in self._candidates(db_path):
            if db_path is None and _inside(path, self._root):
                continue
            try:
                self._prepare(path)
            except (sqlite3.Error, OSError) as exc:
                tried.append(f"{path}: {exc}")
                continue
            if tried:
                logs.event(Event.CATALOG_REBUILT, level=logging.WARNING, path=str(path),
                           reason="fallback", unusable="; ".join(tried))  # fmt: skip
            return path
        raise OSError("no usable folder for the catalog cache: " + "; ".join(tried))

    def _prepare(self, path: Path) -> None:
        """Create the tables; a file that is not such a cache (corrupt, another schema,
        another root) is replaced."""
        reason = "missing" if not path.exists() else None
        try:
            with contextlib.closing(self._connect(path)) as db:
                found = self._check(db)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            found = f"corrupt ({exc})"
        if found is not None:
            self._remove(path)
            reason = found
        with contextlib.closing(self._connect(path)) as db:
            db.execute("PRAGMA journal_mode = WAL")
            with db:
                db.executescript(_SCHEMA)
                db.execute(_FTS if self.full_text else _PLAIN)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                           (str(SCHEMA_VERSION),))  # fmt: skip
                db.execute("INSERT OR IGNORE INTO meta VALUES ('root', ?)", (str(self._root),))
                db.execute("INSERT OR IGNORE INTO meta VALUES ('search', ?)", (self._search,))
            if self._check(db) is not None:
                raise sqlite3.DatabaseError(f"{path} is not a catalog of {self._root}")
        if reason is not None:
            logs.event(Event.CATALOG_REBUILT, path=str(path), reason=reason)

    def _check(self, db: sqlite3.Connection) -> str | None:
        """Why this database is not a catalog of this root and schema; None when it is
        (or is empty: new)."""
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return None
        if "meta" not in tables:
            return "another schema"
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("schema") != str(SCHEMA_VERSION):
            return "another schema"
        if meta.get("root") != str(self._root):
            return "another root"
        if meta.get("search") != self._search:
            return "another search"
        return None

    @staticmethod
    def _remove(path: Path) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=_BUSY_MS / 1000, isolation_level=None,
                             check_same_thread=False)  # fmt: skip
        db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
        db.execute("PRAGMA synchronous = NORMAL")  # a cache: losing the last commit is fine
        db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        return db

    @contextlib.contextmanager
    def _borrowed(self) -> Iterator[sqlite3.Connection]:
        """A connection for one thread's use until the block ends (a connection is used
        by one thread at a time; the threads of a web server's pool come and go, so
        connections are pooled, not kept per thread)."""
        with self._lock:
            generation = self._generation
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._connect(self.path)
        try:
            yield db
        finally:
            with self._lock:
                keep = generation == self._generation and len(self._idle) < POOL_IDLE
                keep = keep and not db.in_transaction  # (closing it rolls back)
                if keep:
                    self._idle.append(db)
            if not keep:
                with contextlib.suppress(sqlite3.Error):
                    db.close()

    def _close_idle(self) -> None:
        """Close the connections not borrowed now; those borrowed close when returned."""
        with self._lock:
            for db in self._idle:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._idle.clear()
            self._generation += 1

    def _rebuild(self) -> None:
        """Replace a cache found corrupt while in use, and list the folders again."""
        self._close_idle()
        with self._lock:
            self._remove(self.path)
            self._signatures.clear()
            self._listed_at.clear()
        self._prepare(self.path)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on a borrowed connection (see `_transaction`)."""
        with self._borrowed() as db, self._transaction(db):
            yield db

    @staticmethod
    @contextlib.contextmanager
    def _transaction(db: sqlite3.Connection) -> Iterator[None]:
        """A write transaction: taken at once (IMMEDIATE), so what it reads is what it
        changes even when another process shares the file."""
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _guarded(self, action: str, attempt: Any) -> Any:
        """Run `attempt()`; a cache found corrupt is rebuilt and the attempt made again."""
        try:
            return attempt()
        except sqlite3.DatabaseError as exc:
            # Deleted under us (a cleaner of ~/.cache or /tmp): a new connection finds
            # an empty file. Corrupt: a plain DatabaseError. Anything else (locked, a
            # constraint, a bug) is no reason to rebuild.
            deleted = isinstance(exc, sqlite3.OperationalError) and "no such" in str(exc)
            if type(exc) is not sqlite3.DatabaseError and not deleted:
                raise
            reason = "deleted" if deleted else "corrupt"
            logs.event(Event.CATALOG_REBUILT, level=logging.WARNING, path=str(self.path),
                       reason=f"{reason} ({exc}) during {action}")  # fmt: skip
            self._rebuild()
            return attempt()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Keep the catalog up to date in a background thread until `close()`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="vvflow-catalog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._close_idle()

    def _run(self) -> None:
        while not self._stop.is_set():
            more = False
            try:
                with self._refresh_lock:
                    self._guarded("refresh", self._list_all)
                    more = self._guarded("reading texts", self._read_texts_batch)
            except sqlite3.OperationalError as exc:  # busy beyond the timeout: next time
                logs.logger.debug("catalog refresh skipped: %s", exc)
            except Exception:  # the page must outlive a bug here; say it loudly
                logs.event(Event.INTERNAL_ERROR, level=logging.ERROR, exc_info=True,
                           where="catalog")  # fmt: skip
            self._stop.wait(0 if more else self.interval)

    def refresh(self, texts: bool = True) -> None:
        """Bring the lists up to date now: list the folders (those whose stat changed,
        or not listed for RELIST_SECONDS) and, with `texts`, read every text not read
        yet (without, the background thread reads them)."""
        with self._refresh_lock:
            self._guarded("refresh", self._list_all)
            while texts and self._guarded("reading texts", self._read_texts_batch):
                pass

    # -- names: listing the folders ------------------------------------------------------

    def _list_all(self) -> None:
        for state in LISTED:
            self._list(state)

    def _list(self, state: State) -> None:
        folder = self.layout.folder(state)
        try:
            st = os.stat(folder)
            signature: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            signature = None
        now = time.monotonic()
        if (
            state in self._signatures
            and self._signatures[state] == signature
            and now - self._listed_at.get(state, 0.0) < RELIST_SECONDS
        ):
            return
        first = state not in self._signatures
        changed = not first and self._signatures[state] != signature
        with self._borrowed() as db:
            self._list_into(db, folder if signature is not None else None)
            self._apply(db, state, folder, restat=first, changed=changed)
        if signature is not None and time.time() - st.st_mtime < RACY_SECONDS:
            # Changed within the stat's granularity: a change made later in the same
            # tick would leave the same signature. Look again next time.
            signature = (-1, -1, -1)
        self._signatures[state] = signature
        self._listed_at[state] = now

    @staticmethod
    def _list_into(db: sqlite3.Connection, folder: Path | None) -> None:
        """List `folder` (None: it is gone) into the connection's temporary table `seen`
        (name, inode). Outside any write transaction (a slow
        listing on a network filesystem keeps no other process waiting), and streamed:
        100,000 names never sit in Python's memory at once (freed, they would still
        weigh on the process's RSS)."""
        db.execute("CREATE TEMP TABLE IF NOT EXISTS seen (name TEXT PRIMARY KEY, ino INT)")
        db.execute("CREATE TEMP TABLE IF NOT EXISTS fresh (name TEXT NOT NULL, ino INT)")
        db.execute("BEGIN")  # only temp tables are written: no lock on the cache file
        try:
            db.execute("DELETE FROM seen")
            if folder is not None:
                with contextlib.suppress(FileNotFoundError), os.scandir(folder) as it:
                    db.executemany(
                        "INSERT INTO seen VALUES (?, ?)",
                        ((e.name, e.inode()) for e in it if not e.name.startswith(".")),
                    )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _apply(
        self,
        db: sqlite3.Connection,
        state: State,
        folder: Path,
        *,
        restat: bool,
        changed: bool,
    ) -> None:
        """Make the rows of `state` the names listed in `seen`: rows of names gone, or
        now another file, go; new names come, their texts unread. A name may also have
        left and come back as the same file (a video failed again after a retry; a
        rename sets its ctime): the ctimes are compared with `restat` (the first
        listing of this process: the cache may be older) and when the folder `changed`
        though no name came or went. Rows move in chunks, for the memory's sake."""
        prefix = f"{folder}{os.sep}"

        def lstat(name: str) -> os.stat_result:
            return os.lstat(prefix + name)  # (100,000 pathlib joins cost a second)

        with self._transaction(db):
            gone = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM entries e WHERE state = ? AND NOT EXISTS "
                    "(SELECT 1 FROM seen s WHERE s.name = e.name AND s.ino = e.ino)",
                    (state.value,),
                )
            ]
            db.execute("DELETE FROM fresh")
            came = db.execute(
                "INSERT INTO fresh SELECT name, ino FROM seen s WHERE NOT EXISTS "
                "(SELECT 1 FROM entries e WHERE e.state = ? AND e.name = s.name "
                "AND e.ino = s.ino)",
                (state.value,),
            ).rowcount
            if restat or (changed and not gone and not came):
                left, last = set(gone), 0
                while chunk := db.execute(
                    "SELECT id, name, ino, ctime_ns FROM entries WHERE state = ? AND id > ? "
                    "ORDER BY id LIMIT ?",
                    (state.value, last, _CHUNK),
                ).fetchall():
                    last = chunk[-1][0]
                    for row_id, name, ino, ctime_ns in chunk:
                        if row_id in left:
                            continue
                        try:
                            if lstat(name).st_ctime_ns == ctime_ns:
                                continue
                            db.execute("INSERT INTO fresh VALUES (?, ?)", (name, ino))
                        except OSError:
                            pass
                        gone.append(row_id)
            self._delete(db, gone)
            added, last = 0, 0
            while chunk := db.execute(
                "SELECT rowid, name, ino FROM fresh WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (last, _CHUNK),
            ).fetchall():
                last = chunk[-1][0]
                rows = []
                for _, name, ino in chunk:
                    try:
                        st = lstat(name)
                    except OSError:
                        continue  # gone meanwhile: the next listing sees it
                    rows.append((state.value, name, name.casefold(), ino, st.st_ino,
                                 st.st_ctime_ns, st.st_ctime, _iso(st.st_ctime)))  # fmt: skip
                rows.sort(key=lambda row: row[6])  # filed_at: the index grows at its end
                db.executemany(
                    "INSERT INTO entries (state, name, name_fold, ino, file_ino, ctime_ns, "
                    "filed_at, filed_iso) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                added += len(rows)
            db.execute(
                "INSERT INTO counts VALUES (?, ?) ON CONFLICT (state) DO UPDATE SET n = n + ?",
                (state.value, added - len(gone), added - len(gone)),
            )
            db.execute("DELETE FROM fresh")
            db.execute("DELETE FROM seen")

    def _delete(self, db: sqlite3.Connection, ids: list[int]) -> None:
        if not ids:
            return
        params = [(i,) for i in ids]
        db.executemany("DELETE FROM entries WHERE id = ?", params)
        if self.full_text:
            db.executemany("DELETE FROM texts WHERE rowid = ?", params)
        else:
            db.executemany("DELETE FROM texts WHERE id = ?", params)

    # -- texts: reports and outputs --------------------------------------------------------

    def _read_texts_batch(self) -> bool:
        """Read the texts of up to TEXT_BATCH entries, newest first; True when more are
        left to read."""
        with self._borrowed() as db:
            todo = db.execute(
                "SELECT id, name, file_ino FROM entries WHERE indexed = 0 "
                "ORDER BY filed_at DESC LIMIT ?",
                (TEXT_BATCH,),
            ).fetchall()
        if not todo:
            return False
        read = [(row_id, self._texts(name, ino)) for row_id, name, ino in todo]
        with self._write() as db:
            for row_id, found in read:
                updated = db.execute(
                    "UPDATE entries SET indexed = 1, filed_at = coalesce(?, filed_at), "
                    "filed_iso = coalesce(?, filed_iso), stage = ?, error = ?, logline = ?, "
                    "summary = ?, duration_s = ? WHERE id = ? AND indexed = 0",
                    (found.filed_at, found.filed_iso, found.stage, found.error, found.logline,
                     found.summary[:SUMMARY_SHOWN] if found.summary else None,
                     found.duration_s, row_id),
                ).rowcount  # fmt: skip
                if not updated:
                    continue  # gone, or read by another process meanwhile
                if found.logline is None and found.summary is None:
                    continue
                if self.full_text:
                    db.execute("INSERT INTO texts (rowid, logline, summary) VALUES (?, ?, ?)",
                               (row_id, found.logline or "", found.summary or ""))  # fmt: skip
                else:
                    body = f"{found.logline or ''}\n{found.summary or ''}".casefold()
                    db.execute("INSERT INTO texts (id, body) VALUES (?, ?)", (row_id, body))
        return len(todo) == TEXT_BATCH

    def _texts(self, name: str, ino: int) -> _Texts:
        """What the report and the built-in logline and summary outputs say about a
        filed video; a missing or broken file leaves its fields None. A report of
        another file (an earlier video of that name) is not this one's."""
        rep = atomicfs.json_object(self.layout.report_path(name), TEXT_FILE_MAX)
        identity = rep.get("identity") if rep is not None else None
        if rep is None or not isinstance(identity, dict) or identity.get("inode") != ino:
            rep = {}
        outputs: dict[str, Path] = {}
        with contextlib.suppress(KeyError, ValueError, IndexError):
            outputs = self.pipeline.all_outputs(name, split_name(name)[0])
        logline_file, summary_file = outputs.get("logline"), outputs.get("summarize")
        logline = atomicfs.json_object(logline_file, TEXT_FILE_MAX) if logline_file else None
        summary = atomicfs.json_object(summary_file, TEXT_FILE_MAX) if summary_file else None
        finished = rep.get("finished_at")
        filed_at = _epoch(finished)
        return _Texts(
            filed_at=filed_at,
            filed_iso=finished if filed_at is not None else None,
            stage=_text(rep.get("failed_stage")),
            error=_text(rep.get("error")),
            logline=_text(logline.get("logline")) if logline else None,
            summary=_text(summary.get("summary")) if summary else None,
            duration_s=_number(rep.get("duration_s")),
        )

    # -- reading -------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """{"completed": n, "failed": n} as last listed."""

        def count() -> dict[str, int]:
            # Kept by the listings: counting 100,000 index entries would take milliseconds.
            with self._borrowed() as db:
                found = dict(db.execute("SELECT state, n FROM counts").fetchall())
            return {s.value: int(found.get(s.value, 0)) for s in LISTED}

        result: dict[str, int] = self._guarded("counts", count)
        return result

    def page(self, state: State, query: str = "", offset: int = 0, limit: int = 50) -> Page:
        """Entries of `state` (completed or failed), newest first, those matching
        `query`: every word of it is in the name (any part of it, ignoring case) or
        begins a word of the logline or the summary."""
        if state not in LISTED:
            raise ValueError(f"the catalog lists {', '.join(LISTED)}, not {state}")
        offset, limit = max(0, offset), max(0, limit)
        where, params = self._match(query)

        # `where` is made of fixed fragments; the query's words travel as parameters.
        columns = "name, filed_iso, stage, error, logline, summary, duration_s"
        listing = f"SELECT {columns} FROM entries WHERE state = ?{where}"  # noqa: S608
        listing += " ORDER BY filed_at DESC, name_fold DESC, id DESC LIMIT ? OFFSET ?"
        counting = f"SELECT count(*) FROM entries WHERE state = ?{where}"  # noqa: S608
        if not where:
            counting = "SELECT coalesce(sum(n), 0) FROM counts WHERE state = ?"

        def read() -> Page:
            with self._borrowed() as db:
                rows = db.execute(listing, (state.value, *params, limit, offset)).fetchall()
                total = db.execute(counting, (state.value, *params)).fetchone()[0]
                unread = db.execute("SELECT EXISTS (SELECT 1 FROM entries WHERE indexed = 0)")
                indexing = bool(unread.fetchone()[0]) or len(self._listed_at) < len(LISTED)
            items = [Entry(r[0], state, *r[1:]) for r in rows]
            return Page(items, int(total), indexing)

        result: Page = self._guarded("page", read)
        return result

    def _match(self, query: str) -> tuple[str, list[object]]:
        """The SQL condition (" AND ...") and its parameters for a query: the user's
        text only ever travels as parameters, and FTS5 gets quoted tokens only."""
        where, params = "", list[object]()
        for typed in dict.fromkeys(query.split()):
            # Names are compared casefolded; FTS5 folds the case of texts itself (and
            # would not find "straße" as "strasse").
            word, tokens = typed.casefold(), _WORD.findall(typed.lower())
            if tokens and self.full_text:
                match = " ".join('"' + t.replace('"', '""') + '"*' for t in tokens)
                where += (
                    " AND (instr(name_fold, ?) > 0 OR id IN "
                    "(SELECT rowid FROM texts WHERE texts MATCH ?))"
                )
                params += [word, match]
            elif tokens:
                where += (
                    " AND (instr(name_fold, ?) > 0 OR id IN "
                    "(SELECT id FROM texts WHERE instr(body, ?) > 0))"
                )
                params += [word, word]
            else:  # punctuation only: a part of a name, never a text word
                where += " AND instr(name_fold, ?) > 0"
                params.append(word)
        return where, params
