"""Keyframe JPEGs and the contact sheet, and the folders they are written into: one that
vvflow publishes whole (``filled_folder``), or one this stage replaces whole by hand
(``staged_folder``)."""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
_T = TypeVar("_T")
_I = TypeVar("_I")

CONTACT_SHEET_NAME = "contact-sheet.jpg"
JPEG_QUALITY = 88
KEYFRAME_MAX_SIDE = 1280
SHEET_MAX_TILES = 300  # keeps the sheet well under JPEG's 65,535-pixel side limit
# Frames an open scene keeps as keyframe candidates: the one kept nearest the middle of a
# scene of n frames is at most about n / 8 frames from it, and the sampler holds about
# twice this many frames (kept and recycled) however long the video is.
CANDIDATES_PER_SCENE = 8
THUMBNAIL_WIDTH = 320
_THUMBNAIL_QUALITY = 95  # thumbnails are encoded twice (kept, then on the sheet)
_LABEL_HEIGHT = 22
_GAP = 4
_BACKGROUND = (32, 32, 32)


@dataclass(frozen=True)
class Tile:
    """One keyframe on the contact sheet with the caption drawn under it."""

    image: Image
    caption: str


def keyframe_name(index: int) -> str:
    """File name of the keyframe of scene ``index`` (1-based)."""
    return f"scene-{index:03d}.jpg"


def encode_jpeg(
    image: Image, max_side: int = KEYFRAME_MAX_SIDE, quality: int = JPEG_QUALITY
) -> bytes:
    """JPEG bytes of a BGR ``image``, shrunk so that its longer side is at most ``max_side``."""
    image = shrink(image, max_side)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return bytes(buffer.tobytes())


def decode_jpeg(data: bytes) -> Image:
    """The BGR image of JPEG ``data``."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError("JPEG decoding failed")
    return np.asarray(image, dtype=np.uint8)


def shrink(image: Image, max_side: int) -> Image:
    """``image`` scaled down so that its longer side is at most ``max_side``; never up."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def thumbnail_jpeg(image: Image) -> bytes:
    """A contact-sheet-sized JPEG of ``image``: a few kB per scene, however many scenes."""
    height, width = image.shape[:2]
    size = (THUMBNAIL_WIDTH, max(1, round(THUMBNAIL_WIDTH * height / width)))
    thumb = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return encode_jpeg(thumb, quality=_THUMBNAIL_QUALITY)


def spread(items: Sequence[_T], limit: int = SHEET_MAX_TILES) -> list[_T]:
    """At most ``limit`` of ``items``, evenly spread, first one included."""
    if len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[math.floor(i * step)] for i in range(limit)]


