"""Generated videos that look more like camera footage than ``tests.media``'s flat colours:
texture, film grain, a panning camera and a moving object, encoded as a camera would
(CABAC, B-frames, one slice per frame), with hard cuts, fades and flashes where asked.

A test-support module, not a test file. Frame numbers are 0-based and in decoding order.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt

Frame = npt.NDArray[np.uint8]

# Encoded as footage is: CABAC, B-frames and one slice per frame (what decodes slowest);
# `tests.media` uses ultrafast + zerolatency, whose sliced frames decode unusually fast.
FOOTAGE_CODEC_OPTIONS = {"preset": "superfast", "crf": "23"}
# Temporal film grain in FFmpeg's noise filter (strength out of 100, uniform).
GRAIN = 8
_PAN_MARGIN = 96  # pixels of texture around the frame for the camera to pan over


@dataclass(frozen=True)
class Footage:
    """What ``make_footage`` wrote: the cuts' first frames, the frame count, the rate."""

    path: Path
    cuts: list[int]
    frames: int
    fps: Fraction


def make_footage(
    path: Path,
    *,
    seconds: float,
    width: int = 320,
    height: int = 180,
    fps: Fraction | int = 30,
    cuts: int = 0,
    fades: Sequence[int] = (),
    fade_frames: int = 12,
    flashes: Sequence[int] = (),
    grain: int = GRAIN,
    rotation: int = 0,
    seed: int = 0,
    codec_options: dict[str, str] | None = None,
) -> Footage:
    """Write H.264 footage to ``path`` and say where its hard cuts are.

    ``cuts`` hard cuts split the video into equal shots; each shot has its own textured
    scene (colours, texture scale), a camera that pans over it and an object that moves
    across. ``fades``: shot numbers (1-based: 1 is the cut between the first and second
    shot) whose cut is a fade through black instead (``fade_frames`` out, as many in).
    ``flashes``: frame numbers that are blown out to near white for two frames, within
    a shot. ``rotation``: a display rotation stored in the container, as phones do.
    """
    rate = Fraction(fps)
    total = max(1, round(seconds * rate))
    starts = [round(k * total / (cuts + 1)) for k in range(cuts + 1)] + [total]
    scenes = [_Scene(width, height, seed * 1000 + s) for s in range(cuts + 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "+faststart"} if path.suffix.lower() in {".mp4", ".mov"} else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = dict(codec_options or FOOTAGE_CODEC_OPTIONS)
        if rotation:
            stream.set_display_rotation(rotation)
        graph = _grain_graph(width, height, rate, grain)
        for segment in range(cuts + 1):
            for number in range(starts[segment], starts[segment + 1]):
                image = scenes[segment].frame(number - starts[segment])
                gain = _fade_gain(number, starts, fades, fade_frames)
                if gain < 1:
                    image = (image.astype(np.float32) * gain).astype(np.uint8)
                if any(0 <= number - f < 2 for f in flashes):
                    image = cv2.addWeighted(image, 0.15, np.full_like(image, 250), 0.85, 0)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = number
                frame.time_base = 1 / rate
                for out in _grained(graph, frame):
                    container.mux(stream.encode(out))
        container.mux(stream.encode(None))
    hard = [starts[k] for k in range(1, cuts + 1) if k not in set(fades)]
    return Footage(path, hard, total, rate)


class _Scene:
    """One shot: a textured plate larger than the frame, a pan over it, a moving disc."""

    def __init__(self, width: int, height: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.size = (width, height)
        plate_w, plate_h = width + 2 * _PAN_MARGIN, height + 2 * _PAN_MARGIN
        texture = np.zeros((plate_h, plate_w), np.float32)
        for cells, weight in ((4, 1.0), (16, 0.5), (64, 0.25), (plate_w // 3, 0.2)):
            noise = rng.uniform(-1, 1, (max(2, cells * plate_h // plate_w), cells))
            texture += weight * cv2.resize(
                noise.astype(np.float32), (plate_w, plate_h), interpolation=cv2.INTER_CUBIC
            )
        texture = (texture - texture.min()) / max(1e-6, float(np.ptp(texture)))
        dark, light = rng.uniform(10, 120, 3), rng.uniform(120, 250, 3)
        self.plate = (dark + texture[..., None] * (light - dark)).astype(np.uint8)
        # Objects with edges on the plate: what gives real shots their detail.
        for _ in range(40):
            x, y = int(rng.integers(0, plate_w)), int(rng.integers(0, plate_h))
            w, h = (int(v) for v in rng.integers(4, max(8, height // 4), 2))
            colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
            if rng.random() < 0.5:
                cv2.rectangle(self.plate, (x, y), (x + w, y + h), colour, -1)
            else:
                cv2.circle(self.plate, (x, y), w // 2, colour, int(rng.integers(1, 4)))
        self.velocity = rng.uniform(0.5, 2.5, 2) * rng.choice([-1, 1], 2)
        self.disc = tuple(int(c) for c in rng.uniform(0, 255, 3))
        self.disc_start = rng.uniform(0.1, 0.9, 2) * (width, height)
        self.disc_velocity = rng.uniform(-4, 4, 2)

    def frame(self, number: int) -> Frame:
        width, height = self.size
        dx, dy = np.clip(self.velocity * number, -_PAN_MARGIN, _PAN_MARGIN).astype(int)
        x, y = _PAN_MARGIN + dx, _PAN_MARGIN + dy
        image = np.ascontiguousarray(self.plate[y : y + height, x : x + width])
        cx, cy = (self.disc_start + self.disc_velocity * number).astype(int)
        cv2.circle(image, (int(cx) % width, int(cy) % height), height // 8, self.disc, -1)
        return image


def _fade_gain(number: int, starts: list[int], fades: Sequence[int], length: int) -> float:
    for shot in fades:
        distance = number - starts[shot]  # < 0: fading out, >= 0: fading in
        if -length <= distance < 0:
            return -distance / length - 1 / length
        if 0 <= distance < length:
            return (distance + 1) / length
    return 1.0


def _grain_graph(width: int, height: int, rate: Fraction, grain: int) -> av.filter.Graph:
    graph = av.filter.Graph()
    source = graph.add_buffer(width=width, height=height, format="rgb24", time_base=1 / rate)
    chain = [graph.add("format", "yuv420p")]
    if grain:
        chain.append(graph.add("noise", f"alls={grain}:allf=t+u"))
    chain.append(graph.add("buffersink"))
    source.link_to(chain[0])
    for before, after in itertools.pairwise(chain):
        before.link_to(after)
    graph.configure()
    return graph


def _grained(graph: av.filter.Graph, frame: av.VideoFrame) -> list[av.VideoFrame]:
    graph.push(frame)
    out = []
    while True:
        try:
            out.append(graph.pull())
        except (av.BlockingIOError, av.EOFError):
            return out
