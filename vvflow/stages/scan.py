"""``vvflow stage scan VIDEO OUTPUT [--keyframes-dir DIR]``: metadata, shots, keyframes
and a contact sheet.

Writes the analytic JSON (README.md, "Built-in stage outputs") to OUTPUT, and one JPEG
per scene (``scene-001.jpg``, ...) plus ``contact-sheet.jpg`` to a keyframes folder. The
JSON names them relative to that folder, so it stays right when the folder moves:

- ``--keyframes-dir DIR``, else ``$VVFLOW_OUTPUT_DIR``: the files are written straight
  into DIR (created if missing; other entries are left alone). The built-in pipeline
  passes ``{output_dir}``, an empty folder in the video's workspace that vvflow
  publishes whole to ``<root>/keyframes/<stem>`` once the stage succeeded. On failure
  the files this run wrote are removed.
- Neither (by hand, or a pipeline of your own that gives no folder): as before folder
  outputs existed, ``$VVFLOW_ROOT/keyframes/<stem>``, else ``keyframes/<stem>`` next to
  OUTPUT, filled in a hidden sibling and swapped in whole, replacing an older set.

Progress (``vvflow:progress`` lines on stderr, see ``command.py``): 0 on start, then the
share of the duration decoded, at most every 0.5 s and 5 % (whichever is rarer), held
below 1 until the output is written.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt
import scenedetect  # type: ignore[import-untyped]
from av.video.reformatter import Interpolation, VideoReformatter
from scenedetect import (
    AdaptiveDetector,
    ContentDetector,
    FrameTimecode,
    HashDetector,
    SceneDetector,
    ThresholdDetector,
)
from scenedetect.common import Timecode, framerate_to_fraction  # type: ignore[import-untyped]

from vvflow.stages.command import (
    BadInput,
    Progress,
    add_io_arguments,
    env_default,
    run_stage,
    write_bytes_atomic,
    write_json,
)
from vvflow.stages.keyframes import (
    CONTACT_SHEET_NAME,
    KEYFRAME_MAX_SIDE,
    Candidate,
    Image,
    KeyframeSampler,
    Tile,
    contact_sheet,
    decode_jpeg,
    encode_jpeg,
    filled_folder,
    keyframe_name,
    nearest_to_middle,
    spread,
    staged_folder,
    thumbnail_jpeg,
)
from vvflow.stages.probe import probe

#: 2: keyframes and the contact sheet are named relative to the keyframes folder (they
#: were relative to the root), and ``keyframes_dir`` is gone.
SCHEMA_VERSION = 2

DEFAULT_THRESHOLDS: dict[str, float] = {
    "content": 27.0,
    "adaptive": 3.0,
    "threshold": 12.0,
    "hash": 0.395,
}
DEFAULT_DETECTOR = "content"
DEFAULT_MIN_SCENE_SECONDS = 0.5
# Frames are downscaled by a whole factor to about this many pixels on their longer side
# for detection. PySceneDetect's own default is 256; the detectors compare mean colour,
# brightness or a 16x16 hash from frame to frame, which half that side measures as well
# (ContentDetector's scores differ by under 0.15 on the benchmark video), for a quarter
# of a CPU second less per minute of 720p video (an eighth of the scan).
DETECTION_SIDE = 128
# Detectors given the frames exactly as before, not within 2 levels (see _Shrink): the
# hash detector thresholds the distance between two 64-bit hashes, which a level can
# change by a bit; with the quicker frames a cut on its threshold came or went in 3 of
# 14 test videos (the other detectors: none).
_EXACT_FRAMES = frozenset({"hash"})
#: What decodes: PyAV (FFmpeg's decoders, frame-threaded), frames shrunk for detection
#: straight from their YUV planes. ``detection.backend`` in the JSON.
BACKEND = "pyav"
# A file is truncated when fewer than this share of the frames its header promises decode
# (and more than a couple are missing: headers are often off by a frame or two).
TRUNCATED_BELOW = 0.9
# Progress is the share of the duration decoded, held below 1 until the stage is done:
# naming the keyframes and drawing the contact sheet come after the last frame.
_DECODED_AT_MOST = 0.99
_TOLERATED_MISSING_FRAMES = 2


@dataclass(frozen=True)
class ScanOptions:
    """How to cut a video into scenes."""

    detector: str = DEFAULT_DETECTOR
    threshold: float | None = None
    min_scene_seconds: float = DEFAULT_MIN_SCENE_SECONDS

    @property
    def effective_threshold(self) -> float:
        """The threshold given, else the detector's default."""
        return self.threshold if self.threshold is not None else DEFAULT_THRESHOLDS[self.detector]


