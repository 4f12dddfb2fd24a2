"""The scan stage on real generated videos: shots, metadata, keyframes, bad input."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest
from scenedetect import ContentDetector, FrameTimecode  # type: ignore[import-untyped]

from tests.footage import Footage, make_footage
from tests.media import (
    PALETTE,
    PALETTE_NAMES,
    cut_frames,
    frame_total,
    make_truncated,
    make_video,
    segment_colour_names,
)
from tests.stage_support import other_lines, progress_of, run_stage
from vvflow.stages import STAGES
from vvflow.stages.command import Progress, report_progress
from vvflow.stages.scan import _Keyframes, _Shrink


def nearest_palette_colour(bgr: npt.NDArray[np.uint8]) -> str:
    """The name of the PALETTE colour whose hue the image's mean colour is closest to."""
    mean = bgr.reshape(-1, 3).mean(axis=0)[::-1]
    unit = mean / np.linalg.norm(mean)
    scores = [float(unit @ (np.array(c) / np.linalg.norm(c))) for c in PALETTE]
    return PALETTE_NAMES[int(np.argmax(scores))]


def scan(video: Path, output: Path, *extra: str) -> dict[str, Any]:
    code = STAGES["scan"]([str(video), str(output), *extra])
    assert code == 0
    document: dict[str, Any] = json.loads(output.read_text())
    return document


@pytest.fixture(autouse=True)
def _no_pipeline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VVFLOW_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("seconds", "fps", "cuts", "size", "suffix"),
    [
        (3.0, 10, 2, (160, 120), ".mp4"),
        (2.0, 25, 3, (320, 240), ".mkv"),
        (2.4, 24, 5, (160, 120), ".mov"),
    ],
)
def test_every_hard_cut_is_found_within_one_frame_and_no_other(
    tmp_path: Path,
    seconds: float,
    fps: int,
    cuts: int,
    size: tuple[int, int],
    suffix: str,
) -> None:
    video = make_video(
        tmp_path / f"cuts{suffix}",
        seconds=seconds,
        fps=fps,
        cuts=cuts,
        width=size[0],
        height=size[1],
    )
    expected = cut_frames(seconds=seconds, fps=fps, cuts=cuts)
    total = frame_total(seconds=seconds, fps=fps)

    document = scan(video, tmp_path / "cuts.analytic.json", "--min-scene-seconds", "0.2")

    scenes = document["scenes"]
    assert len(scenes) == cuts + 1
    found = [scene["start_frame"] for scene in scenes[1:]]
    assert all(abs(a - b) <= 1 for a, b in zip(found, expected, strict=True)), (found, expected)
    assert scenes[0]["start_frame"] == 0
    assert scenes[-1]["end_frame"] == total
    for before, after in itertools.pairwise(scenes):
        assert before["end_frame"] == after["start_frame"]
        assert before["end_s"] == after["start_s"]
    for scene, cut in zip(scenes[1:], expected, strict=True):
        assert scene["start_s"] == pytest.approx(cut / fps, abs=1.01 / fps)
    assert [scene["index"] for scene in scenes] == list(range(1, cuts + 2))


def test_video_without_cut_is_one_scene_spanning_it(tmp_path: Path) -> None:
    video = make_video(tmp_path / "still.mp4", seconds=2.0, fps=10)

    document = scan(video, tmp_path / "still.analytic.json")

    assert document["scene_count"] == 1
    (scene,) = document["scenes"]
    assert (scene["start_frame"], scene["end_frame"]) == (0, 20)
    assert (scene["start_s"], scene["end_s"]) == (0.0, 2.0)
    assert scene["start_timecode"] == "00:00:00.000"
    assert scene["end_timecode"] == "00:00:02.000"


