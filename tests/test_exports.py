"""Editor outputs (vvflow/stages/exports.py): every file parses back with a real parser,
the OpenTimelineIO and CMX 3600 readers of the ASWF library for the timeline and the EDL,
strict WebVTT and SRT parsers written here for the subtitles and chapters."""

from __future__ import annotations

import html
import itertools
import json
import math
import os
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import opentimelineio as otio
import pytest

from tests.media import cut_frames, make_video
from tests.stage_support import run_stage
from vvflow.stages import exports
from vvflow.stages.exports import Cue, Media

NTSC = Fraction(30000, 1001)
WORD_JOINER = "\u2060"
#: A file name no format may choke on: quotes, a newline, markup, accents, CJK, a
#: timing arrow, a tab and a lone surrogate (a name that is not UTF-8), near the 255
#: bytes a file name can have.
HOSTILE = 'it\'s "a"\n<script>alert(1)<\\script> café 東京 --> \t\udcff ' + "x" * 190


# --- strict parsers ----------------------------------------------------------------------

_VTT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d)\.(\d{3})"
_VTT_TIMING = re.compile(rf"^{_VTT_TIME} --> {_VTT_TIME}$")
_SRT_TIME = r"(\d{2}):([0-5]\d):([0-5]\d),(\d{3})"
_SRT_TIMING = re.compile(rf"^{_SRT_TIME} --> {_SRT_TIME}$")
_VTT_ENTITY = re.compile(r"&(amp|lt|gt|lrm|rlm|nbsp);")


@dataclass(frozen=True)
class Parsed:
    start_ms: int
    end_ms: int
    lines: list[str]
    identifier: str | None = None

    @property
    def text(self) -> str:
        return " ".join(self.lines)


def millis(hours: str, minutes: str, seconds: str, ms: str) -> int:
    return ((int(hours) * 60 + int(minutes)) * 60 + int(seconds)) * 1000 + int(ms)


def blocks(text: str) -> list[list[str]]:
    assert "\r" not in text
    assert text.endswith("\n") and not text.endswith("\n\n\n")
    return [b.split("\n") for b in text.strip("\n").split("\n\n") if b]


def parse_vtt(text: str) -> list[Parsed]:
    """A WebVTT file, strictly: the header, then blocks of an optional identifier, a
    timing line and non-empty payload lines where "&" only starts an entity, "<" never
    appears (we write no tags) and "-->" never does. Returns unescaped cues in order."""
    header, *cues = blocks(text)
    assert header == ["WEBVTT"]
    parsed: list[Parsed] = []
    for block in cues:
        identifier = None
        if not _VTT_TIMING.match(block[0]):
            identifier, block = block[0], block[1:]
            assert "-->" not in identifier
        timing = _VTT_TIMING.match(block[0])
        assert timing, block
        payload = block[1:]
        assert payload, block
        for line in payload:
            assert line.strip() and "-->" not in line and "<" not in line, line
            assert "&" not in _VTT_ENTITY.sub("", line), line
        start, end = millis(*timing.groups()[:4]), millis(*timing.groups()[4:])
        assert start < end
        parsed.append(Parsed(start, end, [html.unescape(line) for line in payload], identifier))
    assert [c.start_ms for c in parsed] == sorted(c.start_ms for c in parsed)
    return parsed


def parse_srt(text: str) -> list[Parsed]:
    """A SubRip file, strictly: blocks of a number (1, 2, 3 ...), a timing line and
    non-empty text lines that no player would read as a timing line or as markup
    (tags, ASS overrides, entities). Returns cues with the word joiners taken out."""
    parsed: list[Parsed] = []
    for number, block in enumerate(blocks(text), 1):
        assert block[0] == str(number)
        timing = _SRT_TIMING.match(block[1])
        assert timing, block
        assert block[2:], block
        for line in block[2:]:
            assert line.strip() and "-->" not in line, line
            assert not re.search(r"[<{&][^\u2060]", line), line  # no markup can start
        start, end = millis(*timing.groups()[:4]), millis(*timing.groups()[4:])
        assert start < end
        parsed.append(Parsed(start, end, [line.replace(WORD_JOINER, "") for line in block[2:]]))
    return parsed


