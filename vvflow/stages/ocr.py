"""On-screen text: a cheap gate says where text can be, RapidOCR's models read each
distinct caption once, and a filter keeps what a person would agree is on screen.

``measure.py`` drives it over the frames it samples (every ``SAMPLE_SECONDS``, at least
one per scene) during its single decode, through one ``TextReader`` per video:

- ``text_regions(gray)`` is the gate: on a small gray copy of the frame (``GATE_WIDTH``
  wide; and at a half, a quarter and an eighth of that for large titles), edges that a
  horizontal closing joins into line-shaped boxes, kept when they stand out from their
  surroundings and hold at least three letter-like shapes of one polarity, aligned on a
  line. A frame without any goes to no OCR at all.
- ``CaptionTracker`` groups a frame's lines into blocks and tells which need reading: a
  block in the same place with the same strong edges (the gradient, binarised: the
  letters' outlines, whatever is behind them) as one already read is another sighting
  of that reading, not a new reading.
- ``read_lines(image)`` runs RapidOCR's text detector and recogniser (the ONNX models in
  the rapidocr wheel: nothing is downloaded) with onnxruntime on a crop around one
  block, scaled so that its lines are about ``_LINE_HEIGHT`` pixels tall.
- ``accept(readings)`` makes the captions: lines cleaned (Unicode NFKC, stray symbols
  dropped, lines under ``LINE_SCORE`` dropped), one script per caption, one spelling per
  caption (a caption read partially in one frame and fully in another keeps the
  fullest, best-scored spelling), long enough (``_long_enough``), seen in more than one
  sampled frame or read with a score of at least ``HIGH_SCORE``; a caption in a script
  other than Latin (RapidOCR's default model reads Chinese, and finds lone Chinese
  characters in faces and foliage) must also be seen more than once. In order of
  first appearance.

``TextReader.counters`` says what it cost: frames sampled, frames that passed the gate,
frames given to the OCR detector and the blocks read in them.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import math
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]

#: Frames are sampled for text this often (and at least once per scene).
SAMPLE_SECONDS = 0.5
#: The gate's frame width in pixels (the height keeps the frame's aspect ratio).
GATE_WIDTH = 640
#: RapidOCR lines scored below this are dropped.
LINE_SCORE = 0.6
#: A caption seen in a single sampled frame counts only when read at least this well.
HIGH_SCORE = 0.93

# -- the gate ---------------------------------------------------------------------------

# Thresholds of the morphological gradient: low for plain backgrounds, high for text
# over a busy one (foliage, bricks, wood grain), where the low levels see only texture.
_LEVELS = (32, 80, 144)
_BUSY_SHARE = 0.12  # a level with edges on more of the frame than this is all texture
_GRADIENT = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
_JOIN = cv2.getStructuringElement(cv2.MORPH_RECT, (9, 3))
_EDGE = 2  # pixels: boxes this close to the frame's edge are cut text or borders
_MIN_LINE_HEIGHT = 7
_MAX_LINE_SHARE = 0.3  # of the frame's height
_SCALES = (1, 2, 4, 8)  # the gate looks at the frame at these divisions of its size


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels."""

    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    def overlaps(self, other: Box) -> bool:
        return (
            self.x < other.right
            and other.x < self.right
            and self.y < other.bottom
            and other.y < self.bottom
        )

    def iou(self, other: Box) -> float:
        """Intersection over union."""
        width = min(self.right, other.right) - max(self.x, other.x)
        height = min(self.bottom, other.bottom) - max(self.y, other.y)
        if width <= 0 or height <= 0:
            return 0.0
        shared = width * height
        return shared / (self.width * self.height + other.width * other.height - shared)

    def union(self, other: Box) -> Box:
        x, y = min(self.x, other.x), min(self.y, other.y)
        return Box(x, y, max(self.right, other.right) - x, max(self.bottom, other.bottom) - y)

    def scaled(self, factor: float) -> Box:
        return Box(
            round(self.x * factor),
            round(self.y * factor),
            max(1, round(self.width * factor)),
            max(1, round(self.height * factor)),
        )


def gate_size(width: int, height: int) -> tuple[int, int]:
    """The gate's (width, height) for frames of ``width`` x ``height``: even numbers."""
    gate_height = max(2, round(GATE_WIDTH * height / max(1, width) / 2) * 2)
    return GATE_WIDTH, gate_height


