"""Real, tiny test videos generated with PyAV (libx264 + AAC), for every test suite.

This is a test-support module, not a test file: import ``make_video``, ``make_truncated``
and ``cut_frames`` from it. ``Sentence`` and ``Chord`` are sounds placed on a video's
audio track (``make_video(..., sounds=[...])``): real speech spoken by Debian's
``espeak-ng`` and a music-like chord.
"""

from __future__ import annotations

import functools
import io
import math
import shutil
import subprocess
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt

Frame = npt.NDArray[np.uint8]

# Colours (RGB) far apart in hue, saturation and luma, so that every switch between two
# neighbours is a hard cut for any detector, and one colour never drifts into the next.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (200, 30, 30),  # red
    (30, 60, 200),  # blue
    (40, 180, 60),  # green
    (235, 215, 40),  # yellow
    (150, 40, 170),  # purple
    (20, 20, 20),  # black
    (240, 130, 20),  # orange
    (235, 235, 235),  # white
)
PALETTE_NAMES: tuple[str, ...] = (
    "red",
    "blue",
    "green",
    "yellow",
    "purple",
    "black",
    "orange",
    "white",
)

AUDIO_RATE = 48_000
AUDIO_TONE_HZ = 440.0
# Scene i of the audio track has amplitude AUDIO_AMPLITUDE * AUDIO_STEP**i, so every
# scene is about 6 dB quieter than the one before and loudness per scene is testable.
AUDIO_AMPLITUDE = 0.5
AUDIO_STEP = 0.5

_CODEC_OPTIONS = {"preset": "ultrafast", "tune": "zerolatency", "crf": "20"}

#: Sample rate of the tracks made of ``sounds``: half of AUDIO_RATE halves the cost of
#: FFmpeg's AAC encoder (it dominates making a speech video), and 24 kHz still needs
#: resampling to Whisper's 16 kHz, as real tracks do.
SOUND_RATE = 24_000
#: A chord (C major: C4, E4, G4, each with its octave) is music-like: steady, tonal
#: partials under an attack-and-release envelope, about -16 dBFS.
CHORD_HZ = (261.63, 329.63, 392.0)
CHORD_AMPLITUDE = 0.12
#: espeak-ng pads its speech with silence; a sentence is where its samples pass this.
_SPOKEN_LEVEL = 0.01


@dataclass(frozen=True)
class Sentence:
    """``text`` spoken by espeak-ng from ``start_s`` (where its first sound lands)."""

    text: str
    start_s: float
    voice: str = "en-us"
    speed: int = 160  # words per minute (espeak-ng -s)

    @property
    def end_s(self) -> float:
        """Where the last sound of the sentence ends."""
        return self.start_s + len(spoken(self.text, self.voice, self.speed)) / SOUND_RATE


@dataclass(frozen=True)
class Chord:
    """A music-like passage: ``CHORD_HZ`` held from ``start_s`` for ``seconds``."""

    start_s: float
    seconds: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.seconds


Sound = Sentence | Chord


def espeak_available() -> bool:
    """Whether Debian's ``espeak-ng`` can speak the test sentences here."""
    return shutil.which("espeak-ng") is not None


