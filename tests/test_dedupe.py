"""Content identity: the same bytes are processed once, whatever their name."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from tests.conftest import Root, events


def _stage_runs(root: Root) -> Counter[str]:
    return Counter(r["stage"] for r in root.runs())


def test_same_bytes_under_a_second_name_run_no_stage(root: Root) -> None:
    root.configure()
    root.drop("original.mp4", root.video_bytes)
    root.vvflow("once", check=0)
    root.drop("copy of original.mp4", root.video_bytes)
    proc = root.vvflow("once", check=0)
    assert _stage_runs(root) == {"scan": 1, "summarize": 1, "logline": 1}
    assert root.names("completed") == ["copy of original.mp4", "original.mp4"]
    report = root.report("copy of original.mp4")
    assert report["duplicate_of"] == "original.mp4"
    assert report["sha256"] == root.report("original.mp4")["sha256"]
    assert {s["status"] for s in report["stages"].values()} == {"succeeded"}
    # The outputs are whole, and where they name the video they name the copy.
    scan = json.loads((root.path / "analytic" / "copy of original.analytic.json").read_text())
    assert scan["env"]["VVFLOW_NAME"] == "copy of original.mp4"
    assert scan["env"]["VVFLOW_STEM"] == "copy of original"
    assert scan["input"].endswith("/copy of original.mp4")
    summary = json.loads((root.path / "summaries" / "copy of original.summary.json").read_text())
    assert summary["size"] > 0
    original_scan = json.loads((root.path / "analytic" / "original.analytic.json").read_text())
    assert original_scan["env"]["VVFLOW_NAME"] == "original.mp4"
    assert any(e["event"] == "duplicate" for e in events(proc.stderr))
    hashed = [e for e in events(proc.stderr) if e["event"] == "hashed"]
    assert len(hashed) == 1  # the copy, hashed once; the original was hashed in its run
    status = root.status()
    assert status["duplicates"] == 1 and status["completed"] == 2


def test_same_bytes_under_the_same_name_later(root: Root) -> None:
    root.configure()
    root.drop("a.mp4", root.video_bytes)
    root.vvflow("once", check=0)
    root.drop("a.mp4", root.video_bytes)
    root.vvflow("once", check=0)
    assert root.names("completed") == ["a-2.mp4", "a.mp4"]
    assert root.report("a-2.mp4")["duplicate_of"] == "a.mp4"
    assert _stage_runs(root) == {"scan": 1, "summarize": 1, "logline": 1}
    assert (root.path / "loglines" / "a-2.logline.json").stat().st_size > 0


def test_same_bytes_twice_at_once_wait_for_each_other(root: Root) -> None:
    root.configure(root.three_stages("sleep:1.0"), workers=2)
    root.drop("one.mp4", root.video_bytes)
    root.drop("two.mp4", root.video_bytes)
    proc = root.vvflow("once", check=0)
    assert root.names("completed") == ["one.mp4", "two.mp4"]
    assert _stage_runs(root) == {"scan": 1, "summarize": 1, "logline": 1}
    duplicates = [root.report(n).get("duplicate_of") for n in ("one.mp4", "two.mp4")]
    assert set(duplicates) in ({None, "one.mp4"}, {None, "two.mp4"})
    assert any(e["event"] == "waiting_for_original" for e in events(proc.stderr))


def test_different_bytes_under_the_same_name_are_processed(root: Root) -> None:
    root.configure()
    root.drop("a.mp4", b"first" * 100)
    root.vvflow("once", check=0)
    root.drop("a.mp4", b"second" * 100)
    root.vvflow("once", check=0)
    assert _stage_runs(root) == {"scan": 2, "summarize": 2, "logline": 2}
    assert root.report("a-2.mp4")["duplicate_of"] is None


def test_deleted_index_is_rebuilt_with_the_same_answers(root: Root) -> None:
    root.configure()
    root.drop("a.mp4", root.video_bytes)
    root.drop("b.mp4", b"other" * 100)
    root.vvflow("once", check=0)
    root.drop("a copy.mp4", root.video_bytes)
    root.vvflow("once", check=0)
    shutil.rmtree(root.path / "index")
    root.drop("b copy.mp4", b"other" * 100)
    root.drop("a copy 2.mp4", root.video_bytes)
    proc = root.vvflow("once", check=0)
    assert any(e["event"] == "index_rebuilt" for e in events(proc.stderr))
    assert root.report("b copy.mp4")["duplicate_of"] == "b.mp4"
    assert root.report("a copy 2.mp4")["duplicate_of"] == "a.mp4"
    assert _stage_runs(root) == {"scan": 2, "summarize": 2, "logline": 2}
    assert root.status()["duplicates"] == 3


def test_stale_index_entries_are_repaired(root: Root) -> None:
    root.configure()
    root.drop("a.mp4", root.video_bytes)
    root.vvflow("once", check=0)
    digest = root.report("a.mp4")["sha256"]
    entry = root.path / "index" / "sha256" / digest[:2] / digest
    # A garbage entry (as if written by hand or by a broken tool) and one pointing at a
    # video that is not completed: neither is believed, both are repaired.
    entry.write_text('{"name": "gone.mp4"}')
    root.drop("b.mp4", b"fresh" * 100)
    root.vvflow("once", check=0)
    root.drop("a again.mp4", root.video_bytes)
    root.vvflow("once", check=0)
    runs = _stage_runs(root)
    assert runs == {"scan": 3, "summarize": 3, "logline": 3}  # a, b, and "a again" (index lost a)
    assert json.loads(entry.read_text()) == {"name": "a again.mp4"}
    root.drop("a third.mp4", root.video_bytes)
    root.vvflow("once", check=0)
    assert root.report("a third.mp4")["duplicate_of"] == "a again.mp4"
    assert _stage_runs(root) == runs
    # A half-written entry cannot exist (entries are written whole), but garbage is
    # treated as a miss too.
    entry.write_text("{")
    root.drop("a fourth.mp4", root.video_bytes)
    root.vvflow("once", check=0)
    assert root.report("a fourth.mp4")["duplicate_of"] is None


def test_dedupe_false_and_retry_from_start_bypass_it(root: Root, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    root.configure(root.three_stages(logline=f"until:{flag}", attempts=1), dedupe=False)
    root.drop("a.mp4", root.video_bytes)
    root.drop("b.mp4", root.video_bytes)
    root.vvflow("once", check=1)
    assert root.report("a.mp4")["sha256"] is None
    flag.touch()
    root.configure(root.three_stages(logline=f"until:{flag}", attempts=1))
    root.vvflow("retry", "a.mp4", check=0)
    root.vvflow("once", check=0)
    root.vvflow("retry", "--from-start", "b.mp4", check=0)
    root.vvflow("once", check=0)
    assert root.report("b.mp4")["duplicate_of"] is None
    # a: scan+summarize (failed run) + logline on resume; b: everything twice.
    assert _stage_runs(root) == {"scan": 3, "summarize": 3, "logline": 4}