def test_metadata_of_video_and_audio_streams(tmp_path: Path) -> None:
    video = make_video(
        tmp_path / "meta.mkv", seconds=2.0, width=320, height=240, fps=25, audio=True
    )

    document = scan(video, tmp_path / "meta.analytic.json")

    assert document["schema_version"] == 2
    assert document["source"] == {"path": str(video), "name": "meta.mkv", "stem": "meta"}
    assert document["container"]["format"] == "matroska,webm"
    assert document["container"]["size_bytes"] == video.stat().st_size
    assert document["duration_s"] == pytest.approx(2.0, abs=0.1)
    stream = document["video"]
    assert (stream["codec"], stream["width"], stream["height"]) == ("h264", 320, 240)
    assert stream["fps"] == 25.0
    assert stream["frame_count"] == 50
    (audio,) = document["audio_streams"]
    assert (audio["codec"], audio["sample_rate"], audio["channels"]) == ("aac", 48000, 1)
    assert document["detection"]["detector"] == "content"


def test_keyframes_go_straight_into_the_given_folder_named_relative_to_it(
    tmp_path: Path,
) -> None:
    video = make_video(tmp_path / "in" / "clip.mp4", seconds=3.0, cuts=2)
    workspace = tmp_path / "work"
    given = workspace / "keyframes.tmp"  # what vvflow makes of {output_dir}
    given.mkdir(parents=True)

    document = scan(video, workspace / "clip.analytic.json", "--keyframes-dir", str(given))

    assert document["schema_version"] == 2
    assert "keyframes_dir" not in document
    assert document["contact_sheet"] == "contact-sheet.jpg"
    assert [s["keyframe"] for s in document["scenes"]] == [
        "scene-001.jpg",
        "scene-002.jpg",
        "scene-003.jpg",
    ]
    names = sorted(p.name for p in given.iterdir())
    assert names == ["contact-sheet.jpg", "scene-001.jpg", "scene-002.jpg", "scene-003.jpg"]
    assert sorted(p.name for p in workspace.iterdir()) == ["clip.analytic.json", "keyframes.tmp"]
    # Published whole by one rename: the names in the JSON still hold.
    published = tmp_path / "root" / "keyframes" / "clip"
    published.parent.mkdir(parents=True)
    given.rename(published)
    for scene, colour in zip(document["scenes"], segment_colour_names(2), strict=True):
        assert scene["start_frame"] <= scene["keyframe_frame"] < scene["end_frame"]
        image = cv2.imread(str(published / scene["keyframe"]))
        assert image is not None
        assert image.shape == (120, 160, 3)
        assert nearest_palette_colour(image.astype(np.uint8)) == colour
    sheet = cv2.imread(str(published / document["contact_sheet"]))
    assert sheet is not None
    assert sheet.shape[1] > 2 * 160


def test_the_folder_comes_from_vvflow_output_dir_else_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = make_video(tmp_path / "clip.mp4", seconds=1.0)
    root = tmp_path / "root"
    work = root / "input" / "processing" / "host-1"
    work.mkdir(parents=True)
    monkeypatch.setenv("VVFLOW_ROOT", str(root))
    monkeypatch.setenv("VVFLOW_STEM", "clip-2")
    monkeypatch.setenv("VVFLOW_OUTPUT_DIR", str(work / "out-dir"))

    document = scan(video, work / "clip-2.analytic.json")
    assert document["scenes"][0]["keyframe"] == "scene-001.jpg"
    assert (work / "out-dir" / "scene-001.jpg").is_file()
    assert not (root / "keyframes").exists()

    # A pipeline of your own that gives no folder: where keyframes went before folder
    # outputs, <root>/keyframes/<stem>, replaced whole.
    monkeypatch.delenv("VVFLOW_OUTPUT_DIR")
    document = scan(video, work / "clip-2.analytic.json")
    assert document["contact_sheet"] == "contact-sheet.jpg"
    folder = root / "keyframes" / "clip-2"
    assert sorted(p.name for p in folder.iterdir()) == ["contact-sheet.jpg", "scene-001.jpg"]
    assert [p.name for p in (root / "keyframes").iterdir()] == ["clip-2"]


