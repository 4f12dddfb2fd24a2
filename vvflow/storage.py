"""Whether the storage root takes writes now: free space against `min_free_bytes`, and
a pause after a storage error (no space, quota, I/O error, read-only).

A storage error is never a video's fault: its video goes back to pending/ and the
instance stops claiming until the pause is over and the root has `min_free_bytes`
free again. The pause doubles each time claiming resumes and fails again, up to
BACKOFF_MAX_SECONDS. The log gets one line when the trouble starts and one when it
ends, however long it lasts; `status`, `health` and the metrics read `snapshot()`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vvflow import logs
from vvflow.errors import StorageFailed
from vvflow.events import Event

BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0


def free_bytes(root: Path) -> int | None:
    """Bytes an unprivileged writer may still use under `root`; None when unknown."""
    try:
        st = os.statvfs(root)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class Monitor:
    """The storage state of one instance; thread-safe."""

    def __init__(
        self, root: Path, min_free_bytes: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.clock = clock
        self._lock = threading.Lock()
        self._trouble: str | None = None
        self._since: float | None = None  # wall clock, for people
        self._started: float = 0.0  # monotonic, for the duration
        self._backoff = 0.0
        self._retry_at = 0.0

    def _low(self) -> tuple[bool, int | None]:
        free = free_bytes(self.root)
        return free is not None and free < self.min_free_bytes, free

    def failed(self, reason: str) -> None:
        """A write failed for the storage: pause claiming. Errors of work already in
        flight while paused do not lengthen the pause; an error after claiming
        resumed doubles it."""
        now = self.clock()
        with self._lock:
            if now >= self._retry_at:
                if now - self._retry_at > BACKOFF_MAX_SECONDS:
                    self._backoff = 0.0  # long fine since the last pause: start small again
                self._backoff = min(BACKOFF_MAX_SECONDS, 2 * self._backoff or BACKOFF_FIRST_SECONDS)
                self._retry_at = now + self._backoff
            starting = self._trouble is None
            self._trouble = reason
            if starting:
                self._since, self._started = time.time(), now
            wait = self._retry_at - now
        if starting:
            self._log_start(reason, wait)

    def may_claim(self) -> bool:
        """False while paused after an error or while the root has less than
        `min_free_bytes` free; logs the end of a trouble when both are over."""
        low, free = self._low()
        now = self.clock()
        started: str | None = None
        with self._lock:
            if low:
                if self._trouble is None:
                    started = self._trouble = (
                        f"{free} bytes free under the root, less than min_free_bytes "
                        f"({self.min_free_bytes})"
                    )
                    self._since, self._started = time.time(), now
                wait = max(0.0, self._retry_at - now)
            elif self._trouble is None:
                return True
            elif now < self._retry_at:
                return False
            else:
                duration = now - self._started
                self._trouble = self._since = None
        if low:
            if started is not None:
                self._log_start(started, wait)
            return False
        logs.event(Event.STORAGE_RECOVERED, free_bytes=free, duration_s=duration)
        return True

    def trouble(self) -> str | None:
        """What is wrong with the storage now, or None."""
        with self._lock:
            return self._trouble

    def check(self) -> None:
        """Raise StorageFailed when the root has less than `min_free_bytes` free now: a
        stage that failed just then most likely failed for it."""
        low, free = self._low()
        if low:
            raise StorageFailed(
                f"{free} bytes free under the root, less than min_free_bytes "
                f"({self.min_free_bytes})"
            )

    def pause_over(self) -> bool:
        """Whether the pause after the last error is over (free space aside): time to
        try again what failed, such as a move."""
        with self._lock:
            return self.clock() >= self._retry_at

    def snapshot(self) -> dict[str, Any]:
        """For status, health and metrics: the trouble (None when fine), since when
        (ISO 8601, UTC), free bytes, the threshold and when claiming may resume."""
        free = free_bytes(self.root)
        now = self.clock()
        with self._lock:
            since = self._since
            return {
                "trouble": self._trouble,
                "since": None
                if since is None
                else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)),
                "free_bytes": free,
                "min_free_bytes": self.min_free_bytes,
                "retry_in_s": round(max(0.0, self._retry_at - now), 1) if self._trouble else None,
            }

    def _log_start(self, reason: str, wait: float) -> None:
        logs.event(
            Event.STORAGE_TROUBLE,
            level=logging.WARNING,
            error=reason,
            free_bytes=free_bytes(self.root),
            min_free_bytes=self.min_free_bytes,
            claiming="paused; videos hit by it go back to pending/",
            retry_in_s=round(wait, 1),
        )
