"""What every built-in stage command shares: exit codes, the bad-input error, the run
wrapper that turns errors into one stderr line, progress lines, and atomic output files.

Progress: a stage reports how far it is with lines ``vvflow:progress <fraction>`` (0..1,
optionally followed by a space and a short message) on stderr, the contract vvflow reads
from every stage command. ``report_progress`` is the one place that writes such a line;
``Progress`` throttles a stage that could report at every frame, and ``run_stage`` ends
every successful run with ``vvflow:progress 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_DATAERR = 65  # sysexits.h: the input data was incorrect; vvflow does not retry it

PROGRESS_PREFIX = "vvflow:progress"
#: A throttled stage reports at most this often (env VVFLOW_PROGRESS_SECONDS) ...
PROGRESS_SECONDS = 0.5
#: ... and only once the fraction moved by at least this much: whichever is rarer.
PROGRESS_STEP = 0.05
_PROGRESS_MESSAGE_CHARS = 80


class BadInput(Exception):
    """The input is not something this stage can work on; retrying cannot help."""


def run_stage(name: str, work: Callable[[], None]) -> int:
    """Run ``work`` and map its outcome to the stage exit code, with one stderr line on error."""
    try:
        with _sigterm_as_exit():
            work()
        report_progress(1.0, "done")
    except BadInput as error:
        _say(f"vvflow stage {name}: bad input: {error}")
        return EX_DATAERR
    except Exception as error:
        _say(f"vvflow stage {name}: failed: {type(error).__name__}: {error}")
        return EX_FAILURE
    return EX_OK


def env_default(name: str, fallback: str | None = None) -> str | None:
    """The value of environment variable ``name`` when set and not empty, else ``fallback``."""
    value = os.environ.get(name, "").strip()
    return value or fallback


def add_io_arguments(parser: argparse.ArgumentParser, input_name: str, input_help: str) -> None:
    """Add the two positional arguments every stage takes: its input and its OUTPUT file."""
    parser.add_argument(input_name, type=Path, help=input_help)
    parser.add_argument("output", metavar="OUTPUT", type=Path, help="JSON file to write")


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` atomically: a killed stage leaves no half file."""
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling of ``path``, sync it, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); an output is an ordinary file, readable
        # as the umask allows, like any file the user's own tools would write.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """Load a JSON object from ``path``; anything else is bad input."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a directory, not a {what}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a {what} (not UTF-8 text)") from None
    except OSError as error:
        raise BadInput(f"{path}: cannot read: {error.strerror}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInput(f"{path}: not a {what} (invalid JSON: {error.msg})") from None
    if not isinstance(document, dict):
        raise BadInput(f"{path}: not a {what} (JSON {type(document).__name__}, not an object)")
    return document


def object_field(document: dict[str, Any], key: str) -> dict[str, Any]:
    """``document[key]`` when it is a JSON object, else an empty one (an input written by
    an older version, or by hand, may lack it)."""
    value = document.get(key)
    return value if isinstance(value, dict) else {}


def report_progress(fraction: float, message: str = "") -> None:
    """Write ``vvflow:progress <fraction> [message]`` on stderr; never fails.

    The fraction is clamped to 0..1; the message is made one line of at most 80
    characters. A closed or broken stderr loses the line, not the stage.
    """
    value = min(1.0, max(0.0, fraction)) if math.isfinite(fraction) else 0.0
    words = " ".join(message.split())[:_PROGRESS_MESSAGE_CHARS].rstrip()
    _write_stderr(f"{PROGRESS_PREFIX} {value:.3f}" + (f" {words}" if words else ""))


class Progress:
    """Progress lines for a stage that could report at every frame: the first update is
    written, then one only when ``min_seconds`` passed *and* the fraction moved by
    ``min_step`` since the last line written, so a long run writes at most about
    1 / ``min_step`` lines and a short one a handful. Fractions only go up."""

    def __init__(
        self,
        *,
        min_step: float = PROGRESS_STEP,
        min_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._min_step = min_step
        self._min_seconds = progress_seconds() if min_seconds is None else min_seconds
        self._clock = clock
        self._fraction: float | None = None
        self._at = 0.0

    def update(self, fraction: float, message: str = "") -> bool:
        """Report ``fraction`` if it is due; return whether a line was written."""
        now = self._clock()
        last = self._fraction
        if last is not None and (
            fraction < last + self._min_step or now - self._at < self._min_seconds
        ):
            return False
        self._fraction, self._at = fraction, now
        report_progress(fraction, message)
        return True


def progress_seconds() -> float:
    """The least time between two throttled progress lines: $VVFLOW_PROGRESS_SECONDS,
    else 0.5 s (tests set 0 to see every step of a short video)."""
    try:
        value = float(env_default("VVFLOW_PROGRESS_SECONDS") or PROGRESS_SECONDS)
    except ValueError:
        return PROGRESS_SECONDS
    return value if math.isfinite(value) and value >= 0 else PROGRESS_SECONDS


def _say(line: str) -> None:
    _write_stderr(" ".join(line.split()))


def _write_stderr(line: str) -> None:
    # Straight to the file descriptor, so a failed write leaves nothing buffered: a
    # stderr buffer that cannot be flushed at exit turns the exit code into 120.
    # sys.stderr is None when descriptor 2 was closed at start; then descriptor 2 may be
    # a file the stage opened since, and must never be written to.
    stream = sys.stderr
    if stream is None:
        return
    data = (line + "\n").encode("utf-8", "backslashreplace")
    with contextlib.suppress(OSError, ValueError):
        stream.flush()
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a real file (io.UnsupportedOperation, closed)
        with contextlib.suppress(OSError, ValueError):
            stream.write(data.decode("utf-8"))
            stream.flush()
        return
    with contextlib.suppress(OSError):
        os.write(fd, data)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    # vvflow stops a stage that outlives its timeout with SIGTERM; raising SystemExit lets
    # the ``finally`` blocks remove temporary files instead of leaving them behind.
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