@functools.cache
def spoken(text: str, voice: str, speed: int) -> npt.NDArray[np.float32]:
    """``text`` spoken by espeak-ng at ``SOUND_RATE``, its leading and trailing silence cut."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
        capture_output=True,
        check=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        pcm = reader.readframes(reader.getnframes())
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768
    loud = np.flatnonzero(np.abs(samples) > _SPOKEN_LEVEL)
    samples = samples[loud[0] : loud[-1] + 1]
    # Linear interpolation up to SOUND_RATE: espeak-ng's 22.05 kHz holds nothing above
    # 11 kHz, so upsampling adds no aliasing worth a filter.
    count = round(len(samples) * SOUND_RATE / rate)
    times = np.arange(count) * rate / SOUND_RATE
    result = np.interp(times, np.arange(len(samples)), samples).astype(np.float32)
    result.flags.writeable = False  # cached: shared by every caller
    return result


def sound_track(sounds: Sequence[Sound], seconds: float) -> npt.NDArray[np.float32]:
    """``seconds`` of silence at ``SOUND_RATE`` with every sound of ``sounds`` mixed in."""
    track = np.zeros(round(seconds * SOUND_RATE), dtype=np.float32)
    for sound in sounds:
        if isinstance(sound, Sentence):
            piece = spoken(sound.text, sound.voice, sound.speed)
        else:
            piece = _chord(sound.seconds)
        start = round(sound.start_s * SOUND_RATE)
        if start + len(piece) > len(track):
            raise ValueError(f"{sound} ends after the video's {seconds} s")
        track[start : start + len(piece)] += piece
    return track


def _chord(seconds: float) -> npt.NDArray[np.float32]:
    t = np.arange(round(seconds * SOUND_RATE)) / SOUND_RATE
    envelope = np.minimum(1.0, np.minimum(t / 0.05, (seconds - t) / 0.3))
    partials = sum(
        np.sin(2 * math.pi * hz * t) + 0.3 * np.sin(4 * math.pi * hz * t) for hz in CHORD_HZ
    )
    return (CHORD_AMPLITUDE * envelope * partials).astype(np.float32)


def cut_frames(*, seconds: float = 1.0, fps: int = 10, cuts: int = 0) -> list[int]:
    """0-based numbers of the first frame after each hard cut that ``make_video`` makes."""
    total = frame_total(seconds=seconds, fps=fps)
    return [round(k * total / (cuts + 1)) for k in range(1, cuts + 1)]


def frame_total(*, seconds: float = 1.0, fps: int = 10) -> int:
    """Number of frames ``make_video`` writes for ``seconds`` at ``fps``."""
    return max(1, round(seconds * fps))


def segment_colour_names(cuts: int) -> list[str]:
    """The background colour name of each segment of a video with ``cuts`` cuts."""
    return [PALETTE_NAMES[i % len(PALETTE)] for i in range(cuts + 1)]


def make_video(
    path: Path,
    *,
    seconds: float = 1.0,
    width: int = 160,
    height: int = 120,
    fps: int = 10,
    cuts: int = 0,
    text: str | None = None,
    audio: bool = False,
    sounds: Sequence[Sound] | None = None,
    captions: Sequence[Caption] = (),
) -> Path:
    """Write an H.264 video to ``path`` (container from the suffix) and return ``path``.

    Each of the ``cuts + 1`` segments has its own background colour from ``PALETTE``,
    shaded with blotches of its own, and a small square sliding across its top band,
    so there is motion but no cut inside a segment. ``text`` is burnt into every
    frame, large, white with a black outline, in the middle. ``audio`` adds a mono AAC
    440 Hz tone that gets 6 dB quieter in each segment. ``sounds`` (sentences and
    chords, see ``sound_track``) make the audio track instead, silent elsewhere; an
    empty list makes a silent track. ``captions`` are burnt into the frames of their
    own times (see ``Caption``).
    """
    if width % 2 or height % 2:
        raise ValueError("width and height must be even for yuv420p")
    total = frame_total(seconds=seconds, fps=fps)
    boundaries = [0, *cut_frames(seconds=seconds, fps=fps, cuts=cuts), total]
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "+faststart"} if path.suffix.lower() in {".mp4", ".mov"} else {}
    with av.open(str(path), mode="w", options=options) as container:
        video = container.add_stream("libx264", rate=fps)
        video.width = width
        video.height = height
        video.pix_fmt = "yuv420p"
        video.options = dict(_CODEC_OPTIONS)
        with_audio = audio or sounds is not None
        rate = AUDIO_RATE if sounds is None else SOUND_RATE
        sound = container.add_stream("aac", rate=rate, layout="mono") if with_audio else None
        for segment in range(cuts + 1):
            for number in range(boundaries[segment], boundaries[segment + 1]):
                image = _frame(number, total, segment, size=(width, height), text=text)
                for caption in captions:
                    if caption.start_s <= number / fps < caption.end_s:
                        _burn_caption(image, caption)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = number
                frame.time_base = Fraction(1, fps)
                container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None and sounds is not None:
            _write_audio(container, sound, sound_track(sounds, total / fps), SOUND_RATE)
        elif sound is not None:
            _write_tone(container, sound, boundaries, fps)
    return path


def make_truncated(src: Path, dst: Path) -> Path:
    """Copy the first half of the bytes of ``src`` to ``dst``, as an interrupted copy would."""
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _frame(
    number: int, total: int, segment: int, *, size: tuple[int, int], text: str | None
) -> Frame:
    width, height = size
    colour = PALETTE[segment % len(PALETTE)]
    # Blotchy shading, seeded by the segment, changes the structure at a cut too, not
    # only the colour, so structure-based detectors (hash) see the cut as well.
    blotches = np.random.default_rng(segment).uniform(0.4, 1.0, (6, 8)).astype(np.float32)
    shade = cv2.resize(blotches, (width, height), interpolation=cv2.INTER_LINEAR)
    image = np.clip(shade[..., None] * np.array(colour, np.float32), 0, 255).astype(np.uint8)
    side = max(4, height // 8)
    x = round((width - side) * number / max(1, total - 1))
    # A darker shade of the background: visible motion that no detector takes for a cut.
    image[2 : 2 + side, x : x + side] = [c // 2 for c in colour]
    if text:
        _burn_text(image, text)
    return image


def _burn_text(image: Frame, text: str) -> None:
    height, width = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    thickness = max(2, height // 60)
    # Scale the text to span about 80% of the width, capped so it fits the height.
    (text_w, text_h), _ = cv2.getTextSize(text, font, 1.0, thickness)
    scale = min(0.8 * width / text_w, 0.35 * height / text_h)
    thickness = max(2, round(thickness * scale))
    (text_w, text_h), _ = cv2.getTextSize(text, font, scale, thickness)
    origin = ((width - text_w) // 2, (height + text_h) // 2 + height // 10)
    cv2.putText(image, text, origin, font, scale, (0, 0, 0), thickness + 4, cv2.LINE_AA)
    cv2.putText(image, text, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


@dataclass(frozen=True)
class Caption:
    """A line of text ``make_video`` burns into the frames from ``start_s`` to ``end_s``
    (end excluded): white with a black outline, centred, its letters ``size`` times the
    frame's height tall, its middle at ``at`` times the height (0.85: a lower third)."""

    text: str
    start_s: float
    end_s: float
    at: float = 0.85
    size: float = 0.06


