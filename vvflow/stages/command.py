"""What every built-in stage command shares: exit codes, the bad-input error, the run
wrapper that turns errors into one stderr line, and atomic output files."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_DATAERR = 65  # sysexits.h: the input data was incorrect; vvflow does not retry it

SCHEMA_VERSION = 1


class BadInput(Exception):
    """The input is not something this stage can work on; retrying cannot help."""


def run_stage(name: str, work: Callable[[], None]) -> int:
    """Run ``work`` and map its outcome to the stage exit code, with one stderr line on error."""
    try:
        with _sigterm_as_exit():
            work()
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


def relative_to_root(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` when it lies under it, else absolute."""
    absolute = path.resolve()
    if root is not None:
        with contextlib.suppress(ValueError):
            return absolute.relative_to(root.resolve()).as_posix()
    return str(absolute)


def _say(line: str) -> None:
    sys.stderr.write(" ".join(line.split()) + "\n")
    sys.stderr.flush()


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