def columns(line: str) -> int:
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in line
    )


def no_overlaps(cues: Sequence[Parsed]) -> None:
    for earlier, later in itertools.pairwise(cues):
        assert earlier.end_ms <= later.start_ms


# --- subtitles ---------------------------------------------------------------------------


def test_hostile_cue_text_survives_as_text_in_both_subtitle_formats() -> None:
    cues = [
        Cue(1.0, 2.0, "a --> b"),
        Cue(2.0, 3.0, "<b>bold</b> & < i>not</i> {\\an8} {y:i}"),
        Cue(3.0, 4.0, "first paragraph\n\n\nsecond\r\n\r\nthird"),
        Cue(4.0, 5.0, "&amp; stays &lt;literal&gt;"),
        Cue(5.0, 6.0, "tab\there\u2028line\x00nul\x1bescape"),
        Cue(6.0, 7.0, "evil \u202eoverride, emoji \U0001f600, lone \udcff"),
        Cue(7.0, 8.0, "00:00:01,000 --> 00:00:02,000"),
        Cue(8.0, 9.0, "42"),
    ]
    expected = [
        "a --> b",
        "<b>bold</b> & < i>not</i> {\\an8} {y:i}",
        "first paragraph second third",
        "&amp; stays &lt;literal&gt;",
        "tab here linenulescape",
        "evil override, emoji \U0001f600, lone \ufffd",
        "00:00:01,000 --> 00:00:02,000",
        "42",
    ]
    vtt = parse_vtt(exports.subtitles_vtt(cues))
    srt = parse_srt(exports.subtitles_srt(cues))
    assert [c.text for c in vtt] == expected
    assert [c.text for c in srt] == expected
    assert [(c.start_ms, c.end_ms) for c in vtt] == [
        (s * 1000, s * 1000 + 1000) for s in range(1, 9)
    ]
    assert [(c.start_ms, c.end_ms) for c in srt] == [(c.start_ms, c.end_ms) for c in vtt]


def test_cues_are_sorted_overlaps_clipped_and_empty_ones_dropped() -> None:
    cues = [
        Cue(5.0, 7.0, "c"),
        Cue(1.0, 4.0, "a"),
        Cue(3.0, 6.0, "b"),
        Cue(8.0, 8.0, "zero length"),
        Cue(8.5, 8.5004, "rounds to zero"),
        Cue(9.0, 10.0, "  \n\t "),
        Cue(math.nan, 1.0, "not a number"),
        Cue(2.0, math.inf, "endless"),
        Cue(-1.0, 0.5, "before the start"),
        Cue(3725.5, 3726.25, "an hour in"),
    ]
    vtt_text = exports.subtitles_vtt(cues)
    srt_text = exports.subtitles_srt(cues)
    want = [
        (0, 500, "before the start"),
        (1000, 3000, "a"),
        (3000, 5000, "b"),
        (5000, 7000, "c"),
        (3_725_500, 3_726_250, "an hour in"),
    ]
    for parsed in (parse_vtt(vtt_text), parse_srt(srt_text)):
        assert [(c.start_ms, c.end_ms, c.text) for c in parsed] == want
    assert "\n01:02:05.500 --> 01:02:06.250\n" in vtt_text
    assert "\n5\n01:02:05,500 --> 01:02:06,250\nan hour in\n" in srt_text
    assert srt_text.startswith("1\n00:00:00,000 --> 00:00:00,500\nbefore the start\n")