def main(argv: list[str]) -> int:
    """Run the scan stage with command-line arguments ``argv``; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.detector not in DEFAULT_THRESHOLDS:  # argparse leaves defaults (from env) unchecked
        parser.error(f"--detector/VVFLOW_SCAN_DETECTOR: unknown detector {args.detector!r}")
    options = ScanOptions(args.detector, args.threshold, args.min_scene_seconds)

    def work() -> None:
        document = scan(
            args.video, output=args.output, options=options, keyframes_dir=args.keyframes_dir
        )
        write_json(args.output, document)

    return run_stage("scan", work)


def scan(
    video: Path,
    *,
    output: Path,
    options: ScanOptions | None = None,
    keyframes_dir: Path | None = None,
) -> dict[str, Any]:
    """Scan ``video`` and write its keyframes; return the analytic document.

    The keyframes go straight into ``keyframes_dir`` when it is given; else into
    ``$VVFLOW_ROOT/keyframes/<stem>``, or ``keyframes/<stem>`` next to ``output`` (where
    the document will be written), replaced whole.
    """
    options = options or ScanOptions()
    progress = Progress()
    progress.update(0.0, "probing")
    _quiet_decoders()
    stem = env_default("VVFLOW_STEM") or video.stem
    if keyframes_dir is None:
        root_env = env_default("VVFLOW_ROOT")
        root = Path(root_env) if root_env else output.parent
        folder = staged_folder(root / "keyframes" / stem)
    else:
        folder = filled_folder(keyframes_dir)

    info = probe(video)
    duration = _duration(info)

    def decoded_until(seconds: float) -> None:
        if duration:
            progress.update(min(_DECODED_AT_MOST, seconds / duration), "detecting scenes")

    with folder as staging, _Keyframes(staging, video) as keyframes:
        found = _detect(video, options, keyframes, decoded_until)
        expected = int(info["video"]["frame_count_header"])
        if found.decoded == 0:
            raise BadInput(f"{video}: no video frame decodes")
        if (
            expected
            and found.decoded < TRUNCATED_BELOW * expected
            and (expected - found.decoded > _TOLERATED_MISSING_FRAMES)
        ):
            raise BadInput(
                f"{video}: truncated or corrupt: {found.decoded} of the {expected} frames "
                "its header promises decode"
            )
        info["video"]["frame_count"] = found.decoded
        tiles = keyframes.finish(found.scenes, found.rate)
        if tiles:
            sheet = encode_jpeg(contact_sheet(tiles), max_side=65_000)
            write_bytes_atomic(staging / CONTACT_SHEET_NAME, sheet)

    return {
        "schema_version": SCHEMA_VERSION,
        "source": {"path": str(video.resolve()), "name": video.name, "stem": stem},
        **info,
        "detection": {
            "detector": options.detector,
            "threshold": options.effective_threshold,
            "min_scene_seconds": options.min_scene_seconds,
            "backend": BACKEND,
        },
        "scene_count": len(found.scenes),
        "scenes": found.scenes,
        "contact_sheet": CONTACT_SHEET_NAME if tiles else None,
        "software": _software(),
    }


def _duration(info: dict[str, Any]) -> float | None:
    """The video's length in seconds: the container's, else frames over frame rate."""
    duration = info.get("duration_s")
    if isinstance(duration, int | float) and duration > 0:
        return float(duration)
    stream = info.get("video") or {}
    frames, fps = stream.get("frame_count_header"), stream.get("fps")
    if isinstance(frames, int | float) and isinstance(fps, int | float) and frames > 0 < fps:
        return float(frames) / float(fps)
    return None


@dataclass(frozen=True)
class _Detected:
    """What one pass over the video found."""

    scenes: list[dict[str, Any]]
    decoded: int
    rate: Fraction


def _detect(
    video: Path,
    options: ScanOptions,
    keyframes: _Keyframes,
    decoded_until: Callable[[float], None],
) -> _Detected:
    """Decode every frame once: the detector sees it at detection size, the keyframe
    sampler keeps the decoder's own frame when it is due; cuts close its scenes."""
    with _open(video) as container:
        stream = container.streams.video[0]
        # Frame threads: the decoder works on the next frames on both cores while this
        # thread shrinks and scores the last one.
        stream.thread_type = "AUTO"
        rate = _frame_rate(video, stream)
        detector = _detector(options, rate)
        clock = _Clock(stream, rate)
        shrink: _Shrink | None = None
        cuts: list[FrameTimecode] = []
        first = None
        decoded = 0
        for frame in _frames(container, stream):
            position = clock.position(frame, decoded)
            decoded += 1
            if shrink is None:
                shrink = _Shrink(frame, exact=options.detector in _EXACT_FRAMES)
                keyframes.start(shrink.rotation)
                first = position
            keyframes.sampler.offer(position.frame_num, partial(keyframes.holdable, frame))
            small = shrink(frame)
            if small is not None:  # None: a frame of another size (corrupt)
                cuts += keyframes.closing(detector.process_frame(position, small))
            decoded_until(position.seconds)
        if first is None:
            return _Detected([], 0, rate)
        # Once the last frame is read OpenCV's time is 0, so SceneManager ended the
        # video (and its last scene) by the number of frames: so does this, also where
        # frame times are uneven.
        last = clock.by_index(decoded - 1)
        cuts += keyframes.closing(detector.post_process(last))
    return _Detected(_scene_list(cuts, first, last + 1), decoded, rate)


