"""An opt-in Prometheus endpoint for `vvflow run` (`metrics_port`).

Counters and histograms follow the lifecycle events (the same vocabulary as the logs:
`logs.subscribe`); gauges of folder counts, queue length and the heartbeat are read at
scrape time, so they are never stale and cost nothing between scrapes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vvflow import logs, notify
from vvflow.events import Event
from vvflow.layout import Layout, State

_NOTIFY_OUTCOMES = {
    Event.NOTIFY_DELIVERED: "delivered",
    Event.NOTIFY_FAILED: "failed",
    Event.NOTIFY_REJECTED: "rejected",
    Event.NOTIFY_DROPPED: "dropped",
}
STAGE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


class _Snapshot(Collector):
    """Gauges computed when scraped."""

    def __init__(
        self,
        layout: Layout,
        queue_length: Callable[[], dict[str, int]],
        heartbeat: Path,
        storage: Callable[[], dict[str, Any]] | None = None,
        live: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.layout = layout
        self.queue_length = queue_length
        self.heartbeat = heartbeat
        self.storage = storage
        self.live = live

    def collect(self) -> Iterator[Metric]:
        videos = GaugeMetricFamily("vvflow_videos", "Videos by state (folder)", labels=["state"])
        pending, _ = self.layout.scan_pending()
        videos.add_metric([State.PENDING.value], len(pending))
        claims = sum(len(self.layout.claims_in(f)) for f in self.layout.instance_folders())
        videos.add_metric([State.PROCESSING.value], claims)
        for state in (State.COMPLETED, State.FAILED):
            videos.add_metric([state.value], sum(1 for _ in self.layout.files_in(state)))
        yield videos
        queue = GaugeMetricFamily(
            "vvflow_queue_length", "Videos waiting in this instance", labels=["kind"]
        )
        for kind, value in self.queue_length().items():
            queue.add_metric([kind], value)
        yield queue
        beat = GaugeMetricFamily(
            "vvflow_last_heartbeat_timestamp_seconds",
            "Unix time of this instance's last heartbeat",
        )
        try:
            beat.add_metric([], self.heartbeat.stat().st_mtime)
        except FileNotFoundError:
            beat.add_metric([], 0.0)
        yield beat
        if self.storage is not None:
            snap = self.storage()
            yield GaugeMetricFamily(
                "vvflow_storage_trouble",
                "1 while claiming is paused for storage trouble (no space, quota, I/O error, "
                "read-only), else 0",
                value=1.0 if snap["trouble"] else 0.0,
            )
            if snap["free_bytes"] is not None:
                yield GaugeMetricFamily(
                    "vvflow_storage_free_bytes",
                    "Bytes free under the storage root",
                    value=float(snap["free_bytes"]),
                )
        outbox = GaugeMetricFamily(
            "vvflow_notify_outbox",
            "Notifications in the root's outbox: waiting for delivery (ready), refused by "
            "their receiver (rejected), dropped over notify_outbox_max (dropped)",
            labels=["kind"],
        )
        for kind, count in notify.sizes(self.layout).items():
            outbox.add_metric([kind], float(count))
        yield outbox
        if self.live is not None:
            yield from _live_metrics(self.live())


def _live_metrics(live: dict[str, Any]) -> Iterator[Metric]:
    """Pause, what the videos in flight do, and the stages' slots."""
    yield GaugeMetricFamily(
        "vvflow_paused",
        "1 while the root is paused (vvflow pause): nothing new is claimed, else 0",
        value=1.0 if live["paused"] else 0.0,
    )
    videos = GaugeMetricFamily(
        "vvflow_stage_videos",
        "Videos in flight in this instance by stage, running it or waiting for its slot",
        labels=["stage", "state"],
    )
    progress = GaugeMetricFamily(
        "vvflow_stage_progress",
        "The progress (0..1) a running stage reports for its video",
        labels=["video", "stage"],
    )
    counts: dict[tuple[str, str], int] = {}
    for video, activity in live["activity"].items():
        key = (str(activity["stage"]), str(activity["state"]))
        counts[key] = counts.get(key, 0) + 1
        if activity.get("progress") is not None:
            progress.add_metric([video, str(activity["stage"])], float(activity["progress"]))
    for (stage, state), count in sorted(counts.items()):
        videos.add_metric([stage, state], count)
    yield videos
    yield progress
    for name, help_text in (
        ("capacity", "Capacity of a stage's concurrency or of a named resource"),
        ("in_use", "Units of a stage's concurrency or of a resource held now"),
        ("waiting", "Videos waiting for a stage's slot or for a resource"),
    ):
        family = GaugeMetricFamily(f"vvflow_slot_{name}", help_text, labels=["slot"])
        for slot, values in live["slots"].items():
            family.add_metric([slot], float(values[name]))
        yield family


