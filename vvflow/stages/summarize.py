"""``vvflow stage summarize ANALYTIC OUTPUT``: what a video says and shows, scene by scene,
and what kind of video it is.

Two passes run at once, one core each: the pictures (brightness, motion, colours and the
captions on screen: measure.py, ocr.py) and the sound (voice activity, then a transcript
of the speech only, and speech / music / noise / silence per scene: speech.py). The
texts (a sentence per scene and a summary) are deterministic, built from the strongest
of those signals (gist.py), unless an OpenAI-compatible chat endpoint is configured and
answers: it is then shown each scene's keyframe, what is said in it and its captions,
and the JSON says so (``llm.inputs``).

Editor outputs (exports.py) go into ``--exports-dir`` (the built-in pipeline passes
``{output_dir}``, published whole to ``<root>/exports/<stem>``): subtitles of the
speech (WebVTT, SRT), chapters (WebVTT), an OpenTimelineIO timeline and a CMX 3600 EDL.
Without it (by hand), they go to ``$VVFLOW_ROOT/exports/<stem>``, else
``exports/<stem>`` next to OUTPUT, replaced whole.

The keyframes the LLM is shown are found in ``--keyframes-dir`` (the built-in pipeline
passes ``{scan_dir}``), else ``$VVFLOW_STAGE_SCAN_DIR``, else where a scan by hand puts
them (``keyframes/<stem>`` under ``$VVFLOW_ROOT``, the root above ``analytic/``, or
next to ANALYTIC).

Progress (``vvflow:progress`` lines on stderr, see ``command.py``): the mean of the two
passes' shares (0 to 0.85, with the message of the one behind), then each LLM request,
at most every 0.5 s and 5 %; 1 when the output is written.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vvflow.stages.command import (
    BadInput,
    Progress,
    add_io_arguments,
    env_default,
    object_field,
    read_json_object,
    run_stage,
    write_json,
)
from vvflow.stages.exports import Media, rate_of, relative_media, write_exports
from vvflow.stages.gist import scene_sentence, signals, summary_text, video_kind
from vvflow.stages.keyframes import filled_folder, staged_folder
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
from vvflow.stages.measure import Measured, SceneMeasures, SceneSpan, measure
from vvflow.stages.probe import check_readable
from vvflow.stages.prose import duration_words, first_sentence, quote
from vvflow.stages.speech import (
    KINDS,
    AudioTrack,
    Listening,
    SpeechOptions,
    audio_kinds,
    listen,
    load_audio,
    scene_transcripts,
    subtitle_cues,
)

#: 3: scenes carry ``audio`` (kind, shares, loudness) and ``speech``; ``ocr_frames`` is
#: gone (what reading the text cost is counted in ``ocr``); captions come with times.
SCHEMA_VERSION = 3
ANALYTIC = "analytic JSON (the scan stage's output)"

_SCENE_PROMPT = (
    "You write catalogue descriptions of video scenes. Answer with exactly one plain "
    "sentence of at most 30 words describing what the scene shows and says, no preamble."
)
_SUMMARY_PROMPT = (
    "You write catalogue summaries of videos. Answer with two or three plain sentences "
    "summarising the whole video (what it is, what is said, what is shown), no preamble, "
    "no list."
)
# Shares of the run, for progress: the two passes are nearly all of it without an LLM;
# the LLM's requests come last.
_PASSES_SHARE = 0.85
_LLM_FROM = 0.9
# What the LLM is shown of the transcript, at most (a long talk is cut).
_LLM_TRANSCRIPT_CHARS = 6000
_LLM_SCENE_SPEECH_CHARS = 600


def main(argv: list[str]) -> int:
    """Run the summarize stage with command-line arguments ``argv``; return the exit code."""
    args = _parser().parse_args(argv)
    settings = LLMSettings.from_args(args)

    def work() -> None:
        document = summarize(
            args.analytic,
            video=args.video,
            settings=settings,
            keyframes_dir=args.keyframes_dir,
            exports_dir=args.exports_dir,
            output=args.output,
        )
        write_json(args.output, document)

    return run_stage("summarize", work)


def summarize(
    analytic_path: Path,
    *,
    video: Path | None = None,
    settings: LLMSettings | None = None,
    speech: SpeechOptions | None = None,
    keyframes_dir: Path | None = None,
    exports_dir: Path | None = None,
    output: Path | None = None,
) -> dict[str, Any]:
    """Measure, listen to and describe every scene of the scan in ``analytic_path``.

    The video is ``video``, else ``$VVFLOW_VIDEO``, else the path the scan recorded.
    Keyframes (for the LLM) are looked up in ``keyframes_dir``, else where a scan by
    hand puts them. The editor outputs are written into ``exports_dir``; without it,
    into ``$VVFLOW_ROOT/exports/<stem>`` or ``exports/<stem>`` next to ``output``
    (replaced whole), and none when neither is known.
    """
    settings = settings or LLMSettings()
    try:
        speech = speech or SpeechOptions.from_env()
    except ValueError as error:  # a setting that cannot be read: the same on every retry
        raise BadInput(str(error)) from None
    progress = _TwoPasses(Progress())
    progress.update()
    analytic = read_json_object(analytic_path, ANALYTIC)
    spans = _spans(analytic, analytic_path)
    video = video or _recorded_video(analytic, analytic_path)
    check_readable(video)
    source = object_field(analytic, "source")
    stem = env_default("VVFLOW_STEM") or source.get("stem") or video.stem
    name = env_default("VVFLOW_NAME") or source.get("name") or video.name

    measured, audio, listening = _both_passes(video, spans, speech, progress)
    times = [(span.start_s, span.end_s) for span in spans]
    sounds = audio_kinds(audio, listening, times)
    said = scene_transcripts(listening, times)
    scenes = [
        _scene_record(scene, measures, sound, words)
        for scene, measures, sound, words in zip(
            analytic["scenes"], measured.scenes, sounds, said, strict=True
        )
    ]
    captions = [caption.as_json() for caption in measured.captions]
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "source": {
            "analytic": str(analytic_path.resolve()),
            "video": str(video.resolve()),
            "name": name,
            "stem": stem,
        },
        "duration_s": analytic.get("duration_s"),
        "size": _size(analytic),
        "scene_count": len(scenes),
        "has_audio": audio is not None,
        "kind": None,
        "audio": _audio_overall(sounds, scenes) if audio is not None else None,
        "transcript": listening.to_json(words=False),
        "captions": captions,
        "on_screen_text": [caption["text"] for caption in captions],
        "ocr": measured.ocr.as_json(),
        "summary": "",
        "generator": DETERMINISTIC,
        "llm": {},
        "exports": None,
        "scenes": scenes,
    }
    facts = signals(document)
    document["kind"] = video_kind(facts)
    for scene in scenes:
        scene["description"] = scene_sentence(
            scene, len(scenes), speech=scene["speech"], captions=scene["on_screen_text"]
        )
    document["summary"] = summary_text(facts)
    _ask_llm(
        document, settings, progress, _keyframe_folders(analytic_path, analytic, keyframes_dir)
    )
    target = _exports_target(exports_dir, output, stem)
    if target is not None:
        published = exports_dir is not None  # by vvflow, or into a folder given by hand
        with filled_folder(target) if published else staged_folder(target) as folder:
            document["exports"] = write_exports(
                folder,
                name=name,
                scenes=[
                    {**record, "title": title, "description": scene["description"]}
                    for record, scene, title in zip(
                        analytic["scenes"], scenes, _titles(scenes), strict=True
                    )
                ],
                rate=rate_of(object_field(analytic, "video")),
                duration_s=analytic.get("duration_s"),
                media=_media(video, name, stem, target, published=published),
                cues=subtitle_cues(listening),
                audio=audio is not None,
            )
    return document


class _TwoPasses:
    """Progress of the picture and the sound pass running at once: the mean of their
    shares (each reports from its own thread), then the LLM's steps."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._shares = {"pictures": 0.0, "sound": 0.0}
        self._messages = {"pictures": "reading the scan", "sound": "listening"}

    def update(self) -> None:
        with self._lock:
            behind = min(self._shares, key=lambda k: self._shares[k])
            share = sum(self._shares.values()) / len(self._shares)
            self._progress.update(share * _PASSES_SHARE, self._messages[behind])

    def track(self, name: str, what: str) -> Callable[[float, str], None]:
        def report(share: float, message: str) -> None:
            with self._lock:
                self._shares[name] = max(self._shares[name], min(1.0, share))
                self._messages[name] = f"{what} {message}".strip()
            self.update()

        return report

    def step(self, share: float, message: str) -> None:
        with self._lock:
            self._progress.update(share, message)


