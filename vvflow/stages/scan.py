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
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import scenedetect  # type: ignore[import-untyped]
from scenedetect import (
    AdaptiveDetector,
    ContentDetector,
    FrameTimecode,
    HashDetector,
    SceneDetector,
    SceneManager,
    ThresholdDetector,
)
from scenedetect.backends.opencv import VideoStreamCv2  # type: ignore[import-untyped]

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
    stream = _open(video)
    duration = _duration(info)

    def decoded_until(seconds: float) -> None:
        if duration:
            progress.update(min(_DECODED_AT_MOST, seconds / duration), "detecting scenes")

    with folder as staging:
        keyframes = _Keyframes(staging)
        scenes, decoded = _detect(stream, options, keyframes, decoded_until)
        expected = int(info["video"]["frame_count_header"])
        if decoded == 0:
            raise BadInput(f"{video}: no video frame decodes")
        if (
            expected
            and decoded < TRUNCATED_BELOW * expected
            and (expected - decoded > _TOLERATED_MISSING_FRAMES)
        ):
            raise BadInput(
                f"{video}: truncated or corrupt: {decoded} of the {expected} frames "
                "its header promises decode"
            )
        info["video"]["frame_count"] = decoded
        tiles = keyframes.finish(stream, scenes)
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
            "backend": VideoStreamCv2.BACKEND_NAME,
        },
        "scene_count": len(scenes),
        "scenes": scenes,
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


class _SampledStream(VideoStreamCv2):  # type: ignore[misc]  # scenedetect is untyped
    """OpenCV's stream, showing each decoded frame to ``sampler`` and its time to
    ``decoded_until`` while they are set.

    This runs in SceneManager's decoding thread, before it downscales the frame for
    detection: the one place where every frame exists at full size.
    """

    sampler: KeyframeSampler | None = None
    decoded_until: Callable[[float], None] | None = None

    def read(self, decode: bool = True) -> Any:
        frame = super().read(decode)
        if self.sampler is not None and isinstance(frame, np.ndarray):
            self.sampler.offer(self.position.frame_num, frame)
        if self.decoded_until is not None and frame is not False:
            self.decoded_until(self.position.seconds)
        return frame


def _open(video: Path) -> _SampledStream:
    try:
        return _SampledStream(str(video))
    except (OSError, scenedetect.VideoOpenFailure) as error:
        raise BadInput(f"{video}: OpenCV cannot decode it ({error})") from None


def _detector(options: ScanOptions, fps: float) -> SceneDetector:
    min_frames = max(1, round(options.min_scene_seconds * fps))
    threshold = options.effective_threshold
    if options.detector == "adaptive":
        return AdaptiveDetector(adaptive_threshold=threshold, min_scene_len=min_frames)
    if options.detector == "threshold":
        return ThresholdDetector(threshold=threshold, min_scene_len=min_frames)
    if options.detector == "hash":
        return HashDetector(threshold=threshold, min_scene_len=min_frames)
    return ContentDetector(threshold=threshold, min_scene_len=min_frames)


