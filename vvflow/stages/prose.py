"""Rules for the short texts the stages write: one sentence, bounded length, plain words."""

from __future__ import annotations

import re

# A sentence ends at . ! or ? followed by a space and a capital, quote or digit; "3.5 s"
# and "e.g. this" do not end one.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")
_WRAPPING = "\"'`*_ "


def first_sentence(text: str) -> str:
    """The first sentence of ``text``, on one line, without wrapping quotes or markup."""
    text = " ".join(text.split()).strip(_WRAPPING)
    for prefix in ("Logline:", "Description:", "Summary:", "Sentence:"):
        if text.lower().startswith(prefix.lower()):
            text = text[len(prefix) :].strip(_WRAPPING)
    sentence = _SENTENCE_END.split(text, maxsplit=1)[0].strip(_WRAPPING)
    return end_with_full_stop(sentence)


def end_with_full_stop(sentence: str) -> str:
    """``sentence`` ending in . ! or ? (a full stop is added when it ends in none)."""
    sentence = sentence.rstrip(" ,;:-")
    if sentence and sentence[-1] not in ".!?":
        sentence += "."
    return sentence


def word_count(text: str) -> int:
    """Number of whitespace-separated words in ``text``."""
    return len(text.split())


def limit_words(sentence: str, limit: int) -> str:
    """``sentence`` cut to at most ``limit`` words, still ending with a full stop."""
    words = sentence.split()
    if len(words) <= limit:
        return sentence
    return end_with_full_stop(" ".join(words[:limit]).rstrip(".!?"))


def quote(text: str, max_chars: int = 40) -> str:
    """``text`` in double quotes, shortened with an ellipsis past ``max_chars``."""
    text = " ".join(text.replace('"', "'").split())
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + "…"
    return f'"{text}"'


def join_words(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def duration_words(seconds: float) -> str:
    """A duration for a sentence: ``2.5 seconds``, ``3 minutes 5 seconds``, ``1 hour 2 minutes``."""
    if seconds < 60:
        value = f"{seconds:.1f}".removesuffix(".0")
        return f"{value} second" if value == "1" else f"{value} seconds"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "hour"), (minutes, "minute")] + ([] if hours else [(secs, "second")])
    return " ".join(f"{n} {unit}{'' if n == 1 else 's'}" for n, unit in parts if n)
