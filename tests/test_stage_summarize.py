"""The summarize stage on real scans: measurements, OCR, texts, the LLM path, bad input."""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.media import (
    AUDIO_AMPLITUDE,
    Chord,
    Sentence,
    espeak_available,
    make_video,
    segment_colour_names,
)
from tests.stage_support import (
    chat_server,
    closed_port_url,
    completion,
    other_lines,
    progress_of,
    run_stage,
)
from vvflow.stages import STAGES


@pytest.fixture(autouse=True)
def _no_pipeline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VVFLOW_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def titled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Analytic JSON of a 3 s 320x240 video: 3 scenes (red, blue, green), "HELLO" burnt
    in, a tone 6 dB quieter in every scene. Its keyframes were written into a folder of
    their own, then moved to ``published/titled`` beside it, as vvflow publishes a
    folder output."""
    folder = tmp_path_factory.mktemp("titled")
    video = make_video(
        folder / "titled.mp4", seconds=3.0, width=320, height=240, cuts=2, text="HELLO", audio=True
    )
    analytic = folder / "titled.analytic.json"
    written = folder / "work" / "keyframes"
    assert STAGES["scan"]([str(video), str(analytic), "--keyframes-dir", str(written)]) == 0
    (folder / "published").mkdir()
    written.rename(folder / "published" / "titled")
    return analytic


@pytest.fixture(scope="module")
def titled_summary(titled: Path) -> dict[str, Any]:
    output = titled.with_name("titled.summary.json")
    assert STAGES["summarize"]([str(titled), str(output)]) == 0
    document: dict[str, Any] = json.loads(output.read_text())
    return document


def one_sentence(text: str) -> bool:
    return bool(re.fullmatch(r"[^.!?]+(\.\d[^.!?]*)*[.!?]", text.replace(".000", "")))


def test_every_scene_is_measured(titled_summary: dict[str, Any]) -> None:
    scenes = titled_summary["scenes"]
    assert [s["index"] for s in scenes] == [1, 2, 3]
    assert [s["dominant_colors"][0]["name"] for s in scenes] == segment_colour_names(2)
    for scene in scenes:
        assert scene["duration_s"] == pytest.approx(1.0, abs=0.11)
        assert 0.1 < scene["brightness"] < 0.9
        assert scene["brightness_label"] in {"dark", "dim", "bright"}
        assert 0 < scene["motion"] < 0.05  # the small sliding square, nothing more
        assert scene["dominant_colors"][0]["share"] > 0.5


def test_audio_loudness_per_scene_follows_the_tone(titled_summary: dict[str, Any]) -> None:
    levels = [s["audio_loudness_dbfs"] for s in titled_summary["scenes"]]
    # A sine of amplitude A has an RMS level of 20*log10(A/sqrt(2)) dBFS: -9 dB for 0.5.
    first = 20 * math.log10(AUDIO_AMPLITUDE / 2**0.5)
    assert levels[0] == pytest.approx(first, abs=1.5)
    assert levels[1] - levels[0] == pytest.approx(-6.0, abs=1.5)
    assert levels[2] - levels[1] == pytest.approx(-6.0, abs=1.5)
    assert titled_summary["has_audio"] is True


def test_ocr_reads_the_burnt_in_text_once_and_sees_it_in_several_frames(
    titled_summary: dict[str, Any],
) -> None:
    assert titled_summary["on_screen_text"] == ["HELLO"]
    (caption,) = titled_summary["captions"]
    assert caption["text"] == "HELLO"
    assert caption["first_s"] < 0.5 and caption["last_s"] > 2.5
    assert caption["sightings"] == 6 and caption["score"] > 0.9
    for scene in titled_summary["scenes"]:
        assert scene["on_screen_text"] == ["HELLO"]
        # Twice a second, each time the gate saw text; read in one frame of the video.
        assert scene["ocr"]["frames_sampled"] == 2
        assert scene["ocr"]["frames_with_text"] == 2
    assert titled_summary["ocr"] == {
        "frames_sampled": 6,
        "frames_with_text": 6,
        "frames_read": 1,
        "regions_read": 1,
    }


def test_deterministic_texts_say_what_was_measured(titled_summary: dict[str, Any]) -> None:
    assert titled_summary["generator"] == "deterministic"
    assert titled_summary["llm"]["used"] is False
    assert "not configured" in titled_summary["llm"]["fallback_reason"]
    for scene, colour in zip(titled_summary["scenes"], segment_colour_names(2), strict=True):
        description = scene["description"]
        assert one_sentence(description), description
        assert '"HELLO"' in description
        # The caption is a better signal than the colours: they are left out.
        assert colour not in description
        # The tone is steady and tonal: music, and nothing is said.
        assert scene["audio"]["kind"] == "music" and scene["speech"] == ""
        assert description.endswith("and music.")
        assert f"Scene {scene['index']} of 3" in description
    summary = titled_summary["summary"]
    assert summary.startswith("A 3-second fast-cut montage set to music (3 shots averaging 1 s, ")
    assert '"HELLO"' in summary and "Sound: music 100%." in summary
    assert "What is said" not in summary
    assert titled_summary["kind"] == "fast-cut montage set to music"
    assert titled_summary["transcript"]["status"] == "no speech"
    assert titled_summary["schema_version"] == 3
    assert titled_summary["scene_count"] == 3
    # As in the scan: relative to the keyframes folder, wherever that went.
    assert [s["keyframe"] for s in titled_summary["scenes"]] == [
        "scene-001.jpg",
        "scene-002.jpg",
        "scene-003.jpg",
    ]


def test_small_silent_video_text_found_and_no_audio(tmp_path: Path) -> None:
    video = make_video(tmp_path / "small.mkv", seconds=1.0, text="Cat 42")
    analytic = tmp_path / "small.analytic.json"
    assert STAGES["scan"]([str(video), str(analytic)]) == 0
    output = tmp_path / "small.summary.json"

    assert STAGES["summarize"]([str(analytic), str(output)]) == 0

    document = json.loads(output.read_text())
    assert document["on_screen_text"] == ["Cat 42"]
    assert document["has_audio"] is False
    (scene,) = document["scenes"]
    assert scene["audio_loudness_dbfs"] is None
    assert scene["audio_label"] is None
    assert "without audio" not in scene["description"]
    assert "no audio" in document["summary"]


def test_video_moved_since_the_scan_is_found_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = make_video(tmp_path / "a" / "moved.mp4", seconds=1.0)
    analytic = tmp_path / "moved.analytic.json"
    assert STAGES["scan"]([str(video), str(analytic)]) == 0
    moved = tmp_path / "b" / "moved.mp4"
    moved.parent.mkdir()
    shutil.move(video, moved)  # as a recovered claim comes back under another instance
    monkeypatch.setenv("VVFLOW_VIDEO", str(moved))

    assert STAGES["summarize"]([str(analytic), str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["source"]["video"] == str(moved)


def test_llm_writes_descriptions_and_summary_with_keyframes_from_the_given_folder(
    titled: Path, tmp_path: Path
) -> None:
    def answer(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        system = body["messages"][0]["content"]
        if "scenes" in system:
            return 200, completion('"A red title card reads HELLO." It stays still.')
        return 200, completion("Three title cards read HELLO. Each has a colour of its own.")

    output = tmp_path / "llm.summary.json"
    with chat_server(answer) as server:
        code = STAGES["summarize"](
            [
                str(titled),
                str(output),
                "--llm-base-url",
                server.base_url,
                "--llm-model",
                "tiny-vision",
                "--llm-api-key",
                "sekret",
                "--keyframes-dir",
                str(titled.parent / "published" / "titled"),
            ]
        )

    assert code == 0
    document = json.loads(output.read_text())
    assert document["generator"] == "llm:tiny-vision"
    assert document["llm"]["used"] is True
    assert document["llm"]["fallback_reason"] is None
    assert "sekret" not in output.read_text()
    assert [s["description"] for s in document["scenes"]] == ["A red title card reads HELLO."] * 3
    assert document["summary"] == "Three title cards read HELLO. Each has a colour of its own."
    # Measurements stay the measured ones.
    assert document["scenes"][0]["on_screen_text"] == ["HELLO"]

    assert server.paths == ["/v1/chat/completions"] * 4
    assert server.authorization == ["Bearer sekret"] * 4
    assert {r["model"] for r in server.requests} == {"tiny-vision"}
    for number, request in enumerate(server.requests[:3], 1):
        parts = request["messages"][1]["content"]
        images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
        assert len(images) == 1
        prefix = "data:image/jpeg;base64,"
        assert images[0].startswith(prefix)
        keyframe = titled.parent / "published" / "titled" / f"scene-{number:03d}.jpg"
        assert base64.b64decode(images[0][len(prefix) :]) == keyframe.read_bytes()
        assert "HELLO" in json.dumps(parts)
    assert "Scene 3:" in server.requests[3]["messages"][1]["content"]


def test_llm_from_environment_falls_back_when_unreachable(titled: Path, tmp_path: Path) -> None:
    output = tmp_path / "down.summary.json"

    result = run_stage(
        "summarize",
        titled,
        output,
        env={
            "VVFLOW_LLM_BASE_URL": closed_port_url(),
            "VVFLOW_LLM_MODEL": "m",
            "VVFLOW_LLM_TIMEOUT_SECONDS": "5",
            "VVFLOW_PROGRESS_SECONDS": "0",
        },
    )

    assert result.returncode == 0, result.stderr
    assert other_lines(result.stderr) == []
    # The mean of the two passes (pictures: every sampled frame of the 3 scenes; sound:
    # voice activity), 5 % apart at least, then each LLM request.
    fractions = progress_of(result.stderr)
    assert fractions[0] == 0.0
    assert fractions[-1] == 1.0
    assert all(after > before for before, after in itertools.pairwise(fractions)), fractions
    passes = [f for f in fractions if 0 < f <= 0.85]
    assert len(passes) >= 6 and max(b - a for a, b in itertools.pairwise([0, *passes])) < 0.45
    assert "asking the LLM about scene 1" in result.stderr
    document = json.loads(output.read_text())
    assert document["generator"] == "deterministic"
    assert document["llm"]["used"] is False
    assert document["llm"]["fallback_reason"].startswith("unreachable: http://127.0.0.1:")
    assert document["llm"]["model"] == "m"
    assert document["scenes"][0]["description"].startswith("Scene 1 of 3")


def test_llm_error_answer_falls_back_and_says_why(titled: Path, tmp_path: Path) -> None:
    output = tmp_path / "err.summary.json"
    with chat_server(lambda body: (500, {"error": "model not loaded"})) as server:
        code = STAGES["summarize"](
            [str(titled), str(output), "--llm-base-url", server.base_url, "--llm-model", "x"]
        )

    assert code == 0
    document = json.loads(output.read_text())
    assert document["generator"] == "deterministic"
    assert document["llm"]["fallback_reason"].startswith("HTTP 500 from http://127.0.0.1:")
    assert "model not loaded" in document["llm"]["fallback_reason"]


def _text(path: Path) -> Path:
    path.write_text("scenes: 3\n")
    return path


def _list(path: Path) -> Path:
    path.write_text("[1, 2, 3]")
    return path


def _no_scenes(path: Path) -> Path:
    path.write_text('{"schema_version": 1, "scenes": []}')
    return path


def _bad_scene(path: Path) -> Path:
    path.write_text('{"schema_version": 1, "scenes": [{"index": 1, "start_s": 0}]}')
    return path


def _empty(path: Path) -> Path:
    path.touch()
    return path


def _video_gone(path: Path) -> Path:
    scene = {"index": 1, "start_s": 0, "end_s": 1, "start_frame": 0, "end_frame": 10}
    source = {"path": str(path.with_name("gone.mp4"))}
    path.write_text(json.dumps({"schema_version": 1, "source": source, "scenes": [scene]}))
    return path


@pytest.mark.parametrize(
    ("make_input", "reason"),
    [
        (_text, "invalid JSON"),
        (_list, "not an object"),
        (_no_scenes, "no 'scenes' list"),
        (_bad_scene, "lacks index, frames or times"),
        (_empty, "invalid JSON"),
        (_video_gone, "gone.mp4: no such file"),
        (lambda path: path.with_name("missing.json"), "no such file"),
    ],
)
def test_bad_input_exits_65_with_one_clear_line(
    tmp_path: Path, make_input: Any, reason: str
) -> None:
    analytic = make_input(tmp_path / "in.analytic.json")
    output = tmp_path / "out.summary.json"

    result = run_stage("summarize", analytic, output)

    assert result.returncode == 65
    lines = other_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert result.stderr.splitlines()[-1] == lines[0]
    assert lines[0].startswith("vvflow stage summarize: bad input: ")
    assert reason in lines[0]
    assert not output.exists()


def test_usage_error_exits_2(tmp_path: Path) -> None:
    assert run_stage("summarize").returncode == 2
    result = run_stage("summarize", "a.json", "b.json", env={"VVFLOW_LLM_TIMEOUT_SECONDS": "soon"})
    assert result.returncode == 2
    assert "--llm-timeout-seconds" in result.stderr


NEWS_SENTENCES = (
    Sentence("The old bridge opens to traffic next spring.", 0.4, "en-us", 150),
    Sentence("Engineers tested the steel deck for six weeks.", 4.4, "en-gb+f3", 175),
)


@pytest.fixture(scope="module")
def news(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 12 s 640x360 video in three 4 s scenes with "CITY NEWS" burnt in: a sentence
    said in the first scene (en-us), another in the second (en-gb, a woman's voice,
    faster), a chord in the third. Run through scan, summarize and logline as the
    built-in pipeline runs them, with a keyframes and an exports folder."""
    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no real speech")
    folder = tmp_path_factory.mktemp("news")
    video = make_video(
        folder / "news.mp4",
        seconds=12.0,
        width=640,
        height=360,
        cuts=2,
        text="CITY NEWS",
        sounds=[*NEWS_SENTENCES, Chord(8.5, 3.0)],
    )
    paths = {name: folder / f"news.{name}.json" for name in ("analytic", "summary", "logline")}
    keyframes, exports = folder / "keyframes", folder / "exports"
    for stage, args in (
        ("scan", [video, paths["analytic"], "--keyframes-dir", keyframes]),
        (
            "summarize",
            [
                paths["analytic"],
                paths["summary"],
                "--keyframes-dir",
                keyframes,
                "--exports-dir",
                exports,
            ],
        ),
        ("logline", [paths["summary"], paths["logline"]]),
    ):
        result = run_stage(stage, *args)
        assert result.returncode == 0, result.stderr
        assert other_lines(result.stderr) == []
    return {
        "summary": json.loads(paths["summary"].read_text()),
        "logline": json.loads(paths["logline"].read_text()),
        "exports": exports,
    }


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def test_what_is_said_is_transcribed_per_scene_and_labelled(news: dict[str, Any]) -> None:
    summary = news["summary"]
    assert summary["schema_version"] == 3
    transcript = summary["transcript"]
    assert transcript["status"] == "transcribed"
    assert transcript["model"]["name"] == "tiny.en"
    heard = words_of(transcript["text"])
    for sentence in NEWS_SENTENCES:
        expected = words_of(sentence.text)
        missing = [w for w in expected if w not in heard]
        # tiny.en on espeak-ng: at most one word in eight misheard (see test_speech.py).
        assert len(missing) <= len(expected) // 8, (missing, transcript["text"])
    first, second, third = summary["scenes"]
    assert "bridge" in words_of(first["speech"]) and "steel" not in words_of(first["speech"])
    assert "steel" in words_of(second["speech"]) and "bridge" not in words_of(second["speech"])
    assert third["speech"] == ""
    assert [s["audio"]["kind"] for s in summary["scenes"]] == ["speech", "speech", "music"]
    assert summary["audio"]["kind"] == "speech"
    assert summary["kind"] in {"talk", "narrated video"}
    # What is said leads the scene's sentence; the music is named where nothing is said.
    assert 'a voice says "' in first["description"]
    assert third["description"].endswith("and music.")


