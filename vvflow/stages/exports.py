"""Editor outputs of a video: subtitles (WebVTT, SRT), WebVTT chapters, an OpenTimelineIO
timeline and a CMX 3600 EDL of its scenes.

A library for the summarize stage: ``write_exports`` writes every file into the stage's
folder output (published whole to ``<root>/exports/<stem>/``) and returns the names of
the files it wrote. Each ``*_vtt`` / ``*_srt`` / ``timeline_otio`` / ``edl_cmx3600``
function returns one file's text, for callers that want a single format.

Scenes come as the scan's analytic JSON has them (``index``, ``start_frame``,
``end_frame``, ``start_s``, ``end_s``), optionally with a ``title`` and a
``description``. Frames are the truth: the timeline and the EDL cut on the scan's frame
numbers, in the video's exact frame rate (``exact_rate``: 29.97 is 30000/1001).

The timeline's clips point at the video by an ``ExternalReference`` whose ``target_url``
is a plain path, no ``file://`` scheme (DaVinci Resolve refuses ``file://`` URLs,
OpenTimelineIO issue 1985), normally relative to the folder the timeline is published
in (``relative_media``), so it survives the storage root being mounted elsewhere, on an
editor's workstation or in a container. Clips are named after the video's file name,
which is what editors relink offline media by; each scene's title and description ride
on a marker of its clip and in the clip's ``metadata["vvflow"]``.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol, TypeGuard

import opentimelineio as otio  # type: ignore[import-untyped]

from vvflow.stages.command import write_bytes_atomic

#: File names in the exports folder, by the key ``write_exports`` returns them under.
SUBTITLES_VTT = "subtitles.vtt"
SUBTITLES_SRT = "subtitles.srt"
CHAPTERS_VTT = "chapters.vtt"
TIMELINE_OTIO = "timeline.otio"
EDL = "scenes.edl"

#: Subtitle lines hold about this many columns (a wide East Asian character counts two),
#: two lines to a cue: the usual broadcast and streaming rule.
LINE_COLUMNS = 42
LINES_PER_CUE = 2
#: A chapter title is one line of at most this many characters.
CHAPTER_TITLE_CHARS = 100
#: EDL lines are ASCII; the title of a CMX 3600 EDL holds at most 70 characters.
EDL_TITLE_CHARS = 70
_EDL_NAME_CHARS = 255
#: File-based media have no tape: "AX" (auxiliary source) is the reel editors expect.
EDL_REEL = "AX"

# Text is folded to one line: every whitespace character (CR, LF, but also VT, FF, NEL,
# U+2028 ...: a blank line would end a cue) is a space, and controls and format
# characters go, but for the joiners that shape scripts (Arabic, Indic, emoji) and the
# plain bidi marks; the bidi overrides, which make text read other than it is, go too.
_INVISIBLE = {"Cc", "Cf"}
_KEEP_FORMAT = {"\u200c", "\u200d", "\u200e", "\u200f"}
# SRT has no escapes. A word joiner (invisible, no break) after every "<", "{" and "&"
# and between "--" and ">" keeps text that players would read as markup (<b>, < i>,
# {\an8}, {y:i}, &lt;) or as a timing line (-->) plain text that looks the same.
_WORD_JOINER = "\u2060"
_SRT_MARKUP = re.compile(r"[<{&](?=.)|--(?=>)")
_NTSC_BASES = (24, 30, 48, 60, 120, 240)
#: The rates SMPTE timecode (and so an EDL) can count in, smallest first.
TIMECODE_RATES: tuple[Fraction, ...] = (
    Fraction(24000, 1001),
    Fraction(24),
    Fraction(25),
    Fraction(30000, 1001),
    Fraction(30),
    Fraction(48000, 1001),
    Fraction(48),
    Fraction(50),
    Fraction(60000, 1001),
    Fraction(60),
)


class Timed(Protocol):
    """A span of the video with a text: a subtitle cue or a chapter."""

    @property
    def start_s(self) -> float: ...

    @property
    def end_s(self) -> float: ...

    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class Cue:
    """A ``Timed`` of one's own: a subtitle cue or a chapter."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Media:
    """How the exports point at the video.

    ``target_url`` is written as it is: a path relative to the exports folder
    (``relative_media``), an absolute path, or a URL. ``name`` is the video's file name:
    the clips' name, which editors relink missing media by. ``absolute_path`` (where the
    video was when the exports were written) is kept in the reference's metadata.
    """

    target_url: str
    name: str
    absolute_path: str | None = None


