"""The exception tree of vvflow: one base, a short tree, a line each."""

from __future__ import annotations

import errno

#: What a storage that refuses writes answers: no space, quota, I/O error, read-only.
#: None of these is the video's fault.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


class VvflowError(Exception):
    """Base class of every error vvflow raises on purpose."""


class ConfigError(VvflowError):
    """The configuration (file, environment or flags) is invalid."""


class LayoutError(VvflowError):
    """The storage root cannot be used as it is (missing, split across mounts, unwritable)."""


class LeaseLost(VvflowError):
    """This instance's claim was taken over by another instance; it must not write."""


class ClaimChanged(VvflowError):
    """The claimed video was deleted, replaced or modified while it was being processed."""


class StageError(VvflowError):
    """A stage failed; `retryable` says whether another attempt may help."""

    retryable = True

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class AttemptFailed(StageError):
    """One attempt of a stage failed in a way another attempt may fix."""


class BadInput(StageError):
    """The stage said the input is bad (exit 65): no retry."""

    retryable = False


class StageUnusable(StageError):
    """The stage cannot be started at all (command not found, not executable): no retry."""

    retryable = False


class Cancelled(VvflowError):
    """Work was interrupted by a shutdown request; the video goes back to pending."""


class Blocked(VvflowError):
    """A pending file this instance is not permitted to move; it waits until that changes.

    `key` is the state (of the file and of pending/) the verdict was reached on."""

    def __init__(self, reason: str, key: tuple[int, ...]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


class StorageFailed(VvflowError):
    """The storage refused a write (no space, quota, I/O error, read-only): not the
    video's fault; its video goes back to pending/ and claiming waits."""


def is_storage_error(exc: BaseException) -> bool:
    """Whether `exc` is the storage refusing a write rather than something about a video."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS
