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
    # Paths derived from the original are the copy's; names and stems are the stage's
    # data, kept as the stage wrote them (a field "stage": "scan" is not a name).
    assert scan["input"].endswith("/copy of original.mp4")
    assert scan["env"]["VVFLOW_VIDEO"] == scan["input"]
    assert scan["env"]["VVFLOW_NAME"] == "original.mp4"
    assert scan["env"]["VVFLOW_STEM"] == "original"
    summary = json.loads((root.path / "summaries" / "copy of original.summary.json").read_text())
    assert summary["size"] > 0
    original_scan = json.loads((root.path / "analytic" / "original.analytic.json").read_text())
    assert original_scan["env"]["VVFLOW_NAME"] == "original.mp4"
    assert any(e["event"] == "duplicate" for e in events(proc.stderr))
    # Hashed only once a video of the same size existed: the copy, and the original
    # (never hashed in its own run, when its size was new), once each.
    hashed = [e["video"] for e in events(proc.stderr) if e["event"] == "hashed"]
    assert sorted(hashed) == ["copy of original.mp4", "original.mp4"]
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
    size_dir = root.path / "index" / "size" / str(len(root.video_bytes))
    assert len(list(size_dir.iterdir())) == 1  # the original, unhashed: its size was new
    # Entries that lie (a name that is not a completed video, garbage left by a broken
    # tool) are not believed and are dropped; the true one still answers.
    (size_dir / ("0" * 32)).write_text('{"name": "gone.mp4"}')
    (size_dir / ("1" * 32)).write_text("{")
    root.drop("a again.mp4", root.video_bytes)
    root.vvflow("once", check=0)
    assert root.report("a again.mp4")["duplicate_of"] == "a.mp4"
    # The original, never hashed in its own run (its size was new), was hashed once and
    # moved to the digest index.
    assert sorted(p.name for p in size_dir.iterdir()) == []
    by_digest = root.path / "index" / "sha256" / root.report("a.mp4")["sha256"]
    assert json.loads(by_digest.read_text()) == {"names": ["a.mp4"]}
    # The original's entry lost (as if the index were damaged): the copy runs its stages,
    # and becomes an original itself, never a false duplicate.
    by_digest.unlink()
    root.drop("a third.mp4", root.video_bytes)
    root.vvflow("once", check=0)
    assert root.report("a third.mp4")["duplicate_of"] is None
    assert _stage_runs(root) == {"scan": 2, "summarize": 2, "logline": 2}


def test_a_video_of_a_new_size_is_never_read(root: Root) -> None:
    root.configure()
    root.drop("a.mp4")
    root.drop("b.mp4", b"x" * 5000)
    proc = root.vvflow("once", check=0)
    assert not [e for e in events(proc.stderr) if e["event"] == "hashed"]
    assert root.report("a.mp4")["sha256"] is None


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