def _scene_list(
    cuts: list[FrameTimecode], start: FrameTimecode, end: FrameTimecode
) -> list[dict[str, Any]]:
    # As SceneManager.get_scene_list(start_in_scene=True) makes them.
    scenes: list[dict[str, Any]] = []
    bounds = [start, *sorted(set(cuts)), end]
    for number, (first, after) in enumerate(itertools.pairwise(bounds), 1):
        scenes.append(
            {
                "index": number,
                "start_s": round(first.seconds, 3),
                "end_s": round(after.seconds, 3),
                "duration_s": round(after.seconds - first.seconds, 3),
                "start_frame": first.frame_num,
                "end_frame": after.frame_num,
                "start_timecode": first.get_timecode(),
                "end_timecode": after.get_timecode(),
                "keyframe": None,
                "keyframe_frame": None,
                "keyframe_s": None,
            }
        )
    return scenes


def _open(video: Path) -> av.container.InputContainer:
    try:
        return av.open(str(video), metadata_errors="ignore")
    except av.FFmpegError as error:  # probe opened it a moment ago: changed since
        raise BadInput(f"{video}: cannot decode it ({error})") from None


def _frames(
    container: av.container.InputContainer, stream: av.VideoStream
) -> Iterator[av.VideoFrame]:
    """Every frame that decodes, in order. A packet that does not decode is skipped (as
    OpenCV did); a container that cannot be read further ends the frames, and the
    frame count tells a truncated file."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except (StopIteration, av.FFmpegError):
            return
        try:
            frames = packet.decode()
        except av.FFmpegError:
            continue
        yield from frames


def _frame_rate(video: Path, stream: av.VideoStream) -> Fraction:
    # What OpenCV reported (its average rate, else the guessed one), as PySceneDetect's
    # OpenCV backend turned it into a fraction: timecodes and frame numbers stay as they were.
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    if not fps > 1e-5:
        raise BadInput(f"{video}: no frame rate")
    return framerate_to_fraction(fps)  # type: ignore[no-any-return]


class _Clock:
    """Each frame's position as PySceneDetect's OpenCV backend gave it: OpenCV's
    presentation time from the stream's start (in milliseconds, as a double), in whole
    microseconds, whose frame number is that time in frames; or, where that time is not
    after the start, the frame's index."""

    _MICROSECOND = Fraction(1, 1_000_000)

    def __init__(self, stream: av.VideoStream, rate: Fraction) -> None:
        self.rate = rate
        self._start = stream.start_time or 0
        base = stream.time_base
        self._seconds_per_tick = base.numerator / base.denominator if base else 0.0
        self._by_index = Fraction(1, rate.numerator)

    def position(self, frame: av.VideoFrame, index: int) -> FrameTimecode:
        """The position of ``frame``, the ``index``-th decoded (from 0)."""
        pts = frame.pts
        milliseconds = (pts - self._start) * self._seconds_per_tick * 1000 if pts is not None else 0
        micros = round(milliseconds * 1000)
        if micros > 0:
            return FrameTimecode(Timecode(micros, self._MICROSECOND), self.rate)
        return self.by_index(index)

    def by_index(self, index: int) -> FrameTimecode:
        """The position of the ``index``-th frame (from 0) by its index alone: where
        OpenCV's time was 0, as it is after the last frame."""
        return FrameTimecode(Timecode(index * self.rate.denominator, self._by_index), self.rate)


