"""`vvflow once` with no `[[stages]]`: vvflow's own three stages, run as commands."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from tests.conftest import Root
from tests.media import make_truncated, make_video
from tests.stage_support import chat_server, closed_port_url, completion


def test_builtin_pipeline_on_a_generated_video(root: Root, tmp_path: Path) -> None:
    (root.path / "vvflow.toml").write_text("stable_seconds = 0\n")
    make_video(root.folder("pending") / "open day.mp4", seconds=3, width=320, height=240,
               fps=25, cuts=2, text="OPEN DAY", audio=True)  # fmt: skip
    make_truncated(
        make_video(tmp_path / "whole.mp4", seconds=3), root.folder("pending") / "cut.mp4"
    )
    (root.folder("pending") / "notes.mkv").write_text("this is not a video\n")
    root.vvflow("once", check=1, timeout=300)

    assert root.names("completed") == ["open day.mp4"]
    assert root.names("failed") == ["cut.mp4", "notes.mkv"]
    analytic = json.loads((root.path / "analytic" / "open day.analytic.json").read_text())
    assert analytic["scene_count"] == 3
    assert [s["start_frame"] for s in analytic["scenes"]] == [0, 25, 50]
    # The scan's folder output, published whole (the report says so): its keyframes and
    # contact sheet, named in the JSON relative to it; nothing else under keyframes/ (no
    # staging leftovers, nothing of the videos that failed).
    keyframes = root.path / "keyframes"
    assert sorted(p.relative_to(keyframes).as_posix() for p in keyframes.rglob("*")) == [
        "open day",
        "open day/contact-sheet.jpg",
        "open day/scene-001.jpg",
        "open day/scene-002.jpg",
        "open day/scene-003.jpg",
    ]
    assert analytic["contact_sheet"] == "contact-sheet.jpg"
    assert [s["keyframe"] for s in analytic["scenes"]] == [
        "scene-001.jpg",
        "scene-002.jpg",
        "scene-003.jpg",
    ]
    for name in (analytic["contact_sheet"], *(s["keyframe"] for s in analytic["scenes"])):
        assert (keyframes / "open day" / name).read_bytes()[:2] == b"\xff\xd8"
    assert root.report("open day.mp4")["stages"]["scan"]["output_dir"] == "keyframes/open day"
    summary = json.loads((root.path / "summaries" / "open day.summary.json").read_text())
    assert len(summary["scenes"]) == 3
    assert summary["on_screen_text"] == ["OPEN DAY"]
    # The summarize stage's folder output: the editor outputs, published whole (no
    # subtitles: nothing is said), pointing at the video where it ended.
    exports = root.path / "exports" / "open day"
    assert summary["exports"] == {
        "chapters_vtt": "chapters.vtt",
        "timeline_otio": "timeline.otio",
        "edl": "scenes.edl",
    }
    assert sorted(p.name for p in exports.iterdir()) == sorted(summary["exports"].values())
    assert root.report("open day.mp4")["stages"]["summarize"]["output_dir"] == "exports/open day"
    timeline = (exports / "timeline.otio").read_text()
    assert json.dumps("../../input/completed/open day.mp4") in timeline
    assert (exports / timeline_target(timeline)).resolve() == (
        root.folder("completed") / "open day.mp4"
    ).resolve()
    logline = json.loads((root.path / "loglines" / "open day.logline.json").read_text())
    assert 0 < len(logline["logline"].split()) <= 35
    # Bad inputs are bad: one try, exit 65, a clear reason.
    for name in ("cut.mp4", "notes.mkv"):
        report = root.report(name)
        assert report["failed_stage"] == "scan"
        assert len(report["stages"]["scan"]["attempts"]) == 1
        assert "bad input (exit 65)" in report["error"]
    assert "truncated" in root.report("cut.mp4")["error"]


def test_llm_settings_from_the_config_file_reach_the_stages(root: Root) -> None:
    def answer(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, completion("A bright red title card fills the frame.")

    make_video(root.folder("pending") / "a.mp4", seconds=1, text="HI")
    with chat_server(answer) as server:
        (root.path / "vvflow.toml").write_text(
            f'stable_seconds = 0\nllm_base_url = "{server.base_url}"\n'
            'llm_model = "tiny-vision"\nllm_api_key = "sk-test"\n'
        )
        root.vvflow("once", check=0, timeout=300)
        assert server.requests and server.authorization[0] == "Bearer sk-test"
    summary = json.loads((root.path / "summaries" / "a.summary.json").read_text())
    assert summary["generator"] == "llm:tiny-vision"
    # summarize found the keyframe through {scan_dir}, the scan's published folder.
    (scene,) = summary["scenes"]
    keyframe = (root.path / "keyframes" / "a" / scene["keyframe"]).read_bytes()
    parts = server.requests[0]["messages"][1]["content"]
    images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert images == ["data:image/jpeg;base64," + base64.b64encode(keyframe).decode()]
    assert "sk-test" not in (root.path / "summaries" / "a.summary.json").read_text()


def test_unreachable_llm_falls_back_and_says_so(root: Root) -> None:
    make_video(root.folder("pending") / "a.mp4", seconds=1)
    (root.path / "vvflow.toml").write_text(
        f'stable_seconds = 0\nllm_base_url = "{closed_port_url()}"\nllm_model = "m"\n'
    )
    root.vvflow("once", check=0, timeout=300)
    summary = json.loads((root.path / "summaries" / "a.summary.json").read_text())
    assert summary["generator"] == "deterministic"
    assert summary["llm"]["used"] is False and summary["llm"]["fallback_reason"]


def timeline_target(timeline: str) -> str:
    """The media path the OTIO timeline's first clip points at."""
    document = json.loads(timeline)
    clip = document["tracks"]["children"][0]["children"][0]
    reference = clip["media_references"][clip["active_media_reference_key"]]
    return str(reference["target_url"])