def test_a_failed_scan_takes_back_what_it_wrote_into_the_given_folder(tmp_path: Path) -> None:
    video = make_truncated(make_video(tmp_path / "t.mp4", seconds=3.0, cuts=2), tmp_path / "h.mp4")
    given = tmp_path / "given"
    given.mkdir()
    (given / "mine.txt").write_text("not the stage's\n")

    code = STAGES["scan"]([str(video), str(tmp_path / "h.json"), "--keyframes-dir", str(given)])

    assert code == 65
    assert [p.name for p in given.iterdir()] == ["mine.txt"]
    assert not (tmp_path / "h.json").exists()
    assert not (tmp_path / "keyframes").exists()


def test_by_hand_keyframes_go_next_to_output(tmp_path: Path) -> None:
    video = make_video(tmp_path / "hand.mp4", seconds=1.0)
    out = tmp_path / "out"

    document = scan(video, out / "hand.analytic.json")

    assert document["scenes"][0]["keyframe"] == "scene-001.jpg"
    assert (out / "keyframes" / "hand" / "scene-001.jpg").is_file()
    assert (out / "keyframes" / "hand" / document["contact_sheet"]).is_file()


def test_rerun_replaces_the_keyframe_set_and_clears_leftovers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    folder = out / "keyframes" / "v"
    document = scan(make_video(tmp_path / "v.mp4", seconds=3.0, cuts=2), out / "v.analytic.json")
    assert sorted(p.name for p in folder.glob("scene-*.jpg")) == [
        s["keyframe"] for s in document["scenes"]
    ]
    leftover = out / "keyframes" / ".v.tmp-999-dead"  # what a SIGKILLed run leaves
    leftover.mkdir()
    (leftover / "scene-001.jpg").write_bytes(b"half")

    scan(make_video(tmp_path / "v.mp4", seconds=1.0), out / "v.analytic.json")

    assert sorted(p.name for p in folder.iterdir()) == ["contact-sheet.jpg", "scene-001.jpg"]
    assert [p.name for p in (out / "keyframes").iterdir()] == ["v"]


def test_options_come_from_flags_else_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = make_video(tmp_path / "opt.mp4", seconds=3.0, cuts=2)
    monkeypatch.setenv("VVFLOW_SCAN_MIN_SCENE_SECONDS", "1.5")
    monkeypatch.setenv("VVFLOW_SCAN_DETECTOR", "adaptive")

    document = scan(video, tmp_path / "a.analytic.json")
    # Scenes of 1 s are shorter than the minimum: the second cut is the only one kept.
    assert [s["start_frame"] for s in document["scenes"]] == [0, 20]
    assert document["detection"]["detector"] == "adaptive"
    assert document["detection"]["min_scene_seconds"] == 1.5

    document = scan(
        video, tmp_path / "b.analytic.json", "--detector", "hash", "--min-scene-seconds", "0.3"
    )
    assert [s["start_frame"] for s in document["scenes"]] == [0, 10, 20]
    assert document["detection"] == {
        "detector": "hash",
        "threshold": 0.395,
        "min_scene_seconds": 0.3,
        "backend": "pyav",
    }


