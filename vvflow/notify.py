"""Notifications that are never lost: webhooks and commands told when a video is filed
(and when the root is paused, resumed, or its storage fails and recovers).

A notification is a file, and every step of its life is a rename on the root's one
filesystem, like a video's:

- `processing/<instance>/.notify/staged/<key>.<entry>`: written (fsync'd) before its
  video is filed, by the instance that files it; renamed into `outbox/` right after the
  filing rename succeeded. A crash in between is settled by whoever recovers that
  instance (`recover_folder`, after the move journal is repaired): an entry whose video
  left the claim folder was filed and is published; one whose video is still there is
  dropped (the video goes back to pending/ and its rerun notifies).
- `outbox/<entry>`: waiting for delivery, oldest first. The entry's name says all the
  delivery needs to know without reading it: `<created ns>_<id>_<attempts>_<next try
  ms>_<target>.json`; its content is the JSON payload, the exact body of a json target.
- `processing/<instance>/.notify/delivering/<entry>`: claimed for delivery by a plain
  rename, which of several instances (on several hosts too) exactly one wins; a dead
  instance's claimed entries go back to outbox/.
- `outbox/rejected/<entry>` and `<entry>.answer`: refused by the receiver (a 4xx other
  than 408 and 429, a command's exit 65); never tried again.
- `outbox/.dropped-<instance>`: how many the bound (`notify_outbox_max`) dropped.

Events that concern no video (pause, resume, storage) are written straight to outbox/.
Delivery is at least once: the id (the same on every try) lets a receiver drop repeats.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import os
import random
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_random_exponential,
)

from vvflow import __version__, atomicfs, logs
from vvflow.config import NotifyConfig
from vvflow.errors import is_storage_error
from vvflow.events import Event
from vvflow.layout import NOTIFY, Layout, index_key

STAGED = "staged"
DELIVERING = "delivering"
REJECTED = "rejected"
DROPPED_PREFIX = ".dropped-"
ENTRY_SUFFIX = ".json"
ANSWER_SUFFIX = ".answer"

ID_HEADER = "X-Vvflow-Id"
EVENT_HEADER = "X-Vvflow-Event"
SIGNATURE_HEADER = "X-Vvflow-Signature"

#: Tries of one delivery (tenacity), and the longest wait between two of them.
ATTEMPTS = 3
TRY_WAIT_MAX_SECONDS = 2.0
#: An entry still undelivered after its tries waits this long at most before the next
#: delivery (so a receiver that comes back gets everything within about a minute).
BACKOFF_MAX_SECONDS = 60.0
#: The delivery thread looks at outbox/ this often when nothing woke it.
POLL_SECONDS = 1.0
#: `vvflow once` delivers what it can for at most this long before it exits.
ONCE_SECONDS = 5.0
#: Exit code of a command target that refuses a notification (EX_DATAERR, like stages).
RET_REFUSED = 65
_ANSWER_MAX = 2000


class Temporary(Exception):
    """A delivery that may succeed later: no connection, a timeout, 5xx, 408, 429."""


class Refused(Exception):
    """The receiver refused the notification; trying again would not change that."""

    def __init__(self, status: int | None, answer: str) -> None:
        super().__init__(f"refused ({status}): {answer}" if status else f"refused: {answer}")
        self.status = status
        self.answer = answer


@dataclass(frozen=True)
class Entry:
    """One notification for one target, as named in outbox/."""

    created_ns: int
    id: str
    attempts: int
    next_ms: int
    target: str

    @property
    def name(self) -> str:
        return (
            f"{self.created_ns:020d}_{self.id}_{self.attempts}_{self.next_ms}_{self.target}"
            f"{ENTRY_SUFFIX}"
        )

    @classmethod
    def parse(cls, name: str) -> Entry | None:
        if name.startswith(".") or not name.endswith(ENTRY_SUFFIX):
            return None
        parts = name[: -len(ENTRY_SUFFIX)].split("_", 4)
        if len(parts) != 5:
            return None
        try:
            return cls(int(parts[0]), parts[1], int(parts[2]), int(parts[3]), parts[4])
        except ValueError:
            return None


def _now_iso_ms() -> str:
    """UTC now to the millisecond (`2026-01-02T03:04:05.678Z`; report.now_iso is to the
    second)."""
    stamp = time.time()
    millis = int(stamp * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{millis:03d}Z"


def payload(event: str, *, root: Path, instance: str | None, **fields: Any) -> dict[str, Any]:
    """A notification: the same keys for every event (None where they do not apply)."""
    record: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "event": event,
        "video": None,
        "state": None,
        "stage": None,
        "error": None,
        "outputs": {},
        "logline": None,
        "duration_s": None,
        "instance": instance,
        "time": _now_iso_ms(),
        "root": str(root),
    }
    record.update(fields)
    return record


def encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=True).encode()


def signature(secret: str, body: bytes) -> str:
    """The `X-Vvflow-Signature` value: `sha256=` and the HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def text_line(record: dict[str, Any]) -> str:
    """One line for a person (the slack and discord formats)."""
    event, video = record.get("event"), record.get("video")
    if video is not None:
        line = f"vvflow: {video} {event}"
        if record.get("stage"):
            line += f" at stage {record['stage']}"
        if record.get("error"):
            line += f": {record['error']}"
        if record.get("logline"):
            line += f" \N{EM DASH} {record['logline']}"
    else:
        line = f"vvflow: {record.get('root')} {event}"
        detail = record.get("reason") or record.get("error")
        if record.get("by"):
            line += f" by {record['by']}"
        if detail:
            line += f": {detail}"
    return line


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def body_for(target: NotifyConfig, record: dict[str, Any], stored: bytes) -> bytes:
    """What is sent to `target`: the stored bytes for json, else a text payload."""
    if target.format == "slack":
        return encode({"text": _slack_escape(text_line(record))})
    if target.format == "discord":
        return encode({"content": text_line(record), "allowed_mentions": {"parse": []}})
    return stored


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer (a misconfigured url), never followed with the body."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def send(target: NotifyConfig, record: dict[str, Any], stored: bytes) -> None:
    """One try of one delivery; raise Temporary or Refused when it did not succeed."""
    body = body_for(target, record, stored)
    headers = {
        ID_HEADER: str(record.get("id")),
        EVENT_HEADER: str(record.get("event")),
    }
    if target.secret is not None:
        headers[SIGNATURE_HEADER] = signature(target.secret.get_secret_value(), body)
    if target.url is not None:
        _post(target.url, body, headers, target.timeout_seconds)
    if target.command is not None:
        _run(target.command, body, headers, target.timeout_seconds)


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
    # The url's scheme is http or https (config.NotifyConfig checks it).
    request = urllib.request.Request(  # noqa: S310
        url,
        data=body,
        method="POST",
        headers={
            **headers,
            "Content-Type": "application/json",
            "User-Agent": f"vvflow/{__version__}",
        },
    )
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            answer.read(65536)
    except urllib.error.HTTPError as exc:
        text = ""
        with contextlib.suppress(OSError, http.client.HTTPException):
            text = exc.read(_ANSWER_MAX).decode("utf-8", "replace")
        if exc.code in (408, 429) or exc.code >= 500:
            raise Temporary(f"HTTP {exc.code} {exc.reason}: {text}".strip()) from None
        raise Refused(exc.code, text or str(exc.reason)) from None
    except urllib.error.URLError as exc:
        raise Temporary(f"cannot reach {url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise Temporary(f"{url}: {exc!r}") from None


def _run(command: list[str], body: bytes, headers: dict[str, str], timeout: float) -> None:
    env = dict(os.environ)
    env.update({"VVFLOW_NOTIFY_" + k.split("-")[-1].upper(): v for k, v in headers.items()})
    try:
        proc = subprocess.run(
            command, input=body, capture_output=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise Temporary(f"{command[0]}: no exit after {timeout:g}s") from None
    except OSError as exc:
        raise Temporary(f"{command[0]}: {exc.strerror}") from None
    if proc.returncode == 0:
        return
    tail = proc.stderr[-_ANSWER_MAX:].decode("utf-8", "replace").strip()
    if proc.returncode == RET_REFUSED:
        raise Refused(None, f"exit {RET_REFUSED}: {tail}")
    raise Temporary(f"{command[0]}: exit {proc.returncode}: {tail}")


# -- the folders ----------------------------------------------------------------------


def staged_dir(folder: Path) -> Path:
    return folder / NOTIFY / STAGED


def delivering_dir(folder: Path) -> Path:
    return folder / NOTIFY / DELIVERING


def write(
    targets: Iterable[NotifyConfig], record: dict[str, Any], folder: Path, *,
    prefix: str = "", tmp_dir: Path | None = None,
) -> list[Path]:  # fmt: skip
    """Write `record` into `folder` once for each target that wants its event."""
    body = encode(record)
    written = []
    created = time.time_ns()
    for target in targets:
        if record["event"] not in target.events:
            continue
        entry = Entry(created, record["id"], 0, 0, target.name)
        path = folder / (prefix + entry.name)
        atomicfs.write_atomic(path, body, tmp_dir=tmp_dir)
        written.append(path)
    return written


def _entries(folder: Path) -> list[Entry]:
    try:
        with os.scandir(folder) as it:
            found = [Entry.parse(e.name) for e in it]
    except FileNotFoundError:
        return []
    return sorted((e for e in found if e is not None), key=lambda e: (e.created_ns, e.id, e.target))


def _publish(path: Path, outbox: Path) -> bool:
    """Rename a staged entry into outbox/ (its name without the claim's key)."""
    name = path.name.split(".", 1)[1]
    try:
        os.rename(path, outbox / name)
    except FileNotFoundError:
        return False
    return True


def recover_folder(layout: Layout, folder: Path) -> dict[str, int]:
    """Settle the notifications of an instance folder no one runs any more (a dead
    instance, after `take_over` repaired its moves, or one's own on the way out): the
    staged ones whose video was filed go to outbox/, those whose video is still in the
    folder are dropped, the ones being delivered go back to outbox/."""
    counts = {"published": 0, "dropped": 0, "returned": 0}
    staged = staged_dir(folder)
    try:
        names = sorted(os.listdir(staged))
    except FileNotFoundError:
        names = []
    for name in names:
        path = staged / name
        video = (atomicfs.json_object(path) or {}).get("video")
        if isinstance(video, str) and not os.path.lexists(folder / video):
            atomicfs.makedirs(layout.outbox)
            counts["published"] += _publish(path, layout.outbox)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                counts["dropped"] += 1
    for entry in _entries(delivering_dir(folder)):
        atomicfs.makedirs(layout.outbox)
        with contextlib.suppress(FileNotFoundError):
            os.rename(delivering_dir(folder) / entry.name, layout.outbox / entry.name)
            counts["returned"] += 1
    if any(counts.values()):
        atomicfs.fsync_dir(layout.outbox)
    return counts


def sizes(layout: Layout) -> dict[str, int]:
    """For `status` and the metrics: entries waiting in outbox/, rejected, dropped."""
    rejected = 0
    try:
        with os.scandir(layout.outbox / REJECTED) as it:
            rejected = sum(1 for e in it if Entry.parse(e.name) is not None)
    except FileNotFoundError:
        pass
    dropped = 0
    try:
        with os.scandir(layout.outbox) as it:
            counters = [e.path for e in it if e.name.startswith(DROPPED_PREFIX)]
    except FileNotFoundError:
        counters = []
    for path in counters:
        data = atomicfs.read_regular(Path(path))
        with contextlib.suppress(ValueError, TypeError, KeyError):
            dropped += int(json.loads(data or b"")["dropped"])
    return {"ready": len(_entries(layout.outbox)), "rejected": rejected, "dropped": dropped}


def notify_root(
    layout: Layout, targets: Iterable[NotifyConfig], event: str, *,
    instance: str | None = None, tmp_dir: Path | None = None, **fields: Any,
) -> None:  # fmt: skip
    """Write a notification that concerns no video (pause, resume, storage) straight to
    outbox/: by a process that holds no instance folder (the command line, the web
    page), or by an instance (`Notifier.send`)."""
    wanted = [t for t in targets if event in t.events]
    if not wanted:
        return
    record = payload(event, root=layout.root, instance=instance, **fields)
    try:
        atomicfs.makedirs(layout.outbox)
        write(wanted, record, layout.outbox, tmp_dir=tmp_dir)
    except OSError as exc:  # what was done is done; only its notification is lost
        logs.event(Event.NOTIFY_UNWRITABLE, level=logging.WARNING, notification=event,
                   error=f"cannot write to outbox/: {exc.strerror}")  # fmt: skip


# -- one instance's notifications -----------------------------------------------------


class Notifier:
    """The notifications of one instance: staged before a video is filed, published
    after, and delivered by a thread (`start`), or for a while at the end of `once`
    (`drain`)."""

    def __init__(
        self,
        targets: Iterable[NotifyConfig],
        layout: Layout,
        folder: Path,
        instance: str,
        outbox_max: int,
    ) -> None:
        self.targets = {t.name: t for t in targets}
        self.layout = layout
        self.folder = folder
        self.instance = instance
        self.outbox_max = outbox_max
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: Target name -> monotonic time before which it is not tried again.
        self._down_until: dict[str, float] = {}
        #: Targets whose last delivery succeeded: their entries are tried at once,
        #: whatever their next try time (a receiver back up gets its backlog now).
        self._up: set[str] = set()
        self._dropped = 0
        self._unknown: set[str] = set()
        self._unsubscribe: Callable[[], None] | None = None

    def wants(self, event: str) -> bool:
        return any(event in t.events for t in self.targets.values())

    # -- before and after filing ---------------------------------------------------

    def stage(self, video: str, record: dict[str, Any]) -> None:
        """Write the notifications of a video about to be filed (raise OSError when
        that fails: the video must not be filed without them)."""
        self.drop(video)  # an earlier try's, never published
        if not self.wants(record["event"]):
            return
        folder = staged_dir(self.folder)
        atomicfs.makedirs(folder)
        write(self.targets.values(), record, folder, prefix=index_key(video) + ".",
              tmp_dir=self.folder)  # fmt: skip

    def _staged(self, video: str) -> list[Path]:
        key = index_key(video) + "."
        try:
            names = os.listdir(staged_dir(self.folder))
        except FileNotFoundError:
            return []
        return [staged_dir(self.folder) / n for n in sorted(names) if n.startswith(key)]

    def publish(self, video: str) -> None:
        """The video was filed: its staged notifications go to outbox/. One that cannot
        move stays staged; recovery (or this instance's way out) publishes it."""
        paths = self._staged(video)
        if not paths:
            return
        try:
            atomicfs.makedirs(self.layout.outbox)
            for path in paths:
                _publish(path, self.layout.outbox)
            atomicfs.fsync_dir(self.layout.outbox)
        except OSError as exc:
            logs.event(Event.NOTIFY_UNWRITABLE, level=logging.WARNING, video=video,
                       error=f"cannot publish to outbox/: {exc.strerror}")  # fmt: skip
        self._wake.set()

    def drop(self, video: str) -> None:
        """The video was not filed (back to pending/, changed, taken over)."""
        for path in self._staged(video):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def send(self, event: str, **fields: Any) -> None:
        """A notification that concerns no video, straight to outbox/."""
        if not self.wants(event):
            return
        notify_root(self.layout, self.targets.values(), event, instance=self.instance,
                    tmp_dir=self.folder, **fields)  # fmt: skip
        self._wake.set()

    def listen(self) -> None:
        """Turn the storage trouble the log tells into notifications."""
        if self._unsubscribe is None and self.targets:
            self._unsubscribe = logs.subscribe(self._on_event)

    def _on_event(self, name: Event, fields: dict[str, Any]) -> None:
        if name == Event.STORAGE_TROUBLE:
            self.send("storage_error", error=fields.get("error"),
                      free_bytes=fields.get("free_bytes"))  # fmt: skip
        elif name == Event.STORAGE_RECOVERED:
            self.send("storage_recovered", free_bytes=fields.get("free_bytes"),
                      duration_s=fields.get("duration_s"))  # fmt: skip

    # -- delivery ------------------------------------------------------------------

    def start(self) -> None:
        """Deliver in a thread until `stop`."""
        if not self.targets or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="vvflow-notify", daemon=True)
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Stop delivering; waits for the delivery in flight until `deadline` (monotonic)
        at most, then leaves it (its entry is returned to outbox/ with the folder)."""
        self._stop.set()
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._thread is not None:
            self._thread.join(max(0.05, deadline - time.monotonic()))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                delivered = self.deliver_pass()
            except Exception:  # a bug of ours must not end delivery for good
                logs.event(Event.INTERNAL_ERROR, level=logging.ERROR, exc_info=True,
                           error="notification delivery pass failed")  # fmt: skip
                delivered = 0
            if not delivered:
                self._wake.wait(self._idle_seconds())
                self._wake.clear()

    def _idle_seconds(self) -> float:
        """How long the thread may sleep after a pass that delivered nothing: until the
        first target's backoff ends when every target failed (a look at a large outbox
        costs tens of ms), else POLL_SECONDS. A new notification of this instance wakes
        it sooner."""
        now = time.monotonic()
        until = min(self._down_until.get(name, 0.0) for name in self.targets)
        return max(POLL_SECONDS, min(until - now, BACKOFF_MAX_SECONDS))

    def drain(self, seconds: float = ONCE_SECONDS) -> None:
        """`vvflow once`: deliver what can be delivered within `seconds`, then leave the
        rest in outbox/ (said in the log). Entries are tried whatever their next try
        time (this is a run of its own, maybe hours later), each target until it fails
        once (its tries done)."""
        if not self.targets:
            return
        deadline = time.monotonic() + seconds

        def deliver() -> None:
            try:
                while time.monotonic() < deadline and self.deliver_pass(deadline, eager=True):
                    pass
            except Exception:  # a bug of ours must not end `once` with a traceback
                logs.event(Event.INTERNAL_ERROR, level=logging.ERROR, exc_info=True,
                           error="notification delivery failed")  # fmt: skip

        # In a thread of its own: a receiver that hangs holds it, not the exit (the
        # entry it holds goes back to outbox/ with this instance's folder).
        thread = threading.Thread(target=deliver, name="vvflow-notify-drain", daemon=True)
        thread.start()
        thread.join(seconds)
        self._stop.set()
        left = [e for e in _entries(self.layout.outbox) if e.target in self.targets]
        left += _entries(delivering_dir(self.folder))  # back to outbox/ with the folder
        if left:
            logs.event(Event.NOTIFY_LEFT, level=logging.WARNING, notifications=len(left),
                       outbox=str(self.layout.outbox),
                       hint="delivered by the next `vvflow run` or `once`")  # fmt: skip

    def deliver_pass(self, deadline: float | None = None, *, eager: bool = False) -> int:
        """Deliver the entries that are due (`eager`: all of them), oldest first, but
        none of a target that failed until its backoff is over; the number delivered."""
        entries = self._bound(_entries(self.layout.outbox))
        delivered = 0
        for entry in entries:
            now = time.monotonic()
            if self._stop.is_set() or (deadline is not None and now >= deadline):
                break
            target = self.targets.get(entry.target)
            if target is None:
                if entry.target not in self._unknown:
                    self._unknown.add(entry.target)
                    logs.event(Event.NOTIFY_FAILED, level=logging.WARNING, target=entry.target,
                               id=entry.id, error="no [[notify]] target of that name here; "
                               "left in outbox/")  # fmt: skip
                continue
            if self._down_until.get(target.name, 0) > now:
                continue
            if not (eager or target.name in self._up) and entry.next_ms > time.time() * 1000:
                continue
            delivered += self._deliver(entry, target)
        return delivered

    def _bound(self, entries: list[Entry]) -> list[Entry]:
        excess = len(entries) - self.outbox_max
        if excess <= 0:
            return entries
        dropped = []
        for entry in entries[:excess]:
            with contextlib.suppress(FileNotFoundError):
                (self.layout.outbox / entry.name).unlink()
                dropped.append(entry)
        if dropped:
            self._dropped += len(dropped)
            with contextlib.suppress(OSError):
                atomicfs.write_atomic(
                    self.layout.outbox / (DROPPED_PREFIX + self.instance),
                    json.dumps({"dropped": self._dropped}).encode(),
                    tmp_dir=self.folder,
                    durable=False,
                )
            logs.event(
                Event.NOTIFY_DROPPED,
                level=logging.WARNING,
                dropped=len(dropped),
                dropped_total=self._dropped,
                notify_outbox_max=self.outbox_max,
                oldest=dropped[0].id,
                newest=dropped[-1].id,
            )
        return entries[excess:]

    def _deliver(self, entry: Entry, target: NotifyConfig) -> int:
        mine = delivering_dir(self.folder) / entry.name
        try:
            atomicfs.makedirs(mine.parent)
            # A plain rename: of several instances renaming one entry exactly one wins,
            # on every filesystem (renameat2 NOREPLACE is EINVAL on GlusterFS, and
            # link+unlink is not exclusive).
            os.rename(self.layout.outbox / entry.name, mine)
        except FileNotFoundError:
            return 0  # another instance took it (or dropped it)
        except OSError as exc:
            self._down_until[target.name] = time.monotonic() + POLL_SECONDS
            if is_storage_error(exc):
                return 0
            raise
        stored = atomicfs.read_regular(mine) or b""
        try:
            record = json.loads(stored)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            self._reject(entry, mine, target, Refused(None, f"unreadable entry: {exc}"), 0.0)
            return 0
        started = time.monotonic()
        try:
            Retrying(
                stop=stop_after_attempt(ATTEMPTS) | stop_when_event_set(self._stop),
                wait=wait_random_exponential(multiplier=0.25, max=TRY_WAIT_MAX_SECONDS),
                retry=retry_if_exception_type(Temporary),
                reraise=True,
                sleep=self._sleep,
            )(send, target, record, stored)
        except Refused as exc:
            self._reject(entry, mine, target, exc, time.monotonic() - started)
            return 0
        except Temporary as exc:
            self._later(entry, mine, target, str(exc), time.monotonic() - started)
            return 0
        with contextlib.suppress(FileNotFoundError):
            mine.unlink()
        self._down_until.pop(target.name, None)
        self._up.add(target.name)
        logs.event(Event.NOTIFY_DELIVERED, target=target.name, id=entry.id,
                   notification=record.get("event"), video=record.get("video"),
                   attempts=entry.attempts + 1, duration_s=time.monotonic() - started)  # fmt: skip
        return 1

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _later(
        self, entry: Entry, mine: Path, target: NotifyConfig, error: str, took: float
    ) -> None:
        attempts = entry.attempts + 1
        wait = min(BACKOFF_MAX_SECONDS, 2.0 ** min(attempts, 10)) * random.uniform(0.5, 1.0)  # noqa: S311 (jitter)
        later = replace(entry, attempts=attempts, next_ms=int((time.time() + wait) * 1000))
        with contextlib.suppress(FileNotFoundError):
            os.rename(mine, self.layout.outbox / later.name)
        self._down_until[target.name] = time.monotonic() + wait
        self._up.discard(target.name)
        logs.event(Event.NOTIFY_FAILED, level=logging.WARNING, target=target.name, id=entry.id,
                   attempts=attempts, retry_in_s=round(wait, 1), error=error,
                   duration_s=took)  # fmt: skip

    def _reject(
        self, entry: Entry, mine: Path, target: NotifyConfig, exc: Refused, took: float
    ) -> None:
        rejected = self.layout.outbox / REJECTED
        answer = {"target": target.name, "status": exc.status, "answer": exc.answer[:_ANSWER_MAX],
                  "time": _now_iso_ms(), "instance": self.instance}  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            atomicfs.makedirs(rejected)
            atomicfs.write_atomic(rejected / (entry.name + ANSWER_SUFFIX),
                                  json.dumps(answer).encode(), tmp_dir=self.folder)  # fmt: skip
            os.rename(mine, rejected / entry.name)
        logs.event(Event.NOTIFY_REJECTED, level=logging.ERROR, target=target.name, id=entry.id,
                   status=exc.status, error=exc.answer[:300], duration_s=took)  # fmt: skip