def relative_media(video: Path, folder: Path) -> Media:
    """``Media`` for ``video`` seen from the exports published at ``folder``: a relative
    POSIX path (``../../input/completed/a.mp4`` for ``<root>/exports/a/``)."""
    video, folder = Path(os.path.abspath(video)), Path(os.path.abspath(folder))
    relative = Path(os.path.relpath(video, folder)).as_posix()
    return Media(target_url=relative, name=video.name, absolute_path=str(video))


# --- frame rates -------------------------------------------------------------------


def exact_rate(rate: Fraction | float | int | str) -> Fraction:
    """The exact frame rate for ``rate``: a ``Fraction`` as it is, ``"30000/1001"``
    parsed, and a float (probe.py records three decimals) snapped to the NTSC rate it
    stands for (29.97 is 30000/1001, 23.976 is 24000/1001) or to a whole number.

    Raises ValueError for a rate that is not a positive finite number.
    """
    if isinstance(rate, str):
        value = Fraction(rate.strip())
    elif isinstance(rate, Fraction):
        value = rate
    else:
        number = float(rate)
        if not math.isfinite(number):
            raise ValueError(f"frame rate {rate!r} is not a number")
        value = _snap(number)
    if value <= 0:
        raise ValueError(f"frame rate {rate!r} is not positive")
    return value


def rate_of(video: Mapping[str, Any]) -> Fraction:
    """The exact frame rate of the analytic JSON's ``video`` object: its ``frame_rate``
    (``"30000/1001"``) when it records one, else its ``fps`` snapped by ``exact_rate``."""
    recorded = video.get("frame_rate")
    if isinstance(recorded, str) and recorded.strip():
        return exact_rate(recorded)
    fps = video.get("fps")
    if isinstance(fps, int | float) and not isinstance(fps, bool):
        return exact_rate(fps)
    raise ValueError("the video object records no frame rate (fps)")


def _snap(fps: float) -> Fraction:
    whole = round(fps)
    if whole > 0 and abs(fps - whole) < 0.0005:
        return Fraction(whole)
    base = round(fps * 1.001)
    # NTSC rates and their halves (14.985 for 15000/1001 screen recordings).
    for candidate in (base, *_NTSC_BASES):
        ntsc = Fraction(candidate * 1000, 1001)
        if abs(fps - ntsc) < 0.0015:
            return ntsc
    return Fraction(fps).limit_denominator(1001)


# --- scenes --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Span:
    index: int
    start: int  # first frame
    end: int  # first frame after the scene
    title: str
    description: str


def _spans(scenes: Iterable[Mapping[str, Any]], rate: Fraction, total: int) -> list[_Span]:
    """Scenes as frame spans: sorted, overlaps clipped, empty ones dropped; one span of
    the whole video when no scene is usable."""
    raw: list[_Span] = []
    for number, scene in enumerate(scenes, 1):
        start = _frame(scene.get("start_frame"), scene.get("start_s"), rate)
        end = _frame(scene.get("end_frame"), scene.get("end_s"), rate)
        if start is None or end is None:
            continue
        index = scene.get("index")
        raw.append(
            _Span(
                index=index if isinstance(index, int) and not isinstance(index, bool) else number,
                start=max(0, start),
                end=end,
                title=_one_line(scene.get("title")),
                description=_one_line(scene.get("description")),
            )
        )
    raw = [span for span in raw if span.end > span.start]
    raw.sort(key=lambda span: (span.start, span.end))
    spans: list[_Span] = []
    for position, span in enumerate(raw):
        following = raw[position + 1].start if position + 1 < len(raw) else span.end
        end = min(span.end, following)
        if end > span.start:
            spans.append(_Span(span.index, span.start, end, span.title, span.description))
    if not spans and total > 0:
        spans.append(_Span(1, 0, total, "", ""))
    return spans


