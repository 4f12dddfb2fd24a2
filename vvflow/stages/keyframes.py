"""Keyframe JPEGs and the contact sheet, written into a folder that appears whole or not at all."""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]

CONTACT_SHEET_NAME = "contact-sheet.jpg"
JPEG_QUALITY = 88
KEYFRAME_MAX_SIDE = 1280
SHEET_MAX_TILES = 300  # keeps the sheet well under JPEG's 65,535-pixel side limit
_TILE_WIDTH = 320
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


def encode_jpeg(image: Image, max_side: int = KEYFRAME_MAX_SIDE) -> bytes:
    """JPEG bytes of a BGR ``image``, shrunk so that its longer side is at most ``max_side``."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return bytes(buffer.tobytes())


def contact_sheet(tiles: Sequence[Tile]) -> Image:
    """A grid of ``tiles`` (BGR images), each with its caption, on a dark background."""
    if len(tiles) > SHEET_MAX_TILES:
        step = len(tiles) / SHEET_MAX_TILES
        tiles = [tiles[math.floor(i * step)] for i in range(SHEET_MAX_TILES)]
    columns = min(len(tiles), max(1, math.ceil(math.sqrt(len(tiles)))), 6)
    rows = math.ceil(len(tiles) / columns)
    first_h, first_w = tiles[0].image.shape[:2]
    tile_height = max(1, round(_TILE_WIDTH * first_h / first_w))
    cell_w, cell_h = _TILE_WIDTH + _GAP, tile_height + _LABEL_HEIGHT + _GAP
    sheet = np.empty((rows * cell_h + _GAP, columns * cell_w + _GAP, 3), dtype=np.uint8)
    sheet[:] = _BACKGROUND
    for number, tile in enumerate(tiles):
        x = _GAP + (number % columns) * cell_w
        y = _GAP + (number // columns) * cell_h
        thumb = cv2.resize(tile.image, (_TILE_WIDTH, tile_height), interpolation=cv2.INTER_AREA)
        sheet[y : y + tile_height, x : x + _TILE_WIDTH] = thumb
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
