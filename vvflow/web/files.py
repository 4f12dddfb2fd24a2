"""Which files under the root the web page may serve, and opening them safely.

Only regular files under the root's output folders: the folders holding the configured
stages' outputs and folder outputs (the parents of `Pipeline.all_outputs`), and
reports/. Never input/ (the videos), index/, outbox/, the configuration, a hidden name, a
folder (no listing), or anything reached through a symlink: every component is opened
with O_NOFOLLOW from the root down, so a link planted anywhere on the way is refused
even if it is swapped in between a check and the open.
"""

from __future__ import annotations

import os
import re
import stat
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from vvflow.config import CONFIG_NAME, StageConfig
from vvflow.layout import INDEX, INPUT, OUTBOX, REPORTS

#: Read in one piece below this size; streamed above it.
WHOLE_BYTES = 4 << 20
CHUNK_BYTES = 256 << 10

#: Content types by suffix. Anything else is sent as a download (application/
#: octet-stream, attachment): an HTML or SVG output of a custom stage must never run as
#: a page of this origin.
_TEXT = "text/plain; charset=utf-8"
CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".json": "application/json",
    ".vtt": "text/vtt; charset=utf-8",
    ".srt": _TEXT,
    ".otio": _TEXT,
    ".edl": _TEXT,
    ".txt": _TEXT,
    ".log": _TEXT,
    ".csv": _TEXT,
    ".md": _TEXT,
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")
_NEVER = (INPUT, INDEX, OUTBOX)


def content_type(name: str) -> str | None:
    """The content type to serve `name` as; None: a download."""
    return CONTENT_TYPES.get(PurePosixPath(name).suffix.lower())


def file_url(relative: str | PurePosixPath) -> str:
    """`/files/<path>` with every component quoted (names may hold `?`, `#`, `%`)."""
    return "/files/" + "/".join(quote(part, safe="") for part in PurePosixPath(relative).parts)


def _pattern(component: str) -> re.Pattern[str]:
    """A template component (`{stem}.analytic.json`) as a regex for one path component."""
    regex = ""
    for literal, field, _, _ in string.Formatter().parse(component):
        regex += re.escape(literal)
        if field is not None:
            regex += ".+"
    return re.compile(regex, re.DOTALL)


@dataclass(frozen=True)
class _Rule:
    """Files below a folder matching `parent`; an output at the top of the root (no
    parent) allows only itself, and a folder output there what is inside it."""

    parent: tuple[re.Pattern[str], ...]
    top: re.Pattern[str] | None
    folder: bool

    def allows(self, parts: tuple[str, ...]) -> bool:
        if self.parent:
            n = len(self.parent)
            return len(parts) > n and all(
                p.fullmatch(part) for p, part in zip(self.parent, parts, strict=False)
            )
        assert self.top is not None
        if not self.top.fullmatch(parts[0]):
            return False
        return len(parts) >= 2 if self.folder else len(parts) == 1


class OutputFiles:
    """The files of one root the page may serve."""

    def __init__(self, root: Path, stages: list[StageConfig]) -> None:
        self.root = root
        rules = [_Rule((re.compile(re.escape(REPORTS)),), None, folder=False)]
        for stage in stages:
            for template, folder in ((stage.output, False), (stage.output_dir, True)):
                if template is None:
                    continue
                parts = PurePosixPath(template).parts
                parent = tuple(_pattern(p) for p in parts[:-1])
                rules.append(_Rule(parent, None if parent else _pattern(parts[-1]), folder))
        self._rules = rules

    def parts(self, path: str) -> tuple[str, ...] | None:
        """`path` (relative to the root, as the URL gave it, decoded) as components when
        the page may serve it, else None."""
        if not path or "\0" in path or "\\" in path:
            return None
        parts = tuple(path.split("/"))
        if any(not p or p in (".", "..") or p.startswith(".") for p in parts):
            return None  # traversal, an absolute path, hidden bookkeeping and temp names
        if parts[0] in _NEVER or parts == (CONFIG_NAME,):
            return None
        if not any(rule.allows(parts) for rule in self._rules):
            return None
        return parts

    def open(self, path: str) -> tuple[int, os.stat_result] | None:
        """An open fd of the regular file at `path` and its stat; None when the page may
        not serve it or it is not a regular file reached without any symlink."""
        parts = self.parts(path)
        if parts is None:
            return None
        try:
            fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            for part in parts[:-1]:
                # O_PATH | O_NOFOLLOW on a symlink would open the link itself; with
                # O_DIRECTORY it fails (ENOTDIR), as it must.
                nxt = os.open(
                    part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
                os.close(fd)
                fd = nxt
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            file_fd = os.open(parts[-1], flags, dir_fd=fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            st = os.fstat(file_fd)
        except OSError:
            os.close(file_fd)
            return None
        if not stat.S_ISREG(st.st_mode):
            os.close(file_fd)
            return None
        return file_fd, st


def read_chunks(fd: int) -> Iterator[bytes]:
    """The file's bytes in chunks; closes `fd` when done or abandoned."""
    try:
        while chunk := os.read(fd, CHUNK_BYTES):
            yield chunk
    finally:
        os.close(fd)


def read_whole(fd: int) -> bytes:
    """The file's bytes; closes `fd`."""
    return b"".join(read_chunks(fd))


def walk_regular(folder: Path, limit: int = 2000) -> list[PurePosixPath]:
    """The regular files inside `folder` (relative to it, sorted), without following a
    symlink and without hidden names, at most `limit`."""
    found: list[PurePosixPath] = []
    stack = [PurePosixPath()]
    while stack and len(found) < limit:
        rel = stack.pop()
        try:
            with os.scandir(folder / rel) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(rel / entry.name)
                elif entry.is_file(follow_symlinks=False):
                    found.append(rel / entry.name)
            except OSError:
                continue
        stack.extend(reversed(subfolders))
    return sorted(found)[:limit]