def _detector(options: ScanOptions, rate: Fraction) -> SceneDetector:
    min_frames = max(1, round(options.min_scene_seconds * float(rate)))
    threshold = options.effective_threshold
    if options.detector == "adaptive":
        return AdaptiveDetector(adaptive_threshold=threshold, min_scene_len=min_frames)
    if options.detector == "threshold":
        return ThresholdDetector(threshold=threshold, min_scene_len=min_frames)
    if options.detector == "hash":
        return HashDetector(threshold=threshold, min_scene_len=min_frames)
    return ContentDetector(threshold=threshold, min_scene_len=min_frames)


# -- detection frames ----------------------------------------------------------------

# Planar 8-bit YUV formats converted without FFmpeg's scaler: chroma subsampling (x, y),
# full range. Others (10-bit, packed, RGB) go through it.
_PLANAR_YUV: dict[str, tuple[int, int, bool]] = {
    "yuv420p": (2, 2, False),
    "yuvj420p": (2, 2, True),
    "yuv422p": (2, 1, False),
    "yuvj422p": (2, 1, True),
    "yuv444p": (1, 1, False),
    "yuvj444p": (1, 1, True),
}
# Luma weights (Kr, Kb) by FFmpeg's colour space number, as its scaler applies them:
# 1 BT.709; 2 unspecified, 5 BT.470BG and 6 SMPTE 170M, BT.601.
_LUMA_WEIGHTS: dict[int, tuple[float, float]] = {
    1: (0.2126, 0.0722),
    2: (0.299, 0.114),
    5: (0.299, 0.114),
    6: (0.299, 0.114),
}
_AVCOL_RANGE_JPEG = 2
# FFmpeg's scaler converts subsampled YUV to BGR with tables that round down: its output
# is lower than the exact conversion by about this much (measured: 0.9 to 1.5 in limited
# range, 0.5 to 0.9 in full range; 0 from 4:4:4).
_TABLE_BIAS = {False: 1.0, True: 0.5}
_ROTATE = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}


def _yuv_to_bgr(kr: float, kb: float, full: bool, bias: float) -> npt.NDArray[np.float32]:
    """The 3x4 matrix taking (Y, U, V, 1) to (B, G, R)."""
    kg = 1 - kr - kb
    luma, chroma, black = (1.0, 1.0, 0.0) if full else (255 / 219, 255 / 224, 16.0)
    rows = np.array(
        [
            [luma, chroma * 2 * (1 - kb), 0.0],
            [luma, -chroma * 2 * kb * (1 - kb) / kg, -chroma * 2 * kr * (1 - kr) / kg],
            [luma, 0.0, chroma * 2 * (1 - kr)],
        ]
    )
    offset = -rows @ np.array([black, 128.0, 128.0]) - bias
    return np.hstack([rows, offset[:, None]]).astype(np.float32)