def test_long_cues_are_wrapped_to_two_balanced_lines_then_split_in_time() -> None:
    sentence = "The quick brown fox jumps over the lazy dog near the riverbank today"
    long_text = " ".join(f"word{n} is here" for n in range(40))  # ~520 characters
    url = "https://example.com/" + "a" * 100
    cjk = "東京は日本の首都です。" * 3
    cues = [Cue(0, 2, sentence), Cue(10, 30, long_text), Cue(40, 42, url), Cue(50, 52, cjk)]
    for parsed in (
        parse_vtt(exports.subtitles_vtt(cues)),
        parse_srt(exports.subtitles_srt(cues)),
    ):
        assert all(len(c.lines) <= 2 for c in parsed)
        assert all(columns(line) <= 42 for c in parsed for line in c.lines)
        no_overlaps(parsed)
        first = parsed[0]
        assert first.text == sentence and len(first.lines) == 2
        top, bottom = first.lines
        assert abs(columns(top) - columns(bottom)) <= 2  # balanced, not 42 + 25
        pieces = [c for c in parsed if 10_000 <= c.start_ms < 30_000]
        assert len(pieces) >= 6
        assert " ".join(c.text for c in pieces) == long_text
        assert pieces[0].start_ms == 10_000 and pieces[-1].end_ms == 30_000
        assert all(a.end_ms == b.start_ms for a, b in itertools.pairwise(pieces))
        link = [c for c in parsed if 40_000 <= c.start_ms < 42_000]  # 3 lines: 2 cues
        assert [len(c.lines) for c in link] == [2, 1]
        assert "".join(line for c in link for line in c.lines) == url
        (japanese,) = (c for c in parsed if c.start_ms == 50_000)
        assert "".join(japanese.lines) == cjk and len(japanese.lines) == 2


# --- chapters ----------------------------------------------------------------------------


def test_chapters_one_cue_per_scene_with_titles_and_defaults() -> None:
    scenes = [
        {"index": 1, "start_s": 0.0, "end_s": 2.5, "start_frame": 0, "end_frame": 62},
        {"index": 2, "start_s": 2.5, "end_s": 4.0, "title": 'Intro <b>"A & B"</b> -->\n\nnext'},
        {"index": 3, "start_frame": 100, "end_frame": 150},  # times from the frames
    ]
    chapters = exports.scene_chapters(scenes, Fraction(25))
    parsed = parse_vtt(exports.chapters_vtt(chapters))
    assert [(c.identifier, c.start_ms, c.end_ms, c.lines) for c in parsed] == [
        ("1", 0, 2500, ["Scene 1"]),
        ("2", 2500, 4000, ['Intro <b>"A & B"</b> --> next']),
        ("3", 4000, 6000, ["Scene 3"]),
    ]
    grouped = [Cue(0, 4, ""), Cue(4, 6, "x" * 300)]
    parsed = parse_vtt(exports.chapters_vtt(grouped))
    assert parsed[0].lines == ["Chapter 1"]
    assert len(parsed[1].lines) == 1 and len(parsed[1].text) == 100


# --- OpenTimelineIO ------------------------------------------------------------------------

SCENES: list[dict[str, Any]] = [
    {"index": 1, "start_frame": 0, "end_frame": 1799},
    {"index": 2, "start_frame": 1799, "end_frame": 1800, "title": "One frame"},
    {"index": 3, "start_frame": 1800, "end_frame": 17982, "description": "A long take."},
    {"index": 4, "start_frame": 17982, "end_frame": 107892},
]


def clip_frames(timeline: Any, kind: str = "Video") -> list[tuple[int, int]]:
    (track,) = (t for t in timeline.tracks if t.kind == kind)
    ranges = [clip.source_range for clip in track.find_clips()]
    return [(int(r.start_time.value), int(r.end_time_exclusive().value)) for r in ranges]


