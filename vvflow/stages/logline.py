"""``vvflow stage logline SUMMARY OUTPUT``: one sentence of at most 35 words for a video.

Built from the summary's strongest signals (what is said, the captions, the kind of
video from its shot rhythm and sound; see gist.py), or written by an OpenAI-compatible
chat endpoint when one is configured and answers.

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
from vvflow.stages.gist import key_sentences, logline_text, signals, video_kind
from vvflow.stages.llm import (
    DETERMINISTIC,
    LLMSettings,
    LLMUnavailable,
    Message,
    add_llm_arguments,
    chat,
)
from vvflow.stages.prose import first_sentence, limit_words, quote, word_count

SCHEMA_VERSION = 1
MAX_WORDS = 35
SUMMARY = "summary JSON (the summarize stage's output)"

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

    facts = signals(summary)
    text = logline_text(facts, MAX_WORDS)
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
        "kind": video_kind(facts),
        "generator": generator,
        "llm": {**settings.describe(), "used": reason is None, "fallback_reason": reason},
    }


def _llm_logline(settings: LLMSettings, summary: dict[str, Any]) -> str:
    facts = signals(summary)
    lines = [f"Summary: {summary['summary']}", f"Kind of video (measured): {video_kind(facts)}."]
    for scene in summary["scenes"]:
        if isinstance(scene.get("description"), str):
            lines.append(f"Scene {scene.get('index')}: {scene['description']}")
    said = key_sentences(facts.sentences, 5, hints=facts.captions)
    if said:
        lines.append("Said (key sentences of the transcript): " + " ".join(said))
    if facts.captions:
        lines.append("On-screen text: " + "; ".join(quote(t, 80) for t in facts.captions))
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
