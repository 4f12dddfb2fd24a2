"""The catalog behind the web page's completed and failed lists: real folders, reports
written by vvflow's own report module (and by a real `vvflow once`), a real SQLite cache."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Root
from vvflow import operations, report
from vvflow.config import builtin_stages, load_settings
from vvflow.layout import Layout, State, split_name
from vvflow.pipeline import Pipeline
from vvflow.web.catalog import SUMMARY_SHOWN, Catalog, Page, cache_home, fts5_available

T0 = 1_780_000_000  # a fixed moment; entry i is filed at T0 + i minutes
LATER = 2_000_000_000  # a moment after the tests' own ctimes

HOSTILE = (
    'quote\'s "double".mp4',
    "100% sure.mp4",
    "under_score.mp4",
    "star*.mp4",
    "NEAR AND OR NOT.mp4",
    "été à Zürich.mp4",
    "<script>alert(1)<script>.mp4",
    "new\nline.mp4",
    "(paren) ^caret -minus col:on.mp4",
    "日本語の動画.mp4",
    "emoji 🎬.mp4",
)


@dataclass
class Shelf:
    """A storage root whose completed/ and failed/ are filled by hand, the way the worker
    files videos: the video renamed in, its report and outputs beside it."""

    layout: Layout
    pipeline: Pipeline

    @classmethod
    def make(cls, path: Path) -> Shelf:
        pipeline = Pipeline(builtin_stages(), path)
        layout = Layout(path, (".mp4",), pipeline.all_outputs)
        layout.ensure()
        return cls(layout, pipeline)

    def file(
        self,
        state: State,
        name: str,
        minute: int,
        *,
        logline: str | None = None,
        summary: str | None = None,
        stage: str | None = None,
        error: str | None = None,
        duration: float | None = 12.5,
        with_report: bool = True,
    ) -> Path:
        path = self.layout.folder(state) / name
        path.write_bytes(b"video " + os.fsencode(name))
        if with_report:
            rep = report.Report(
                name=name,
                original_name=name,
                state=state.value,
                identity=report.Identity.of(os.lstat(path)),
                finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 60 * minute)),
                duration_s=duration,
                failed_stage=stage,
                error=error,
            )
            report.save(self.layout.report_path(name), rep, durable=False)
        outputs = self.pipeline.all_outputs(name, split_name(name)[0])
        if summary is not None:
            self._write(outputs["summarize"], {"summary": summary, "scenes": []})
        if logline is not None:
            self._write(outputs["logline"], {"logline": logline, "kind": "talk"})
        return path

    @staticmethod
    def _write(path: Path, document: dict[str, object]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document))

    def catalog(self, db: Path, **options: bool) -> Catalog:
        return Catalog(self.layout, self.pipeline, db, **options)  # type: ignore[arg-type]


def names(page: Page) -> list[str]:
    return [e.name for e in page.items]


def wait_for(condition: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- one shared shelf for the read-only questions ------------------------------------------

LONG_SUMMARY = "Opening words. " * 30 + "The zeppelin lands at the very end."


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Shelf:
    shelf = Shelf.make(tmp_path_factory.mktemp("shelf") / "root")
    for i in range(120):
        logline = f"A talk number {i} about bridges" if i % 2 else None
        summary = f"Scenes of harbour cranes, take {i}." if i % 3 == 0 else None
        shelf.file(State.COMPLETED, f"clip{i:03d}.mp4", i, logline=logline, summary=summary)
    for j, name in enumerate(HOSTILE):
        shelf.file(State.COMPLETED, name, 200 + j, logline="Hostile name, calm text")
    shelf.file(State.COMPLETED, "long.mp4", 300, summary=LONG_SUMMARY,
               logline="Über-cool Straße scene")  # fmt: skip
    shelf.file(State.FAILED, "broken.mp4", 5, stage="summarize", error="exit 1: boom",
               duration=3.25)  # fmt: skip
    shelf.file(State.FAILED, "noreport.mp4", 6, with_report=False)
    return shelf


@pytest.fixture(scope="module")
def catalog(shelf: Shelf, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    catalog = shelf.catalog(tmp_path_factory.mktemp("cache") / "catalog.sqlite3")
    catalog.refresh()
    yield catalog
    catalog.close()


def test_fts5_is_compiled_in_here() -> None:
    # The fallback (substring search) is tested too; this says which one CI measures.
    assert fts5_available()


def test_lists_are_newest_first_and_paged(catalog: Catalog, shelf: Shelf) -> None:
    total = 120 + len(HOSTILE) + 1
    assert catalog.counts() == {"completed": total, "failed": 2}
    first = catalog.page(State.COMPLETED, limit=50)
    assert first.total == total and not first.indexing
    assert names(first)[:2] == ["long.mp4", HOSTILE[-1]]
    everything = [e.name for k in range(4) for e in catalog.page(State.COMPLETED, "", 50 * k).items]
    assert len(everything) == total == len(set(everything))
    assert everything[-3:] == ["clip002.mp4", "clip001.mp4", "clip000.mp4"]
    last = catalog.page(State.COMPLETED, offset=100, limit=50)
    assert len(last.items) == total - 100 and last.total == total
    assert catalog.page(State.COMPLETED, offset=10_000).items == []
    assert catalog.page(State.COMPLETED, limit=0).items == []


def test_entries_carry_the_report_and_outputs(catalog: Catalog) -> None:
    failed = {e.name: e for e in catalog.page(State.FAILED).items}
    broken = failed["broken.mp4"]
    assert (broken.state, broken.stage, broken.error) == (State.FAILED, "summarize", "exit 1: boom")
    assert broken.duration_s == 3.25
    assert broken.filed_at == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 300))
    bare = failed["noreport.mp4"]  # no report: only what the folder says
    assert (bare.stage, bare.error, bare.logline, bare.summary, bare.duration_s) == (None,) * 5
    assert bare.filed_at is not None  # its ctime, until a report says better
    assert list(failed) == ["noreport.mp4", "broken.mp4"]  # ctime (now) is newer
    long = catalog.page(State.COMPLETED, "long.mp4").items[0]
    assert long.summary == LONG_SUMMARY[:SUMMARY_SHOWN] and long.logline == "Über-cool Straße scene"
    clip = catalog.page(State.COMPLETED, "clip003").items[0]
    assert clip.logline == "A talk number 3 about bridges"
    assert clip.summary == "Scenes of harbour cranes, take 3."


def test_search_by_name_logline_and_summary(catalog: Catalog) -> None:
    def found(query: str) -> list[str]:
        return sorted(names(catalog.page(State.COMPLETED, query, limit=500)))

    assert found("CLIP00") == [f"clip00{i}.mp4" for i in range(10)]  # part of a name, any case
    assert found("lip11") == [f"clip11{i}.mp4" for i in range(10)]
    bridges = found("bridges")  # a logline word
    assert bridges == [f"clip{i:03d}.mp4" for i in range(1, 120, 2)]
    assert found("bridg") == bridges  # words are prefixes
    assert found("harbour") == [f"clip{i:03d}.mp4" for i in range(0, 120, 3)]  # summary
    assert found("harbour bridges") == [f"clip{i:03d}.mp4" for i in range(3, 120, 6)]  # ANDed
    assert found("bridges clip01") == [f"clip01{i}.mp4" for i in range(1, 10, 2)]  # name AND text
    assert found("zeppelin") == ["long.mp4"]  # beyond the 300 characters shown
    assert found("straße") == found("STRAßE") == found("über") == ["long.mp4"]
    assert found("uber") == ["long.mp4"]  # diacritics ignored in texts
    assert found("nowhere") == []
    page = catalog.page(State.COMPLETED, "talk", limit=7)
    assert page.total == 60 and len(page.items) == 7
    assert names(catalog.page(State.FAILED, "boom")) == []  # errors are not searched
    assert names(catalog.page(State.FAILED, "BROK")) == ["broken.mp4"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_found_by_themselves(catalog: Catalog, name: str) -> None:
    assert name in names(catalog.page(State.COMPLETED, name, limit=500))
    entry = next(e for e in catalog.page(State.COMPLETED, name, limit=500).items if e.name == name)
    assert entry.logline == "Hostile name, calm text"


def test_hostile_queries_never_break_the_search(catalog: Catalog) -> None:
    def found(query: str) -> set[str]:
        return set(names(catalog.page(State.COMPLETED, query, limit=500)))

    assert found("%") == {"100% sure.mp4"}
    assert found("_") == {"under_score.mp4"}
    assert found("*") == {"star*.mp4"}
    assert found('"') == {'quote\'s "double".mp4'}
    assert found("'") == {'quote\'s "double".mp4'}
    assert found("<script>") == {"<script>alert(1)<script>.mp4"}
    assert found("zürich") == found("ZÜRICH") == {"été à Zürich.mp4"}
    assert found("動画") == {"日本語の動画.mp4"}
    assert found("🎬") == {"emoji 🎬.mp4"}
    assert found("NEAR") == found("near") == {"NEAR AND OR NOT.mp4"}
    assert found("AND NOT") == {"NEAR AND OR NOT.mp4"}
    assert found("col:on") == {"(paren) ^caret -minus col:on.mp4"}
    assert found("\n") == found("") == found("   ")  # blanks: every entry
    for query in ('"', '""', '"*', "**", "NEAR(", "NEAR(a b", "a OR", "-x", "^", ":", "{a}",
                  "'; DROP TABLE entries; --", "\\", "%_%", "\0", "x" * 10_000, "( )", "!!!",
                  "AND", "OR", "NOT", "*bridges", "bridges*", 'talk"', "+talk"):  # fmt: skip
        page = catalog.page(State.COMPLETED, query)
        assert page.total == len(found(query)) >= 0
    assert found("!!!") == set()  # punctuation only: a part of a name or nothing
    assert found("*bridges") == found("bridges*") == found("(bridges)") == found("bridges")
    assert len(found('talk"')) == 60  # the word inside the punctuation is searched
    assert catalog.counts()["completed"] == 120 + len(HOSTILE) + 1  # nothing was dropped


def test_substring_search_without_fts5(shelf: Shelf, tmp_path: Path) -> None:
    catalog = shelf.catalog(tmp_path / "plain.sqlite3", full_text=False)
    try:
        catalog.refresh()
        found = set(names(catalog.page(State.COMPLETED, "harbour bridges", limit=500)))
        assert found == {f"clip{i:03d}.mp4" for i in range(3, 120, 6)}
        assert names(catalog.page(State.COMPLETED, "zeppelin")) == ["long.mp4"]
        assert set(names(catalog.page(State.COMPLETED, "%"))) == {"100% sure.mp4"}
        assert catalog.page(State.COMPLETED, 'NEAR("').total == 0
    finally:
        catalog.close()


# -- changes ----------------------------------------------------------------------------------


def test_retry_moves_an_entry_out_of_failed_and_refiling_moves_it_back(
    tmp_path: Path, root: Root
) -> None:
    root.configure([root.stage("scan", "fail", attempts=1)])
    root.drop("a.mp4")
    root.drop("b.mp4")
    root.vvflow("once", check=1)
    settings = load_settings(root_flag=str(root.path))
    pipeline = Pipeline(settings.stages, settings.root)
    layout = Layout(settings.root, settings.extensions, pipeline.all_outputs)
    catalog = Catalog(layout, pipeline, tmp_path / "c.sqlite3")
    try:
        catalog.refresh()
        failed = catalog.page(State.FAILED)
        assert sorted(names(failed)) == ["a.mp4", "b.mp4"]
        assert {e.stage for e in failed.items} == {"scan"}
        assert all("boom in stage" in (e.error or "") for e in failed.items)
        first_error = {e.name: e.filed_at for e in failed.items}

        operations.retry(settings, ["a.mp4"])
        catalog.refresh()
        assert names(catalog.page(State.FAILED)) == ["b.mp4"]
        assert catalog.counts() == {"completed": 0, "failed": 1}

        # a.mp4 fails again under the same name, while nobody looked: the same file,
        # the same name in failed/, but a new filing (and a new report).
        root.configure([root.stage("scan", "bad", attempts=1)])
        root.vvflow("once", check=1)
        catalog.refresh()
        again = {e.name: e for e in catalog.page(State.FAILED).items}
        assert set(again) == {"a.mp4", "b.mp4"}
        assert "exit 65" in (again["a.mp4"].error or "") or "bad" in (again["a.mp4"].error or "")
        assert again["b.mp4"].filed_at == first_error["b.mp4"]

        # b.mp4 retried and completed: it leaves failed/ and shows in completed/.
        operations.retry(settings, ["b.mp4"])
        root.configure([root.stage("scan", "ok", attempts=1)])
        root.vvflow("once", check=0)
        catalog.refresh()
        assert names(catalog.page(State.FAILED)) == ["a.mp4"]
        done = catalog.page(State.COMPLETED)
        assert names(done) == ["b.mp4"] and done.items[0].stage is None
    finally:
        catalog.close()


def test_same_name_refiled_between_two_looks_is_read_again(tmp_path: Path) -> None:
    shelf = Shelf.make(tmp_path / "root")
    shelf.file(State.FAILED, "x.mp4", 1, stage="scan", error="first")
    catalog = shelf.catalog(tmp_path / "c.sqlite3")
    try:
        catalog.refresh()
        assert catalog.page(State.FAILED).items[0].error == "first"
        # retried, then failed again at once: the name leaves failed/ and comes back
        pending = shelf.layout.pending / "x.mp4"
        os.rename(shelf.layout.failed / "x.mp4", pending)
        os.rename(pending, shelf.layout.failed / "x.mp4")
        path = shelf.layout.failed / "x.mp4"
        rep = report.load(shelf.layout.report_path("x.mp4"))
        assert rep is not None
        rep.error, rep.finished_at = "second", "2030-01-01T00:00:00Z"
        report.save(shelf.layout.report_path("x.mp4"), rep, durable=False)
        assert report.Identity.of(os.lstat(path)) == rep.identity
        catalog.refresh()
        entry = catalog.page(State.FAILED).items[0]
        assert (entry.error, entry.filed_at) == ("second", "2030-01-01T00:00:00Z")
        # a new file under an old name (another inode) is another entry too
        os.unlink(path)
        shelf.file(State.FAILED, "x.mp4", 2, stage="logline", error="third")
        catalog.refresh()
        assert [(e.name, e.error) for e in catalog.page(State.FAILED).items] == [("x.mp4", "third")]
        assert catalog.counts() == {"completed": 0, "failed": 1}
    finally:
        catalog.close()


def test_a_report_of_another_file_is_not_believed(tmp_path: Path) -> None:
    shelf = Shelf.make(tmp_path / "root")
    path = shelf.file(State.COMPLETED, "y.mp4", 1, logline="Kept words")
    shelf.layout.report_path("y.mp4").write_text("{not json")  # broken: fields null
    other = shelf.file(State.FAILED, "z.mp4", 2, error="old")
    replacement = tmp_path / "z.mp4"
    replacement.write_bytes(b"another file, same name")
    os.replace(replacement, other)  # its report names the old inode
    catalog = shelf.catalog(tmp_path / "c.sqlite3")
    try:
        catalog.refresh()
        y = catalog.page(State.COMPLETED).items[0]
        assert (y.name, y.logline, y.duration_s) == ("y.mp4", "Kept words", None)
        assert y.filed_at is not None and path.exists()
        z = catalog.page(State.FAILED).items[0]
        assert (z.name, z.error) == ("z.mp4", None)
    finally:
        catalog.close()


def test_background_thread_follows_the_folders(tmp_path: Path) -> None:
    shelf = Shelf.make(tmp_path / "root")
    catalog = Catalog(shelf.layout, shelf.pipeline, tmp_path / "c.sqlite3", interval=0.05)
    try:
        catalog.start()
        wait_for(lambda: not catalog.page(State.COMPLETED).indexing, "the first listing")
        shelf.file(State.COMPLETED, "late.mp4", 1, logline="Arrives later")
        wait_for(lambda: catalog.page(State.COMPLETED, "arrives").total == 1, "the new entry")
        os.rename(shelf.layout.completed / "late.mp4", shelf.layout.failed / "late.mp4")
        wait_for(lambda: catalog.counts() == {"completed": 0, "failed": 1}, "the move")
        wait_for(lambda: names(catalog.page(State.FAILED, "arrives")) == ["late.mp4"], "texts")
    finally:
        catalog.close()


def test_processes_sharing_one_cache_file_agree(tmp_path: Path) -> None:
    shelf = Shelf.make(tmp_path / "root")
    for i in range(300):
        shelf.file(State.COMPLETED, f"v{i}.mp4", i, logline=f"shared {i}")
    db = tmp_path / "shared.sqlite3"
    catalogs = [shelf.catalog(db) for _ in range(3)]
    try:
        threads = [threading.Thread(target=c.refresh) for c in catalogs]
        for t in threads:
            t.start()
        for i in range(300, 400):  # more arrive while they build
            shelf.file(State.COMPLETED, f"v{i}.mp4", i, logline=f"shared {i}")
        for t in threads:
            t.join(timeout=60)
        for c in catalogs:
            c.refresh()
        for c in catalogs:
            page = c.page(State.COMPLETED, "shared", limit=1000)
            assert page.total == 400 and len(set(names(page))) == 400 and not page.indexing
        with sqlite3.connect(db) as direct:
            assert direct.execute("SELECT count(*) FROM texts").fetchone()[0] == 400
            kept = direct.execute("SELECT state, n FROM counts WHERE n != 0").fetchall()
            assert (
                kept
                == direct.execute("SELECT state, count(*) FROM entries GROUP BY state").fetchall()
            )
    finally:
        for c in catalogs:
            c.close()


def test_a_cache_found_whole_is_kept_and_nothing_is_read_again(tmp_path: Path) -> None:
    shelf = Shelf.make(tmp_path / "root")
    for i in range(50):
        shelf.file(State.COMPLETED, f"k{i}.mp4", i, logline="Kept")
    shelf.file(State.FAILED, "f.mp4", 99, error="Kept failure")
    db = tmp_path / "c.sqlite3"
    first = shelf.catalog(db)
    first.refresh()
    first.close()
    with sqlite3.connect(db) as direct:
        rows = direct.execute("SELECT id, name, indexed FROM entries ORDER BY id").fetchall()
    direct.close()
    again = shelf.catalog(db)  # another process, later: its first listing checks ctimes
    try:
        again.refresh(texts=False)
        page = again.page(State.COMPLETED, "kept")
        assert page.total == 50 and not page.indexing
        with sqlite3.connect(db) as direct:
            assert (
                direct.execute("SELECT id, name, indexed FROM entries ORDER BY id").fetchall()
                == rows
            )
        direct.close()
    finally:
        again.close()


# -- the cache file ------------------------------------------------------------------------


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.lstat().st_mtime_ns, p.lstat().st_size)
        for p in [path, *path.rglob("*")]
    }  # fmt: skip


def test_default_cache_is_outside_the_root_and_never_writes_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shelf = Shelf.make(tmp_path / "root")
    shelf.file(State.COMPLETED, "a.mp4", 1, logline="Read only")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = _tree(shelf.layout.root)
    for p in [shelf.layout.root, *shelf.layout.root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)  # read-only (root ignores it; the tree tells)
    try:
        catalog = Catalog(shelf.layout, shelf.pipeline)
        try:
            catalog.refresh()
            assert names(catalog.page(State.COMPLETED, "read")) == ["a.mp4"]
            assert catalog.path.parent == tmp_path / "cache" / "vvflow" == cache_home()
        finally:
            catalog.close()
        again = Catalog(shelf.layout, shelf.pipeline)  # the same file, found again
        assert again.path == catalog.path
        again.close()
        assert _tree(shelf.layout.root) == before
    finally:
        for p in [shelf.layout.root, *shelf.layout.root.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


def test_unwritable_cache_home_falls_back_to_a_private_temp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shelf = Shelf.make(tmp_path / "root")
    shelf.file(State.COMPLETED, "a.mp4", 1)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    catalog = Catalog(shelf.layout, shelf.pipeline)
    try:
        catalog.refresh()
        assert catalog.counts()["completed"] == 1
        assert catalog.path.parent == tmp_path / "tmp" / f"vvflow-{os.getuid()}"
        assert catalog.path.parent.stat().st_mode & 0o777 == 0o700
    finally:
        catalog.close()
    # A cache home inside the root is refused the same way: the root may be shared.
    monkeypatch.setenv("XDG_CACHE_HOME", str(shelf.layout.root / "cache"))
    inside = Catalog(shelf.layout, shelf.pipeline)
    inside.close()
    assert inside.path.parent == tmp_path / "tmp" / f"vvflow-{os.getuid()}"
    assert not (shelf.layout.root / "cache").exists()


def test_corrupt_or_foreign_cache_files_are_rebuilt(tmp_path: Path) -> None:
    shelf = Shelf.make(tmp_path / "root")
    shelf.file(State.COMPLETED, "a.mp4", 1, logline="Survives corruption")
    db = tmp_path / "c.sqlite3"
    db.write_bytes(b"this is not a database" * 100)
    catalog = shelf.catalog(db)
    catalog.refresh()
    assert names(catalog.page(State.COMPLETED, "corruption")) == ["a.mp4"]
    catalog.close()
    with sqlite3.connect(db) as direct:  # another schema version
        direct.execute("UPDATE meta SET value = '0' WHERE key = 'schema'")
    direct.close()
    catalog = shelf.catalog(db)
    try:
        assert catalog.page(State.COMPLETED).total == 0  # rebuilt, not listed yet
        catalog.refresh()
        assert names(catalog.page(State.COMPLETED, "survives")) == ["a.mp4"]
        # corrupted while open: its pages overwritten under it
        with db.open("r+b") as fh:
            fh.seek(0)
            fh.write(b"\0" * 4096 * 4)
        catalog.close()
        catalog = shelf.catalog(db)
        catalog.refresh()
        assert names(catalog.page(State.COMPLETED, "survives")) == ["a.mp4"]
    finally:
        catalog.close()


# -- size ----------------------------------------------------------------------------------


def _create(path: str, data: bytes) -> os.stat_result:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        return os.fstat(fd)
    finally:
        os.close(fd)


def test_twenty_thousand_entries_build_and_page_quickly(tmp_path: Path) -> None:
    """Timings are reported, not asserted (the benchmark measures 100,000 against a
    baseline); run with -s to see them."""
    shelf = Shelf.make(tmp_path / "root")
    count = 20_000
    began = time.perf_counter()
    # The report module's own format (report.dumps), filled in without its cost.
    template = report.dumps(report.Report(
        name="@name", original_name="@name", state="completed", duration_s=1.0,
        identity=report.Identity(size=1, mtime_ns=111, inode=222), finished_at="@when",
    )).decode()  # fmt: skip
    outputs = shelf.pipeline.all_outputs("x", "x")
    for key in ("summarize", "logline"):
        outputs[key].parent.mkdir(parents=True, exist_ok=True)
    reports, completed = str(shelf.layout.reports), str(shelf.layout.completed)
    loglines = outputs["logline"].parent
    for i in range(count):
        name = f"video{i:05d}.mp4"
        st = _create(f"{completed}/{name}", b"v")
        if i % 4 == 0:  # (files cost time) the others are filed at their ctime: now
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(LATER + i))
            text = template.replace("@name", name).replace("@when", when)
            text = text.replace("111", str(st.st_mtime_ns)).replace("222", str(st.st_ino))
            _create(f"{reports}/{name}.json", text.encode())
        if i % 10 == 0:
            _create(f"{loglines}/video{i:05d}.logline.json",
                    json.dumps({"logline": f"needle {i} in the hay"}).encode())  # fmt: skip
    made = time.perf_counter() - began

    catalog = shelf.catalog(tmp_path / "c.sqlite3")
    try:
        began = time.perf_counter()
        catalog.refresh(texts=False)
        names_s = time.perf_counter() - began
        assert catalog.counts() == {"completed": count, "failed": 0}
        assert catalog.page(State.COMPLETED).indexing
        began = time.perf_counter()
        catalog.refresh()
        texts_s = time.perf_counter() - began

        def timed(call: object, repeats: int = 20) -> float:
            best = float("inf")
            for _ in range(repeats):
                began = time.perf_counter()
                call()  # type: ignore[operator]
                best = min(best, time.perf_counter() - began)
            return best * 1000

        rep = report.load(shelf.layout.report_path("video00008.mp4"))
        assert rep is not None and rep.identity == report.Identity.of(
            os.lstat(shelf.layout.completed / "video00008.mp4")
        )
        first = catalog.page(State.COMPLETED, limit=count // 4 + 1)
        assert not first.indexing
        reported = [f"video{i:05d}.mp4" for i in range(count - 4, -1, -4)]
        assert names(first)[: count // 4] == reported  # finished_at, later than any ctime
        assert first.items[-1].filed_at is not None and first.items[-1].duration_s is None
        page_ms = timed(lambda: catalog.page(State.COMPLETED))
        deep_ms = timed(lambda: catalog.page(State.COMPLETED, offset=count - 50))
        counts_ms = timed(catalog.counts)
        name_ms = timed(lambda: catalog.page(State.COMPLETED, "video1999"), 5)
        text_ms = timed(lambda: catalog.page(State.COMPLETED, "needle"), 5)
        idle_ms = timed(lambda: catalog.refresh(texts=False), 5)
        assert catalog.page(State.COMPLETED, "needle").total == count // 10
        assert catalog.page(State.COMPLETED, "VIDEO1999").total == 10
        print(
            f"\n{count} entries (made in {made:.1f} s): names listed in {names_s:.2f} s, "
            f"texts read in {texts_s:.2f} s; first page {page_ms:.2f} ms, last page "
            f"{deep_ms:.2f} ms, counts {counts_ms:.2f} ms, name search {name_ms:.1f} ms, "
            f"text search {text_ms:.1f} ms, an idle refresh {idle_ms:.2f} ms; load "
            f"{os.getloadavg()[0]:.2f}"
        )
    finally:
        catalog.close()
