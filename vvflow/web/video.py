"""What the page knows of one video: where it is, its report, and what its outputs say.

Nothing here assumes the built-in pipeline: each output that exists is linked, and the
JSON outputs are read for the fields the built-in stages write (scenes, contact sheet,
captions, transcript, summary, logline). A custom pipeline shows what it has.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vvflow import atomicfs, report
from vvflow.layout import DIR_SUFFIX, Layout, State, split_name
from vvflow.pipeline import Pipeline
from vvflow.web.files import IMAGE_SUFFIXES, file_url, walk_regular

#: JSON outputs larger than this are linked, not read.
JSON_MAX_BYTES = 16 << 20
TRANSCRIPT_EXCERPT_CHARS = 1200
MAX_KEYFRAMES = 300


@dataclass
class OutputFile:
    label: str
    path: str
    url: str
    size: int


@dataclass
class Image:
    name: str
    url: str
    caption: str = ""


@dataclass
class Scene:
    index: Any
    start: str
    end: str
    duration_s: Any
    description: str
    on_screen_text: list[str]
    speech: str
    keyframe: Image | None


@dataclass
class Caption:
    text: str
    first_s: Any
    last_s: Any


@dataclass
class VideoPage:
    name: str
    state: str | None
    where: str | None
    report: report.Report | None
    outputs: list[OutputFile] = field(default_factory=list)
    contact_sheet: Image | None = None
    keyframes: list[Image] = field(default_factory=list)
    scenes: list[Scene] = field(default_factory=list)
    captions: list[Caption] = field(default_factory=list)
    transcript: str = ""
    summary: str = ""
    logline: str = ""
    kind: str = ""

    @property
    def found(self) -> bool:
        return self.state is not None or self.report is not None or bool(self.outputs)


def valid_name(name: str) -> bool:
    """A name a video can have (anything else is no video: 404)."""
    return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")


def _regular(path: Path) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def locate(layout: Layout, name: str) -> tuple[str | None, str | None]:
    """The state of the video called `name` and the folder it is in (relative to the
    root), by looking at the folders; (None, None) when it is in none of them."""
    for state in (State.COMPLETED, State.FAILED, State.PENDING):
        if _regular(layout.folder(state) / name) is not None:
            return state.value, f"input/{state.value}/"
    for folder in layout.instance_folders():
        if _regular(folder / name) is not None:
            return State.PROCESSING.value, f"input/processing/{folder.name}/"
    return None, None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _relative(root: Path, path: Path) -> PurePosixPath | None:
    try:
        return PurePosixPath(path.relative_to(root).as_posix())
    except ValueError:
        return None


def collect(layout: Layout, pipeline: Pipeline, name: str) -> VideoPage:
    """Everything the video page shows of `name` (a valid name)."""
    state, where = locate(layout, name)
    page = VideoPage(name, state, where, report.load(layout.report_path(name)))
    root = layout.root
    stem = split_name(name)[0]
    documents: list[dict[str, Any]] = []
    #: Image files of the folder outputs, by file name (keyframes are named so).
    images: dict[str, Image] = {}
    for key, path in pipeline.all_outputs(name, stem).items():
        rel = _relative(root, path)
        if rel is None:
            continue
        if key.endswith(DIR_SUFFIX):
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            for inner in walk_regular(path):
                inner_st = _regular(path / inner)
                if inner_st is None:
                    continue
                url = file_url(rel / inner)
                page.outputs.append(OutputFile(key, str(rel / inner), url, inner_st.st_size))
                if inner.suffix.lower() in IMAGE_SUFFIXES:
                    images.setdefault(inner.name, Image(inner.name, url))
            continue
        found = _regular(path)
        if found is None:
            continue
        page.outputs.append(OutputFile(key, str(rel), file_url(rel), found.st_size))
        if path.suffix.lower() == ".json":
            doc = atomicfs.json_object(path, JSON_MAX_BYTES)
            if doc is not None:
                documents.append(doc)
    report_file = layout.report_path(name)
    found = _regular(report_file)
    rel = _relative(root, report_file)
    if found is not None and rel is not None:
        page.outputs.append(OutputFile("report", str(rel), file_url(rel), found.st_size))
    _read_documents(page, documents, images)
    return page


def _read_documents(
    page: VideoPage, documents: list[dict[str, Any]], images: dict[str, Image]
) -> None:
    """Fill the page from the JSON outputs, later stages winning (they know more)."""
    sheet_name = "contact-sheet.jpg"
    scenes: list[Any] = []
    for doc in documents:
        if isinstance(doc.get("contact_sheet"), str):
            sheet_name = doc["contact_sheet"]
        if isinstance(doc.get("scenes"), list) and doc["scenes"]:
            scenes = doc["scenes"]
        page.summary = _text(doc.get("summary")) or page.summary
        page.logline = _text(doc.get("logline")) or page.logline
        page.kind = _text(doc.get("kind")) or page.kind
        transcript = doc.get("transcript")
        if isinstance(transcript, dict) and _text(transcript.get("text")):
            text = _text(transcript["text"])
            cut = len(text) > TRANSCRIPT_EXCERPT_CHARS
            page.transcript = text[:TRANSCRIPT_EXCERPT_CHARS] + ("…" if cut else "")
        captions = doc.get("captions")
        if isinstance(captions, list):
            page.captions = [
                Caption(_text(c.get("text")), c.get("first_s"), c.get("last_s"))
                for c in captions
                if isinstance(c, dict) and _text(c.get("text"))
            ]
    page.contact_sheet = images.get(sheet_name)
    for scene in scenes:
        if not isinstance(scene, dict):
            continue
        keyframe = images.get(_text(scene.get("keyframe")))
        texts = scene.get("on_screen_text")
        page.scenes.append(
            Scene(
                index=scene.get("index"),
                start=_text(scene.get("start_timecode")) or str(scene.get("start_s", "")),
                end=_text(scene.get("end_timecode")) or str(scene.get("end_s", "")),
                duration_s=scene.get("duration_s"),
                description=_text(scene.get("description")),
                on_screen_text=[t for t in texts if isinstance(t, str)]
                if isinstance(texts, list)
                else [],
                speech=_text(scene.get("speech")),
                keyframe=keyframe,
            )
        )
        if keyframe is not None:
            start = page.scenes[-1].start
            page.keyframes.append(
                Image(keyframe.name, keyframe.url, f"#{scene.get('index')} {start}")
            )
    if not page.keyframes:
        page.keyframes = [img for img in images.values() if img.name != sheet_name][:MAX_KEYFRAMES]