@pytest.mark.parametrize("rate", [25, NTSC, 29.97, "24000/1001", Fraction(60000, 1001)])
def test_timeline_clips_are_the_scenes_frames_exactly(rate: Any) -> None:
    exact = exports.exact_rate(rate)
    media = Media("../../input/completed/a.mp4", "a.mp4", "/srv/v/input/completed/a.mp4")
    text = exports.timeline_otio("a", SCENES, rate, media, duration_s=None, audio=True)
    timeline = otio.adapters.read_from_string(text, "otio_json")
    scenes = [(s["start_frame"], s["end_frame"]) for s in SCENES]
    assert clip_frames(timeline) == scenes
    assert clip_frames(timeline, "Audio") == scenes
    clips = list(timeline.video_tracks()[0].find_clips())
    for clip, scene in zip(clips, SCENES, strict=True):
        for time in (clip.source_range.start_time, clip.source_range.duration):
            assert time.rate == float(exact) and time.value == int(time.value)
        assert clip.name == "a.mp4"
        assert clip.media_reference.target_url == "../../input/completed/a.mp4"
        assert clip.media_reference.name == "a.mp4"
        assert clip.media_reference.available_range.duration.value == 107892
        (marker,) = clip.markers
        assert marker.name == scene.get("title", f"Scene {scene['index']}")
        assert marker.comment == scene.get("description", "")
        assert marker.marked_range.start_time.value == scene["start_frame"]
        assert clip.metadata["vvflow"]["scene"] == scene["index"]
    # The clips sit end to end on the timeline, where the scenes sit in the video.
    placed = [clip.range_in_parent() for clip in clips]
    assert [int(r.start_time.value) for r in placed] == [s for s, _ in scenes]
    assert timeline.metadata["vvflow"]["frame_rate"] == (
        "25" if exact == 25 else f"{exact.numerator}/{exact.denominator}"
    )


def test_exact_rate_snaps_what_probe_records() -> None:
    assert exports.exact_rate(29.97) == NTSC
    assert exports.exact_rate(23.976) == Fraction(24000, 1001)
    assert exports.exact_rate(59.94) == Fraction(60000, 1001)
    assert exports.exact_rate(14.985) == Fraction(15000, 1001)
    assert exports.exact_rate(25.0) == 25 and exports.exact_rate(12.5) == Fraction(25, 2)
    assert exports.rate_of({"fps": 29.97}) == NTSC
    assert exports.rate_of({"fps": 29.97, "frame_rate": "2997/100"}) == Fraction(2997, 100)
    for bad in (0, -25.0, math.nan, "0/1"):
        with pytest.raises(ValueError, match="frame rate"):
            exports.exact_rate(bad)


def test_timeline_survives_hostile_names_and_takes_scenes_in_any_state() -> None:
    media = exports.relative_media(
        Path("/srv/v/input/completed") / HOSTILE, Path("/srv/v/exports/x")
    )
    assert media.target_url == "../../input/completed/" + HOSTILE
    scenes = [
        {"index": 2, "start_s": 1.0, "end_s": 2.0, "title": HOSTILE},  # seconds only
        {"index": 1, "start_frame": 0, "end_frame": 30, "description": HOSTILE},  # overlaps 2
        {"index": 3, "start_frame": 60, "end_frame": 60},  # empty
        {"index": 4, "start_frame": None, "end_s": "soon"},  # unusable
    ]
    text = exports.timeline_otio(HOSTILE, scenes, 25, media, duration_s=4.0)
    json.loads(text)
    timeline = otio.adapters.read_from_string(text, "otio_json")
    one_line = " ".join(HOSTILE.replace("\udcff", "\ufffd").split())
    assert timeline.name == one_line
    assert clip_frames(timeline) == [(0, 25), (25, 50)]
    first, second = timeline.video_tracks()[0].find_clips()
    assert first.media_reference.target_url == media.target_url.replace("\udcff", "\ufffd")
    assert first.media_reference.available_range.duration.value == 100  # 4 s at 25 fps
    assert first.markers[0].comment == one_line and second.markers[0].name == one_line


# --- CMX 3600 EDL --------------------------------------------------------------------------


def read_edl(text: str, rate: Fraction) -> Any:
    return otio.adapters.read_from_string(text, "cmx_3600", rate=float(rate))


