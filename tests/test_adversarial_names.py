"""Names under attack: extensions that differ only in case, and manual retries under a
new name or with a name clash.

Outputs are derived from a video's stem, so two videos whose stems are equal ignoring
case (`clip.Mp4`, `clip.mkv`, `CLIP.mkv`) would write the same output paths (on a
case-insensitive share even the same report). And a report must follow the very file
it describes: a video renamed by hand or moved to a free name by `vvflow retry` keeps
its finished stages, its old name is freed, and a file replaced in place starts from
scratch under its own name. Every stage here is tests/stagecmd.py, which logs each
call and writes an output naming the video it ran for (VVFLOW_NAME) and its size.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Root, events
from tests.test_adversarial_support import Fleet, assert_settled, entries, hostile, tree, wait_for

STAGES = ("scan", "summarize", "logline")
FOLDERS = {"scan": ("analytic", "analytic"), "summarize": ("summaries", "summary"),
           "logline": ("loglines", "logline")}  # fmt: skip


def _output(root: Root, stage: str, stem: str) -> Path:
    folder, suffix = FOLDERS[stage]
    return root.path / folder / f"{stem}.{suffix}.json"


def _calls(root: Root) -> Counter[tuple[str, str]]:
    """(stage, video name the stage saw) -> how many times it ran."""
    return Counter((r["stage"], r["video"]) for r in root.runs())


def _reports(root: Root) -> list[str]:
    return sorted(p.name for p in (root.path / "reports").iterdir())


def _scan_of(root: Root, stem: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_output(root, "scan", stem).read_bytes())
    return data


def _assert_owns_outputs(root: Root, name: str, data: bytes) -> None:
    """`name` is completed, its report points at its own outputs, and the scan output
    was made from its very bytes (the size says which video it was)."""
    assert (root.folder("completed") / name).read_bytes() == data
    rep = root.report(name)
    assert rep["state"] == "completed" and rep["name"] == name, rep
    assert rep["identity"]["size"] == len(data)
    stem = os.path.splitext(name)[0]
    for stage in STAGES:
        record = rep["stages"][stage]
        assert record["status"] == "succeeded"
        folder, suffix = FOLDERS[stage]
        assert record["output"] == f"{folder}/{stem}.{suffix}.json", record
        assert _output(root, stage, stem).stat().st_size > 0
    assert _scan_of(root, stem)["size"] == len(data)


# -- item 1: stems equal ignoring case ------------------------------------------------


def test_extensions_differing_only_in_mixed_case_never_share_outputs(root: Root) -> None:
    root.configure()
    first = root.video_bytes + b"first clip"
    root.drop("clip.Mp4", first)
    root.vvflow("once", check=0)
    assert root.names("completed") == ["clip.Mp4"]

    second, third = root.video_bytes + b"second clip" * 2, root.video_bytes + b"third" * 5
    root.drop("clip.mkv", second)
    root.drop("CLIP.mkv", third)
    root.vvflow("once", check=0)

    completed = root.names("completed")
    assert len(completed) == 3 and "clip.Mp4" in completed, completed
    stems = [os.path.splitext(n)[0].casefold() for n in completed]
    assert sorted(stems) == ["clip", "clip-2", "clip-3"], completed
    _assert_owns_outputs(root, "clip.Mp4", first)
    by_size = {len(second): second, len(third): third}
    for name in completed:
        if name != "clip.Mp4":
            _assert_owns_outputs(root, name, by_size[root.report(name)["identity"]["size"]])
    assert _scan_of(root, "clip")["env"]["VVFLOW_NAME"] == "clip.Mp4"
    # Each video ran each stage exactly once, under the name it was filed as.
    assert _calls(root) == Counter({(s, n): 1 for s in STAGES for n in completed})


def test_completed_report_blocks_its_stem_in_any_case_after_the_video_is_deleted(
    root: Root,
) -> None:
    """The operator deleted completed/Clip.MOV: its report and outputs remain, and a
    new `cLiP.mp4` must not overwrite them."""
    root.configure()
    first = root.video_bytes + b"first"
    root.drop("Clip.MOV", first)
    root.vvflow("once", check=0)
    (root.folder("completed") / "Clip.MOV").unlink()
    before = _output(root, "scan", "Clip").read_bytes()

    second = root.video_bytes + b"second" * 3
    root.drop("cLiP.mp4", second)
    root.vvflow("once", check=0)
    assert root.names("completed") == ["cLiP-2.mp4"]
    _assert_owns_outputs(root, "cLiP-2.mp4", second)
    assert _output(root, "scan", "Clip").read_bytes() == before
    assert root.report("Clip.MOV")["state"] == "completed"


@pytest.mark.timeout(120)
def test_instances_racing_for_stems_equal_ignoring_case(root: Root, tmp_path: Path) -> None:
    """Two instances, 8 triples of videos whose stems are equal ignoring case
    (`q03.Mp4`, `Q03.mkv`, `q03.MOV`) dropped at once: claims of one stem race between
    instances. Every video completes once, no two completed stems are equal ignoring
    case, and each output was written for the video its stem names."""
    root.configure([hostile(root, "scan", "sleep:0-0.05")], stable_seconds=0.3,
                   rescan_seconds=0.5, workers=2)  # fmt: skip
    names = [n for i in range(8) for n in (f"q{i:02d}.Mp4", f"Q{i:02d}.mkv", f"q{i:02d}.MOV")]
    with Fleet(root, tmp_path) as fleet:
        runs = [fleet.start("run") for _ in range(2)]
        for name in names:
            root.drop(name)
        wait_for(lambda: len(entries(root.folder("completed"))) == len(names), timeout=90,
                 what="every video", detail=lambda: tree(root))  # fmt: skip
        time.sleep(1.0)  # two more rescans: nothing comes back
        for run in runs:
            assert run.stop() == 0
    completed = entries(root.folder("completed"))
    folded = {os.path.splitext(n)[0].casefold() for n in completed}
    assert len(folded) == len(completed) == len(names), completed
    assert sorted(root.report(n)["original_name"] for n in completed) == sorted(names)
    assert_settled(root, completed, ["scan"])


# -- item 9: manual retries ---------------------------------------------------------


def test_failed_video_renamed_by_hand_resumes_and_frees_its_old_name(
    root: Root, tmp_path: Path
) -> None:
    """(a) `mv failed/b.mp4 pending/b-renamed.mp4`: the very file keeps its finished
    scan, its report and outputs follow it, and stem `b` is free for another video."""
    flag = tmp_path / "fixed"
    root.configure(root.three_stages(summarize=f"until:{flag}", attempts=1))
    first = root.video_bytes + b"the b video"
    root.drop("b.mp4", first)
    root.vvflow("once", check=1)
    assert root.names("failed") == ["b.mp4"]
    flag.touch()
    os.rename(root.folder("failed") / "b.mp4", root.folder("pending") / "b-renamed.mp4")
    proc = root.vvflow("once", check=0)
    moved = [e for e in events(proc.stderr) if e["event"] == "history_moved"]
    assert [(e["video"], e["previous_name"], e["outputs_kept"]) for e in moved] == [
        ("b-renamed.mp4", "b.mp4", ["scan"])
    ]

    assert root.names("completed") == ["b-renamed.mp4"]
    _assert_owns_outputs(root, "b-renamed.mp4", first)
    # The scan ran once, when the file was still called b.mp4; the output moved with it.
    assert _calls(root) == Counter({("scan", "b.mp4"): 1, ("summarize", "b.mp4"): 1,
                                    ("summarize", "b-renamed.mp4"): 1,
                                    ("logline", "b-renamed.mp4"): 1})  # fmt: skip
    assert _scan_of(root, "b-renamed")["env"]["VVFLOW_NAME"] == "b.mp4"
    rep = root.report("b-renamed.mp4")
    assert rep["stages"]["scan"]["attempts"][0]["outcome"] == "succeeded"
    assert rep["runs"] == 2 and "b.mp4" in rep["previous_names"]
    # No report is left describing a b.mp4 that is gone, and no output of stem b.
    assert _reports(root) == ["b-renamed.mp4.json"]
    assert not any(_output(root, s, "b").exists() for s in STAGES)

    second = root.video_bytes + b"a different b video" * 3
    root.drop("b.mp4", second)
    root.vvflow("once", check=0)
    assert root.names("completed") == ["b-renamed.mp4", "b.mp4"]
    _assert_owns_outputs(root, "b.mp4", second)
    _assert_owns_outputs(root, "b-renamed.mp4", first)
    assert _calls(root)[("scan", "b.mp4")] == 2  # once for each of the two files


def test_retry_while_another_file_of_that_name_is_pending(root: Root, tmp_path: Path) -> None:
    """(b) `vvflow retry x.mp4` while a different x.mp4 waits in pending/."""
    flag = tmp_path / "fixed"
    root.configure(root.three_stages(summarize=f"until:{flag}", attempts=1))
    old = root.video_bytes + b"old x"
    root.drop("x.mp4", old)
    root.vvflow("once", check=1)
    assert root.names("failed") == ["x.mp4"]
    new = root.video_bytes + b"new x" * 7
    root.drop("x.mp4", new)
    flag.touch()

    out = root.vvflow("retry", "x.mp4", check=0).stdout
    assert root.names("pending") == ["x-2.mp4", "x.mp4"], out
    assert "x-2.mp4" in out
    assert (root.folder("pending") / "x-2.mp4").read_bytes() == old
    # The report followed the retried file; none says pending for a video not there.
    assert _reports(root) == ["x-2.mp4.json"]
    moved = root.report("x-2.mp4")
    assert moved["state"] == "pending" and moved["identity"]["size"] == len(old)
    assert moved["stages"]["scan"]["output"] == "analytic/x-2.analytic.json"
    assert _output(root, "scan", "x-2").is_file() and not _output(root, "scan", "x").exists()

    root.vvflow("once", check=0)
    assert root.names("completed") == ["x-2.mp4", "x.mp4"]
    _assert_owns_outputs(root, "x-2.mp4", old)
    _assert_owns_outputs(root, "x.mp4", new)
    assert _calls(root) == Counter({("scan", "x.mp4"): 2, ("summarize", "x.mp4"): 2,
                                    ("logline", "x.mp4"): 1, ("summarize", "x-2.mp4"): 1,
                                    ("logline", "x-2.mp4"): 1})  # fmt: skip
    # The retried file's scan is the one made for the old bytes, not rerun.
    assert _scan_of(root, "x-2")["size"] == len(old)


def test_file_replaced_in_failed_then_retried_starts_from_scratch_under_its_name(
    root: Root, tmp_path: Path
) -> None:
    """(c) the operator copies a good file over failed/trunc.mp4 (same inode, new size
    and mtime) and runs `vvflow retry trunc.mp4`."""
    flag = tmp_path / "fixed"
    root.configure(root.three_stages(summarize=f"until:{flag}", attempts=1))
    broken = root.video_bytes[: len(root.video_bytes) // 2]
    root.drop("trunc.mp4", broken)
    root.vvflow("once", check=1)
    target = root.folder("failed") / "trunc.mp4"
    inode = target.stat().st_ino
    good = root.video_bytes + b"repaired"
    good_copy = tmp_path / "good.mp4"
    good_copy.write_bytes(good)
    shutil.copyfile(good_copy, target)  # what `cp good.mp4 failed/trunc.mp4` does
    assert target.stat().st_ino == inode
    flag.touch()

    root.vvflow("retry", "trunc.mp4", check=0)
    assert root.names("pending") == ["trunc.mp4"]
    if (root.path / "reports" / "trunc.mp4.json").exists():
        assert root.report("trunc.mp4")["identity"]["size"] == len(good)
    root.vvflow("once", check=0)

    assert root.names("completed") == ["trunc.mp4"] and root.names("failed") == []
    _assert_owns_outputs(root, "trunc.mp4", good)
    assert _reports(root) == ["trunc.mp4.json"]
    # Every stage ran for the new content; the broken content's scan is not reused.
    assert _calls(root) == Counter({("scan", "trunc.mp4"): 2, ("summarize", "trunc.mp4"): 2,
                                    ("logline", "trunc.mp4"): 1})  # fmt: skip


def test_replaced_file_moved_back_by_hand_starts_from_scratch(root: Root, tmp_path: Path) -> None:
    """(c) without `retry`: the replaced file is moved back to pending/ by hand."""
    flag = tmp_path / "fixed"
    root.configure(root.three_stages(logline=f"until:{flag}", attempts=1))
    root.drop("t.mp4", root.video_bytes + b"old")
    root.vvflow("once", check=1)
    good = root.video_bytes + b"new content" * 4
    with (root.folder("failed") / "t.mp4").open("r+b") as fh:  # rewritten in place
        fh.write(good)
    os.rename(root.folder("failed") / "t.mp4", root.folder("pending") / "t.mp4")
    flag.touch()
    root.vvflow("once", check=0)
    assert root.names("completed") == ["t.mp4"]
    _assert_owns_outputs(root, "t.mp4", good)
    assert _calls(root) == Counter({(s, "t.mp4"): 2 for s in STAGES})


def test_stale_failed_report_without_its_video_does_not_block_the_name(
    root: Root, tmp_path: Path
) -> None:
    """The operator deleted failed/d.mp4: a different d.mp4 takes the name d.mp4 and
    starts from scratch; the old content's outputs are not kept as its own."""
    flag = tmp_path / "fixed"
    root.configure(root.three_stages(summarize=f"until:{flag}", attempts=1))
    root.drop("d.mp4", root.video_bytes + b"old d")
    root.vvflow("once", check=1)
    (root.folder("failed") / "d.mp4").unlink()
    root.configure(root.three_stages(summarize=f"until:{flag}", scan="fail", attempts=1))
    new = root.video_bytes + b"new d" * 9
    root.drop("d.mp4", new)
    root.vvflow("once", check=1)
    assert root.names("failed") == ["d.mp4"]
    rep = root.report("d.mp4")
    assert rep["identity"]["size"] == len(new) and rep["failed_stage"] == "scan"
    assert rep["stages"]["scan"]["output"] is None
    # The old d.mp4's scan output is gone, not left beside the new video's report.
    assert not _output(root, "scan", "d").exists()
    assert _calls(root) == Counter({("scan", "d.mp4"): 2, ("summarize", "d.mp4"): 1})
