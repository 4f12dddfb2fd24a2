"""Per-scene measurements from one pass over a video: brightness, motion, dominant colours,
audio loudness, and a few full-size frames per scene for OCR."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt

from vvflow.stages.command import BadInput

Image = npt.NDArray[np.uint8]

OCR_FRAMES_PER_SCENE = 3
OCR_MAX_FRAMES_PER_SCENE = 6
OCR_SECONDS_PER_FRAME = 4.0  # long scenes get one more OCR frame per this many seconds
_SMALL = (64, 36)  # measuring size: enough for averages, cheap to convert
_COLOUR_SAMPLES_PER_SCENE = 12
_COLOUR_MIN_SHARE = 0.1
_AUDIO_RATE = 16_000
_SILENCE_DBFS = -90.0


@dataclass(frozen=True)
class SceneSpan:
    """The frames of one scene, as the scan stage cut them (end exclusive)."""

    index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float


@dataclass
class SceneMeasures:
    """What was measured in one scene."""

    brightness: float = 0.0
    motion: float = 0.0
    dominant_colors: list[tuple[str, float]] = field(default_factory=list)
    loudness_dbfs: float | None = None
    ocr_frames: list[int] = field(default_factory=list)
    text_lines: list[str] = field(default_factory=list)


TextReader = Callable[[Image], list[str]]
#: Told the share of the pictures measured so far (0..1) and what is being done.
ProgressSink = Callable[[float, str], object]


def ocr_frame_numbers(span: SceneSpan) -> list[int]:
    """Frames of ``span`` to read text from: evenly spread, more for long scenes."""
    length = span.end_frame - span.start_frame
    seconds = span.end_s - span.start_s
    wanted = OCR_FRAMES_PER_SCENE + max(0, math.floor(seconds / OCR_SECONDS_PER_FRAME) - 1)
    count = max(1, min(length, wanted, OCR_MAX_FRAMES_PER_SCENE))
    return sorted({span.start_frame + math.floor((k + 0.5) * length / count) for k in range(count)})


def measure(
    video: Path,
    spans: Sequence[SceneSpan],
    read_text: TextReader,
    progress: ProgressSink | None = None,
) -> list[SceneMeasures]:
    """Decode ``video`` once and measure every scene in ``spans``.

    ``read_text`` gets a few full-size BGR frames of each scene as they decode (so no
    frames pile up in memory) and returns the lines of text it reads in them.
    ``progress`` is told the share of the scenes' frames measured, at every sampled frame.
    """
    try:
        container = av.open(str(video), metadata_errors="ignore")
    except av.FFmpegError as error:
        raise BadInput(f"{video}: not a readable video ({error})") from None
    with container:
        if not container.streams.video:
            raise BadInput(f"{video}: no video stream")
        measures = _measure_pictures(container, spans, read_text, progress)
    if progress is not None:
        progress(1.0, "the sound")
    loudness = _loudness_per_scene(video, spans)
    if loudness is not None:
        for scene, value in zip(measures, loudness, strict=True):
            scene.loudness_dbfs = value
    return measures


def _measure_pictures(
    container: av.container.InputContainer,
    spans: Sequence[SceneSpan],
    read_text: TextReader,
    progress: ProgressSink | None,
) -> list[SceneMeasures]:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    measures = [SceneMeasures() for _ in spans]
    ocr_wanted = [set(ocr_frame_numbers(span)) for span in spans]
    colour_every = [
        max(1, (span.end_frame - span.start_frame) // _COLOUR_SAMPLES_PER_SCENE) for span in spans
    ]
    luma: list[list[float]] = [[] for _ in spans]
    motion: list[list[float]] = [[] for _ in spans]
    colours: list[Counter[str]] = [Counter() for _ in spans]
    frames = max(1, spans[-1].end_frame - spans[0].start_frame) if spans else 1
    scene = 0
    previous: npt.NDArray[np.float32] | None = None
    try:
        for number, frame in enumerate(container.decode(stream)):
            while scene < len(spans) and number >= spans[scene].end_frame:
                scene, previous = scene + 1, None
            if scene == len(spans):
                break
            span = spans[scene]
            small = np.asarray(
                frame.to_ndarray(format="rgb24", width=_SMALL[0], height=_SMALL[1]),
                dtype=np.uint8,
            )
            gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
            luma[scene].append(float(gray.mean()) / 255)
            if previous is not None:
                motion[scene].append(float(np.abs(gray - previous).mean()) / 255)
            previous = gray
            sampled = (number - span.start_frame) % colour_every[scene] == 0
            if sampled:
                colours[scene].update(colour_names(small))
            if number in ocr_wanted[scene]:
                measures[scene].ocr_frames.append(number)
                full = np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
                measures[scene].text_lines.extend(read_text(full))
                sampled = True
            if sampled and progress is not None:
                done = (number + 1 - spans[0].start_frame) / frames
                progress(done, f"scene {span.index} of {len(spans)}")
    except av.FFmpegError:
        # The scan stage already judged this file whole; a damaged tail only costs the
        # measurements of the frames it holds.
        pass
    for scene, result in enumerate(measures):
        result.brightness = round(float(np.mean(luma[scene])), 3) if luma[scene] else 0.0
        result.motion = round(float(np.mean(motion[scene])), 4) if motion[scene] else 0.0
        total = sum(colours[scene].values())
        result.dominant_colors = [
            (name, round(count / total, 2))
            for name, count in colours[scene].most_common()
            if count / total >= _COLOUR_MIN_SHARE
        ][:3]
    return measures


def colour_names(rgb: Image) -> list[str]:
    """The colour name of every pixel of an RGB image, from its hue, saturation and value."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL).reshape(-1, 3).astype(np.int32)
    hue = hsv[:, 0] * 360 // 256
    sat, val = hsv[:, 1], hsv[:, 2]
    names = np.full(hue.shape, "gray", dtype=object)
    chromatic = (sat >= 64) & (val >= 50)
    for name, low, high in _HUES:
        names[chromatic & (hue >= low) & (hue < high)] = name
    names[chromatic & (hue >= 15) & (hue < 45) & (val < 140)] = "brown"
    names[~chromatic & (val < 50)] = "black"
    names[~chromatic & (val >= 50) & (sat < 64) & (val > 200)] = "white"
    return [str(name) for name in names]


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


def _loudness_per_scene(video: Path, spans: Sequence[SceneSpan]) -> list[float | None] | None:
    """RMS level in dBFS of the first audio stream over each scene; None without audio."""
    with av.open(str(video), metadata_errors="ignore") as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=_AUDIO_RATE)
        chunks: list[npt.NDArray[np.float32]] = []
        try:
            for frame in container.decode(stream):
                chunks.extend(_mono(f) for f in resampler.resample(frame))
            chunks.extend(_mono(f) for f in resampler.resample(None))
        except av.FFmpegError:
            pass  # as for pictures: measure what decodes
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    levels: list[float | None] = []
    for span in spans:
        piece = samples[round(span.start_s * _AUDIO_RATE) : round(span.end_s * _AUDIO_RATE)]
        if piece.size == 0:
            levels.append(None)
            continue
        rms = float(np.sqrt(np.mean(np.square(piece, dtype=np.float64))))
        levels.append(
            round(max(_SILENCE_DBFS, 20 * math.log10(rms)) if rms > 0 else _SILENCE_DBFS, 1)
        )
    return levels


def _mono(frame: av.AudioFrame) -> npt.NDArray[np.float32]:
    return np.asarray(frame.to_ndarray(), dtype=np.float32).reshape(-1)