@pytest.mark.parametrize(
    ("rate", "edl_rate", "fcm"),
    [
        (25, Fraction(25), "NON-DROP FRAME"),
        (NTSC, NTSC, "DROP FRAME"),
        (29.97, NTSC, "DROP FRAME"),
        (Fraction(24000, 1001), Fraction(24000, 1001), "NON-DROP FRAME"),
        (10, Fraction(30), "NON-DROP FRAME"),  # no SMPTE timecode at 10 fps: counted at 30
        (12.5, Fraction(25), "NON-DROP FRAME"),
    ],
)
def test_edl_events_are_the_scenes(rate: Any, edl_rate: Fraction, fcm: str) -> None:
    assert exports.edl_rate(rate) == edl_rate
    media = Media("../../input/completed/a b.mp4", "a b.mp4")
    text = exports.edl_cmx3600("A title", SCENES, rate, media)
    assert text is not None
    lines = text.splitlines()
    assert lines[:2] == ["TITLE: A title", f"FCM: {fcm}"]
    events = [line for line in lines if line[:3].isdigit()]
    assert len(events) == len(SCENES)
    assert all((";" in line) == (fcm == "DROP FRAME") for line in events)
    scale = edl_rate / exports.exact_rate(rate)
    want = [(s["start_frame"] * scale, s["end_frame"] * scale) for s in SCENES]
    timeline = read_edl(text, edl_rate)
    assert clip_frames(timeline) == want
    assert [
        int(r.start_time.value) for r in (c.range_in_parent() for c in timeline.find_clips())
    ] == [start for start, _ in want]
    assert {clip.name for clip in timeline.find_clips()} == {"a b.mp4"}


def test_edl_lines_stay_ascii_and_single_with_hostile_names() -> None:
    media = exports.relative_media(Path("/v/input/completed") / HOSTILE, Path("/v/exports/x"))
    scenes = [dict(scene, title=HOSTILE) for scene in SCENES]
    text = exports.edl_cmx3600(HOSTILE, scenes, NTSC, media)
    assert text is not None
    assert text.isascii()
    lines = text.splitlines()
    assert all(line.isprintable() for line in lines)
    title = [line for line in lines if line.startswith("TITLE:")]
    assert len(title) == 1 and len(title[0]) <= len("TITLE: ") + 70
    assert title[0].startswith('TITLE: it\'s "a" <script>alert(1)<\\script> cafe --> ')
    timeline = read_edl(text, NTSC)
    assert clip_frames(timeline) == [(s["start_frame"], s["end_frame"]) for s in SCENES]
    assert timeline.name == title[0][len("TITLE: ") :]
    clip = next(iter(timeline.find_clips()))
    assert clip.name.startswith('it\'s "a" <script>alert(1)<\\script> cafe --> ')
    assert clip.media_reference.target_url.startswith("../../input/completed/it's %22a%22%0A")


# --- the exports folder ----------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "exports"
    path.mkdir()
    yield path


