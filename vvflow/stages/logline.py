"""``vvflow stage logline SUMMARY OUTPUT``: one sentence of at most 35 words for a video.

Built from the summary (length, structure, colours, sound, on-screen text), or written
by an OpenAI-compatible chat endpoint when one is configured and answers.

Progress (``vvflow:progress`` lines on stderr, see ``command.py``): 0 on start, 0.5
before the LLM request, 1 when the output is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vvflow.stages.command import (
    BadInput,
    add_io_arguments,
    env_default,
    read_json_object,
    report_progress,
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
)
from vvflow.stages.prose import (
    first_sentence,
    join_words,
    limit_words,
    quote,
    word_count,
)

SCHEMA_VERSION = 1
MAX_WORDS = 35
SUMMARY = "summary JSON (the summarize stage's output)"
_FAST_CUT_SECONDS = 2.0

_PROMPT = (
    "You write loglines for a video catalogue. Answer with exactly one plain sentence "
    f"of at most {MAX_WORDS} words that captures the whole video, no preamble, no quotes."
)


def main(argv: list[str]) -> int:
    """Run the logline stage with command-line arguments ``argv``; return the exit code."""
    args = _parser().parse_args(argv)
    settings = LLMSettings.from_args(args)

    def work() -> None:
        write_json(args.output, logline(args.summary, settings=settings))

    return run_stage("logline", work)


def logline(summary_path: Path, *, settings: LLMSettings | None = None) -> dict[str, Any]:
    """The logline document for the summary at ``summary_path``."""
    settings = settings or LLMSettings()
    report_progress(0.0, "reading the summary")
    summary = read_json_object(summary_path, SUMMARY)
    scenes = summary.get("scenes")
    if not isinstance(scenes, list) or not scenes or not all(isinstance(s, dict) for s in scenes):
        raise BadInput(f"{summary_path}: not a {SUMMARY}: no 'scenes' list")
    if not isinstance(summary.get("summary"), str):
        raise BadInput(f"{summary_path}: not a {SUMMARY}: no 'summary' text")

    text = deterministic_logline(summary)
    generator = DETERMINISTIC
    reason: str | None = "not configured (no base URL or model)"
    if settings.configured:
        report_progress(0.5, "asking the LLM")
        try:
            text = _llm_logline(settings, summary)
        except LLMUnavailable as error:
            reason = str(error)
        else:
            generator, reason = settings.generator, None

    source = summary.get("source") if isinstance(summary.get("source"), dict) else None
    stem = env_default("VVFLOW_STEM") or (source or {}).get("stem")
    return {
        "schema_version": SCHEMA_VERSION,
        "source": {
            "summary": str(summary_path.resolve()),
            "name": (source or {}).get("name"),
            "stem": stem,
        },
        "logline": text,
        "word_count": word_count(text),
        "generator": generator,
        "llm": {**settings.describe(), "used": reason is None, "fallback_reason": reason},
    }


def deterministic_logline(summary: dict[str, Any]) -> str:
    """One sentence of at most ``MAX_WORDS`` words built from the summary's facts."""
    scenes: list[dict[str, Any]] = summary["scenes"]
    duration = float(summary.get("duration_s") or scenes[-1].get("end_s") or 0)
    count = len(scenes)
    if count == 1:
        shape = "single-shot"
    elif duration / count < _FAST_CUT_SECONDS:
        shape = f"fast-cut {count}-scene"
    else:
        shape = f"{count}-scene"
    opening = f"A {_length_words(duration)}, {shape} video"

    colours = _colours(scenes)
    details = []
    if len(colours) >= 2 and count > 1:
        details.append(f"moving through {join_words(colours)}")
    elif colours:
        details.append(f"in {colours[0]} tones")
    if summary.get("has_audio") is True:
        details.append("with sound")
    texts = [t for t in summary.get("on_screen_text") or [] if isinstance(t, str)]
    # Longest first until the limit: the on-screen text is the most telling fact, so it
    # is the last to be cut short.
    for shown in (texts[:2], texts[:1]):
        candidate = _sentence(opening, details, shown)
        if word_count(candidate) <= MAX_WORDS:
            return candidate
    return limit_words(_sentence(opening, details[:1], []), MAX_WORDS)


def _sentence(opening: str, details: list[str], texts: list[str]) -> str:
    parts = [opening, *details]
    if texts:
        parts.append(f"showing the on-screen text {join_words([quote(t, 48) for t in texts])}")
    return ", ".join(parts) + "."


def _length_words(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, round(seconds))}-second"
    if seconds < 3600:
        return f"{round(seconds / 60)}-minute"
    return f"{seconds / 3600:.1f}".removesuffix(".0") + "-hour"


def _colours(scenes: list[dict[str, Any]], limit: int = 3) -> list[str]:
    weights: dict[str, float] = {}
    for scene in scenes:
        duration = float(scene.get("duration_s") or 0) or 1.0
        for colour in scene.get("dominant_colors") or []:
            if isinstance(colour, dict) and isinstance(colour.get("name"), str):
                share = float(colour.get("share") or 0)
                weights[colour["name"]] = weights.get(colour["name"], 0.0) + share * duration
    return sorted(weights, key=lambda name: -weights[name])[:limit]


def _llm_logline(settings: LLMSettings, summary: dict[str, Any]) -> str:
    lines = [f"Summary: {summary['summary']}"]
    for scene in summary["scenes"]:
        if isinstance(scene.get("description"), str):
            lines.append(f"Scene {scene.get('index')}: {scene['description']}")
    texts = summary.get("on_screen_text") or []
    if texts:
        lines.append("On-screen text: " + "; ".join(quote(str(t), 80) for t in texts))
    messages: list[Message] = [
        {"role": "system", "content": _PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]
    text = limit_words(first_sentence(chat(settings, messages, max_tokens=120)), MAX_WORDS)
    if word_count(text) < 3:
        raise LLMUnavailable(f"answer too short for a logline: {text!r}")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vvflow stage logline",
        description=f"One sentence (at most {MAX_WORDS} words) for one video.",
    )
    add_io_arguments(parser, "summary", "summary JSON written by the summarize stage")
    add_llm_arguments(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
