"""What a video is, in words, without an LLM: its kind, what is said, what is shown.

The summarize and logline stages build their deterministic texts here from the
strongest signals a summary holds, in this order:

1. what is said (the transcript: its most telling sentences, picked by how many of the
   transcript's recurring content words each holds);
2. the captions on screen (only captions that passed the on-screen text checks reach a
   summary, so nothing here quotes OCR noise);
3. the kind of video, from its shot rhythm and its sound (speech, music or silence
   share): a talk, a narrated video, a fast-cut montage set to music, a single
   continuous shot, ...;
4. only when there is neither speech nor text: what the pictures look like (motion,
   brightness and, last, colour names).

What it cannot say: who speaks or how many people do (no speaker separation), what the
pictures show (no object recognition: that is what the optional LLM is for), or the
topic of speech in a language the speech model does not know.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vvflow.stages.command import object_field
from vvflow.stages.prose import end_with_full_stop, join_words, quote, word_count

#: A share of the video at least this large makes speech (or music) its main sound.
MAIN_SOUND_SHARE = 0.35
#: Shots averaging under this many seconds make a video fast-cut.
FAST_CUT_SECONDS = 3.0
#: Shots averaging at least this long make a spoken video a talk rather than narrated.
TALK_SHOT_SECONDS = 8.0

_MOTION_WORDS = {
    "static": "no visible motion",
    "low": "little motion",
    "moderate": "some motion",
    "high": "a lot of motion",
}
_APOSTROPHES = "'\u2019"
_WORD = re.compile(rf"[^\W\d_](?:[^\W_]|[{_APOSTROPHES}-][^\W\d_])*")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
# Function words carry no topic; a compact English list (the packaged speech model is
# English). Words of other languages are all kept, which only makes the choice cruder.
_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are aren't as at be
    because been before being below between both but by can can't cannot could couldn't
    did didn't do does doesn't doing don't down during each few for from further get gets
    got had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers
    herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its
    itself just let's like me more most mustn't my myself no nor not now of off on once
    only or other ought our ours ourselves out over own really right same say said says
    shan't she she'd she'll she's should shouldn't so some such than that that's the
    their theirs them themselves then there there's these they they'd they'll they're
    they've this those through to too under until up very was wasn't we we'd we'll we're
    we've well were weren't what what's when when's where where's which while who who's
    whom why why's will with won't would wouldn't yeah yes you you'd you'll you're you've
    your yours yourself yourselves okay oh um uh going gonna want know think thing things
    one two three lot lots way even still back much many make made""".split()  # noqa: SIM905 - a word list reads best as words
)


@dataclass(frozen=True)
class Signals:
    """What the deterministic texts are built from (see ``signals``)."""

    duration_s: float
    shot_lengths: tuple[float, ...]
    has_audio: bool
    #: Shares of the duration (0..1); all None without an audio track.
    speech_share: float | None = None
    music_share: float | None = None
    noise_share: float | None = None
    silence_share: float | None = None
    #: The transcript's sentences, in order.
    sentences: tuple[str, ...] = ()
    #: Captions that passed the on-screen text checks, in order of appearance.
    captions: tuple[str, ...] = ()
    motion: str | None = None
    brightness: str | None = None
    colours: tuple[str, ...] = ()
    size: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shot_count(self) -> int:
        return max(1, len(self.shot_lengths))

    @property
    def average_shot_s(self) -> float:
        return self.duration_s / self.shot_count

    @property
    def spoken(self) -> bool:
        """Speech is a main sound of the video and something was understood."""
        return bool(self.sentences) and (self.speech_share or 0.0) >= MAIN_SOUND_SHARE / 2


