"""`vvflow once` with no `[[stages]]`: vvflow's own three stages, run as commands."""

from __future__ import annotations

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
    sheet = root.path / analytic["contact_sheet"]
    assert sheet.is_file() and sheet.read_bytes()[:2] == b"\xff\xd8"
    assert sheet.parent == root.path / "keyframes" / "open day"
    for scene in analytic["scenes"]:
        assert (root.path / scene["keyframe"]).is_file()
    summary = json.loads((root.path / "summaries" / "open day.summary.json").read_text())
    assert len(summary["scenes"]) == 3
    assert "OPEN DAY" in json.dumps(summary).upper()
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