def nearest_to_middle(frames: Iterable[int], start: int, end: int) -> int | None:
    """The frame of ``frames`` in scene [``start``, ``end``) nearest its middle frame.

    None when there is none within a quarter of the scene's length of the middle: a
    keyframe that far off may show the neighbouring shot's fade or a different set-up.
    """
    middle = (start + end - 1) // 2
    inside = [frame for frame in frames if start <= frame < end]
    if not inside:
        return None
    best = min(inside, key=lambda frame: (abs(frame - middle), frame))
    return best if abs(best - middle) <= max(1, (end - start) // 4) else None


@dataclass(frozen=True)
class Candidate(Generic[_I]):
    """A frame kept as a possible keyframe: its number and its image, in whatever form
    the caller keeps it (the scan keeps the decoder's own frame, not yet converted)."""

    frame: int
    image: _I


class KeyframeSampler(Generic[_I]):
    """Keeps frames near the middle of every scene during the single detection pass.

    A cut is known only after the frames that follow it were seen, so the open scene
    keeps at most ``per_scene`` frames, evenly spaced from its start: when it has more,
    every other one goes and the spacing doubles. It holds about twice ``per_scene``
    frames whatever the length of the video, and no frame is decoded twice (seeking back
    for each scene's middle cost more than detection).

    ``offer`` takes a function that makes the image, called only for the frames kept:
    about ``per_scene + 4 log2(n / per_scene)`` of a scene of n frames (22 of 90), so
    that a costly conversion is paid for those alone. Not thread-safe: frames and cuts
    come from one thread.
    """

    def __init__(self, per_scene: int = CANDIDATES_PER_SCENE) -> None:
        self._per_scene = max(2, per_scene)
        self._candidates: list[Candidate[_I]] = []
        self._start: int | None = None  # first frame of the open scene
        self._stride = 1
        self._due = 0  # the next frame number to keep

    def offer(self, frame: int, image: Callable[[], _I]) -> None:
        """See frame number ``frame`` (in increasing order); keep ``image()`` if it is due."""
        if self._start is None:
            self._start = self._due = frame
        if frame < self._due:
            return
        self._candidates.append(Candidate(frame, image()))
        self._due = frame + self._stride
        if len(self._candidates) > self._per_scene:
            self._candidates = self._candidates[::2]
            self._stride *= 2
            self._due = self._candidates[-1].frame + self._stride

    def cut(self, frame: int) -> Candidate[_I] | None:
        """A scene starts at ``frame``: close the open one and return its keyframe.

        None when no kept frame lies close enough to the closed scene's middle, or when
        ``frame`` does not lie after the open scene's start (a detector reporting a cut
        out of order): the caller then finds that scene's keyframe another way.
        """
        start = self._start
        if start is None or frame <= start:
            return None
        closed = [c for c in self._candidates if c.frame < frame]
        self._candidates = [c for c in self._candidates if c.frame >= frame]
        self._start, self._stride = frame, 1
        self._due = self._candidates[-1].frame + 1 if self._candidates else frame
        best = nearest_to_middle((c.frame for c in closed), start, frame)
        return next((c for c in closed if c.frame == best), None)

    def pick(self, start: int, end: int) -> Candidate[_I] | None:
        """The kept frame nearest the middle of [``start``, ``end``), if any."""
        best = nearest_to_middle((c.frame for c in self._candidates), start, end)
        return next((c for c in self._candidates if c.frame == best), None)


def contact_sheet(tiles: Sequence[Tile]) -> Image:
    """A grid of ``tiles`` (BGR images), each with its caption, on a dark background."""
    tiles = spread(tiles)
    columns = min(len(tiles), max(1, math.ceil(math.sqrt(len(tiles)))), 6)
    rows = math.ceil(len(tiles) / columns)
    first_h, first_w = tiles[0].image.shape[:2]
    tile_height = max(1, round(THUMBNAIL_WIDTH * first_h / first_w))
    cell_w, cell_h = THUMBNAIL_WIDTH + _GAP, tile_height + _LABEL_HEIGHT + _GAP
    sheet = np.empty((rows * cell_h + _GAP, columns * cell_w + _GAP, 3), dtype=np.uint8)
    sheet[:] = _BACKGROUND
    for number, tile in enumerate(tiles):
        x = _GAP + (number % columns) * cell_w
        y = _GAP + (number // columns) * cell_h
        thumb = cv2.resize(tile.image, (THUMBNAIL_WIDTH, tile_height), interpolation=cv2.INTER_AREA)
        sheet[y : y + tile_height, x : x + THUMBNAIL_WIDTH] = thumb
        cv2.putText(
            sheet,
            tile.caption,
            (x + 4, y + tile_height + _LABEL_HEIGHT - 6),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (240, 240, 240),
            1,
            cv2.LINE_AA,
        )
    return sheet


@contextlib.contextmanager
def filled_folder(folder: Path) -> Iterator[Path]:
    """Yield ``folder`` (created if missing) to write into directly.

    For a folder that someone else publishes whole once the stage succeeded, such as
    vvflow's ``{output_dir}``. On error (or SIGTERM turned into SystemExit) the entries
    this run added are removed again; what the folder held before is left alone.
    """
    folder.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(folder))
    try:
        yield folder
    except BaseException:
        for name in set(os.listdir(folder)) - before:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        raise


@contextlib.contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` to fill; on success it replaces ``final``.

    On error (or SIGTERM turned into SystemExit) the temporary folder is removed, so
    ``final`` is either the previous complete set or the new complete set.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(final)
    # Not mkdtemp: its folder is private (0700), and keyframes are for everyone to read.
    staging = final.parent / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        yield staging
        if final.exists():
            # A folder rename cannot replace a non-empty folder: move the old set aside first.
            retired = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, retired / final.name)
            os.replace(staging, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_siblings(final: Path) -> None:
    # A stage killed with SIGKILL cannot clean up; stems are unique among the videos being
    # processed, so leftovers with this stem belong to a dead run of this very video.
    for pattern in (f".{final.name}.tmp-*", f".{final.name}.old-*"):
        for stale in final.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
