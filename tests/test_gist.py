"""The deterministic texts say what a video is from its strongest signals (stages/gist.py)."""

from __future__ import annotations

import re

import pytest

from vvflow.stages.gist import (
    Signals,
    key_sentences,
    logline_text,
    scene_sentence,
    signals,
    split_sentences,
    summary_text,
    video_kind,
    with_article,
)
from vvflow.stages.prose import word_count

TALK = (
    "Welcome to the harbour council meeting.",
    "Tonight we vote on the new harbour bridge.",
    "The bridge would carry trains and bicycles across the harbour.",
    "Thank you.",
    "Construction of the bridge starts in spring if the council agrees.",
)


def one_sentence(text: str) -> bool:
    body = re.sub(r'"[^"]*"', '""', text)
    return text.endswith(".") and not re.search(r"[.!?]\s", body)


def test_the_most_telling_sentences_are_picked_in_their_order() -> None:
    picked = key_sentences(TALK, 2)
    assert picked == [
        "Tonight we vote on the new harbour bridge.",
        "The bridge would carry trains and bicycles across the harbour.",
    ]
    assert key_sentences(["Thank you.", "Yes."], 1) == []
    assert key_sentences([], 3) == []


def test_sentences_are_split_across_transcript_segments() -> None:
    assert split_sentences([" Tonight we vote on", "the bridge. Thank you. ", "Bye"]) == [
        "Tonight we vote on the bridge.",
        "Thank you.",
        "Bye",
    ]


@pytest.mark.parametrize(
    ("shots", "speech", "music", "has_sentences", "kind"),
    [
        ([60.0], 0.9, 0.0, True, "talk"),
        ([20.0, 20.0, 20.0], 0.8, 0.1, True, "talk"),
        ([5.0] * 12, 0.7, 0.2, True, "narrated video"),
        ([1.5] * 40, 0.6, 0.3, True, "fast-cut narrated montage"),
        ([1.2] * 50, 0.0, 0.9, False, "fast-cut montage set to music"),
        ([10.0] * 6, 0.1, 0.8, False, "video set to music"),
        ([60.0], 0.0, 0.0, False, "single continuous shot"),
        ([2.0] * 30, 0.0, 0.0, False, "fast-cut montage"),
        ([10.0] * 6, 0.0, 0.0, False, "6-shot sequence"),
        # Speech detected but nothing understood (another language, mumbling): not a talk.
        ([60.0], 0.9, 0.0, False, "single continuous shot"),
    ],
)
def test_the_kind_of_video_comes_from_shot_rhythm_and_sound(
    shots: list[float], speech: float, music: float, has_sentences: bool, kind: str
) -> None:
    signal = Signals(
        duration_s=sum(shots),
        shot_lengths=tuple(shots),
        has_audio=True,
        speech_share=speech,
        music_share=music,
        silence_share=max(0.0, 1 - speech - music),
        sentences=TALK if has_sentences else (),
        motion="low",
    )
    assert video_kind(signal) == kind


def test_a_talk_logline_quotes_what_is_said_and_the_title_not_colours() -> None:
    signal = Signals(
        duration_s=62,
        shot_lengths=(62.0,),
        has_audio=True,
        speech_share=0.8,
        music_share=0.0,
        silence_share=0.2,
        sentences=TALK,
        captions=("HARBOUR COUNCIL LIVE",),
        motion="low",
        colours=("blue", "gray"),
    )
    line = logline_text(signal)
    assert line.startswith("A 1-minute talk, in which a voice says ")
    assert re.search(r'a voice says "[^"]*harbour[^"]*"', line)
    assert '"HARBOUR COUNCIL LIVE"' in line
    assert "blue" not in line and "gray" not in line
    assert word_count(line) <= 35 and one_sentence(line)


def test_captions_carry_a_video_without_speech() -> None:
    signal = Signals(
        duration_s=33,
        shot_lengths=(1.1,) * 30,
        has_audio=True,
        speech_share=0.0,
        music_share=0.9,
        silence_share=0.1,
        captions=("IN A WORLD OF PEACHES", "ONE HERO", "THIS SUMMER"),
        colours=("brown",),
    )
    line = logline_text(signal)
    assert line == (
        "A 33-second fast-cut montage set to music, with the on-screen text "
        '"IN A WORLD OF PEACHES" and "ONE HERO".'
    )