def _detect(
    stream: _SampledStream,
    options: ScanOptions,
    keyframes: _Keyframes,
    decoded_until: Callable[[float], None],
) -> tuple[list[dict[str, Any]], int]:
    manager = SceneManager()
    manager.auto_downscale = False
    manager.downscale = max(1, max(stream.frame_size) // DETECTION_SIDE)
    manager.add_detector(_SamplingDetector(_detector(options, stream.frame_rate), keyframes))
    stream.sampler, stream.decoded_until = keyframes.sampler, decoded_until
    try:
        decoded = manager.detect_scenes(stream)
    finally:
        stream.sampler = stream.decoded_until = None
    scenes: list[dict[str, Any]] = []
    for number, (start, end) in enumerate(manager.get_scene_list(start_in_scene=True), 1):
        scenes.append(
            {
                "index": number,
                "start_s": round(start.seconds, 3),
                "end_s": round(end.seconds, 3),
                "duration_s": round(end.seconds - start.seconds, 3),
                "start_frame": start.frame_num,
                "end_frame": end.frame_num,
                "start_timecode": start.get_timecode(),
                "end_timecode": end.get_timecode(),
                "keyframe": None,
                "keyframe_frame": None,
                "keyframe_s": None,
            }
        )
    return scenes, decoded


class _Keyframes:
    """Keyframe JPEGs saved in ``folder`` as scenes close during detection, under their
    frame number, then named after the scenes once the scene list is final."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.sampler = KeyframeSampler()
        # Thumbnail JPEGs by frame number: a few kB per scene for the contact sheet,
        # rather than a frame per scene in memory.
        self._thumbnails: dict[int, bytes] = {}

    def keep(self, candidate: Candidate | None) -> None:
        """Save ``candidate``, the keyframe the sampler chose for a scene that closed."""
        if candidate is not None:
            self._save(candidate)

    def finish(self, stream: VideoStreamCv2, scenes: list[dict[str, Any]]) -> list[Tile]:
        """Name a keyframe after each scene, fill in its fields; return the sheet's tiles."""
        captioned: list[tuple[int, str]] = []
        for scene in scenes:
            frame = self._keyframe(stream, int(scene["start_frame"]), int(scene["end_frame"]))
            if frame is None:
                continue
            name = keyframe_name(int(scene["index"]))
            os.replace(self._path(frame), self.folder / name)
            scene["keyframe"] = name
            scene["keyframe_frame"] = frame
            scene["keyframe_s"] = round(FrameTimecode(frame, stream.frame_rate).seconds, 3)
            captioned.append((frame, f"#{scene['index']}  {scene['start_timecode']}"))
        for unused in self.folder.glob(".frame-*.jpg"):
            unused.unlink()
        return [Tile(decode_jpeg(self._thumbnails[f]), caption) for f, caption in spread(captioned)]

    def _keyframe(self, stream: VideoStreamCv2, start: int, end: int) -> int | None:
        saved = nearest_to_middle(self._thumbnails, start, end)
        if saved is not None:
            return saved
        # The last scene is still open in the sampler; a scene that a detector cut out of
        # order, or only at the end, was not seen closing: look it up the slow way.
        candidate = self.sampler.pick(start, end) or _seek_keyframe(stream, start, end)
        if candidate is None:
            return None
        self._save(candidate)
        return candidate.frame

    def _save(self, candidate: Candidate) -> None:
        write_bytes_atomic(self._path(candidate.frame), encode_jpeg(candidate.image))
        self._thumbnails[candidate.frame] = thumbnail_jpeg(candidate.image)

    def _path(self, frame: int) -> Path:
        return self.folder / f".frame-{frame}.jpg"


def _seek_keyframe(stream: VideoStreamCv2, start: int, end: int) -> Candidate | None:
    # The middle frame stays clear of fades and of the cut's neighbours.
    for frame in dict.fromkeys(((start + end - 1) // 2, start)):
        stream.seek(frame)
        image = stream.read()
        if image is not False:
            return Candidate(frame, image)
    return None


class _SamplingDetector(SceneDetector):  # type: ignore[misc]  # scenedetect is untyped
    """The configured detector, telling the keyframe sampler where each scene ends.

    Cuts come out of the detector up to its filter's length after the frame they name
    (and some only at the end), so the sampler is told as they come; the frames it
    samples come from the decoding thread (see _SampledStream), at full size.
    """

    def __init__(self, inner: SceneDetector, keyframes: _Keyframes) -> None:
        super().__init__()
        self._inner = inner
        self._keyframes = keyframes

    def process_frame(self, timecode: FrameTimecode, frame_img: Image) -> list[FrameTimecode]:
        return self._closing(self._inner.process_frame(timecode, frame_img))

    def post_process(self, timecode: FrameTimecode) -> list[FrameTimecode]:
        return self._closing(self._inner.post_process(timecode))

    def _closing(self, cuts: list[FrameTimecode]) -> list[FrameTimecode]:
        for cut in cuts:
            self._keyframes.keep(self._keyframes.sampler.cut(cut.frame_num))
        return cuts

    @property
    def event_buffer_length(self) -> int:
        return int(self._inner.event_buffer_length)

    @property
    def stats_manager(self) -> Any:
        return self._inner.stats_manager

    @stats_manager.setter
    def stats_manager(self, value: Any) -> None:
        self._inner.stats_manager = value

    def get_metrics(self) -> list[str]:
        return list(self._inner.get_metrics())


def _quiet_decoders() -> None:
    # Decoder chatter ("partial file", "Invalid NAL unit size") would bury the one clear
    # stderr line that the stage contract promises; the verdict is ours to give.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
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