def test_cli_reports_progress_on_stderr_and_writes_the_same_output(tmp_path: Path) -> None:
    video = make_video(tmp_path / "cli.mp4", seconds=2.0, cuts=1)
    output = tmp_path / "cli.analytic.json"
    folder = tmp_path / "cli-keyframes"

    # No time limit between lines, so a 2 s video shows every 5 % step of its decoding.
    result = run_stage(
        "scan",
        *(video, output, "--keyframes-dir", folder),
        env={"VVFLOW_PROGRESS_SECONDS": "0"},
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert other_lines(result.stderr) == []
    fractions = progress_of(result.stderr)
    assert fractions[0] == 0.0
    assert fractions[-1] == 1.0
    assert all(after > before for before, after in itertools.pairwise(fractions)), fractions
    decoding = fractions[1:-1]
    assert len(decoding) >= 10, fractions  # from the decoded position, not just start and end
    assert all(0 < f < 1 for f in decoding)
    assert all(b - a >= 0.0499 for a, b in itertools.pairwise(decoding)), fractions
    document = json.loads(output.read_text())
    assert document["scene_count"] == 2
    assert sorted(p.name for p in folder.iterdir()) == [
        "contact-sheet.jpg",
        "scene-001.jpg",
        "scene-002.jpg",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cli-keyframes",
        "cli.analytic.json",
        "cli.mp4",
    ]
    # The same document as a run without a progress line, keyframes included: frames
    # and cuts reach the sampler from one thread, in the same order every run.
    assert document == scan(video, tmp_path / "again.analytic.json")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_progress_lines_wait_for_half_a_second_and_five_percent(
    capfd: pytest.CaptureFixture[str],
) -> None:
    clock = [0.0]
    progress = Progress(clock=lambda: clock[0])  # the default limits: no VVFLOW_* here
    written = []
    for clock[0], fraction in [
        (0.0, 0.0),  # the first update is written
        (0.1, 0.5),  # too soon
        (0.7, 0.52),
        (0.8, 0.9),  # too soon
        (5.0, 0.55),  # too small a step
        (5.1, 0.6),
        (5.2, 0.99),  # too soon
    ]:
        written.append(progress.update(fraction, "decoding"))
    report_progress(1.7, "  two\nlines ")
    report_progress(float("nan"))
    report_progress(-1, "x" * 200)

    assert written == [True, False, True, False, False, True, False]
    assert capfd.readouterr().err.splitlines() == [
        "vvflow:progress 0.000 decoding",
        "vvflow:progress 0.520 decoding",
        "vvflow:progress 0.600 decoding",
        "vvflow:progress 1.000 two lines",
        "vvflow:progress 0.000",
        "vvflow:progress 0.000 " + "x" * 80,
    ]


def _truncated_mp4(tmp_path: Path) -> Path:
    return make_truncated(make_video(tmp_path / "t.mp4", seconds=3.0), tmp_path / "half.mp4")


def _truncated_mkv(tmp_path: Path) -> Path:
    return make_truncated(make_video(tmp_path / "t.mkv", seconds=3.0), tmp_path / "half.mkv")


def _zero_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "empty.mp4"
    path.touch()
    return path


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    return path


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "gone.mp4"


def _audio_only(tmp_path: Path) -> Path:
    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 48000), dtype=np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 48000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(
    ("make_input", "reason"),
    [
        (_truncated_mp4, "truncated"),
        (_truncated_mkv, "truncated"),
        (_zero_bytes, "empty file"),
        (_text_file, "not a readable video"),
        (_missing, "no such file"),
        (_audio_only, "no video stream"),
    ],
)
def test_bad_input_exits_65_with_one_clear_line(
    tmp_path: Path, make_input: Callable[[Path], Path], reason: str
) -> None:
    video = make_input(tmp_path)
    output = tmp_path / "out" / "bad.analytic.json"

    result = run_stage("scan", video, output)

    assert result.returncode == 65
    assert result.stdout == ""
    lines = other_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert result.stderr.splitlines()[-1] == lines[0]  # the last line: what vvflow reports
    assert 1.0 not in progress_of(result.stderr)
    assert lines[0].startswith("vvflow stage scan: bad input: ")
    assert reason in lines[0]
    assert not output.exists()
    assert not (tmp_path / "out" / "keyframes").exists() or not any(
        (tmp_path / "out" / "keyframes").rglob("*")
    )


def test_usage_error_exits_2(tmp_path: Path) -> None:
    assert run_stage("scan", tmp_path / "only-one-argument").returncode == 2
    result = run_stage("scan", "a.mp4", "b.json", env={"VVFLOW_SCAN_DETECTOR": "nope"})
    assert result.returncode == 2
    assert "unknown detector 'nope'" in result.stderr


# -- the same cuts as the OpenCV backend found, from PyAV's frames ---------------------