def test_without_speech_or_text_the_pictures_describe_it() -> None:
    signal = Signals(
        duration_s=10,
        shot_lengths=(2.0,) * 5,
        has_audio=True,
        speech_share=0.0,
        music_share=0.0,
        silence_share=0.3,
        motion="high",
        colours=("green", "brown", "gray"),
    )
    assert logline_text(signal) == (
        "A 10-second fast-cut montage, with a lot of motion, with sound, mostly green and brown."
    )
    assert with_article("8-second still shot") == "An 8-second still shot"
    assert with_article("18-minute talk") == "An 18-minute talk"
    assert with_article("1-minute talk") == "A 1-minute talk"


def test_a_long_transcript_and_long_captions_still_make_one_short_sentence() -> None:
    long_sentence = " ".join(["remarkably"] * 5 + ["harbour bridge engineering"] * 12) + "."
    signal = Signals(
        duration_s=600,
        shot_lengths=(30.0,) * 20,
        has_audio=True,
        speech_share=0.9,
        music_share=0.0,
        silence_share=0.1,
        sentences=(long_sentence, "The harbour bridge. Really. It is done."),
        captions=("A" * 70, "B" * 70),
    )
    line = logline_text(signal)
    assert word_count(line) <= 35 and one_sentence(line)
    assert "a voice says" in line


def test_the_summary_says_kind_sound_speech_and_text() -> None:
    signal = Signals(
        duration_s=62,
        shot_lengths=(20.0, 22.0, 20.0),
        has_audio=True,
        speech_share=0.78,
        music_share=0.12,
        silence_share=0.1,
        sentences=TALK,
        captions=("HARBOUR COUNCIL LIVE", "VOTE TONIGHT"),
        colours=("blue",),
        size="1280x720",
    )
    text = summary_text(signal)
    assert text.startswith("A 1-minute talk (3 shots averaging 20.7 s, 1280x720). ")
    assert "Sound: speech 78%, music 12% and silence 10%." in text
    assert "What is said, in brief: " in text and "bridge" in text
    assert 'On-screen text: "HARBOUR COUNCIL LIVE", "VOTE TONIGHT".' in text
    assert "blue" not in text


def test_a_scene_sentence_puts_speech_and_text_before_the_look() -> None:
    scene = {
        "index": 2,
        "start_timecode": "00:00:05.000",
        "end_timecode": "00:00:09.000",
        "duration_s": 4.0,
        "brightness_label": "bright",
        "motion_label": "low",
        "dominant_colors": [{"name": "blue", "share": 0.8}],
        "audio": {"kind": "speech"},
    }
    spoken = scene_sentence(scene, 3, speech="Tonight we vote.", captions=["VOTE"])
    assert spoken == (
        'Scene 2 of 3 (00:00:05.000 to 00:00:09.000, 4.0 s): a voice says "Tonight we vote"; '
        'on-screen text "VOTE"; a bright shot with little motion.'
    )
    silent = scene_sentence({**scene, "audio": {"kind": "silence"}}, 3)
    assert silent.endswith("a bright shot with little motion, mostly blue and silence.")


def test_signals_are_read_back_from_a_summary_document() -> None:
    summary = {
        "duration_s": 12.0,
        "has_audio": True,
        "size": "640x360",
        "audio": {"shares": {"speech": 0.6, "music": 0.0, "silence": 0.4}},
        "transcript": {"segments": [{"text": "Tonight we vote"}, {"text": "on the bridge."}]},
        "captions": [{"text": "VOTE"}, {"bad": 1}],
        "scenes": [
            {"duration_s": 6.0, "motion_label": "low", "brightness_label": "dim"},
            {"duration_s": 6.0, "motion_label": "low", "brightness_label": "dim"},
        ],
    }
    signal = signals(summary)
    assert signal.sentences == ("Tonight we vote on the bridge.",)
    assert signal.captions == ("VOTE",)
    assert signal.speech_share == 0.6 and signal.shot_count == 2
    assert signal.size == "640x360" and signal.motion == "low"
    # An old summary (schema 2) has none of these: the texts fall back to the pictures.
    assert signals({"duration_s": 3, "scenes": [{"duration_s": 3}]}).sentences == ()
