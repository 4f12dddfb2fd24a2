"""The names of every lifecycle event: one vocabulary for logs and reports."""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    STARTED = "started"
    STOPPED = "stopped"
    RECOVERED = "recovered"
    IGNORED = "ignored"
    SEEN = "seen"
    UNSTABLE = "unstable"
    CLAIMED = "claimed"
    CLAIM_LOST = "claim_lost"
    CLAIM_CHANGED = "claim_changed"
    STAGE_SKIPPED = "stage_skipped"
    STAGE_STARTED = "stage_started"
    STAGE_SUCCEEDED = "stage_succeeded"
    STAGE_FAILED = "stage_failed"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    RELEASED = "released"
    LEASE_LOST = "lease_lost"
    REPORT_UNWRITABLE = "report_unwritable"
    INTERNAL_ERROR = "internal_error"
    WATCHING = "watching"
    BATCH = "batch"
    METRICS_SERVING = "metrics_serving"
    RESCAN_FOUND = "rescan_found"
    HASHED = "hashed"
    DUPLICATE = "duplicate"
    WAITING_FOR_ORIGINAL = "waiting_for_original"
    INDEX_REBUILT = "index_rebuilt"
    OBSERVER_FAILED = "observer_failed"
    OBSERVER_RESTARTED = "observer_restarted"