def _frame(frame: Any, seconds: Any, rate: Fraction) -> int | None:
    if isinstance(frame, int) and not isinstance(frame, bool):
        return frame
    if isinstance(frame, float) and math.isfinite(frame) and frame.is_integer():
        return int(frame)
    if _is_number(seconds):
        return round(Fraction(seconds) * rate)
    return None


def _total_frames(spans_end: int, duration_s: float | None, rate: Fraction) -> int:
    total = spans_end
    if duration_s is not None and math.isfinite(duration_s) and duration_s > 0:
        total = max(total, round(Fraction(duration_s) * rate))
    return total


def _scene_title(span: _Span) -> str:
    return span.title or f"Scene {span.index}"


def scene_chapters(scenes: Iterable[Mapping[str, Any]], rate: Fraction | None = None) -> list[Cue]:
    """One chapter per scene, titled by the scene's ``title`` or "Scene <index>".

    Times are the scenes' ``start_s`` / ``end_s``, else their frames over ``rate``.
    """
    chapters: list[Cue] = []
    for number, scene in enumerate(scenes, 1):
        start, end = scene.get("start_s"), scene.get("end_s")
        if not _is_number(start) or not _is_number(end):
            if rate is None:
                continue
            start_frame, end_frame = scene.get("start_frame"), scene.get("end_frame")
            if not _is_number(start_frame) or not _is_number(end_frame):
                continue
            start, end = float(start_frame / rate), float(end_frame / rate)
        index = scene.get("index", number)
        title = _one_line(scene.get("title")) or f"Scene {index}"
        chapters.append(Cue(float(start), float(end), title))
    return chapters


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- text ------------------------------------------------------------------------------


def _one_line(text: Any) -> str:
    """``text`` on one line: whitespace runs one space, no controls, lone surrogates (a
    file name that is not UTF-8) U+FFFD; "" for what is not a string."""
    if not isinstance(text, str):
        return ""
    if text.isascii() and text.isprintable():  # the common case, quickly
        return " ".join(text.split())
    kept: list[str] = []
    for char in text:
        if "\ud800" <= char <= "\udfff":
            kept.append("\ufffd")
        elif char.isspace():
            kept.append(" ")
        elif unicodedata.category(char) not in _INVISIBLE or char in _KEEP_FORMAT:
            kept.append(char)
    return " ".join("".join(kept).split())


def _unicode(text: str | None) -> str:
    """``text`` exactly, but for lone surrogates, which no UTF-8 file can hold."""
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text or "")


def _columns(text: str) -> int:
    """The width of ``text`` in columns: two for a wide East Asian character, none for
    a combining mark."""
    return len(text) if text.isascii() else sum(map(_char_columns, text))