def _burn_caption(image: Frame, caption: Caption) -> None:
    height, width = image.shape[:2]
    font = cv2.FONT_HERSHEY_DUPLEX
    (_, unit_h), _ = cv2.getTextSize("X", font, 1.0, 1)
    scale = caption.size * height / unit_h
    thickness = max(1, round(scale * 1.5))
    (text_w, text_h), baseline = cv2.getTextSize(caption.text, font, scale, thickness)
    origin = ((width - text_w) // 2, round(caption.at * height + text_h / 2))
    # Drawn in a band of rows around the text only: a whole frame costs much more.
    top = max(0, origin[1] - 2 * text_h)
    bottom = min(height, origin[1] + baseline + text_h)
    band = image[top:bottom]
    letters = np.zeros(band.shape[:2], np.uint8)
    where = (origin[0], origin[1] - top)
    cv2.putText(letters, caption.text, where, font, scale, 255, thickness, cv2.LINE_AA)
    # The outline grows the letters themselves: a thicker stroke would be another
    # weight of the font, with letters spaced otherwise.
    side = 2 * max(1, round(height / 240)) + 1
    outline = cv2.dilate(letters, np.ones((side, side), np.uint8))
    band[:] = (band * (1 - outline[..., None] / 255.0)).astype(np.uint8)
    band[:] = np.maximum(band, letters[..., None])


def _write_tone(
    container: av.container.OutputContainer,
    sound: av.AudioStream,
    boundaries: list[int],
    fps: int,
) -> None:
    samples_total = round(boundaries[-1] * AUDIO_RATE / fps)
    t = np.arange(samples_total, dtype=np.float64) / AUDIO_RATE
    amplitude = np.empty(samples_total, dtype=np.float64)
    for segment in range(len(boundaries) - 1):
        start = round(boundaries[segment] * AUDIO_RATE / fps)
        end = round(boundaries[segment + 1] * AUDIO_RATE / fps)
        amplitude[start:end] = AUDIO_AMPLITUDE * AUDIO_STEP**segment
    tone = (amplitude * np.sin(2 * math.pi * AUDIO_TONE_HZ * t)).astype(np.float32)
    _write_audio(container, sound, tone, AUDIO_RATE)


def _write_audio(
    container: av.container.OutputContainer,
    sound: av.AudioStream,
    samples: npt.NDArray[np.float32],
    rate: int,
) -> None:
    samples_total = len(samples)
    chunk = 1024
    for start in range(0, samples_total, chunk):
        piece = samples[start : start + chunk].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        container.mux(sound.encode(frame))
    container.mux(sound.encode(None))