def test_captions_and_what_is_said_make_the_summary_and_logline(news: dict[str, Any]) -> None:
    summary = news["summary"]
    assert [c["text"] for c in summary["captions"]] == ["CITY NEWS"]
    assert summary["on_screen_text"] == ["CITY NEWS"]
    caption = summary["captions"][0]
    assert caption["first_s"] < 1.0 and caption["last_s"] > 11.0
    text = summary["summary"]
    assert "What is said, in brief: " in text and '"CITY NEWS"' in text
    for colour in segment_colour_names(2):
        assert colour not in text
    logline = news["logline"]["logline"]
    assert len(logline.split()) <= 35 and "\n" not in logline
    assert 'a voice says "' in logline and '"CITY NEWS"' in logline
    assert news["logline"]["kind"] == summary["kind"]
    assert summary["llm"]["inputs"] == []


def test_subtitles_chapters_and_timeline_are_exported(news: dict[str, Any]) -> None:
    summary, exports = news["summary"], news["exports"]
    assert summary["exports"] == {
        "subtitles_vtt": "subtitles.vtt",
        "subtitles_srt": "subtitles.srt",
        "chapters_vtt": "chapters.vtt",
        "timeline_otio": "timeline.otio",
        "edl": "scenes.edl",
    }
    assert sorted(p.name for p in exports.iterdir()) == sorted(summary["exports"].values())
    vtt = (exports / "subtitles.vtt").read_text()
    assert vtt.startswith("WEBVTT") and "bridge" in vtt.lower() and "steel" in vtt.lower()
    chapters = (exports / "chapters.vtt").read_text()
    # Titled by a caption new in the scene, else the first words said in it.
    titles = [block.splitlines()[-1] for block in chapters.strip().split("\n\n")[1:]]
    assert len(titles) == 3 and titles[0] == titles[2] == "CITY NEWS", titles
    assert "steel" in titles[1].lower() or "engineers" in titles[1].lower(), titles
    timeline = json.loads((exports / "timeline.otio").read_text())
    assert timeline["OTIO_SCHEMA"].startswith("Timeline")
    assert "../news.mp4" in (exports / "timeline.otio").read_text()