def text_regions(gray: Image) -> list[Box]:
    """Boxes of ``gray`` (a gray frame about ``GATE_WIDTH`` wide) that look like lines
    of text, in its pixels; empty when nothing does."""
    found: list[Box] = []
    scaled = gray
    for factor in _SCALES:
        if factor > 1:  # large titles, whose letters stand too far apart at full scale
            size = (gray.shape[1] // factor, gray.shape[0] // factor)
            scaled = np.asarray(cv2.resize(scaled, size, interpolation=cv2.INTER_AREA))
        for small in _regions(scaled):
            _add(found, small.scaled(factor))
    return found


def _add(found: list[Box], box: Box) -> None:
    """Add ``box`` to ``found``, as one with the boxes it overlaps (the same line of
    text seen whole at one level or scale, in part at another)."""
    for other in [other for other in found if other.overlaps(box)]:
        found.remove(other)
        box = box.union(other)
    found.append(box)


def _regions(gray: Image) -> list[Box]:
    gradient = cv2.morphologyEx(gray, cv2.MORPH_GRADIENT, _GRADIENT)
    found: list[Box] = []
    busy = _BUSY_SHARE * gray.size
    for level in _LEVELS:
        edges = np.asarray(
            cv2.threshold(gradient, level - 1, 1, cv2.THRESH_BINARY)[1], dtype=np.uint8
        )
        count = cv2.countNonZero(edges)
        if count == 0:
            break  # the higher levels have fewer still
        if count > busy:
            continue
        for box in _lines(gray, edges):
            _add(found, box)
    return found


def _lines(gray: Image, edges: Image) -> Iterator[Box]:
    height, width = gray.shape
    joined = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, _JOIN)
    contours, _ = cv2.findContours(joined, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        if not _MIN_LINE_HEIGHT <= h <= _MAX_LINE_SHARE * height or w < max(2 * h, 24):
            continue
        if x < _EDGE or y < _EDGE or x + w + _EDGE > width or y + h + _EDGE > height:
            continue
        if cv2.countNonZero(joined[y : y + h, x : x + w]) < 0.45 * w * h:
            continue  # a ring or a scatter, not a line of letters
        if not _stands_out(edges, x, y, w, h):
            continue  # a patch of texture
        crop = gray[y - _EDGE : y + h + _EDGE, x - _EDGE : x + w + _EDGE]
        if _letters_in_line(crop):
            yield Box(x, y, w, h)


def _stands_out(edges: Image, x: int, y: int, w: int, h: int) -> bool:
    """The ring around a box has under half the box's density of edges."""
    height, width = edges.shape
    pad_y, pad_x = max(3, h // 2), max(3, h)
    x0, y0 = max(0, x - pad_x), max(0, y - pad_y)
    x1, y1 = min(width, x + w + pad_x), min(height, y + h + pad_y)
    outer = int(cv2.countNonZero(edges[y0:y1, x0:x1]))
    inner = int(cv2.countNonZero(edges[y : y + h, x : x + w]))
    ring = (x1 - x0) * (y1 - y0) - w * h
    return bool(2 * (outer - inner) * w * h <= inner * ring)


def _binarised(crop: Image) -> Iterator[Image]:
    """``crop`` split into 0 and 1 four ways: Otsu's threshold both ways round, and
    halfway from it to the lightest and to the darkest pixel (text over a texture
    that Otsu's threshold puts with the text)."""
    otsu, binary = cv2.threshold(crop, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    yield np.asarray(binary)
    yield np.asarray(1 - binary)
    yield np.asarray(cv2.threshold(crop, (otsu + int(crop.max())) / 2, 1, cv2.THRESH_BINARY)[1])
    yield np.asarray(cv2.threshold(crop, (otsu + int(crop.min())) / 2, 1, cv2.THRESH_BINARY_INV)[1])


def _letters_in_line(crop: Image) -> bool:
    """At least three letter-like shapes of one polarity, aligned at their tops or
    bottoms, spread over the box: not touching its border (letters keep a margin)."""
    height, width = crop.shape
    for binary in _binarised(crop):
        _, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        x, y, w, h, area = stats[1:].T
        letter = (
            (h >= 0.3 * (height - 2 * _EDGE))
            & (w <= 1.6 * height)
            & (area >= 0.1 * w * h)
            & (x > 0)
            & (y > 0)
            & (x + w < width)
            & (y + h < height)
        )
        if np.count_nonzero(letter) < 3:
            continue
        x, y, w, h = x[letter], y[letter], w[letter], h[letter]
        bottoms, tops = y + h, y
        aligned = (np.abs(bottoms - np.median(bottoms)) <= 0.15 * height) | (
            np.abs(tops - np.median(tops)) <= 0.15 * height
        )
        spread = (int((x + w).max()) - int(x.min())) / width
        if float(np.mean(aligned)) >= 0.7 and float(spread) >= 0.4:
            return True
    return False


# -- one reading per caption -------------------------------------------------------------

_SAME_PLACE = 0.7  # intersection over union of two sightings of one block
_SAME_CONTENT = 0.3  # at most this share of the edge pixels of either sighting differ
_EDGE_LEVEL = 64


@dataclass
class Block:
    """Lines of text shown together, in the gate's pixels."""

    box: Box
    line_height: int


def blocks(lines: Sequence[Box]) -> list[Block]:
    """``lines`` (the gate's boxes) joined into blocks: boxes side by side on one line,
    and lines stacked with less than a line's height between them."""
    groups = [(box, [box.height]) for box in sorted(lines, key=lambda b: (b.y, b.x))]
    while pair := next(
        (
            (i, j)
            for i in range(len(groups))
            for j in range(i + 1, len(groups))
            if _together(groups[i][0], groups[j][0], max(*groups[i][1], *groups[j][1]))
        ),
        None,
    ):
        (a, heights_a), (b, heights_b) = groups[pair[0]], groups.pop(pair[1])
        groups[pair[0]] = (a.union(b), heights_a + heights_b)
    return [Block(box, round(float(np.median(heights)))) for box, heights in groups]


def _together(a: Box, b: Box, line: int) -> bool:
    across = min(a.right, b.right) - max(a.x, b.x)  # > 0: they overlap horizontally
    down = min(a.bottom, b.bottom) - max(a.y, b.y)  # > 0: they overlap vertically
    side_by_side = down >= 0.5 * min(a.height, b.height) and across >= -2 * line
    stacked = across > 0 and down >= -0.8 * line
    return side_by_side or stacked


@dataclass
class Track:
    """One block of text read once, and every sampled frame it was seen in."""

    box: Box  # in the gate's pixels
    line_height: int
    mask: npt.NDArray[np.bool_]  # its strong edges when read
    frames: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    lines: Future[list[Line]] | None = None


class CaptionTracker:
    """Tells, frame by frame, which blocks of text need reading."""

    def __init__(self) -> None:
        self.tracks: list[Track] = []

    def sight(self, frame: int, time_s: float, gray: Image, regions: Sequence[Box]) -> list[Track]:
        """Record the blocks of ``regions`` (the gate's boxes in ``gray``, frame
        ``frame`` at ``time_s``); return the tracks started, which need reading."""
        started: list[Track] = []
        for block in blocks(regions):
            known = self._match(block.box, gray)
            if known is None:
                known = Track(block.box, block.line_height, _mask(gray, block.box))
                self.tracks.append(known)
                started.append(known)
            if not known.frames or known.frames[-1] != frame:
                known.frames.append(frame)
                known.times.append(time_s)
        return started

    def _match(self, box: Box, gray: Image) -> Track | None:
        for track in reversed(self.tracks):  # the latest first: captions come and go
            if track.box.iou(box) < _SAME_PLACE:
                continue
            mask = _mask(gray, track.box)
            differing = int(np.count_nonzero(mask != track.mask))
            if differing <= _SAME_CONTENT * max(1, int(np.count_nonzero(mask | track.mask))):
                return track
        return None


def _mask(gray: Image, box: Box) -> npt.NDArray[np.bool_]:
    """The strong edges in ``box``: the letters' outlines, whatever is behind them."""
    crop = gray[box.y : box.bottom, box.x : box.right]
    edges = np.asarray(cv2.morphologyEx(crop, cv2.MORPH_GRADIENT, _GRADIENT))
    return np.asarray(edges >= _EDGE_LEVEL, dtype=np.bool_)


# -- reading with RapidOCR's models -------------------------------------------------------

_LINE_HEIGHT = 40  # pixels: the detector reads lines of about this height well
_MAX_UPSCALE = 4.0
# RapidOCR's settings for its detector's output (DB post-processing) and recogniser.
_DET_THRESHOLD = 0.3
_DET_BOX_SCORE = 0.5
_DET_UNCLIP = 1.6
_DET_MIN_SIDE = 3
_REC_HEIGHT = 48
_REC_MIN_RATIO = 320 / 48
_REC_BATCH = 6


@dataclass(frozen=True)
class Line:
    """One line of text as RapidOCR's recogniser read it, with its score (0..1)."""

    text: str
    score: float


class _Models:
    """RapidOCR's text detector and recogniser (ONNX files inside its wheel, nothing is
    downloaded), run with onnxruntime on one thread each call.

    RapidOCR's own Python pipeline is not used: importing it costs about 2 s of CPU
    (it parses its model catalogue with OmegaConf), it pads wide crops to twice their
    height before detecting, and runs an angle classifier captions do not need. The
    pre- and post-processing here are RapidOCR's, for upright text: its detector's
    normalisation and DB post-processing with axis-aligned boxes, its recogniser's
    resizing and CTC greedy decoding with the character list stored in the model."""

    def __init__(self) -> None:
        import onnxruntime  # type: ignore[import-untyped]  # noqa: PLC0415 - only with text

        folder = _rapidocr_models()
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 4
        options.intra_op_num_threads = 1  # the decoding keeps the other core busy
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False  # crops change size from call to call
        providers = ["CPUExecutionProvider"]
        self.detector = onnxruntime.InferenceSession(
            str(_model(folder, "det")), sess_options=options, providers=providers
        )
        self.recogniser = onnxruntime.InferenceSession(
            str(_model(folder, "rec")), sess_options=options, providers=providers
        )
        metadata = self.recogniser.get_modelmeta().custom_metadata_map
        if "character" not in metadata:
            raise RuntimeError(f"{folder}: the recogniser model has no character list")
        self.characters = ["", *metadata["character"].splitlines(), " "]


def _rapidocr_models() -> Path:
    spec = importlib.util.find_spec("rapidocr")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the rapidocr package (its models) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _model(folder: Path, task: str) -> Path:
    found = sorted(folder.glob(f"*{task}*.onnx"))
    if not found:
        raise RuntimeError(f"{folder}: no {task} model")
    return found[-1]  # the newest version, where several are installed


@functools.cache
def _models() -> _Models:
    return _Models()


def read_lines(image: Image) -> list[Line]:
    """The lines of text RapidOCR's models read in a BGR ``image``, in reading order."""
    models = _models()
    boxes = _detect(models, image)
    return _recognise(models, image, boxes) if boxes else []


def _detect(models: _Models, image: Image) -> list[Box]:
    height, width = image.shape[:2]
    size = (max(32, round(width / 32) * 32), max(32, round(height / 32) * 32))
    resized = cv2.resize(image, size).astype(np.float32)
    tensor = ((resized / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None]
    name = models.detector.get_inputs()[0].name
    output = np.asarray(models.detector.run(None, {name: tensor})[0])
    probability = output[0, 0]
    mask = cv2.dilate((probability > _DET_THRESHOLD).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    scale_x, scale_y = width / size[0], height / size[1]
    boxes: list[Box] = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        if min(w, h) < _DET_MIN_SIDE:
            continue
        inside = np.zeros((h, w), dtype=np.uint8)
        cv2.drawContours(inside, [contour - np.array([x, y])], -1, 1, thickness=-1)
        if cv2.mean(probability[y : y + h, x : x + w], inside)[0] < _DET_BOX_SCORE:
            continue
        grow = w * h * _DET_UNCLIP / (2 * (w + h))  # DB's unclip distance
        x0, y0 = max(0.0, (x - grow) * scale_x), max(0.0, (y - grow) * scale_y)
        x1, y1 = min(width, (x + w + grow) * scale_x), min(height, (y + h + grow) * scale_y)
        if min(x1 - x0, y1 - y0) > _DET_MIN_SIDE + 2:
            boxes.append(Box(round(x0), round(y0), round(x1 - x0), round(y1 - y0)))
    # Reading order: top to bottom, left to right within a line.
    boxes.sort(key=lambda box: (box.y, box.x))
    lines: list[list[Box]] = []
    for box in boxes:
        if lines and abs(box.y - lines[-1][0].y) < 10:
            lines[-1].append(box)
        else:
            lines.append([box])
    return [box for line in lines for box in sorted(line, key=lambda b: b.x)]


def _recognise(models: _Models, image: Image, boxes: list[Box]) -> list[Line]:
    crops = [image[box.y : box.bottom, box.x : box.right] for box in boxes]
    read: list[Line] = []
    name = models.recogniser.get_inputs()[0].name
    for first in range(0, len(crops), _REC_BATCH):
        batch = crops[first : first + _REC_BATCH]
        ratio = max(_REC_MIN_RATIO, *(c.shape[1] / c.shape[0] for c in batch))
        tensor = np.zeros((len(batch), 3, _REC_HEIGHT, int(_REC_HEIGHT * ratio)), np.float32)
        for number, crop in enumerate(batch):
            width = min(tensor.shape[3], math.ceil(_REC_HEIGHT * crop.shape[1] / crop.shape[0]))
            resized = cv2.resize(crop, (width, _REC_HEIGHT)).astype(np.float32)
            tensor[number, :, :, :width] = ((resized / 255 - 0.5) / 0.5).transpose(2, 0, 1)
        output = np.asarray(models.recogniser.run(None, {name: tensor})[0])
        for indices, scores in zip(output.argmax(axis=2), output.max(axis=2), strict=True):
            kept = np.ones(len(indices), dtype=bool)
            kept[1:] = indices[1:] != indices[:-1]  # CTC: repeats collapse
            kept &= indices != 0  # and blanks go
            text = "".join(models.characters[int(i)] for i in indices[kept])
            read.append(Line(text, float(np.mean(scores[kept])) if kept.any() else 0.0))
    return read


def crop_for_reading(image: Image, box: Box, line_height: int) -> Image:
    """The part of ``image`` (full size) around ``box`` (in its pixels), with a margin of
    about a line's height, scaled so that its lines are about ``_LINE_HEIGHT`` tall."""
    height, width = image.shape[:2]
    pad_y, pad_x = max(4, round(0.5 * line_height)), max(6, line_height)
    x0, y0 = max(0, box.x - pad_x), max(0, box.y - pad_y)
    x1, y1 = min(width, box.right + pad_x), min(height, box.bottom + pad_y)
    crop = image[y0:y1, x0:x1]
    scale = min(_MAX_UPSCALE, _LINE_HEIGHT / max(1, line_height))
    if abs(scale - 1) < 0.1:
        return np.ascontiguousarray(crop)
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    return np.asarray(
        cv2.resize(crop, None, fx=scale, fy=scale, interpolation=interpolation), dtype=np.uint8
    )


# -- the counters and the whole video -----------------------------------------------------


@dataclass
class OcrCounters:
    """What reading the text cost, in frames."""

    frames_sampled: int = 0
    frames_with_text: int = 0  # passed the gate
    frames_read: int = 0  # given to RapidOCR's detector (as crops around their blocks)
    regions_read: int = 0  # blocks of text read in them

    def add(self, other: OcrCounters) -> None:
        self.frames_sampled += other.frames_sampled
        self.frames_with_text += other.frames_with_text
        self.frames_read += other.frames_read
        self.regions_read += other.regions_read

    def as_json(self) -> dict[str, int]:
        return {
            "frames_sampled": self.frames_sampled,
            "frames_with_text": self.frames_with_text,
            "frames_read": self.frames_read,
            "regions_read": self.regions_read,
        }


class TextReader:
    """The on-screen text of one video, from the frames given to ``sample``; RapidOCR
    runs on a thread of its own, so that decoding goes on while it reads. Use it as a
    context manager, and call ``captions`` once every frame was sampled."""

    def __init__(self, frame_width: int, frame_height: int) -> None:
        self.gate_size = gate_size(frame_width, frame_height)
        self._scale = frame_width / self.gate_size[0]
        self._tracker = CaptionTracker()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vvflow-ocr")
        self.counters = OcrCounters()

    def __enter__(self) -> TextReader:
        return self

    def __exit__(self, *_: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def sample(
        self, frame: int, time_s: float, gray: Image, image: Callable[[], Image]
    ) -> OcrCounters:
        """Look for text in frame ``frame`` (at ``time_s``): ``gray`` is it at
        ``gate_size``; ``image()`` gives it full size in BGR, asked only when a block
        needs reading. Returns what this frame cost."""
        cost = OcrCounters(frames_sampled=1)
        regions = text_regions(gray)
        if regions:
            cost.frames_with_text = 1
            started = self._tracker.sight(frame, time_s, gray, regions)
            if started:
                cost.frames_read, cost.regions_read = 1, len(started)
                full = image()
                for track in started:
                    crop = crop_for_reading(
                        full, track.box.scaled(self._scale), round(track.line_height * self._scale)
                    )
                    track.lines = self._pool.submit(read_lines, crop)
        self.counters.add(cost)
        return cost

    def captions(self) -> list[Caption]:
        """The accepted captions, in order of first appearance (waits for the readings)."""
        readings = [
            Reading(
                box=track.box.scaled(self._scale),
                lines=track.lines.result() if track.lines is not None else [],
                frames=track.frames,
                times=track.times,
            )
            for track in self._tracker.tracks
        ]
        return accept(readings)


# -- what counts as on-screen text --------------------------------------------------------


@dataclass
class Reading:
    """One OCR pass over a block of text (``lines`` as RapidOCR read them), the block's
    place in the frame, and the sampled frames (and their times) it was seen in."""

    box: Box
    lines: list[Line]
    frames: list[int]
    times: list[float]


@dataclass(frozen=True)
class Caption:
    """Text accepted as on screen: its best spelling, its first and last sighting, in
    how many sampled frames it was seen, and the score of the spelling kept."""

    text: str
    first_s: float
    last_s: float
    sightings: int
    score: float
    frames: tuple[int, ...] = ()  # the sampled frames it was seen in

    def as_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "first_s": round(self.first_s, 3),
            "last_s": round(self.last_s, 3),
            "sightings": self.sightings,
            "score": round(self.score, 3),
        }


_KEEP_LEADING = set("\"'(¿¡#@$£€«\u201c\u2018")
_KEEP_TRAILING = set(".,!?:;%)\"'»\u201d\u2019…")
_SYMBOLS = {"So", "Sk", "Co", "Cn"}  # other symbols, modifiers, private use, unassigned
_MIN_SAME = 0.85  # similarity of two spellings of one caption
_CONTINUES_WITHIN_S = 2.0  # a longer reading this close in time may complete a shorter one


def clean_line(text: str) -> str:
    """``text`` in NFKC form (full-width letters and punctuation made plain), single
    spaces, without symbols (boxes, arrows, emoji) or stray punctuation at its ends."""
    text = unicodedata.normalize("NFKC", text)
    kept = (" " if unicodedata.category(ch) in _SYMBOLS else ch for ch in text)
    text = " ".join("".join(kept).split())
    start, end = 0, len(text)
    while start < end and not text[start].isalnum() and text[start] not in _KEEP_LEADING:
        start += 1
    while end > start and not text[end - 1].isalnum() and text[end - 1] not in _KEEP_TRAILING:
        end -= 1
    return text[start:end].strip()


def script(ch: str) -> str | None:
    """The script of a letter (``latin``, ``cjk``, ``cyrillic``, ...); None otherwise."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    first = name.split(" ", 1)[0]
    if first in {"CJK", "HIRAGANA", "KATAKANA", "HANGUL", "IDEOGRAPHIC"}:
        return "cjk"
    return first.lower() or None


def _scripts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ch in text:
        kind = script(ch)
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _key(text: str) -> str:
    """What two spellings of one caption share: its letters and digits, case folded."""
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def _long_enough(text: str) -> bool:
    """At least a word of three letters or digits (a Chinese word: three characters),
    or five in all with a word of two: no lone letters, digits or fragments."""
    words = ["".join(ch for ch in word if ch.isalnum()) for word in text.split()]
    longest = max((len(word) for word in words), default=0)
    return longest >= 3 or (sum(len(word) for word in words) >= 5 and longest >= 2)


@dataclass
class _Candidate:
    text: str
    key: str
    score: float
    script: str
    box: Box
    frames: set[int]
    times: set[float]

    @property
    def first_s(self) -> float:
        return min(self.times)

    @property
    def last_s(self) -> float:
        return max(self.times)


def _candidate(reading: Reading) -> _Candidate | None:
    """One reading as a caption candidate: its good lines joined; None when nothing is
    left or its letters mix scripts."""
    lines = [(clean_line(line.text), line.score) for line in reading.lines]
    lines = [(text, score) for text, score in lines if score >= LINE_SCORE and _key(text)]
    if not lines or not reading.times:
        return None
    text = " ".join(text for text, _ in lines)
    scripts = _scripts(text)
    if len(scripts) > 1:
        return None  # a Latin caption does not hold a stray Chinese character, and so on
    weights = [len(_key(text)) for text, _ in lines]
    score = sum(w * s for w, (_, s) in zip(weights, lines, strict=True)) / sum(weights)
    return _Candidate(
        text=text,
        key=_key(text),
        score=score,
        script=next(iter(scripts), "latin"),
        box=reading.box,
        frames=set(reading.frames),
        times=set(reading.times),
    )


def _same_caption(a: _Candidate, b: _Candidate) -> bool:
    """One spelling of the other, or (close in time and place) one completing the other:
    a caption revealed a little at a time, or read in part. Never two numbers apart
    ("Question 1 of 10", "Question 2 of 10")."""
    if a.script != b.script:
        return False
    digits_a, digits_b = _digits(a.key), _digits(b.key)
    if not (digits_a.startswith(digits_b) or digits_b.startswith(digits_a)):
        return False
    ratio = difflib.SequenceMatcher(None, a.key, b.key, autojunk=False)
    if ratio.ratio() >= _MIN_SAME:
        return True
    near = (
        a.first_s <= b.last_s + _CONTINUES_WITHIN_S and b.first_s <= a.last_s + _CONTINUES_WITHIN_S
    )
    placed = min(a.box.bottom, b.box.bottom) - max(a.box.y, b.box.y) > 0 and (
        min(a.box.right, b.box.right) - max(a.box.x, b.box.x) > 0
    )
    if not (near and placed):
        return False
    short = min(len(a.key), len(b.key))
    matched = sum(block.size for block in ratio.get_matching_blocks())
    return short >= 3 and matched >= _MIN_SAME * short


def _digits(key: str) -> str:
    return "".join(ch for ch in key if ch.isdigit())


def _merge_into(captions: list[_Candidate], candidate: _Candidate) -> None:
    for caption in captions:
        if _same_caption(caption, candidate):
            _merge(caption, candidate)
            return
    captions.append(candidate)


def _merge(into: _Candidate, other: _Candidate) -> None:
    if (len(other.key), other.score) > (len(into.key), into.score):
        into.text, into.key, into.score = other.text, other.key, other.score
    into.box = into.box.union(other.box)
    into.frames |= other.frames
    into.times |= other.times


def accept(readings: Sequence[Reading]) -> list[Caption]:
    """The captions a person would agree are on screen, from ``readings`` (one per
    block of text read), in order of first appearance."""
    candidates = [c for c in map(_candidate, readings) if c is not None]
    candidates.sort(key=lambda c: c.first_s)
    merged: list[_Candidate] = []
    for candidate in candidates:
        _merge_into(merged, candidate)
    # A merge widens a caption's times and place, which may make two captions one.
    while True:
        again: list[_Candidate] = []
        for candidate in merged:
            _merge_into(again, candidate)
        if len(again) == len(merged):
            break
        merged = again
    captions = [
        Caption(
            text=c.text,
            first_s=c.first_s,
            last_s=c.last_s,
            sightings=len(c.frames),
            score=c.score,
            frames=tuple(sorted(c.frames)),
        )
        for c in merged
        if _counts(c)
    ]
    return sorted(captions, key=lambda c: c.first_s)


def _counts(candidate: _Candidate) -> bool:
    if not _long_enough(candidate.text) or len(set(candidate.key)) < 2:
        return False
    seen_again = len(candidate.frames) > 1
    if candidate.script != "latin":
        return seen_again
    return seen_again or candidate.score >= HIGH_SCORE


def sample_frames(start_frame: int, end_frame: int, seconds: float) -> list[int]:
    """The frames of a scene (``seconds`` long) to look for text in: one every
    ``SAMPLE_SECONDS``, spread evenly, at least one."""
    length = end_frame - start_frame
    if length <= 0:
        return []
    count = max(1, min(length, math.floor(seconds / SAMPLE_SECONDS + 0.5)))
    return sorted({start_frame + math.floor((k + 0.5) * length / count) for k in range(count)})
