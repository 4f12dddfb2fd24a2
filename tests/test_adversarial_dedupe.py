"""Content identity under review (issue 11, items 4 and 10).

- A duplicate's outputs are the original's with only the paths derived from the
  original (its video, its outputs) rewritten, and only where they are whole values:
  a field that merely equals the video's name or stem (`"stage": "scan"` for a video
  called `scan.mp4`, `"color": "red"` for `red.mp4`) is the stage's data, not a name.
- A lookup's cost does not grow with the number of completed originals that share the
  claimed video's size (fixed-size camera segments all do).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Root
from vvflow import instance, report
from vvflow.dedupe import ContentIndex
from vvflow.layout import Layout, State

# A command stage that writes the kind of document real analytics write: fields whose
# values happen to equal the video's stem or name, nested lists, keys named like the
# video, and real paths (its input, an earlier stage's output, keyframes it wrote).
STAGE = r"""
import json, os, sys
stage, video, output, root = sys.argv[1:5]
upstream = sys.argv[5] if len(sys.argv) > 5 else None
name, stem = os.environ["VVFLOW_NAME"], os.environ["VVFLOW_STEM"]
frames = os.path.join(root, "keyframes", stem)
os.makedirs(frames, exist_ok=True)
with open(os.path.join(frames, "scene-001.jpg"), "wb") as fh:
    fh.write(b"\xff\xd8 keyframe of " + os.fsencode(name))
document = {
    "stage": stage,
    "color": "red",
    "audio": "loud",
    "detector": "content",
    "name": name,
    "stem": stem,
    "tags": [stem, name, ["nested", stem, {"deep": name, "video": video}]],
    stem: {"keyed by the stem": True},
    "notes": "notes/" + name,
    "video": video,
    "video_in_text": "read " + video,
    "keyframes_dir": "keyframes/" + stem,
    "keyframes": ["keyframes/" + stem + "/scene-001.jpg"],
    "count": 3,
    "ratio": 0.1,
    "nothing": None,
}
if upstream is not None:
    document["source"] = upstream
    document["source_rel"] = os.path.relpath(upstream, root)
    document["sources"] = [upstream, {"rel": os.path.relpath(upstream, root)}]
with open(output, "w", encoding="utf-8") as fh:
    json.dump(document, fh)