# Short videos that look like footage (texture, grain, a panning camera, a moving
# object; CABAC and B-frames), made once per module: one per case the detectors could
# tell apart if the frames they see changed.
FOOTAGE: dict[str, dict[str, Any]] = {
    "hard": {"seconds": 4, "cuts": 5},
    "fades": {"seconds": 4, "cuts": 3, "fades": (1, 3), "fade_frames": 9, "seed": 2},
    "flashes": {"seconds": 4, "cuts": 2, "flashes": (20, 70, 100), "seed": 3},
    # 29.97 fps, and a whole shrinking factor of 5 (chroma taken at uneven places).
    "ntsc": {
        "seconds": 3,
        "width": 640,
        "height": 360,
        "fps": Fraction(30000, 1001),
        "cuts": 3,
        "seed": 4,
    },
    # Cinemascope 640x272 in Matroska: 272 / 5 is not whole (bilinear between rows).
    "scope": {"seconds": 3, "width": 640, "height": 272, "fps": 24, "cuts": 3, "seed": 5},
    "phone": {"seconds": 3, "cuts": 2, "rotation": 90, "seed": 6},  # shot upright
    "grain": {"seconds": 3, "fps": 25, "cuts": 3, "grain": 30, "seed": 7},
}
_SUFFIX = {"scope": ".mkv"}

# Where the scan put the cuts with PySceneDetect's OpenCV backend (vvflow 0.x before
# PyAV decoded): every hard cut where the generator put it; fades and flashes where
# the detectors place them (a flash is a cut to the content detector, as it was).
EXPECTED_CUTS: list[tuple[str, str, list[int]]] = [
    ("hard", "content", [20, 40, 60, 80, 100]),
    ("hard", "adaptive", [20, 40, 60, 80, 100]),
    ("hard", "hash", [20, 40, 60, 80, 100]),
    ("hard", "threshold", []),
    ("fades", "content", [28, 60, 89]),
    ("fades", "adaptive", [60]),
    ("fades", "threshold", [30, 90]),
    ("fades", "hash", [29, 60, 89]),
    ("flashes", "content", [20, 40, 70, 102]),
    ("flashes", "adaptive", [40, 80]),
    ("ntsc", "content", [22, 45, 68]),
    ("scope", "content", [18, 36, 54]),
    ("scope", "hash", [18, 36, 54]),
    ("phone", "content", [30, 60]),
    ("grain", "content", [19, 38, 56]),
    ("grain", "hash", [19, 38, 56]),
]


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Footage]:
    folder = tmp_path_factory.mktemp("footage")
    made: dict[str, Footage] = {}

    def get(name: str) -> Footage:
        if name not in made:
            arguments = {"width": 320, "height": 180, "fps": 30, **FOOTAGE[name]}
            made[name] = make_footage(folder / f"{name}{_SUFFIX.get(name, '.mp4')}", **arguments)
        return made[name]

    return get


@pytest.mark.parametrize(("name", "detector", "expected"), EXPECTED_CUTS)
def test_cuts_stay_where_the_opencv_backend_put_them(
    tmp_path: Path,
    footage: Callable[[str], Footage],
    name: str,
    detector: str,
    expected: list[int],
) -> None:
    video = footage(name)
    if name in {"hard", "ntsc", "scope", "phone", "grain"} and detector != "threshold":
        assert expected == video.cuts  # hard cuts only: all of them, exactly

    document = scan(video.path, tmp_path / "a.json", "--detector", detector)

    scenes = document["scenes"]
    assert [s["start_frame"] for s in scenes[1:]] == expected
    assert document["video"]["frame_count"] == video.frames
    assert (scenes[0]["start_frame"], scenes[-1]["end_frame"]) == (0, video.frames)
    for scene in scenes:
        assert scene["start_s"] == round(scene["start_frame"] / float(video.fps), 3)
        assert scene["start_frame"] <= scene["keyframe_frame"] < scene["end_frame"]
    assert document["detection"]["backend"] == "pyav"


def test_ntsc_timecodes_count_29_97_frames_a_second(
    tmp_path: Path, footage: Callable[[str], Footage]
) -> None:
    document = scan(footage("ntsc").path, tmp_path / "a.json")

    assert document["video"]["fps"] == 29.97
    third = document["scenes"][3]
    assert third["start_frame"] == 68
    assert third["start_s"] == 2.269  # 68 * 1001 / 30000
    assert third["start_timecode"] == "00:00:02.269"
    assert document["scenes"][-1]["end_timecode"] == "00:00:03.003"  # 90 frames