class _Stopped(Exception):
    """The picture pass failed: the sound pass stops at its next progress report."""


def _both_passes(
    video: Path, spans: list[SceneSpan], speech: SpeechOptions, progress: _TwoPasses
) -> tuple[Measured, AudioTrack | None, Listening]:
    """The picture pass in this thread and the sound pass in another, one core each."""
    stop = threading.Event()
    heard = progress.track("sound", "")

    def hear(share: float, message: str) -> None:
        if stop.is_set():
            raise _Stopped
        heard(share, message)

    def sound() -> tuple[AudioTrack | None, Listening]:
        audio = load_audio(video)
        return audio, listen(audio, speech, hear)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sound") as pool:
        listening = pool.submit(sound)
        try:
            measured = measure(video, spans, progress.track("pictures", "measuring"))
        except BaseException:
            stop.set()
            raise
        audio, heard_all = listening.result()
    return measured, audio, heard_all


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
    source = object_field(analytic, "source")
    recorded = source.get("stem") if isinstance(source.get("stem"), str) else None
    stem = env_default("VVFLOW_STEM") or recorded or analytic_path.name.split(".")[0]
    guesses = [*(base / "keyframes" / stem for base in roots), *roots]
    return [given, *guesses] if given is not None else guesses


def _scene_record(
    scene: dict[str, Any], result: SceneMeasures, sound: dict[str, Any], speech: str
) -> dict[str, Any]:
    loudness = sound.get("loudness_dbfs")
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
        "audio": sound,
        "audio_loudness_dbfs": loudness,
        "audio_label": loudness_label(loudness),
        "speech": speech,
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