"""


def _stages(script: Path) -> list[dict[str, Any]]:
    command = [sys.executable, "-S", str(script)]
    return [
        {
            "name": "scan",
            "command": [*command, "scan", "{video}", "{output}", "{root}"],
            "output": "analytic/{stem}.analytic.json",
        },
        {
            "name": "summarize",
            "command": [*command, "summarize", "{video}", "{output}", "{root}", "{scan}"],
            "output": "summaries/{stem}.summary.json",
        },
    ]


def _replace_whole(data: Any, mapping: dict[str, str]) -> Any:
    """`data` with every string value that equals a key of `mapping` replaced."""
    if isinstance(data, str):
        return mapping.get(data, data)
    if isinstance(data, list):
        return [_replace_whole(item, mapping) for item in data]
    if isinstance(data, dict):
        return {key: _replace_whole(value, mapping) for key, value in data.items()}
    return data


OUTPUTS = {"scan": "analytic/{}.analytic.json", "summarize": "summaries/{}.summary.json"}


@pytest.mark.timeout(90)
def test_duplicate_outputs_differ_from_the_original_only_in_path_values(
    root: Root, tmp_path: Path
) -> None:
    """`scan.mp4` and `red.mp4` complete; `holiday.mp4` (the bytes of scan.mp4) and
    `blue.mp4` (those of red.mp4) are duplicates. Each duplicate's JSON outputs equal
    its original's with exactly these values replaced: the original's video path (in
    processing/<instance>/) by the duplicate's, and the original's output paths
    (absolute and relative to the root) by the duplicate's. Names, stems, a path that
    only ends in the name, text around a path, keys and keyframe paths stay as they
    were, and every keyframe path still points at a file."""
    script = tmp_path / "stage.py"
    script.write_text(STAGE)
    root.configure(_stages(script))
    pairs = {"scan.mp4": "holiday.mp4", "red.mp4": "blue.mp4"}
    contents = {name: root.video_bytes + b"\0" + name.encode() for name in pairs}
    for original, content in contents.items():
        root.drop(original, content)
    root.vvflow("once", check=0)
    for original, duplicate in pairs.items():
        root.drop(duplicate, contents[original])
    root.vvflow("once", check=0)

    processing = root.folder("processing")
    for original, duplicate in pairs.items():
        assert root.report(duplicate)["duplicate_of"] == original
        old_stem, new_stem = original[:-4], duplicate[:-4]
        docs = {}
        for stem in (old_stem, new_stem):
            for stage, pattern in OUTPUTS.items():
                docs[stem, stage] = json.loads((root.path / pattern.format(stem)).read_text())
        old_video = Path(docs[old_stem, "scan"]["video"])
        new_video = Path(docs[new_stem, "scan"]["video"])
        assert old_video.parent.parent == processing and old_video.name == original
        assert new_video.parent.parent == processing and new_video.name == duplicate
        mapping = {str(old_video): str(new_video)}
        for pattern in OUTPUTS.values():
            old_rel, new_rel = pattern.format(old_stem), pattern.format(new_stem)
            mapping[old_rel] = new_rel
            mapping[str(root.path / old_rel)] = str(root.path / new_rel)
        for stage in OUTPUTS:
            old, new = docs[old_stem, stage], docs[new_stem, stage]
            assert new == _replace_whole(old, mapping), (stage, old, new)
            # Spelled out, the fields a name-based rewrite used to break:
            assert new["stage"] == stage and new["color"] == "red"
            assert new["name"] == original and new["stem"] == old_stem
            assert new["notes"] == f"notes/{original}"
            for frame in [*new["keyframes"], new["keyframes_dir"]]:
                assert (root.path / frame).exists(), frame
        assert docs[new_stem, "summarize"]["source"] == str(root.path / OUTPUTS["scan"].format(
            new_stem))  # fmt: skip


@pytest.mark.timeout(110)
def test_builtin_pipeline_duplicate_keeps_its_data(root: Root) -> None:
    """The built-in stages on a 0.5 s video called `scan.mp4`, then the same bytes as
    `holiday.mp4`: the duplicate's analytic equals the original's but for the paths
    derived from the original, and its keyframe paths point at files that exist."""
    (root.path / "vvflow.toml").write_text("stable_seconds = 0\n")
    root.drop("scan.mp4", root.video_bytes)
    root.vvflow("once", check=0, timeout=100)
    root.drop("holiday.mp4", root.video_bytes)
    root.vvflow("once", check=0, timeout=100)
    assert root.report("holiday.mp4")["duplicate_of"] == "scan.mp4"
    folders = {"analytic": "analytic", "summaries": "summary", "loglines": "logline"}
    mapping = {f"{f}/scan.{kind}.json": f"{f}/holiday.{kind}.json" for f, kind in folders.items()}
    mapping.update({str(root.path / k): str(root.path / v) for k, v in mapping.items()})
    for folder, suffix in folders.items():
        old = json.loads((root.path / folder / f"scan.{suffix}.json").read_text())
        new = json.loads((root.path / folder / f"holiday.{suffix}.json").read_text())
        # The video's path in processing/<instance>/, whatever instance ran it.
        old_videos = _claimed_paths(root, old, "scan.mp4")
        new_videos = _claimed_paths(root, new, "holiday.mp4")
        assert len(old_videos) == len(new_videos) <= 1, (old_videos, new_videos)
        videos = dict(zip(old_videos, new_videos, strict=True))
        assert new == _replace_whole(old, {**mapping, **videos}), (old, new)
        assert "holiday" not in json.dumps(new).replace("holiday.", ""), new
    analytic = json.loads((root.path / "analytic" / "holiday.analytic.json").read_text())
    # Named relative to the keyframes folder, the duplicate's own copy of the scan's.
    keyframes = root.path / "keyframes" / "holiday"
    frames = [s["keyframe"] for s in analytic["scenes"] if s["keyframe"]]
    assert frames and all((keyframes / f).is_file() for f in frames), frames
    assert (keyframes / analytic["contact_sheet"]).is_file()


def _claimed_paths(root: Root, data: Any, name: str) -> list[str]:
    """The distinct string values in `data` that are `processing/<instance>/<name>`."""
    found: set[str] = set()
    if isinstance(data, str):
        path = Path(data)
        if path.name == name and path.parent.parent == root.folder("processing"):
            found.add(data)
    elif isinstance(data, list | dict):
        for item in data.values() if isinstance(data, dict) else data:
            found.update(_claimed_paths(root, item, name))
    return sorted(found)


# -- lookups at scale ------------------------------------------------------------------


SIZE = 4096


def _content(number: int) -> bytes:
    return f"segment {number}\n".encode().ljust(SIZE, b"\0")


def _history(base: Path, originals: int, *, hashed: bool) -> tuple[Layout, ContentIndex]:
    """A root with `originals` completed originals of one size, reports and files real;
    the index built from the reports (the way a fresh start builds it)."""
    layout = Layout(base, [".mp4"])
    layout.ensure()
    for number in range(originals):
        name = f"cam-{number:05d}.mp4"
        path = layout.completed / name
        path.write_bytes(_content(number))
        rep = report.Report(
            name=name,
            original_name=name,
            state=State.COMPLETED,
            identity=report.Identity.of(path.stat()),
            sha256=hashlib.sha256(_content(number)).hexdigest() if hashed else None,
        )
        report.save(layout.report_path(name), rep, durable=False)
    index = ContentIndex(layout)
    assert index.rebuild() == originals
    return layout, index


def _read_calls() -> int:
    """read(2) calls of this process so far (the kernel's count, /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "syscr":
            return int(value)
    raise AssertionError("no syscr in /proc/self/io")


def _lookup(index: ContentIndex, content: bytes) -> tuple[str | None, int]:
    """Which original a claimed video with `content` duplicates, and the read(2) calls
    the lookup made (not counting the claimed video's own hashing)."""
    digest = hashlib.sha256(content).hexdigest()
    before = _read_calls()
    found = index.find(SIZE, lambda: digest, exclude="claimed.mp4", cancel=threading.Event())
    reads = _read_calls() - before
    return (found.name if found is not None else None), reads


def _lookups(index: ContentIndex, originals: int) -> dict[str, int]:
    hit, hit_reads = _lookup(index, _content(originals // 2))
    assert hit == f"cam-{originals // 2:05d}.mp4"
    miss, miss_reads = _lookup(index, _content(originals + 1))
    assert miss is None
    return {"hit": hit_reads, "miss": miss_reads}


@pytest.mark.timeout(60)
def test_lookup_cost_does_not_grow_with_same_size_originals(tmp_path: Path) -> None:
    """10 vs 1,000 completed originals all of one size, their digests known: a lookup
    (one that finds its original, one that finds none) makes the same few reads; it
    used to read every index entry and every report of that size."""
    started = time.monotonic()
    reads = {n: _lookups(_history(tmp_path / f"r{n}", n, hashed=True)[1], n) for n in (10, 1000)}
    assert reads[1000]["hit"] <= reads[10]["hit"] + 2, reads
    assert reads[1000]["miss"] <= reads[10]["miss"] + 2, reads
    assert max(reads[1000].values()) <= 20, reads
    assert time.monotonic() - started < 40


@pytest.mark.timeout(60)
def test_originals_never_hashed_are_hashed_once_then_looked_up_by_digest(tmp_path: Path) -> None:
    """An index of originals whose digests were never computed (an index written by an
    earlier vvflow is of this form too): the first lookup of that size hashes each
    once; from then on a lookup costs as little as with 10 originals."""
    layout, index = _history(tmp_path / "r", 200, hashed=False)
    first, first_reads = _lookup(index, _content(7))
    assert first == "cam-00007.mp4"
    assert first_reads >= 200  # each original hashed (and its report read) once
    for number in (7, 150):
        rep = report.load(layout.report_path(f"cam-{number:05d}.mp4"))
        assert rep is not None and rep.sha256 == hashlib.sha256(_content(number)).hexdigest()
    reads = _lookups(index, 200)
    assert max(reads.values()) <= 20, reads
    # Rebuilding from the reports again changes no answer (idempotent).
    index.rebuild()
    index.rebuild()
    assert _lookups(index, 200) == reads


@pytest.mark.timeout(60)
def test_digest_match_is_checked_against_report_and_file(tmp_path: Path) -> None:
    """The index is a cache: an entry whose report no longer says completed with that
    digest, or whose file in completed/ is gone or was replaced, is never a match."""
    layout, index = _history(tmp_path / "r", 3, hashed=True)
    swaps: list[Callable[[], None]] = []

    def replace_file() -> None:
        path = layout.completed / "cam-00000.mp4"
        path.unlink()
        path.write_bytes(_content(0))  # same bytes, another file: not the one reported

    def unfile() -> None:
        os.rename(layout.completed / "cam-00001.mp4", layout.failed / "cam-00001.mp4")

    def other_digest() -> None:
        path = layout.report_path("cam-00002.mp4")
        rep = report.load(path)
        assert rep is not None
        rep.sha256 = "0" * 64
        report.save(path, rep, durable=False)

    swaps += [replace_file, unfile, other_digest]
    for number, swap in enumerate(swaps):
        assert _lookup(index, _content(number))[0] == f"cam-{number:05d}.mp4"
        swap()
        assert _lookup(index, _content(number))[0] is None, swap.__name__


@pytest.mark.timeout(60)
def test_index_of_the_earlier_format_keeps_working(tmp_path: Path) -> None:
    """An index written by an earlier vvflow (`index/size/<size>/<key>` -> name, the
    digests only in the reports) answers the first lookup right and is moved to the
    digest index on the way; from then on lookups cost a few reads."""
    layout, index = _history(tmp_path / "r", 100, hashed=True)
    folder = layout.root / "index"
    for part in ("sha256", "hashed"):
        for path in (folder / part).iterdir():
            path.unlink()
    for number in range(100):
        index.record(f"cam-{number:05d}.mp4", SIZE)  # the earlier format
    assert len(list((folder / "size" / str(SIZE)).iterdir())) == 100
    assert _lookup(index, _content(42))[0] == "cam-00042.mp4"
    assert list((folder / "size" / str(SIZE)).iterdir()) == []
    assert len(list((folder / "sha256").iterdir())) == 100
    assert max(_lookups(index, 100).values()) <= 20


def test_same_content_started_within_one_clock_tick_runs_once(tmp_path: Path) -> None:
    """Two workers of one instance register the same content within one tick of the
    filesystem's clock (ext4 stamps mtimes in kernel ticks of a few ms): their markers
    have equal mtimes and one instance name. Exactly one of them must wait for the
    other; before, neither did and both ran every stage."""
    layout = Layout(tmp_path / "root", [".mp4"])
    layout.ensure()
    lease = layout.processing / instance.InstanceId.current().name  # alive: this process
    lease.mkdir()
    index = ContentIndex(layout)
    data = b"the same bytes" * 1000
    markers = []
    for name in ("one.mp4", "two.mp4"):
        (lease / name).write_bytes(data)
        markers.append(index.register(len(data), lease / name, lease))
    tick = time.time_ns()
    for marker in markers:
        os.utime(marker, ns=(tick, tick))
    digest = hashlib.sha256(data).hexdigest()
    waits = [index.earlier_same_content(len(data), marker, digest) for marker in markers]
    assert sorted(waits) == [False, True], waits
