"""On-screen text with RapidOCR, whose ONNX models ship inside its wheel (no download)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from rapidocr import RapidOCR

Image = npt.NDArray[np.uint8]

MIN_SCORE = 0.6
# The detector misses small captions in small frames; upscaling to this height first
# costs little and finds them.
_MIN_HEIGHT = 480


@functools.cache
def _engine() -> RapidOCR:
    from rapidocr import RapidOCR  # noqa: PLC0415 - a slow import, paid only when text is read

    # Its INFO lines ("Using engine_name ...") would reach the stage's stderr.
    return RapidOCR(params={"Global.log_level": "critical"})


def read_text(image: Image) -> list[str]:
    """Lines of text read from a BGR ``image``, in reading order, confident ones only."""
    height = image.shape[0]
    if height < _MIN_HEIGHT:
        scale = _MIN_HEIGHT / height
        image = np.asarray(
            cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC),
            dtype=np.uint8,
        )
    result = _engine()(image)
    # With detection and recognition on (the default) this is a RapidOCROutput, whose
    # txts and scores are None when no text was found.
    texts, scores = getattr(result, "txts", None), getattr(result, "scores", None)
    if not texts or not scores:
        return []
    return [
        " ".join(str(text).split())
        for text, score in zip(texts, scores, strict=True)
        if float(score) >= MIN_SCORE and str(text).strip()
    ]


def unique_lines(lines: Iterable[str]) -> list[str]:
    """``lines`` without repeats (ignoring case and spacing), first spelling kept."""
    seen: dict[str, str] = {}
    for line in lines:
        key = " ".join(line.casefold().split())
        if key and key not in seen:
            seen[key] = line
    return list(seen.values())