def _audio_overall(sounds: list[dict[str, Any]], scenes: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole video's shares of speech, music, noise and silence (scenes weighted by
    their duration) and the kind with the largest share."""
    total = sum(float(scene["duration_s"]) for scene in scenes) or 1.0
    shares = dict.fromkeys(KINDS, 0.0)
    for sound, scene in zip(sounds, scenes, strict=True):
        for kind, share in (sound.get("shares") or {}).items():
            shares[kind] = shares.get(kind, 0.0) + float(share) * float(scene["duration_s"])
    shares = {kind: round(value / total, 2) for kind, value in shares.items()}
    return {"kind": max(shares, key=lambda kind: shares[kind]), "shares": shares}


def _size(analytic: dict[str, Any]) -> str | None:
    stream = object_field(analytic, "video")
    width, height = stream.get("width"), stream.get("height")
    return f"{width}x{height}" if width and height else None


def _titles(scenes: list[dict[str, Any]]) -> list[str]:
    """A chapter title per scene: a caption that appears in it (not one carried over from
    the scene before, such as a channel's name shown throughout), else its first words
    said, else a caption it shares, else ``Scene N``."""
    titles = []
    before: list[str] = []
    for scene in scenes:
        captions = [str(text) for text in scene["on_screen_text"]]
        new = [text for text in captions if text not in before]
        words = str(scene["speech"]).split()
        if new:
            titles.append(new[0])
        elif words:
            titles.append(" ".join(words[:8]) + ("…" if len(words) > 8 else ""))
        else:
            titles.append(captions[0] if captions else f"Scene {scene['index']}")
        before = captions
    return titles


def _exports_target(given: Path | None, output: Path | None, stem: str) -> Path | None:
    """Where the editor outputs go: the folder given, else ``exports/<stem>`` under
    ``$VVFLOW_ROOT`` or next to OUTPUT (by hand, replaced whole); None: nowhere."""
    if given is not None:
        return given
    root = env_default("VVFLOW_ROOT")
    if root:
        return Path(root) / "exports" / stem
    return output.resolve().parent / "exports" / stem if output is not None else None


def _media(video: Path, name: str, stem: str, folder: Path, *, published: bool) -> Media:
    """How the editor outputs point at the video: from where vvflow publishes the folder
    (``<root>/exports/<stem>``) to where the video ends (``<root>/input/completed/<name>``)
    when run by vvflow; by hand, from the folder to the video."""
    root = env_default("VVFLOW_ROOT")
    if published and root:
        return relative_media(
            Path(root) / "input" / "completed" / name, Path(root) / "exports" / stem
        )
    return relative_media(video, folder)


def _ask_llm(
    document: dict[str, Any], settings: LLMSettings, progress: _TwoPasses, keyframes: list[Path]
) -> None:
    """Have the LLM write the descriptions and the summary, when one is configured and
    answers every request; else keep the deterministic texts and record why."""
    scenes = document["scenes"]
    reason: str | None = "not configured (no base URL or model)"
    inputs: list[str] = []
    if settings.configured:
        try:
            descriptions = []
            for number, scene in enumerate(scenes):
                share = _LLM_FROM + (1 - _LLM_FROM) * number / (len(scenes) + 1)
                progress.step(share, f"asking the LLM about scene {scene['index']}")
                descriptions.append(_llm_scene(settings, scene, len(scenes), keyframes, inputs))
            progress.step(
                _LLM_FROM + (1 - _LLM_FROM) * len(scenes) / (len(scenes) + 1),
                "asking the LLM for the summary",
            )
            summary = _llm_summary(settings, document, descriptions, inputs)
        except LLMUnavailable as error:
            reason = str(error)
        else:
            for scene, description in zip(scenes, descriptions, strict=True):
                scene["description"] = description
            document["summary"] = summary
            document["generator"], reason = settings.generator, None
    document["llm"] = {
        **settings.describe(),
        "used": reason is None,
        "fallback_reason": reason,
        # What the model was shown (none when it was not used).
        "inputs": sorted(set(inputs)) if reason is None else [],
    }


def _llm_scene(
    settings: LLMSettings,
    scene: dict[str, Any],
    scene_count: int,
    roots: list[Path],
    inputs: list[str],
) -> str:
    facts = [
        f"Scene {scene['index']} of {scene_count}, {scene['start_timecode']} to "
        f"{scene['end_timecode']} ({scene['duration_s']:.1f} s).",
        f"Measured: {scene['brightness_label']} (mean luma {scene['brightness']}), "
        f"motion {scene['motion_label']}, colours "
        f"{', '.join(c['name'] for c in scene['dominant_colors']) or 'mixed'}"
        + (f", sound: {scene['audio']['kind']}" if scene["audio"].get("kind") else ", no audio")
        + ".",
    ]
    inputs.append("measurements")
    if scene["speech"]:
        facts.append("Said in it (transcript): " + quote(scene["speech"], _LLM_SCENE_SPEECH_CHARS))
        inputs.append("transcript")
    if scene["on_screen_text"]:
        facts.append("On-screen text: " + "; ".join(quote(t, 80) for t in scene["on_screen_text"]))
        inputs.append("captions")
    content: list[Message] = [text_part(" ".join(facts))]
    keyframe = _find_keyframe(scene.get("keyframe"), roots)
    if keyframe is not None:
        content.append(text_part("The attached image is the scene's keyframe."))
        content.append(image_part(keyframe))
        inputs.append("keyframes")
    messages: list[Message] = [
        {"role": "system", "content": _SCENE_PROMPT},
        {"role": "user", "content": content},
    ]
    return first_sentence(chat(settings, messages, max_tokens=120))


def _llm_summary(
    settings: LLMSettings, document: dict[str, Any], descriptions: list[str], inputs: list[str]
) -> str:
    scenes = document["scenes"]
    lines = [
        f"Video of {duration_words(float(document.get('duration_s') or 0))}, "
        f"{len(scenes)} scene(s); measured kind: {document['kind']}."
    ]
    lines += [
        f"Scene {scene['index']}: {text}" for scene, text in zip(scenes, descriptions, strict=True)
    ]
    said = str(document["transcript"].get("text") or "")
    if said:
        lines.append("Transcript: " + quote(said, _LLM_TRANSCRIPT_CHARS))
        inputs.append("transcript")
    if document["on_screen_text"]:
        lines.append(
            "On-screen text: " + "; ".join(quote(t, 80) for t in document["on_screen_text"])
        )
        inputs.append("captions")
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
    output_dir = env_default("VVFLOW_OUTPUT_DIR")
    parser.add_argument(
        "--exports-dir",
        metavar="DIR",
        type=Path,
        default=Path(output_dir) if output_dir else None,
        help="folder to write the editor outputs into (subtitles, chapters, OTIO timeline, "
        "EDL; env VVFLOW_OUTPUT_DIR; default: $VVFLOW_ROOT/exports/<stem>, else "
        "exports/<stem> next to OUTPUT, replaced whole)",
    )
    add_llm_arguments(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