def test_write_exports_names_the_files_it_wrote(folder: Path) -> None:
    media = Media("../../input/completed/a.mp4", "a.mp4")
    cues = [Cue(0.5, 1.5, "Hello there.")]
    written = exports.write_exports(
        folder, name="a", scenes=SCENES, rate=25, duration_s=None, media=media, cues=cues
    )
    assert written == {
        "subtitles_vtt": "subtitles.vtt",
        "subtitles_srt": "subtitles.srt",
        "chapters_vtt": "chapters.vtt",
        "timeline_otio": "timeline.otio",
        "edl": "scenes.edl",
    }
    assert sorted(os.listdir(folder)) == sorted(written.values())  # no temporary left
    assert parse_vtt((folder / "subtitles.vtt").read_text("utf-8"))[0].text == "Hello there."
    assert parse_srt((folder / "subtitles.srt").read_text("utf-8"))[0].text == "Hello there."
    chapters = parse_vtt((folder / "chapters.vtt").read_text("utf-8"))
    assert [c.text for c in chapters] == ["Scene 1", "One frame", "Scene 3", "Scene 4"]
    assert clip_frames(otio.adapters.read_from_file(str(folder / "timeline.otio"))) == [
        (s["start_frame"], s["end_frame"]) for s in SCENES
    ]

    again = folder.parent / "silent"
    silent = exports.write_exports(
        again, name="a", scenes=SCENES, rate=25, duration_s=None, media=media, cues=[Cue(1, 2, " ")]
    )
    assert "subtitles_vtt" not in silent and "subtitles_srt" not in silent
    assert sorted(os.listdir(again)) == sorted(silent.values())

    # No frame rate (probe records fps 0 when the container tells none): chapters and
    # subtitles from the seconds, no timeline or EDL, which count frames.
    unknown = folder.parent / "no-rate"
    scenes = [{"index": 1, "start_s": 0.0, "end_s": 1.5}, {"index": 2, "start_s": 1.5, "end_s": 3}]
    partial = exports.write_exports(
        unknown, name="a", scenes=scenes, rate=0.0, duration_s=3.0, media=media, cues=cues
    )
    assert partial == {
        "subtitles_vtt": "subtitles.vtt",
        "subtitles_srt": "subtitles.srt",
        "chapters_vtt": "chapters.vtt",
    }
    chapters = parse_vtt((unknown / "chapters.vtt").read_text("utf-8"))
    assert [(c.start_ms, c.end_ms, c.text) for c in chapters] == [
        (0, 1500, "Scene 1"),
        (1500, 3000, "Scene 2"),
    ]


# --- a real scan -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A 2 s 29.97 fps video with two hard cuts, scanned by the real scan stage."""
    folder = tmp_path_factory.mktemp("scan")
    video = make_video(folder / "cuts.mp4", seconds=2.0, fps=NTSC, cuts=2)
    output = folder / "cuts.analytic.json"
    result = run_stage("scan", video, output, "--keyframes-dir", folder / "keyframes")
    assert result.returncode == 0, result.stderr
    return video, json.loads(output.read_text("utf-8"))


def test_timeline_and_edl_of_a_real_scan_match_its_scenes(
    scanned: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    video, analytic = scanned
    scenes = analytic["scenes"]
    cuts = cut_frames(seconds=2.0, fps=NTSC, cuts=2)
    assert [s["start_frame"] for s in scenes] == [0, *cuts]
    rate = exports.rate_of(analytic["video"])
    assert rate == NTSC  # probe records 29.97
    folder = tmp_path / "exports" / "cuts"
    media = exports.relative_media(tmp_path / "input" / "completed" / video.name, folder)
    written = exports.write_exports(
        folder,
        name=video.name,
        scenes=scenes,
        rate=rate,
        duration_s=analytic["duration_s"],
        media=media,
        audio=bool(analytic["audio_streams"]),
    )
    assert set(written) == {"chapters_vtt", "timeline_otio", "edl"}
    frames = [(s["start_frame"], s["end_frame"]) for s in scenes]
    timeline = otio.adapters.read_from_file(str(folder / written["timeline_otio"]))
    assert clip_frames(timeline) == frames
    assert not analytic["audio_streams"] and not timeline.audio_tracks()
    assert frames[-1][1] == analytic["video"]["frame_count"]
    reference = next(iter(timeline.find_clips())).media_reference
    assert (folder / reference.target_url).resolve() == (
        tmp_path / "input" / "completed" / video.name
    ).resolve()
    edl = read_edl((folder / written["edl"]).read_text("ascii"), NTSC)
    assert clip_frames(edl) == frames
    chapters = parse_vtt((folder / written["chapters_vtt"]).read_text("utf-8"))
    assert [(c.start_ms, c.end_ms) for c in chapters] == [
        (round(s["start_s"] * 1000), round(s["end_s"] * 1000)) for s in scenes
    ]
