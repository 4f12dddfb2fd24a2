"""On-screen text: the gate finds text that is there and nothing in textures, noise, faces
or motion; each distinct caption is read once; the filter keeps what a person would
agree is on screen. Generated frames and short generated videos; RapidOCR's models
read the crops for real (about a tenth of a second each)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from tests.media import Caption as Burnt
from tests.media import make_video
from vvflow.stages.measure import Measured, SceneSpan, measure
from vvflow.stages.ocr import (
    Box,
    Caption,
    Line,
    Reading,
    TextReader,
    accept,
    blocks,
    crop_for_reading,
    gate_size,
    read_lines,
    text_regions,
)

Frame = npt.NDArray[np.uint8]
WIDTH, HEIGHT = 1280, 720


# -- generated frames (BGR, 1280x720) ----------------------------------------------------


def background(seed: int, colour: tuple[int, int, int] = (60, 90, 160)) -> Frame:
    """Smooth blotches of one colour, as make_video draws its segments."""
    blotches = np.random.default_rng(seed).uniform(0.4, 1.0, (6, 8)).astype(np.float32)
    shade = cv2.resize(blotches, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    return np.clip(shade[..., None] * np.array(colour, np.float32), 0, 255).astype(np.uint8)


def plain(value: int) -> Frame:
    return np.full((HEIGHT, WIDTH, 3), value, np.uint8)


def with_text(
    image: Frame,
    text: str,
    *,
    at: float = 0.85,
    size: float = 0.06,
    font: int = cv2.FONT_HERSHEY_SIMPLEX,
    colour: tuple[int, int, int] = (255, 255, 255),
    outline: tuple[int, int, int] | None = (0, 0, 0),
    left: float | None = None,
) -> Frame:
    """``text`` drawn with OpenCV: letters ``size`` times the height tall, centred (or
    from ``left`` times the width), the middle at ``at`` times the height."""
    (_, unit), _ = cv2.getTextSize("X", font, 1.0, 1)
    scale = size * HEIGHT / unit
    thickness = max(1, round(scale * 1.5))
    (text_w, text_h), _ = cv2.getTextSize(text, font, scale, thickness)
    x = (WIDTH - text_w) // 2 if left is None else round(left * WIDTH)
    letters = np.zeros((HEIGHT, WIDTH), np.uint8)
    cv2.putText(letters, text, (x, round(at * HEIGHT + text_h / 2)), font, scale, 255, thickness)
    image = image.copy()
    if outline is not None:  # the letters grown, under them
        image[cv2.dilate(letters, np.ones((5, 5), np.uint8)) > 0] = outline
    image[letters > 0] = colour
    return image


def with_pillow_text(
    image: Frame, text: str, *, at: float, pixels: int, colour: tuple[int, int, int]
) -> Frame:
    """``text`` in Pillow's own scalable font (another face than OpenCV's)."""
    picture = PILImage.fromarray(image)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=pixels)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    position = ((WIDTH - (right - left)) // 2, round(at * HEIGHT - (bottom - top) / 2 - top))
    draw.text(position, text, font=font, fill=colour)
    return np.asarray(picture).copy()


def wood(seed: int = 1) -> Frame:
    rng = np.random.default_rng(seed)
    y = np.mgrid[0:HEIGHT, 0:WIDTH][0].astype(np.float32)
    warp = rng.normal(0, 1, (HEIGHT // 40, WIDTH // 8)).astype(np.float32)
    grain = rng.normal(0, 1, (HEIGHT // 2, WIDTH // 32)).astype(np.float32)
    warp = cv2.resize(warp, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    grain = cv2.resize(grain, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    value = 0.55 + 0.15 * np.sin((y + 30 * warp) * 0.25) + 0.08 * grain
    return np.clip(value[..., None] * np.array([53, 120, 200], np.float32), 0, 255).astype(np.uint8)


def bricks(seed: int = 2) -> Frame:
    rng = np.random.default_rng(seed)
    image = plain(180)
    width, height = 80, 32
    for row in range(HEIGHT // height + 1):
        offset = (width // 2) * (row % 2)
        for column in range(-1, WIDTH // width + 2):
            x, y = column * width + offset, row * height
            colour = [
                int(rng.integers(30, 60)),
                int(rng.integers(50, 80)),
                int(rng.integers(130, 180)),
            ]
            cv2.rectangle(image, (x + 2, y + 2), (x + width - 2, y + height - 2), colour, -1)
    noise = rng.normal(0, 8, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def grid(step: int = 24) -> Frame:
    image = plain(230)
    for k in range(0, WIDTH, step):
        cv2.line(image, (k, 0), (k, HEIGHT), (40, 40, 40), 2)
    for k in range(0, HEIGHT, step):
        cv2.line(image, (0, k), (WIDTH, k), (40, 40, 40), 2)
    return image


def foliage(seed: int = 3, rows: tuple[int, int] = (0, HEIGHT)) -> Frame:
    """Leaves (small green ellipses) over a sky, filling ``rows``."""
    rng = np.random.default_rng(seed)
    image = np.full((HEIGHT, WIDTH, 3), (235, 200, 150), np.uint8)
    for _ in range(WIDTH * (rows[1] - rows[0]) // 60):
        centre = (int(rng.integers(0, WIDTH)), int(rng.integers(*rows)))
        axes = (int(rng.integers(3, 14)), int(rng.integers(2, 8)))
        colour = (int(rng.integers(10, 60)), int(rng.integers(60, 200)), int(rng.integers(10, 80)))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(image, centre, axes, angle, 0, 360, colour, -1, cv2.LINE_AA)
    return image


def noise(seed: int = 4, sigma: float = 60) -> Frame:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(128, sigma, (HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)


def face(seed: int = 5) -> Frame:
    """A drawn face: hair, skin, ears, eyes with pupils, brows, nose and mouth."""
    image = background(seed, (120, 140, 150))
    cx, cy = WIDTH // 2, HEIGHT // 2
    cv2.ellipse(image, (cx, cy - 40), (170, 200), 0, 180, 360, (30, 40, 60), -1, cv2.LINE_AA)
    cv2.ellipse(image, (cx, cy), (150, 200), 0, 0, 360, (140, 170, 220), -1, cv2.LINE_AA)
    for dx in (-60, 60):
        cv2.ellipse(image, (cx + dx, cy - 80), (38, 8), 0, 180, 360, (40, 50, 70), 4, cv2.LINE_AA)
        cv2.ellipse(image, (cx + dx, cy - 40), (32, 16), 0, 0, 360, (250, 250, 250), -1)
        cv2.circle(image, (cx + dx, cy - 40), 11, (60, 40, 20), -1, cv2.LINE_AA)
        cv2.circle(image, (cx + dx, cy - 40), 5, (0, 0, 0), -1, cv2.LINE_AA)
    for dx in (-140, 140):
        cv2.ellipse(image, (cx + dx, cy), (18, 40), 0, 0, 360, (130, 160, 210), -1, cv2.LINE_AA)
    cv2.line(image, (cx, cy - 30), (cx - 15, cy + 40), (100, 120, 170), 4, cv2.LINE_AA)
    cv2.ellipse(image, (cx, cy + 100), (60, 18), 0, 0, 180, (60, 60, 150), 6, cv2.LINE_AA)
    return image


def moving(step: int, seed: int = 6) -> Frame:
    """A ball and a box crossing a smooth background, ``step`` frames in."""
    image = background(seed, (100, 160, 80))
    cv2.circle(image, (100 + 60 * step, 400), 60, (30, 30, 200), -1, cv2.LINE_AA)
    cv2.rectangle(image, (900 - 40 * step, 150), (1000 - 40 * step, 260), (200, 200, 30), -1)
    return image


def gate_gray(image: Frame) -> Frame:
    """``image`` as the gate sees it: gray, GATE_WIDTH wide."""
    size = gate_size(image.shape[1], image.shape[0])
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), dtype=np.uint8)


# The text, and where its middle is (share of the height), in each frame with text.
WITH_TEXT: dict[str, tuple[Callable[[], Frame], str, float]] = {
    "lower third, white, outlined": (
        lambda: with_text(background(1), "Meet the team behind the rover"),
        "Meet the team behind the rover",
        0.85,
    ),
    "large title, bold face": (
        lambda: with_text(
            background(2, (160, 60, 40)),
            "OPEN DAY",
            at=0.5,
            size=0.16,
            font=cv2.FONT_HERSHEY_DUPLEX,
        ),
        "OPEN DAY",
        0.5,
    ),
    "small, at the top": (
        lambda: with_text(background(3), "Ask at the front desk", at=0.1, size=0.035),
        "Ask at the front desk",
        0.1,
    ),
    "dark on light": (
        lambda: with_text(
            plain(235),
            "Chapter two: the harbour",
            at=0.4,
            size=0.05,
            colour=(20, 20, 20),
            outline=None,
        ),
        "Chapter two: the harbour",
        0.4,
    ),
    "light on dark, left, italic": (
        lambda: with_text(
            plain(15),
            "Live from Lisbon",
            at=0.2,
            size=0.05,
            font=cv2.FONT_HERSHEY_COMPLEX | cv2.FONT_ITALIC,
            outline=None,
            left=0.05,
        ),
        "Live from Lisbon",
        0.2,
    ),
    "another font": (
        lambda: with_pillow_text(
            background(5, (40, 120, 60)),
            "Harvest festival tonight",
            at=0.7,
            pixels=44,
            colour=(255, 255, 255),
        ),
        "Harvest festival tonight",
        0.7,
    ),
    "another font, dark on light": (
        lambda: with_pillow_text(
            plain(220), "Tickets from 12 euros", at=0.3, pixels=32, colour=(30, 30, 30)
        ),
        "Tickets from 12 euros",
        0.3,
    ),
    "on a news band": (
        lambda: with_text(
            cv2.rectangle(background(7, (150, 150, 150)), (0, 580), (WIDTH, 660), (20, 20, 20), -1),
            "Markets close higher",
            at=0.86,
            size=0.045,
            outline=None,
            left=0.04,
        ),
        "Markets close higher",
        0.86,
    ),
    "lower third over foliage": (
        lambda: with_text(foliage(8), "Spring in the park"),
        "Spring in the park",
        0.85,
    ),
    "lower third over motion": (
        lambda: with_text(moving(3), "Goal in the last minute", size=0.05),
        "Goal in the last minute",
        0.85,
    ),
}

WITHOUT_TEXT: dict[str, Callable[[], Frame]] = {
    "wood": wood,
    "bricks": bricks,
    "grid": grid,
    "foliage": foliage,
    "a hedge under a sky": lambda: foliage(9, (500, 620)),
    "noise": noise,
    "faint noise": lambda: noise(sigma=20),
    "a face": face,
    "a moving ball and box": lambda: moving(0),
    "the same, later": lambda: moving(5),
    "a smooth background": lambda: background(9),
}


def words(text: str) -> str:
    return " ".join(text.casefold().split())


@pytest.fixture(scope="module")
def text_frames() -> dict[str, Frame]:
    return {name: make() for name, (make, _, _) in WITH_TEXT.items()}


@pytest.fixture(scope="module")
def textless_frames() -> dict[str, Frame]:
    return {name: make() for name, make in WITHOUT_TEXT.items()}


# -- the gate ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(WITH_TEXT))
def test_the_gate_finds_text_that_is_there(text_frames: dict[str, Frame], name: str) -> None:
    _, _, at = WITH_TEXT[name]
    gray = gate_gray(text_frames[name])

    regions = text_regions(gray)

    assert regions, name
    middle = at * gray.shape[0]
    assert any(box.y <= middle <= box.bottom for box in regions), (name, regions)


@pytest.mark.parametrize("name", list(WITHOUT_TEXT))
def test_the_gate_finds_nothing_in_textures_noise_faces_and_motion(
    textless_frames: dict[str, Frame], name: str
) -> None:
    assert text_regions(gate_gray(textless_frames[name])) == []


def test_lines_of_one_caption_make_one_block_and_separate_captions_two() -> None:
    image = with_text(background(6), "The Blender Foundation and", at=0.45)
    image = with_text(image, "Peach Project presents", at=0.56)
    image = with_text(image, "LIVE", at=0.08, size=0.05, left=0.85)

    found = blocks(text_regions(gate_gray(image)))

    assert len(found) == 2
    title = max(found, key=lambda block: block.box.width)
    assert title.box.y < 0.45 * 360 and title.box.bottom > 0.56 * 360


# -- reading -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def readings(text_frames: dict[str, Frame]) -> dict[str, list[Line]]:
    """What RapidOCR's models read in the crops around each frame's blocks."""
    read: dict[str, list[Line]] = {}
    for name, image in text_frames.items():
        gray = gate_gray(image)
        scale = image.shape[1] / gray.shape[1]
        read[name] = [
            line
            for block in blocks(text_regions(gray))
            for line in read_lines(
                crop_for_reading(image, block.box.scaled(scale), round(block.line_height * scale))
            )
        ]
    return read


@pytest.mark.parametrize("name", list(WITH_TEXT))
def test_text_that_is_there_is_read(readings: dict[str, list[Line]], name: str) -> None:
    _, text, _ = WITH_TEXT[name]
    assert words(text) in [words(line.text) for line in readings[name]], readings[name]
    assert all(line.score > 0.9 for line in readings[name] if words(line.text) == words(text))


def test_frames_without_text_give_no_captions_and_cost_no_reading(
    textless_frames: dict[str, Frame],
) -> None:
    with TextReader(WIDTH, HEIGHT) as reader:
        for number, image in enumerate(textless_frames.values()):
            for repeat in range(2):  # each seen twice, as a still shot would be
                frame = 2 * number + repeat

                def full(image: Frame = image) -> Frame:
                    raise AssertionError("a frame without text was asked for in full")

                reader.sample(frame, frame / 2, gate_gray(image), full)
        assert reader.captions() == []
    assert reader.counters.frames_sampled == 2 * len(WITHOUT_TEXT)
    assert reader.counters.frames_with_text == 0
    assert reader.counters.frames_read == 0


# -- the filter, fed readings as RapidOCR returns them -------------------------------------

LOWER_THIRD = Box(300, 580, 680, 60)


def reading(
    *lines: tuple[str, float], at: float = 1.0, seen: int = 2, box: Box = LOWER_THIRD
) -> Reading:
    """A block read once at ``at`` seconds and seen in ``seen`` sampled frames, half a
    second apart."""
    times = [at + 0.5 * k for k in range(seen)]
    frames = [round(time * 10) for time in times]
    return Reading(box, [Line(text, score) for text, score in lines], frames, times)


def texts(captions: list[Caption]) -> list[str]:
    return [caption.text for caption in captions]


@pytest.mark.parametrize(
    "lines",
    [
        [("1", 0.99)],
        [("Q", 0.97)],
        [("G", 0.95)],
        [("LE", 0.96)],
        [("4", 0.99), ("S", 0.98)],  # two lines of one block
        [("1 Q G", 0.97)],
        [("周", 0.99)],  # a lone Chinese character, read in a face
        [("■", 0.99)],
        [("口口口", 0.95)],  # a row of windows
        [("IIII", 0.9)],
        [("--", 0.99)],
    ],
)
def test_single_characters_fragments_and_symbols_are_not_captions(
    lines: list[tuple[str, float]],
) -> None:
    assert accept([reading(*lines, seen=4)]) == []


def test_a_caption_mixing_scripts_is_noise_and_one_in_another_script_must_recur() -> None:
    assert accept([reading(("Thanks 周 for watching", 0.97), seen=3)]) == []
    # Read well but seen once: a Chinese reading alone is not trusted, a Latin one is.
    assert accept([reading(("欢迎来到实验室", 0.99), seen=1)]) == []
    assert texts(accept([reading(("Welcome to the lab", 0.99), seen=1)])) == ["Welcome to the lab"]
    # Seen again: a caption in its own script counts.
    assert texts(accept([reading(("欢迎来到实验室", 0.97), seen=3)])) == ["欢迎来到实验室"]


def test_a_caption_counts_when_seen_twice_or_read_with_high_confidence() -> None:
    assert accept([reading(("anion", 0.8), seen=1)]) == []
    assert texts(accept([reading(("BNKSY", 0.8), seen=2)])) == ["BNKSY"]
    assert texts(accept([reading(("Exit", 0.97), seen=1)])) == ["Exit"]
    assert accept([reading(("Exit", 0.5), seen=5)]) == []  # below the line score


def test_full_width_forms_and_stray_symbols_are_cleaned() -> None:
    full_width = "".join(chr(ord(ch) + 0xFEE0) for ch in "Hello,world")  # as CJK fonts have
    (caption,) = accept([reading((f"■ {full_width} ■", 0.95))])
    assert caption.text == "Hello,world"


def test_a_caption_revealed_partially_then_fully_is_reported_once_in_full() -> None:
    captions = accept(
        [
            reading(("The Blender Foundat", 0.97), at=1.0, seen=1),
            reading(
                ("The Blender Foundation and", 0.99), ("Peach Project presen", 0.96), at=1.5, seen=1
            ),
            reading(
                ("The Blender Foundation and", 0.99),
                ("Peach Project present's", 0.98),
                at=2.0,
                seen=3,
            ),
        ]
    )

    (caption,) = captions
    assert caption.text == "The Blender Foundation and Peach Project present's"
    assert caption.first_s == 1.0 and caption.last_s == 3.0
    assert caption.sightings == 5


def test_each_line_read_partially_then_fully_keeps_its_full_spelling() -> None:
    upper, lower = Box(300, 300, 680, 50), Box(340, 360, 600, 50)
    captions = accept(
        [
            reading(("The Blender Foundat", 0.97), at=1.0, box=upper, seen=1),
            reading(("Peach Project presen", 0.96), at=1.5, box=lower, seen=1),
            reading(("The Blender Foundation and", 0.99), at=1.5, box=upper),
            reading(("Peach Project present's", 0.98), at=2.0, box=lower),
        ]
    )
    assert texts(captions) == ["The Blender Foundation and", "Peach Project present's"]


def test_two_spellings_of_one_caption_keep_the_best_scored() -> None:
    captions = accept(
        [
            reading(("Thanks for watchinq", 0.82), at=5.0),
            reading(("Thanks for watching", 0.99), at=9.0, box=Box(300, 100, 600, 60)),
        ]
    )
    (caption,) = captions
    assert caption.text == "Thanks for watching"
    assert (caption.first_s, caption.last_s, caption.sightings) == (5.0, 9.5, 4)
    assert caption.score == pytest.approx(0.99)


def test_captions_that_differ_in_their_numbers_stay_apart() -> None:
    captions = accept(
        [
            reading(("Question 1 of 10", 0.99), at=1.0),
            reading(("Question 2 of 10", 0.99), at=2.0),
            reading(("OPEN DAY 20", 0.95), at=5.0, seen=1),  # revealed, then whole
            reading(("OPEN DAY 2024", 0.99), at=5.5),
        ]
    )
    assert texts(captions) == ["Question 1 of 10", "Question 2 of 10", "OPEN DAY 2024"]


def test_captions_come_in_order_of_first_appearance() -> None:
    captions = accept(
        [
            reading(("Second caption", 0.99), at=4.0, box=Box(300, 100, 600, 60)),
            reading(("Third caption", 0.99), at=8.0),
            reading(("First caption", 0.99), at=1.0),
        ]
    )
    assert texts(captions) == ["First caption", "Second caption", "Third caption"]
    assert captions[0].as_json() == {
        "text": "First caption",
        "first_s": 1.0,
        "last_s": 1.5,
        "sightings": 2,
        "score": 0.99,
    }


# -- a short video: each caption read once, in order, where the scenes are -----------------

FPS = 10
CAPTIONS = (
    Burnt("Welcome to the open day", 0.3, 2.8),
    Burnt("Meet the rob", 3.5, 4.0),  # revealed ...
    Burnt("Meet the robotics team", 4.0, 6.0),  # ... then whole
)


@pytest.fixture(scope="module")
def captioned(tmp_path_factory: pytest.TempPathFactory) -> Measured:
    """7 s of 640x360 at 10 frames/s: three shots cut at 2.3 s and 4.7 s (the first
    caption runs over the first cut, the second over the second), a sliding square
    over every shot, and a last second without text."""
    video = make_video(
        tmp_path_factory.mktemp("captioned") / "captioned.mp4",
        seconds=7.0,
        width=640,
        height=360,
        fps=FPS,
        cuts=2,
        captions=CAPTIONS,
    )
    cuts = [0, 23, 47, 70]
    spans = [
        SceneSpan(number + 1, start, end, start / FPS, end / FPS)
        for number, (start, end) in enumerate(itertools.pairwise(cuts))
    ]
    return measure(video, spans)


def test_each_caption_is_reported_once_in_order_with_its_times(captioned: Measured) -> None:
    assert texts(captioned.captions) == ["Welcome to the open day", "Meet the robotics team"]
    welcome, team = captioned.captions
    assert 0.3 <= welcome.first_s <= 0.8 and 2.3 <= welcome.last_s < 2.8
    assert 3.5 <= team.first_s <= 4.0 and 5.5 <= team.last_s < 6.0
    assert welcome.sightings >= 4 and team.sightings >= 4
    assert min(welcome.score, team.score) > 0.9


def test_a_caption_seen_over_two_seconds_is_read_once(captioned: Measured) -> None:
    counters = captioned.ocr
    assert counters.frames_sampled == 15  # every half second: 5 in each shot
    assert counters.frames_with_text >= 10
    # The first caption once (over a cut too), the second once revealed and once whole.
    assert counters.regions_read == 3
    assert counters.frames_read == 3


def test_scenes_list_the_captions_shown_during_them(captioned: Measured) -> None:
    first, second, third = captioned.scenes
    assert texts(first.captions) == ["Welcome to the open day"]
    assert texts(second.captions) == ["Welcome to the open day", "Meet the robotics team"]
    assert texts(third.captions) == ["Meet the robotics team"]
    # The last second has no text: the gate passed none of its frames.
    assert third.ocr.frames_with_text == 3
    assert [scene.ocr.frames_sampled for scene in captioned.scenes] == [5, 5, 5]


def test_pictures_are_still_measured(captioned: Measured) -> None:
    for scene in captioned.scenes:
        assert 0.05 < scene.brightness < 0.95
        assert 0 < scene.motion < 0.05  # the sliding square
        assert scene.dominant_colors
