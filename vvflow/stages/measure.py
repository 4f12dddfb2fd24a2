"""Per-scene measurements from one pass over a video's pictures: brightness, motion,
dominant colours and the on-screen text (``ocr.py``). The sound is speech.py's.

``measure(video, spans, progress) -> Measured``: ``Measured.scenes`` has one
``SceneMeasures`` per span (brightness, motion, dominant colours, the captions
seen during the scene and what reading them cost), ``Measured.captions`` the whole
video's accepted captions in order of first appearance (``ocr.Caption``: text, first_s,
last_s, sightings, score) and ``Measured.ocr`` the video's ``ocr.OcrCounters``.

The pictures are decoded once. Every frame is scaled (in FFmpeg, by reformatters made
once) to a 64x36 gray picture for brightness and motion; a dozen frames per scene to a
64x36 RGB one for the colours; every ``ocr.SAMPLE_SECONDS`` (and at least once per
scene) a frame to a gray one ``ocr.GATE_WIDTH`` wide for the text gate, and only a frame
holding a block of text not read before to full size, for RapidOCR.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
from av.video.reformatter import Interpolation, VideoReformatter

from vvflow.stages.command import BadInput
from vvflow.stages.ocr import Caption, OcrCounters, TextReader, sample_frames

Image = npt.NDArray[np.uint8]

_SMALL = (64, 36)  # measuring size: enough for averages, cheap to convert
_AREA = Interpolation.AREA  # a mean of the pixels it scales down: cheaper than bilinear
_COLOUR_SAMPLES_PER_SCENE = 12
_COLOUR_MIN_SHARE = 0.1


@dataclass(frozen=True)
class SceneSpan:
    """The frames of one scene, as the scan stage cut them (end exclusive)."""

    index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float

    def time_of(self, frame: int) -> float:
        """The time of frame ``frame`` of the scene, in seconds."""
        length = max(1, self.end_frame - self.start_frame)
        return self.start_s + (frame - self.start_frame) * (self.end_s - self.start_s) / length


@dataclass
class SceneMeasures:
    """What was measured in one scene."""

    brightness: float = 0.0
    motion: float = 0.0
    dominant_colors: list[tuple[str, float]] = field(default_factory=list)
    captions: list[Caption] = field(default_factory=list)  # seen during the scene
    ocr: OcrCounters = field(default_factory=OcrCounters)


@dataclass
class Measured:
    """Every scene's measures, and the whole video's captions and OCR counters."""

    scenes: list[SceneMeasures]
    captions: list[Caption]
    ocr: OcrCounters


#: Told the share of the pictures measured so far (0..1) and what is being done.
ProgressSink = Callable[[float, str], object]


def measure(
    video: Path,
    spans: Sequence[SceneSpan],
    progress: ProgressSink | None = None,
) -> Measured:
    """Decode ``video`` once and measure every scene in ``spans``.

    ``progress`` is told the share of the scenes' frames measured, at every sampled
    frame, then that the text is being read (RapidOCR may still be busy when the
    decoding ends).
    """
    try:
        container = av.open(str(video), metadata_errors="ignore")
    except av.FFmpegError as error:
        raise BadInput(f"{video}: not a readable video ({error})") from None
    with container:
        if not container.streams.video:
            raise BadInput(f"{video}: no video stream")
        measured = _measure_pictures(container, spans, progress)
    return measured


def _measure_pictures(
    container: av.container.InputContainer,
    spans: Sequence[SceneSpan],
    progress: ProgressSink | None,
) -> Measured:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    measures = [SceneMeasures() for _ in spans]
    text_wanted = [
        set(sample_frames(span.start_frame, span.end_frame, span.end_s - span.start_s))
        for span in spans
    ]
    colour_every = [
        max(1, (span.end_frame - span.start_frame) // _COLOUR_SAMPLES_PER_SCENE) for span in spans
    ]
    luma: list[list[float]] = [[] for _ in spans]
    motion: list[list[float]] = [[] for _ in spans]
    colours: list[Counter[str]] = [Counter() for _ in spans]
    frames = max(1, spans[-1].end_frame - spans[0].start_frame) if spans else 1
    # One reformatter per size and format: each keeps its FFmpeg scaler between frames.
    to_gray, to_rgb, to_gate, to_full = (VideoReformatter() for _ in range(4))
    width, height = stream.codec_context.width, stream.codec_context.height
    scene = 0
    previous: Image | None = None
    with TextReader(width, height) as reader:
        gate_width, gate_height = reader.gate_size
        try:
            for number, frame in enumerate(container.decode(stream)):
                while scene < len(spans) and number >= spans[scene].end_frame:
                    scene, previous = scene + 1, None
                if scene == len(spans):
                    break
                span = spans[scene]
                gray = _array(
                    to_gray.reformat(frame, _SMALL[0], _SMALL[1], "gray", interpolation=_AREA)
                )
                luma[scene].append(cv2.mean(gray)[0] / 255)
                if previous is not None:
                    motion[scene].append(cv2.norm(gray, previous, cv2.NORM_L1) / gray.size / 255)
                previous = gray
                sampled = (number - span.start_frame) % colour_every[scene] == 0
                if sampled:
                    rgb = _array(to_rgb.reformat(frame, _SMALL[0], _SMALL[1], "rgb24"))
                    colours[scene].update(colour_counts(rgb))
                if number in text_wanted[scene]:
                    small = _array(to_gate.reformat(frame, gate_width, gate_height, "gray"))

                    def full(frame: av.VideoFrame = frame) -> Image:
                        return _array(to_full.reformat(frame, format="bgr24"))

                    cost = reader.sample(number, span.time_of(number), small, full)
                    measures[scene].ocr.add(cost)
                    sampled = True
                if sampled and progress is not None:
                    done = (number + 1 - spans[0].start_frame) / frames
                    progress(done, f"scene {span.index} of {len(spans)}")
        except av.FFmpegError:
            # The scan stage already judged this file whole; a damaged tail only costs
            # the measurements of the frames it holds.
            pass
        if progress is not None:
            progress(1.0, "the text read")
        captions = reader.captions()
        counters = reader.counters
    for number, (span, result) in enumerate(zip(spans, measures, strict=True)):
        result.brightness = round(float(np.mean(luma[number])), 3) if luma[number] else 0.0
        result.motion = round(float(np.mean(motion[number])), 4) if motion[number] else 0.0
        total = sum(colours[number].values())
        result.dominant_colors = [
            (name, round(count / total, 2))
            for name, count in colours[number].most_common()
            if count / total >= _COLOUR_MIN_SHARE
        ][:3]
        result.captions = [
            caption
            for caption in captions
            if any(span.start_frame <= seen < span.end_frame for seen in caption.frames)
        ]
    return Measured(measures, captions, counters)


def _array(frame: av.VideoFrame) -> Image:
    """The pixels of a gray, RGB or BGR frame, without the padding at the end of rows."""
    return np.asarray(frame.to_ndarray(), dtype=np.uint8)


def colour_counts(rgb: Image) -> Counter[str]:
    """How many pixels of an RGB image have each colour name, from their hue, saturation
    and value."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL).reshape(-1, 3).astype(np.int32)
    hue = hsv[:, 0] * 360 // 256
    sat, val = hsv[:, 1], hsv[:, 2]
    names = np.zeros(hue.shape, dtype=np.intp)  # indices into _NAMES: gray
    chromatic = (sat >= 64) & (val >= 50)
    for name, low, high in _HUES:
        names[chromatic & (hue >= low) & (hue < high)] = _NAMES.index(name)
    names[chromatic & (hue >= 15) & (hue < 45) & (val < 140)] = _NAMES.index("brown")
    names[~chromatic & (val < 50)] = _NAMES.index("black")
    names[~chromatic & (val >= 50) & (sat < 64) & (val > 200)] = _NAMES.index("white")
    counts = np.bincount(names, minlength=len(_NAMES))
    return Counter({name: int(count) for name, count in zip(_NAMES, counts, strict=True) if count})


_HUES: tuple[tuple[str, int, int], ...] = (
    ("red", 0, 15),
    ("orange", 15, 45),
    ("yellow", 45, 70),
    ("green", 70, 165),
    ("cyan", 165, 195),
    ("blue", 195, 255),
    ("purple", 255, 290),
    ("pink", 290, 340),
    ("red", 340, 361),
)
_NAMES = ("gray", *dict.fromkeys(name for name, _, _ in _HUES), "brown", "black", "white")
