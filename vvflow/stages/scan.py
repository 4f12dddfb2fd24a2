"""``vvflow stage scan VIDEO OUTPUT``: metadata, shots, keyframes and a contact sheet.

Writes the analytic JSON (see SCHEMAS.md) to OUTPUT, and one JPEG per scene plus
``contact-sheet.jpg`` to ``<root>/keyframes/<stem>/``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import av
import cv2
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
    SCHEMA_VERSION,
    BadInput,
    add_io_arguments,
    env_default,
    relative_to_root,
    run_stage,
    write_bytes_atomic,
    write_json,
)
from vvflow.stages.keyframes import (
    CONTACT_SHEET_NAME,
    Tile,
    contact_sheet,
    encode_jpeg,
    keyframe_name,
    staged_folder,
)
from vvflow.stages.probe import probe

DEFAULT_THRESHOLDS: dict[str, float] = {
    "content": 27.0,
    "adaptive": 3.0,
    "threshold": 12.0,
    "hash": 0.395,
}
DEFAULT_DETECTOR = "content"
DEFAULT_MIN_SCENE_SECONDS = 0.5
# A file is truncated when fewer than this share of the frames its header promises decode
# (and more than a couple are missing: headers are often off by a frame or two).
TRUNCATED_BELOW = 0.9
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

    ``output`` is where the document will be written: by hand, without ``$VVFLOW_ROOT``,
    its folder is the root that keyframe paths are relative to.
    """
    options = options or ScanOptions()
    _quiet_decoders()
    stem = env_default("VVFLOW_STEM") or video.stem
    root_env = env_default("VVFLOW_ROOT")
    root = Path(root_env) if root_env else output.parent
    if keyframes_dir is None:
        keyframes_dir = root / "keyframes" / stem

    info = probe(video)
    stream = _open(video)
    scenes, decoded = _detect(stream, options)
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

    with staged_folder(keyframes_dir) as staging:
        tiles = _write_keyframes(stream, scenes, staging)
        if tiles:
            sheet = encode_jpeg(contact_sheet(tiles), max_side=65_000)
            write_bytes_atomic(staging / CONTACT_SHEET_NAME, sheet)
    for scene in scenes:
        if scene["keyframe"] is not None:
            scene["keyframe"] = relative_to_root(keyframes_dir / scene["keyframe"], root)

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
        "keyframes_dir": relative_to_root(keyframes_dir, root),
        "contact_sheet": (
            relative_to_root(keyframes_dir / CONTACT_SHEET_NAME, root) if tiles else None
        ),
        "software": _software(),
    }


def _open(video: Path) -> VideoStreamCv2:
    try:
        return VideoStreamCv2(str(video))
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


def _detect(stream: VideoStreamCv2, options: ScanOptions) -> tuple[list[dict[str, Any]], int]:
    manager = SceneManager()
    manager.add_detector(_detector(options, stream.frame_rate))
    decoded = manager.detect_scenes(stream)
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


def _write_keyframes(
    stream: VideoStreamCv2, scenes: list[dict[str, Any]], folder: Path
) -> list[Tile]:
    tiles: list[Tile] = []
    for scene in scenes:
        start, end = int(scene["start_frame"]), int(scene["end_frame"])
        # The middle frame stays clear of fades and of the cut's neighbours.
        for candidate in dict.fromkeys(((start + end - 1) // 2, start)):
            stream.seek(candidate)
            image = stream.read()
            if image is False:
                continue
            name = keyframe_name(int(scene["index"]))
            write_bytes_atomic(folder / name, encode_jpeg(image))
            at = FrameTimecode(candidate, stream.frame_rate)
            scene["keyframe"] = name
            scene["keyframe_frame"] = candidate
            scene["keyframe_s"] = round(at.seconds, 3)
            tiles.append(Tile(image, f"#{scene['index']}  {scene['start_timecode']}"))
            break
    return tiles


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
    parser.add_argument(
        "--keyframes-dir",
        type=Path,
        default=None,
        help="folder for keyframes (default: $VVFLOW_ROOT/keyframes/<stem>, "
        "else keyframes/<stem> next to OUTPUT)",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