@functools.lru_cache(maxsize=8192)
def _char_columns(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def _wrap(text: str, columns: int = LINE_COLUMNS) -> list[str]:
    """``text`` on lines of at most ``columns`` columns, broken at spaces (a word longer
    than a line is broken anywhere). Two lines are balanced: the wider one as narrow as
    it can be, and of two such breaks the one with the longer lower line."""
    text = _one_line(text)
    if not text:
        return []
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if _columns(candidate) <= columns:
            line = candidate
            continue
        if line:
            lines.append(line)
        *full, line = _pieces(word, columns)
        lines.extend(full)
    if line:
        lines.append(line)
    if len(lines) == 2:
        return _balanced(text, columns) or lines
    return lines


def _pieces(word: str, columns: int) -> list[str]:
    """``word`` cut into pieces of at most ``columns`` columns (at least a character)."""
    pieces, piece, width = [], "", 0
    for char in word:
        char_width = _columns(char)
        if piece and width + char_width > columns:
            pieces.append(piece)
            piece, width = "", 0
        piece, width = piece + char, width + char_width
    return [*pieces, piece]


def _balanced(text: str, columns: int) -> list[str] | None:
    # at[i]: the width of text[:i], so any slice's width is a difference.
    at = list(itertools.accumulate(map(_char_columns, text), initial=0))
    full = at[-1]
    breaks = [(i, i + 1) for i, char in enumerate(text) if char == " "]
    if not any(at[i] <= columns >= full - at[j] for i, j in breaks):
        breaks = [(i, i) for i in range(1, len(text))]  # no spaces to break at (CJK)
    best: tuple[int, int, int, int] | None = None
    for cut, resume in breaks:
        top, bottom = at[cut], full - at[resume]
        if cut == 0 or resume == len(text) or max(top, bottom) > columns:
            continue
        # The widest line as narrow as it can be; then the lower line the longer.
        key = (max(top, bottom), top - bottom, cut, resume)
        if best is None or key[:2] < best[:2]:
            best = key
    return [text[: best[2]], text[best[3] :]] if best else None


def _vtt_escape(text: str) -> str:
    # WebVTT cue text: "&" and "<" start markup, and "-->" may not appear; escaping ">"
    # too removes every "-->".
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _srt_plain(text: str) -> str:
    return _SRT_MARKUP.sub(lambda match: match.group(0) + _WORD_JOINER, text)


# --- subtitles and chapters --------------------------------------------------------------


@dataclass(frozen=True)
class _Block:
    start_ms: int
    end_ms: int
    lines: list[str]


def _millis(seconds: float) -> int | None:
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return None
    return max(0, math.floor(seconds * 1000 + 0.5))


def _timed(items: Iterable[Timed], *, untitled: bool = False) -> list[tuple[int, int, str]]:
    """Spans in milliseconds with one-line text: sorted, overlaps clipped, zero-length
    ones dropped, and those without text too unless ``untitled``."""
    spans: list[tuple[int, int, str]] = []
    for item in items:
        start, end, text = _millis(item.start_s), _millis(item.end_s), _one_line(item.text)
        if start is not None and end is not None and end > start and (text or untitled):
            spans.append((start, end, text))
    spans.sort(key=lambda span: (span[0], span[1]))
    clipped: list[tuple[int, int, str]] = []
    for position, (start, end, text) in enumerate(spans):
        following = spans[position + 1][0] if position + 1 < len(spans) else end
        if min(end, following) > start:
            clipped.append((start, min(end, following), text))
    return clipped


def _subtitle_blocks(cues: Iterable[Timed]) -> list[_Block]:
    blocks: list[_Block] = []
    for start, end, text in _timed(cues):
        lines = _wrap(text)
        if len(lines) <= LINES_PER_CUE:
            blocks.append(_Block(start, end, lines))
            continue
        # Too long for one cue: consecutive cues of two lines each, sharing its time
        # in proportion to their length.
        groups = [lines[i : i + LINES_PER_CUE] for i in range(0, len(lines), LINES_PER_CUE)]
        weights = [sum(len(line) for line in group) for group in groups]
        total, done = sum(weights), 0
        bounds = [start]
        for weight in weights:
            done += weight
            bounds.append(start + round((end - start) * done / total))
        if any(later <= earlier for earlier, later in itertools.pairwise(bounds)):
            blocks.append(_Block(start, end, lines))  # too short to share: keep it whole
            continue
        blocks.extend(_Block(bounds[i], bounds[i + 1], group) for i, group in enumerate(groups))
    return blocks


def _timestamp(millis: int, separator: str) -> str:
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def subtitles_vtt(cues: Iterable[Timed]) -> str:
    """WebVTT subtitles of ``cues``: sorted, overlaps clipped, empty cues dropped, text
    escaped and wrapped to two lines of about 42 columns (longer text: several cues)."""
    return _vtt(_subtitle_blocks(cues))


def subtitles_srt(cues: Iterable[Timed]) -> str:
    """SubRip subtitles of ``cues``, numbered from 1, with the same cues as
    ``subtitles_vtt``; text that players would read as markup is kept plain."""
    return _srt(_subtitle_blocks(cues))


def _vtt(blocks: Iterable[_Block]) -> str:
    out = ["WEBVTT", ""]
    for block in blocks:
        out.append(f"{_timestamp(block.start_ms, '.')} --> {_timestamp(block.end_ms, '.')}")
        out.extend(_vtt_escape(line) for line in block.lines)
        out.append("")
    return "\n".join(out)


def _srt(blocks: Iterable[_Block]) -> str:
    out: list[str] = []
    for number, block in enumerate(blocks, 1):
        out.append(str(number))
        out.append(f"{_timestamp(block.start_ms, ',')} --> {_timestamp(block.end_ms, ',')}")
        out.extend(_srt_plain(line) for line in block.lines)
        out.append("")
    return "\n".join(out)


def chapters_vtt(chapters: Iterable[Timed]) -> str:
    """WebVTT chapters: one cue per chapter, numbered, its title on one line (at most
    100 characters), "Chapter <n>" for a chapter without one."""
    out = ["WEBVTT", ""]
    for number, (start, end, text) in enumerate(_timed(chapters, untitled=True), 1):
        title = text or f"Chapter {number}"
        if len(title) > CHAPTER_TITLE_CHARS:
            title = title[: CHAPTER_TITLE_CHARS - 1].rstrip() + "\u2026"
        out.append(str(number))
        out.append(f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}")
        out.append(_vtt_escape(title))
        out.append("")
    return "\n".join(out)


# --- OpenTimelineIO ------------------------------------------------------------------------


def timeline(
    name: str,
    scenes: Iterable[Mapping[str, Any]],
    rate: Fraction | float | str,
    media: Media,
    duration_s: float | None = None,
    *,
    audio: bool = False,
) -> Any:
    """An ``otio.schema.Timeline`` named ``name``: one video track (and an audio track
    when ``audio``) with a clip per scene, cut on the scene's frames at ``rate``."""
    exact = exact_rate(rate)
    float_rate = float(exact)
    spans = _spans(scenes, exact, _total_frames(0, duration_s, exact))
    total = _total_frames(max((s.end for s in spans), default=0), duration_s, exact)
    media_name = _one_line(media.name) or "video"
    result = otio.schema.Timeline(
        name=_one_line(name),
        global_start_time=otio.opentime.RationalTime(0, float_rate),
        metadata={"vvflow": {"frame_rate": _fraction_text(exact), "media": media_name}},
    )
    kinds = [otio.schema.TrackKind.Video] + ([otio.schema.TrackKind.Audio] if audio else [])
    for kind in kinds:
        track = otio.schema.Track(name=f"{kind} 1", kind=kind)
        for span in spans:
            clip = otio.schema.Clip(
                name=media_name,
                media_reference=_reference(media, media_name, total, float_rate),
                source_range=_range(span.start, span.end, float_rate),
                metadata={"vvflow": _scene_metadata(span, exact)},
            )
            if kind == otio.schema.TrackKind.Video:
                clip.markers.append(
                    otio.schema.Marker(
                        name=_scene_title(span),
                        marked_range=_range(span.start, span.start, float_rate),
                        color=otio.schema.MarkerColor.GREEN,
                        comment=span.description,
                    )
                )
            track.append(clip)
        result.tracks.append(track)
    return result


def timeline_otio(
    name: str,
    scenes: Iterable[Mapping[str, Any]],
    rate: Fraction | float | str,
    media: Media,
    duration_s: float | None = None,
    *,
    audio: bool = False,
) -> str:
    """``timeline(...)`` as OpenTimelineIO JSON (a ``.otio`` file), by OTIO's own writer."""
    built = timeline(name, scenes, rate, media, duration_s, audio=audio)
    text: str = otio.adapters.write_to_string(built, "otio_json")
    return text if text.endswith("\n") else text + "\n"


def _range(start: int, end: int, rate: float) -> Any:
    return otio.opentime.TimeRange(
        start_time=otio.opentime.RationalTime(start, rate),
        duration=otio.opentime.RationalTime(end - start, rate),
    )


def _reference(media: Media, name: str, total: int, rate: float) -> Any:
    metadata = {"vvflow": {"absolute_path": _unicode(media.absolute_path)}}
    reference = otio.schema.ExternalReference(
        target_url=_unicode(media.target_url),
        available_range=_range(0, total, rate) if total > 0 else None,
        metadata=metadata if media.absolute_path else {},
    )
    reference.name = name
    return reference


def _scene_metadata(span: _Span, rate: Fraction) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "scene": span.index,
        "title": _scene_title(span),
        "start_frame": span.start,
        "end_frame": span.end,
        "start_s": round(float(span.start / rate), 3),
        "end_s": round(float(span.end / rate), 3),
    }
    if span.description:
        metadata["description"] = span.description
    return metadata