def test_keyframes_of_a_phone_video_stand_upright(
    tmp_path: Path, footage: Callable[[str], Footage]
) -> None:
    folder = tmp_path / "k"

    document = scan(footage("phone").path, tmp_path / "a.json", "--keyframes-dir", str(folder))

    assert (document["video"]["width"], document["video"]["height"]) == (320, 180)  # stored
    for scene in document["scenes"]:
        image = cv2.imread(str(folder / scene["keyframe"]))
        assert image is not None
        assert image.shape == (320, 180, 3)  # shown: turned a quarter anticlockwise
    sheet = cv2.imread(str(folder / "contact-sheet.jpg"))
    assert sheet is not None
    assert sheet.shape[0] > sheet.shape[1] / 3  # three portrait tiles in a row


def _opencv_detection_frames(video: Path) -> list[npt.NDArray[np.uint8]]:
    """The frames PySceneDetect's SceneManager gave its detectors with the OpenCV
    backend: OpenCV's BGR frames (upright), shrunk by a whole factor, bilinear."""
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        height, width = image.shape[:2]
        factor = max(1, max(width, height) // 128)
        if factor > 1:
            size = (round(width / factor), round(height / factor))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        frames.append(np.asarray(image, dtype=np.uint8))
    return frames


def _detection_frames(video: Path, *, exact: bool) -> list[npt.NDArray[np.uint8]]:
    frames = []
    shrink = None
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            shrink = shrink or _Shrink(frame, exact=exact)
            small = shrink(frame)
            assert small is not None
            frames.append(small)
    return frames


def _tagged_video(path: Path, pix_fmt: str, colorspace: int = 2, color_range: int = 0) -> Path:
    """Four frames of colour gradients and a dark block in ``pix_fmt``, tagged with
    FFmpeg's colour space and range numbers (1: BT.709; range 2: full)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, pix_fmt
        stream.codec_context.colorspace = colorspace
        stream.codec_context.color_range = color_range
        for number in range(4):
            image = np.empty((240, 320, 3), np.uint8)
            image[:, :, 0] = np.linspace(30, 220, 320)[None, :]
            image[:, :, 1] = 50 + 30 * number
            image[:, :, 2] = np.linspace(40, 200, 240)[:, None]
            image[60:120, 100:200] = (12, 14, 10)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = number, Fraction(1, 10)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda f, p: f("hard").path, id="320x180-halved"),
        pytest.param(lambda f, p: f("ntsc").path, id="640x360-fifth"),
        pytest.param(lambda f, p: f("scope").path, id="640x272-uneven"),
        pytest.param(lambda f, p: f("phone").path, id="rotated"),
        pytest.param(lambda f, p: _tagged_video(p / "j.mp4", "yuvj420p", 2, 2), id="full-range"),
        pytest.param(lambda f, p: _tagged_video(p / "709.mp4", "yuv420p", 1, 1), id="bt709"),
        pytest.param(lambda f, p: _tagged_video(p / "422.mkv", "yuv422p"), id="4:2:2"),
        pytest.param(lambda f, p: _tagged_video(p / "444.mkv", "yuv444p"), id="4:4:4"),
    ],
)
def test_detectors_see_opencvs_frames_exactly_or_within_two_levels(
    tmp_path: Path,
    footage: Callable[[str], Footage],
    make: Callable[[Callable[[str], Footage], Path], Path],
) -> None:
    video = make(footage, tmp_path)
    reference = _opencv_detection_frames(video)

    exact = _detection_frames(video, exact=True)
    quick = _detection_frames(video, exact=False)

    assert len(exact) == len(quick) == len(reference)
    for before, same, near in zip(reference, exact, quick, strict=True):
        assert np.array_equal(same, before)  # what the hash detector gets
        assert near.shape == before.shape
        difference = np.abs(near.astype(np.int16) - before)
        # Within 2 levels but where a channel clips between the 2 x 2 pixels averaged.
        assert np.mean(difference <= 2) > 0.995, np.max(difference)
    # The content detector's score, which weighs hue, saturation and brightness.
    assert _content_scores(quick) == pytest.approx(_content_scores(reference), abs=1.0)


def _content_scores(frames: list[npt.NDArray[np.uint8]]) -> list[float]:
    detector = ContentDetector()
    rate = Fraction(30)
    scores = []
    for number, image in enumerate(frames):
        detector.process_frame(FrameTimecode(number, rate), image)
        scores.append(float(detector._frame_score or 0.0))
    return scores


def test_a_large_video_keeps_shrunk_frames_and_writes_1280_keyframes(tmp_path: Path) -> None:
    video = make_video(tmp_path / "big.mp4", seconds=1.0, fps=6, cuts=1, width=2048, height=1152)
    folder = tmp_path / "k"

    document = scan(video, tmp_path / "big.json", "--keyframes-dir", str(folder))

    assert [s["start_frame"] for s in document["scenes"]] == [0, 3]
    for scene, colour in zip(document["scenes"], segment_colour_names(1), strict=True):
        image = cv2.imread(str(folder / scene["keyframe"]))
        assert image is not None
        assert image.shape == (720, 1280, 3)
        assert nearest_palette_colour(image.astype(np.uint8)) == colour


def test_a_scene_not_seen_closing_gets_its_keyframe_by_seeking(
    tmp_path: Path, footage: Callable[[str], Footage]
) -> None:
    video = footage("hard")
    scene = {"index": 1, "start_frame": 40, "end_frame": 60, "start_timecode": "00:00:01.333"}

    with _Keyframes(tmp_path, video.path) as keyframes:  # nothing sampled: seek
        tiles = keyframes.finish([scene], video.fps)

    assert scene["keyframe"] == "scene-001.jpg"
    assert scene["keyframe_frame"] == 49  # the middle frame
    assert scene["keyframe_s"] == round(49 / 30, 3)
    saved = cv2.imread(str(tmp_path / "scene-001.jpg"))
    middle = _opencv_frame(video.path, 49)
    assert saved is not None
    assert np.mean(np.abs(saved.astype(np.int16) - middle)) < 3  # that frame, as a JPEG
    assert len(tiles) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene-001.jpg"]


def _opencv_frame(video: Path, number: int) -> npt.NDArray[np.uint8]:
    capture = cv2.VideoCapture(str(video))
    for _ in range(number + 1):
        ok, image = capture.read()
        assert ok
    return np.asarray(image, dtype=np.uint8)


def _uneven_video(path: Path) -> Path:
    """A variable frame rate video: 30 frames 33 ms apart, then 30 frames 67 ms apart;
    the colour changes at the 31st frame, 0.99 s in."""
    times = [33 * i for i in range(30)] + [990 + 67 * i for i in range(30)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for number, milliseconds in enumerate(times):
            image = np.empty((120, 160, 3), np.uint8)
            image[:] = PALETTE[0] if number < 30 else PALETTE[1]
            image[10:30, number * 2 : number * 2 + 20] = 90
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = milliseconds, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_uneven_frame_times_give_the_same_frame_numbers_and_times_as_before(
    tmp_path: Path,
) -> None:
    document = scan(_uneven_video(tmp_path / "vfr.mp4"), tmp_path / "vfr.json")

    # As the OpenCV-backed scan gave them: a frame's number is its time at the average
    # rate (60 frames in 2.9 s), the last scene ends at the frame count.
    assert document["video"]["fps"] == 20.702
    assert document["video"]["frame_count"] == 60
    assert [
        (s["start_frame"], s["end_frame"], s["start_s"], s["end_s"]) for s in document["scenes"]
    ] == [(0, 20, 0.0, 0.99), (20, 60, 0.99, 2.898)]
    assert document["scenes"][1]["start_timecode"] == "00:00:00.990"