class Metrics:
    """The metrics of one instance and the HTTP endpoint that serves them."""

    def __init__(
        self,
        layout: Layout,
        queue_length: Callable[[], dict[str, int]],
        heartbeat: Path,
        storage: Callable[[], dict[str, Any]] | None = None,
        live: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.stage_seconds = Histogram(
            "vvflow_stage_duration_seconds", "Stage run time, all attempts",
            ["stage", "outcome"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.attempts = Counter("vvflow_stage_attempts", "Stage attempts started", ["stage"],
                                registry=r)  # fmt: skip
        self.retries = Counter("vvflow_stage_retries", "Stage retries after a failed attempt",
                               ["stage"], registry=r)  # fmt: skip
        self.finished = Counter("vvflow_videos_finished", "Videos filed by this instance",
                                ["state"], registry=r)  # fmt: skip
        self.failures = Counter("vvflow_failures", "Videos failed, by the stage at fault",
                                ["stage"], registry=r)  # fmt: skip
        self.duplicates = Counter("vvflow_duplicates", "Videos completed from another's outputs",
                                  registry=r)  # fmt: skip
        self.found = Counter("vvflow_videos_found", "Candidates first seen, by what found them",
                             ["source"], registry=r)  # fmt: skip
        self.takeovers = Counter("vvflow_lease_takeovers",
                                 "Dead instances whose claims this instance took back",
                                 registry=r)  # fmt: skip
        self.recovered = Counter("vvflow_videos_recovered",
                                 "Videos returned to pending from dead instances",
                                 registry=r)  # fmt: skip
        self.double_claims = Counter("vvflow_double_claims",
                                     "Files this instance found moved by two processes at once "
                                     "(two names of one video); anything but 0 is a defect",
                                     registry=r)  # fmt: skip
        self.blocked = Gauge("vvflow_videos_blocked",
                             "Files in pending/ this instance may not move (permissions)",
                             registry=r)  # fmt: skip
        self.notifications = Counter("vvflow_notifications",
                                     "Notification deliveries by this instance, by outcome",
                                     ["outcome"], registry=r)  # fmt: skip
        for source in ("event", "rescan"):
            self.found.labels(source)
        for outcome in _NOTIFY_OUTCOMES.values():
            self.notifications.labels(outcome)
        self.registry.register(_Snapshot(layout, queue_length, heartbeat, storage, live))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._unsubscribe = logs.subscribe(self.on_event)

    def on_event(self, name: Event, fields: dict[str, Any]) -> None:
        stage = str(fields.get("stage") or "none")
        if name == Event.STAGE_STARTED:
            self.attempts.labels(stage).inc()
        elif name == Event.RETRYING:
            self.retries.labels(stage).inc()
        elif name in (Event.STAGE_SUCCEEDED, Event.STAGE_FAILED):
            outcome = "succeeded" if name == Event.STAGE_SUCCEEDED else "failed"
            self.stage_seconds.labels(stage, outcome).observe(float(fields.get("duration_s", 0)))
        elif name == Event.COMPLETED:
            self.finished.labels(State.COMPLETED.value).inc()
        elif name == Event.FAILED:
            self.finished.labels(State.FAILED.value).inc()
            self.failures.labels(stage).inc()
        elif name == Event.RELEASED:
            self.finished.labels(State.PENDING.value).inc()
        elif name == Event.DUPLICATE:
            self.duplicates.inc()
        elif name == Event.SEEN:
            self.found.labels(str(fields.get("source", "event"))).inc()
        elif name == Event.RESCAN_FOUND:
            self.found.labels("rescan").inc(int(fields.get("count", 0)))
        elif name in (Event.BLOCKED, Event.UNBLOCKED):
            self.blocked.set(int(fields.get("blocked", 0)))
        elif name == Event.DOUBLE_CLAIM:
            self.double_claims.inc()
        elif name in _NOTIFY_OUTCOMES:
            self.notifications.labels(_NOTIFY_OUTCOMES[name]).inc(int(fields.get("dropped", 1)))
        elif name == Event.RECOVERED:
            self.takeovers.inc()
            self.recovered.inc(len(fields.get("videos", ())))

    def serve(self, host: str, port: int) -> int:
        """Start the endpoint in a thread; the port it listens on (for port 0)."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_port)

    def close(self) -> None:
        self._unsubscribe()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