def _fraction_text(rate: Fraction) -> str:
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


# --- CMX 3600 EDL ----------------------------------------------------------------------------


def edl_rate(rate: Fraction | float | str) -> Fraction:
    """The rate an EDL of a video at ``rate`` counts timecode in.

    SMPTE timecode exists at 23.976, 24, 25, 29.97 (drop frame), 30, 47.952, 48, 50,
    59.94 (drop frame) and 60 fps. Another rate is counted at the smallest of those it
    divides exactly (10 and 15 fps at 30, 12.5 at 25), so every cut keeps its exact time;
    else at the nearest one, cuts rounded to its frames.
    """
    exact = exact_rate(rate)
    if otio.opentime.RationalTime.is_valid_timecode_rate(float(exact)):
        return exact
    for candidate in TIMECODE_RATES:
        if (candidate / exact).denominator == 1:
            return candidate
    return min(TIMECODE_RATES, key=lambda candidate: abs(candidate - exact))


def _cmx_adapter_available() -> bool:
    try:
        return "cmx_3600" in otio.adapters.available_adapter_names()
    except Exception:  # a broken plugin manifest means no EDL, not a failed stage
        return False


def edl_cmx3600(
    name: str,
    scenes: Iterable[Mapping[str, Any]],
    rate: Fraction | float | str,
    media: Media,
    duration_s: float | None = None,
) -> str | None:
    """A CMX 3600 EDL of the scenes (one cut event per scene, reel ``AX``, the video's
    file name as clip name, each scene's title as a locator), by OpenTimelineIO's
    ``cmx_3600`` adapter; None when that adapter is not installed.

    Timecode counts at ``edl_rate(rate)``; 29.97 and 59.94 fps are drop frame. Every
    line is ASCII: names are transliterated, then stripped of what remains.
    """
    if not _cmx_adapter_available():
        return None
    source = exact_rate(rate)
    target = edl_rate(source)
    float_rate = float(target)
    spans = _spans(scenes, source, _total_frames(0, duration_s, source))
    if not spans:
        return None
    clip_name = _ascii(media.name, _EDL_NAME_CHARS) or "video"
    track = otio.schema.Track(name="V", kind=otio.schema.TrackKind.Video)
    for span in spans:
        start, end = _convert(span.start, source, target), _convert(span.end, source, target)
        if end <= start:
            continue
        clip = otio.schema.Clip(
            name=clip_name,
            media_reference=otio.schema.ExternalReference(target_url=_ascii_url(media)),
            source_range=_range(start, end, float_rate),
            metadata={"cmx_3600": {"reel": EDL_REEL}},
        )
        title = _ascii(_scene_title(span), EDL_TITLE_CHARS) or f"SCENE {span.index}"
        clip.markers.append(
            otio.schema.Marker(
                name=title,
                marked_range=_range(start, start, float_rate),
                color=otio.schema.MarkerColor.GREEN,
            )
        )
        track.append(clip)
    edit = otio.schema.Timeline(name=_ascii(name, EDL_TITLE_CHARS) or "vvflow")
    edit.tracks.append(track)
    text: str = otio.adapters.write_to_string(edit, "cmx_3600", rate=float_rate, style="avid")
    drop = otio.opentime.to_timecode(otio.opentime.RationalTime(0, float_rate), float_rate)
    fcm = "FCM: DROP FRAME" if ";" in drop else "FCM: NON-DROP FRAME"
    lines = text.splitlines()
    at = 1 if lines and lines[0].startswith("TITLE:") else 0
    lines[at:at] = [fcm]
    return "\n".join(lines).rstrip("\n") + "\n"


