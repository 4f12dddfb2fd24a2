"""``vvflow stage summarize ANALYTIC OUTPUT``: what each scene looks, moves and sounds like,
the text on screen, a sentence per scene and a summary of the whole video.

The texts are deterministic, built from the measurements, unless an OpenAI-compatible
chat endpoint is configured and answers; the JSON says which wrote them. The LLM is
shown each scene's keyframe, found in ``--keyframes-dir`` (the built-in pipeline passes
``{scan_dir}``, the scan's published keyframes folder), else ``$VVFLOW_STAGE_SCAN_DIR``,
else where a scan by hand puts it (``keyframes/<stem>`` under ``$VVFLOW_ROOT``, the root
above ``analytic/``, or next to ANALYTIC).

Progress (``vvflow:progress`` lines on stderr, see ``command.py``): the share of the
scenes' frames measured (0 to 0.85, at the sampled and OCR frames), then each LLM
request, at most every 0.5 s and 5 %; 1 when the output is written.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from vvflow.stages.command import (
    BadInput,
    Progress,
    add_io_arguments,
    env_default,
    read_json_object,
    run_stage,
    write_json,
)
from vvflow.stages.llm import (
    DETERMINISTIC,
    LLMSettings,
    LLMUnavailable,
    Message,
    add_llm_arguments,
    chat,
    image_part,
    text_part,
)
from vvflow.stages.measure import SceneMeasures, SceneSpan, measure
from vvflow.stages.probe import check_readable
from vvflow.stages.prose import duration_words, first_sentence, join_words, quote

#: 2: ``scenes[].keyframe`` is named relative to the keyframes folder, as in the scan.
SCHEMA_VERSION = 2
ANALYTIC = "analytic JSON (the scan stage's output)"

_SCENE_PROMPT = (
    "You write catalogue descriptions of video scenes. Answer with exactly one plain "
    "sentence of at most 30 words describing what the scene shows, no preamble."
)
# Shares of the run, for progress: measuring the pictures (and reading their text) is
# nearly all of it without an LLM; the LLM's requests come last.
_PICTURES_SHARE = 0.85
_LLM_FROM = 0.9

_SUMMARY_PROMPT = (
    "You write catalogue summaries of videos. Answer with two or three plain sentences "
    "summarising the whole video, no preamble, no list."
)


def main(argv: list[str]) -> int:
    """Run the summarize stage with command-line arguments ``argv``; return the exit code."""
    args = _parser().parse_args(argv)
    settings = LLMSettings.from_args(args)

    def work() -> None:
        document = summarize(
            args.analytic, video=args.video, settings=settings, keyframes_dir=args.keyframes_dir
        )
        write_json(args.output, document)

    return run_stage("summarize", work)


def summarize(
    analytic_path: Path,
    *,
    video: Path | None = None,
    settings: LLMSettings | None = None,
    keyframes_dir: Path | None = None,
) -> dict[str, Any]:
    """Measure and describe every scene of the scan in ``analytic_path``.

    The video is ``video``, else ``$VVFLOW_VIDEO``, else the path the scan recorded.
    Keyframes (for the LLM) are looked up in ``keyframes_dir``, else where a scan by
    hand puts them.
    """
    settings = settings or LLMSettings()
    progress = Progress()
    progress.update(0.0, "reading the scan")
    analytic = read_json_object(analytic_path, ANALYTIC)
    spans = _spans(analytic, analytic_path)
    video = video or _recorded_video(analytic, analytic_path)
    check_readable(video)

    def measured(share: float, what: str) -> None:
        progress.update(share * _PICTURES_SHARE, f"measuring {what}")

    measures = measure(video, spans, measured)
    has_audio = bool(analytic.get("audio_streams"))
    scenes = [
        _scene_record(scene, result)
        for scene, result in zip(analytic["scenes"], measures.scenes, strict=True)
    ]
    on_screen = [caption.text for caption in measures.captions]
    for scene in scenes:
        scene["description"] = describe_scene(scene, len(scenes))
    summary = summarize_video(analytic, scenes, on_screen, has_audio=has_audio)

    generator = DETERMINISTIC
    reason: str | None = "not configured (no base URL or model)"
    if settings.configured:
        try:
            keyframes = _keyframe_folders(analytic_path, analytic, keyframes_dir)
            descriptions = []
            for number, scene in enumerate(scenes):
                share = _LLM_FROM + (1 - _LLM_FROM) * number / (len(scenes) + 1)
                progress.update(share, f"asking the LLM about scene {scene['index']}")
                descriptions.append(_llm_scene(settings, scene, len(scenes), keyframes))
            progress.update(
                _LLM_FROM + (1 - _LLM_FROM) * len(scenes) / (len(scenes) + 1),
                "asking the LLM for the summary",
            )
            summary = _llm_summary(settings, analytic, scenes, descriptions, on_screen)
        except LLMUnavailable as error:
            reason = str(error)
        else:
            for scene, description in zip(scenes, descriptions, strict=True):
                scene["description"] = description
            generator, reason = settings.generator, None

    source = _object(analytic, "source")
    return {
        "schema_version": SCHEMA_VERSION,
        "source": {
            "analytic": str(analytic_path.resolve()),
            "video": str(video.resolve()),
            "name": source.get("name", video.name),
            "stem": env_default("VVFLOW_STEM") or source.get("stem", video.stem),
        },
        "duration_s": analytic.get("duration_s"),
        "scene_count": len(scenes),
        "has_audio": has_audio,
        "on_screen_text": on_screen,
        "captions": [caption.as_json() for caption in measures.captions],
        "ocr": measures.ocr.as_json(),
        "summary": summary,
        "generator": generator,
        "llm": {**settings.describe(), "used": reason is None, "fallback_reason": reason},
        "scenes": scenes,
    }


def _spans(analytic: dict[str, Any], path: Path) -> list[SceneSpan]:
    scenes = analytic.get("scenes")
    if not isinstance(scenes, list) or not scenes:
        raise BadInput(f"{path}: not an {ANALYTIC}: no 'scenes' list")
    spans: list[SceneSpan] = []
    for number, scene in enumerate(scenes, 1):
        try:
            span = SceneSpan(
                index=int(scene["index"]),
                start_frame=int(scene["start_frame"]),
                end_frame=int(scene["end_frame"]),
                start_s=float(scene["start_s"]),
                end_s=float(scene["end_s"]),
            )
        except (KeyError, TypeError, ValueError):
            raise BadInput(
                f"{path}: not an {ANALYTIC}: scene {number} lacks index, frames or times"
            ) from None
        if span.end_frame <= span.start_frame or (spans and span.start_frame < spans[-1].end_frame):
            raise BadInput(f"{path}: not an {ANALYTIC}: scene {number} has bad frame bounds")
        spans.append(span)
    return spans


def _object(document: dict[str, Any], key: str) -> dict[str, Any]:
    value = document.get(key)
    return value if isinstance(value, dict) else {}


def _recorded_video(analytic: dict[str, Any], path: Path) -> Path:
    from_env = env_default("VVFLOW_VIDEO")
    if from_env:
        return Path(from_env)
    source = analytic.get("source")
    if isinstance(source, dict) and isinstance(source.get("path"), str):
        return Path(source["path"])
    raise BadInput(f"{path}: not an {ANALYTIC}: no source.path, and no --video given")


def _keyframe_folders(
    analytic_path: Path, analytic: dict[str, Any], given: Path | None
) -> list[Path]:
    """Folders the scan's keyframe names may be relative to, most likely first: the one
    given, the keyframes folder of a scan by hand, then the roots themselves (an analytic
    JSON of schema 1, from before an upgrade, named keyframes relative to the root)."""
    roots = []
    root = env_default("VVFLOW_ROOT")
    if root:
        roots.append(Path(root))
    folder = analytic_path.resolve().parent
    if folder.name == "analytic":  # <root>/analytic/<stem>.analytic.json
        roots.append(folder.parent)
    roots.append(folder)
    source = _object(analytic, "source")
    recorded = source.get("stem") if isinstance(source.get("stem"), str) else None
    stem = env_default("VVFLOW_STEM") or recorded or analytic_path.name.split(".")[0]
    guesses = [*(base / "keyframes" / stem for base in roots), *roots]
    return [given, *guesses] if given is not None else guesses


def _scene_record(scene: dict[str, Any], result: SceneMeasures) -> dict[str, Any]:
    return {
        "index": scene["index"],
        "start_s": scene["start_s"],
        "end_s": scene["end_s"],
        "duration_s": round(float(scene["end_s"]) - float(scene["start_s"]), 3),
        "start_timecode": scene.get("start_timecode"),
        "end_timecode": scene.get("end_timecode"),
        "keyframe": scene.get("keyframe"),
        "brightness": result.brightness,
        "brightness_label": brightness_label(result.brightness),
        "motion": result.motion,
        "motion_label": motion_label(result.motion),
        "dominant_colors": [
            {"name": name, "share": share} for name, share in result.dominant_colors
        ],
        "audio_loudness_dbfs": result.loudness_dbfs,
        "audio_label": loudness_label(result.loudness_dbfs),
        "on_screen_text": [caption.text for caption in result.captions],
        "ocr": result.ocr.as_json(),
        "description": "",
    }


def brightness_label(value: float) -> str:
    """``dark``, ``dim`` or ``bright`` for a mean luma in 0..1."""
    if value < 0.25:
        return "dark"
    return "dim" if value < 0.45 else "bright"


def motion_label(value: float) -> str:
    """``static``, ``low``, ``moderate`` or ``high`` for a mean frame difference in 0..1."""
    if value < 0.005:
        return "static"
    if value < 0.03:
        return "low"
    return "moderate" if value < 0.08 else "high"


def loudness_label(dbfs: float | None) -> str | None:
    """``silent``, ``quiet``, ``moderate`` or ``loud`` for an RMS level; None without audio."""
    if dbfs is None:
        return None
    if dbfs < -60:
        return "silent"
    if dbfs < -35:
        return "quiet"
    return "moderate" if dbfs < -18 else "loud"


_MOTION_WORDS = {
    "static": "no visible motion",
    "low": "little motion",
    "moderate": "some motion",
    "high": "a lot of motion",
}


def describe_scene(scene: dict[str, Any], scene_count: int) -> str:
    """One deterministic sentence about a scene record."""
    colours = [c["name"] for c in scene["dominant_colors"]]
    if not colours:
        colour_words = "in mixed colours"
    elif len(colours) == 1 or scene["dominant_colors"][0]["share"] >= 0.75:
        colour_words = f"mostly {colours[0]}"
    else:
        colour_words = f"mainly {join_words(colours[:2])}"
    extras = [_MOTION_WORDS[scene["motion_label"]]]
    audio = scene["audio_label"]
    if audio == "silent":
        extras.append("no audible sound")
    elif audio is not None:
        extras.append(f"{audio} sound")
    if scene["on_screen_text"]:
        shown = ", ".join(quote(line) for line in scene["on_screen_text"][:3])
        extras.append(f"the on-screen text {shown}")
    where = (
        f"Scene {scene['index']} of {scene_count} "
        f"({scene['start_timecode']} to {scene['end_timecode']}, {scene['duration_s']:.1f} s)"
    )
    return (
        f"{where} is a {scene['brightness_label']} shot, {colour_words}, with {join_words(extras)}."
    )


def video_colours(scenes: list[dict[str, Any]], limit: int = 3) -> list[str]:
    """The colours that cover most of the video, weighting scenes by their duration."""
    weights: Counter[str] = Counter()
    for scene in scenes:
        for colour in scene["dominant_colors"]:
            weights[colour["name"]] += colour["share"] * scene["duration_s"]
    return [name for name, _ in weights.most_common(limit)]


def summarize_video(
    analytic: dict[str, Any],
    scenes: list[dict[str, Any]],
    on_screen: list[str],
    *,
    has_audio: bool,
) -> str:
    """One deterministic sentence about the whole video."""
    duration = float(analytic.get("duration_s") or scenes[-1]["end_s"])
    stream = _object(analytic, "video")
    size = f"{stream['width']}x{stream['height']} " if stream.get("width") else ""
    count = len(scenes)
    shape = "a single scene" if count == 1 else f"{count} scenes averaging {duration / count:.1f} s"
    parts = [f"A {size}video of {duration_words(duration)} in {shape}"]
    colours = video_colours(scenes)
    if colours:
        parts.append(f"mostly {join_words(colours)}")
    moving = Counter(scene["motion_label"] for scene in scenes).most_common(1)[0][0]
    sound = "sound" if has_audio else "no audio"
    parts.append(f"with {_MOTION_WORDS[moving]} and {sound}")
    text = ", ".join(parts)
    if on_screen:
        text += f"; on-screen text reads {', '.join(quote(line) for line in on_screen[:4])}"
    return text + "."


def _llm_scene(
    settings: LLMSettings, scene: dict[str, Any], scene_count: int, roots: list[Path]
) -> str:
    facts = [
        f"Scene {scene['index']} of {scene_count}, {scene['start_timecode']} to "
        f"{scene['end_timecode']} ({scene['duration_s']:.1f} s).",
        f"Measured: {scene['brightness_label']} (mean luma {scene['brightness']}), "
        f"motion {scene['motion_label']}, colours "
        f"{', '.join(c['name'] for c in scene['dominant_colors']) or 'mixed'}"
        + (f", audio {scene['audio_label']}" if scene["audio_label"] else ", no audio")
        + ".",
    ]
    if scene["on_screen_text"]:
        facts.append("On-screen text: " + "; ".join(quote(t, 80) for t in scene["on_screen_text"]))
    content: list[Message] = [text_part(" ".join(facts))]
    keyframe = _find_keyframe(scene.get("keyframe"), roots)
    if keyframe is not None:
        content.append(text_part("The attached image is the scene's keyframe."))
        content.append(image_part(keyframe))
    messages: list[Message] = [
        {"role": "system", "content": _SCENE_PROMPT},
        {"role": "user", "content": content},
    ]
    return first_sentence(chat(settings, messages, max_tokens=120))


def _llm_summary(
    settings: LLMSettings,
    analytic: dict[str, Any],
    scenes: list[dict[str, Any]],
    descriptions: list[str],
    on_screen: list[str],
) -> str:
    lines = [
        f"Video of {duration_words(float(analytic.get('duration_s') or 0))}, "
        f"{len(scenes)} scene(s)."
    ]
    lines += [
        f"Scene {scene['index']}: {text}" for scene, text in zip(scenes, descriptions, strict=True)
    ]
    if on_screen:
        lines.append("On-screen text: " + "; ".join(quote(t, 80) for t in on_screen))
    messages: list[Message] = [
        {"role": "system", "content": _SUMMARY_PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]
    return chat(settings, messages, max_tokens=250)


def _find_keyframe(recorded: Any, roots: list[Path]) -> Path | None:
    if not isinstance(recorded, str) or not recorded:
        return None
    path = Path(recorded)
    if path.is_absolute():
        return path if path.is_file() else None
    for root in roots:
        if (root / path).is_file():
            return root / path
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vvflow stage summarize",
        description="Per-scene measurements, on-screen text and descriptions for one video.",
    )
    add_io_arguments(parser, "analytic", "analytic JSON written by the scan stage")
    parser.add_argument(
        "--video",
        type=Path,
        default=None,
        help="the video (default: $VVFLOW_VIDEO, else the path recorded by the scan)",
    )
    scan_dir = env_default("VVFLOW_STAGE_SCAN_DIR")
    parser.add_argument(
        "--keyframes-dir",
        metavar="DIR",
        type=Path,
        default=Path(scan_dir) if scan_dir else None,
        help="the scan's keyframes folder, which the keyframe names are relative to "
        "(env VVFLOW_STAGE_SCAN_DIR; default: keyframes/<stem> under $VVFLOW_ROOT, "
        "the root above analytic/, or next to ANALYTIC)",
    )
    add_llm_arguments(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