def video_kind(signals: Signals) -> str:
    """The kind of video as a noun phrase: ``talk``, ``fast-cut montage set to music``, ..."""
    fast = signals.shot_count > 2 and signals.average_shot_s < FAST_CUT_SECONDS
    speech = signals.speech_share or 0.0
    music = signals.music_share or 0.0
    if signals.sentences and speech >= MAIN_SOUND_SHARE:
        if signals.shot_count == 1 or signals.average_shot_s >= TALK_SHOT_SECONDS:
            return "talk"
        return "fast-cut narrated montage" if fast else "narrated video"
    if music >= MAIN_SOUND_SHARE:
        return "fast-cut montage set to music" if fast else "video set to music"
    if signals.shot_count == 1:
        return "still shot" if signals.motion == "static" else "single continuous shot"
    if fast:
        return "fast-cut montage"
    return f"{signals.shot_count}-shot sequence"


def key_sentences(sentences: Sequence[str], limit: int, *, hints: Iterable[str] = ()) -> list[str]:
    """The ``limit`` most telling of ``sentences``, in their original order.

    A sentence's score is the weight of its distinct content words over the square root
    of their number; a word's weight is how often it occurs in all the sentences (and in
    ``hints``, such as the captions) when it recurs, a quarter when it occurs once: the
    recurring words are the topic. Sentences under four words score little (greetings,
    fillers), and those with fewer than two are never picked. Ties go to the earlier
    sentence: the choice is deterministic.
    """
    cleaned = [" ".join(s.split()) for s in sentences]
    # A sentence with fewer than two content words says nothing ("Thank you.", "Yes.").
    candidates = [(i, s) for i, s in enumerate(cleaned) if len(set(content_words(s))) >= 2]
    if not candidates:
        return []
    counts: Counter[str] = Counter()
    for _, sentence in candidates:
        counts.update(content_words(sentence))
    for hint in hints:
        counts.update(set(content_words(hint)))

    def score(item: tuple[int, str]) -> tuple[float, int]:
        index, sentence = item
        words = set(content_words(sentence))
        value = sum(counts[w] if counts[w] > 1 else 0.25 for w in words) / math.sqrt(len(words))
        if word_count(sentence) < 4:
            value *= 0.3
        return (-value, index)

    chosen = sorted(candidates, key=score)[:limit]
    return [sentence for _, sentence in sorted(chosen)]


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry meaning: lower case, no function words."""
    words = (w.casefold().replace("\u2019", "'") for w in _WORD.findall(text))
    return [w for w in words if len(w) > 2 and w not in _STOPWORDS]


def split_sentences(texts: Iterable[str]) -> list[str]:
    """Sentences of the joined ``texts`` (transcript segments break mid-sentence)."""
    joined = " ".join(" ".join(t.split()) for t in texts).strip()
    return [s.strip() for s in _SENTENCE_END.split(joined) if s.strip()] if joined else []


def motion_words(label: Any) -> str:
    """``a lot of motion`` for ``high``, ...: a motion label in words."""
    return _MOTION_WORDS.get(str(label), "some motion")


def length_words(seconds: float) -> str:
    """``10-second``, ``2-minute``, ``1.5-hour``: a length as an adjective."""
    if seconds < 60:
        return f"{max(1, round(seconds))}-second"
    if seconds < 3600:
        return f"{round(seconds / 60)}-minute"
    return f"{seconds / 3600:.1f}".removesuffix(".0") + "-hour"


def sound_words(signals: Signals) -> str:
    """The sound of the video in a few words."""
    if not signals.has_audio:
        return "no audio track"
    parts = []
    for share, name in (
        (signals.speech_share, "speech"),
        (signals.music_share, "music"),
        (signals.noise_share, "noise"),
        (signals.silence_share, "silence"),
    ):
        if share is not None and share >= 0.05:
            parts.append((share, name))
    if not parts:
        return "sound"
    parts.sort(key=lambda p: -p[0])
    return join_words([f"{name} {round(100 * share)}%" for share, name in parts])


def logline_text(signals: Signals, max_words: int = 35) -> str:
    """One sentence of at most ``max_words`` words that says what the video is.

    What is said comes first, then the captions: when the sentence runs long, the
    second caption goes first, then the first, and the quote of what is said is cut
    shorter at each step; with neither, the pictures and the sound describe it.
    """
    opening = with_article(f"{length_words(signals.duration_s)} {video_kind(signals)}")
    said = key_sentences(signals.sentences, 1, hints=signals.captions) if signals.spoken else []
    captions = list(signals.captions[:2])
    for shown in (captions, captions[:1], []):
        for quote_words in (24, 16, 10, 6) if said else (0,):
            clauses = [opening]
            if said:
                clauses.append(f"in which a voice says {_quoted_words(said[0], quote_words)}")
            if shown:
                clauses.append(
                    "with the on-screen text " + join_words([quote(t, 48) for t in shown])
                )
            if len(clauses) == 1:
                break
            text = end_with_full_stop(", ".join(clauses))
            if word_count(text) <= max_words:
                return text
    return _visual_logline(signals, opening, max_words)


def with_article(phrase: str) -> str:
    """``phrase`` after ``A`` or ``An``, as it is read aloud (``An 8-second ...``)."""
    spoken_vowel = phrase[:1].lower() in "aeiou" or re.match(r"(8|11|18)\b|8\d\b", phrase)
    return f"{'An' if spoken_vowel else 'A'} {phrase}"


def _visual_logline(signals: Signals, opening: str, max_words: int) -> str:
    details = []
    if signals.motion:
        details.append(f"with {motion_words(signals.motion)}")
    sound = _sound_phrase(signals)
    if sound:
        details.append(sound)
    if signals.colours and not signals.sentences and not signals.captions:
        details.append(f"mostly {join_words(list(signals.colours[:2]))}")
    text = end_with_full_stop(", ".join([opening, *details]))
    while word_count(text) > max_words and details:
        details.pop()
        text = end_with_full_stop(", ".join([opening, *details]))
    return text


def _sound_phrase(signals: Signals) -> str:
    if not signals.has_audio:
        return "without sound"
    if (signals.silence_share or 0.0) >= 0.8:
        return "silent"
    if (signals.music_share or 0.0) >= MAIN_SOUND_SHARE:
        return "with music"
    if (signals.speech_share or 0.0) >= MAIN_SOUND_SHARE:
        return "with speech"
    if (signals.noise_share or 0.0) >= MAIN_SOUND_SHARE:
        return "with background noise"
    return "with sound"


def summary_text(signals: Signals) -> str:
    """A few sentences about the whole video: what it is, what is said, what is shown."""
    count = signals.shot_count
    shape = (
        "one shot"
        if count == 1
        else f"{count} shots averaging {signals.average_shot_s:.1f} s".replace(".0 s", " s")
    )
    size = f", {signals.size}" if signals.size else ""
    kind = with_article(f"{length_words(signals.duration_s)} {video_kind(signals)}")
    sentences = [f"{kind} ({shape}{size})."]
    sound = sound_words(signals)
    sentences.append(f"Sound: {sound}." if signals.has_audio else "It has no audio track.")
    said = key_sentences(signals.sentences, 3, hints=signals.captions) if signals.spoken else []
    if said:
        sentences.append("What is said, in brief: " + " ".join(_quoted(s, 40) for s in said))
    if signals.captions:
        sentences.append(
            "On-screen text: " + ", ".join(quote(t, 60) for t in signals.captions[:6]) + "."
        )
    if not said and not signals.captions:
        look = []
        if signals.brightness:
            look.append(f"{signals.brightness} pictures")
        if signals.motion:
            look.append(motion_words(signals.motion))
        if signals.colours:
            look.append(f"mostly {join_words(list(signals.colours))}")
        if look:
            sentences.append(end_with_full_stop("It shows " + join_words(look)))
    return " ".join(sentences)


def scene_sentence(
    scene: dict[str, Any], scene_count: int, *, speech: str = "", captions: Sequence[str] = ()
) -> str:
    """One sentence about a scene record: what is said and shown first, then the look."""
    where = (
        f"Scene {scene['index']} of {scene_count} "
        f"({scene.get('start_timecode')} to {scene.get('end_timecode')}, "
        f"{float(scene.get('duration_s') or 0):.1f} s)"
    )
    parts = []
    if speech:
        parts.append(f"a voice says {_quoted_words(speech, 20)}")
    if captions:
        parts.append("on-screen text " + join_words([quote(t, 48) for t in captions[:3]]))
    look = f"a {scene.get('brightness_label') or 'plain'} shot with " + motion_words(
        scene.get("motion_label")
    )
    colours = [c.get("name") for c in scene.get("dominant_colors") or [] if isinstance(c, dict)]
    if not parts and colours:
        look += f", mostly {join_words([str(c) for c in colours[:2]])}"
    kind = (scene.get("audio") or {}).get("kind") if isinstance(scene.get("audio"), dict) else None
    if not speech and kind in {"music", "silence"}:
        look += f" and {kind}"
    parts.append(look)
    return end_with_full_stop(f"{where}: " + "; ".join(parts))


def _quoted(sentence: str, max_words: int) -> str:
    return _quoted_words(sentence, max_words) + "."


def _quoted_words(sentence: str, max_words: int) -> str:
    """``sentence`` in double quotes without its closing punctuation, cut at a word."""
    words = " ".join(sentence.replace('"', "'").split()).rstrip(".!?…,;: ").split()
    text = " ".join(words[:max_words])
    if len(words) > max_words:
        text = text.rstrip(".!?…,;: ") + "…"
    # A sentence end inside the quote would end the logline's one sentence early.
    text = re.sub(r"([.!?])\s+", r"\1 ", text)
    return f'"{text}"'


def signals(summary: dict[str, Any]) -> Signals:
    """The signals of a summary JSON (schema 3; older summaries give fewer of them)."""
    scenes = [s for s in summary.get("scenes") or [] if isinstance(s, dict)]
    duration = float(summary.get("duration_s") or (scenes[-1].get("end_s") if scenes else 0) or 0)
    lengths = tuple(float(s.get("duration_s") or 0) for s in scenes)
    shares = object_field(object_field(summary, "audio"), "shares")
    segments = object_field(summary, "transcript").get("segments")
    segments = segments if isinstance(segments, list) else []
    texts = [str(s.get("text") or "") for s in segments if isinstance(s, dict)]
    captions = tuple(
        str(c.get("text"))
        for c in summary.get("captions") or []
        if isinstance(c, dict) and isinstance(c.get("text"), str)
    )
    motions = Counter(str(s.get("motion_label")) for s in scenes if s.get("motion_label"))
    lights = Counter(str(s.get("brightness_label")) for s in scenes if s.get("brightness_label"))
    return Signals(
        duration_s=duration,
        shot_lengths=lengths,
        has_audio=bool(summary.get("has_audio")),
        speech_share=_share(shares, "speech"),
        music_share=_share(shares, "music"),
        noise_share=_share(shares, "noise"),
        silence_share=_share(shares, "silence"),
        sentences=tuple(split_sentences(texts)),
        captions=captions,
        motion=motions.most_common(1)[0][0] if motions else None,
        brightness=lights.most_common(1)[0][0] if lights else None,
        colours=tuple(_colours(scenes)),
        size=summary.get("size") if isinstance(summary.get("size"), str) else None,
    )


def _share(shares: dict[str, Any], name: str) -> float | None:
    value = shares.get(name)
    return float(value) if isinstance(value, int | float) else None


def _colours(scenes: list[dict[str, Any]], limit: int = 3) -> list[str]:
    weights: dict[str, float] = {}
    for scene in scenes:
        duration = float(scene.get("duration_s") or 0) or 1.0
        for colour in scene.get("dominant_colors") or []:
            if isinstance(colour, dict) and isinstance(colour.get("name"), str):
                share = float(colour.get("share") or 0) * duration
                weights[colour["name"]] = weights.get(colour["name"], 0.0) + share
    return sorted(weights, key=lambda name: -weights[name])[:limit]
