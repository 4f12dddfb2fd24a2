"""Container and stream metadata of a video file, read with PyAV."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import av

from vvflow.stages.command import BadInput


def check_readable(path: Path) -> int:
    """Return the size of ``path`` in bytes, or raise BadInput when it cannot be a video."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except OSError as error:
        raise BadInput(f"{path}: cannot read: {error.strerror}") from None
    if path.is_dir():
        raise BadInput(f"{path}: is a directory, not a video")
    if info.st_size == 0:
        raise BadInput(f"{path}: empty file (0 bytes), not a video")
    if not os.access(path, os.R_OK):
        raise BadInput(f"{path}: cannot read: permission denied")
    return info.st_size


def probe(path: Path) -> dict[str, Any]:
    """Metadata of the video at ``path``: container, duration, video and audio streams.

    Raises BadInput for a file FFmpeg cannot open or one without a video stream.
    """
    size = check_readable(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as error:
        raise BadInput(f"{path}: not a readable video ({_reason(error)})") from None
    with container:
        if not container.streams.video:
            raise BadInput(f"{path}: no video stream (container {container.format.name})")
        video = container.streams.video[0]
        context = video.codec_context
        rate = video.average_rate or video.guessed_rate or video.base_rate
        fps = float(rate) if rate else 0.0
        duration_s = _duration_s(container, video)
        header_frames = int(video.frames or 0)
        if not header_frames and duration_s and fps:
            header_frames = round(duration_s * fps)
        return {
            "container": {
                "format": container.format.name,
                "format_long_name": container.format.long_name,
                "size_bytes": size,
                "bit_rate": container.bit_rate or None,
            },
            "duration_s": round(duration_s, 3) if duration_s else None,
            "video": {
                "codec": context.name,
                "profile": context.profile,
                "pix_fmt": context.pix_fmt,
                "width": context.width,
                "height": context.height,
                "fps": round(fps, 3),
                # Exact, for editors' timecode (30000/1001 is not 29.97).
                "frame_rate": f"{rate.numerator}/{rate.denominator}" if rate else None,
                "frame_count": header_frames,
                "frame_count_header": header_frames,
                "bit_rate": context.bit_rate or video.bit_rate or None,
            },
            "audio_streams": [
                {
                    "index": stream.index,
                    "codec": stream.codec_context.name,
                    "sample_rate": stream.codec_context.sample_rate,
                    "channels": stream.codec_context.channels,
                    "layout": stream.codec_context.layout.name,
                    "bit_rate": stream.codec_context.bit_rate or stream.bit_rate or None,
                }
                for stream in container.streams.audio
            ],
        }


def _duration_s(container: av.container.InputContainer, video: av.VideoStream) -> float:
    if container.duration:
        return float(container.duration) / av.time_base
    if video.duration and video.time_base:
        return float(video.duration * video.time_base)
    return 0.0


def _reason(error: av.FFmpegError) -> str:
    return str(error.strerror or error).rstrip(".").lower()
