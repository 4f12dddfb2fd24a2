"""Per-video run reports: `reports/<name>.json`, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vvflow.atomicfs import read_regular, write_atomic

SCHEMA_VERSION = 1
_NAME_MAX = 255


class StageStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


AttemptOutcome = Literal[
    "succeeded",
    "failed",
    "timeout",
    "bad_input",
    "no_output",
    "unusable",
    "cancelled",
    "no_space",
]


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Identity(BaseModel):
    """What makes a file this very file: it survives renames, not replacement."""

    model_config = ConfigDict(frozen=True)

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


class Attempt(BaseModel):
    number: int
    started_at: str
    duration_s: float
    outcome: AttemptOutcome
    exit_code: int | None = None
    error: str | None = None


class StageRecord(BaseModel):
    status: StageStatus = StageStatus.PENDING
    attempts: list[Attempt] = Field(default_factory=list)
    output: str | None = None
    #: The stage's folder output (`output_dir`), relative to the root, once published.
    output_dir: str | None = None
    identity: Identity | None = None
    duration_s: float = 0.0
    error: str | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""


class Report(BaseModel):
    """Everything known about one video's runs. The folder it sits in is the truth for
    its state; the report says why and how."""

    schema_version: int = SCHEMA_VERSION
    name: str
    original_name: str
    state: str
    identity: Identity
    instance: str | None = None
    claimed_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    runs: int = 0
    stages: dict[str, StageRecord] = Field(default_factory=dict)
    failed_stage: str | None = None
    error: str | None = None
    #: SHA-256 of the content, computed once when first claimed (with `dedupe`).
    sha256: str | None = None
    #: The completed video with the same content whose outputs this one reuses.
    duplicate_of: str | None = None
    #: False after `retry --from-start`: run every stage even if the content is known.
    dedupe: bool = True
    #: The names this very file had before (renamed by hand, or moved to a free name),
    #: oldest first; its report and finished outputs followed it.
    previous_names: list[str] = Field(default_factory=list)
    #: What an operator should know although the video was filed (e.g. that it is
    #: probably incomplete because the rest of its upload came later).
    warnings: list[str] = Field(default_factory=list)

    def stage(self, name: str) -> StageRecord:
        return self.stages.setdefault(name, StageRecord())


def report_path(reports: Path, name: str) -> Path:
    """`reports/<name>.json`; a name too long for that gets a shortened, hashed file name."""
    filename = f"{name}.json"
    raw = os.fsencode(filename)
    if len(raw) <= _NAME_MAX:
        return reports / filename
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    head = raw[: _NAME_MAX - 40].decode("utf-8", "ignore")
    return reports / f"{head}~{digest}.json"


def load(path: Path) -> Report | None:
    """The report at `path`; None when it is absent or unreadable (treated as no history).
    Only a regular file can be a report: a FIFO or symlink planted there is not read."""
    data = read_regular(path)
    if data is None:
        return None
    try:
        return Report.model_validate(json.loads(data))
    except (ValidationError, ValueError):
        return None


def dumps(report: Report) -> bytes:
    """The report as ASCII JSON: a file name that is not valid UTF-8 survives as
    `\\udcXX` escapes, which load back to the very same name."""
    return json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=True).encode()


class Saver(Protocol):
    """Persists a report being written; `durable` asks for fsync (a stage's success, the
    final state) rather than just an atomic replace (progress on the way)."""

    def __call__(self, durable: bool = False) -> None: ...


def save(path: Path, report: Report, *, tmp_dir: Path | None = None, durable: bool = True) -> None:
    write_atomic(path, dumps(report), tmp_dir=tmp_dir, durable=durable)