class _Shrink:
    """Frames at detection size in BGR, as PySceneDetect's SceneManager made them from
    OpenCV's frames: FFmpeg's scaler turned each whole frame into BGR, then OpenCV's
    bilinear resize took it a whole factor down to about DETECTION_SIDE on its longer
    side (reading 2 x 2 pixels per pixel it made, in 1280x720 one in 25), upright.

    ``exact``: that way, the same frames to the bit. Otherwise (8-bit planar YUV in a
    known colour space) only the pixels the resize reads are converted: the luma plane
    is resized as the BGR frame was, each chroma plane is sampled at the same places
    (through the nearest-sample upsampling of FFmpeg's conversion), and the small YUV
    frame is converted with FFmpeg's matrix. Pixels stay within 2 levels of the exact
    ones but where a channel clips between the pixels averaged, and a 720p frame takes
    0.11 ms instead of 0.71 (a thirteenth of the instructions).
    """

    def __init__(self, frame: av.VideoFrame, *, exact: bool) -> None:
        self.width, self.height = frame.width, frame.height
        self.factor = max(1, max(self.width, self.height) // DETECTION_SIDE)
        self.size = (
            max(1, round(self.width / self.factor)),
            max(1, round(self.height / self.factor)),
        )
        self.rotation = frame.rotation % 360 if frame.rotation % 90 == 0 else 0
        self._rotate = _ROTATE.get(self.rotation)
        self._reformatter = VideoReformatter()
        self._matrix: npt.NDArray[np.float32] | None = None
        layout = _PLANAR_YUV.get(frame.format.name)
        weights = _LUMA_WEIGHTS.get(int(frame.colorspace))
        # Frames of at most twice DETECTION_SIDE are not shrunk: the full conversion
        # costs next to nothing there.
        if exact or self.factor == 1 or layout is None or weights is None:
            return
        sub_x, sub_y, full = layout
        full = full or int(frame.color_range) == _AVCOL_RANGE_JPEG
        bias = _TABLE_BIAS[full] if sub_x > 1 else 0.0
        self._matrix = _yuv_to_bgr(*weights, full, bias)
        self._chroma = (-(-self.width // sub_x), -(-self.height // sub_y))
        x = _chroma_positions(self.width, self.size[0], sub_x)
        y = _chroma_positions(self.height, self.size[1], sub_y)
        self._sample_chroma = _sampler(x, y)

    def __call__(self, frame: av.VideoFrame) -> Image | None:
        """``frame`` at detection size, or None when its size is not the first frame's."""
        if (frame.width, frame.height) != (self.width, self.height):
            return None
        matrix = self._matrix
        image = self._exact(frame) if matrix is None else self._from_planes(frame, matrix)
        if self._rotate is not None:
            image = cv2.rotate(image, self._rotate)
        return np.asarray(image, dtype=np.uint8)

    def _from_planes(self, frame: av.VideoFrame, matrix: npt.NDArray[np.float32]) -> Any:
        luma, blue, red = frame.planes
        y = cv2.resize(
            _plane(luma, self.width, self.height), self.size, interpolation=cv2.INTER_LINEAR
        )
        u = self._sample_chroma(_plane(blue, *self._chroma))
        v = self._sample_chroma(_plane(red, *self._chroma))
        return cv2.transform(cv2.merge((y, u, v)), matrix)

    def _exact(self, frame: av.VideoFrame) -> Any:
        # One thread: the decoder's threads have the cores, and helper threads woken for
        # each frame cost more than they save.
        image: Any = self._reformatter.reformat(frame, format="bgr24", threads=1).to_ndarray()
        if self.factor > 1:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_LINEAR)
        return image


def _sampler(x: npt.NDArray[np.float32], y: npt.NDArray[np.float32]) -> Callable[[Any], Any]:
    """A function sampling a plane at columns ``x`` and rows ``y``: bilinear in general;
    where every position is whole (a whole shrinking factor), the samples themselves,
    by slicing when they are evenly spaced (1280x720: every fifth), else by index."""
    if np.any(x != np.round(x)) or np.any(y != np.round(y)):
        maps = cv2.convertMaps(*np.meshgrid(x, y), cv2.CV_16SC2)
        return lambda plane: cv2.remap(plane, *maps, cv2.INTER_LINEAR)
    columns, rows = x.astype(np.intp), y.astype(np.intp)
    steps = (np.unique(np.diff(columns)), np.unique(np.diff(rows)))
    if all(len(step) <= 1 and np.all(step > 0) for step in steps):
        column_step = int(steps[0][0]) if len(steps[0]) else 1
        row_step = int(steps[1][0]) if len(steps[1]) else 1
        every = (
            slice(int(rows[0]), int(rows[-1]) + 1, row_step),
            slice(int(columns[0]), int(columns[-1]) + 1, column_step),
        )
        return lambda plane: plane[every]
    return lambda plane: plane.take(rows, axis=0).take(columns, axis=1)


def _chroma_positions(length: int, size: int, subsampling: int) -> npt.NDArray[np.float32]:
    """Where, in a chroma plane, the pixels along one axis of a ``length`` -> ``size``
    bilinear resize of the full-size frame take their chroma from.

    OpenCV's resize reads pixels ``i`` and ``i + 1`` at weights ``1 - f`` and ``f``
    (its own arithmetic, rounded to float as it rounds it); FFmpeg's conversion gave
    pixel ``i`` the chroma sample ``i // subsampling``.
    """
    scale = 1.0 / (size / length)
    position = ((np.arange(size) + 0.5) * scale - 0.5).astype(np.float32).astype(np.float64)
    first = np.floor(position)
    weight = position - first
    weight[first < 0], first[first < 0] = 0.0, 0.0
    last = first >= length - 1
    weight[last], first[last] = 0.0, length - 1
    left = first.astype(np.int64) // subsampling
    right = np.minimum(first.astype(np.int64) + 1, length - 1) // subsampling
    return np.asarray(left + weight * (right - left), dtype=np.float32)


def _plane(plane: av.video.plane.VideoPlane, width: int, height: int) -> Any:
    rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(-1, plane.line_size)
    return rows[:height, :width]


# -- keyframes -------------------------------------------------------------------------

# Frames up to this size are kept as the decoder gave them (about 3 MB each in 4:2:0),
# larger ones shrunk first, so that the sampler holds some 50 MB at most.
_HOLD_MAX_PIXELS = 1920 * 1088


class _Keyframes:
    """Keyframe JPEGs saved in ``folder`` as scenes close during detection, under their
    frame number, then named after the scenes once the scene list is final.

    The sampler keeps the decoder's own frames, unconverted; only the one chosen for a
    scene is converted to BGR, encoded and written, by a thread of its own, so that the
    decoding thread goes on.
    """

    def __init__(self, folder: Path, video: Path) -> None:
        self.folder = folder
        self.video = video
        self.sampler: KeyframeSampler[av.VideoFrame] = KeyframeSampler()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="vvflow-keyframes")
        # Thumbnail JPEGs by frame number: a few kB per scene for the contact sheet,
        # rather than a frame per scene in memory.
        self._thumbnails: dict[int, Future[bytes]] = {}
        self._rotate: int | None = None
        self._shrinker = VideoReformatter()  # the decoding thread's
        self._converter = VideoReformatter()  # the writer's

    def __enter__(self) -> _Keyframes:
        return self

    def __exit__(self, *exc: object) -> None:
        # On error the folder's cleanup follows: no write may land after it.
        self._writer.shutdown(wait=True, cancel_futures=exc[0] is not None)

    def start(self, rotation: int) -> None:
        """The first frame decoded: how to turn frames upright (degrees anticlockwise)."""
        self._rotate = _ROTATE.get(rotation)

    def holdable(self, frame: av.VideoFrame) -> av.VideoFrame:
        """``frame`` as the sampler may keep it: as decoded, or shrunk when it is large."""
        if frame.width * frame.height <= _HOLD_MAX_PIXELS:
            return frame
        scale = KEYFRAME_MAX_SIDE / max(frame.width, frame.height)
        return self._shrinker.reformat(
            frame,
            width=max(2, round(frame.width * scale)),
            height=max(2, round(frame.height * scale)),
            interpolation=Interpolation.AREA,
            threads=1,
        )

    def closing(self, cuts: list[FrameTimecode]) -> list[FrameTimecode]:
        """Tell the sampler where scenes end (the detector's ``cuts``); return ``cuts``.

        Cuts come out of the detector up to its filter's length after the frame they
        name (and some only at the end), so the sampler is told as they come."""
        for cut in cuts:
            candidate = self.sampler.cut(cut.frame_num)
            if candidate is not None:
                self._save(candidate)
        return cuts

    def finish(self, scenes: list[dict[str, Any]], rate: Fraction) -> list[Tile]:
        """Name a keyframe after each scene, fill in its fields; return the sheet's tiles."""
        captioned: list[tuple[int, str]] = []
        for scene in scenes:
            frame = self._keyframe(int(scene["start_frame"]), int(scene["end_frame"]), rate)
            if frame is None:
                continue
            self._thumbnails[frame].result()  # written
            name = keyframe_name(int(scene["index"]))
            os.replace(self._path(frame), self.folder / name)
            scene["keyframe"] = name
            scene["keyframe_frame"] = frame
            scene["keyframe_s"] = round(FrameTimecode(frame, rate).seconds, 3)
            captioned.append((frame, f"#{scene['index']}  {scene['start_timecode']}"))
        for saved in self._thumbnails.values():
            saved.result()
        for unused in self.folder.glob(".frame-*.jpg"):
            unused.unlink()
        return [
            Tile(decode_jpeg(self._thumbnails[f].result()), caption)
            for f, caption in spread(captioned)
        ]

    def _keyframe(self, start: int, end: int, rate: Fraction) -> int | None:
        saved = nearest_to_middle(self._thumbnails, start, end)
        if saved is not None:
            return saved
        # The last scene is still open in the sampler; a scene that a detector cut out of
        # order, or only at the end, was not seen closing: look it up the slow way.
        candidate = self.sampler.pick(start, end) or self._seek(start, end, rate)
        if candidate is None:
            return None
        self._save(candidate)
        return candidate.frame

    def _seek(self, start: int, end: int, rate: Fraction) -> Candidate[av.VideoFrame] | None:
        # The middle frame stays clear of fades and of the cut's neighbours.
        for wanted in dict.fromkeys(((start + end - 1) // 2, start)):
            found = _seek_frame(self.video, wanted, rate)
            if found is not None and found.frame < end:
                return Candidate(found.frame, self.holdable(found.image))
        return None

    def _save(self, candidate: Candidate[av.VideoFrame]) -> None:
        self._thumbnails[candidate.frame] = self._writer.submit(self._write, candidate)

    def _write(self, candidate: Candidate[av.VideoFrame]) -> bytes:
        image: Any = self._converter.reformat(
            candidate.image, format="bgr24", threads=1
        ).to_ndarray()
        if self._rotate is not None:
            image = cv2.rotate(image, self._rotate)
        image = np.asarray(image, dtype=np.uint8)
        write_bytes_atomic(self._path(candidate.frame), encode_jpeg(image))
        return thumbnail_jpeg(image)

    def _path(self, frame: int) -> Path:
        return self.folder / f".frame-{frame}.jpg"


def _seek_frame(video: Path, wanted: int, rate: Fraction) -> Candidate[av.VideoFrame] | None:
    """The first frame at or after frame number ``wanted``, found by seeking."""
    with contextlib.suppress(av.FFmpegError), _open(video) as container:
        stream = container.streams.video[0]
        clock = _Clock(stream, rate)
        seconds = FrameTimecode(wanted, rate).seconds
        if stream.time_base:
            start = stream.start_time or 0
            container.seek(start + int(seconds / stream.time_base), stream=stream)
        for index, frame in enumerate(_frames(container, stream)):
            number = clock.position(frame, index).frame_num
            if number >= wanted:
                return Candidate(number, frame)
    return None


def _quiet_decoders() -> None:
    # Decoder chatter ("partial file", "Invalid NAL unit size") would bury the one clear
    # stderr line that the stage contract promises; the verdict is ours to give.
    logging.getLogger("pyscenedetect").setLevel(logging.CRITICAL + 1)
    av.logging.set_level(None)


def _software() -> dict[str, str]:
    try:
        version = metadata.version("vvflow")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "vvflow": version,
        "pyscenedetect": scenedetect.__version__,
        "pyav": av.__version__,
        "opencv": cv2.__version__,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vvflow stage scan",
        description="Scene detection, metadata, keyframes and a contact sheet for one video.",
    )
    add_io_arguments(parser, "video", "video file to scan")
    parser.add_argument(
        "--detector",
        choices=sorted(DEFAULT_THRESHOLDS),
        default=env_default("VVFLOW_SCAN_DETECTOR", DEFAULT_DETECTOR),
        help="PySceneDetect detector (env VVFLOW_SCAN_DETECTOR; default %(default)s)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=env_default("VVFLOW_SCAN_THRESHOLD"),
        help="detector threshold (env VVFLOW_SCAN_THRESHOLD; default: the detector's own)",
    )
    parser.add_argument(
        "--min-scene-seconds",
        type=float,
        default=env_default("VVFLOW_SCAN_MIN_SCENE_SECONDS", str(DEFAULT_MIN_SCENE_SECONDS)),
        help="shortest scene (env VVFLOW_SCAN_MIN_SCENE_SECONDS; default %(default)s)",
    )
    output_dir = env_default("VVFLOW_OUTPUT_DIR")
    parser.add_argument(
        "--keyframes-dir",
        metavar="DIR",
        type=Path,
        default=Path(output_dir) if output_dir else None,
        help="folder to write the keyframes and contact sheet into (env VVFLOW_OUTPUT_DIR; "
        "default: $VVFLOW_ROOT/keyframes/<stem>, else keyframes/<stem> next to OUTPUT, "
        "replaced whole)",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
