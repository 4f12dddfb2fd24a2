"""A one-line progress bar for `vvflow once` on a terminal, fed by lifecycle events."""

from __future__ import annotations

import shutil
import sys
import threading
from typing import Any, TextIO

from vvflow import logs
from vvflow.events import Event

WIDTH = 24


class ProgressBar:
    """Redraws `[#####-----] 3/10  done 2  failed 1  a.mp4: scan 42%` after every event."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.total = 0
        self.completed = 0
        self.failed = 0
        self.released = 0
        self.current: dict[str, str] = {}
        self._lock = threading.Lock()
        self._unsubscribe = logs.subscribe(self.on_event)

    def on_event(self, name: Event, fields: dict[str, Any]) -> None:
        video = str(fields.get("video", ""))
        with self._lock:
            if name == Event.BATCH:
                self.total = int(fields.get("videos", 0))
            elif name == Event.STAGE_STARTED:
                self.current[video] = str(fields.get("stage", ""))
            elif name == Event.STAGE_WAITING:
                self.current[video] = f"{fields.get('stage', '')} (waiting)"
            elif name == Event.STAGE_PROGRESS:
                progress = float(fields.get("progress", 0.0))
                self.current[video] = f"{fields.get('stage', '')} {100 * progress:.0f}%"
            elif name in (Event.COMPLETED, Event.FAILED, Event.RELEASED):
                self.current.pop(video, None)
                if name == Event.COMPLETED:
                    self.completed += 1
                elif name == Event.FAILED:
                    self.failed += 1
                else:
                    self.released += 1
            elif name == Event.STOPPED:
                self.close()
                return
            self._draw()

    def line(self) -> str:
        done = self.completed + self.failed + self.released
        filled = WIDTH * done // self.total if self.total else 0
        bar = "#" * filled + "-" * (WIDTH - filled)
        text = f"[{bar}] {done}/{self.total}  done {self.completed}  failed {self.failed}"
        if self.current:
            text += "  " + ", ".join(f"{v}: {s}" for v, s in sorted(self.current.items()))
        columns = shutil.get_terminal_size((100, 20)).columns
        return text[: max(20, columns - 1)]

    def _draw(self) -> None:
        self.stream.write("\r\033[K" + self.line())
        self.stream.flush()

    def close(self) -> None:
        self._unsubscribe()
        self._draw()
        self.stream.write("\n")
        self.stream.flush()
