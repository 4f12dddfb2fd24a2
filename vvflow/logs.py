"""Structured logging: one JSON object per line on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from vvflow.events import Event

logger = logging.getLogger("vvflow")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """For a person at a terminal: time, event, then the fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(
            f"{key}={value!r}" if isinstance(value, str) and (" " in value or not value)
            else f"{key}={value}"
            for key, value in getattr(record, "fields", {}).items()
        )  # fmt: skip
        # Starts by clearing the line, where a progress bar may be drawn.
        line = f"\r\033[K{stamp} {record.levelname.lower():<7} {record.getMessage():<16} {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


def setup(level: str = "INFO") -> None:
    """JSON lines on stderr, or readable text when stderr is a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if sys.stderr.isatty() else JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


Listener = Callable[[Event, dict[str, Any]], None]
_listeners: list[Listener] = []


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call `listener(event, fields)` for every lifecycle event, whatever the log level
    (metrics and the progress bar hear the same events as the log). Returns an
    unsubscribe function."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def event(
    name: Event, /, *, level: int = logging.INFO, exc_info: bool = False, **fields: Any
) -> None:
    """Log one lifecycle event with its fields (video, stage, duration_s, ...)."""
    if "duration_s" in fields and isinstance(fields["duration_s"], float):
        fields["duration_s"] = round(fields["duration_s"], 3)
    logger.log(level, str(name), extra={"fields": fields}, exc_info=exc_info)
    for listener in list(_listeners):
        try:
            listener(name, fields)
        except Exception:  # a listener's bug must never break the work being logged
            logger.debug("listener failed", exc_info=True)
