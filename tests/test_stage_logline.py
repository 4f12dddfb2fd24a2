"""The logline stage: one sentence of at most 35 words, from the summary or from an LLM."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.media import make_video
from tests.stage_support import (
    REPO,
    chat_server,
    closed_port_url,
    completion,
    other_lines,
    progress_of,
    run_stage,
)
from vvflow.stages import STAGES

SENTENCE = re.compile(r'[A-Z][^.!?]*(?:\.\d[^.!?]*)*[.!?]"?')


@pytest.fixture(autouse=True)
def _no_pipeline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VVFLOW_"):
            monkeypatch.delenv(name)


def assert_logline(text: str) -> None:
    assert len(text.split()) <= 35, text
    assert SENTENCE.fullmatch(text), text
    assert "\n" not in text


def summary_document(
    *, duration: float, scenes: int, texts: list[str], audio: bool = True
) -> dict[str, Any]:
    length = duration / scenes
    return {
        "schema_version": 1,
        "duration_s": duration,
        "has_audio": audio,
        "captions": [{"text": text} for text in texts],
        "summary": "A video.",
        "scenes": [
            {
                "index": i + 1,
                "start_s": i * length,
                "end_s": (i + 1) * length,
                "duration_s": length,
                "dominant_colors": [{"name": ("red", "blue", "green")[i % 3], "share": 0.9}],
                "description": f"Scene {i + 1}.",
            }
            for i in range(scenes)
        ],
    }


def test_the_three_stages_chain_into_a_logline(tmp_path: Path) -> None:
    video = make_video(
        tmp_path / "chain.mp4", seconds=3.0, width=320, height=240, cuts=2, text="HELLO", audio=True
    )
    analytic, summary, logline = (
        tmp_path / "chain.analytic.json",
        tmp_path / "chain.summary.json",
        tmp_path / "chain.logline.json",
    )
    for stage, source, output in (
        ("scan", video, analytic),
        ("summarize", analytic, summary),
        ("logline", summary, logline),
    ):
        result = run_stage(stage, source, output)
        assert result.returncode == 0, result.stderr
        assert other_lines(result.stderr) == []
        fractions = progress_of(result.stderr)
        assert fractions[0] == 0.0
        assert fractions[-1] == 1.0
        assert fractions == sorted(fractions)

    document = json.loads(logline.read_text())
    text = document["logline"]
    assert_logline(text)
    # The caption and the sound (a steady tone is music) say more than the colours.
    assert text == 'A 3-second fast-cut montage set to music, with the on-screen text "HELLO".'
    assert document["kind"] == "fast-cut montage set to music"
    assert document["word_count"] == len(text.split())
    assert document["generator"] == "deterministic"
    assert document["schema_version"] == 1
    assert document["source"]["stem"] == "chain"


@pytest.mark.parametrize(
    ("duration", "scenes", "texts", "expected"),
    [
        (0.4, 1, [], "A 1-second single continuous shot, with sound, mostly red."),
        (
            95.0,
            4,
            ["Chapter One"],
            'A 2-minute 4-shot sequence, with the on-screen text "Chapter One".',
        ),
        (9000.0, 400, [], "A 2.5-hour 400-shot sequence, with sound, mostly red and blue."),
        (30.0, 20, ["Breaking news: " + "word " * 40, "second caption " * 10], '"Breaking news'),
        (30.0, 20, ["x " * 60, "y " * 60, "z " * 60], "A 30-second fast-cut montage"),
    ],
)
def test_deterministic_logline_is_one_sentence_of_at_most_35_words(
    tmp_path: Path, duration: float, scenes: int, texts: list[str], expected: str
) -> None:
    summary = tmp_path / "s.summary.json"
    summary.write_text(json.dumps(summary_document(duration=duration, scenes=scenes, texts=texts)))
    output = tmp_path / "s.logline.json"

    assert STAGES["logline"]([str(summary), str(output)]) == 0

    text = json.loads(output.read_text())["logline"]
    assert_logline(text)
    assert expected in text


def test_llm_writes_the_logline_trimmed_to_one_sentence(tmp_path: Path) -> None:
    summary = tmp_path / "s.summary.json"
    summary.write_text(json.dumps(summary_document(duration=12, scenes=3, texts=["OPEN DAY"])))
    long_answer = "Logline: " + " ".join(["Visitors"] + ["stream"] * 45) + ". And more."
    answers = iter([completion("A campus throws its doors open. Second."), completion(long_answer)])

    with chat_server(lambda body: (200, next(answers))) as server:
        for name in ("a", "b"):
            code = STAGES["logline"](
                [
                    str(summary),
                    str(tmp_path / f"{name}.logline.json"),
                    "--llm-base-url",
                    server.base_url,
                    "--llm-model",
                    "writer",
                ]
            )
            assert code == 0

    first = json.loads((tmp_path / "a.logline.json").read_text())
    assert first["logline"] == "A campus throws its doors open."
    assert first["generator"] == "llm:writer"
    assert first["llm"]["used"] is True
    second = json.loads((tmp_path / "b.logline.json").read_text())["logline"]
    assert_logline(second)
    assert second.startswith("Visitors stream")
    assert len(second.split()) == 35
    request = server.requests[0]
    assert request["model"] == "writer"
    assert '"OPEN DAY"' in request["messages"][1]["content"]
    assert "35 words" in request["messages"][0]["content"]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ((200, {"unexpected": True}), "has no choices[0].message.content"),
        ((200, completion("   ")), "empty answer"),
        ((404, {"error": "no such model"}), "HTTP 404"),
    ],
)
def test_llm_unusable_answer_falls_back_and_says_why(
    tmp_path: Path, reply: tuple[int, dict[str, Any]], reason: str
) -> None:
    summary = tmp_path / "s.summary.json"
    summary.write_text(json.dumps(summary_document(duration=5, scenes=1, texts=[])))
    output = tmp_path / "s.logline.json"

    with chat_server(lambda body: reply) as server:
        code = STAGES["logline"](
            [str(summary), str(output), "--llm-base-url", server.base_url, "--llm-model", "m"]
        )

    assert code == 0
    document = json.loads(output.read_text())
    assert document["generator"] == "deterministic"
    assert reason in document["llm"]["fallback_reason"]
    assert_logline(document["logline"])


def test_unreachable_llm_from_environment_falls_back(tmp_path: Path) -> None:
    summary = tmp_path / "s.summary.json"
    summary.write_text(json.dumps(summary_document(duration=5, scenes=1, texts=[])))
    output = tmp_path / "s.logline.json"

    result = run_stage(
        "logline",
        summary,
        output,
        env={"VVFLOW_LLM_BASE_URL": closed_port_url(), "VVFLOW_LLM_MODEL": "m"},
    )

    assert result.returncode == 0, result.stderr
    document = json.loads(output.read_text())
    assert document["generator"] == "deterministic"
    assert document["llm"]["fallback_reason"].startswith("unreachable: ")
    assert result.stderr.splitlines() == [
        "vvflow:progress 0.000 reading the summary",
        "vvflow:progress 0.500 asking the LLM",
        "vvflow:progress 1.000 done",
    ]


@pytest.mark.parametrize("stderr", ["closed", "broken"])
def test_a_closed_or_broken_stderr_costs_the_lines_not_the_stage(
    tmp_path: Path, stderr: str
) -> None:
    good = tmp_path / "good.summary.json"
    good.write_text(json.dumps(summary_document(duration=5, scenes=1, texts=["HI"])))
    bad = tmp_path / "bad.summary.json"
    bad.write_text("[]")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VVFLOW_")}
    environment["PYTHONPATH"] = str(REPO)

    def run(summary: Path, output: Path) -> int:
        command = [sys.executable, "-m", "vvflow", "stage", "logline", str(summary), str(output)]
        if stderr == "closed":
            # Descriptor 2 closed from the start: the next file opened gets it, and a
            # progress line must never land in it (the output is written to a new file).
            proc = subprocess.Popen(command, env=environment, preexec_fn=lambda: os.close(2))
        else:
            # A pipe whose reader is gone: every write fails with EPIPE.
            proc = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE)
            assert proc.stderr is not None
            proc.stderr.close()
        return proc.wait(timeout=60)

    assert run(good, tmp_path / "good.logline.json") == 0
    document = json.loads((tmp_path / "good.logline.json").read_text())
    assert '"HI"' in document["logline"]
    assert run(bad, tmp_path / "bad.logline.json") == 65
    assert not (tmp_path / "bad.logline.json").exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("not json at all", "invalid JSON"),
        ('"a string"', "not an object"),
        ('{"schema_version": 1, "scenes": [{"index": 1}]}', "no 'summary' text"),
        ('{"schema_version": 1, "summary": "x", "scenes": []}', "no 'scenes' list"),
        ("", "invalid JSON"),
    ],
)
def test_bad_input_exits_65_with_one_clear_line(tmp_path: Path, content: str, reason: str) -> None:
    summary = tmp_path / "bad.summary.json"
    summary.write_text(content)
    output = tmp_path / "bad.logline.json"

    result = run_stage("logline", summary, output)

    assert result.returncode == 65
    lines = other_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert result.stderr.splitlines()[-1] == lines[0]
    assert lines[0].startswith("vvflow stage logline: bad input: ")
    assert reason in lines[0]
    assert not output.exists()


def test_usage_error_exits_2() -> None:
    result = run_stage("logline", "only-one")
    assert result.returncode == 2
    assert "usage: vvflow stage logline" in result.stderr