def _convert(frame: int, source: Fraction, target: Fraction) -> int:
    return round(frame * target / source)


def _ascii(text: str, limit: int) -> str:
    """``text`` as one line of printable ASCII: accents dropped, anything else removed."""
    folded = unicodedata.normalize("NFKD", _one_line(text))
    kept = "".join(c for c in folded if " " <= c <= "~")
    return " ".join(kept.split())[:limit].rstrip()


def _ascii_url(media: Media) -> str:
    # The EDL's "* FROM CLIP:" comment: percent-encoding keeps it exact, ASCII, one line.
    return urllib.parse.quote(_unicode(media.target_url), safe="/:._-~+()[]!$,;=@' ")


# --- the exports folder -----------------------------------------------------------------------


def write_exports(
    folder: Path,
    *,
    name: str,
    scenes: Sequence[Mapping[str, Any]],
    rate: Fraction | float | str,
    duration_s: float | None,
    media: Media,
    cues: Iterable[Timed] = (),
    chapters: Iterable[Timed] | None = None,
    audio: bool = False,
) -> dict[str, str]:
    """Write the editor outputs of one video into ``folder``, each file atomically;
    return ``{key: file name in folder}`` for the files written.

    Keys: ``subtitles_vtt`` and ``subtitles_srt`` (only when a cue has text),
    ``chapters_vtt`` (``chapters``, else one per scene by ``scene_chapters``),
    ``timeline_otio``, and ``edl`` (only when OTIO's cmx_3600 adapter is installed).
    A video without a usable frame rate (``rate`` 0: the container tells none) gets no
    timeline and no EDL, which count frames, rather than a failed stage.
    """
    try:
        exact: Fraction | None = exact_rate(rate)
    except ValueError:
        exact = None
    blocks = _subtitle_blocks(cues)
    chapter_list = list(chapters) if chapters is not None else scene_chapters(scenes, exact)
    files: dict[str, tuple[str, str]] = {}
    if blocks:
        files["subtitles_vtt"] = (SUBTITLES_VTT, _vtt(blocks))
        files["subtitles_srt"] = (SUBTITLES_SRT, _srt(blocks))
    if _timed(chapter_list, untitled=True):
        files["chapters_vtt"] = (CHAPTERS_VTT, chapters_vtt(chapter_list))
    if exact is not None:
        otio_text = timeline_otio(name, scenes, exact, media, duration_s, audio=audio)
        files["timeline_otio"] = (TIMELINE_OTIO, otio_text)
        edl = edl_cmx3600(name, scenes, exact, media, duration_s)
        if edl is not None:
            files["edl"] = (EDL, edl)
    written: dict[str, str] = {}
    for key, (file_name, text) in files.items():
        write_bytes_atomic(folder / file_name, text.encode("utf-8"))
        written[key] = file_name
    return written
